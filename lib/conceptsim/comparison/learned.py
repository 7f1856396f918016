"""Finding 1, second version: do trained architectures agree on *learned* concepts beyond accuracy?

(methods.md, "Testing the findings, second version".)

1. Learned-concept filter (:func:`learned_concepts`): a concept enters a model pair only where each
   trained model represents it better than its random-init twin(s) in some layer: the trained layer's
   95 % bootstrap interval of test quality lies above the twins' intervals at that layer (all seeds).
   Concepts that untrained networks already represent cannot show that training made architectures agree.
2. Selection on val (:func:`select_pair`): the best-matching layer pair of the trained models, and of every
   twin pair (same seed), is the argmax of agreement beyond accuracy on *val* outputs.
3. Statistic: that pair's agreement beyond accuracy on *test* (``seg_kappa`` / ``cls_partial``), trained
   pair minus twin pair (mean over twin seeds), averaged over concepts.
4. Interval and p-value (:func:`hierarchical_bootstrap`): each replicate resamples concepts and test images
   (crossed: one image draw serves every concept; whole source photos where the store names them,
   ``bootstrap_groups``); the statistic is recomputed from the resampled
   per-image sufficient statistics. Percentile interval; one-sided p = (1 + #{replicates <= 0}) / (1 + B).
   Reported overall and per concept category.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd

from conceptsim.comparison.agreement import kappa_from_sums


def learned_concepts(quality: pd.DataFrame, trained: str, twins: Sequence[str], method: str, metric: str,
                     concepts: Sequence[str]) -> dict[str, dict]:
    """Per concept: whether ``trained`` represents it better than all ``twins`` in some layer.

    Parameters
    ----------
    quality : rows of the models' ``concept_quality.csv`` (columns ``model, layer, concept, method, metric,
        value, ci_low, ci_high``).
    trained, twins : model names; ``twins`` empty means the filter cannot be applied (every entry
        ``learned`` is ``None``).

    Returns
    -------
    ``{concept: {"learned": bool | None, "layer": best layer or None, "margin": trained ci_low - twin
    ci_high at that layer}}``.
    """
    q = quality[(quality["method"] == method) & (quality["metric"] == metric)]
    out = {}
    if not twins:
        return {c: {"learned": None, "layer": None, "margin": None} for c in concepts}
    for col in ("ci_low", "ci_high"):
        if col not in q.columns:
            raise ValueError(f"concept_quality.csv lacks column {col!r}, needed by the learned-concept filter")
    t = q[q["model"] == trained].set_index(["layer", "concept"])["ci_low"]
    tw = q[q["model"].isin(list(twins))].groupby(["layer", "concept"])["ci_high"].max()
    both = pd.concat([t.rename("t"), tw.rename("tw")], axis=1, join="inner").dropna()
    both["margin"] = both["t"] - both["tw"]
    for c in concepts:
        rows = both.xs(c, level="concept") if c in both.index.get_level_values("concept") else None
        if rows is None or rows.empty:
            out[c] = {"learned": False, "layer": None, "margin": None}
            continue
        best = rows["margin"].idxmax()
        m = float(rows["margin"].max())
        out[c] = {"learned": bool(m > 0), "layer": str(best), "margin": m}
    return out


def select_pair(val: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[int, int] | None:
    """Study layer indices ``(a, b)`` of the largest finite ``val[a, b]``, ``a in rows``, ``b in cols``."""
    sub = val[np.ix_(rows, cols)]
    if sub.size == 0 or not np.isfinite(sub).any():
        return None
    i, j = np.unravel_index(np.nanargmax(sub), sub.shape)
    return int(rows[i]), int(cols[j])


def image_weights(rng: np.random.Generator, n_boot: int, n: int, groups: np.ndarray | None = None) -> np.ndarray:
    """``B x n`` multiplicities of a bootstrap resample of ``n`` images per replicate.

    With ``groups`` (one label per image, e.g. the source photo of a crop) whole groups are resampled: an
    image's multiplicity is the number of times its group was drawn.
    """
    if groups is None:
        draws = rng.integers(0, n, size=(n_boot, n))
        w = np.zeros((n_boot, n))
        np.add.at(w, (np.repeat(np.arange(n_boot), n), draws.ravel()), 1.0)
        return w
    _, inv = np.unique(np.asarray(groups), return_inverse=True)
    g = int(inv.max()) + 1
    counts = image_weights(rng, n_boot, g)  # B x G multiplicities of the groups
    return counts[:, inv]


def seg_kappa_replicates(counts: np.ndarray, pixels_per_image: int) -> Callable[[np.ndarray], np.ndarray]:
    """Replicate function of ``seg_kappa`` from per-image counts ``N x P x 6`` (see ``SegAccumulator``)."""
    counts = np.asarray(counts, dtype=np.float64)

    def f(w: np.ndarray) -> np.ndarray:
        s = np.einsum("bn,npj->bpj", w, counts)
        pix = (w.sum(axis=1) * pixels_per_image)[:, None]
        return kappa_from_sums(s[..., 0], s[..., 1], s[..., 2], s[..., 3], s[..., 4], s[..., 5], pix)[0]

    return f


def partial_replicates(x: np.ndarray, y: np.ndarray, label: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Replicate function of ``cls_partial`` of logits ``x`` (``P x N``) against ``y`` (``P x N``) given the label.

    Weighted within-class moments: each replicate's image multiplicities weight the class means and the
    pooled within-class covariance.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    lab = np.asarray(label, bool)

    def f(w: np.ndarray) -> np.ndarray:
        sxy = np.zeros((w.shape[0], x.shape[0]))
        sxx, syy = np.zeros_like(sxy), np.zeros_like(sxy)
        for cls_value in (True, False):
            wc = w * (lab == cls_value)[None]
            n = wc.sum(axis=1)[:, None]
            safe = np.where(n > 0, n, 1.0)
            mx, my = (wc @ x.T) / safe, (wc @ y.T) / safe
            sxy += wc @ (x * y).T - n * mx * my
            sxx += wc @ (x * x).T - n * mx**2
            syy += wc @ (y * y).T - n * my**2
        with np.errstate(invalid="ignore", divide="ignore"):
            ok = (sxx > 1e-12) & (syy > 1e-12)
            return np.where(ok, sxy / np.sqrt(np.where(ok, sxx * syy, 1.0)), np.nan)

    return f


def hierarchical_bootstrap(diff_replicates: np.ndarray, observed: np.ndarray, rng: np.random.Generator,
                           level: float = 0.95) -> dict:
    """Interval and one-sided p of the mean over concepts of a per-concept statistic.

    Parameters
    ----------
    diff_replicates : ``B x K`` per-concept statistic under each replicate's image resample (the image
        level of the hierarchy; NaN where undefined in a replicate).
    observed : ``K`` observed per-concept statistic.
    rng : draws the concept level (``K`` concepts with replacement per replicate).

    Returns
    -------
    ``{"mean", "ci_low", "ci_high", "p_value", "n"}``; ``p_value`` = (1 + #{replicate means <= 0}) / (1 + B),
    the evidence that the mean is above zero.
    """
    obs = np.asarray(observed, np.float64)
    keep = np.isfinite(obs)
    obs, reps = obs[keep], np.asarray(diff_replicates, np.float64)[:, keep]
    k = len(obs)
    if k == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "p_value": None, "n": 0}
    b = reps.shape[0]
    idx = rng.integers(0, k, size=(b, k))
    drawn = np.take_along_axis(reps, idx, axis=1)
    ok = np.isfinite(drawn)
    cnt = ok.sum(axis=1)
    means = np.where(cnt > 0, np.where(ok, drawn, 0.0).sum(axis=1) / np.maximum(cnt, 1), np.nan)
    means = means[np.isfinite(means)]
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [a, 1.0 - a]) if len(means) else (np.nan, np.nan)
    p = (1 + int((means <= 0).sum())) / (1 + len(means))
    return {"mean": float(obs.mean()), "ci_low": float(lo), "ci_high": float(hi), "p_value": float(p), "n": int(k)}
