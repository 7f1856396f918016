"""The notebooks' front door: layer selection and result paths."""

import pytest

from conceptsim import paths, pipeline


def test_spread_keeps_first_and_last_and_never_repeats():
    items = [f"l{i}" for i in range(10)]
    assert pipeline.spread(items, 3) == ["l0", "l4", "l9"]  # numpy rounds 4.5 to even
    assert pipeline.spread(items, 0) == items and pipeline.spread(items, 12) == items
    picked = pipeline.spread(items, 8)
    assert len(picked) == len(set(picked)) == 8 and picked[0] == "l0" and picked[-1] == "l9"


def test_probed_layers_default_to_the_registry_and_honour_a_list():
    default = pipeline.probed_layers("mobilenet_v2_imagenet", None)
    assert default and pipeline.probed_layers("mobilenet_v2_imagenet:random", []) == default
    assert pipeline.probed_layers("mobilenet_v2_imagenet", ["features.3"]) == ["features.3"]
    assert pipeline.probed_layers("mobilenet_v2_imagenet", None, 2) == [default[0], default[-1]]


def test_result_paths_come_from_the_layout_module(tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTSIM_RESULTS", str(tmp_path))
    store = pipeline.store_path("s", "d", "m:random")
    assert store == tmp_path / "s" / "d" / "m__random" / "activations.zarr" == paths.store_path("s", "d", "m:random")
    assert pipeline.masks_dir("s", "d") == tmp_path / "s" / "d" / "_masks"


@pytest.mark.parametrize("name", ["nope", "nope:random"])
def test_unknown_model_is_named(name):
    with pytest.raises(KeyError, match="unknown model"):
        pipeline.probed_layers(name, None)


def test_provenance_says_whether_a_stage_reused_or_computed_and_why(tmp_path):
    import json
    import types

    record = tmp_path / "concept_stage.json"
    assert pipeline.provenance("concept results", record, None).startswith("Computed the concept results: no stored")
    record.write_text(json.dumps({"identity": "a", "outputs": {}, "seconds": 1}))
    before = record.read_text()
    assert pipeline.provenance("concept results", record, before).startswith(
        f"Reused the stored concept results in {tmp_path}: same inputs, parameters and library code")
    record.write_text(json.dumps({"identity": "b", "outputs": {}, "seconds": 2}))
    assert "computed from other inputs, parameters or library code" in pipeline.provenance("x", record, before)
    record.write_text(json.dumps({"identity": "a", "outputs": {}, "seconds": 3}))
    assert "an output listed in the stored record was missing" in pipeline.provenance("x", record, before)
    result = types.SimpleNamespace(path=tmp_path / "activations.zarr", reused=False)
    assert pipeline.extraction_provenance(result, existed=False).startswith("Computed the activations: no store")
    assert pipeline.extraction_provenance(result, existed=True).startswith("Recomputed the activations")
    result.reused = True
    assert pipeline.extraction_provenance(result, existed=True).startswith("Reused the stored activations")
