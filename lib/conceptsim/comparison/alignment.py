"""The matching machinery of finding 2: combined matches, the depth-permutation test, predictors, block recovery.

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
  The trained error must be below the oracle's, or the alignment only follows grid size (the tests and
  their verdicts are in :mod:`conceptsim.comparison.finding2`).
- Twins: the same statistic for the twin pair(s).
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
    ``{"error", "null_mean", "p_value", "n_matches", "n_concepts", "concepts", "concept_null", "null"}``;
    ``concept_null`` is each concept's mean error under the null (aligned with ``concepts``), ``null`` the
    ``n_perm`` null errors themselves (for the test's power: :func:`critical_errors`).
    """
    if len(m) == 0:
        return {"error": None, "null_mean": None, "p_value": None, "n_matches": 0, "n_concepts": 0,
                "concepts": np.zeros(0, np.int64), "concept_null": np.zeros(0), "null": np.zeros(0)}
    depths = np.asarray(depths, np.float64)
    obs = alignment_error(m, depths)
    keys, _ = per_concept_error(m, depths)
    le, done = 0, 0
    nulls = np.empty(n_perm)
    per_concept = np.zeros(len(keys))
    tol = 1e-12  # ties with the observed value (permutations that fix the matched depths) count as <=
    while done < n_perm:
        r = min(batch, n_perm - done)
        d = np.tile(depths, (r, 1))
        for layers in (layers_a, layers_b):
            perm = np.argsort(rng.random((r, len(layers))), axis=1)
            d[:, layers] = depths[layers][perm]
        per = per_concept_error(m, d)[1]  # r x concepts
        per_concept += per.sum(axis=0)
        null = nulls[done : done + r] = per.mean(axis=1)
        le += int((null <= obs + tol).sum())
        done += r
    return {"error": obs, "null_mean": float(nulls.sum()) / n_perm, "p_value": (1 + le) / (1 + n_perm),
            "concepts": keys, "concept_null": per_concept / n_perm, "null": nulls,
            "n_matches": int(len(np.unique(np.stack([m.concept, m.source]), axis=1).T)),
            "n_concepts": int(len(np.unique(m.concept)))}


def critical_errors(null: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Per level ``a``: the error an observation must lie *below* for :func:`permutation_test`'s p-value
    ``(1 + #{null <= observed}) / (1 + n)`` to fall below ``a`` (NaN where no observation can: too few
    permutations for the level).

    ``p < a`` holds exactly when at most ``c = ceil(a (n + 1) - 1) - 1`` null errors are ``<=`` the
    observation, i.e. when it lies below the ``(c + 1)``-th smallest null error.
    """
    null = np.sort(np.asarray(null, np.float64))
    n = len(null)
    c = np.ceil(np.asarray(levels, np.float64) * (n + 1) - 1 - 1e-9).astype(np.int64) - 1
    out = np.full(len(c), np.nan)
    ok = (c >= 0) & (c < n)
    out[ok] = null[c[ok]]
    return out


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
                   corresponding: dict[int, int], rng: np.random.Generator | None = None, n_perm: int = 10000) -> dict:
    """How often a layer's best match in the other model is its corresponding (shared) block.

    Parameters
    ----------
    corresponding : study layer index in A -> study layer index in B (both probed), symmetric use: the
        inverse map is applied to B's layers.

    Returns
    -------
    ``{"rate", "chance", "n", "hits", "per_layer": {source index: hit fraction}, "p_value", "null_mean",
    "p_best"}``; chance is the mean of ``1 / number of candidate layers`` over the matches (uniform guessing
    among represented layers). With ``rng``, the permutation p-value of the hit rate: the correspondence is
    relabelled at random among each match's candidate layers ``n_perm`` times; p = (1 + #{null rate >=
    observed}) / (1 + n_perm). A control that can fail: unrelated models score near chance. ``p_best`` is the
    p-value a perfect recovery (every match on its corresponding block) would have under the same relabellings:
    the smallest p these matches can reach. Where most matches have one or two candidate layers it stays
    large, and the control can then neither pass nor fail.
    """
    inverse = {b: a for a, b in corresponding.items()}
    hits, chance, per = [], [], {}
    matched: list[tuple[int, np.ndarray, int]] = []
    for k in range(sel.shape[0]):
        for src_set, dst_set, corr in ((layers_a, layers_b, corresponding), (layers_b, layers_a, inverse)):
            cand = dst_set[represented[dst_set, k]]
            for s in src_set[represented[src_set, k]]:
                if int(s) not in corr or corr[int(s)] not in cand:
                    continue
                row = sel[k, s, cand]
                if not np.isfinite(row).any():
                    continue
                best = int(cand[int(np.nanargmax(row))])
                hit = best == corr[int(s)]
                matched.append((corr[int(s)], cand, best))
                hits.append(hit)
                chance.append(1.0 / len(cand))
                per.setdefault(int(s), []).append(hit)
    if not hits:
        return {"rate": None, "chance": None, "n": 0, "hits": 0, "per_layer": {}, "p_value": None, "null_mean": None,
                "p_best": None}
    rate = float(np.mean(hits))
    out = {"rate": rate, "chance": float(np.mean(chance)), "n": len(hits), "hits": int(sum(hits)),
           "per_layer": {k: float(np.mean(v)) for k, v in per.items()}, "p_value": None, "null_mean": None,
           "p_best": None}
    if rng is not None:
        null, perfect = _block_null(matched, rng, n_perm)
        out["p_value"], out["null_mean"] = _upper_p(null, rate), float(null.mean())
        out["p_best"] = _upper_p(perfect, 1.0)
    return out


def _upper_p(null: np.ndarray, observed: float) -> float:
    """Permutation p of a rate: ``(1 + #{null >= observed}) / (1 + n_perm)``."""
    return float((1 + int((null >= observed - 1e-12).sum())) / (1 + len(null)))


def _block_null(matched: list[tuple[int, np.ndarray, int]], rng: np.random.Generator,
                n_perm: int) -> tuple[np.ndarray, np.ndarray]:
    """Hit rates with the correspondence relabelled at random: per permutation, each model's candidate
    layers are permuted, and a match hits when its best layer is the permuted partner of its source. Also,
    under the same relabellings, the hit rates of a perfect recovery (every best layer the true partner)."""
    rates, perfect = np.zeros(n_perm), np.zeros(n_perm)
    layers = np.unique(np.concatenate([c for _, c, _ in matched]))
    pos = {int(x): i for i, x in enumerate(layers)}
    perm = np.argsort(rng.random((n_perm, len(layers))), axis=1)  # n_perm x |layers|: image of each layer
    for partner, cand, best in matched:
        # the permuted partner is drawn among the candidates: permute within the candidate set
        ci = np.array([pos[int(c)] for c in cand])
        sub = np.argsort(perm[:, ci], axis=1)  # a random bijection of the candidates per permutation
        j = int(np.flatnonzero(cand == partner)[0])
        moved = cand[sub[:, j]]
        rates += moved == best
        perfect += moved == partner
    return rates / len(matched), perfect / len(matched)
