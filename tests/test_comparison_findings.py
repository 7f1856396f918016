"""Shared helpers of the findings' statistics: seeded generators, JSON-safe numbers, emergence depth."""

import math

import numpy as np

from conceptsim.comparison.findings import emergence_depth, finite_or_none, rng_for


def test_rng_for_is_seeded_per_name():
    a, b = rng_for(0, "pair", "seg").random(3), rng_for(0, "pair", "seg").random(3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, rng_for(0, "pair", "cls").random(3))
    assert not np.array_equal(a, rng_for(1, "pair", "seg").random(3))


def test_finite_or_none():
    assert finite_or_none(0.5) == 0.5 and finite_or_none(float("nan")) is None and finite_or_none(math.inf) is None


def test_emergence_depth():
    assert emergence_depth([0.1, 0.4, 0.7, 1.0], [0.1, 0.5, 0.95, 1.0]) == 0.7
    assert math.isnan(emergence_depth([0.1, 0.4], [0.0, 0.0]))
