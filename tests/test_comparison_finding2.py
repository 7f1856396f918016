"""Finding 2's records and the positive control, a test that can fail."""

import numpy as np

from conceptsim.comparison.alignment import block_recovery
from conceptsim.comparison.finding2 import Finding2, positive_control
from conceptsim.comparison.verdicts import not_testable, t_summary


def agreement(feats_a, feats_b):
    """Concept-free stand-in for the selection matrix: |correlation| of layer outputs over images (1 concept)."""
    x = np.concatenate([feats_a, feats_b])
    c = np.abs(np.corrcoef(x))
    return c[None]


def control(feats_a, feats_b, seed=0):
    la, lb = np.arange(len(feats_a)), np.arange(len(feats_a), len(feats_a) + len(feats_b))
    corr = {int(a): int(b) for a, b in zip(la, lb)}
    res = block_recovery(agreement(feats_a, feats_b), la, lb, np.ones((len(la) + len(lb), 1), bool), corr,
                         rng=np.random.default_rng(seed), n_perm=2000)
    names = {f"blocks.{i}": f"features.{i + 1}" for i in range(len(la))}
    return positive_control("a", "b", "seg_kappa", "val", names, res)


def layers(rng, n_layers=6, n=200):
    """Successive layers of one network: each a noisy mix of the previous one."""
    out = [rng.standard_normal(n)]
    for _ in range(n_layers - 1):
        out.append(0.6 * out[-1] + 0.8 * rng.standard_normal(n))
    return np.stack(out)


def test_positive_control_passes_on_a_model_against_itself_with_noise():
    rng = np.random.default_rng(0)
    a = layers(rng)
    r = control(a, a + 0.3 * rng.standard_normal(a.shape))
    assert r.passed is True and r.rate == 1.0 and r.p_value < 0.01 and r.null_mean < 0.4


def test_positive_control_fails_on_two_unrelated_random_models():
    rng = np.random.default_rng(1)
    r = control(layers(rng), layers(rng))
    assert r.passed is False and r.p_value > 0.05


def test_too_few_blocks_cannot_answer():
    rng = np.random.default_rng(2)
    a = layers(rng, n_layers=3)
    r = control(a, a)
    assert r.passed is None and "at least 5" in r.reason


def test_a_control_whose_matches_have_one_or_two_candidates_cannot_fail_or_pass():
    """Where each match has one or two represented candidate layers, even a perfect recovery has a large
    permutation p: the control decides nothing and says so, instead of reading as failed."""
    rng = np.random.default_rng(4)
    a = layers(rng)
    la, lb = np.arange(6), np.arange(6, 12)
    sim = agreement(a, a + 0.3 * rng.standard_normal(a.shape))
    represented = np.zeros((12, 1), bool)
    represented[[0, 1, 6, 7]] = True  # only blocks 0 and 1 carry the concept in either model: 2 candidates
    names = {f"blocks.{i}": f"features.{i + 1}" for i in range(6)}
    res = block_recovery(sim, la, lb, represented, {int(x): int(x) + 6 for x in la}, rng=np.random.default_rng(0),
                         n_perm=2000)
    assert res["rate"] == 1.0 and res["chance"] == 0.5 and res["p_best"] >= 0.05  # perfect, and still p >= 0.05
    r = positive_control("a", "b", "seg_kappa", "val", names, res)
    assert r.passed is None and "perfect recovery" in r.reason and r.p_best == res["p_best"]
    # with every block a candidate the same perfect recovery is significant: the powered control passes
    powered = control(a, a + 0.3 * rng.standard_normal(a.shape))
    assert powered.passed is True and powered.p_best < 0.01 and powered.p_best <= powered.p_value


def test_record_round_trip():
    rec = Finding2("seg_kappa", "val", t_summary("aligned", "alignment", [0.1, 0.2, 0.15]),
                   not_testable("beyond_resolution", "alignment", "no oracle"), t_summary("from_training", "alignment",
                                                                                       [0.0, 0.1, -0.1]), error=0.1)
    back = Finding2.from_json(rec.to_json())
    assert back == rec and [t.name for t in back.tests()] == ["aligned", "beyond_resolution", "from_training"]
