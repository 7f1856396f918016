"""Synthetic studies with planted concepts: known answers for the tests and a benchmark of realistic size.

Every model layer carries, for each concept k, one channel equal to ``signal * (concept mask pooled onto
the layer grid) + noise`` (plus pure-noise channels), and its concept vectors read exactly that channel
(segmentation: weight ``gain`` on the channel with bias ``-gain/2``; classification: the GAP of the
channel minus its mean). ``signal(model, layer_index, relative_depth, concept_index)`` therefore decides how
well each layer represents each concept, and the layer's ``concept_quality.csv`` marks the concept
represented when the signal is at least ``0.5`` (its interval is the signal +- 0.05, so a trained layer
"beats its twin" when their signals differ by more than 0.1).

Known answers for agreement beyond accuracy: the noise of each model is independent, so two layers on the
evaluation grid's own resolution err independently given the truth (``seg_kappa`` about 0 however strong
the signal); ``shared(model, layer_index, relative_depth, concept_index)`` adds that weight times a
noise field common to all models (one per layer grid; a planted shared error: ``seg_kappa`` > 0 between
layers that share it).
Coarser layer grids share the errors their resolution makes (what the resolution-only oracle measures).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from conceptsim.atomic import atomic_path
from conceptsim.concepts.vectors import save_npz, vector_path
from conceptsim.data.geometry import area_pool
from conceptsim.extraction.store import LayerInfo, StoreWriter
from conceptsim.models.names import twin_name
from conceptsim.paths import activation_store, concept_quality_csv, model_dir_name, vectors_dir

Signal = Callable[[str, int, float, int], float]


def blob_masks(rng: np.random.Generator, n: int, k: int, grid: Sequence[int]) -> np.ndarray:
    """``n x k x gh x gw`` binary masks: one random axis-aligned ellipse per image and concept (or none)."""
    gh, gw = (int(g) for g in grid)
    yy, xx = np.mgrid[0:gh, 0:gw]
    out = np.zeros((n, k, gh, gw), dtype=np.uint8)
    for i in range(n):
        for j in range(k):
            if rng.random() < 0.2:
                continue
            cy, cx = rng.uniform(0, gh), rng.uniform(0, gw)
            ry, rx = rng.uniform(0.1, 0.4) * gh, rng.uniform(0.1, 0.4) * gw
            out[i, j] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    return out


def build_synthetic_study(
    root: str | Path,
    models: dict[str, Sequence[tuple[str, float, int, int]]],
    *,
    n_images: int = 40,
    test_fraction: float = 0.5,
    val_fraction: float = 0.25,
    concepts: Sequence[tuple[str, str]] = (("sky", "scene"), ("dog", "object"), ("red", "colour")),
    eval_grid: Sequence[int] = (16, 16),
    input_size: Sequence[int] = (32, 32),
    signal: Signal | None = None,
    shared: Signal | None = None,
    noise: float = 0.3,
    extra_channels: int = 2,
    seed: int = 0,
    image_ids: np.ndarray | None = None,
) -> Path:
    """Write stores, concept vectors and quality tables of a synthetic dataset under ``root``.

    Parameters
    ----------
    root : the dataset directory (``results/<study>/<dataset>``).
    models : model name -> list of ``(layer name, relative depth, grid side, channels)``; channels must be
        at least the number of concepts.
    signal : strength of concept k in a layer (default: 1 everywhere).
    shared : weight of the noise field common to all models in concept k's channel (default: 0).
    noise : standard deviation of the activation noise (independent per model).
    test_fraction, val_fraction : shares of the images in the test and val splits (the rest is train).
    image_ids : override the image ids (to build deliberately mismatched stores).

    Returns
    -------
    ``root``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    k = len(concepts)
    masks = blob_masks(rng, n_images, k, eval_grid)
    n_test = int(round(n_images * test_fraction))
    n_val = int(round(n_images * val_fraction))
    n_train = n_images - n_test - n_val
    if n_train < 0:
        raise ValueError(f"test_fraction {test_fraction} + val_fraction {val_fraction} exceed 1")
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    ids = np.arange(n_images) if image_ids is None else np.asarray(image_ids)
    labels = (masks.reshape(n_images, k, -1).mean(axis=2) >= 0.005).astype(np.uint8)
    boxes = np.tile(np.array([0, 0, *input_size], dtype=np.float32), (n_images, 1))
    signal = signal or (lambda m, i, d, c: 1.0)
    shared = shared or (lambda m, i, d, c: 0.0)
    concept_list = [{"name": n, "category": c} for n, c in concepts]
    for model, layers in models.items():
        mdir = root / model_dir_name(model)
        vectors_dir(mdir).mkdir(parents=True, exist_ok=True)
        infos = [
            LayerInfo(name, "Conv2d", ch, (g, g), (g, g), i + 1, depth, (i + 1) / len(layers))
            for i, (name, depth, g, ch) in enumerate(layers)
        ]
        mrng = np.random.default_rng([seed, sum(map(ord, model))])
        acts, targets, rows = {}, {}, []
        for li, info in enumerate(infos):
            pooled = area_pool(torch.from_numpy(masks).float(), info.grid).numpy()  # n x k x g x g
            # the shared noise field: one per layer grid, the same for every model (unit variance per cell)
            common_pooled = np.random.default_rng([seed, 7, *info.grid]).standard_normal(
                (n_images, k, *info.grid), dtype=np.float32)
            a = noise * mrng.standard_normal((n_images, info.channels, *info.grid), dtype=np.float32)
            for c in range(k):
                s = signal(model, li, info.relative_depth, c)
                a[:, c] += s * pooled[:, c] + shared(model, li, info.relative_depth, c) * common_pooled[:, c]
                rows.append((model, info.name, info.relative_depth, concepts[c][0], concepts[c][1], s))
            acts[info.name] = a.astype(np.float16)
            targets[info.name] = pooled.astype(np.float16)
            gain = 8.0
            w = np.zeros((k, info.channels))
            w[np.arange(k), np.arange(k)] = gain
            std = np.ones(info.channels)
            mean = np.zeros(info.channels)
            val_quality = np.array([signal(model, li, info.relative_depth, c) for c in range(k)], dtype=np.float64)
            save_npz(vector_path(vectors_dir(mdir), "seg", info.name), weight=w, bias=np.full(k, -gain / 2), mean=mean,
                     std=std, concepts=np.array([c[0] for c in concepts]), val_iou=val_quality)
            gap = a.mean(axis=(2, 3))
            gap_mean = gap[: n_train or n_images].mean(axis=0)
            save_npz(vector_path(vectors_dir(mdir), "cls", info.name), coef=w / gain, intercept=-gap_mean[:k], mean=mean,
                     std=std, concepts=np.array([c[0] for c in concepts]), val_ap=val_quality)
        store_path = activation_store(mdir)
        with atomic_path(store_path) as tmp:
            writer = StoreWriter(
                tmp, n_images=n_images, layers=infos, concepts=concept_list, eval_grid=eval_grid,
                metadata={"model": model, "dataset": root.name, "study": "synthetic", "seed": seed,
                          "preprocessing": {"size": list(input_size), "resize": "stretch"}, "key": "synthetic"},
                images_per_chunk=16,
            )
            writer.write_batch(image_ids=ids, splits=splits, labels=labels, content_boxes=boxes, masks=masks,
                               activations=acts, targets=targets)
            writer.finish()
        quality = []
        for m, layer, depth, c, cat, s in rows:
            for method, metric in (("seg", "set_iou"), ("cls", "ap")):
                quality.append(
                    {"model": m, "layer": layer, "relative_depth": depth, "concept": c, "category": cat,
                     "method": method, "metric": metric, "value": s, "ci_low": s - 0.05, "ci_high": s + 0.05,
                     "control_value": 0.0,
                     "random_init_value": np.nan, "represented": bool(s >= 0.5), "n_test": n_test}
                )
        with atomic_path(concept_quality_csv(mdir)) as tmp:
            pd.DataFrame(quality).to_csv(tmp, index=False)
    return root


def default_size_models(n_models: int = 3, n_layers: int = 12, channels: int = 64, random_twins: bool = True) -> dict:
    """Layer lists shaped like the default study: grids 56 -> 7 over depth, twins named ``NAME:random``."""
    models = {}
    for m in range(n_models):
        layers = []
        for i in range(n_layers):
            g = (56, 28, 28, 14, 14, 14, 7, 7, 7, 7, 7, 7)[min(i, 11)] if n_layers <= 12 else max(7, 56 >> (4 * i // n_layers))
            layers.append((f"block{i}", (i + 1) / n_layers, g, channels + 32 * (i // 4)))
        models[f"net{m}"] = layers
        if random_twins:
            models[twin_name(f"net{m}")] = layers
    return models
