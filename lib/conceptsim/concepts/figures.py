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
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.tight_layout()
    if handles:  # beside the panels, never over the data
        fig.legend(handles, labels, fontsize=9, loc="upper left", bbox_to_anchor=(1.0, 0.95), frameon=False)
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


#: fixed outline colours of the segmentation overlays (colour-blind safe, distinct on a grey image)
TRUE_COLOUR, PREDICTED_COLOUR = "#0072B2", "#E69F00"


def desaturate(img: np.ndarray) -> np.ndarray:
    """An RGB image as a light grey one (luminance, lifted towards white), so coloured outlines stand out."""
    rgb = np.asarray(img, dtype=float)[..., :3]
    rgb = rgb / 255.0 if rgb.max() > 1.0 else rgb
    grey = rgb @ np.array([0.299, 0.587, 0.114])
    return np.repeat((0.35 + 0.6 * grey)[..., None], 3, axis=-1)


def _outline(ax, mask: np.ndarray, w: int, h: int, colour: str, style: str) -> None:
    """The 0.5 contour of a grid mask stretched over a ``w`` x ``h`` image (padded, so edges close)."""
    m = np.pad(np.asarray(mask, dtype=float), 1)
    gh, gw = m.shape[0] - 2, m.shape[1] - 2
    xs = (np.arange(gw + 2) - 0.5) * w / gw
    ys = (np.arange(gh + 2) - 0.5) * h / gh
    ax.contour(xs, ys, m, levels=[0.5], colors=colour, linewidths=1.6, linestyles=style)


def wrap_label(text: str, width: int = 18) -> str:
    """A row label broken into lines of at most ``width`` characters at ``.``, ``_`` or existing breaks, so
    a vertical label stays within its panel's height."""
    out: list[str] = []
    for line in text.split("\n"):
        parts = line.replace(".", ".\x00").replace("_", "_\x00").split("\x00")
        current = ""
        for part in parts:
            if current and len(current) + len(part) > width:
                out.append(current)
                current = ""
            current += part
        out.append(current)
    return "\n".join(out)


def segmentation_overlay(images: Sequence[np.ndarray], predicted: np.ndarray, truth: np.ndarray | None,
                         concepts: Sequence[str], *, max_images: int = 6, title: str | None = None):
    """Images, desaturated, with each concept's true mask (solid outline, :data:`TRUE_COLOUR`) and predicted
    mask (dashed outline, :data:`PREDICTED_COLOUR`); a legend above the panels names the two.

    Parameters
    ----------
    images : RGB arrays ``H x W x 3`` (any size; masks are stretched over the image frame).
    predicted : ``n x K x gh x gw`` binary (or probability) maps on the evaluation grid.
    truth : the same shape, or None. concepts : K names (one row of panels per concept).
    title : a line above the legend.
    """
    from matplotlib.lines import Line2D

    n = min(len(images), max_images)
    k = len(concepts)
    fig, axes = plt.subplots(k, n, figsize=(2.2 * n + 0.6, 2.2 * k + 0.5), squeeze=False)
    for j, name in enumerate(concepts):
        for i in range(n):
            ax, img = axes[j][i], np.asarray(images[i])
            h, w = img.shape[:2]
            ax.set(xlim=(0, w), ylim=(h, 0))
            ax.set_autoscale_on(False)  # the frame is the image's: no autoscaling after every outline
            ax.imshow(desaturate(img), extent=(0, w, h, 0), vmin=0, vmax=1)
            if truth is not None and truth[i, j].any():
                _outline(ax, truth[i, j], w, h, TRUE_COLOUR, "solid")
            if (np.asarray(predicted[i, j]) >= 0.5).any():
                _outline(ax, np.asarray(predicted[i, j]) >= 0.5, w, h, PREDICTED_COLOUR, "dashed")
            ax.set(xlim=(0, w), ylim=(h, 0), xticks=[], yticks=[])
            if i == 0:
                ax.set_ylabel(wrap_label(name), fontsize=9)
    handles = [Line2D([], [], color=TRUE_COLOUR, lw=1.6, label="true mask"),
               Line2D([], [], color=PREDICTED_COLOUR, lw=1.6, ls="--", label="predicted mask")]
    top = 0.45 + (0.3 if title else 0.0)  # inches above the panels: the title, then the legend
    fig.set_figheight(fig.get_figheight() + (0.3 if title else 0.0))
    fig.tight_layout(rect=(0, 0, 1, 1 - top / fig.get_figheight()))
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.05 / fig.get_figheight(), va="top")
    fig.legend(handles=handles, loc="upper center", ncol=2, fontsize=10, frameon=False,
               bbox_to_anchor=(0.5, 1 - (0.3 if title else 0.0) / fig.get_figheight()))
    return fig
