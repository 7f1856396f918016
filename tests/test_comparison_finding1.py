"""Finding 1's parts with known answers: val quality under image weights, the learned-concept filter (twins
and the pixels floor, paired), same-layer twin pairs, the record round trip."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from conceptsim.comparison.agreement import kappa_from_strata
from conceptsim.comparison.finding1 import (
    Finding1,
    concept_level_means,
    depth_profile,
    image_weights,
    integer_weights,
    learned_concepts,
    seg_kappa_replicates,
    weighted_average_precision,
    weighted_set_iou,
)
from conceptsim.comparison.verdicts import t_summary


def test_weighted_ap_and_iou_reduce_to_the_plain_metrics():
    rng = np.random.default_rng(0)
    y = rng.random(80) < 0.3
    s = y * 1.0 + rng.normal(0, 0.8, (3, 80))
    ap = weighted_average_precision(s, y, np.ones((1, 80)))[0]
    np.testing.assert_allclose(ap, [average_precision_score(y, r) for r in s], rtol=1e-12)
    # an image drawn twice counts twice
    w = np.ones((1, 80))
    w[0, 5] = 2
    dup = np.concatenate([np.arange(80), [5]])
    np.testing.assert_allclose(weighted_average_precision(s, y, w)[0],
                               [average_precision_score(y[dup], r[dup]) for r in s], rtol=1e-12)
    tp, size, truth = np.array([[3, 0, 2]]), np.array([[4, 1, 2]]), np.array([5, 0, 3])
    assert weighted_set_iou(tp, size, truth, np.ones((1, 3)))[0, 0] == pytest.approx(5 / (7 + 8 - 5))


def synthetic_quality(n_layers=4, k=3, boot=400, trained=(0.6, 0.6, 0.3), twin=(0.3, 0.58, 0.29), pixels=0.2, sd=0.02,
                      seed=0):
    """Quality replicates of a trained model (layers 0..L-1), one twin (L..2L-1) and a pixels layer (2L)."""
    rng = np.random.default_rng(seed)
    pt = np.zeros((2 * n_layers + 1, k))
    pt[:n_layers] = np.array(trained)[None]
    pt[n_layers:2 * n_layers] = np.array(twin)[None]
    pt[-1] = pixels
    shared = rng.normal(0, sd, (boot, 1, k))  # the image draw moves every layer alike (paired)
    reps = pt[None] + shared + rng.normal(0, sd / 4, (boot, *pt.shape))
    return pt, reps


def test_learned_filter_is_paired_same_layer_and_needs_the_pixels_floor():
    pt, reps = synthetic_quality()
    names = [f"L{i}" for i in range(4)] * 2 + ["rgb"]
    out = learned_concepts(pt, reps, np.arange(4), [np.arange(4, 8)], np.array([8]), names, ["a", "b", "c"])
    assert out["a"].learned and out["a"].twin_margin_low > 0.2  # 0.6 vs 0.3
    # 0.6 vs 0.58 with paired replicates: the shared image draw cancels, the small difference is detected
    assert out["b"].learned and 0 < out["b"].twin_margin_low < 0.05
    assert not out["c"].learned and "twins" in out["c"].reason  # 0.3 vs 0.29 with noise: not clear of zero
    # a pixels floor above the trained model rules a concept out
    pt2, reps2 = synthetic_quality(pixels=0.65)
    out2 = learned_concepts(pt2, reps2, np.arange(4), [np.arange(4, 8)], np.array([8]), names, ["a", "b", "c"])
    assert not out2["a"].learned and "pixels" in out2["a"].reason
    # no twins: the filter cannot be applied
    assert learned_concepts(pt, reps, np.arange(4), [], None, names, ["a"])["a"].learned is None


def test_hierarchical_bootstrap_has_both_levels():
    rng = np.random.default_rng(1)
    # concepts differ (between-concept spread 0.1), images add little: the interval reflects the concepts
    k, b = 8, 4000
    per_concept = rng.normal(0.2, 0.1, k)
    reps = per_concept[None] + rng.normal(0, 0.01, (b, k))
    t = t_summary("finding1", "agreement", per_concept, concept_level_means(reps, rng))
    assert t.se == pytest.approx(per_concept.std(ddof=1) / np.sqrt(k), rel=0.15)
    w = image_weights(rng, 10, 6, np.array(["x", "x", "y", "y", "z", "z"]))
    assert np.array_equal(w[:, 0], w[:, 1])


def test_depth_profile_bins_trained_and_twins():
    depths = np.array([0.1, 0.5, 0.9, 0.1, 0.5, 0.9, 0.1, 0.5, 0.9, 0.1, 0.5, 0.9])
    sim = np.zeros((1, 12, 12))
    sim[0, 0, 3] = sim[0, 1, 4] = 0.4  # trained A (0..2) vs trained B (3..5) agree at matching depths
    sim[0, 6, 9] = 0.1  # twins (6..8 and 9..11) agree only at the stem
    prof = depth_profile(sim, np.arange(3), np.arange(3, 6), [(np.arange(6, 9), np.arange(9, 12))], depths, [0])
    assert prof["trained"][0] == pytest.approx(0.4) and prof["trained"][2] == pytest.approx(0.4)
    assert prof["twins"][0] == pytest.approx(0.1) and prof["twins"][2] == pytest.approx(0.0)
    assert prof["trained"][1] is None  # no layer in 0.2-0.4


def test_record_round_trip():
    rec = Finding1("seg_kappa", "val", t_summary("finding1", "agreement", [0.1, 0.2, 0.3]), n_learned=3,
                   per_category={"colour": t_summary("finding1", "agreement", [0.1, 0.2, 0.3])})
    back = Finding1.from_json(rec.to_json())
    assert back.test == rec.test and back.per_category == rec.per_category and back.n_learned == 3


def test_every_object_control_rules_out_probes_that_only_find_objects():
    from conceptsim.comparison.finding1 import beats_control, weighted_binary_ap

    rng = np.random.default_rng(3)
    y = rng.random(50) < 0.3
    s = rng.random(50) < 0.7
    assert weighted_binary_ap(s, y, np.ones((1, 50)))[0] == pytest.approx(average_precision_score(y, s.astype(float)))
    pt, reps = synthetic_quality()
    control = np.full((reps.shape[0], 3), 0.55)  # the every-object mask scores 0.55: beats 'b' (0.58)? barely
    control[:, 0] = 0.7  # concept a: the object mask is better than the trained probe
    beats = beats_control(reps, control, np.array([True, True, False]))
    names = [f"L{i}" for i in range(4)] * 2 + ["rgb"]
    out = learned_concepts(pt, reps, np.arange(4), [np.arange(4, 8)], np.array([8]), names, ["a", "b", "c"],
                           beats_every_object=beats)
    assert not out["a"].learned and "every-object" in out["a"].reason
    assert out["b"].learned  # 0.6 against 0.55 with paired replicates
    assert beats[:, 2].all()  # not an object concept: the control does not apply


def test_weighted_ap_with_bootstrap_multiplicities_is_bit_identical_to_float_sums():
    """Integer multiplicities are summed as int32: the same bits as a float64 loop reference, ties included."""
    rng = np.random.default_rng(1)
    n = 30
    y = rng.random(n) < 0.4
    s = y * 1.0 + rng.normal(0, 1.0, (4, n))
    s[:, 3] = s[:, 7]  # a tie
    w = image_weights(rng, 50, n)

    def reference(scores, labels, weights):
        out = np.full((weights.shape[0], scores.shape[0]), np.nan)
        for r in range(scores.shape[0]):
            order = np.argsort(-scores[r], kind="stable")
            ws, ys = weights[:, order].astype(np.float64), labels[order]
            cum_all, cum_pos = np.cumsum(ws, axis=1), np.cumsum(ws * ys, axis=1)
            prec = np.where(cum_all > 0, cum_pos / np.where(cum_all > 0, cum_all, 1.0), 0.0)
            pos_w = (ws * ys).sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[:, r] = np.where(pos_w > 0, (ws * ys * prec).sum(axis=1) / np.where(pos_w > 0, pos_w, 1.0), np.nan)
        return out

    assert np.array_equal(weighted_average_precision(s, y, w), reference(s, y, w), equal_nan=True)
    half = w * 0.5  # non-integer weights keep the float64 sums
    np.testing.assert_allclose(weighted_average_precision(s, y, half), reference(s, y, half), rtol=1e-12)


def test_seg_kappa_replicates_have_the_bits_of_one_einsum_over_all_columns():
    """Whole-number counts go through one BLAS product, E through its own sum: the same bits as summing all
    five columns with einsum, for image and for group (source photo) multiplicities."""
    rng = np.random.default_rng(3)
    n, p = 60, 7
    counts = np.zeros((n, p, 5))
    counts[..., 1:3] = rng.integers(0, 3136, size=(n, p, 2))
    counts[..., 0] = np.minimum(counts[..., 1], counts[..., 2]) * rng.random((n, p)) // 1
    counts[..., 3] = counts[..., 1] * counts[..., 2] / 3136 * rng.random((n, p))  # fractional expectations
    counts[..., 4] = np.minimum(counts[..., 1], counts[..., 2])
    counts[5] = 0  # an image where no probe marks anything
    for w in (image_weights(rng, 400, n), image_weights(rng, 400, n, groups=np.arange(n) // 15)):
        s = np.einsum("bn,npj->bpj", w, counts)
        expected = kappa_from_strata(s[..., 0], s[..., 1], s[..., 2], s[..., 3])[0]
        assert np.array_equal(seg_kappa_replicates(counts)(w), expected, equal_nan=True)


def test_weighted_ap_over_positives_only_has_the_running_sums_bits():
    """The positives-only form (integer weights) against the running sums over every rank: same bits on
    random scorers with ties, few and many positives, zero-weight positives and replicates without any."""
    from conceptsim.comparison.finding1 import _weighted_ap_running_sums

    rng = np.random.default_rng(7)
    for trial in range(40):
        n = int(rng.integers(3, 130))
        y = rng.random(n) < rng.uniform(0.02, 0.95)
        s = rng.normal(size=(int(rng.integers(1, 40)), n)) + y
        if trial % 3 == 0:
            s = np.round(s, 1)  # ties
        w = integer_weights(image_weights(rng, int(rng.integers(1, 200)), n))
        if trial % 5 == 0:
            w[0] = 0  # a replicate that draws no image: NaN
        assert np.array_equal(weighted_average_precision(s, y, w), _weighted_ap_running_sums(s, y, w), equal_nan=True)
