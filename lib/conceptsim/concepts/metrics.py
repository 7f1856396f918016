"""Quality metrics of concept probes, written so that bootstrap resamples are cheap.

Segmentation quality is the *set* IoU of methods.md: intersections and unions are summed over all test
images before dividing, so per-image counts (:func:`iou_counts`) are the sufficient statistics and a
bootstrap resample only re-sums them. Classification quality is average precision (AP, tie-aware, equal
to scikit-learn's ``average_precision_score``) and balanced accuracy; both accept a leading batch axis of
resamples so that 1,000 resamples are one vectorised call.
"""

from __future__ import annotations

import numpy as np
import torch


def iou_counts(pred: torch.Tensor, truth: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-image, per-concept intersection and union pixel counts.

    Parameters
    ----------
    pred, truth : bool (or 0/1) tensors ``N x K x H x W`` on the same grid.

    Returns
    -------
    inter, union : int64 arrays ``N x K``.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and mask {tuple(truth.shape)} grids differ")
    p, t = pred.bool(), truth.bool()
    inter = (p & t).flatten(2).sum(2)
    union = (p | t).flatten(2).sum(2)
    return inter.cpu().numpy().astype(np.int64), union.cpu().numpy().astype(np.int64)


def set_iou_from_counts(inter: np.ndarray, union: np.ndarray, axis: int = -2) -> np.ndarray:
    """Set IoU ``sum inter / sum union`` over ``axis`` (the image axis); NaN where the union is empty."""
    i = np.asarray(inter).sum(axis=axis, dtype=np.float64)
    u = np.asarray(union).sum(axis=axis, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(u > 0, i / np.where(u > 0, u, 1.0), np.nan)


def set_iou(pred: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """Set IoU per concept of binary maps ``N x K x H x W`` (methods.md, Method A)."""
    return set_iou_from_counts(*iou_counts(pred, truth))


def average_precision(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Average precision along the last axis, tie-aware (same definition as scikit-learn).

    Parameters
    ----------
    y : 0/1 labels ``(..., n)``.
    score : real scores ``(..., n)``; higher means more likely positive.

    Returns
    -------
    AP of shape ``(...)``; NaN where a row has no positive.

    Notes
    -----
    AP = sum over distinct thresholds of (recall step) x precision. Tied scores form one threshold, so
    precision is taken at the *end* of each tie group; the recall step is measured from the previous
    group end. Because true-positive counts never decrease, "the count at the previous group end" is a
    running maximum of the counts at group ends, which keeps everything vectorised over resamples.
    """
    y = np.asarray(y, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    order = np.argsort(-score, axis=-1, kind="stable")
    s = np.take_along_axis(score, order, -1)
    tp = np.cumsum(np.take_along_axis(y, order, -1), axis=-1)
    rank = np.arange(1, y.shape[-1] + 1, dtype=np.float64)
    end = np.ones_like(s, dtype=bool)
    end[..., :-1] = s[..., 1:] != s[..., :-1]
    tp_end = np.where(end, tp, 0.0)
    prev = np.zeros_like(tp_end)
    prev[..., 1:] = np.maximum.accumulate(tp_end, axis=-1)[..., :-1]
    n_pos = tp[..., -1]
    contrib = np.where(end, (tp - prev) * (tp / rank), 0.0).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_pos > 0, contrib / np.where(n_pos > 0, n_pos, 1.0), np.nan)


def multiplicities(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each of ``n`` items occurs in each resample: ``idx`` (resamples x draws) -> float64 ``resamples x n``."""
    idx = np.asarray(idx)
    flat = (np.arange(len(idx))[:, None] * n + idx).ravel()
    return np.bincount(flat, minlength=len(idx) * n).reshape(len(idx), n).astype(np.float64)


def resampled_average_precision(y: np.ndarray, score: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """:func:`average_precision` of every resample, from item multiplicities instead of resampled copies.

    ``y``, ``score``: ``K x n``; ``counts``: ``B x n`` (:func:`multiplicities`). Returns ``K x B``. The items are
    sorted once per concept; a resample is the same sorted list with each item counted ``counts`` times, so
    its tie groups are the original ones (a repeated item ties with itself), and true positives and ranks at
    each group end are weighted cumulative sums. Equals :func:`average_precision` on the resampled rows up to
    float rounding of the final sum (the counts are exact integers), without a sort per resample.
    """
    y = np.asarray(y, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    order = np.argsort(-score, axis=-1, kind="stable")  # K x n
    s = np.take_along_axis(score, order, -1)
    ys = np.take_along_axis(y, order, -1)
    end = np.ones_like(s, dtype=bool)
    end[:, :-1] = s[:, 1:] != s[:, :-1]
    # bootstrap multiplicities and 0/1 labels: the running counts are whole numbers, exact in int32 (half the
    # memory of float64); the AP terms below are then formed in float64 from the same values
    dtype = np.int32 if _small_whole(counts, y.shape[-1]) and _small_whole(ys, 1) else np.float64
    counts, ys = counts.astype(dtype, copy=False), ys.astype(dtype, copy=False)
    m = np.ascontiguousarray(counts[:, order].transpose(1, 0, 2))  # K x B x n, each concept's items in score order
    rank = np.cumsum(m, axis=-1, dtype=dtype)
    tp = np.cumsum(m * ys[:, None, :], axis=-1, dtype=dtype)
    tp_end = np.where(end[:, None, :], tp, dtype(0))
    prev = np.zeros_like(tp_end)
    prev[..., 1:] = np.maximum.accumulate(tp_end, axis=-1)[..., :-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        contrib = np.where(end[:, None, :] & (rank > 0), (tp - prev) * (tp / rank), 0.0).sum(-1)
        n_pos = tp[..., -1]
        return np.where(n_pos > 0, contrib / np.where(n_pos > 0, n_pos, 1.0), np.nan)


def _small_whole(a: np.ndarray, per_item: float) -> bool:
    """Whether ``a`` holds whole numbers whose sums along the last axis stay far inside int32."""
    a = np.asarray(a)
    if a.size == 0:
        return False
    top = float(np.abs(a).max())
    return top * a.shape[-1] * max(per_item, 1.0) < 2**30 and bool(np.all(a == np.round(a)))


def resampled_balanced_accuracy(y: np.ndarray, pred: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """:func:`balanced_accuracy` of every resample from item multiplicities: ``y``, ``pred`` ``K x n``, ``counts``
    ``B x n`` -> ``K x B``. The class sizes and hits are products of the counts with 0/1 indicators (exact integers)."""
    y = np.asarray(y).astype(bool)
    pred = np.asarray(pred).astype(bool)
    ct = np.ascontiguousarray(counts.T)
    pos, neg = y.astype(np.float64) @ ct, (~y).astype(np.float64) @ ct  # K x B
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = (y & pred).astype(np.float64) @ ct / pos
        tnr = (~y & ~pred).astype(np.float64) @ ct / neg
    return np.where((pos > 0) & (neg > 0), 0.5 * (tpr + tnr), np.nan)


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Mean of true-positive and true-negative rates along the last axis; NaN if a class is missing."""
    y = np.asarray(y).astype(bool)
    pred = np.asarray(pred).astype(bool)
    pos, neg = y.sum(-1), (~y).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = (y & pred).sum(-1) / pos
        tnr = (~y & ~pred).sum(-1) / neg
    return np.where((pos > 0) & (neg > 0), 0.5 * (tpr + tnr), np.nan)
