"""Recovery of the runner's records after a kill, and outputs no record covered (audit D1, D2, D3, D5).

A forced run killed before it completed is forced again (its marker outlives the record it removed); an
extraction run records the shared mask store and the dataset summary among its outputs; a changed summary
reruns the run without forcing it.
"""

import json

import pytest

import test_run_orchestrate
from conceptsim.run import orchestrate as runner
from conceptsim.run.keys import force_marker_path, forced_runs, is_complete, output_paths, record_path, run_keys
from test_run_orchestrate import NOTEBOOKS, make_notebook

fake_project = test_run_orchestrate.fake_project  # the fake project (tiny notebooks) of the runner's tests

# the concept stage of the fake project: it reuses what is on disk unless forced (as run_concept_stage does)
CONCEPT_STAGE = """
import json
from conceptsim.paths import concept_quality_csv, concept_stage_json, model_results
out = model_results(study, dataset, model)
out.mkdir(parents=True, exist_ok=True)
if force or not concept_quality_csv(out).exists():
    concept_quality_csv(out).write_text("concept,value\\ncircle,0.5\\n")
    concept_stage_json(out).write_text(json.dumps({"outputs": {"concept_quality": "concept_quality.csv"}}))
with open(out / "forced.log", "a") as f:
    f.write(str(force) + "\\n")
"""


def killed_once(monkeypatch, seen: list, notebook: str):
    """papermill's execute_notebook, killed the first time it runs ``notebook`` (the process dies meanwhile)."""
    import papermill

    real = papermill.execute_notebook

    def execute(*a, **k):
        if not seen and str(a[0]).endswith(notebook):
            seen.append(k["parameters"]["force"])
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(papermill, "execute_notebook", execute)


@pytest.mark.parametrize("how", ["output changed", "--force"])
def test_a_killed_forced_run_is_forced_again(fake_project, monkeypatch, how):
    from conceptsim.paths import concept_quality_csv, model_results

    root, study = fake_project
    make_notebook(root / "notebooks" / NOTEBOOKS["concepts"], "concepts", CONCEPT_STAGE)
    concepts = next(r for r in study.runs() if r.stage == "concepts")
    out = model_results("fake", "shapes", concepts.model)
    runner.run_study(study, progress=False)
    concept_quality_csv(out).write_text("concept,value\ncircle,0.999\n")  # edited by hand
    seen: list = []
    killed_once(monkeypatch, seen, NOTEBOOKS["concepts"])
    with pytest.raises(KeyboardInterrupt):
        runner.run_study(study, force=how == "--force", progress=False, only={"stage": "concepts"})
    assert seen == [True]
    # the kill left the marker and no record: the next plain run forces the run again
    assert force_marker_path(concepts).exists() and not record_path(concepts).exists()
    keys = run_keys(study.runs())
    assert not is_complete(concepts, keys[concepts.id])
    assert "did not complete" in forced_runs(study.runs(), keys, False)[concepts.id]
    outcome = runner.run_study(study, progress=False)
    assert [r["id"] for r in outcome.executed] == [concepts.id]
    assert concept_quality_csv(out).read_text() == "concept,value\ncircle,0.5\n"  # the edit is gone
    rec = json.loads(record_path(concepts).read_text())
    assert rec["forced"] is True and "did not complete" in rec["forced_because"]
    assert not force_marker_path(concepts).exists()  # complete: forced no more
    assert not runner.run_study(study, progress=False).executed


def test_a_failed_forced_run_stays_forced(fake_project, monkeypatch):
    root, study = fake_project
    runner.run_study(study, progress=False)
    monkeypatch.setenv("FAKE_FAIL_STAGE", "concepts")
    assert runner.run_study(study, force=True, progress=False, only={"stage": "concepts"}).failed
    concepts = next(r for r in study.runs() if r.stage == "concepts")
    assert force_marker_path(concepts).exists()
    monkeypatch.delenv("FAKE_FAIL_STAGE")
    outcome = runner.run_study(study, progress=False)
    assert [r["id"] for r in outcome.executed] == [concepts.id] and outcome.executed[0]["forced"] is True


def test_a_failed_zarr_write_leaves_no_temporary_behind(tmp_path, monkeypatch):
    """A chunk write into a full disk fails while zarr's other chunk writes of the same call still run in its
    IO threads: atomic_path waits for them before it removes the temporary folder, which they would re-create."""
    import errno
    import time

    import numpy as np
    import zarr
    from zarr.storage import _local

    from conceptsim.atomic import atomic_path

    real = _local._put

    def put(path, value, exclusive=False):
        if path.parent.name == "0" and path.parent.parent.name == "c":  # the first chunk (c/0/0): the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        if path.parent.parent.name == "c":  # the other chunks: slower, still writing after the failure
            time.sleep(0.3)
        return real(path, value, exclusive)

    target = tmp_path / "activations.zarr"
    tmp = None
    with pytest.raises(OSError):
        with atomic_path(target) as tmp:
            array = zarr.create_array(str(tmp), shape=(8, 4), chunks=(1, 4), dtype="uint8")
            monkeypatch.setattr(_local, "_put", put)
            array[:] = np.ones((8, 4), np.uint8)
    time.sleep(0.8)
    assert not tmp.exists() and not target.exists()


def test_a_forced_extraction_rebuilds_a_damaged_mask_store_and_the_concept_stage_refuses_one(
        small_dataset_and_model, tmp_path):
    from conceptsim.concepts.stage import run_concept_stage
    from conceptsim.extraction.extract import extract
    from conceptsim.extraction.maskstore import MaskStore
    from conceptsim.extraction.zarrio import StoreError

    loaded, ds = small_dataset_and_model
    kw = dict(layers=["features.2"], batch_size=8, grid_cap=6, progress=False, masks_dir=tmp_path / "m")
    first = extract(loaded, ds, tmp_path / "a.zarr", **kw)
    masks = MaskStore(first.mask_store)
    digest = masks.content_sha256
    assert digest and masks.damaged() is None
    chunk = sorted((first.mask_store / "masks" / "c").rglob("*"))[-1]
    good = chunk.read_bytes()
    chunk.unlink()  # zarr reads a missing chunk as zeros: opening the store does not notice
    assert MaskStore(first.mask_store).damaged()
    with pytest.raises(StoreError, match="no longer holds the data"):
        run_concept_stage(tmp_path / "a.zarr", tmp_path / "out", bootstrap=2, epochs=1, dissection=False, methods=("cls",))
    assert not (tmp_path / "out" / "concept_quality.csv").exists()
    again = extract(loaded, ds, tmp_path / "a.zarr", **kw)  # not forced: the store is used as it is
    assert again.masks_reused and not chunk.exists()
    forced = extract(loaded, ds, tmp_path / "a.zarr", force=True, **kw)  # forced: checked, and rebuilt
    assert not forced.masks_reused and chunk.read_bytes() == good
    rebuilt = MaskStore(first.mask_store)
    assert rebuilt.content_sha256 == digest and rebuilt.damaged() is None
    # byte for byte the store it replaces (the runner's records of the other models stay valid)
    from conceptsim.run.keys import content_hash

    before = content_hash(first.mask_store)
    assert extract(loaded, ds, tmp_path / "a.zarr", force=True, **kw).masks_reused  # intact: kept
    assert content_hash(first.mask_store) == before


def test_stage_records_hash_their_outputs(tmp_path):
    from conceptsim.atomic import output_digests, relative_outputs, reusable_outputs, write_json

    table = tmp_path / "dataset_summary.csv"
    table.write_text("split,images\ntrain,3\n")
    outputs = {"table": table}
    write_json(tmp_path / "r.json", {"identity": "i", "outputs": relative_outputs(outputs, tmp_path),
                                     "sha256": output_digests(outputs)})
    assert reusable_outputs(tmp_path / "r.json", "i") == outputs
    table.write_text("split,images\ntrain,4\n")  # edited by hand: recomputed, not reused
    assert reusable_outputs(tmp_path / "r.json", "i") is None


# the extraction of the fake project: an activation store naming a shared mask store, and the dataset summary
EXTRACT_STAGE = """
import json
from conceptsim.paths import dataset_results, model_results
folder = dataset_results(study, dataset)
store = model_results(study, dataset, model) / "activations.zarr"
store.mkdir(parents=True, exist_ok=True)
(store / "zarr.json").write_text(json.dumps({"attributes": {"mask_store": "../_masks/k.zarr"}}))
chunk = folder / "_masks" / "k.zarr" / "masks" / "c" / "0"
if force or not chunk.exists():
    chunk.parent.mkdir(parents=True, exist_ok=True)
    chunk.write_bytes(b"masks")
table = folder / "dataset_summary.csv"
if force or not table.exists() or table.read_text() != "split,images\\ntrain,3\\n":  # the summary's own check
    table.write_text("split,images\\ntrain,3\\n")
    (folder / "dataset_summary.json").write_text(json.dumps({"outputs": {"table": "dataset_summary.csv"}}))
with open(folder / "forced.log", "a") as f:
    f.write(str(force) + "\\n")
"""


def test_mask_store_and_dataset_summary_are_outputs_of_the_extraction(fake_project):
    from conceptsim.paths import dataset_results

    root, study = fake_project
    make_notebook(root / "notebooks" / NOTEBOOKS["extract"], "extract", EXTRACT_STAGE)
    extract = next(r for r in study.runs() if r.stage == "extract")
    folder = dataset_results("fake", "shapes")
    runner.run_study(study, progress=False)
    assert {p.relative_to(folder).as_posix() for p in output_paths(extract)} == {
        "mobilenet_v2_imagenet/activations.zarr", "_masks/k.zarr", "dataset_summary.json", "dataset_summary.csv"}
    assert set(json.loads(record_path(extract).read_text())["outputs"]) == {
        "fake/shapes/mobilenet_v2_imagenet/activations.zarr", "fake/shapes/_masks/k.zarr",
        "fake/shapes/dataset_summary.json", "fake/shapes/dataset_summary.csv"}
    # a mask chunk removed: the extraction is forced (and rebuilds it)
    (folder / "_masks" / "k.zarr" / "masks" / "c" / "0").unlink()
    outcome = runner.run_study(study, progress=False)
    assert [r["id"] for r in outcome.executed] == [extract.id]
    assert outcome.executed[0]["forced"] is True and "_masks/k.zarr" in outcome.executed[0]["forced_because"]
    assert (folder / "_masks" / "k.zarr" / "masks" / "c" / "0").read_bytes() == b"masks"
    # the summary edited: the extraction reruns, unforced (the summary checks itself)
    (folder / "dataset_summary.csv").write_text("split,images\ntrain,99\n")
    outcome = runner.run_study(study, progress=False)
    assert [r["id"] for r in outcome.executed] == [extract.id] and outcome.executed[0]["forced"] is False
    assert (folder / "dataset_summary.csv").read_text() == "split,images\ntrain,3\n"
    assert (folder / "forced.log").read_text().split() == ["False", "True", "False"]
    assert not runner.run_study(study, progress=False).executed
