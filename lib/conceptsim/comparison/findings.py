"""Statistics that test the paper's two findings (methods.md, "Testing the two findings"): first version.

The stage now reports the second version (:mod:`conceptsim.comparison.document`, with
:mod:`~conceptsim.comparison.learned` and :mod:`~conceptsim.comparison.alignment`); this module keeps the
shared helpers (:func:`rng_for`, :func:`finite_or_none`, :func:`emergence_depth`) and the first-version
statistics below as documented alternatives.

Finding 1 -- similar concepts regardless of architecture. For a pair of models with different
architectures and a concept c, the *best-match similarity* is the largest S(c; a, b) over all layer pairs
(a of model A, b of model B) where S is defined. The concepts entering a pair are those represented
(concept_quality.csv ``represented``) in at least one layer of each of the two trained models. The same
statistic is computed for (a) the random-init twins ``A:random``, ``B:random`` of the two models and (b) the
permuted-image chance control of the trained models (see :mod:`conceptsim.comparison.similarity`); both
take the maximum over all layer pairs too, so trained and controls get the same selection advantage.
Reported: per-concept values, the mean over concepts with a percentile bootstrap interval (resampling
concepts), and the paired differences trained - twin and trained - control with their intervals. The
finding *holds* for the pair when both difference intervals lie above zero (only the control when the
study has no twins).

Finding 2 -- similar relative depth. For models A -> B and concept c, each layer a of A where c is
represented is matched to the layer b*(a) of B (among B's layers where c is represented) with the highest
S(c; a, b). The alignment error is the mean over concepts of the per-concept mean |depth(a) - depth(b*(a))|.
Null: B's relative depths are assigned to B's probed layers by a uniformly random permutation (one
permutation shared by all concepts of a replicate, so the null keeps the dependence between concepts),
``n_perm`` times; p = (1 + #{null <= observed}) / (1 + n_perm) (small errors are evidence for the finding).

Emergence depth: per model, concept and method, the smallest relative depth at which the concept's test
quality reaches 90 % of its maximum over the model's layers; undefined when the concept is represented in
none of the model's layers.
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


def bootstrap_mean_ci(
    values: Sequence[float], rng: np.random.Generator, n_boot: int = 1000, level: float = 0.95
) -> dict:
    """Mean of the finite ``values`` and its percentile bootstrap interval.

    Returns
    -------
    ``{"mean", "ci_low", "ci_high", "n"}`` (``None`` entries when there are no values).
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    idx = rng.integers(0, len(v), size=(int(n_boot), len(v)))
    boots = v[idx].mean(axis=1)
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(boots, [a, 1.0 - a])
    return {"mean": float(v.mean()), "ci_low": float(lo), "ci_high": float(hi), "n": int(len(v))}


def best_match(s: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[float, int | None, int | None]:
    """Largest finite ``s[a, b]`` over ``a in rows``, ``b in cols``: ``(value, a, b)``; NaN if none."""
    sub = s[np.ix_(rows, cols)]
    if sub.size == 0 or not np.isfinite(sub).any():
        return float("nan"), None, None
    i, j = np.unravel_index(np.nanargmax(sub), sub.shape)
    return float(sub[i, j]), int(rows[i]), int(cols[j])


def finding1(
    sim: np.ndarray,
    control: np.ndarray,
    layers_a: np.ndarray,
    layers_b: np.ndarray,
    represented: np.ndarray,
    concepts: Sequence[str],
    rng: np.random.Generator,
    *,
    twin_sim: np.ndarray | None = None,
    twin_layers: tuple[np.ndarray, np.ndarray] | None = None,
    n_boot: int = 1000,
    layer_names: Sequence[str] | None = None,
) -> dict:
    """Finding-1 statistics of one trained model pair for one similarity method.

    Parameters
    ----------
    sim, control : ``K x L x L`` similarity and chance-control matrices over the study's layers.
    layers_a, layers_b : study layer indices of models A and B.
    represented : ``L x K`` booleans (concept represented in layer).
    concepts : the K concept names.
    rng : bootstrap generator.
    twin_sim, twin_layers : similarity matrices to read the random-init twins from (usually ``sim``) and
        the twins' layer indices; ``None`` when the study has no twins.
    n_boot : bootstrap resamples.
    layer_names : study layer names, to name the best-matching layers.
    """
    per = []
    for k, c in enumerate(concepts):
        if not (represented[layers_a, k].any() and represented[layers_b, k].any()):
            continue
        val, a, b = best_match(sim[k], layers_a, layers_b)
        ctl, _, _ = best_match(control[k], layers_a, layers_b)
        twin = float("nan")
        if twin_sim is not None and twin_layers is not None:
            twin, _, _ = best_match(twin_sim[k], twin_layers[0], twin_layers[1])
        row = {"concept": c, "value": finite_or_none(val), "random_twin": finite_or_none(twin), "control": finite_or_none(ctl)}
        if layer_names is not None:
            row["layer_a"] = layer_names[a] if a is not None else None
            row["layer_b"] = layer_names[b] if b is not None else None
        per.append(row)

    def col(key: str) -> np.ndarray:
        return np.array([np.nan if r[key] is None else r[key] for r in per], dtype=np.float64)

    t, r, q = col("value"), col("random_twin"), col("control")
    out = {
        "per_concept": per,
        "trained": bootstrap_mean_ci(t, rng, n_boot),
        "random_twin": bootstrap_mean_ci(r, rng, n_boot),
        "control": bootstrap_mean_ci(q, rng, n_boot),
        "diff_control": bootstrap_mean_ci(t - q, rng, n_boot),
        "diff_random_twin": bootstrap_mean_ci(t - r, rng, n_boot),
        "twins_available": twin_sim is not None,
    }
    above_ctl = out["diff_control"]["n"] > 0 and out["diff_control"]["ci_low"] > 0
    above_twin = out["diff_random_twin"]["n"] > 0 and out["diff_random_twin"]["ci_low"] > 0
    out["holds"] = bool(above_ctl and (above_twin or twin_sim is None))
    return out


def depth_matches(
    sim: np.ndarray, layers_a: np.ndarray, layers_b: np.ndarray, represented: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best-matching B layer of every represented A layer, per concept.

    Returns
    -------
    a_idx, b_pos, concept : one entry per matched (concept, A layer); ``a_idx`` is a study layer index,
    ``b_pos`` the position of the matched layer within ``layers_b``, ``concept`` the concept index.
    """
    a_out, b_out, k_out = [], [], []
    for k in range(sim.shape[0]):
        cand = np.flatnonzero(represented[layers_b, k])
        if len(cand) == 0:
            continue
        for a in layers_a[represented[layers_a, k]]:
            row = sim[k, a, layers_b[cand]]
            if not np.isfinite(row).any():
                continue
            a_out.append(a)
            b_out.append(cand[int(np.nanargmax(row))])
            k_out.append(k)
    return np.array(a_out, dtype=np.int64), np.array(b_out, dtype=np.int64), np.array(k_out, dtype=np.int64)


def alignment_errors(da: np.ndarray, db_matched: np.ndarray, concept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-concept mean |depth differences| and their mean over concepts.

    ``db_matched`` may carry leading replicate axes (``... x M``); the result then has them too.
    """
    keys, inv = np.unique(concept, return_inverse=True)
    weights = np.zeros((len(concept), len(keys)))
    weights[np.arange(len(concept)), inv] = 1.0
    weights /= weights.sum(axis=0, keepdims=True)
    per = np.abs(db_matched - da) @ weights
    return per, per.mean(axis=-1)


def permutation_test(
    da: np.ndarray,
    b_pos: np.ndarray,
    concept: np.ndarray,
    depths_b: np.ndarray,
    rng: np.random.Generator,
    n_perm: int = 10000,
    batch: int = 2000,
) -> dict:
    """Alignment error of matched layers and its depth-permutation null.

    Parameters
    ----------
    da : depths of the matched A layers (M).
    b_pos : positions of the matched layers within B's probed layers (M).
    concept : concept index of every match (M).
    depths_b : relative depths of all of B's probed layers.
    rng : draws the permutations.
    n_perm : number of permutations.

    Returns
    -------
    ``{"error", "null_mean", "p_value", "n_matches", "n_concepts", "per_concept": {k: (error, p)}}``.
    """
    if len(da) == 0:
        return {"error": None, "null_mean": None, "p_value": None, "n_matches": 0, "n_concepts": 0, "per_concept": {}}
    depths_b = np.asarray(depths_b, dtype=np.float64)
    per_obs, obs = alignment_errors(da, depths_b[b_pos], concept)
    null_sum = 0.0
    le = 0
    le_per = np.zeros_like(per_obs)
    done = 0
    # Comparisons with a tolerance: the observed value recurs exactly under permutations that fix the
    # matched depths, and rounding must not decide whether such a tie counts.
    tol = 1e-12
    while done < n_perm:
        m = min(batch, n_perm - done)
        perms = np.argsort(rng.random((m, len(depths_b))), axis=1)
        per_null, null = alignment_errors(da, depths_b[perms][:, b_pos], concept)
        null_sum += null.sum()
        le += int((null <= obs + tol).sum())
        le_per += (per_null <= per_obs + tol).sum(axis=0)
        done += m
    keys = np.unique(concept)
    return {
        "error": float(obs),
        "null_mean": float(null_sum / n_perm),
        "p_value": float((1 + le) / (1 + n_perm)),
        "n_matches": int(len(da)),
        "n_concepts": int(len(keys)),
        "per_concept": {
            int(k): (float(e), float((1 + c) / (1 + n_perm))) for k, e, c in zip(keys, per_obs, le_per)
        },
    }


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
