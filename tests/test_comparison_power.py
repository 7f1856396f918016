"""The power check of finding 1 through the comparison stage's own functions (methods.md: controls that answer)."""

import numpy as np
import pytest

from conceptsim.comparison.power import eighty_percent_point, simulate_power

SIZES = dict(n_concepts=8, n_images=60, n_boot=500, grid=(6, 6), family_size=8)


@pytest.fixture(scope="module")
def curve(one_thread):
    return simulate_power([0.0, 0.1, 0.15, 0.2, 0.25, 0.3], n_studies=100, seed=1, **SIZES)


def test_no_effect_is_rarely_supported(one_thread):
    (null,) = simulate_power([0.0], n_studies=200, seed=2, **SIZES)
    assert null.supported <= 0.05 and abs(null.median_estimate) < 0.03


def test_stated_mde_matches_the_simulated_80_percent_point(curve):
    supported = [p.supported for p in curve]
    assert supported[0] <= 0.05 and supported[-1] >= 0.95
    assert np.all(np.diff(supported) >= -0.1)  # power grows with the effect (up to simulation noise)
    d80 = eighty_percent_point(curve)
    stated = np.median([p.median_mde for p in curve[:3]])  # what the page would state at these sizes
    assert abs(stated - d80) <= 0.05, (stated, d80)
