"""Network Dissection thresholds (exact and streaming quantiles) and unit IoU against brute force."""

import numpy as np
import pytest
import torch

from conceptsim.concepts import dissection as dis
from conceptsim.concepts.net2vec import EvalSet


def _batches(x, size=3):
    return lambda: ((np.arange(s, min(s + size, len(x))), torch.from_numpy(x[s : s + size])) for s in range(0, len(x), size))


@pytest.fixture(scope="module")
def acts():
    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, 1.0, (20, 5, 6, 7)).astype(np.float32)
    x[:, 3] = 1.5  # a constant unit
    x[:, 4] = np.round(x[:, 4])  # heavy ties
    return x


def test_exact_threshold_equals_sorted_quantile(acts):
    thr, err = dis.unit_thresholds(_batches(acts), 5)
    per_unit = acts.transpose(1, 0, 2, 3).reshape(5, -1)
    np.testing.assert_array_equal(thr, np.quantile(per_unit, dis.QUANTILE, axis=1, method="higher"))
    assert (err == 0).all()


def test_one_pass_top_threshold_equals_sorted_quantile(acts):
    thr, err = dis.unit_thresholds(_batches(acts), 5, values_per_unit=20 * 6 * 7, exact_max_values=0)
    per_unit = acts.transpose(1, 0, 2, 3).reshape(5, -1)
    np.testing.assert_array_equal(thr, np.quantile(per_unit, dis.QUANTILE, axis=1, method="higher"))
    assert (err == 0).all()
    with pytest.raises(ValueError, match="values_per_unit"):
        dis.unit_thresholds(_batches(acts), 5, values_per_unit=20 * 6 * 7 + 1)


def test_streaming_threshold_within_documented_bound(acts):
    thr, err = dis.unit_thresholds(_batches(acts), 5, exact_max_values=0, bins=16)
    per_unit = acts.transpose(1, 0, 2, 3).reshape(5, -1).astype(np.float64)
    exact = np.quantile(per_unit, dis.QUANTILE, axis=1, method="higher")
    span = per_unit.max(1) - per_unit.min(1)
    assert np.all(np.abs(thr - exact) <= err + 1e-12)
    np.testing.assert_allclose(err, span / (2 * 16**2))
    assert thr[3] == 1.5 and err[3] == 0


def test_unit_iou_matches_brute_force(acts):
    rng = np.random.default_rng(1)
    masks = torch.from_numpy(rng.random((20, 2, 6, 7)) < 0.2)
    boxes = torch.tensor([[0.0, 0.0, 6.0, 7.0]]).repeat(20, 1)
    ev = EvalSet(masks, boxes, (6, 7))  # eval grid == activation grid: resampling is the identity
    thr = np.quantile(acts.transpose(1, 0, 2, 3).reshape(5, -1), 0.8, axis=1)
    inter, union = dis.unit_iou_counts(_batches(acts)(), thr, ev)
    units = acts > thr[None, :, None, None]
    m = masks.numpy()
    for u in range(5):
        for k in range(2):
            assert inter[u, k] == (units[:, u] & m[:, k]).sum()
            assert union[u, k] == (units[:, u] | m[:, k]).sum()


def test_dissection_batch_size_changes_no_number(acts, monkeypatch):
    """Thresholds (exact top values) and IoU counts (integers) are the same for any batch size."""
    rng = np.random.default_rng(2)
    masks = torch.from_numpy(rng.random((20, 2, 12, 14)) < 0.3)
    ev = EvalSet(masks, torch.tensor([[0.0, 0.0, 6.0, 7.0]]).repeat(20, 1), (6, 7))  # upsampled x 2
    results = []
    for size in (1, 7, 20):
        thr, err = dis.unit_thresholds(_batches(acts, size), 5, values_per_unit=20 * 6 * 7)
        results.append((thr, err, *dis.unit_iou_counts(_batches(acts, size)(), thr, ev)))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)
    assert results[0][2].sum() > 0


def test_dissection_batch_rows_follow_the_layer_not_the_images():
    from conceptsim.concepts.layerdata import rows_per_read

    class Array:  # the shape is all batch_rows reads
        def __init__(self, *shape):
            self.shape = shape

    small, large = (dis.batch_rows(Array(n, 32, 32, 32), n * 32 * 32) for n in (48, 192))
    assert small == large == dis.BATCH_VALUES_PER_UNIT // (32 * 32)
    big = Array(1000, 1000, 40, 40)  # 6.4 MB per image as float32: a read holds 10
    assert dis.batch_rows(big, 1000 * 40 * 40) == rows_per_read(big) == 10
    assert dis.top_kept(1000) == 1000 - int(np.ceil(dis.QUANTILE * 999))


@pytest.mark.parametrize("channels_last,boxed", [(False, False), (True, False), (True, True)])
def test_fast_dissection_equals_the_plain_definition(channels_last, boxed):
    """Thresholds (order statistic of rank ceil(q (M - 1))) and IoU counts equal a direct computation (every map
    resampled): ties at the quantile, a constant unit, an all-zero (ReLU-dead) unit, a unit with fewer positives
    than kept, a negative unit, empty masks; with ``boxed``, three content boxes (resampling groups)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 7, 5, 4)).astype(np.float32)
    x[:, 1] = np.round(x[:, 1] * 2) / 2  # heavy ties, also at the quantile
    x[:, 2] = 0.7  # constant unit
    x[:, 3] = 0.0  # dead unit
    x[:, 4] = 0.0
    x[7, 4, 1, 1:3] = 5.0  # two positive values of one image: fewer than the kept top (m - r = 3)
    x[:, 6] = -3.0 + 0.1 * x[:, 6]  # negative everywhere: a negative threshold
    masks = rng.random((30, 3, 10, 8)) < 0.3
    masks[:, 1] = False  # an empty concept
    masks[::2, 2] = False  # absent from half the images
    boxes = torch.tensor([[0.0, 0.0, 5.0, 4.0]]).repeat(30, 1)
    if boxed:
        boxes[::3] = torch.tensor([1.0, 0.5, 4.0, 3.5])
        boxes[1::3] = torch.tensor([0.0, 1.0, 3.0, 4.0])
    ev = EvalSet(torch.from_numpy(masks), boxes, (5, 4))

    def batches(size):
        def gen():
            for s in range(0, 30, size):
                t = torch.from_numpy(x[s : s + size])
                yield np.arange(s, min(s + size, 30)), t.contiguous(memory_format=torch.channels_last) if channels_last else t
        return gen

    per_unit = x.transpose(1, 0, 2, 3).reshape(7, -1).astype(np.float64)
    m = per_unit.shape[1]
    plain_thr = np.sort(per_unit, axis=1)[:, int(np.ceil(dis.QUANTILE * (m - 1)))]
    for size in (1, 4, 30):  # the first batch smaller, equal to, larger than the kept values (m - r = 3)
        thr, err = dis.unit_thresholds(batches(size), 7, values_per_unit=m)
        np.testing.assert_array_equal(thr, plain_thr)
        assert (err == 0).all()
        inter, union = dis.unit_iou_counts(batches(size)(), thr, ev)
        up = ev.resampler((5, 4))(torch.from_numpy(x), np.arange(30)).numpy()
        units = up > thr.astype(np.float32)[None, :, None, None]
        plain_inter = np.einsum("nuhw,nkhw->uk", units.astype(np.int64), masks.astype(np.int64))
        plain_union = units.sum((0, 2, 3))[:, None] + masks.sum((0, 2, 3))[None, :] - plain_inter
        np.testing.assert_array_equal(inter, plain_inter)
        np.testing.assert_array_equal(union, plain_union)
    assert inter[:, 1].sum() == 0 and union[2].tolist() == masks.sum((0, 2, 3)).tolist()  # constant unit: never above
    assert units[:, 4].sum() > 0 and inter.sum() > 0 and thr[6] < 0
    assert len(np.unique(ev.resampler((5, 4)).group)) == (3 if boxed else 1)  # images in several content-box groups


def test_maps_skipped_before_resampling_cannot_exceed_the_threshold():
    """The bound of ``_may_exceed`` holds for thresholds just below a map's resampled maximum, and skips maps
    whose values are all clearly below their threshold."""
    rng = np.random.default_rng(4)
    x = torch.from_numpy((rng.normal(size=(12, 9, 6, 5)) * rng.choice([1e-3, 1.0, 1e3], size=(12, 9, 1, 1))).astype(np.float32))
    x[:, 0] = 2.5  # constant map: resampled values are 2.5 up to rounding
    boxes = torch.tensor([[0.0, 0.0, 6.0, 5.0], [1.0, 0.5, 5.0, 4.5], [0.3, 1.1, 5.5, 4.0]])[np.arange(12) % 3]
    ev = EvalSet(torch.zeros(12, 1, 13, 11, dtype=torch.bool), boxes, (6, 5))
    resample = ev.resampler((6, 5))
    sums = dis._weight_sums(resample)
    top = resample(x, np.arange(12)).amax((2, 3))  # 12 x 9 resampled maxima
    for b in range(12):
        groups = resample.group[[b]]
        below = torch.from_numpy(np.nextafter(top[b].numpy(), -np.inf))
        assert dis._may_exceed(x[b : b + 1], groups, sums, below).all()
        raw = x[b].amax((1, 2))
        assert not dis._may_exceed(x[b : b + 1], groups, sums, raw + x[b].abs().amax((1, 2)) * 1e-3).any()
