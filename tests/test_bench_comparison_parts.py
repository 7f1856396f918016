"""The comparison stage's timeline (benchmarks/comparison_parts.py) on a small synthetic study: it times the
parts in the threads that run them, changes no output, and leaves the stage as it found it."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from comparison_parts import OUTPUTS, TIMED, measure  # noqa: E402


def test_timeline_times_each_part_and_changes_no_output(tmp_path):
    import conceptsim.comparison.stage as stage
    from conceptsim.comparison import units
    from conceptsim.comparison.synthetic import build_synthetic_study

    root = tmp_path / "ds"
    spec = {"a": [("l1", 0.3, 4, 4), ("l2", 1.0, 2, 4)], "b": [("m1", 0.5, 4, 3), ("m2", 1.0, 2, 3)]}
    spec.update({f"{m}:random": v for m, v in list(spec.items())})
    build_synthetic_study(root, spec, n_images=20, signal=lambda m, i, d, c: 0.1 if ":random" in m else 1.0)
    originals = {name: getattr(stage, name) for name in TIMED} | {"results": units.UnitMatcher.results}

    out = measure(tmp_path, "ds", list(spec), 0, 200, 50)

    parts = out["parts"]
    calls = [p["part"] for p in parts]
    assert calls.count("compute_similarities") == 2  # the val (selection) pass and the test pass
    assert {"plan_findings", "findings_document", "_label_free", "grid4_grams", "results"} <= set(calls)
    main = [p for p in parts if p["part"] == "compute_similarities"]
    assert all(p["thread"] == "MainThread" for p in main)
    assert main[0]["end"] <= main[1]["start"]  # the test pass follows the selection pass
    assert next(p for p in parts if p["part"] == "_label_free")["thread"] != "MainThread"
    assert all(0 <= p["start"] <= p["end"] <= out["wall_s"] + 0.01 and p["thread_cpu"] >= 0 for p in parts)
    assert out["process_cpu_s"] > 0 and all(u >= 0 for _, u in out["cores_busy"])

    # the instrumented run writes what a plain run writes, and the stage's functions are restored
    assert {name: getattr(stage, name) for name in TIMED} | {"results": units.UnitMatcher.results} == originals
    plain = tmp_path / "plain"
    stage.run_comparison_stage(root, plain, models=list(spec), seed=0, permutations=200, bootstrap=50)
    assert out["sha256"] == {name: hashlib.sha256((plain / name).read_bytes()).hexdigest()[:16] for name in OUTPUTS}
