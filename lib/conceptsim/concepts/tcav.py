"""Method B: TCAV-style classification concept vectors on global-average-pooled activations ("1D-CAV").

Per concept: scikit-learn L2 logistic regression on train GAP features standardised with train
statistics, ``class_weight="balanced"``, the regularisation ``C`` chosen from ``C_GRID`` by validation
AP (ties go to the smaller C, i.e. the stronger regularisation). The concept activation vector (CAV) is
the unit normal ``coef / |coef|`` in the standardised space. Quality on test: AP of the decision
function and balanced accuracy of ``decision > 0``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from conceptsim.concepts.metrics import average_precision

C_GRID = (0.01, 0.1, 1.0, 10.0)


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
        """Logits ``n x K`` of standardised features ``n x C``."""
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


def train_classification_probes(
    z_train: np.ndarray, y_train: np.ndarray, z_val: np.ndarray, y_val: np.ndarray, *,
    c_grid=C_GRID, seed: int = 0,
) -> ClsProbes:
    """Fit one probe per concept column of ``y_train`` (``n x K`` 0/1), choosing C by val AP.

    Every concept must have both classes in train; the stage excludes the others beforehand.
    """
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
