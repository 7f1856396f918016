"""Metrics and controls of the concept stage against brute-force and scikit-learn references."""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, balanced_accuracy_score

from conceptsim.concepts import controls
from conceptsim.concepts.metrics import average_precision, balanced_accuracy, iou_counts, set_iou


def test_set_iou_matches_brute_force():
    rng = np.random.default_rng(1)
    pred = rng.random((7, 3, 9, 11)) < 0.3
    truth = rng.random((7, 3, 9, 11)) < 0.4
    got = set_iou(torch.from_numpy(pred), torch.from_numpy(truth))
    for k in range(3):
        inter = sum(int(pred[i, k, y, x] and truth[i, k, y, x]) for i in range(7) for y in range(9) for x in range(11))
        union = sum(int(pred[i, k, y, x] or truth[i, k, y, x]) for i in range(7) for y in range(9) for x in range(11))
        assert got[k] == pytest.approx(inter / union)


def test_set_iou_empty_union_is_nan_and_shape_mismatch_errors():
    z = torch.zeros(2, 1, 3, 3, dtype=torch.bool)
    assert np.isnan(set_iou(z, z)[0])
    with pytest.raises(ValueError, match="grids differ"):
        iou_counts(z, torch.zeros(2, 1, 4, 4, dtype=torch.bool))


def test_average_precision_matches_sklearn_with_ties():
    rng = np.random.default_rng(2)
    for _ in range(20):
        y = rng.random(40) < 0.3
        y[0] = True
        s = np.round(rng.standard_normal(40), 1)  # many ties
        assert average_precision(y, s) == pytest.approx(average_precision_score(y, s))
    batch = average_precision(np.stack([y, y]), np.stack([s, -s]))
    assert batch[1] == pytest.approx(average_precision_score(y, -s))
    assert np.isnan(average_precision(np.zeros(5), np.arange(5.0)))


def test_balanced_accuracy_matches_sklearn():
    rng = np.random.default_rng(3)
    y, p = rng.random(50) < 0.4, rng.random(50) < 0.5
    assert balanced_accuracy(y, p) == pytest.approx(balanced_accuracy_score(y, p))
    assert np.isnan(balanced_accuracy(np.ones(4), np.ones(4)))


def test_shuffle_is_seeded_derangement():
    p = controls.shuffle_permutation(50, 0)
    assert sorted(p) == list(range(50)) and not (p == np.arange(50)).any()
    assert (p == controls.shuffle_permutation(50, 0)).all()
    assert not (p == controls.shuffle_permutation(50, 1)).all()


def test_paired_bootstrap_represented_rule():
    rng = np.random.default_rng(4)
    n = 60
    union = np.full((n, 1), 100)
    good = (rng.integers(60, 90, (n, 1)), union)
    chance = (rng.integers(5, 20, (n, 1)), union)
    idx = controls.bootstrap_indices(n, 1000, 0)
    iv = controls.seg_intervals(good, chance, idx)[0]
    assert iv.ci_low < iv.value < iv.ci_high and iv.represented
    same = controls.seg_intervals(chance, chance, idx)[0]
    assert not same.represented
