"""Grounding the measures: tests with a known answer for every similarity measure (methods.md, ReSi).

Layer monotonicity (Klabunde et al., ICLR 2025, "ReSi", test 6 in spirit). Within one model, layer ``i``
should be more similar to a layer close to it than to a layer further away on the same side. With the
model's layers in depth order:

- **violation rate**: over all triples ``(i, j, k)`` with ``j != i`` and ``j``, ``k`` on the same side of
  ``i`` and ``|i - j| < |i - k|`` (so ``j`` lies between ``i`` and ``k``), the share where
  ``s(i, j) < s(i, k)``; a tie counts one half. Triples with an undefined similarity are left out.
  (ReSi compares all pairs at different distances; the same-side triple is the ordering that holds for
  *any* chain of successive transformations, also when the chain's similarity decays at different rates
  in different parts of the model.)
- **Spearman**: for every anchor ``i`` and side with at least 3 layers, the rank correlation of
  ``s(i, j)`` and ``|i - j|`` over the layers ``j`` on that side, averaged over anchors and sides (a good
  measure: -1). Within one side the distances are distinct, so a perfectly ordered measure reaches -1
  exactly; over all pairs of the model at once (``spearman_pairs``, ReSi's form, also reported) ties in
  distance cap the attainable value above -1 (about -0.97 for 6 layers) and a measure that decays at
  different rates in different parts of the model is penalised although its every ordering is right.

Both on successive noisy copies of one layer are exactly 0 and -1 for every measure worth its name
(``tests/test_grounding.py``). The concept measures are tested on their layer-level matrix, the mean over
the concepts represented in both layers (``concepts = represented``, as in ``layer_similarity.csv``) and
on the mean over every concept both layers have a vector for (``concepts = all``, which also covers
twins that represent few concepts); the label-free measures (CKA, unit matching) have ``concepts = none``.

``grounding.csv`` (written by the comparison stage beside ``layer_similarity.csv``), one row per test,
dataset, model (or model pair) and method:

================  ====================================================================================
test              ``layer_monotonicity`` or ``units_depth_alignment``
dataset           the dataset folder's name
model, model_b    the model (``model_b`` empty for monotonicity; the second model for depth alignment)
method            the similarity measure (``similarity.csv`` names, plus ``units_bb``, ``units_bb_corr``)
concepts          ``represented`` / ``all`` for the concept measures, ``none`` for the label-free ones
n_layers          layers of the model with at least one defined similarity
n_triples         ordered triples behind the violation rate
violation_rate    see above (NaN without triples)
n_pairs           distinct layer pairs with a defined similarity (behind ``spearman_pairs``)
spearman          see above (NaN without a side of 3 layers with non-constant values)
spearman_pairs    Spearman of similarity and distance over all distinct layer pairs (NaN with fewer than 3)
alignment_error   depth alignment only: mean |relative depth of A's layer - depth of its best B layer|
null_mean         depth alignment only: the same error averaged over all assignments of B's depths
================  ====================================================================================
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from conceptsim.comparison.units import UNIT_METHODS, depth_alignment

GROUNDING_COLUMNS = ("test", "dataset", "model", "model_b", "method", "concepts", "n_layers", "n_triples",
                     "violation_rate", "n_pairs", "spearman", "spearman_pairs", "alignment_error", "null_mean")


def monotonicity(sim: np.ndarray) -> dict[str, float]:
    """Violation rate and Spearman correlation of one model's ``L x L`` similarity matrix (layers in depth
    order; symmetric or not, only ``sim[i, j]`` with ``i`` the anchor is read)."""
    s = np.asarray(sim, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f"sim must be a square L x L matrix, got shape {s.shape}")
    nl = s.shape[0]
    idx = np.arange(nl)
    viol = total = 0.0
    rhos = []
    for i in range(nl):
        for side in (idx[idx > i], idx[idx < i][::-1]):  # nearest first on both sides
            v = s[i, side]
            dist = np.abs(side - i)[np.isfinite(v)]
            v = v[np.isfinite(v)]
            if len(v) < 2:
                continue
            near, far = np.triu_indices(len(v), k=1)  # near is closer to i than far
            total += len(near)
            viol += np.sum(v[near] < v[far]) + 0.5 * np.sum(v[near] == v[far])
            if len(v) >= 3 and np.ptp(v) > 0:
                rhos.append(rank_correlation(v, dist))
    iu, ju = np.triu_indices(nl, k=1)
    vals = 0.5 * (s[iu, ju] + s[ju, iu])
    ok = np.isfinite(vals)
    rho_pairs = rank_correlation(vals[ok], (ju - iu)[ok]) if ok.sum() >= 3 else float("nan")
    defined = np.isfinite(s) & ~np.eye(nl, dtype=bool)
    return {"n_layers": int((defined.any(axis=0) | defined.any(axis=1)).sum()), "n_triples": int(total),
            "violation_rate": viol / total if total else float("nan"), "n_pairs": int(ok.sum()),
            "spearman": float(np.mean(rhos)) if rhos else float("nan"), "spearman_pairs": rho_pairs}


def rank_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman correlation; NaN when either side is constant."""
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def concept_mean(values: np.ndarray, include: np.ndarray) -> np.ndarray:
    """``L x L`` mean over concepts of ``K x L x L`` similarities where ``include`` (and the value) holds."""
    both = include & np.isfinite(values)
    count = both.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.where(both, values, 0.0).sum(axis=0) / np.maximum(count, 1), np.nan)


def layer_matrices(sims: dict[str, np.ndarray], represented: dict[str, np.ndarray] | None, concept_methods: dict,
                   label_free: tuple[str, ...]) -> list[tuple[str, str, np.ndarray]]:
    """``(method, concepts, L x L matrix)`` of every measure in ``sims``.

    ``concept_methods`` maps a concept method to its quality kind (``seg`` / ``cls``), ``represented`` a
    kind to its ``L x K`` flags (None: only ``concepts = all``).
    """
    out = []
    for method, kind in concept_methods.items():
        if method not in sims:
            continue
        v = np.asarray(sims[method], dtype=np.float64)
        if represented is not None and kind in represented:
            r = np.asarray(represented[kind], dtype=bool).T  # K x L
            out.append((method, "represented", concept_mean(v, r[:, :, None] & r[:, None, :])))
        out.append((method, "all", concept_mean(v, np.ones(v.shape, dtype=bool))))
    out.extend((m, "none", np.asarray(sims[m], dtype=np.float64)) for m in label_free if m in sims)
    return out


def grounding_frame(dataset: str, models: list[str], layer_models: list[str], depths: np.ndarray,
                    matrices: list[tuple[str, str, np.ndarray]]) -> pd.DataFrame:
    """Rows of ``grounding.csv`` (see the module docstring) from study-wide ``L x L`` matrices.

    Parameters
    ----------
    models : the study's models; layer_models : the model of every study layer; depths : their depths.
    matrices : from :func:`layer_matrices`.
    """
    lm = np.asarray(layer_models, dtype=object)
    depths = np.asarray(depths, dtype=np.float64)
    layers_of = {m: np.flatnonzero(lm == m)[np.argsort(depths[lm == m], kind="stable")] for m in models}
    rows = []
    for method, concepts, mat in matrices:
        for m in models:
            li = layers_of[m]
            rows.append({"test": "layer_monotonicity", "dataset": dataset, "model": m, "model_b": "", "method": method,
                         "concepts": concepts, **monotonicity(mat[np.ix_(li, li)])})
        if method != UNIT_METHODS[0]:
            continue
        for a, ma in enumerate(models):
            for mb in models[a + 1:]:
                la, lb = layers_of[ma], layers_of[mb]
                pairs = {(int(x), int(y)): float(mat[x, y]) for x in la for y in lb}
                al = depth_alignment(pairs, depths, la, lb)
                rows.append({"test": "units_depth_alignment", "dataset": dataset, "model": ma, "model_b": mb,
                             "method": method, "concepts": concepts, "n_layers": al["n_layers"],
                             "alignment_error": al["alignment_error"], "null_mean": al["null_mean"]})
    return pd.DataFrame(rows, columns=list(GROUNDING_COLUMNS))


def group_separation(sim: np.ndarray, groups) -> dict[str, float]:
    """ReSi's scores of a grouping test (shortcut affinity, label randomisation) for one measure.

    Networks of the same group (e.g. trained with the same cue probability) should be more similar to
    each other than to networks of other groups.

    Parameters
    ----------
    sim : ``n x n`` similarity of n networks (one number per pair, e.g. of their last probed layers).
    groups : the group of every network.

    Returns
    -------
    ``auprc``: average precision of the distinct pairs ranked by similarity, same-group pairs positive
    (chance: the share of same-group pairs, ``base_rate``); ``violation_rate``: over triples (anchor i,
    same-group j, other-group k), the share with ``s(i, j) < s(i, k)`` (ties one half; 0 for a perfect
    measure); undefined pairs are left out.
    """
    from conceptsim.concepts.metrics import average_precision

    s = np.asarray(sim, dtype=np.float64)
    g = np.asarray(groups)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or len(g) != s.shape[0]:
        raise ValueError(f"sim must be n x n with one group per network, got {s.shape} and {len(g)} groups")
    iu, ju = np.triu_indices(len(g), k=1)
    vals = 0.5 * (s[iu, ju] + s[ju, iu])
    same = (g[iu] == g[ju]).astype(np.float64)
    ok = np.isfinite(vals)
    auprc = float(average_precision(same[ok], vals[ok])) if ok.any() else float("nan")
    viol = total = 0.0
    for i in range(len(g)):
        others = np.arange(len(g)) != i
        pos = s[i, others & (g == g[i])]
        neg = s[i, others & (g != g[i])]
        pos, neg = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
        total += len(pos) * len(neg)
        viol += np.sum(pos[:, None] < neg[None, :]) + 0.5 * np.sum(pos[:, None] == neg[None, :])
    return {"auprc": auprc, "base_rate": float(same[ok].mean()) if ok.any() else float("nan"),
            "violation_rate": viol / total if total else float("nan"), "n_pairs": int(ok.sum())}
