"""Method B: TCAV-style classification concept vectors on global-average-pooled activations ("1D-CAV").

Per concept: L2 logistic regression on train GAP features standardised with train statistics, classes
balanced by weighting (scikit-learn's ``class_weight="balanced"``), the regularisation ``C`` chosen from
``C_GRID`` by validation AP (ties go to the smaller C, i.e. the stronger regularisation). The concept
activation vector (CAV) is the unit normal ``coef / |coef|`` in the standardised space. Quality on test:
AP of the decision function and balanced accuracy of ``decision > 0``.

Solvers. ``lbfgs`` (default, :func:`solve_classification_probes`): for each C, one full-batch L-BFGS solve
(:mod:`conceptsim.concepts.optimum`, float64) of all concepts together -- the sum of their objectives,
which share no parameters -- warm-started from the previous (smaller) C, to the largest |gradient| entry
``<= gtol`` of each concept's objective as scikit-learn scales it,
``(1/n) sum_i s_i log(1 + exp(-y_i (w.x_i + b))) + |w|^2 / (2 C n)`` (``s_i = n / (2 n_class(i))``; the
same minimiser as ``|w|^2 / 2 + C sum_i s_i ...``). ``reference``: one scikit-learn lbfgs fit per concept
and C (``max_iter=500``, its default tolerance; at large C it may stop before the optimum).

Row space (:class:`RowSpace`). From ``W = 0`` every L-BFGS iterate's and every gradient's weight rows lie in
the row space of the train features ``X = U S V^T`` (gradient rows are ``r^T X + W / (C n)``). In coordinates
``W = beta V^T`` (``V`` orthonormal, ``D x r``) the objective is the same one with features ``X V = U S``
(``n x r``) and ``|W| = |beta|``, and every inner product L-BFGS takes is unchanged, so L-BFGS on
``(beta, b)`` takes the same iterates as on ``(W, b)`` in exact arithmetic, at ``n r K`` instead of ``n D K``
per evaluation. The stopping rule stays the one on ``max |g_W|`` (and the first step's ``|g_W|_1``), measured
in ``W`` coordinates (:class:`RowSpace` is the :class:`~conceptsim.concepts.optimum.GradientNorms`).
Directions with singular values at or below ``s_max max(n, D) eps`` (the rounding level of ``X``, numpy's
``matrix_rank`` tolerance) are left out: along them ``X`` has no extent beyond rounding, so ``X W^T`` does
not change and the iterates' components there, driven by ``s_i``, are at rounding level too. Used where it
pays: ``n <= ROW_SPACE_SHARE * D`` (then ``r <= n``; layers with more channels than train images).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from conceptsim.concepts.metrics import average_precision
from conceptsim.concepts.optimum import MAX_ITER, SOLVERS, GradientNorms, minimise

C_GRID = (0.01, 0.1, 1.0, 10.0)
#: tolerance on the largest |gradient| entry of each concept's scaled objective (scikit-learn's default is 1e-4)
GTOL = 1e-6
#: solve in the features' row space when there are at most this share of the channels' train images
ROW_SPACE_SHARE = 0.75


@dataclass
class ClsProbes:
    """Logistic-regression probes of one layer (standardised GAP space).

    Attributes
    ----------
    coef : ``K x C``; intercept : ``K``; chosen_c : ``K``; val_ap : ``K`` validation AP of the chosen C.
    """

    coef: np.ndarray
    intercept: np.ndarray
    chosen_c: np.ndarray
    val_ap: np.ndarray

    def decision(self, z: np.ndarray) -> np.ndarray:
        """Logits ``n x K`` of standardised features ``n x C`` (a ValueError for other shapes)."""
        shape, channels = np.shape(z), self.coef.shape[1]
        if len(shape) != 2 or shape[1] != channels:
            raise ValueError(f"z must be standardised features n x {channels} (the probes' channels), got shape {shape}")
        return z @ self.coef.T + self.intercept

    @property
    def cav(self) -> np.ndarray:
        """Unit normals ``K x C`` (zero rows stay zero)."""
        norm = np.linalg.norm(self.coef, axis=1, keepdims=True)
        return self.coef / np.where(norm > 0, norm, 1.0)


def fit_one(z: np.ndarray, y: np.ndarray, c: float, seed: int) -> LogisticRegression:
    """One balanced L2 logistic regression (lbfgs; convergence warnings are expected at large C)."""
    clf = LogisticRegression(C=c, class_weight="balanced", max_iter=500, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(z, y)
    return clf


def balanced_weights(y: np.ndarray) -> np.ndarray:
    """scikit-learn's balanced sample weights ``n / (2 n_class)`` per entry of 0/1 labels ``n x K``."""
    y = np.asarray(y, dtype=bool)
    n, pos = len(y), y.sum(0)
    return np.where(y, n / (2.0 * np.maximum(pos, 1)), n / (2.0 * np.maximum(n - pos, 1)))


class BalancedLogistic:
    """The scaled objectives of K balanced L2 logistic regressions at one C, summed, as ``theta -> (f, g)``.

    ``theta`` is ``[W (K x D) row-major, b (K)]`` (float64).
    """

    def __init__(self, z: np.ndarray, y: np.ndarray):
        self.x = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float64))
        self.y = torch.from_numpy(np.asarray(y, dtype=np.float64))
        self.sw = torch.from_numpy(balanced_weights(y)) / len(z)  # s_i / n
        self.k, self.d = self.y.shape[1], self.x.shape[1]
        self.c = 1.0

    def __call__(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, d = self.k, self.d
        w, b = theta[: k * d].view(k, d), theta[k * d :]
        z = torch.addmm(b, self.x, w.t())  # n x K
        reg = 1.0 / (self.c * len(self.x))
        f = (self.sw * (torch.nn.functional.softplus(z) - self.y * z)).sum() + 0.5 * reg * (w * w).sum()
        r = self.sw * (torch.sigmoid(z) - self.y)
        return f, torch.cat([(r.t() @ self.x + reg * w).flatten(), r.sum(0)])


class RowSpace(GradientNorms):
    """Coordinates ``beta`` (``K x r``) of weights ``W = beta V^T`` in the row space of features ``X = U S V^T``.

    ``scores`` is ``X V = U S`` (``n x r``), the features of the problem in these coordinates; ``basis`` is
    ``V^T`` (``r x D``). Parameters are ``[beta (K x r) row-major, b (K)]``. As gradient norms it measures
    ``g_W = g_beta V^T``: the stopping test first uses ``|g_W[k]|_inf <= |g_W[k]|_2 = |g_beta[k]|_2`` and
    ``|g_W[k]|_inf >= |g_beta[k]|_2 / sqrt(D)``, and forms ``g_W`` only for the rows these bounds leave open.
    """

    def __init__(self, x: np.ndarray, k: int):
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
        keep = s > (float(s[0]) if len(s) else 0.0) * max(x.shape) * np.finfo(np.float64).eps
        self.scores = (u[:, keep] * s[keep]).numpy()
        self.basis = vh[keep].contiguous()
        self.k, self.r, self.d = k, int(keep.sum()), x.shape[1]

    def weights(self, theta: torch.Tensor) -> torch.Tensor:
        """``W`` (``K x D``) of parameters ``theta``."""
        return theta[: self.k * self.r].view(self.k, self.r) @ self.basis

    def largest(self, g: torch.Tensor) -> float:
        return max(float(g[self.k * self.r :].abs().max()), float(self.weights(g).abs().max()))

    def total(self, g: torch.Tensor) -> float:
        return float(g[self.k * self.r :].abs().sum()) + float(self.weights(g).abs().sum())

    def above(self, g: torch.Tensor, gtol: float) -> bool:
        if float(g[self.k * self.r :].abs().max()) > gtol:
            return True
        rows = g[: self.k * self.r].view(self.k, self.r)
        norm = torch.linalg.vector_norm(rows, dim=1)
        if float(norm.max()) > gtol * self.d**0.5:
            return True
        open_rows = norm > gtol
        return bool(open_rows.any()) and float((rows[open_rows] @ self.basis).abs().max()) > gtol


def solve_classification_probes(
    z_train: np.ndarray, y_train: np.ndarray, z_val: np.ndarray, y_val: np.ndarray, *,
    c_grid=C_GRID, gtol: float = GTOL, max_iter: int = MAX_ITER,
) -> ClsProbes:
    """All concepts' probes for every C of ``c_grid`` by batched L-BFGS (see the module docstring)."""
    k, d = np.shape(y_train)[1], np.shape(z_train)[1]
    space = RowSpace(z_train, k) if len(z_train) <= ROW_SPACE_SHARE * d else None
    fun = BalancedLogistic(z_train if space is None else space.scores, y_train)
    theta = torch.zeros(k * fun.d + k, dtype=torch.float64)  # b = 0 is the balanced intercept-only optimum
    best_ap, chosen = np.full(k, -np.inf), np.zeros(k)
    coef, intercept = np.zeros((k, d)), np.zeros(k)
    zv = np.asarray(z_val, dtype=np.float64)
    for c in sorted(c_grid):
        fun.c = float(c)
        theta = minimise(fun, theta, gtol=gtol, max_iter=max_iter, norms=space).theta
        w = (theta[: k * d].view(k, d) if space is None else space.weights(theta)).numpy()
        b = theta[k * fun.d :].numpy()
        ap = average_precision(np.asarray(y_val).T, (zv @ w.T + b).T)
        ap = np.where(np.isnan(ap), -np.inf, ap)
        better = (ap > best_ap) | (chosen == 0)  # ascending C: ties keep the smaller C; the first C is kept
        best_ap[better], chosen[better] = ap[better], c
        coef[better], intercept[better] = w[better], b[better]
    return ClsProbes(coef, intercept, chosen, best_ap)


def _check_probe_data(z_train, y_train, z_val, y_val) -> None:
    """A ValueError naming the argument unless features and labels fit :func:`train_classification_probes`.

    Shapes (the features ``n x C``, the labels ``n x K``, the same images and channels and concepts in
    train and val), label values (0/1 or boolean: one pass over the labels, far cheaper than the fit) and
    both classes of every concept in train.
    """
    zt, zv = np.shape(z_train), np.shape(z_val)
    yt, yv = np.asarray(y_train), np.asarray(y_val)
    for name, shape in (("z_train", zt), ("z_val", zv), ("y_train", yt.shape), ("y_val", yv.shape)):
        if len(shape) != 2:
            what = "features n x C" if name[0] == "z" else "labels n x K (one 0/1 column per concept)"
            raise ValueError(f"{name} must be 2-D {what}, got shape {shape}")
    for split, z, y in (("train", zt, yt.shape), ("val", zv, yv.shape)):
        if z[0] != y[0]:
            raise ValueError(f"z_{split} and y_{split} must hold the same images, got {z[0]} and {y[0]} rows")
    if zv[1] != zt[1]:
        raise ValueError(f"z_val must have the channels of z_train ({zt[1]}), got {zv[1]}")
    if yv.shape[1] != yt.shape[1]:
        raise ValueError(f"y_val must have the concepts (columns) of y_train ({yt.shape[1]}), got {yv.shape[1]}")
    for name, y in (("y_train", yt), ("y_val", yv)):
        if y.dtype != bool and not (np.issubdtype(y.dtype, np.number) and ((y == 0) | (y == 1)).all()):
            raise ValueError(f"{name} must be 0/1 or boolean labels, got values of dtype {y.dtype} that are not all 0 or 1")
    pos = yt.astype(bool).sum(axis=0)
    one = np.flatnonzero((pos == 0) | (pos == len(yt)))
    if len(one):
        more = f" (columns with one class: {one.tolist()})" if len(one) > 1 else ""
        raise ValueError(f"every concept needs both classes in y_train: column {one[0]} has only "
                         f"{'positives' if pos[one[0]] else 'negatives'} among its {len(yt)} images{more}")


def train_classification_probes(
    z_train: np.ndarray, y_train: np.ndarray, z_val: np.ndarray, y_val: np.ndarray, *,
    c_grid=C_GRID, seed: int = 0, solver: str = "lbfgs", gtol: float = GTOL,
) -> ClsProbes:
    """Fit one probe per concept column of ``y_train`` (``n x K`` 0/1), choosing C by val AP.

    ``z_train`` (``n x C``) and ``z_val`` (``n_val x C``) are standardised features, ``y_train`` (``n x K``)
    and ``y_val`` (``n_val x K``) 0/1 or boolean labels of the same images. Every concept must have both
    classes in train; the stage excludes the others beforehand. Other shapes, label values, or a concept
    with one class in train are a ValueError.
    ``solver``: ``lbfgs`` (default; ``gtol`` its tolerance) or ``reference`` (scikit-learn, seeded by ``seed``).
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    _check_probe_data(z_train, y_train, z_val, y_val)
    if solver == "lbfgs":
        return solve_classification_probes(z_train, y_train, z_val, y_val, c_grid=c_grid, gtol=gtol)
    k, dim = y_train.shape[1], z_train.shape[1]
    coef, intercept = np.zeros((k, dim)), np.zeros(k)
    chosen, val_ap = np.zeros(k), np.full(k, np.nan)
    for j in range(k):
        best = None
        for c in sorted(c_grid):
            clf = fit_one(z_train, y_train[:, j], c, seed)
            ap = average_precision(y_val[:, j], clf.decision_function(z_val))
            ap = -np.inf if np.isnan(ap) else float(ap)
            if best is None or ap > best[0]:
                best = (ap, c, clf)
        val_ap[j], chosen[j] = best[0], best[1]
        coef[j], intercept[j] = best[2].coef_[0], best[2].intercept_[0]
    return ClsProbes(coef, intercept, chosen, val_ap)
