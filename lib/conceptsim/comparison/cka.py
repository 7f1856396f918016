"""Linear CKA (Kornblith et al. 2019) and its debiased variant: the concept-free similarity baseline.

For features ``X`` (n x p) and ``Y`` (n x q) of the same n test images, with Gram matrices ``K = X X^T``,
``L = Y Y^T`` and the centring matrix ``H = I - 11^T / n``:

    CKA(X, Y) = <HKH, HLH>_F / (||HKH||_F ||HLH||_F)

which for linear kernels equals ``||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)`` with
column-centred features. The debiased variant replaces each HSIC by the unbiased estimator of
Song et al. (2012), with ``K~``, ``L~`` the Grams with zeroed diagonals:

    HSIC_1(K, L) = [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n (n-3))

Working with n x n Grams makes every layer pair one inner product of flattened matrices, so all pairs of
all layers cost one matrix product. Features are global-average-pooled activations (``cka``,
``cka_debiased``) or activations average-pooled to a 4 x 4 grid and flattened (``cka_grid4``).
"""

from __future__ import annotations

import numpy as np
import torch


def gram(x: np.ndarray) -> np.ndarray:
    """Linear Gram matrix ``X X^T`` of ``n x p`` features (float64)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return x @ x.T


def center_gram(k: np.ndarray) -> np.ndarray:
    """``H K H``: double centring of a Gram matrix."""
    k = np.asarray(k, dtype=np.float64)
    return k - k.mean(axis=0, keepdims=True) - k.mean(axis=1, keepdims=True) + k.mean()


def feature_pair(x, y, minimum: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``y`` as float64 feature matrices of the same images (``n x p``, ``n x q``), checked.

    A ValueError names the argument when one is not 2-D (images x features), when their numbers of images
    differ, or when there are fewer than ``minimum`` images.
    """
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    for name, a in (("x", xa), ("y", ya)):
        if a.ndim != 2:
            raise ValueError(f"{name} must be 2-D features (n images x features), got shape {a.shape}")
    if len(xa) != len(ya):
        raise ValueError(f"x and y must hold the features of the same images (the same number of rows), "
                         f"got {len(xa)} and {len(ya)} rows")
    if len(xa) < minimum:
        raise ValueError(f"x and y need at least {minimum} images (rows), got {len(xa)}")
    return xa, ya


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two feature matrices over the same rows (direct feature-space formula).

    ``x``: ``n x p``, ``y``: ``n x q`` features of the same ``n`` images (a ValueError otherwise).
    """
    xc, yc = feature_pair(x, y)
    xc = xc - xc.mean(axis=0)
    yc = yc - yc.mean(axis=0)
    num = np.linalg.norm(yc.T @ xc) ** 2
    den = np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)
    return float(num / den) if den > 0 else float("nan")


def hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:
    """Unbiased HSIC estimator of two n x n Gram matrices (n > 3)."""
    n = k.shape[0]
    if n < 4:
        raise ValueError(f"the unbiased HSIC needs at least 4 samples, got {n}")
    kt = np.array(k, dtype=np.float64)
    lt = np.array(l, dtype=np.float64)
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    term = np.sum(kt * lt) + kt.sum() * lt.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * kt.sum(0) @ lt.sum(1)
    return float(term / (n * (n - 3)))


def debiased_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Debiased linear CKA of two feature matrices (direct formula through ``hsic_unbiased`` of this module).

    ``x``: ``n x p``, ``y``: ``n x q`` features of the same ``n >= 4`` images (the unbiased HSIC needs 4; a
    ValueError otherwise).
    """
    x, y = feature_pair(x, y, minimum=4)
    k, l = gram(x), gram(y)
    den = np.sqrt(max(hsic_unbiased(k, k), 0.0) * max(hsic_unbiased(l, l), 0.0))
    return float(hsic_unbiased(k, l) / den) if den > 0 else float("nan")


def cka_matrices(grams: np.ndarray) -> dict[str, np.ndarray]:
    """Linear and debiased CKA of every pair of layers from their Gram matrices.

    Parameters
    ----------
    grams : ``L x n x n`` linear Gram matrices of the L layers on the same n images.

    Returns
    -------
    ``{"cka": L x L, "cka_debiased": L x L}``; NaN where a layer's features are constant.
    """
    # torch rather than numpy for the products: one thread pool for the whole stage (numpy's BLAS pool
    # and torch's OpenMP pool spinning side by side on two cores slow both down)
    g = torch.as_tensor(np.asarray(grams, dtype=np.float64))
    nl, n = g.shape[0], g.shape[1]
    # one scratch buffer of the size of the input serves both variants, filled one layer at a time, so
    # memory is two L x n x n arrays (not five)
    work = torch.empty_like(g)
    for li in range(nl):
        x = g[li]
        torch.sub(x, x.mean(dim=0, keepdim=True), out=work[li])
        work[li] -= x.mean(dim=1, keepdim=True)
        work[li] += x.mean()
    flat = work.reshape(nl, -1)
    inner = (flat @ flat.T).numpy()
    norm = np.sqrt(np.clip(np.diag(inner), 0.0, None))
    ok = (norm[:, None] > 0) & (norm[None, :] > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {"cka": np.where(ok, inner / np.where(ok, norm[:, None] * norm[None, :], 1.0), np.nan)}
    if n >= 4:
        zt = work
        zt.copy_(g)
        zt[:, torch.arange(n), torch.arange(n)] = 0.0
        f = zt.reshape(nl, -1)
        tot = zt.sum(dim=(1, 2))
        rows = zt.sum(dim=2)
        hsic = ((f @ f.T + torch.outer(tot, tot) / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * rows @ rows.T) / (n * (n - 3))).numpy()
        self_h = np.clip(np.diag(hsic), 0.0, None)
        den = np.sqrt(self_h[:, None] * self_h[None, :])
        with np.errstate(invalid="ignore", divide="ignore"):
            out["cka_debiased"] = np.where(den > 0, hsic / np.where(den > 0, den, 1.0), np.nan)
    else:
        out["cka_debiased"] = np.full((nl, nl), np.nan)
    return out
