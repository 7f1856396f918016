"""Holm's correction over the family of tests a findings document reports."""

import numpy as np
import pytest

from conceptsim.comparison.multiplicity import annotate_holm, holm


def test_holm_known_values():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.2]), [0.04, 0.09, 0.09, 0.2])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])
    out = holm([0.01, np.nan, 0.02])
    assert np.isnan(out[1]) and np.allclose(out[[0, 2]], [0.02, 0.02])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([1.5])


def test_annotate_holm_corrects_only_the_family():
    doc = {"pairs": [{"a": {"p_value": 0.01, "family": True}, "b": {"p_value": 0.04, "family": True}},
                     {"c": {"p_value": 0.03, "family": False}, "d": {"p_value": None, "family": True}}]}
    assert annotate_holm(doc) == 2
    assert doc["pairs"][0]["a"]["p_holm"] == pytest.approx(0.02)
    assert doc["pairs"][0]["b"]["p_holm"] == pytest.approx(0.04)
    assert "p_holm" not in doc["pairs"][1]["c"] and doc["pairs"][1]["d"]["p_holm"] is None
