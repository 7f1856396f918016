"""Finding 2, third version: similar concepts at similar relative depth, as three tests per model pair.

(methods.md, "Testing the findings, third version"; the matching machinery is in
:mod:`conceptsim.comparison.alignment`.)

Matches: for every concept and every layer of A where it is represented (on val), the layer of B (where it
is represented) with the highest agreement on val, and the same from B to A, pooled. Per concept, the
alignment error is the mean ``|depth(source) - depth(match)|``. Three verdicts, each its own test of an
*advantage* (comparison error - trained error, per concept; positive supports the finding):

- ``aligned``: against the depth-permutation null (each concept's mean error under permuted depths);
  p from the permutation test of the combined error;
- ``beyond_resolution``: against the resolution-only oracle that pools the ground truth to each layer's
  *native* output stride and matches layers the same way (segmentation only: image-level outputs have no
  resolution);
- ``from_training``: against the twins' matches (seeds pooled).

Intervals are t intervals over concepts (:func:`conceptsim.comparison.verdicts.t_summary`). Relative
depth, absolute depth and stride are compared as predictors of the matched layer. The result is a
:class:`Finding2` record; the positive control is a :class:`PositiveControl` record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from conceptsim.comparison.alignment import Matches, critical_errors, per_concept_error
from conceptsim.comparison.verdicts import (
    ALPHA,
    CRITICAL_FAMILY_SIZES,
    FindingTest,
    _jsonable,
    critical_effects,
    not_testable,
    t_summary,
)

COMPONENTS = ("aligned", "beyond_resolution", "from_training")
#: why classification has no beyond-resolution test (a test that does not apply, not one that lacks concepts)
NO_RESOLUTION = "image-level outputs have no resolution: the oracle applies to segmentation"


def applies(t: FindingTest) -> bool:
    """False for a test that cannot exist by design (classification's beyond-resolution test)."""
    return t.reason != NO_RESOLUTION


@dataclass
class Finding2:
    """The finding-2 record of one model pair and method (``findings.json`` schema 3)."""

    method: str
    selected_on: str
    aligned: FindingTest
    beyond_resolution: FindingTest
    from_training: FindingTest
    error: float | None = None
    null_mean: float | None = None
    oracle_error: float | None = None
    twin_error: float | None = None
    n_matches: int = 0
    n_concepts: int = 0
    predictors: dict | None = None
    match_stability: float | None = None
    diagnostics: dict = field(default_factory=dict)  # e.g. the twins' own permutation test (uncorrected)

    def tests(self) -> list[FindingTest]:
        return [self.aligned, self.beyond_resolution, self.from_training]

    def to_json(self) -> dict:
        d = {k: _jsonable(v) for k, v in asdict(self).items() if k not in COMPONENTS}
        for c in COMPONENTS:
            d[c] = getattr(self, c).to_json()
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Finding2":
        d = dict(d)
        for c in COMPONENTS:
            d[c] = FindingTest.from_json(d[c])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def advantage(name: str, m: Matches, other: Matches | None, depths: np.ndarray, *, reason: str) -> FindingTest:
    """Per-concept ``error(other) - error(m)`` over shared concepts, t summary (``reason`` when ``other`` is
    missing); ``details`` carry both mean errors over those same concepts (``error``, ``comparison_error``)."""
    if other is None or len(other) == 0 or len(m) == 0:
        return not_testable(name, "alignment", reason)
    k1, e1 = per_concept_error(m, depths)
    k2, e2 = per_concept_error(other, depths)
    common, i1, i2 = np.intersect1d(k1, k2, return_indices=True)
    return t_summary(name, "alignment", e2[i2] - e1[i1], concepts=[int(c) for c in common],
                     error=float(e1[i1].mean()) if len(common) else None,
                     comparison_error=float(e2[i2].mean()) if len(common) else None)


def aligned_test(m: Matches, perm: dict, depths: np.ndarray) -> FindingTest:
    """Advantage over the depth-permutation null; p from the permutation test (``perm`` of
    :func:`~conceptsim.comparison.alignment.permutation_test`), whose critical effects at the levels
    ``alpha / m`` are recorded for the MDE (:func:`~conceptsim.comparison.verdicts.minimum_detectable_effect`)."""
    if len(m) == 0:
        return not_testable("aligned", "alignment", "no concept is represented (on val) in layers of both models")
    keys, err = per_concept_error(m, depths)
    adv = np.asarray(perm["concept_null"]) - err
    levels = ALPHA / np.arange(1, CRITICAL_FAMILY_SIZES + 1)
    return t_summary("aligned", "alignment", adv, p_value=perm["p_value"], null_mean=perm["null_mean"],
                     critical_effects=critical_effects(perm["null_mean"], critical_errors(perm["null"], levels)))


@dataclass
class PositiveControl:
    """Models that share backbone blocks must be matched block to block (a control that can fail)."""

    model_a: str
    model_b: str
    method: str
    selected_on: str
    corresponding: dict
    rate: float | None
    chance: float | None
    null_mean: float | None
    p_value: float | None
    n: int
    hits: int
    n_blocks: int
    per_layer: dict
    passed: bool | None
    reason: str | None = None
    p_best: float | None = None  # the p a perfect recovery would have (the smallest reachable); None before

    def to_json(self) -> dict:
        return {k: _jsonable(v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict) -> "PositiveControl":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


#: the positive control needs at least this many corresponding blocks probed in both models
MIN_BLOCKS = 5


def positive_control(model_a: str, model_b: str, method: str, selected_on: str, corresponding: dict, res: dict,
                     alpha: float = 0.05) -> PositiveControl:
    """The record of :func:`~conceptsim.comparison.alignment.block_recovery`'s result ``res``: passed when the
    hit rate's permutation p is below ``alpha`` with at least :data:`MIN_BLOCKS` corresponding blocks, failed
    when it is not; neither (``passed`` None, with the reason) when even a perfect recovery would not reach
    ``alpha`` (``p_best``: the matches' candidate layers are too few for the control to decide anything)."""
    n_blocks = len(corresponding)
    reason = None
    passed: bool | None
    p_best = res.get("p_best")
    if n_blocks < MIN_BLOCKS:
        passed, reason = None, f"{n_blocks} corresponding block(s) probed in both models (at least {MIN_BLOCKS} needed)"
    elif res.get("p_value") is None:
        passed, reason = None, "no match lands where a corresponding block is a candidate"
    elif p_best is not None and p_best >= alpha:
        passed, reason = None, (f"even a perfect recovery would have p {p_best:.2g} (not below {alpha:g}): the "
                                f"matches have too few candidate layers (chance {res['chance']:.2f})")
    else:
        passed = bool(res["p_value"] < alpha)
    return PositiveControl(model_a, model_b, method, selected_on, corresponding, res.get("rate"), res.get("chance"),
                           res.get("null_mean"), res.get("p_value"), int(res.get("n", 0)), int(res.get("hits", 0)),
                           n_blocks, res.get("per_layer", {}), passed, reason, p_best)
