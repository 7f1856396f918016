"""Concept-output similarity of layer pairs: S_seg, S_cls and their secondary variants, streamed.

For a concept c and layers A, B on the shared test images (methods.md):

- ``seg``: S_seg = sum_x |B_A(x) and B_B(x)| / sum_x |B_A(x) or B_B(x)| (set IoU of binarised masks on the
  common evaluation grid, pooled over all test images);
- ``seg_pearson``: Pearson correlation of the soft masks sigmoid(logit) over all test pixels;
- ``cls``: Pearson correlation over test images of the two layers' concept logits;
- ``cls_jaccard``: Jaccard index of the sets of test images each layer predicts positive (logit > 0).

Streaming: for each concept the binarised masks of *all* layers for an image chunk form one
``L x (n * gh * gw)`` 0/1 matrix ``M``; one product ``M M^T`` adds the intersections of every layer pair
(exact: the entries are integer counts well below 2^24 per chunk, accumulated in float64), and
``|A or B| = |A| + |B| - |A and B|``. The soft-mask Pearson statistics are accumulated the same way from
``(S - s0)(S - s0)^T`` where ``s0`` is each layer's mean on the first chunk (shifting by a constant leaves the
correlation unchanged and keeps the float32 sums free of cancellation).

Chance control (the "shuffled" value reported beside S): the similarity of A's outputs with B's outputs
on *permuted test images*. For S_seg it is the exact expectation over uniformly random permutations of the
intersection, ``E|A and pi(B)| = <c_A, c_B> / N`` with ``c_L`` the per-pixel count of test images that layer
L marks positive, put into the IoU formula (ratio of expectations; N is in the hundreds). For S_cls it is
the Pearson correlation with B's test logits permuted by one seeded permutation, symmetrised over the two
orientations. Both are the overlap two predictors with the layers' own marginals reach by chance.

Undefined values are NaN: an IoU whose union is empty (both layers predict nothing on all test images), a
correlation with a constant input, and any pair involving a layer without a vector for the concept.
"""

from __future__ import annotations

import numpy as np
import torch


def set_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Set IoU of two binary arrays of the same shape (all test images and pixels together)."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else float("nan")


def iou_from_counts(inter: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """``inter[..., i, j] / (sizes[..., i] + sizes[..., j] - inter[..., i, j])``, NaN for empty unions."""
    union = sizes[..., :, None] + sizes[..., None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), np.nan)


def pearson_from_moments(n: float, sums: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """Correlation matrix from ``n``, per-variable sums ``(..., L)`` and cross-products ``(..., L, L)``."""
    mean = sums / n
    cov = gram / n - mean[..., :, None] * mean[..., None, :]
    var = np.clip(np.diagonal(cov, axis1=-2, axis2=-1), 0.0, None)
    scale = np.sqrt(var[..., :, None] * var[..., None, :])
    # A variance that is zero up to rounding means a constant output: its correlation is undefined.
    tiny = 1e-12 * np.maximum(np.abs(np.diagonal(gram, axis1=-2, axis2=-1)) / n, 1e-300)
    ok = (var[..., :, None] > tiny[..., :, None]) & (var[..., None, :] > tiny[..., None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(ok, cov / np.where(ok, scale, 1.0), np.nan)
    return np.clip(r, -1.0, 1.0)


class SegAccumulator:
    """Accumulates S_seg, its permuted-image control and the soft-mask Pearson over image chunks.

    Parameters
    ----------
    n_layers, n_concepts : sizes of the study-wide layer and concept lists.
    grid : the evaluation grid ``(gh, gw)``.
    """

    def __init__(self, n_layers: int, n_concepts: int, grid: tuple[int, int]) -> None:
        L, K = n_layers, n_concepts
        self.pixels = int(grid[0]) * int(grid[1])
        self.inter = np.zeros((K, L, L))
        self.sizes = np.zeros((K, L))
        self.count_map = np.zeros((K, L, self.pixels))
        self.soft_gram = np.zeros((K, L, L))
        self.soft_sum = np.zeros((K, L))
        self.shift: torch.Tensor | None = None
        self.n_images = 0

    def update(self, seg: torch.Tensor) -> None:
        """Add one chunk of logits ``L x n x K x gh x gw`` (all layers, the same ``n`` images)."""
        L, n, K = seg.shape[:3]
        if self.shift is None:
            self.shift = torch.sigmoid(seg).mean(dim=(1, 3, 4)).T.contiguous()  # K x L
        for k in range(K):
            x = seg[:, :, k].reshape(L, n * self.pixels)
            b = (x > 0).to(torch.float32)
            self.inter[k] += (b @ b.T).double().numpy()
            self.count_map[k] += b.view(L, n, self.pixels).sum(dim=1).double().numpy()
            s = torch.sigmoid(x).sub_(self.shift[k][:, None])
            self.soft_gram[k] += (s @ s.T).double().numpy()
            self.soft_sum[k] += s.sum(dim=1).double().numpy()
        self.n_images += n

    def results(self) -> dict[str, np.ndarray]:
        """``seg``, ``seg_control`` and ``seg_pearson`` as ``K x L x L`` arrays."""
        sizes = np.diagonal(self.inter, axis1=1, axis2=2).copy()
        seg = iou_from_counts(self.inter, sizes)
        expected = np.einsum("klp,kmp->klm", self.count_map, self.count_map) / max(self.n_images, 1)
        control = iou_from_counts(expected, sizes)
        pearson = pearson_from_moments(self.n_images * self.pixels, self.soft_sum, self.soft_gram)
        return {"seg": seg, "seg_control": control, "seg_pearson": pearson}


def cls_similarity(logits: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """S_cls, its permuted-image control and the Jaccard variant.

    Parameters
    ----------
    logits : ``L x N x K`` classification logits of every layer on the test images.
    rng : draws the one permutation of the test images used by the control.

    Returns
    -------
    ``cls``, ``cls_control``, ``cls_jaccard`` as ``K x L x L`` arrays.
    """
    z = np.asarray(logits, dtype=np.float64).transpose(2, 0, 1)  # K x L x N
    n = z.shape[2]
    zc = z - z.mean(axis=2, keepdims=True)
    cls = pearson_from_moments(n, np.zeros(z.shape[:2]), zc @ zc.transpose(0, 2, 1))
    perm = rng.permutation(n)
    zp = zc[:, :, perm]
    norm = np.sqrt((zc**2).sum(axis=2))
    with np.errstate(invalid="ignore", divide="ignore"):
        cross = (zc @ zp.transpose(0, 2, 1)) / (norm[:, :, None] * norm[:, None, :])
    control = 0.5 * (cross + cross.transpose(0, 2, 1))
    pos = (z > 0).astype(np.float64)
    jac = iou_from_counts(pos @ pos.transpose(0, 2, 1), pos.sum(axis=2))
    return {"cls": cls, "cls_control": control, "cls_jaccard": jac}
