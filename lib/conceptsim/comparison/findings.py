"""Shared helpers of the findings' statistics (methods.md, "Testing the findings, second version").

The stage reports the findings through :mod:`conceptsim.comparison.document` (with
:mod:`~conceptsim.comparison.learned`, :mod:`~conceptsim.comparison.alignment` and
:mod:`~conceptsim.comparison.multiplicity`); this module holds what they share: seeded generators
(:func:`rng_for`), JSON-safe numbers (:func:`finite_or_none`), the emergence depth and the quality arrays.

Emergence depth: per model, concept and method, the smallest relative depth at which the concept's quality
reaches 90 % of its maximum over the model's layers; undefined when the concept is represented in none of
the model's layers.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np
import pandas as pd

from conceptsim.comparison.outputs import StudyOutputs

QUALITY_METRIC = {"seg": "set_iou", "cls": "ap"}


def rng_for(seed: int, *names: str) -> np.random.Generator:
    """A generator seeded by ``seed`` and stable names (so results do not depend on iteration order)."""
    return np.random.default_rng([int(seed)] + [zlib.crc32(n.encode()) for n in names])


def finite_or_none(x: float) -> float | None:
    """JSON-friendly float: NaN and infinities become ``None``."""
    x = float(x)
    return x if np.isfinite(x) else None


def emergence_depth(depths: Sequence[float], quality: Sequence[float], frac: float = 0.9) -> float:
    """Smallest depth whose quality reaches ``frac`` of the maximum quality (NaN if no positive maximum)."""
    d = np.asarray(depths, dtype=np.float64)
    q = np.asarray(quality, dtype=np.float64)
    ok = np.isfinite(q) & np.isfinite(d)
    if not ok.any():
        return float("nan")
    d, q = d[ok], q[ok]
    top = q.max()
    if top <= 0:
        return float("nan")
    return float(d[q >= frac * top].min())


def quality_arrays(so: StudyOutputs, quality: pd.DataFrame, method: str) -> tuple[np.ndarray, np.ndarray]:
    """``L x K`` quality values and represented flags of ``method`` (``seg`` or ``cls``) per study layer."""
    nl, nk = len(so.layers), len(so.concepts)
    value = np.full((nl, nk), np.nan)
    rep = np.zeros((nl, nk), dtype=bool)
    q = quality[(quality["method"] == method) & (quality["metric"] == QUALITY_METRIC[method])]
    index = {(pl.model, pl.layer): pl.index for pl in so.layers}
    cindex = {c: i for i, c in enumerate(so.concepts)}
    for m, layer, c, v, r in q[["model", "layer", "concept", "value", "represented"]].itertuples(index=False):
        li, ki = index.get((m, str(layer))), cindex.get(c)
        if li is not None and ki is not None:
            value[li, ki] = v
            rep[li, ki] = r
    return value, rep


def represented_flags(so: StudyOutputs, quality: pd.DataFrame, select: dict) -> dict[str, np.ndarray]:
    """``{method: L x K}`` represented flags as the findings read them (methods.md, "Controls"): the concept
    stage's flag (val quality above the shuffled control), and for object concepts also above the every-object
    mask on val (``select["beats_every_object"]``, set by :func:`~.document.plan_findings`).

    Every table that averages over represented concepts (``layer_similarity.csv``, the ``represented`` column
    of ``similarity.csv``, ``grounding.csv``) reads these, so the tables and the findings count the same
    concepts."""
    rep = {}
    for method in ("seg", "cls"):
        rep[method] = quality_arrays(so, quality, method)[1]
        beats = (select.get("beats_every_object") or {}).get(method)
        if beats is not None:  # object concepts: represented only where the probe beats the every-object mask
            rep[method] &= beats
    return rep
