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
dataset, model (or pair of compared models, :func:`~conceptsim.comparison.outputs.compared_models`) and method:

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
null_mean         depth alignment only: the same error averaged over all assignments of B's depths (no row
                  for a model whose probed layers all sit at one relative depth, such as the pixels floor)
================  ====================================================================================

Shortcut affinity and label randomisation (ReSi's grouping tests; the study ``studies/grounding.yml``).
Small CNNs trained in groups (:mod:`conceptsim.models.small_cnn`: a planted cue with probability 0, 0.5,
1, and shuffled labels; 3 seeds each) are compared at each probed layer; a measure that sees what the
networks learned groups them: :func:`shortcut_scores` (AUPRC of same-group pairs ranked by similarity and
the violation rate, averaged over groups). ``shortcut.csv`` (written by the comparison stage when the
study's ``models.json`` gives two or more networks a ``group``), one row per measure, concept and layer:
``dataset, method, concept, layer, auprc, base_rate, chance_auprc, violation_rate, n_groups, n_networks,
n_undefined``;
``concept`` is empty for the concept means and label-free measures and names the cue's concept (``dot``)
for the concept measures asked about it alone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from conceptsim.comparison.outputs import compared_models
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
    """Spearman correlation (``scipy.stats.spearmanr``'s statistic, to the bit); NaN when either side is
    constant.

    The grounding tables take thousands of them on a few values each, where ``spearmanr``'s checks and
    p-value cost several times the statistic: this is its computation alone, the Pearson correlation of
    the average ranks by ``numpy.corrcoef``'s operations in the same order on the same layout (tested
    against ``spearmanr`` with and without ties)."""
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    ranks = np.array(np.column_stack((average_ranks(x), average_ranks(y)))).T  # as np.cov lays out its copy
    ranks -= ranks.mean(axis=1)[:, None]
    c = np.dot(ranks, ranks.T)
    c *= np.true_divide(1, ranks.shape[1] - 1)
    sd = np.sqrt(np.diag(c))
    c /= sd[:, None]
    c /= sd[None, :]
    return float(np.clip(c[1, 0], -1, 1))


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x``, ties given their average rank (``scipy.stats.rankdata``'s default)."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    new = np.empty(len(x), dtype=bool)
    new[:1] = True
    np.not_equal(xs[1:], xs[:-1], out=new[1:])
    dense = np.empty(len(x), dtype=np.intp)
    dense[order] = np.cumsum(new)
    ends = np.append(np.flatnonzero(new), len(x))
    return 0.5 * (ends[dense] + ends[dense - 1] + 1)


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
            for mb in (mb for mb in models[a + 1:] if compared_models(ma, mb)):
                la, lb = layers_of[ma], layers_of[mb]
                if len(np.unique(depths[la])) < 2 or len(np.unique(depths[lb])) < 2:
                    continue  # a model whose layers sit at one relative depth (the pixels floor: the input) aligns nothing
                pairs = {(int(x), int(y)): float(mat[x, y]) for x in la for y in lb}
                al = depth_alignment(pairs, depths, la, lb)
                rows.append({"test": "units_depth_alignment", "dataset": dataset, "model": ma, "model_b": mb,
                             "method": method, "concepts": concepts, "n_layers": al["n_layers"],
                             "alignment_error": al["alignment_error"], "null_mean": al["null_mean"]})
    return pd.DataFrame(rows, columns=list(GROUNDING_COLUMNS))


def monotonicity_summary(rows: pd.DataFrame) -> dict[str, float | int]:
    """Layer monotonicity of one measure over several models or datasets (``layer_monotonicity`` rows of
    ``grounding.csv``): the violation rate pooled over all their triples (a model with one triple weighs one
    triple, not one model), the mean Spearman over the rows where it is defined, and how many rows stand
    behind each (``n_violation``, ``n_spearman``)."""
    rate = pd.to_numeric(rows["violation_rate"], errors="coerce")
    triples = pd.to_numeric(rows["n_triples"], errors="coerce")
    rho = pd.to_numeric(rows["spearman"], errors="coerce")
    ok = rate.notna() & (triples > 0)
    return {"violation_rate": float((rate[ok] * triples[ok]).sum() / triples[ok].sum()) if ok.any() else float("nan"),
            "n_violation": int(ok.sum()),
            "spearman": float(rho.mean()) if rho.notna().any() else float("nan"),
            "n_spearman": int(rho.notna().sum())}


def _checked(sim, groups) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(sim, dtype=np.float64)
    g = np.asarray(groups)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or len(g) != s.shape[0]:
        raise ValueError(f"sim must be n x n with one group per network, got {s.shape} and {len(g)} groups")
    return s, g


def _violations(s: np.ndarray, g: np.ndarray, anchors) -> tuple[float, int]:
    """Over triples (anchor i, same-group j, other-group k): how many have ``s(i, j) < s(i, k)`` (ties one
    half), and how many triples there are; undefined similarities are left out."""
    viol, total = 0.0, 0
    for i in anchors:
        others = np.arange(len(g)) != i
        pos = s[i, others & (g == g[i])]
        neg = s[i, others & (g != g[i])]
        pos, neg = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
        total += len(pos) * len(neg)
        viol += np.sum(pos[:, None] < neg[None, :]) + 0.5 * np.sum(pos[:, None] == neg[None, :])
    return float(viol), total


def group_separation(sim: np.ndarray, groups) -> dict[str, float]:
    """ReSi's scores of a grouping test (shortcut affinity, label randomisation) for one measure, pooled.

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
    measure); undefined pairs are left out. :func:`shortcut_scores` averages the same over groups.
    """
    from conceptsim.concepts.metrics import average_precision

    s, g = _checked(sim, groups)
    iu, ju = np.triu_indices(len(g), k=1)
    vals = 0.5 * (s[iu, ju] + s[ju, iu])
    same = (g[iu] == g[ju]).astype(np.float64)
    ok = np.isfinite(vals)
    auprc = float(average_precision(same[ok], vals[ok])) if ok.any() else float("nan")
    viol, total = _violations(s, g, range(len(g)))
    return {"auprc": auprc, "base_rate": float(same[ok].mean()) if ok.any() else float("nan"),
            "violation_rate": viol / total if total else float("nan"), "n_pairs": int(ok.sum())}


def chance_average_precision(n_pos: int, n: int) -> float:
    """Expected average precision of a random ranking of ``n`` items with ``n_pos`` positives (no ties):
    the mean over positives ``i`` and ranks ``r`` of ``i / r`` times the chance that the i-th positive sits at
    rank ``r``. Above the base rate ``n_pos / n`` for few positives (3 of 30: 0.19, not 0.10)."""
    from scipy.special import comb

    if not 0 < n_pos <= n:
        raise ValueError(f"need 0 < n_pos <= n, got n_pos={n_pos}, n={n}")
    total = 0.0
    for i in range(1, n_pos + 1):
        r = np.arange(i, n - n_pos + i + 1)
        total += np.sum(i / r * comb(r - 1, i - 1) * comb(n - r, n_pos - i)) / comb(n, n_pos)
    return float(total / n_pos)


def shortcut_scores(sim: np.ndarray, groups) -> dict[str, float]:
    """ReSi's grouping scores averaged over groups: the shortcut and label-randomisation test's numbers.

    Per group G (with two or more networks, and networks outside it): the distinct pairs with a network of
    G are ranked by similarity, pairs inside G positive; ``auprc`` is their average precision and
    ``base_rate`` its chance value (the share of pairs inside G); ``violation_rate`` the share of triples
    (anchor i in G, j in G, k outside G) with ``s(i, j) < s(i, k)`` (ties one half). Each is the mean over
    groups. ``chance_auprc`` is the expected ``auprc`` of a random ranking (:func:`chance_average_precision`,
    above ``base_rate`` with few pairs inside a group). An undefined similarity (NaN, e.g. no concept
    represented in both layers) counts as the least similar: a measure that cannot say is not credited with
    separating; ``n_undefined`` counts those pairs. A perfect measure gives ``auprc`` 1 and
    ``violation_rate`` 0; a random one about ``chance_auprc`` and 0.5.
    """
    from conceptsim.concepts.metrics import average_precision

    s, g = _checked(sim, groups)
    s = 0.5 * (s + s.T)
    iu, ju = np.triu_indices(len(g), k=1)
    vals = s[iu, ju]
    undefined = ~np.isfinite(vals)
    floor = (np.nanmin(vals[~undefined]) if (~undefined).any() else 0.0) - 1.0
    s = np.where(np.isfinite(s), s, floor)
    vals = s[iu, ju]
    scores = []
    for grp in dict.fromkeys(g.tolist()):
        members = g == grp
        if members.sum() < 2 or members.all():
            continue
        touch = members[iu] | members[ju]
        inside = (members[iu] & members[ju])[touch].astype(np.float64)
        viol, total = _violations(s, g, np.flatnonzero(members))
        scores.append((float(average_precision(inside, vals[touch])), float(inside.mean()),
                       chance_average_precision(int(inside.sum()), len(inside)), viol / total))
    if not scores:
        raise ValueError(f"shortcut scores need two or more groups, one of two or more networks; got groups {g.tolist()}")
    auprc, base, chance, viol = np.mean(scores, axis=0)
    return {"auprc": float(auprc), "base_rate": float(base), "chance_auprc": float(chance),
            "violation_rate": float(viol), "n_groups": len(scores),
            "n_networks": int(len(g)), "n_undefined": int(undefined.sum())}


#: the measures of the shortcut test: concept-mean measures (layer_similarity.csv) and label-free ones
SHORTCUT_MEASURES = ("seg_kappa", "seg", "cls_partial", "cls", "cka", "cka_debiased", "units_bb")
#: concept measures also scored on the cue's own concept alone (similarity.csv)
SHORTCUT_CONCEPT_MEASURES = ("seg_kappa", "seg", "cls_partial", "cls")
SHORTCUT_COLUMNS = ("dataset", "method", "concept", "layer", "auprc", "base_rate", "chance_auprc", "violation_rate", "n_groups",
                    "n_networks", "n_undefined")


def _pair_matrix(rows: pd.DataFrame, networks: list[str], layer: str) -> np.ndarray:
    """``n x n`` similarity of the networks' layer ``layer`` from comparison rows (model_a/b, layer_a/b, value)."""
    index = {m: i for i, m in enumerate(networks)}
    sel = rows[(rows["layer_a"] == layer) & (rows["layer_b"] == layer) & rows["model_a"].isin(index)
               & rows["model_b"].isin(index)]
    out = np.full((len(networks), len(networks)), np.nan)
    a = np.array([index[m] for m in sel["model_a"]], dtype=np.int64)  # also for categorical columns
    b = np.array([index[m] for m in sel["model_b"]], dtype=np.int64)
    out[a, b] = out[b, a] = sel["value"].to_numpy(dtype=np.float64)
    return out


def shortcut_frame(dataset: str, groups: dict[str, str], layer_similarity: pd.DataFrame,
                   similarity: pd.DataFrame | None = None, cue_concept: str | None = None) -> pd.DataFrame:
    """Rows of ``shortcut.csv``: :func:`shortcut_scores` per measure and probed layer (networks compared
    at the same layer), measures of :data:`SHORTCUT_MEASURES` on their concept means (``concept`` empty),
    and the concept measures on ``cue_concept`` alone (from ``similarity``), when given and present."""
    networks = list(groups)
    labels = [groups[m] for m in networks]
    first = layer_similarity[layer_similarity["model_a"] == networks[0]]
    layers = list(dict.fromkeys(first["layer_a"]))
    sources = [(m, "", layer_similarity[layer_similarity["method"] == m]) for m in SHORTCUT_MEASURES]
    if similarity is not None and cue_concept is not None and (similarity["concept"] == cue_concept).any():
        cue = similarity[similarity["concept"] == cue_concept]
        sources += [(m, cue_concept, cue[cue["method"] == m]) for m in SHORTCUT_CONCEPT_MEASURES]
    rows = []
    for method, concept, sel in sources:
        if sel.empty:
            continue
        for layer in layers:
            got = shortcut_scores(_pair_matrix(sel, networks, layer), labels)
            rows.append({"dataset": dataset, "method": method, "concept": concept, "layer": layer,
                         **{k: got[k] for k in SHORTCUT_COLUMNS[4:]}})
    return pd.DataFrame(rows, columns=list(SHORTCUT_COLUMNS))


