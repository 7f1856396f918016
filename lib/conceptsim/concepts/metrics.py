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


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Mean of true-positive and true-negative rates along the last axis; NaN if a class is missing."""
    y = np.asarray(y).astype(bool)
    pred = np.asarray(pred).astype(bool)
    pos, neg = y.sum(-1), (~y).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = (y & pred).sum(-1) / pos
        tnr = (~y & ~pred).sum(-1) / neg
    return np.where((pos > 0) & (neg > 0), 0.5 * (tpr + tnr), np.nan)
