"""Multiplicity control: Holm's step-down correction over the family of tests a page reports.

:func:`holm` adjusts a vector of p-values; :func:`annotate_holm` finds every ``p_value`` in a findings
document that belongs to the reported family (entries that carry ``"family": true`` beside their
``p_value``), corrects them together and writes ``p_holm`` beside each. The family of ``findings.json`` is
all tests of one dataset (finding 1 and finding 2, every model pair, method and kind, twins included); the
Findings page states that the correction is over that family.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np


def holm(p_values) -> np.ndarray:
    """Holm-adjusted p-values (same order; NaN stays NaN and does not count towards the family size).

    ``p_holm[i(j)] = max_{l <= j} min(1, (m - l + 1) p_(l))`` for the sorted p-values ``p_(1) <= ... <= p_(m)``.
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    if np.any((p[ok] < 0) | (p[ok] > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {p[ok].min()} .. {p[ok].max()}")
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(adj)
    return out


def family_entries(doc: Any) -> Iterator[dict]:
    """Every dict in ``doc`` (recursively, in document order) marked ``"family": true`` with a ``p_value``."""
    if isinstance(doc, dict):
        if doc.get("family") is True and "p_value" in doc:
            yield doc
        for v in doc.values():
            yield from family_entries(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from family_entries(v)


def annotate_holm(doc: dict) -> int:
    """Write ``p_holm`` beside every family ``p_value`` of ``doc`` (in place); returns the family size."""
    entries = list(family_entries(doc))
    adj = holm([np.nan if e["p_value"] is None else e["p_value"] for e in entries])
    for e, a in zip(entries, adj):
        e["p_holm"] = float(a) if np.isfinite(a) else None
    return int(np.isfinite(adj).sum())
