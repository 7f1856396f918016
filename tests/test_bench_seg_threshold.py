"""The fixed-threshold diagnostic (benchmarks/seg_threshold.py) on a small synthetic study: its counts are the
masks' own, a probe shifted by a known logit is recovered by the threshold grid, and the study table reads the
summary's layer and reproduces the fixed-threshold IoU."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from seg_threshold import THRESHOLDS, layer_thresholds, set_iou, threshold_counts, threshold_table  # noqa: E402

LAYERS = [("l1", 0.5, 8, 5), ("l2", 1.0, 4, 5)]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from conceptsim.comparison.stage import run_comparison_stage
    from conceptsim.comparison.synthetic import build_synthetic_study

    results = tmp_path_factory.mktemp("results")
    root = results / "synthetic" / "ds"
    models = {"a": LAYERS, "a:random": LAYERS}
    build_synthetic_study(root, models, n_images=40, signal=lambda m, i, d, c: 0.2 if ":random" in m else 1.5, seed=4)
    run_comparison_stage(root, root, models=list(models), permutations=50, bootstrap=20)
    # the synthetic tables carry no val quality: make the deeper layer the best on val
    import pandas as pd

    from conceptsim.paths import concept_quality_csv, model_dir_name

    for m in models:
        path = concept_quality_csv(root / model_dir_name(m))
        q = pd.read_csv(path)
        q["val_value"] = q["value"] - 0.5 * (q["layer"] == "l1")
        q.to_csv(path, index=False)
    return results, root


def brute_counts(so, li, threshold):
    import torch

    inter = np.zeros(len(so.concepts), dtype=np.int64)
    marked = np.zeros_like(inter)
    for chunk in so.iter_chunks():
        buf = torch.empty(len(chunk.rows) * so.eval_grid[0] * so.eval_grid[1])
        for k in range(len(so.concepts)):
            if chunk.seg_map(li, k, buf):
                b = buf.numpy() >= threshold
                marked[k] += b.sum()
                inter[k] += (b & chunk.truth[k].reshape(-1).numpy().astype(bool)).sum()
    return inter, marked


def test_counts_are_the_masks_counts_and_a_shifted_probe_is_recovered(study):
    from conceptsim.comparison.outputs import StudyOutputs

    _, root = study
    so = StudyOutputs(root, ["a"], split="test", truth=True, cls=False)
    inter, marked, truth = threshold_counts(so, 1)
    for th in (-1.0, 0.0, 2.5):
        j = int(np.flatnonzero(THRESHOLDS == th)[0])
        bi, bm = brute_counts(so, 1, th)
        assert np.array_equal(inter[:, j], bi) and np.array_equal(marked[:, j], bm)
    assert (truth > 0).all() and (np.diff(marked, axis=1) <= 0).all()  # a higher threshold marks no more
    so.seg_probes[1].bias.add_(2.0)  # every logit 2 higher: the masks at threshold 2 are those at 0 before
    shifted = threshold_counts(so, 1)
    j0, j2 = (int(np.flatnonzero(THRESHOLDS == t)[0]) for t in (0.0, 2.0))
    np.testing.assert_allclose(set_iou(*shifted)[:, j2], set_iou(inter, marked, truth)[:, j0], atol=2e-3)


def test_val_choice_bounds_and_the_study_table(study, monkeypatch):
    from conceptsim.comparison.summary import read_quality

    results, root = study
    res = layer_thresholds(root, "a", "l2", ["sky", "dog"])
    assert set(res) == {"fixed", "chosen", "chosen_p", "test_best"}
    assert (res["test_best"] >= res["fixed"]).all() and (res["test_best"] >= res["chosen"]).all()
    assert ((res["chosen_p"] > 0) & (res["chosen_p"] < 1)).all()
    with pytest.raises(ValueError, match="logit 0"):
        layer_thresholds(root, "a", "l2", ["sky"], thresholds=np.array([1.0, 2.0]))

    monkeypatch.setenv("CONCEPTSIM_RESULTS", str(results))
    rows = threshold_table("synthetic", "ds")
    assert [r["model"] for r in rows] == ["a"]
    q = read_quality("synthetic", "ds", "a")
    obj = sorted({c for c, cat in zip(q["concept"], q["category"]) if cat == "object"})
    seg = q[(q["method"] == "seg") & (q["metric"] == "set_iou") & q["concept"].isin(obj)]
    layer = rows[0]["layer"]
    assert layer == seg.groupby("layer")["val_value"].mean().idxmax() == "l2"
    # the fixed-threshold column: the masks' set IoU at logit 0 on test, mean over the object concepts
    from conceptsim.comparison.outputs import StudyOutputs

    so = StudyOutputs(root, ["a"], split="test", truth=True, cls=False)
    bi, bm = brute_counts(so, 1, 0.0)
    _, _, truth = threshold_counts(so, 1, np.array([0.0]))
    keep = [so.concepts.index(c) for c in obj]
    want = np.mean((bi / (bm + truth - bi))[keep])
    assert rows[0]["concepts"] == len(obj) and rows[0]["fixed"] == pytest.approx(want, abs=1e-12)
    assert rows[0]["twins_fixed"] < rows[0]["fixed"] and rows[0]["chosen"] >= 0
