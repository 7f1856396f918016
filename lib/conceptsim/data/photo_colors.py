"""``photo-colors``: crops of real photographs with per-pixel colour-name masks (Broden's 11 colours).

No registry package ships real photos with segmentation masks, but several ship real photos
(scikit-image's sample data, ultralytics' assets, matplotlib's and scikit-learn's sample data: 14 colour
photographs in all, see :func:`source_photos`). This builder takes seeded
random crops of them and names every pixel's colour with one fixed rule, the way Broden's colour concepts
were made: the masks say which *colour name* a pixel has, not which object it belongs to.

Colour-naming rule (:func:`name_colours`), on HSV with hue ``H`` in degrees and ``S``, ``V`` in [0, 1]
(matplotlib's ``rgb_to_hsv`` of the stored 8-bit pixel), first matching line wins:

==========  ================================================================
black       ``V < 0.20``
white       ``S < 0.15`` and ``V > 0.80``
grey        ``S < 0.15``
pink        ``H >= 290`` or ``H < 15``, with ``S < 0.50`` and ``V >= 0.60``
brown       ``H >= 345`` or ``H < 45``, with ``V < 0.60``
red         ``H >= 345`` or ``H < 15``
orange      ``15 <= H < 45``
yellow      ``45 <= H < 70``
green       ``70 <= H < 165``
blue        ``165 <= H < 260``
purple      ``260 <= H < 315``
pink        ``315 <= H < 345``
==========  ================================================================

Minimum-area drop rule (:func:`colour_masks`): per colour name, 8-connected regions smaller than
``min_region`` of the crop area (default 0.1 %, 50 pixels at 224 x 224) are dropped; their pixels carry no
colour concept. Speckle from JPEG noise and edges is thereby not a concept instance.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from matplotlib.colors import rgb_to_hsv
from PIL import Image
from skimage.measure import label as connected_components

from conceptsim.atomic import atomic_path, sha256_file
from conceptsim.data.coco import DatasetError
from conceptsim.data.coco_writer import CocoWriter

#: Broden's eleven colour concepts, in category-id order.
COLOUR_NAMES = ("black", "blue", "brown", "green", "grey", "orange", "pink", "purple", "red", "white", "yellow")
BUILDER_VERSION = 2  # 2: china.jpg and flower.jpg (scikit-learn) joined the 12 source photos


def source_photos() -> list[Path]:
    """The real colour photographs that ship inside installed packages (fixed order).

    Every colour photograph of these packages' sample data except scikit-image's ``motorcycle_right.png``
    (the other half of a stereo pair with ``motorcycle_left.png``: a near copy that a split by photo would
    put on both sides) and synthetic pictures (``color.png``, logos, chessboards).
    """
    import matplotlib
    import skimage.data
    import sklearn.datasets
    import ultralytics.utils

    sk = Path(skimage.data.data_dir)
    mpl = Path(matplotlib.get_data_path()) / "sample_data"
    ul = Path(ultralytics.utils.ASSETS)
    skl = Path(sklearn.datasets.__file__).parent / "images"
    return [
        sk / "astronaut.png", sk / "chelsea.png", sk / "coffee.png", sk / "rocket.jpg",
        sk / "motorcycle_left.png", sk / "retina.jpg", sk / "ihc.png", sk / "hubble_deep_field.jpg",
        ul / "bus.jpg", ul / "zidane.jpg", mpl / "grace_hopper.jpg", mpl / "Minduka_Present_Blue_Pack.png",
        skl / "china.jpg", skl / "flower.jpg",
    ]


def name_colours(rgb: np.ndarray) -> np.ndarray:
    """Colour-name index (into :data:`COLOUR_NAMES`) of every pixel of a uint8 ``... x 3`` RGB array."""
    hsv = rgb_to_hsv(rgb.astype(np.float64) / 255.0)
    h, s, v = hsv[..., 0] * 360.0, hsv[..., 1], hsv[..., 2]
    idx = {n: i for i, n in enumerate(COLOUR_NAMES)}
    reddish = (h >= 345) | (h < 15)
    rules = [
        ("black", v < 0.20),
        ("white", (s < 0.15) & (v > 0.80)),
        ("grey", s < 0.15),
        ("pink", ((h >= 290) | (h < 15)) & (s < 0.50) & (v >= 0.60)),
        ("brown", ((h >= 345) | (h < 45)) & (v < 0.60)),
        ("red", reddish),
        ("orange", (h >= 15) & (h < 45)),
        ("yellow", (h >= 45) & (h < 70)),
        ("green", (h >= 70) & (h < 165)),
        ("blue", (h >= 165) & (h < 260)),
        ("purple", (h >= 260) & (h < 315)),
        ("pink", (h >= 315) & (h < 345)),
    ]
    out = np.full(h.shape, -1, dtype=np.int8)
    for name, cond in rules:
        out[(out < 0) & cond] = idx[name]
    return out


def colour_masks(rgb: np.ndarray, min_region: float = 0.001) -> dict[str, np.ndarray]:
    """Per colour name, the boolean mask of its pixels after the minimum-area drop rule."""
    names = name_colours(rgb)
    min_px = min_region * names.size
    out = {}
    for k, name in enumerate(COLOUR_NAMES):
        m = names == k
        if not m.any():
            continue
        lab = connected_components(m, connectivity=2)
        sizes = np.bincount(lab.ravel())
        keep = sizes >= min_px
        keep[0] = False
        m = keep[lab]
        if m.any():
            out[name] = m
    return out


@lru_cache(maxsize=None)
def _load_photo(path: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError) as e:
        raise DatasetError(f"{path}: source photo unreadable ({e})") from e


def random_crop(photo: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A square crop of side 25-100 % of the photo's shorter side, resized to ``size``, maybe mirrored."""
    h, w = photo.shape[:2]
    side = int(rng.uniform(0.25, 1.0) * min(h, w))
    side = max(side, min(size, h, w) // 2, 8)
    top = int(rng.integers(0, h - side + 1))
    left = int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(photo[top : top + side, left : left + side]).resize((size, size), Image.Resampling.LANCZOS)
    arr = np.asarray(crop)
    return arr[:, ::-1].copy() if rng.random() < 0.5 else arr


def build_photo_colors(
    out_dir: str | os.PathLike, n: int = 400, size: int = 224, seed: int = 0, min_region: float = 0.001
) -> Path:
    """Build the ``photo-colors`` dataset into ``out_dir``; returns its annotation file.

    Parameters
    ----------
    out_dir : target folder, replaced atomically (built in a temporary sibling, then renamed).
    n : number of crops.
    size : side of each square crop, in pixels.
    seed : crop ``i`` uses ``numpy.random.default_rng([seed, i])``; the same seed gives the same bytes.
    min_region : minimum-area drop rule (fraction of the crop area), see the module docstring.

    Layout: ``annotations.json`` (COCO; one RLE instance per crop and colour name, supercategory
    ``colour``) and ``images/NNNNNN.png`` (lossless, so the stored pixels are the ones that were named).
    """
    if n < 1 or size < 16:
        raise ValueError(f"photo-colors needs n >= 1 and size >= 16, got n={n} size={size}")
    sources = source_photos()
    for p in sources:
        if not p.is_file():
            raise DatasetError(f"{p}: source photo missing (is the package installed?)")
    out_dir = Path(out_dir)
    params = {"n": int(n), "size": int(size), "seed": int(seed), "min_region": float(min_region)}
    info = {
        "generator": "conceptsim.data.photo_colors", "version": BUILDER_VERSION, "params": params,
        "sources": [{"file": p.name, "sha256": sha256_file(p)} for p in sources],
    }
    writer = CocoWriter([(c, "colour") for c in COLOUR_NAMES], info)
    with atomic_path(out_dir) as tmp:
        (tmp / "images").mkdir(parents=True)
        for i in range(n):
            rng = np.random.default_rng([seed, i])
            src = sources[int(rng.integers(len(sources)))]
            rgb = random_crop(_load_photo(str(src)), size, rng)
            fname = f"{i:06d}.png"
            Image.fromarray(rgb).save(tmp / "images" / fname)
            iid = writer.add_image(fname, size, size)
            writer.images[-1]["source"] = src.name
            for name, m in colour_masks(rgb, min_region).items():
                writer.add_mask(iid, name, m)
        writer.write(tmp / "annotations.json")
    return out_dir / "annotations.json"
