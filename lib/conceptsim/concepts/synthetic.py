"""Synthetic activation stores with *planted* concepts, for tests and benchmarks.

Each concept ``k`` has a true unit direction ``d_k`` (the directions are orthonormal). An image's concept
masks are rectangles aligned with activation-grid cells (drawn on the evaluation grid, ``eval_scale``
times finer), its soft targets are the masks area-pooled onto the activation grid, and its activations
are ``amplitude * sum_k target_k(p) d_k + noise``. A linear probe can therefore recover every mask, and
the best probe direction is ``d_k``. Layers after the first (``noise_layers``) carry noise only: no
concept is represented there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from conceptsim.data.geometry import area_pool
from conceptsim.extraction.store import LayerInfo, StoreWriter


def planted_masks(rng: np.random.Generator, n: int, k: int, grid, scale: int, p_present: float = 0.6) -> np.ndarray:
    """``n x k x (grid*scale)`` uint8 masks: per present concept, one cell-aligned rectangle."""
    gh, gw = grid
    masks = np.zeros((n, k, gh * scale, gw * scale), np.uint8)
    for i in range(n):
        for j in range(k):
            if rng.random() < p_present:
                h, w = rng.integers(2, gh // 2 + 1), rng.integers(2, gw // 2 + 1)
                t, l = rng.integers(0, gh - h + 1), rng.integers(0, gw - w + 1)
                masks[i, j, t * scale : (t + h) * scale, l * scale : (l + w) * scale] = 1
    return masks


def planted_store(
    path: str | Path, *, n_split: Sequence[int] = (60, 20, 20), channels: int = 16, grid=(8, 8), k: int = 3,
    eval_scale: int = 2, amplitude: float = 3.0, noise: float = 1.0, noise_layers: int = 0, seed: int = 0,
    absent_in_test: Sequence[int] = (), constant_channels: int = 0,
) -> tuple[Path, np.ndarray]:
    """Write a planted store; returns its path and the true directions ``k x channels``.

    Parameters
    ----------
    n_split : images in train, val, test. absent_in_test : concepts whose test masks are emptied.
    constant_channels : the last channels are set to a constant (zero-variance rule check).
    """
    rng = np.random.default_rng(seed)
    n = int(sum(n_split))
    splits = sum(([s] * m for s, m in zip(("train", "val", "test"), n_split)), [])
    directions = np.linalg.qr(rng.standard_normal((channels, k)))[0].T  # k x C, orthonormal rows
    masks = planted_masks(rng, n, k, grid, eval_scale)
    test = np.array(splits) == "test"
    for j in absent_in_test:
        masks[test, j] = 0
    targets = area_pool(torch.from_numpy(masks), grid).numpy()
    acts = amplitude * np.einsum("nkhw,kc->nchw", targets, directions) + noise * rng.standard_normal((n, channels, *grid))
    if constant_channels:
        acts[:, -constant_channels:] = 0.25
    layers = [LayerInfo(f"layer{i}", "Conv2d", channels, tuple(grid), tuple(grid), i + 1, (i + 1) / (1 + noise_layers),
                        (i + 1) / (1 + noise_layers)) for i in range(1 + noise_layers)]
    concepts = [{"name": f"c{j}", "category": "object" if j % 2 == 0 else "part"} for j in range(k)]
    size = (grid[0] * 4, grid[1] * 4)
    w = StoreWriter(Path(path), n_images=n, layers=layers, concepts=concepts, eval_grid=masks.shape[2:],
                    metadata={"model": "planted", "dataset": "synthetic", "study": "test", "key": f"planted-{seed}",
                              "preprocessing": {"size": list(size), "resize": "stretch"}, "min_area": 0.005})
    area = masks.reshape(n, k, -1).mean(2)
    layer_acts = {layers[0].name: acts.astype(np.float16)}
    for info in layers[1:]:
        layer_acts[info.name] = (noise * rng.standard_normal(acts.shape)).astype(np.float16)
    w.write_batch(image_ids=np.arange(n), splits=splits, labels=(area >= 0.005).astype(np.uint8),
                  content_boxes=np.tile([0, 0, size[0], size[1]], (n, 1)), masks=masks, activations=layer_acts,
                  targets={info.name: targets.astype(np.float16) for info in layers})
    w.finish()
    return Path(path), directions
