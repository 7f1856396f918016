"""Figures for the ``02_concepts`` notebook; every function returns a matplotlib ``Figure``.

Inputs are the stage's tables (``concept_quality.csv``, ``dissection_best_unit.csv`` as DataFrames) and
plain arrays, so the notebook decides what to load and the functions stay testable.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

SERIES = (("value", "trained", "-"), ("random_init_value", "random init", "--"), ("control_value", "shuffled", ":"))


def quality_vs_depth(quality: pd.DataFrame, *, method: str = "seg", metric: str = "set_iou",
                     categories: Sequence[str] | None = None):
    """Concept quality against relative depth, one panel per concept category.

    Per model, the concept-mean of the trained value (solid), the random-init twin (dashed) and the
    shuffled-label control (dotted); excluded concepts (NaN) are left out of the means.
    """
    q = quality[(quality["method"] == method) & (quality["metric"] == metric)]
    cats = list(categories) if categories is not None else sorted(q["category"].dropna().unique())
    fig, axes = plt.subplots(1, max(1, len(cats)), figsize=(4.2 * max(1, len(cats)), 3.4), sharey=True, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, cat in zip(axes[0], cats):
        sub = q[q["category"] == cat]
        for i, (model, m) in enumerate(sub.groupby("model", sort=True)):
            means = m.groupby("relative_depth")[[s[0] for s in SERIES]].mean().sort_index()
            for col, label, style in SERIES:
                if means[col].notna().any():
                    ax.plot(means.index, means[col], style, marker="o", ms=3, color=colours[i % len(colours)],
                            label=f"{model} {label}")
        ax.set(title=f"{cat} ({sub['concept'].nunique()} concepts)", xlabel="relative depth", xlim=(0, 1.02))
    axes[0][0].set_ylabel(f"{method} {metric} (test)")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def net2vec_vs_unit(best_units: pd.DataFrame):
    """Net2Vec vector test IoU against the best single unit's (selected on val), coloured by depth."""
    fig, ax = plt.subplots(figsize=(4.2, 4))
    sc = ax.scatter(best_units["iou"], best_units["net2vec_iou"], c=best_units["relative_depth"], cmap="viridis",
                    vmin=0, vmax=1, s=14)
    top = float(np.nanmax([best_units["iou"].max(), best_units["net2vec_iou"].max(), 0.05]))
    ax.plot([0, top], [0, top], "k--", lw=0.8)
    ax.set(xlabel="best single unit set IoU", ylabel="Net2Vec vector set IoU", title="multi-filter vs single unit")
    fig.colorbar(sc, ax=ax, label="relative depth")
    fig.tight_layout()
    return fig


def segmentation_overlay(images: Sequence[np.ndarray], predicted: np.ndarray, truth: np.ndarray | None,
                         concepts: Sequence[str], *, max_images: int = 6):
    """Images with each concept's predicted mask (filled) and true mask (contour).

    Parameters
    ----------
    images : RGB arrays ``H x W x 3`` (any size; masks are stretched over the image frame).
    predicted : ``n x K x gh x gw`` binary (or probability) maps on the evaluation grid.
    truth : the same shape, or None. concepts : K names (one row of panels per concept).
    """
    n = min(len(images), max_images)
    k = len(concepts)
    fig, axes = plt.subplots(k, n, figsize=(2.2 * n, 2.2 * k), squeeze=False)
    for j, name in enumerate(concepts):
        for i in range(n):
            ax, img = axes[j][i], np.asarray(images[i])
            h, w = img.shape[:2]
            ax.imshow(img)
            ext = (0, w, h, 0)
            ax.imshow(np.ma.masked_less(predicted[i, j].astype(float), 0.5), extent=ext, alpha=0.45,
                      cmap="autumn", vmin=0, vmax=1, interpolation="nearest")
            if truth is not None and truth[i, j].any():
                gh, gw = truth.shape[-2:]
                ax.contour(np.linspace(0, w, gw), np.linspace(0, h, gh), truth[i, j].astype(float), levels=[0.5],
                           colors="cyan", linewidths=0.8)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(name)
    fig.tight_layout()
    return fig
