"""The benchmark runner writes a well-formed results.json and Performance page (structure only, no timings)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRY_KEYS = {"id", "benchmark", "title", "metric", "unit", "median", "min", "max", "q1", "q3", "n", "values",
              "target", "better", "passed", "excess", "details", "notes", "machine", "commit", "measured_at"}
MACHINE_KEYS = {"cores", "cpu_model", "torch_threads", "load_average"}


def test_quick_benchmarks_write_results(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--only", "dataset", "concepts", "comparison",
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["schema"] == 1 and MACHINE_KEYS <= set(data["machine"]) and data["commit"]
    ids = set(data["entries"])
    assert {"dataset_masks/shapes", "concepts_joint/speedup", "concepts_joint/iou_delta", "comparison_stage/default"} <= ids
    for e in data["entries"].values():
        assert ENTRY_KEYS <= set(e), ENTRY_KEYS - set(e)
        assert e["n"] == len(e["values"]) >= 1 and e["min"] <= e["median"] <= e["max"]
        assert isinstance(e["passed"], bool) and e["target"] is not None
        assert MACHINE_KEYS <= set(e["machine"]) and e["quick"] is True
    assert data["runs"] and not data["runs"][-1]["errors"]
    page = (tmp_path / "performance.md").read_text()
    assert page.startswith("# Performance")
    for img in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page):
        assert (tmp_path / img).is_file(), img
    assert "comparison_stage/default" in page
