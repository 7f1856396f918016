"""Figures for the extraction notebook: the layer table, detections on real photos, activation maps."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from conceptsim.atomic import atomic_path, figure_png, library_hash, sha256_json
from conceptsim.extraction.store import ActivationStore
from conceptsim.paths import cache_dir


def layer_table(store: ActivationStore) -> pd.DataFrame:
    """One row per probed layer: module type, output shape, stored grid, conv position, relative depth."""
    return pd.DataFrame(
        [
            {
                "layer": layer.name,
                "module": layer.module_type,
                "channels": layer.channels,
                "output grid": f"{layer.native_grid[0]} x {layer.native_grid[1]}",
                "stored grid": f"{layer.grid[0]} x {layer.grid[1]}",
                "conv position": layer.conv_position,
                "relative depth": round(layer.relative_depth, 3),
            }
            for layer in store.layers
        ]
    )


def bundled_photos() -> dict[str, np.ndarray]:
    """Real photographs that ship inside installed packages (uint8 RGB)."""
    from skimage import data

    return {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea()}


def plot_detections(loaded, photos: dict[str, np.ndarray], score_threshold: float = 0.3):
    """Run a registry detector on photos and draw its boxes (normalised or pixel xyxy both handled)."""
    import matplotlib.pyplot as plt

    if loaded.spec.detect is None:
        raise ValueError(f"{loaded.name} is not a detector")
    prep = loaded.preprocessing
    x = torch.stack([prep.apply_image(img) for img in photos.values()])
    with torch.no_grad():
        dets = loaded.spec.detect(loaded.module, x.to(next(loaded.module.parameters()).device),
                                  score_threshold=score_threshold)
    fig, axes = plt.subplots(1, len(photos), figsize=(4 * len(photos), 4), squeeze=False)
    for ax, (name, img), det in zip(axes[0], photos.items(), dets):
        ax.imshow(img)
        h, w = img.shape[:2]
        boxes = det["boxes"].detach().cpu().numpy().reshape(-1, 4)
        if boxes.size and boxes.max() <= 1.5:  # normalised coordinates
            boxes = boxes * np.array([w, h, w, h])
        elif boxes.size:  # input-frame pixels -> image pixels
            H, W = prep.size
            boxes = boxes * np.array([w / W, h / H, w / W, h / H])
        for (x0, y0, x1, y1), lab, sc in zip(boxes, det["labels"].tolist(), det["scores"].tolist()):
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="yellow", lw=2))
            name_ = loaded.spec.label_name(lab) if loaded.spec.label_name else str(lab)
            ax.text(x0, y0, f"{name_} {sc:.2f}", color="black", backgroundcolor="yellow", fontsize=8)
        ax.set_title(f"{name}: {len(boxes)} detections")
        ax.axis("off")
    fig.tight_layout()
    return fig


def detections_png(loaded, photos: dict[str, np.ndarray], score_threshold: float = 0.3,
                   cache: str | Path | None = None) -> bytes:
    """:func:`plot_detections`' figure as the notebooks show it (the PNG of :func:`conceptsim.atomic.figure_png` at
    the figure's dpi, tight bounding box), cached in ``<cache>/figures`` across runs.

    The figure depends on the model and the photos only, not on the dataset, so the extraction runs of one model
    on several datasets draw it once. The cache key holds the model's name and weights identity, the photos'
    bytes, the threshold and the source of the whole library and the versions of torch and matplotlib: any
    change draws it again.
    """
    import matplotlib
    import matplotlib.pyplot as plt

    photo_hash = hashlib.sha256()
    for name, img in photos.items():
        photo_hash.update(name.encode() + np.ascontiguousarray(img).tobytes())
    key = sha256_json([loaded.name, loaded.weights_sha256, photo_hash.hexdigest(), float(score_threshold),
                       library_hash(), torch.__version__, matplotlib.__version__])
    path = Path(cache if cache is not None else cache_dir() / "figures") / f"detections-{key[:32]}.png"
    if path.exists():
        return path.read_bytes()
    fig = plot_detections(loaded, photos, score_threshold)
    try:
        png = figure_png(fig, dpi=fig.dpi, bbox_inches="tight")
    finally:
        plt.close(fig)  # shown as these bytes, not again by the inline backend
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(png)
    return png


def plot_activation_maps(store: ActivationStore, row: int = 0, layers: Sequence[str] | None = None, image=None):
    """The channel-mean activation map of each probed layer for one stored image."""
    import matplotlib.pyplot as plt

    layers = list(layers or store.layer_names)
    n = len(layers) + (image is not None)
    cols = min(n, 5)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    flat = list(axes.flat)
    if image is not None:
        flat[0].imshow(image)
        flat[0].set_title(f"image {int(store.image_ids[row])}")
        flat = flat[1:]
    for ax, name in zip(flat, layers):
        a = np.asarray(store.activations(name)[row], dtype=np.float32)
        ax.imshow(a.mean(0), cmap="magma")
        ax.set_title(f"{name}\ndepth {store.layer(name).relative_depth:.2f}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig
