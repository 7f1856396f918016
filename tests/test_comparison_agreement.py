"""Agreement beyond accuracy: seg_kappa (per-image strata), seg_kappa_max and cls_partial have known answers."""

import numpy as np
import pytest
import torch

from conceptsim.comparison.agreement import kappa_from_strata, partial_correlation, stratum_sums
from conceptsim.comparison.similarity import SegAccumulator, set_iou
from scenes import object_scene


def probe(truth: np.ndarray, miss: float, false_pos: float, rng, shared: np.ndarray | None = None) -> np.ndarray:
    """A mask that errs independently given the truth (``shared`` errors flipped on top)."""
    u = rng.random(truth.shape)
    out = np.where(truth, u >= miss, u < false_pos)
    if shared is not None:
        out = np.where(shared, ~truth, out)
    return out


def kappa(a, b, m):
    """Reference: strata (image, truth value) summed directly in numpy; returns (kappa, kappa_max, obs/exp)."""
    a, b, m = (np.asarray(x, bool).reshape(len(x), -1) for x in (a, b, m))
    o = (a & b).sum()
    e = mn = 0.0
    for s in (m, ~m):
        ns = s.sum(1)
        aa, bb = (a & s).sum(1), (b & s).sum(1)
        e += np.where(ns > 0, aa * bb / np.maximum(ns, 1), 0.0).sum()
        mn += np.minimum(aa, bb).sum()
    return kappa_from_strata(o, a.sum(), b.sum(), e, mn)


@pytest.mark.parametrize("miss,false_pos", [(0.3, 0.2), (0.05, 0.02), (0.01, 0.005)])
def test_conditionally_independent_probes_score_zero_however_accurate(miss, false_pos):
    rng = np.random.default_rng(0)
    truth = rng.random((100, 40, 40)) < 0.3
    a, b = probe(truth, miss, false_pos, rng), probe(truth, miss, false_pos, rng)
    k, kmax, ratio = kappa(a, b, truth)
    assert abs(k) < 0.03 and abs(kmax) < 0.03 and abs(ratio - 1) < 0.03
    # raw set IoU is high only because both are accurate
    if miss <= 0.05:
        assert set_iou(a, b) > 0.8


def test_copies_score_one_and_disjoint_errors_score_negative():
    rng = np.random.default_rng(1)
    truth = rng.random((50, 30, 30)) < 0.4
    a = probe(truth, 0.2, 0.1, rng)
    assert kappa(a, a, truth)[0] == pytest.approx(1.0)
    # errors that avoid each other (disjoint error sets) agree less than chance given the truth
    u = rng.random(truth.shape)
    a, b = truth ^ (u < 0.1), truth ^ ((u >= 0.1) & (u < 0.2))
    k, _, ratio = kappa(a, b, truth)
    assert k < -0.05 and ratio < 1


def test_dilated_mask_is_below_one_but_kappa_max_is_one():
    """A mask contained in the other scored 1 in the second version; Cohen's form keeps it below 1."""
    rng = np.random.default_rng(5)
    truth = np.zeros((30, 24, 24), bool)
    for i in range(30):
        y, x = rng.integers(4, 16, 2)
        truth[i, y : y + 6, x : x + 6] = True
    a = probe(truth, 0.2, 0.05, rng)
    b = a.copy()
    b[:, 1:] |= a[:, :-1]  # b = a dilated by one pixel down: contains a
    k, kmax, _ = kappa(a, b, truth)
    assert 0.3 < k < 0.95 and kmax == pytest.approx(1.0)


def test_shared_image_level_errors_do_not_raise_it():
    """Probes that both fire on the same *images* (image-level false alarms) agree at chance within images."""
    rng = np.random.default_rng(6)
    truth = rng.random((200, 16, 16)) < 0.2
    noisy = rng.random(200) < 0.5  # both probes fire falsely on half of the images, independently per pixel
    fp = np.where(noisy, 0.4, 0.01)[:, None, None]
    a = np.where(truth, rng.random(truth.shape) > 0.1, rng.random(truth.shape) < fp)
    b = np.where(truth, rng.random(truth.shape) > 0.1, rng.random(truth.shape) < fp)
    assert abs(kappa(a, b, truth)[0]) < 0.03
    # the second version's pooled strata counted the shared images as agreement
    pooled_truth = truth.reshape(1, -1)
    assert kappa(a.reshape(1, -1), b.reshape(1, -1), pooled_truth)[0] > 0.2


def test_planted_shared_errors_are_found_and_grow_with_sharing():
    rng = np.random.default_rng(2)
    truth = rng.random((150, 32, 32)) < 0.3
    ks = []
    for share in (0.0, 0.02, 0.05, 0.1):
        shared = rng.random(truth.shape) < share
        a = probe(truth, 0.1, 0.05, rng, shared)
        b = probe(truth, 0.1, 0.05, rng, shared)
        ks.append(kappa(a, b, truth)[0])
    assert abs(ks[0]) < 0.02
    assert ks[1] > 0.05 and np.all(np.diff(ks) > 0)


def test_perfect_or_empty_probe_is_undefined():
    truth = np.zeros((4, 8, 8), bool)
    truth[:, 2:5, 2:5] = True
    assert np.isnan(kappa(truth, truth, truth)[0])
    assert np.isnan(kappa(np.zeros_like(truth), np.zeros_like(truth), truth)[0])


def test_accumulator_with_truth_row_matches_direct_counts():
    rng = np.random.default_rng(3)
    n, grid = 12, (10, 10)
    truth = rng.random((n, 2, *grid)) < 0.3
    probes = [np.stack([probe(truth[:, k], 0.2, 0.1, rng) for k in range(2)], 1) for _ in range(3)]
    rows = probes + [truth]
    logits = torch.from_numpy(np.stack([np.where(r, 5.0, -5.0) for r in rows]).astype(np.float32))  # R x n x K
    logits = logits.permute(0, 2, 1, 3, 4).contiguous()  # R x K x n x gh x gw
    acc = SegAccumulator(4, 2, grid, track={1: np.array([[0, 1], [2, 0]])}, truth_row=3, image_quality=True)
    acc.update(logits[:, :, :5])
    acc.update(logits[:, :, 5:])
    res = acc.results()
    for k in range(2):
        for i in range(3):
            for j in range(3):
                want = kappa(rows[i][:, k], rows[j][:, k], truth[:, k])
                np.testing.assert_allclose(res["seg_kappa"][k, i, j], want[0], rtol=1e-10, equal_nan=True)
                np.testing.assert_allclose(res["seg_kappa_max"][k, i, j], want[1], rtol=1e-10, equal_nan=True)
                np.testing.assert_allclose(res["seg_obs_exp"][k, i, j], want[2], rtol=1e-10, equal_nan=True)
    counts = acc.per_image()[1]
    assert counts.shape == (n, 2, 5)
    pooled = counts.sum(axis=0)  # per-image strata sums add up to the pooled statistic
    np.testing.assert_allclose(kappa_from_strata(*pooled.T[:4], pooled[:, 4])[0],
                               [res["seg_kappa"][1, 0, 1], res["seg_kappa"][1, 2, 0]], rtol=1e-10)
    tp, size, t = acc.image_quality()
    assert tp.shape == (2, 4, n) and np.array_equal(t, truth.reshape(n, 2, -1).sum(2).T)
    iou = tp[0, 0].sum() / (size[0, 0].sum() + t[0].sum() - tp[0, 0].sum())
    assert iou == pytest.approx(set_iou(probes[0][:, 0], truth[:, 0]))
    with pytest.raises(ValueError, match="truth_row"):
        SegAccumulator(2, 1, grid, track={0: np.array([[0, 1]])})


def test_partial_correlation_given_the_label():
    rng = np.random.default_rng(4)
    n = 4000
    y = rng.random(n) < 0.4
    shared = rng.standard_normal(n)
    a = 3 * y + rng.standard_normal(n)
    b = 3 * y + rng.standard_normal(n)
    c = 3 * y + 0.6 * shared + 0.8 * rng.standard_normal(n)
    d = -1 * y + 0.6 * shared + 0.8 * rng.standard_normal(n)
    logits = np.stack([a, b, c, d])[None]  # K=1 x L x N
    r = partial_correlation(logits, y[:, None])[0]
    assert np.corrcoef(a, b)[0, 1] > 0.6  # raw correlation through the label
    assert abs(r[0, 1]) < 0.05
    assert r[2, 3] == pytest.approx(0.36, abs=0.05)
    assert r[0, 0] == pytest.approx(1.0)
    const = np.stack([3.0 * y, a])[None]  # a layer constant within classes: undefined
    assert np.isnan(partial_correlation(const, y[:, None])[0, 0, 1])


def test_probes_that_only_find_objects_agree_at_chance_with_object_strata():
    """Two probes that fire on every object (any category) share their false positives on the image's other
    objects: with (image, truth) strata that counts as agreement; with the any-object stratum it does not."""
    n, g = 60, 12
    truth, objects, (a, b) = object_scene(7, n, g)
    logits = torch.from_numpy(np.stack([a, b, np.where(truth, 5.0, -5.0)]).astype(np.float32))[:, None]  # R x 1 x n
    plain = SegAccumulator(3, 1, (g, g), truth_row=2)
    plain.update(logits)
    strata = SegAccumulator(3, 1, (g, g), truth_row=2, object_concepts=np.array([True]), image_quality=True)
    strata.update_streamed(n, lambda li, k, buf: logits[li, k].reshape(-1), objects=torch.from_numpy(objects.astype(np.uint8)))
    assert plain.results()["seg_kappa"][0, 0, 1] > 0.3
    assert abs(strata.results()["seg_kappa"][0, 0, 1]) < 0.05
    otp, osize = strata.object_quality()
    assert np.array_equal(otp[0], (objects & truth).reshape(n, -1).sum(1)) and np.array_equal(osize[0], objects.reshape(n, -1).sum(1))


@pytest.mark.parametrize("n_strata", [2, 3])
def test_stratum_counts_match_a_loop_over_rows_images_and_strata(n_strata):
    """The batched float32 product and the int8 block-diagonal product give the exact integer counts a plain
    loop gives, from int8 or float32 masks."""
    from conceptsim.comparison.agreement import stratum_counts

    rng = np.random.default_rng(5)
    r, n, p = 4, 3, 50
    masks = torch.from_numpy((rng.random((r, n, p)) < 0.4).astype(np.int8))
    t = torch.from_numpy((rng.random((n, p)) < 0.3).astype(np.int8))
    objects = torch.from_numpy((rng.random((n, p)) < 0.5).astype(np.int8))
    other = (1 - t) * objects
    strata = [t, 1 - t] if n_strata == 2 else [t, other, 1 - t - other]
    want = np.zeros((n_strata, r, n))
    for s, sm in enumerate(strata):
        for row in range(r):
            for i in range(n):
                want[s, row, i] = sum(int(masks[row, i, x]) * int(sm[i, x]) for x in range(p))
    for m, native in ((masks, False), (masks.float(), False), (masks, True)):  # True: one torch._int_mm
        got = stratum_counts(m, strata, native_int8=native)
        assert got.dtype == torch.float64 and got.shape == (n_strata, r, n)
        assert np.array_equal(got.numpy(), want)


def test_stratum_sums_equal_the_loop_over_strata_and_images():
    """``E`` and the min-sum of every row pair against the straightforward loop (integer counts: exact)."""
    rng = np.random.default_rng(7)
    s, r, n = 3, 5, 4
    counts = torch.from_numpy(rng.integers(0, 50, (s, r, n)).astype(np.float64))
    sizes = torch.from_numpy(rng.integers(0, 60, (s, n)).astype(np.float64))
    sizes[0, 1] = 0.0  # an empty stratum adds nothing
    e, mn = stratum_sums(counts, sizes)
    want_e, want_mn = np.zeros((r, r)), np.zeros((r, r))
    c, z = counts.numpy(), sizes.numpy()
    for i in range(r):
        for j in range(r):
            for st in range(s):
                for im in range(n):
                    if z[st, im] > 0:
                        want_e[i, j] += c[st, i, im] * c[st, j, im] / z[st, im]
                    want_mn[i, j] += min(c[st, i, im], c[st, j, im])
    np.testing.assert_allclose(e.numpy(), want_e, rtol=1e-12)
    np.testing.assert_array_equal(mn.numpy(), want_mn)
