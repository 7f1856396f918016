"""Verdicts with stated power: each verdict class on inputs built for it, t intervals, Holm per family."""

import numpy as np
import pytest
from scipy import stats

from conceptsim.comparison.verdicts import (
    CRITICAL_FAMILY_SIZES,
    MIN_CONCEPTS,
    FindingTest,
    assign_verdicts,
    critical_effect,
    minimum_detectable_effect,
    t_summary,
    verdict_counts,
)


def family(*tests):
    assign_verdicts(tests, "shapes: a vs b")
    return tests


def test_supported_contradicted_inconclusive_and_not_testable():
    rng = np.random.default_rng(0)
    supported = t_summary("finding1", "agreement", 0.3 + rng.normal(0, 0.05, 10))
    contradicted = t_summary("finding1", "agreement", -0.1 + rng.normal(0, 0.02, 10))
    inconclusive = t_summary("finding1", "agreement", 0.08 + rng.normal(0, 0.3, 6))
    too_few = t_summary("finding1", "agreement", [0.5, 0.6])
    family(supported, contradicted, inconclusive, too_few)
    assert supported.verdict == "supported" and supported.ci_low > 0 and supported.p_holm < 0.05
    assert contradicted.verdict == "contradicted" and contradicted.ci_high < 0.05
    assert inconclusive.verdict == "inconclusive" and inconclusive.mde > abs(inconclusive.effect)
    assert too_few.verdict == "not testable here" and too_few.ci_low is None and too_few.n == 2
    assert "at least 3" in too_few.reason
    # the family counts the testable tests only, and every test names it
    assert {t.family_size for t in (supported, contradicted, inconclusive, too_few)} == {3}
    assert verdict_counts([supported, contradicted, inconclusive, too_few]) == {
        "supported": 1, "contradicted": 1, "inconclusive": 1, "not testable here": 1}


def test_an_interval_above_zero_that_fails_holm_is_inconclusive_not_a_refutation():
    # p = 0.01 alone, but the family has 8 tests: Holm gives 0.08
    t = FindingTest("finding1", "agreement", effect=0.12, ci_low=0.01, ci_high=0.23, se=0.05, n=8, p_value=0.01)
    others = [FindingTest("x", "alignment", effect=0.0, ci_low=-1, ci_high=1, se=1, n=5, p_value=0.9) for _ in range(7)]
    assign_verdicts([t] + others, "f")
    assert t.p_holm == pytest.approx(0.08) and t.verdict == "inconclusive"
    assert t.mde == pytest.approx(minimum_detectable_effect(0.05, 8, 8))


def test_alignment_tests_are_contradicted_below_zero():
    t = t_summary("aligned", "alignment", [-0.1, -0.12, -0.08, -0.11])
    family(t)
    assert t.verdict == "contradicted"
    t2 = t_summary("aligned", "alignment", [0.01, 0.03, -0.02, 0.0])
    family(t2)
    assert t2.verdict == "inconclusive"


def test_no_interval_from_fewer_than_three_concepts():
    for k in range(MIN_CONCEPTS):
        t = t_summary("finding1", "agreement", np.ones(k), np.ones(100))
        assert t.ci_low is None and t.ci_high is None and not t.testable


def test_t_interval_keeps_its_level_with_few_concepts():
    """Percentile intervals over 5-8 concepts covered 84-89 % at a nominal 95 %; the t form keeps ~95 %."""
    rng = np.random.default_rng(1)
    cover = []
    for _ in range(2000):
        e = rng.normal(0.1, 0.2, 5)
        t = t_summary("finding1", "agreement", e)
        cover.append(t.ci_low <= 0.1 <= t.ci_high)
    assert 0.93 <= np.mean(cover) <= 0.97


def test_records_round_trip():
    t = t_summary("finding1", "agreement", [0.1, 0.2, 0.3, 0.2], None, note="x")
    family(t)
    back = FindingTest.from_json(t.to_json())
    assert back == t and back.details == {"note": "x"}


def test_a_permutation_tests_mde_is_at_least_its_critical_effect_plus_the_power_margin():
    crit = [0.05 * (1 + i / 10) for i in range(CRITICAL_FAMILY_SIZES)]
    t = FindingTest("aligned", "alignment", effect=0.02, ci_low=0.01, ci_high=0.03, se=0.005, n=10, p_value=0.2,
                    details={"critical_effects": crit})
    assign_verdicts([t, FindingTest("x", "alignment", effect=0.0, ci_low=-1, ci_high=1, se=1, n=5, p_value=0.9)], "f")
    margin = stats.t.ppf(0.8, 9) * 0.005
    assert t.mde == pytest.approx(crit[1] + margin) and t.mde > minimum_detectable_effect(0.005, 10, 2)
    assert t.verdict == "inconclusive"
    # a level the permutations cannot reach: no effect is detectable (stored as null)
    t.details["critical_effects"] = [None] * CRITICAL_FAMILY_SIZES
    assign_verdicts([t], "f")
    assert t.mde == float("inf") and t.to_json()["mde"] is None
    with pytest.raises(ValueError, match="family of 33 tests"):
        critical_effect(t, CRITICAL_FAMILY_SIZES + 1)
