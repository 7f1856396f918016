"""Agreement beyond accuracy: how much two layers' concept outputs agree *beyond what the truth explains*.

Raw S_seg and S_cls are bounded by probe accuracy: two probes that both match the ground truth agree
through it alone (methods.md, "Agreement beyond accuracy"). The statistics here condition on the truth, in
the spirit of error consistency (Cohen's kappa of trial-by-trial errors beyond what two accuracies imply):

- ``seg_kappa``: over test pixels on the common evaluation grid, with ``M`` the true mask and ``B_A``,
  ``B_B`` the binarised masks of layers A and B, the intersection expected if the two probes erred
  independently *given the truth* is ``E = TP_A TP_B / |M| + FP_A FP_B / |not M|`` (within the true mask
  each probe marks a pixel with probability ``TP/|M|``, outside it with ``FP/|not M|``). The agreement is
  ``(O - E) / (min(|B_A|, |B_B|) - E)`` with ``O = |B_A and B_B|``: 1 for identical masks (and whenever one
  mask contains the other), about 0 for conditionally independent probes however accurate they are,
  negative when their errors avoid each other. ``seg_obs_exp`` is ``O / E``.
- ``cls_partial``: the partial correlation of two layers' concept logits given the binary label, i.e. the
  Pearson correlation of the logits after subtracting each class's mean (the pooled within-class
  correlation).

Both are computed from sufficient statistics that the streamed pass accumulates anyway (the truth is one
more row of the segmentation accumulator), so per-image versions for a few selected layer pairs come from
the same pass and serve the image bootstrap of finding 1 (:func:`kappa_from_sums`).
"""

from __future__ import annotations

import numpy as np


def kappa_from_sums(inter: np.ndarray, size_a: np.ndarray, size_b: np.ndarray, tp_a: np.ndarray,
                    tp_b: np.ndarray, truth: np.ndarray, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kappa-like agreement and observed/expected from pooled pixel counts (broadcasting arrays).

    Parameters
    ----------
    inter : ``|B_A and B_B|``; size_a, size_b : ``|B_A|``, ``|B_B|``; tp_a, tp_b : ``|B_A and M|``,
        ``|B_B and M|``; truth : ``|M|``; pixels : the number of pixels compared.

    Returns
    -------
    ``(kappa, obs_exp)``; NaN where undefined: no room above chance (``min(|B_A|, |B_B|) <= E``, e.g. a
    perfect or an empty probe) or no expected overlap.
    """
    inter, size_a, size_b, tp_a, tp_b, truth, pixels = (
        np.asarray(x, dtype=np.float64) for x in (inter, size_a, size_b, tp_a, tp_b, truth, pixels)
    )
    neg = pixels - truth
    with np.errstate(invalid="ignore", divide="ignore"):
        exp = np.where(truth > 0, tp_a * tp_b / np.where(truth > 0, truth, 1.0), 0.0) + np.where(
            neg > 0, (size_a - tp_a) * (size_b - tp_b) / np.where(neg > 0, neg, 1.0), 0.0
        )
        room = np.minimum(size_a, size_b) - exp
        # a room of rounding size means no error to agree on: undefined, like Cohen's kappa of perfect raters
        ok = room > 1e-9 * np.maximum(pixels, 1.0)
        kappa = np.where(ok, (inter - exp) / np.where(ok, room, 1.0), np.nan)
        obs_exp = np.where(exp > 0, inter / np.where(exp > 0, exp, 1.0), np.nan)
    return kappa, obs_exp


def seg_kappa_matrices(inter: np.ndarray, truth_row: int, pixels: float) -> tuple[np.ndarray, np.ndarray]:
    """``seg_kappa`` and ``seg_obs_exp`` of every pair of rows from an intersection matrix with a truth row.

    Parameters
    ----------
    inter : ``K x R x R`` intersections of binarised masks; row ``truth_row`` is the true mask, so its
        column gives every row's true positives and its diagonal entry ``|M|``.
    truth_row : index of the truth row.
    pixels : test pixels compared (images x evaluation-grid cells).

    Returns
    -------
    ``K x R x R`` arrays (the truth row's own entries are of no interest: they are NaN or trivial).
    """
    inter = np.asarray(inter, dtype=np.float64)
    size = np.diagonal(inter, axis1=1, axis2=2)  # K x R
    tp = inter[:, :, truth_row]  # K x R
    truth = inter[:, truth_row, truth_row][:, None, None]
    return kappa_from_sums(inter, size[:, :, None], size[:, None, :], tp[:, :, None], tp[:, None, :], truth, pixels)


def within_class_centered(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Logits minus the mean of their class.

    Parameters
    ----------
    logits : ``K x L x N`` concept logits of every layer on N images.
    labels : ``N x K`` binary presence labels.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=bool).T[:, None, :]  # K x 1 x N
    out = z.copy()
    for cls_value in (True, False):
        sel = y == cls_value
        cnt = sel.sum(axis=2, keepdims=True)
        mean = np.where(sel, z, 0.0).sum(axis=2, keepdims=True) / np.maximum(cnt, 1)
        out -= np.where(sel, mean, 0.0)
    return out


def partial_correlation(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``cls_partial``: ``K x L x L`` pooled within-class correlations of the logits given the label.

    NaN where a layer's logits are constant within both classes (or a concept has no images).
    """
    zc = within_class_centered(logits, labels)
    ss = (zc**2).sum(axis=2)  # K x L
    gram = zc @ zc.transpose(0, 2, 1)
    scale = np.sqrt(ss[:, :, None] * ss[:, None, :])
    tiny = 1e-12 * np.maximum((np.asarray(logits, dtype=np.float64) ** 2).sum(axis=2), 1e-300)
    ok = (ss > tiny)[:, :, None] & (ss > tiny)[:, None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(ok, gram / np.where(ok, scale, 1.0), np.nan)
    return np.clip(r, -1.0, 1.0)


AGREEMENT_METHODS = ("seg_kappa", "seg_obs_exp", "cls_partial")


def concept_agreement(outputs_a, outputs_b, truth, method: str = "seg_kappa") -> float:
    """Agreement beyond accuracy of one concept between two layers, from their outputs and the truth.

    The per-pair front door of this module's statistics (plain numpy, one call per layer pair and concept);
    the comparison stage computes the same numbers for all pairs at once from the streamed sums.

    Parameters
    ----------
    outputs_a, outputs_b : array_like
        The concept's logits of layers A and B on the same images: ``N x gh x gw`` on the evaluation grid
        for ``seg_kappa`` and ``seg_obs_exp`` (a pixel is marked where ``logit >= 0``), ``N`` image logits
        for ``cls_partial``.
    truth : array_like
        The true masks (``N x gh x gw``, for the ``seg`` methods) or the presence labels (``N``, for
        ``cls_partial``), 0/1 or boolean.
    method : {"seg_kappa", "seg_obs_exp", "cls_partial"}
        ``seg_kappa``: ``(O - E) / (min(|B_A|, |B_B|) - E)`` with ``O`` the observed overlap of the two
        masks and ``E`` the overlap of probes erring independently given the truth; ``seg_obs_exp``:
        ``O / E``; ``cls_partial``: the Pearson correlation of the logits after subtracting each class's
        mean.

    Returns
    -------
    float
        The agreement; NaN when it is undefined (no room above chance, e.g. a perfect or an empty probe;
        logits constant within both classes).
    """
    if method not in AGREEMENT_METHODS:
        raise ValueError(f"method must be one of {AGREEMENT_METHODS}, got {method!r}")
    a = np.asarray(outputs_a, dtype=np.float64)
    b = np.asarray(outputs_b, dtype=np.float64)
    t = np.asarray(truth)
    if a.shape != b.shape or a.shape != t.shape:
        raise ValueError(f"outputs and truth must have the same shape, got {a.shape}, {b.shape} and truth {t.shape}")
    t = t.astype(bool)
    if method == "cls_partial":
        return float(partial_correlation(np.stack([a.ravel(), b.ravel()])[None], t.reshape(-1, 1))[0, 0, 1])
    ma, mb = a >= 0, b >= 0
    kappa, obs_exp = kappa_from_sums((ma & mb).sum(), ma.sum(), mb.sum(), (ma & t).sum(), (mb & t).sum(), t.sum(), t.size)
    return float(kappa if method == "seg_kappa" else obs_exp)
