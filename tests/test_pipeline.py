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
