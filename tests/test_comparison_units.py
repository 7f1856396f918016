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


def test_matches_do_not_depend_on_the_number_of_threads():
    m = matcher_with_layers(4, [9, 2, 14, 6, 11, 3, 5])
    one, two = m.results(workers=1), m.results(workers=2)
    for key in UNIT_MATRICES:
        np.testing.assert_array_equal(one[key], two[key], err_msg=key)
