"""Inputs for, and packing of, the tfjs reference run of the CenterNet-MobileNetV3 graph.

Two steps around ``make_reference.js`` (see README.md):

``python reference_io.py inputs WORKDIR``
    Writes the test photos as raw RGB 512 x 512 files (``WORKDIR/<name>.rgb``) plus ``inputs.json``.
    Each photo (scikit-image's bundled samples) is resized to 256 x 256 and then *nearest-neighbour*
    doubled to 512 x 512, so the committed reference only needs the 256 x 256 uint8 image and the test
    rebuilds the exact 512 x 512 input with ``np.repeat`` (no resize library in the loop).

``python reference_io.py pack WORKDIR NPZ``
    Reads what ``make_reference.js`` wrote (``WORKDIR/ref.json`` + raw float32 NHWC arrays) and stores
    a small subset in ``NPZ``: per compared node a sub-grid of positions (every channel, the first
    two and last two rows/columns always included, since SAME padding errors show at the borders) and
    per-channel mean and max over the whole map; the graph's own ``tower_0/detections``; and the
    detections after human's non-max suppression.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

PHOTOS = ("astronaut", "chelsea", "coffee")
HALF = 256  # committed input size; the model input is this doubled
SAMPLE_CAP = 4096  # elements per node and image in the sub-grid


def make_inputs(workdir: Path) -> None:
    """Write the raw 512 x 512 RGB inputs and their list."""
    import skimage.data
    import torch
    import torch.nn.functional as F

    workdir.mkdir(parents=True, exist_ok=True)
    names = []
    for name in PHOTOS:
        img = getattr(skimage.data, name)()
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()[None]
        x = F.interpolate(x, size=(HALF, HALF), mode="bilinear", align_corners=False, antialias=True)
        half = x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
        np.save(workdir / f"{name}_256.npy", half)
        full = double(half)
        (workdir / f"{name}.rgb").write_bytes(full.tobytes())
        names.append(name)
    (workdir / "inputs.json").write_text(
        json.dumps({"names": names, "height": 2 * HALF, "width": 2 * HALF, "nodes": compared_nodes()}, indent=1)
    )


def compared_nodes() -> list[str]:
    """TF names of the compared nodes: the default probed layers, the resizes, and the two heads."""
    from conceptsim.models.centernet_mobilenet_v3 import DEFAULT_LAYERS

    extra = [
        "CenternetHead.c5_upsample.up_sampling2d.ResizeBilinear",
        "CenternetHead.c3_upsample.up_sampling2d_2.ResizeBilinear",
        "MobilenetV3.expanded_conv_3.depthwise.depthwise",  # 5x5 stride-2 depthwise (asymmetric pad)
    ]
    paths = list(DEFAULT_LAYERS) + [e for e in extra if e not in DEFAULT_LAYERS]
    return ["tower_0/" + p.replace(".", "/") for p in paths] + ["tower_0/keypoints", "tower_0/wh"]


def double(half: np.ndarray) -> np.ndarray:
    """Nearest-neighbour x2 upsampling of an H x W x 3 uint8 image (exact, library independent)."""
    return np.repeat(np.repeat(half, 2, axis=0), 2, axis=1)


def grid(n: int, cap_side: int) -> np.ndarray:
    """Sorted sample positions along an axis of length ``n``: an even grid plus both borders."""
    g = np.round(np.linspace(0, n - 1, max(min(cap_side, n), 2))).astype(int)
    edges = np.array([0, 1, n - 2, n - 1]) if n >= 4 else np.arange(n)
    return np.unique(np.concatenate([g, edges])).astype(np.int16)


def pack(workdir: Path, npz: Path) -> None:
    """Store the compared subset of the tfjs outputs in ``npz``."""
    ref = json.loads((workdir / "ref.json").read_text())
    names = ref["images"]
    out: dict[str, np.ndarray] = {
        "image_names": np.array(names),
        "images_256": np.stack([np.load(workdir / f"{n}_256.npy") for n in names]),
        "node_names": np.array(ref["nodes"]),
        "tfjs_version": np.array(ref["tfjs_version"]),
        "score_threshold": np.array(ref["score_threshold"], dtype=np.float32),
        "iou_threshold": np.array(ref["iou_threshold"], dtype=np.float32),
    }
    for j, node in enumerate(ref["nodes"]):
        shape = ref["shapes"][node]  # NHWC with N = 1
        _, h, w, c = shape
        side = max(int(np.sqrt(SAMPLE_CAP / c)), 2)
        ys, xs = grid(h, side), grid(w, side)
        samples, means, maxes = [], [], []
        for i in range(len(names)):
            a = np.fromfile(workdir / f"{i}_{j}.f32", dtype=np.float32).reshape(h, w, c)
            samples.append(a[ys][:, xs])
            means.append(a.astype(np.float64).mean(axis=(0, 1)))
            maxes.append(a.max(axis=(0, 1)))
        out[f"node{j}_ys"], out[f"node{j}_xs"] = ys, xs
        out[f"node{j}_sample"] = np.stack(samples).astype(np.float32)
        out[f"node{j}_chmean"] = np.stack(means)
        out[f"node{j}_chmax"] = np.stack(maxes).astype(np.float32)
    out["detections"] = np.stack(
        [np.fromfile(workdir / f"{i}_detections.f32", dtype=np.float32).reshape(100, 6) for i in range(len(names))]
    )
    # NMS-selected rows of `detections`, padded with -1 (the count varies per image).
    sel = np.full((len(names), 100), -1, dtype=np.int32)
    for i, idx in enumerate(ref["nms"]):
        sel[i, : len(idx)] = idx
    out["nms_index"] = sel
    npz.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(npz, **out)
    print(f"wrote {npz} ({npz.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "inputs":
        make_inputs(Path(sys.argv[2]))
    elif len(sys.argv) >= 4 and sys.argv[1] == "pack":
        pack(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.exit(__doc__)
