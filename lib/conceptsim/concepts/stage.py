"""The concept stage: from an activation store to concept vectors, their quality, controls and units.

:func:`run_concept_stage` writes into ``out_dir`` (``results/<study>/<dataset>/<model>/``), each file
atomically:

``concept_quality.csv`` -- one row per (layer, concept, method, metric)
    model, layer, relative_depth, probe_rank, concept, category, method (``seg`` | ``cls``),
    metric (``set_iou`` for seg; ``ap`` and ``balanced_accuracy`` for cls), value (test), ci_low,
    ci_high (95 % bootstrap over test images), control_value (shuffled-label probe on test),
    diff_ci_low, diff_ci_high (paired bootstrap interval of value - control), random_init_value (the
    random-init twin's value, joined from ``random_init_quality``; NaN without it), represented
    (diff_ci_low > 0), n_test, n_test_positive (test images where the concept is present), excluded
    (empty, or the reason the concept was not trained; its numbers are then NaN), loss, seed.
``vectors/seg_<layer>.npz``, ``vectors/cls_<layer>.npz`` -- see :mod:`conceptsim.concepts.vectors`.
``dissection.csv`` -- one row per (layer, unit): model, layer, relative_depth, probe_rank, unit,
    threshold, threshold_error, concept (best by test IoU), category, iou, is_detector (iou > 0.04).
``dissection_summary.csv`` -- per layer: n_units, detector_units, unique_concepts.
``dissection_best_unit.csv`` -- per (layer, concept): the unit with the best val IoU, its val_iou, its
    test iou, is_detector, and net2vec_iou (the Net2Vec vector's test set IoU, for the comparison).
``concept_stage.json`` -- parameters, store key, per-layer timings and memory modes, constant-channel
    counts, excluded concepts with reasons and counts.

Exclusions (reported, counted, never silent): a concept is not trained for a method when it has no
positive pixels (seg) or lacks positives or negatives among the image labels (cls) in train, val or test.
Geometry that disagrees between activations, targets, masks and boxes raises :class:`GeometryError`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from conceptsim.atomic import atomic_path, write_json
from conceptsim.concepts import controls, dissection as dis
from conceptsim.concepts.layerdata import SplitData, Standardiser
from conceptsim.concepts.net2vec import LOSSES, EvalSet, split_counts, train_segmentation_probes
from conceptsim.concepts.tcav import train_classification_probes
from conceptsim.concepts.vectors import save_npz, vector_path
from conceptsim.extraction.store import ActivationStore, LayerInfo, read_rows

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
METHODS = ("seg", "cls")


class GeometryError(ValueError):
    """Activations, targets, masks or boxes of a store disagree in shape."""


@dataclass
class Inputs:
    """Everything the per-layer work shares: store, selection, rows, masks and labels per split."""

    store: ActivationStore
    cidx: np.ndarray
    names: list[str]
    categories: list[str]
    rows: dict
    eval_sets: dict  # split -> EvalSet (val, test)
    labels: dict  # split -> n x K uint8
    include: dict  # method -> bool K
    boot: np.ndarray


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise GeometryError(msg)


def check_store_geometry(store: ActivationStore) -> None:
    """Raise :class:`GeometryError` when the store's image-level arrays disagree."""
    n, k = len(store.image_ids), len(store.concepts)
    _check(store.labels.shape == (n, k), f"labels {store.labels.shape} != (images {n}, concepts {k})")
    _check(store.content_boxes.shape == (n, 4), f"content_box {store.content_boxes.shape} != ({n}, 4)")
    want = (n, k, *store.eval_grid)
    _check(tuple(store.masks.shape) == want, f"masks {tuple(store.masks.shape)} != {want} (images, concepts, eval grid)")


def check_layer_geometry(store: ActivationStore, info: LayerInfo) -> None:
    """Raise :class:`GeometryError` when a layer's activations or targets disagree with the store."""
    n, k = len(store.image_ids), len(store.concepts)
    act, tgt = store.activations(info.name), store.targets(info.name)
    want = (n, info.channels, *info.grid)
    _check(tuple(act.shape) == want, f"layer {info.name}: activations {tuple(act.shape)} != recorded {want}")
    want = (n, k, *info.grid)
    _check(tuple(tgt.shape) == want, f"layer {info.name}: targets {tuple(tgt.shape)} != {want} "
           "(targets must be on the activation grid)")


def read_selected(array, rows: np.ndarray, cidx: np.ndarray) -> np.ndarray:
    """Rows of a ``N x K x ...`` store array, restricted to the selected concept columns."""
    parts = [block[:, cidx] for _, block in read_rows(array, rows, batch=64)]
    return np.concatenate(parts) if parts else np.zeros((0, len(cidx), *array.shape[2:]), array.dtype)


def mask_areas(array, rows: np.ndarray, cidx: np.ndarray) -> np.ndarray:
    """Foreground pixel count ``n x K`` of the selected masks, streamed."""
    parts = [block[:, cidx].reshape(len(block), len(cidx), -1).sum(2, dtype=np.int64)
             for _, block in read_rows(array, rows, batch=64)]
    return np.concatenate(parts) if parts else np.zeros((0, len(cidx)), np.int64)


def exclusions(areas: dict, labels: dict, names: Sequence[str]) -> tuple[dict, dict]:
    """Per method, a bool ``K`` include mask and ``{concept: reason}`` for the excluded ones."""
    include, reasons = {}, {}
    for method in METHODS:
        ok, why = np.ones(len(names), bool), {}
        for split in SPLITS:
            pos = (areas[split] > 0).sum(0) if method == "seg" else labels[split].sum(0)
            neg = None if method == "seg" else len(labels[split]) - pos
            for j, name in enumerate(names):
                if not ok[j]:
                    continue
                if pos[j] == 0:
                    ok[j], why[name] = False, f"no positive {'pixels' if method == 'seg' else 'image'} in {split}"
                elif neg is not None and neg[j] == 0:
                    ok[j], why[name] = False, f"no negative image in {split}"
        include[method], reasons[method] = ok, why
    return include, reasons


def prepare(store: ActivationStore, concepts, bootstrap: int, seed: int) -> tuple[Inputs, dict]:
    """Select concepts, read masks and labels, decide exclusions; returns inputs and a report dict."""
    check_store_geometry(store)
    names_all = store.concept_names
    wanted = names_all if concepts is None else list(concepts)
    unknown = [c for c in wanted if c not in names_all]
    if unknown:
        raise ValueError(f"concepts {unknown} are not in the store; it has {names_all}")
    cidx = np.array([names_all.index(c) for c in wanted], dtype=np.int64)
    rows = {s: store.split_index(s) for s in SPLITS}
    empty = [s for s in SPLITS if len(rows[s]) == 0]
    if empty:
        raise ValueError(f"store {store.path} has no images in split(s) {empty}")
    labels = {s: store.labels[rows[s]][:, cidx] for s in SPLITS}
    areas = {s: mask_areas(store.masks, rows[s], cidx) for s in SPLITS}
    boxes = torch.from_numpy(store.content_boxes.astype(np.float32))
    eval_sets = {s: EvalSet(torch.from_numpy(read_selected(store.masks, rows[s], cidx)).bool(),
                            boxes[rows[s]], store.input_size) for s in ("val", "test")}
    include, reasons = exclusions(areas, labels, wanted)
    cats = {c["name"]: c.get("category", "") for c in store.concepts}
    inputs = Inputs(store, cidx, wanted, [cats[c] for c in wanted], rows, eval_sets, labels, include,
                    controls.bootstrap_indices(len(rows["test"]), bootstrap, seed))
    report = {
        "excluded": reasons,
        "n_excluded": {m: len(r) for m, r in reasons.items()},
        "positives": {s: {"images_with_pixels": dict(zip(wanted, (areas[s] > 0).sum(0).tolist())),
                          "images_labelled": dict(zip(wanted, labels[s].sum(0).tolist()))} for s in SPLITS},
        "n_images": {s: int(len(rows[s])) for s in SPLITS},
    }
    return inputs, report


def quality_rows(inp: Inputs, info: LayerInfo, method: str, metric: str, intervals, n_pos) -> list[dict]:
    """Rows of concept_quality.csv for one layer, method and metric (excluded concepts get NaN rows)."""
    rows, it = [], iter(intervals)
    nan = controls.Interval(*([np.nan] * 6))
    reasons = inp.report["excluded"][method] if hasattr(inp, "report") else {}
    for j, name in enumerate(inp.names):
        iv = next(it) if inp.include[method][j] else nan
        rows.append({
            "model": inp.store.model, "layer": info.name, "relative_depth": info.relative_depth,
            "probe_rank": info.probe_rank, "concept": name, "category": inp.categories[j], "method": method,
            "metric": metric, "value": iv.value, "ci_low": iv.ci_low, "ci_high": iv.ci_high,
            "control_value": iv.control_value, "diff_ci_low": iv.diff_low, "diff_ci_high": iv.diff_high,
            "random_init_value": np.nan, "represented": iv.represented, "n_test": len(inp.rows["test"]),
            "n_test_positive": int(n_pos[j]), "excluded": reasons.get(name, ""),
        })
    return rows
