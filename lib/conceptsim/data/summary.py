"""Dataset summary: a CSV of split sizes and per-concept statistics, and a figure of example masks.

CSV columns (one row per concept and split, ``split = "all"`` included):

``concept``, ``category``, ``split``, ``images_in_split`` (images of the split), ``images_with_concept``
(images whose concept mask covers at least ``min_area`` of the image), ``mean_mask_area`` (mean fraction
of the image covered by the mask, over those images; empty when there are none), ``excluded`` (empty, or
why the reader excluded the concept).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from conceptsim.atomic import atomic_path, save_figure, write_text
from conceptsim.data.coco import SPLITS, ConceptDataset, DatasetSource

COLUMNS = ("concept", "category", "split", "images_in_split", "images_with_concept", "mean_mask_area", "excluded")


def _as_dataset(dataset_or_source, **dataset_kwargs) -> ConceptDataset:
    if isinstance(dataset_or_source, ConceptDataset):
        return dataset_or_source
    return ConceptDataset(dataset_or_source, split=None, **dataset_kwargs)


def summary_rows(ds: ConceptDataset) -> list[dict]:
    """The summary table as a list of row dicts (see the module docstring for the columns)."""
    by_split = {s: [i for i in ds.image_ids if ds.split_of(i) == s] for s in SPLITS}
    by_split["all"] = list(ds.image_ids)
    rows = []
    for k, c in enumerate(ds.concepts):
        for split, ids in by_split.items():
            fr = np.array([ds.area_fractions(i)[k] for i in ids]) if ids else np.zeros(0)
            pos = fr >= ds.min_area
            rows.append(
                {
                    "concept": c.name, "category": c.category, "split": split, "images_in_split": len(ids),
                    "images_with_concept": int(pos.sum()),
                    "mean_mask_area": f"{fr[pos].mean():.6f}" if pos.any() else "", "excluded": "",
                }
            )
    for ex in ds.excluded_concepts:
        rows.append({**{col: "" for col in COLUMNS}, "concept": ex["concept"], "split": ex["split"], "excluded": ex["reason"]})
    return rows


def write_summary(
    dataset_or_source: ConceptDataset | DatasetSource | str | os.PathLike,
    out_csv: str | os.PathLike,
    figure_path: str | os.PathLike | None = None,
    *,
    examples: int = 3,
    max_concepts: int = 16,
    **dataset_kwargs,
) -> list[dict]:
    """Write the summary CSV (and, if asked, the example figure); returns the rows.

    Parameters
    ----------
    dataset_or_source : a :class:`ConceptDataset` (summarised as is), or a source / annotation file
        (read with ``split=None`` and ``dataset_kwargs``).
    out_csv : CSV path, written atomically.
    figure_path : image path (format from its suffix) for a grid of ``examples`` images per concept
        with the concept mask overlaid; at most ``max_concepts`` rows.
    """
    ds = _as_dataset(dataset_or_source, **dataset_kwargs)
    rows = summary_rows(ds)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text(out_csv, buf.getvalue())
    if figure_path is not None:
        write_example_figure(ds, figure_path, examples=examples, max_concepts=max_concepts)
    return rows


def example_images(ds: ConceptDataset, k: int, count: int) -> list[int]:
    """``count`` image ids containing concept ``k``, evenly spread over the sorted positive ids."""
    pos = [i for i in ds.image_ids if ds.labels_of(i)[k]]
    if len(pos) <= count:
        return pos
    return [pos[j] for j in np.linspace(0, len(pos) - 1, count).round().astype(int)]


def write_example_figure(ds: ConceptDataset, figure_path: str | os.PathLike, examples: int = 3, max_concepts: int = 16) -> Path:
    """A grid: one row per concept, ``examples`` images with the concept's mask tinted and outlined."""
    # a figure outside pyplot: drawing it neither switches the caller's backend (a notebook's inline one)
    # nor leaves a figure for the caller's next plt.show()
    from matplotlib.figure import Figure

    figure_path = Path(figure_path)
    concepts = ds.concepts[:max_concepts]
    fig = Figure(figsize=(2.0 * examples, 2.0 * len(concepts)))
    axes = fig.subplots(len(concepts), examples, squeeze=False)
    for k, c in enumerate(concepts):
        ids = example_images(ds, k, examples)
        for j in range(examples):
            ax = axes[k, j]
            ax.set_axis_off()
            if j >= len(ids):
                continue
            image = ds.read_image(ids[j]).astype(np.float64) / 255.0
            mask = ds.masks(ids[j])[k].astype(bool)
            # dim what is outside the mask, so the concept region reads at a glance whatever its colour
            shown = np.where(mask[..., None], image, 0.25 * image)
            ax.imshow(shown)
            ax.contour(mask, levels=[0.5], colors=["#ff00ff"], linewidths=0.8)
            if j == 0:
                ax.set_title(f"{c.name} ({c.category})", fontsize=8, loc="left")
    fig.tight_layout()
    fmt = figure_path.suffix.lstrip(".") or "png"
    if fmt == "png":
        return save_figure(fig, figure_path, dpi=100)
    with atomic_path(figure_path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=100)
    return figure_path
