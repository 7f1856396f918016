"""The coco-icons report (``python -m conceptsim.book.coco_icons``): the power check's probes and summary."""

from __future__ import annotations

import numpy as np
import pytest


def test_power_check_probes_and_same_layer_summary():
    """probe_scores: features that carry the category give accuracy and AP near 1, noise near chance;
    power_summary reads the twin at the trained model's best val layer."""
    import pandas as pd

    from conceptsim.book.coco_icons import power_summary, probe_scores

    rng = np.random.default_rng(0)

    def split(n, signal):
        cat = rng.integers(0, 4, n)
        presence = np.eye(4, dtype=np.uint8)[cat]
        x = rng.normal(size=(n, 16)) + signal * np.eye(4, 16)[cat] * 4
        return x, cat, presence

    good = probe_scores(split(120, 1.0), split(60, 1.0), split(60, 1.0))
    noise = probe_scores(split(120, 0.0), split(60, 0.0), split(60, 0.0))
    assert good["accuracy"] > 0.9 and good["ap"] > 0.9 and good["ap_concepts"] == 4
    assert noise["accuracy"] < 0.5 and noise["ap"] < 0.5
    row = dict(train_images=120, test_images=60, accuracy=0.5)
    table = pd.DataFrame([
        {"model": "m", "layer": "a", "val_ap": 0.9, "ap": 0.8, **row}, {"model": "m", "layer": "b", "val_ap": 0.5, "ap": 0.9, **row},
        {"model": "m:random", "layer": "a", "val_ap": 0.2, "ap": 0.3, **row},
        {"model": "m:random", "layer": "b", "val_ap": 0.7, "ap": 0.6, **row}])
    summary = power_summary(table).iloc[0]
    assert summary["best_val_layer"] == "a" and summary["ap_twin"] == 0.3 and summary["ap_margin"] == pytest.approx(0.5)


def test_power_check_segmentation_probe_finds_a_planted_concept():
    """seg_probe_iou: a channel that carries concept 0's mask gives it a high test IoU; concept 1, carried by
    no channel, stays low; the every-object control is the IoU of the union of both masks."""
    import torch
    import torch.nn.functional as F

    from conceptsim.book.coco_icons import seg_probe_iou

    rng = np.random.default_rng(0)

    def split(n):
        masks = np.zeros((n, 2, 16, 16), bool)
        for i in range(n):
            for k in range(2):
                y, x = rng.integers(0, 9, 2)
                masks[i, k, y : y + 6, x : x + 6] = True
        targets = F.avg_pool2d(torch.from_numpy(masks).float(), 2).numpy()  # 8 x 8 activation grid
        acts = rng.normal(size=(n, 6, 8, 8)).astype(np.float32)
        acts[:, 0] += 4 * targets[:, 0]
        return acts, {"targets": targets, "masks": masks, "objects": masks.any(1),
                      "boxes": np.tile(np.array([0, 0, 64, 64], np.float32), (n, 1))}

    test = split(30)
    iou = seg_probe_iou(split(60), split(30), test, (64, 64), rounds=4)
    assert iou["test"][0] > 0.6 and iou["test"][1] < 0.3
    assert iou["val"][0] > 0.6
    masks = test[1]["masks"]
    assert iou["every_object"] == pytest.approx(masks.sum((0, 2, 3)) / masks.any(1).sum())
