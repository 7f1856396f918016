"""The solver-change benchmark (default vs reference probe solvers on a study's stored results), quick path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_solver_change import model_folders, study_params  # noqa: E402


def test_quick_solver_change_compares_stored_values_with_the_reference(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--only", "solver_change",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    data = json.loads((tmp_path / "results.json").read_text())
    assert not data["runs"][-1]["errors"]
    entries = data["entries"]
    assert set(entries) == {"solver_change/ap/synthetic", "solver_change/iou/synthetic", "solver_change/seconds"}
    d = entries["solver_change/seconds"]["details"]
    s = d["datasets"]["synthetic"]
    # two planted models x two layers x three concepts; Method A only on the trained one
    assert s["models"] == ["planted", "planted__random"] and s["seg_models"] == ["planted"] and s["layers"] == 4
    assert s["ap"]["n"] == 12 and s["iou"]["n"] == 6 and s["iou_lbfgs"]["n"] == 6
    # the study's own solvers rerun reproduce the stored values: the deltas measure the solver, nothing else
    assert s["ap_reproduction"]["max"] == 0.0
    assert s["solvers"] == {"seg_solver": ["reference"], "cls_solver": ["lbfgs"]}
    assert s["iou"]["max"] == 0.0  # the study's Method A solver is the reference itself
    assert 0 <= s["ap"]["median"] <= s["ap"]["max"] <= 1
    # split by whether both solvers chose the same C (read from the two runs' vector files)
    assert s["ap_same_c"]["n"] + s["ap_other_c"]["n"] == s["ap"]["n"] and s["ap_same_c"]["n"] > 0
    assert max(s["ap_same_c"]["max"], s["ap_other_c"]["max"] if s["ap_other_c"]["n"] else 0) == s["ap"]["max"]
    assert s["cls_reference_s"] > 0 and s["cls_default_s"] > 0 and s["seg_lbfgs_s"] > 0
    e = entries["solver_change/seconds"]
    assert e["median"] == pytest.approx(d["reference_s"] / d["default_s"], rel=0.01)
    page = (tmp_path / "performance.md").read_text()
    assert "## Change against the reference solvers" in page and "| synthetic | 2 | 4 | 12 |" in page
    assert f"| synthetic | {s['ap_same_c']['n']} | " in page  # the same-C table


def test_missing_results_and_parameters_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no concept-stage results"):
        model_folders(tmp_path)
    bad = tmp_path / "concept_stage.json"
    bad.write_text(json.dumps({"parameters": {"loss": "balanced_bce"}}))
    with pytest.raises(ValueError, match="concept_stage.json: parameters lack"):
        study_params(bad)
