"""Finding statistics: the permutation test's calibration and power, best matches, emergence depth."""

import numpy as np
import pytest
from scipy.stats import kstest

from conceptsim.comparison.findings import (
    bootstrap_mean_ci,
    depth_matches,
    emergence_depth,
    finding1,
    permutation_test,
)


def test_permutation_p_values_uniform_under_null():
    rng = np.random.default_rng(0)
    ps = []
    for _ in range(200):
        da = np.sort(rng.random(8))
        db = np.sort(rng.random(10))
        concept = np.repeat(np.arange(4), 8)
        b_pos = rng.integers(0, 10, size=32)  # matches unrelated to depth
        ps.append(permutation_test(np.tile(da, 4), b_pos, concept, db, rng, n_perm=199)["p_value"])
    assert kstest(ps, "uniform").pvalue > 0.01
    hist = np.histogram(ps, bins=5, range=(0, 1))[0]
    assert hist.min() > 20  # ~40 expected per bin


def test_permutation_p_small_for_depth_aligned_layers():
    rng = np.random.default_rng(1)
    da = np.linspace(0.1, 1.0, 10)
    db = np.linspace(0.15, 1.0, 7)
    b_pos = np.abs(da[:, None] - db[None, :]).argmin(axis=1)
    res = permutation_test(np.tile(da, 3), np.tile(b_pos, 3), np.repeat(np.arange(3), 10), db, rng, n_perm=2000)
    assert res["p_value"] < 0.01
    assert res["error"] < res["null_mean"]
    assert res["n_matches"] == 30 and res["n_concepts"] == 3
    assert all(p < 0.05 for _, p in res["per_concept"].values())


def test_permutation_test_is_seeded():
    args = (np.array([0.2, 0.5]), np.array([0, 1]), np.array([0, 0]), np.array([0.3, 0.6, 0.9]))
    a = permutation_test(*args, np.random.default_rng(7), n_perm=500)
    b = permutation_test(*args, np.random.default_rng(7), n_perm=500)
    assert a == b


def test_depth_matches_picks_best_represented_layer():
    # 2 layers in A (0, 1), 3 in B (2, 3, 4); one concept
    s = np.zeros((1, 5, 5))
    s[0, 0, 2], s[0, 0, 3], s[0, 1, 4], s[0, 1, 3] = 0.9, 0.5, 0.2, 0.8
    rep = np.ones((5, 1), dtype=bool)
    a, b, k = depth_matches(s, np.array([0, 1]), np.array([2, 3, 4]), rep)
    assert list(a) == [0, 1] and list(b) == [0, 1] and list(k) == [0, 0]
    rep[3, 0] = False  # B layer 3 does not represent the concept: layer 1 falls back to layer 4
    a, b, k = depth_matches(s, np.array([0, 1]), np.array([2, 3, 4]), rep)
    assert list(b) == [0, 2]


def test_finding1_known_answers():
    rng = np.random.default_rng(0)
    K, L = 6, 8  # layers 0-1: A, 2-3: B, 4-5: A:random, 6-7: B:random
    sim = np.full((K, L, L), 0.1)
    sim[:, 1, 3] = sim[:, 3, 1] = 0.8
    sim[:, 4:, 4:] = 0.2
    control = np.full((K, L, L), 0.05)
    rep = np.ones((L, K), dtype=bool)
    la, lb = np.array([0, 1]), np.array([2, 3])
    names = [f"l{i}" for i in range(L)]
    out = finding1(sim, control, la, lb, rep, [f"c{k}" for k in range(K)], rng, twin_sim=sim,
                   twin_layers=(np.array([4, 5]), np.array([6, 7])), n_boot=200, layer_names=names)
    assert out["trained"]["mean"] == pytest.approx(0.8)
    assert out["random_twin"]["mean"] == pytest.approx(0.2)
    assert out["control"]["mean"] == pytest.approx(0.05)
    assert out["holds"] is True
    assert out["per_concept"][0]["layer_a"] == "l1" and out["per_concept"][0]["layer_b"] == "l3"
    sim[:, 4:, 4:] = 0.8  # twins as similar as trained models: the finding does not hold
    out = finding1(sim, control, la, lb, rep, [f"c{k}" for k in range(K)], rng, twin_sim=sim,
                   twin_layers=(np.array([4, 5]), np.array([6, 7])), n_boot=200)
    assert out["holds"] is False
    rep[:2, 0] = False  # concept 0 not represented in A: left out
    out = finding1(sim, control, la, lb, rep, [f"c{k}" for k in range(K)], rng, n_boot=200)
    assert out["trained"]["n"] == K - 1 and out["holds"] is True and out["twins_available"] is False


def test_bootstrap_and_emergence():
    ci = bootstrap_mean_ci([1.0, 2.0, 3.0, np.nan], np.random.default_rng(0), 500)
    assert ci["mean"] == 2.0 and ci["n"] == 3 and ci["ci_low"] <= 2.0 <= ci["ci_high"]
    assert bootstrap_mean_ci([], np.random.default_rng(0))["mean"] is None
    assert emergence_depth([0.1, 0.4, 0.7, 1.0], [0.1, 0.5, 0.95, 1.0]) == 0.7
    assert emergence_depth([0.1, 0.4], [0.0, 0.0]) != emergence_depth([0.1, 0.4], [0.0, 0.0])  # NaN
