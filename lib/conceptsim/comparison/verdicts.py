"""Verdicts with stated power (methods.md, "Testing the findings, third version").

Every primary test of a finding ends in one of four verdicts:

- ``supported``: the 95 % interval lies clear of zero in the direction of the hypothesis *and* the
  Holm-corrected p-value (over the page's primary family) is below 0.05;
- ``contradicted``: the interval lies entirely below the smallest effect of interest (+0.05 for agreement
  differences, 0 for alignment advantages);
- ``inconclusive``: anything else; the record states the minimum detectable effect (MDE): the true effect
  the test would call supported with 80 % power at its sizes;
- ``not testable here``: fewer than :data:`MIN_CONCEPTS` concepts (no interval is ever computed from fewer).

Intervals over concepts (:func:`t_summary`) are Student-t intervals with ``k - 1`` degrees of freedom
around the mean of ``k`` per-concept effects, with a standard error that is either the plain standard error
of the per-concept effects or, for hierarchical designs, the standard deviation of bootstrap replicate means
(test images or source photos, then concepts) scaled by ``sqrt(k / (k - 1))``, the small-sample bias of
the bootstrap's plug-in variance. With 5-8 concepts, percentile intervals covered 84-89 % at a nominal
95 %; t intervals keep their level (tests). The one-sided p-value is the t distribution's tail of
``mean / se``, so it is not bounded below by the number of resamples.

The MDE (:func:`minimum_detectable_effect`) is ``(t_{1 - alpha / m} + t_{0.80}) * se`` with ``k - 1``
degrees of freedom and ``m`` the family size: the effect whose t statistic clears Holm's first (strictest)
step with probability 0.8. It is conservative when other tests of the family are significant (Holm's later
steps are milder); the power check (:func:`simulate_power`) measures where the 80 % point really lies.
A test whose p-value comes from a permutation null instead of the t tail (finding 2's *aligned*) records
in ``details["critical_effects"]`` the smallest effect that null lets through at each level ``alpha / m``
(``m = 1 ..``); its MDE is the larger of the t form and that critical effect plus ``t_{0.80} * se`` (the
observed effect must clear the null's critical point with probability 0.8), so an effect above the MDE is
not left inconclusive by the permutation test alone.

Records (:class:`FindingTest`) are typed and serialise with :meth:`FindingTest.to_json` /
:meth:`FindingTest.from_json`; :func:`assign_verdicts` applies Holm over a family and writes verdicts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Iterable

import numpy as np
from scipy import stats

from conceptsim.comparison.multiplicity import holm

#: no interval is computed from fewer concepts (the verdict is "not testable here")
MIN_CONCEPTS = 3
#: smallest effect of interest per kind of test
SMALLEST_EFFECT = {"agreement": 0.05, "alignment": 0.0, "control": 0.0}
ALPHA = 0.05
POWER = 0.80
VERDICTS = ("supported", "contradicted", "inconclusive", "not testable here")


@dataclass
class FindingTest:
    """One test of a finding: its effect, interval, p-values, verdict and power.

    ``effect`` is oriented so that positive values support the hypothesis (agreement trained - twins;
    alignment *advantage* = comparison error - trained error).
    """

    name: str  # "finding1", "aligned", "beyond_resolution", "from_training", "positive_control"
    kind: str  # "agreement" | "alignment" | "control": selects the smallest effect of interest
    effect: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    se: float | None = None
    n: int = 0  # concepts (or matches for the control)
    p_value: float | None = None
    p_holm: float | None = None
    mde: float | None = None
    verdict: str = "not testable here"
    reason: str | None = None
    family: str | None = None  # the family the p-value is corrected over (None: a diagnostic, uncorrected)
    family_size: int = 0
    details: dict = field(default_factory=dict)

    @property
    def testable(self) -> bool:
        return self.effect is not None and self.n >= MIN_CONCEPTS and self.p_value is not None

    def to_json(self) -> dict:
        return {k: _jsonable(v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict | None) -> "FindingTest | None":
        if d is None:
            return None
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _jsonable(v):
    if isinstance(v, (np.floating, float)):
        return float(v) if np.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def not_testable(name: str, kind: str, reason: str, n: int = 0, **details) -> FindingTest:
    """A record that states why no test was made."""
    return FindingTest(name, kind, n=int(n), reason=reason, details=details)


def t_summary(name: str, kind: str, effects: np.ndarray, replicate_means: np.ndarray | None = None,
              p_value: float | None = None, level: float = 0.95, **details) -> FindingTest:
    """Mean of per-concept ``effects``, its t interval and one-sided p (effect > 0).

    Parameters
    ----------
    effects : per-concept effects (NaN entries are dropped).
    replicate_means : hierarchical bootstrap replicate means of the effect (the standard error is their
        standard deviation times ``sqrt(k / (k - 1))``); ``None``: the plain standard error over concepts.
    p_value : a p-value from another null (e.g. a permutation test) that replaces the t tail.
    """
    e = np.asarray(effects, np.float64)
    e = e[np.isfinite(e)]
    k = len(e)
    if k < MIN_CONCEPTS:
        return not_testable(name, kind, f"{k} concept(s) (at least {MIN_CONCEPTS} needed for an interval)", n=k, **details)
    mean = float(e.mean())
    if replicate_means is not None:
        r = np.asarray(replicate_means, np.float64)
        r = r[np.isfinite(r)]
        se = float(r.std(ddof=0) * np.sqrt(k / (k - 1))) if len(r) > 1 else float("nan")
    else:
        se = float(e.std(ddof=1) / np.sqrt(k))
    df = k - 1
    if not np.isfinite(se) or se <= 0:
        se = max(float(np.finfo(float).eps), 1e-12)
    q = float(stats.t.ppf(0.5 + level / 2.0, df))
    p = float(stats.t.sf(mean / se, df)) if p_value is None else float(p_value)
    return FindingTest(name, kind, effect=mean, ci_low=mean - q * se, ci_high=mean + q * se, se=se, n=k, p_value=p,
                      details=details)


def minimum_detectable_effect(se: float, n: int, family_size: int, alpha: float = ALPHA, power: float = POWER,
                              critical: float | None = None) -> float:
    """True effect that reaches ``supported`` with probability ``power`` at Holm's strictest step.

    ``(t_{1 - alpha / m, k - 1} + t_{power, k - 1}) * se``; the interval condition (lower bound above zero)
    is implied whenever ``alpha / m <= 0.025``. ``critical``: for a p-value from a permutation null, the
    smallest effect whose p-value is below ``alpha / m`` (:func:`critical_effect`); the MDE is then at least
    ``critical + t_{power, k - 1} * se`` (infinite where no effect can reach that level).
    """
    df = max(int(n) - 1, 1)
    a = min(alpha / max(int(family_size), 1), 0.025)
    mde = float((stats.t.isf(a, df) + stats.t.ppf(power, df)) * se)
    if critical is not None:
        mde = max(mde, float(critical) + float(stats.t.ppf(power, df)) * se)
    return mde


#: family sizes for which a permutation test records its critical effect (``details["critical_effects"]``)
CRITICAL_FAMILY_SIZES = 32


def critical_effects(null_mean: float, critical_errors: np.ndarray) -> list[float | None]:
    """Critical effects (``null_mean - critical error``) of a permutation test for family sizes ``1 ..``,
    given the critical errors at levels ``alpha / m`` (``None`` where no observation reaches the level)."""
    return [float(null_mean - e) if np.isfinite(e) else None for e in np.asarray(critical_errors, np.float64)]


def critical_effect(t: FindingTest, family_size: int) -> float | None:
    """The critical effect ``t`` recorded for ``family_size`` (``None``: its p-value is the t tail;
    ``inf``: no effect reaches the level with the permutations made)."""
    crit = t.details.get("critical_effects")
    if crit is None:
        return None
    if family_size > len(crit):
        raise ValueError(f"test {t.name!r}: a family of {family_size} tests, but its permutation null records critical "
                         f"effects for families of at most {len(crit)} (CRITICAL_FAMILY_SIZES)")
    c = crit[family_size - 1]
    return float("inf") if c is None else float(c)


def decide(t: FindingTest) -> str:
    """The verdict of a test whose ``p_holm`` is set (see the module docstring)."""
    if not t.testable:
        return "not testable here"
    if t.ci_low is not None and t.ci_low > 0 and t.p_holm is not None and t.p_holm < ALPHA:
        return "supported"
    if t.ci_high is not None and t.ci_high < SMALLEST_EFFECT[t.kind]:
        return "contradicted"
    return "inconclusive"


def assign_verdicts(tests: Iterable[FindingTest], family: str) -> int:
    """Holm over the testable ``tests`` (one primary family), then verdict and MDE of each; returns the
    family size."""
    tests = list(tests)
    testable = [t for t in tests if t.testable]
    adj = holm([t.p_value for t in testable])
    m = len(testable)
    for t, a in zip(testable, adj):
        t.p_holm = float(a)
    for t in tests:
        t.family, t.family_size = family, m
        t.verdict = decide(t)
        if t.testable and t.se is not None:
            t.mde = minimum_detectable_effect(t.se, t.n, m, critical=critical_effect(t, m))
    return m


def diagnostic(t: FindingTest) -> FindingTest:
    """Mark a test as a diagnostic: uncorrected, no verdict beyond its interval."""
    t.family, t.family_size, t.p_holm = None, 0, None
    t.verdict = "diagnostic"
    return t


def verdict_counts(tests: Iterable[FindingTest]) -> dict[str, int]:
    """``{verdict: count}`` in the fixed order of :data:`VERDICTS` (zeros dropped)."""
    vs = [t.verdict for t in tests]
    return {v: vs.count(v) for v in VERDICTS if vs.count(v)}
