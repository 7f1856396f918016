"""Finding 2, second version: one combined depth-alignment test per model pair, with two nulls.

(methods.md, "Testing the findings, second version".)

- Matches (:func:`combined_matches`): for every concept and every layer of A where it is represented, the
  layer of B (where it is represented) with the highest agreement on *val*; and the same from B to A. Both
  directions are pooled into one set of matches: one test per model pair, not two directed votes.
- Statistic: the alignment error, the mean over concepts of the mean ``|depth(source) - depth(match)|``.
- Null 1, depth permutation (:func:`permutation_test`): A's relative depths are permuted over A's probed
  layers and B's over B's (independently, one permutation of each per replicate, shared by all concepts);
  p = (1 + #{null <= observed}) / (1 + n_perm).
- Null 2, resolution-only oracle: the same sources matched with the oracle's agreement (ground-truth masks
  pooled to each layer's grid, compared the same way; ties between layers of one grid share the match),
  among *all* layers of the other model, so that the oracle's matches carry grid information only (the
  trained matches are restricted to layers that represent the concept; ``oracle_candidates`` in
  :func:`~conceptsim.comparison.document.findings_document` switches the oracle to that restriction too).
  The trained error must be below the oracle's, or the alignment only follows grid size
  (:func:`paired_concept_difference`: trained - oracle per concept, bootstrap over concepts).
- Twins: the same statistic for the twin pair(s); trained - twin per concept, bootstrap over concepts.
- Predictors (:func:`predictor_agreement`): Spearman correlation between the source layer's and the matched
  layer's relative depth, absolute depth (Conv2d position) and log2 stride.
- Positive control (:func:`block_recovery`): models that share backbone blocks must be matched block to
  block.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Matches:
    """Pooled matches of both directions: concept index, source and matched study layer indices."""

    concept: np.ndarray
    source: np.ndarray
    match: np.ndarray
    weight: np.ndarray  # 1 / number of tied best layers (oracle ties); 1 for ordinary matches

    def __len__(self) -> int:
        return len(self.concept)


def combined_matches(sel: np.ndarray, layers_a: np.ndarray, layers_b: np.ndarray, represented: np.ndarray,
                     concepts: np.ndarray | None = None, ties: bool = False, tol: float = 1e-9,
                     candidates: np.ndarray | None = None) -> Matches:
    """Best matches A -> B and B -> A on the selection matrix ``sel`` (``K x L x L``), pooled.

    Parameters
    ----------
    represented : ``L x K`` booleans; only represented layers are sources (and, by default, candidates).
    concepts : concept indices to use (default all).
    candidates : ``L x K`` booleans of the layers a source may be matched to (default ``represented``; the
        oracle uses every layer, so that its matches carry grid information only).
    ties : keep every layer within ``tol`` of the best (weighted equally; used for the oracle, whose layers
        of one grid have identical outputs); otherwise the first best.
    """
    ks = np.arange(sel.shape[0]) if concepts is None else np.asarray(concepts)
    out = ([], [], [], [])
    for k in ks:
        for src_set, dst_set in ((layers_a, layers_b), (layers_b, layers_a)):
            cand = dst_set[(represented if candidates is None else candidates)[dst_set, k]]
            if len(cand) == 0 or not represented[dst_set, k].any():
                continue
            for s in src_set[represented[src_set, k]]:
                row = sel[k, s, cand]
                if not np.isfinite(row).any():
                    continue
                best = np.nanmax(row)
                chosen = cand[np.isfinite(row) & (row >= best - tol)] if ties else cand[[int(np.nanargmax(row))]]
                for c in chosen:
                    out[0].append(k)
                    out[1].append(s)
                    out[2].append(c)
                    out[3].append(1.0 / len(chosen))
    c, s, m, w = (np.asarray(x) for x in out)
    return Matches(c.astype(np.int64), s.astype(np.int64), m.astype(np.int64), w.astype(np.float64))


def per_concept_error(m: Matches, coord: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concept indices and their weighted mean ``|coord[source] - coord[match]|`` (``coord`` may be ``R x L``)."""
    keys, inv = np.unique(m.concept, return_inverse=True)
    src = np.unique(np.stack([m.concept, m.source]), axis=1) if len(m) else np.zeros((2, 0), np.int64)
    # every (concept, source) counts once: tied matches share its weight
    n_src = np.bincount(np.searchsorted(keys, src[0]), minlength=len(keys)).astype(np.float64)
    wmat = np.zeros((len(m), len(keys)))
    wmat[np.arange(len(m)), inv] = m.weight
    wmat /= np.where(n_src > 0, n_src, 1.0)[None]
    diff = np.abs(coord[..., m.source] - coord[..., m.match])
    return keys, diff @ wmat


def alignment_error(m: Matches, depths: np.ndarray) -> float | None:
    """Mean over concepts of the per-concept alignment error (``None`` without matches)."""
    if len(m) == 0:
        return None
    return float(per_concept_error(m, depths)[1].mean())


def permutation_test(m: Matches, layers_a: np.ndarray, layers_b: np.ndarray, depths: np.ndarray,
                     rng: np.random.Generator, n_perm: int = 10000, batch: int = 1000) -> dict:
    """Combined alignment error and its null with A's and B's depths permuted over their own layers.

    Returns
    -------
    ``{"error", "null_mean", "p_value", "n_matches", "n_concepts"}``.
    """
    if len(m) == 0:
        return {"error": None, "null_mean": None, "p_value": None, "n_matches": 0, "n_concepts": 0}
    depths = np.asarray(depths, np.float64)
    obs = alignment_error(m, depths)
    le, total, done = 0, 0.0, 0
    tol = 1e-12  # ties with the observed value (permutations that fix the matched depths) count as <=
    while done < n_perm:
        r = min(batch, n_perm - done)
        d = np.tile(depths, (r, 1))
        for layers in (layers_a, layers_b):
            perm = np.argsort(rng.random((r, len(layers))), axis=1)
            d[:, layers] = depths[layers][perm]
        null = per_concept_error(m, d)[1].mean(axis=1)
        le += int((null <= obs + tol).sum())
        total += float(null.sum())
        done += r
    return {"error": obs, "null_mean": total / n_perm, "p_value": (1 + le) / (1 + n_perm),
            "n_matches": int(len(np.unique(np.stack([m.concept, m.source]), axis=1).T)),
            "n_concepts": int(len(np.unique(m.concept)))}


def paired_concept_difference(m1: Matches, m2: Matches, depths: np.ndarray, rng: np.random.Generator,
                              n_boot: int = 1000, level: float = 0.95) -> dict:
    """Per-concept alignment error of ``m1`` minus that of ``m2`` over shared concepts, bootstrap over concepts.

    Returns ``{"mean", "ci_low", "ci_high", "p_value", "n"}`` with the one-sided p of the mean difference
    being below zero: (1 + #{replicates >= 0}) / (1 + B).
    """
    if len(m1) == 0 or len(m2) == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "p_value": None, "n": 0}
    k1, e1 = per_concept_error(m1, depths)
    k2, e2 = per_concept_error(m2, depths)
    common, i1, i2 = np.intersect1d(k1, k2, return_indices=True)
    if len(common) == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "p_value": None, "n": 0}
    d = e1[i1] - e2[i2]
    boots = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(boots, [a, 1.0 - a])
    return {"mean": float(d.mean()), "ci_low": float(lo), "ci_high": float(hi),
            "p_value": (1 + int((boots >= 0).sum())) / (1 + n_boot), "n": int(len(d))}


def spearman(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> float | None:
    """Spearman rank correlation (average ranks for ties; ``w`` weights the pairs); ``None`` if undefined."""
    from scipy.stats import rankdata

    if len(x) < 3:
        return None
    rx, ry = rankdata(x), rankdata(y)
    w = np.ones(len(x)) if w is None else np.asarray(w, np.float64)
    mx, my = np.average(rx, weights=w), np.average(ry, weights=w)
    cov = np.average((rx - mx) * (ry - my), weights=w)
    vx, vy = np.average((rx - mx) ** 2, weights=w), np.average((ry - my) ** 2, weights=w)
    return float(cov / np.sqrt(vx * vy)) if vx > 0 and vy > 0 else None


def predictor_agreement(m: Matches, coords: dict[str, np.ndarray]) -> dict:
    """Spearman correlation of source and matched layer per coordinate (relative depth, absolute depth,
    log2 stride), and the coordinate that predicts the matched layer best."""
    out = {name: spearman(c[m.source], c[m.match], m.weight) for name, c in coords.items()}
    finite = {k: v for k, v in out.items() if v is not None}
    return {"spearman": out, "best": max(finite, key=finite.get) if finite else None}


def block_recovery(sel: np.ndarray, layers_a: np.ndarray, layers_b: np.ndarray, represented: np.ndarray,
                   corresponding: dict[int, int]) -> dict:
    """How often a layer's best match in the other model is its corresponding (shared) block.

    Parameters
    ----------
    corresponding : study layer index in A -> study layer index in B (both probed), symmetric use: the
        inverse map is applied to B's layers.

    Returns
    -------
    ``{"rate", "chance", "n", "hits", "per_layer": {source index: hit fraction}}``; chance is the mean of
    ``1 / number of candidate layers`` over the matches (uniform guessing among represented layers).
    """
    inverse = {b: a for a, b in corresponding.items()}
    hits, chance, per = [], [], {}
    for k in range(sel.shape[0]):
        for src_set, dst_set, corr in ((layers_a, layers_b, corresponding), (layers_b, layers_a, inverse)):
            cand = dst_set[represented[dst_set, k]]
            for s in src_set[represented[src_set, k]]:
                if int(s) not in corr or corr[int(s)] not in cand:
                    continue
                row = sel[k, s, cand]
                if not np.isfinite(row).any():
                    continue
                hit = int(cand[int(np.nanargmax(row))]) == corr[int(s)]
                hits.append(hit)
                chance.append(1.0 / len(cand))
                per.setdefault(int(s), []).append(hit)
    if not hits:
        return {"rate": None, "chance": None, "n": 0, "hits": 0, "per_layer": {}}
    return {"rate": float(np.mean(hits)), "chance": float(np.mean(chance)), "n": len(hits), "hits": int(sum(hits)),
            "per_layer": {k: float(np.mean(v)) for k, v in per.items()}}
