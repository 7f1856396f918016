"""Study efficiency and its breakdown, computed from recorded run data (no study is run here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from efficiency import cell_parts, forward_floor, study_breakdown, study_efficiency  # noqa: E402


def executed(path: Path, cells: list[tuple[str, float, list[str]]]) -> None:
    """An executed notebook whose code cells took the given papermill durations."""
    nb = new_notebook(cells=[new_markdown_cell("# title")])
    for source, seconds, tags in cells:
        cell = new_code_cell(source, metadata={"tags": tags, "papermill": {"duration": seconds}})
        nb.cells.append(cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


PARAMS = [("study = 'x'", 0.01, ["parameters"]), ("# Parameters\nstudy = 'y'", 0.02, ["injected-parameters"])]


@pytest.fixture
def recorded(tmp_path):
    """A two-run study: extraction and concepts of one model, with records, notebooks and stage timings."""
    root, results = tmp_path, tmp_path / "results" / "s"
    executed(root / "book/results/s/shapes/m__random/01_extract.ipynb", PARAMS + [
        ("import torch", 3.0, []), ("result = pipeline.run_extraction(study)", 20.0, []), ("figures.x()", 1.5, [])])
    executed(root / "book/results/s/shapes/m__random/02_concepts.ipynb", PARAMS + [
        ("import pandas", 2.5, []), ("paths = pipeline.run_concepts(study)", 30.0, []), ("plt.show()", 2.0, [])])
    (results / "shapes" / "m__random").mkdir(parents=True)
    (results / "shapes" / "m__random" / "concept_stage.json").write_text(json.dumps({"layers": {
        "l1": {"load_s": 1.0, "seg_s": 10.0, "cls_s": 4.0, "dissection_s": 2.0},
        "l2": {"load_s": 1.0, "seg_s": 6.0, "cls_s": 2.0, "dissection_s": 1.0}}}))
    (results / "shapes" / "m__random" / "extraction_timings.json").write_text(json.dumps({
        "model_build_s": 2.0, "dataset_open_s": 1.0, "mask_store_s": 4.0, "activations_s": 12.0, "extract_s": 16.5}))
    runs = results / "_runs"
    runs.mkdir()
    for stage, nb, seconds in (("extract", "01_extract", 30.0), ("concepts", "02_concepts", 40.0)):
        (runs / f"{stage}.json").write_text(json.dumps({
            "id": f"{stage}/shapes/m:random", "stage": stage, "dataset": "shapes", "model": "m:random",
            "status": "ok", "seconds": seconds,
            "executed_notebook": f"book/results/s/shapes/m__random/{nb}.ipynb"}))
    (runs / "failed.json").write_text(json.dumps({"id": "x", "status": "failed", "seconds": 99}))
    return root, results


def test_cell_parts_classify_by_the_stage_call():
    nb = nbformat.v4.new_notebook(cells=[
        new_code_cell("x = 1", metadata={"tags": ["parameters"], "papermill": {"duration": 0.5}}),
        new_code_cell("import a", metadata={"papermill": {"duration": 2.0}}),
        new_code_cell("summary, ex = pipeline.dataset_summary(study)", metadata={"papermill": {"duration": 3.0}}),
        new_code_cell("paths = pipeline.run_comparison(study)", metadata={"papermill": {"duration": 7.0}}),
        new_code_cell("display(fig)", metadata={"papermill": {"duration": 1.0}}),
    ])
    assert cell_parts(nb) == {"figures and tables": 1.5, "imports": 2.0, "dataset summary": 3.0, "comparison": 7.0}


def test_breakdown_sums_to_the_recorded_wall_times(recorded):
    root, results = recorded
    b = study_breakdown(results, root, book_build_s=12.0)
    parts = b["parts"]
    assert b["runs"] == 2 and b["run_seconds"] == 70.0  # the failed record is not counted
    assert sum(v for k, v in parts.items() if k != "book build") == pytest.approx(70.0)
    assert parts["imports"] == 5.5
    assert parts["model build"] == 2.0 and parts["dataset opening"] == 1.0 and parts["extraction: mask store"] == 4.0
    assert parts["extraction: forward passes and writes"] == 12.0 and parts["extraction"] == 1.0  # 20 s cell
    assert parts["concepts: seg"] == 16.0 and parts["concepts: cls"] == 6.0 and parts["concepts: dissection"] == 3.0
    assert parts["concepts: loading activations"] == 2.0 and parts["concepts: other"] == pytest.approx(3.0)
    # kernel start-up: wall minus cells, 30 - 24.53 and 40 - 34.53
    assert parts["kernel start-up"] == pytest.approx(5.47 + 5.47)
    assert b["kernel_start_up_per_run"] == pytest.approx(5.47) and b["imports_per_run"] == 2.75
    assert parts["book build"] == 12.0
    assert b["per_stage"]["extract"]["extraction: forward passes and writes"] == 12.0
    assert list(parts)[:3] == ["kernel start-up", "imports", "model build"]  # in the documented order


def test_efficiency_is_wall_over_the_forward_floor():
    bare = {"shapes/a": 120.0, "shapes/a:random": 120.0, "photo/a": 60.0}
    assert forward_floor(bare, 2) == 150.0
    assert study_efficiency(300.0, bare, 2) == 2.0
    assert study_efficiency(300.0, bare, 1) == 1.0
    with pytest.raises(ValueError, match="cores"):
        forward_floor(bare, 0)
    with pytest.raises(ValueError, match="bare forward"):
        forward_floor({}, 2)


def test_no_records_is_a_clear_error(tmp_path):
    (tmp_path / "_runs").mkdir()
    with pytest.raises(FileNotFoundError, match="no complete run recorded"):
        study_breakdown(tmp_path, tmp_path)


def test_performance_page_shows_the_breakdown(recorded, tmp_path):
    from common import entry
    from report import verdict, write_page

    root, results = recorded
    b = study_breakdown(results, root, book_build_s=12.0)
    bare = {"shapes/m:random": 50.0}
    details = {"jobs": 2, "cores": 2, "wall_s": 70.0, "book_build_s": 12.0, "bare_forward_s": bare,
               "forward_floor_s": forward_floor(bare, 2), "breakdown": b}
    e = entry("end_to_end/efficiency", "Study efficiency", "efficiency", "x", [study_efficiency(70.0, bare, 2)], 2.0,
              "lower", details)
    out = tmp_path / "site"
    write_page({"entries": {e["id"]: e}}, out / "performance.md", out / "_static" / "performance")
    page = (out / "performance.md").read_text()
    assert "Study efficiency **2.80**" in page and "| concepts: seg | 16 |" in page
    # the Targets table leads with the verdict and the target (read at 1,000 px without scrolling)
    assert "| Benchmark | Verdict | Target | Median |" in page
    assert "| `end_to_end/efficiency` | " + verdict(e) + " | " in page
    assert (out / "_static" / "performance" / "breakdown.png").stat().st_size > 1000


def test_run_extraction_records_where_its_time_went(tmp_path, monkeypatch):
    """pipeline.run_extraction writes extraction_timings.json beside the store (model, dataset, extract stubbed:
    this checks the bookkeeping, the stages are tested in their own modules)."""
    import types

    from conceptsim import pipeline
    from conceptsim.extraction import extract as extract_mod
    from conceptsim.models import registry

    monkeypatch.setenv("CONCEPTSIM_RESULTS", str(tmp_path))
    loaded = types.SimpleNamespace(preprocessing="pre")
    monkeypatch.setattr(registry, "build_model", lambda name, device, user_models=None: loaded)
    source = types.SimpleNamespace(sha256="s", annotation_file="a", image_dir="i", concepts=["red"])
    dataset = types.SimpleNamespace(split_rule="random")
    monkeypatch.setattr(pipeline, "open_dataset", lambda *a, **k: (dataset, source))
    result = types.SimpleNamespace(mask_seconds=1.5, activation_seconds=7.0, seconds=9.0, reused=False)

    def fake_extract(model, ds, path, **kw):
        Path(path).mkdir(parents=True)
        return result

    monkeypatch.setattr(extract_mod, "extract", fake_extract)
    opts = {"device": "cpu", "eval_grid": 16, "batch_size": 2, "num_workers": 0, "grid_cap": 8, "dtype": "float16",
            "compression": "none"}
    pipeline.run_extraction("s", "shapes", "mobilenet_v2_imagenet:random", [], {}, {"min_area": 0.0}, opts, 0)
    t = json.loads((tmp_path / "s" / "shapes" / "mobilenet_v2_imagenet__random" / "extraction_timings.json").read_text())
    assert t["mask_store_s"] == 1.5 and t["activations_s"] == 7.0 and t["extract_s"] == 9.0 and t["reused"] is False
    assert t["model_build_s"] >= 0 and t["dataset_open_s"] >= 0
