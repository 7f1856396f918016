"""Bootstrap AP and balanced accuracy from item multiplicities equal the metrics on resampled copies."""

import numpy as np

from conceptsim.concepts import controls
from conceptsim.concepts.metrics import (
    average_precision,
    balanced_accuracy,
    multiplicities,
    resampled_average_precision,
    resampled_balanced_accuracy,
)


def _case(seed=0, k=6, n=40, b=300):
    rng = np.random.default_rng(seed)
    y = (rng.random((k, n)) < 0.3).astype(np.uint8)
    y[0] = 0  # a concept without positives: NaN in both
    y[1] = 1  # ... and one without negatives
    score = np.round(rng.normal(size=(k, n)), 1)  # many tied scores
    idx = rng.integers(0, n, size=(b, n))
    return y, score, idx


def test_multiplicities_count_each_draw():
    idx = np.array([[0, 0, 2], [1, 2, 2]])
    np.testing.assert_array_equal(multiplicities(idx, 4), [[2, 0, 1, 0], [0, 1, 2, 0]])


def test_resampled_average_precision_equals_resampled_copies():
    y, score, idx = _case()
    old = average_precision(y[:, idx], score[:, idx])
    new = resampled_average_precision(y, score, multiplicities(idx, y.shape[1]))
    assert np.array_equal(np.isnan(old), np.isnan(new)) and np.isnan(new[0]).all()
    np.testing.assert_allclose(new, old, rtol=0, atol=1e-12)


def test_resampled_balanced_accuracy_equals_resampled_copies():
    y, score, idx = _case(1)
    old = balanced_accuracy(y[:, idx], score[:, idx] > 0)
    new = resampled_balanced_accuracy(y, score > 0, multiplicities(idx, y.shape[1]))
    assert np.array_equal(np.isnan(old), np.isnan(new)) and np.isnan(new[:2]).all()
    np.testing.assert_allclose(new, old, rtol=0, atol=1e-15)


def test_cls_intervals_match_the_resampled_copies():
    y, score, idx = _case(2, b=200)
    control = np.roll(score, 3, axis=1)
    ivs = controls.cls_intervals(y.T, score.T, control.T, idx)
    boot = average_precision(y[:, idx], score[:, idx]).T
    boot_c = average_precision(y[:, idx], control[:, idx]).T
    want = controls.summarise(average_precision(y, score), average_precision(y, control), boot, boot_c)
    fields = ("value", "ci_low", "ci_high", "control_value", "diff_low", "diff_high")
    for got, exp in zip(ivs["ap"], want):
        np.testing.assert_allclose([getattr(got, f) for f in fields], [getattr(exp, f) for f in fields], atol=1e-12)


def test_resampled_ap_int_counts_equal_the_float_path(monkeypatch):
    """Whole-number multiplicities run the running counts in int32: the APs are the float64 path's, bit for bit
    (ties, a concept without positives, resamples that miss every positive)."""
    from conceptsim.concepts import metrics

    rng = np.random.default_rng(5)
    y = (rng.random((6, 40)) < 0.2).astype(np.float64)
    y[0] = 0
    score = np.round(rng.normal(size=(6, 40)) * 2) / 2
    counts = metrics.multiplicities(rng.integers(0, 40, (300, 40)), 40)
    fast = metrics.resampled_average_precision(y, score, counts)
    monkeypatch.setattr(metrics, "_small_whole", lambda a, per_item: False)
    plain = metrics.resampled_average_precision(y, score, counts)
    assert fast.tobytes() == plain.tobytes() and np.isnan(fast[0]).all() and np.isfinite(fast[1:]).any()
