"""Batched unit matching (:func:`conceptsim.comparison.units.batched_matches`) against the pair-by-pair loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conceptsim.comparison.units import UNIT_MATRICES, UnitMatcher


def matcher_with_layers(seed: int, widths: list[int], n: int = 40, dead: int = 2) -> UnitMatcher:
    """A matcher fed random layers of ``widths`` units, some sharing units (best buddies above chance),
    ``dead`` constant units in the first layer and a layer without any live unit when a width is 0."""
    rng = np.random.default_rng(seed)
    m = UnitMatcher(len(widths), n, max_images=32, seed=seed, alpha=0.2)
    base = rng.standard_normal((n, max(widths), 4, 4))
    for li, c in enumerate(widths):
        x = 0.7 * base[:, :c] + rng.standard_normal((n, c, 4, 4))
        if li == 0:
            x[:, :dead] = 3.0  # dead units: constant over images and cells
        if li == len(widths) - 1:
            x[:] = 1.0  # a layer of dead units only
        m.add_layer(li, torch.from_numpy(x).float())
    return m


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_matches_equal_the_pairwise_loop(seed):
    m = matcher_with_layers(seed, [7, 3, 12, 5, 9, 4])
    want = m.results_pairwise()
    got = m.results()
    assert set(got) == set(UNIT_MATRICES)
    for key in UNIT_MATRICES:
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-6, equal_nan=True, err_msg=key)
    assert np.array_equal(got["units_bb_count"], want["units_bb_count"])
    assert np.isnan(got["units_bb"][-1]).all() and (got["units_bb_count"][-1] == 0).all()  # the dead layer
    assert 0 < np.nanmax(got["units_bb"][0, 1:-1]) <= 1 and np.allclose(np.diag(got["units_bb"])[:-1], 1.0)


def test_non_finite_samples_fall_back_to_the_masking_pairwise_path():
    m = matcher_with_layers(3, [6, 5, 4])
    m.samples[1][0, 0] = float("nan")
    got, want = m.results(), m.results_pairwise()
    for key in UNIT_MATRICES:
        np.testing.assert_array_equal(got[key], want[key])


def test_kept_pairs_equal_the_full_matrices_and_the_others_stay_nan():
    m = matcher_with_layers(5, [6, 8, 5, 7, 4])
    full = m.results()
    keep = np.ones((5, 5), dtype=bool)
    keep[0, 2:4] = keep[2:4, 0] = keep[1, 4] = keep[4, 1] = False
    for got in (m.results(workers=2, keep=keep), m.results_pairwise(keep)):
        for key in UNIT_MATRICES:
            np.testing.assert_array_equal(got[key][keep], full[key][keep], err_msg=key)
            assert np.isnan(got[key][~keep]).all(), key
    with pytest.raises(ValueError, match="symmetric 5 x 5"):
        m.results(keep=np.triu(keep))
    with pytest.raises(ValueError, match="symmetric 5 x 5"):
        m.results(keep=keep[:4, :4])


def test_compared_models_rule():
    from conceptsim.comparison.outputs import compared_models

    kept = [("a", "a"), ("a", "a:random@1"), ("a:random", "a:random@2"), ("a", "b"), ("a:random", "b:random"),
            ("a:random@2", "b:random@2"), ("a:random@1", "pixels"), ("pixels", "b")]
    left_out = [("a", "b:random"), ("a:random", "b"), ("a:random@1", "b:random@2"), ("a:random", "b:random@1")]
    for x, y in kept:
        assert compared_models(x, y) and compared_models(y, x), (x, y)
    for x, y in left_out:
        assert not compared_models(x, y) and not compared_models(y, x), (x, y)


def test_matches_do_not_depend_on_the_number_of_threads():
    m = matcher_with_layers(4, [9, 2, 14, 6, 11, 3, 5])
    one, two = m.results(workers=1), m.results(workers=2)
    for key in UNIT_MATRICES:
        np.testing.assert_array_equal(one[key], two[key], err_msg=key)


def screen_case(seed: int, ca: int, cb: int, n: int = 512, shared: float = 0.8, duplicate: bool = False):
    """Standardised live-unit samples of two layers (``S x C``) sharing some directions, optionally with a
    duplicated unit in B (an exact tie at a row's maximum) and a constant-valued block of cells."""
    from conceptsim.comparison.units import unit_samples

    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, max(ca, cb)))
    a = shared * base[:, :ca] + rng.standard_normal((n, ca))
    b = shared * base[:, rng.permutation(max(ca, cb))[:cb]] + rng.standard_normal((n, cb))
    b[:, 0] = rng.standard_t(2, n)  # a heavy-tailed unit: a large int8 step and residual
    if duplicate:
        b[:, 1] = b[:, 2]
    za, live_a = unit_samples(torch.from_numpy(a.T[None]).float())
    zb, live_b = unit_samples(torch.from_numpy(b.T[None]).float())
    assert live_a.all() and live_b.all()
    return za, zb


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shared", [0.0, 0.5, 1.5])
def test_screened_share_is_the_float32_share_or_undecided(seed, shared):
    from conceptsim.comparison.units import UnitCodes, _mutual, int8_codes, screened_share

    za, zb = screen_case(seed, 40 + 7 * seed, 30 + 5 * seed, shared=shared)
    ca, cb = int8_codes(za), int8_codes(zb)
    code_a = UnitCodes(ca.q.T.contiguous(), ca.scale, ca.residual, ca.norm)
    n = za.shape[0]
    for threshold in (0.1, 0.3, 0.6):
        got = screened_share(za.T.contiguous(), zb.T.contiguous(), code_a, cb, n, threshold)
        want = _mutual(za.T.contiguous(), zb, n, threshold)[0]
        assert got is None or got == want, (threshold, got, want)
        if shared == 0.0 and threshold == 0.6:
            assert got == 0.0  # nothing near the threshold: the screen decides without a float32 product
    # the int8 codes' residual norms bound the estimate's error (Cauchy-Schwarz): check on the samples
    est = (ca.q.double() * ca.scale).T @ (cb.q.double() * cb.scale)
    exact = za.double().T @ zb.double()
    bound = ca.residual[:, None] * cb.norm[None, :] + (ca.norm + ca.residual)[:, None] * cb.residual[None, :]
    assert bool(((est - exact).abs() <= bound + 1e-9).all())


def test_screened_share_leaves_a_tie_at_the_maximum_to_the_float32_product():
    from conceptsim.comparison.units import UnitCodes, _mutual, int8_codes, screened_share

    za, zb = screen_case(7, 20, 15, shared=2.0, duplicate=True)
    zb[:, 1] = za[:, 3]  # unit 3 of A has two identical best partners in B, far above the threshold
    zb[:, 2] = za[:, 3]
    ca, cb = int8_codes(za), int8_codes(zb)
    code_a = UnitCodes(ca.q.T.contiguous(), ca.scale, ca.residual, ca.norm)
    assert screened_share(za.T.contiguous(), zb.T.contiguous(), code_a, cb, za.shape[0], 0.3) is None
    assert _mutual(za.T.contiguous(), zb, za.shape[0], 0.3)[0] > 0


@pytest.mark.parametrize("seed", [0, 5])
def test_screened_control_gives_the_unscreened_matrices(seed, monkeypatch):
    import conceptsim.comparison.units as units

    monkeypatch.setattr(units, "SCREEN_MIN_PAIRS", 0)  # screen every pair, however small
    monkeypatch.setattr(units, "int8_dot_products", lambda: True)  # whatever this CPU offers
    m = matcher_with_layers(seed, [30, 3, 45, 25, 38, 4], n=60)
    m.samples[2][:, 5] = m.samples[2][:, 6]  # a duplicated unit: ties in the control too
    m.samples[3][:, :4] = m.samples[2][:, :4]  # shared units between layers
    rows = m._permuted_rows()
    plain = units.batched_matches(m.samples, m.live, rows, m.threshold, screen=False)
    calls = []
    real = units.screened_share
    monkeypatch.setattr(units, "screened_share", lambda *a: calls.append(r := real(*a)) or r)
    screened = units.batched_matches(m.samples, m.live, rows, m.threshold, screen=True)
    for key in UNIT_MATRICES:
        np.testing.assert_array_equal(screened[key], plain[key], err_msg=key)
    assert any(c is not None for c in calls) and np.nanmax(plain["units_bb_control"][:-1, :-1]) > 0
