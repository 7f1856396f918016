"""Finding-2 statistics (combined matches, both nulls, predictors, positive control) and finding-1 bootstrap."""

import numpy as np
import pytest

from conceptsim.comparison.alignment import (
    block_recovery,
    combined_matches,
    critical_errors,
    permutation_test,
    predictor_agreement,
)
from conceptsim.comparison.finding1 import concept_level_means, image_weights, partial_replicates
from conceptsim.comparison.finding2 import advantage, aligned_test
from conceptsim.comparison.verdicts import FindingTest, assign_verdicts, minimum_detectable_effect, t_summary


def aligned_matrix(depths_a, depths_b, k=3):
    """Agreement that falls with the depth difference: the best match is the nearest relative depth."""
    d = np.concatenate([depths_a, depths_b])
    s = 1.0 - np.abs(d[:, None] - d[None, :])
    return np.repeat(s[None], k, axis=0)


def test_combined_test_pools_both_directions_and_detects_alignment():
    da, db = np.linspace(0.1, 1, 8), np.linspace(0.2, 1, 5)
    la, lb = np.arange(8), np.arange(8, 13)
    sim = aligned_matrix(da, db)
    rep = np.ones((13, 3), bool)
    m = combined_matches(sim, la, lb, rep)
    assert len(m) == 3 * (8 + 5)  # every represented layer of both models, every concept
    res = permutation_test(m, la, lb, np.concatenate([da, db]), np.random.default_rng(0), n_perm=500)
    assert res["p_value"] < 0.01 and res["error"] < 0.1 < res["null_mean"] and res["n_concepts"] == 3
    assert np.allclose(res["concept_null"].mean(), res["null_mean"])
    t = aligned_test(m, res, np.concatenate([da, db]))
    assert t.effect > 0.1 and t.ci_low > 0 and t.p_value == res["p_value"] and t.n == 3


def test_unaligned_matches_are_not_significant():
    rng = np.random.default_rng(1)
    da, db = np.linspace(0.1, 1, 8), np.linspace(0.2, 1, 5)
    la, lb = np.arange(8), np.arange(8, 13)
    sim = rng.random((4, 13, 13))
    m = combined_matches(sim, la, lb, np.ones((13, 4), bool))
    res = permutation_test(m, la, lb, np.concatenate([da, db]), np.random.default_rng(2), n_perm=500)
    assert res["p_value"] > 0.05


def test_oracle_ties_share_a_match_and_difference_has_an_interval():
    # A's layers 0,1 and B's layers 2,3 all share one grid: the oracle cannot tell them apart
    depths = np.array([0.2, 0.9, 0.25, 0.95])
    la, lb = np.array([0, 1]), np.array([2, 3])
    oracle = np.ones((2, 4, 4))
    mo = combined_matches(oracle, la, lb, np.ones((4, 2), bool), ties=True)
    assert np.allclose(mo.weight, 0.5)
    trained = combined_matches(aligned_matrix(depths[:2], depths[2:], k=2), la, lb, np.ones((4, 2), bool))
    d = advantage("beyond_resolution", trained, mo, depths, reason="")
    assert d.n == 2 and d.verdict == "not testable here"  # two concepts: no interval
    trained3 = combined_matches(aligned_matrix(depths[:2], depths[2:], k=3), la, lb, np.ones((4, 3), bool))
    mo3 = combined_matches(np.ones((3, 4, 4)), la, lb, np.ones((4, 3), bool), ties=True)
    d3 = advantage("beyond_resolution", trained3, mo3, depths, reason="")
    assert d3.n == 3 and d3.effect > 0.3 and d3.testable


def test_predictors_name_the_coordinate_that_matches():
    da, db = np.linspace(0.1, 1, 8), np.linspace(0.2, 1, 5)
    la, lb = np.arange(8), np.arange(8, 13)
    m = combined_matches(aligned_matrix(da, db), la, lb, np.ones((13, 3), bool))
    rel = np.concatenate([da, db])
    shuffled = np.random.default_rng(0).permutation(rel)
    out = predictor_agreement(m, {"relative_depth": rel, "stride": shuffled})
    assert out["best"] == "relative_depth" and out["spearman"]["relative_depth"] > 0.9


def test_block_recovery_counts_corresponding_blocks():
    la, lb = np.arange(3), np.arange(3, 6)
    sim = np.zeros((1, 6, 6))
    for a, b in ((0, 3), (1, 4), (2, 3)):  # layer 2's best match is not its block (5)
        sim[0, a, b] = sim[0, b, a] = 1.0
    res = block_recovery(sim, la, lb, np.ones((6, 1), bool), {0: 3, 1: 4, 2: 5})
    assert res["n"] == 6 and res["chance"] == pytest.approx(1 / 3)
    assert res["hits"] == 4 and res["rate"] == pytest.approx(4 / 6)  # 0->3, 1->4, 3->0, 4->1


def test_hierarchical_t_interval_and_weighted_partial():
    rng = np.random.default_rng(3)
    reps = rng.normal(0.3, 0.05, size=(4000, 6))
    out = t_summary("finding1", "agreement", np.full(6, 0.3) + rng.normal(0, 0.01, 6), concept_level_means(reps, rng))
    assert out.ci_low > 0.15 and out.p_value < 0.01 and out.n == 6
    null = t_summary("finding1", "agreement", rng.normal(0, 0.05, 6), concept_level_means(rng.normal(0.0, 0.05, (4000, 6)), rng))
    assert null.p_value > 0.01
    # image weights of all ones reproduce the plain partial correlation
    n = 300
    y = rng.random(n) < 0.5
    x = 2 * y + rng.standard_normal(n)
    z = 2 * y + 0.5 * (x - 2 * y) + rng.standard_normal(n)
    f = partial_replicates(x[None], z[None], y)
    w = image_weights(rng, 50, n)
    assert w.shape == (50, n) and np.allclose(w.sum(axis=1), n)
    r1 = f(np.ones((1, n)))[0, 0]
    res = [x[y] - x[y].mean(), x[~y] - x[~y].mean()]
    rz = [z[y] - z[y].mean(), z[~y] - z[~y].mean()]
    want = np.corrcoef(np.concatenate(res), np.concatenate(rz))[0, 1]
    assert r1 == pytest.approx(want)


def test_group_bootstrap_resamples_whole_groups():
    groups = np.array(["a", "a", "b", "b", "b", "c"])
    w = image_weights(np.random.default_rng(0), 200, 6, groups)
    assert w.shape == (200, 6)
    assert np.array_equal(w[:, 0], w[:, 1]) and np.array_equal(w[:, 2], w[:, 4])  # one multiplicity per group
    assert np.allclose(w[:, [0, 2, 5]].sum(axis=1), 3)  # three groups drawn per replicate


def test_critical_errors_are_where_the_permutation_p_value_crosses_each_level():
    null = np.random.default_rng(3).random(999)
    levels = np.array([0.05, 0.05 / 4, 0.05 / 8, 0.0005])
    crit = critical_errors(null, levels)

    def p(obs):  # permutation_test's p-value of an observed error
        return (1 + np.sum(null <= obs)) / (1 + len(null))

    for a, c in zip(levels[:3], crit[:3]):
        assert p(np.nextafter(c, -np.inf)) < a <= p(c)
    assert np.isnan(crit[3])  # 999 permutations cannot give p < 0.0005


def test_aligned_test_states_the_power_of_its_permutation_test():
    # few layers: the depth-permutation null is coarse, so a clear per-concept advantage (narrow t interval)
    # can still miss Holm's level; the MDE must say so rather than report the t form alone
    da, db = np.array([0.2, 0.5, 0.9]), np.array([0.3, 0.6, 1.0])
    la, lb = np.arange(3), np.arange(3, 6)
    depths = np.concatenate([da, db])
    m = combined_matches(aligned_matrix(da, db, k=12), la, lb, np.ones((6, 12), bool))
    res = permutation_test(m, la, lb, depths, np.random.default_rng(0), n_perm=2000)
    t = aligned_test(m, res, depths)
    others = [FindingTest("x", "alignment", effect=0.0, ci_low=-1, ci_high=1, se=1, n=5, p_value=0.9) for _ in range(7)]
    assign_verdicts([t] + others, "f")
    crit = t.details["critical_effects"][7]
    assert crit == pytest.approx(res["null_mean"] - critical_errors(res["null"], [0.05 / 8])[0])
    # 3! x 3! depth orders: perfect alignment is the null's best case, so p stays above 0.05 / 8 (any effect
    # is at most the critical one) while the t form alone would state a tiny MDE
    assert t.p_value > 0.05 / 8 and t.effect <= crit + 1e-12
    assert t.mde >= crit > 10 * minimum_detectable_effect(t.se, t.n, 8)
    assert t.ci_low > 0 and t.verdict == "inconclusive"  # the interval alone would have called it supported


def test_advantage_states_both_errors_over_the_concepts_it_compares():
    # the comparison matched concepts 0-2 only; the trained models all four: the errors shown beside the test
    # must be those of concepts 0-2, so that their difference is the effect
    depths = np.array([0.1, 0.5, 0.9, 0.2, 0.6, 1.0])
    la, lb = np.arange(3), np.arange(3, 6)
    trained = combined_matches(aligned_matrix(depths[:3], depths[3:], k=4), la, lb, np.ones((6, 4), bool))
    rep = np.ones((6, 4), bool)
    rep[:, 3] = False
    other = combined_matches(np.random.default_rng(0).random((4, 6, 6)), la, lb, rep)
    t = advantage("from_training", trained, other, depths, reason="")
    assert t.n == 3 and t.details["concepts"] == [0, 1, 2]
    assert t.effect == pytest.approx(t.details["comparison_error"] - t.details["error"])
