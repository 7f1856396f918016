"""``shapes``: synthetic composites whose concept masks are exact.

Each image is a textured background with 1-5 foreground shapes painted over it in a random order. Every
mask is rasterised from the geometry with one rule -- a pixel belongs to a shape iff its *centre*
``(x + 0.5, y + 0.5)`` lies inside (even-odd rule, edges half-open) -- and occlusion is applied, so the
masks are exact and carry no anti-aliasing. Concepts come in three categories:

- ``shape``: circle, square, triangle, star, ring, hexagon (the visible part of each shape);
- ``colour``: the visible part of shapes filled with one of Broden's 11 colour names;
- ``texture``: the visible part of shapes filled with a texture, and the visible background.

Textures: the real texture photos shipped with scikit-image (brick, grass, gravel; randomly cropped,
scaled, rotated and tinted) and five procedural ones (stripes, dots, checkerboard, noise, gradient).

Image ``i`` is drawn from ``numpy.random.default_rng([seed, i])`` alone, so images can be made in any order
or in parallel and the same seed gives byte-identical files.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from conceptsim.atomic import atomic_path
from conceptsim.data.coco_writer import CocoWriter, encode_mask
from conceptsim.data.photo_colors import COLOUR_NAMES
from conceptsim.runtime import fork_pool

BUILDER_VERSION = 1
SHAPE_KINDS = ("circle", "square", "triangle", "star", "ring", "hexagon")
PHOTO_TEXTURES = ("brick", "grass", "gravel")
TEXTURES = PHOTO_TEXTURES + ("stripes", "dots", "checkerboard", "noise", "gradient")
#: A prototype RGB per colour name; each is named as itself by :func:`photo_colors.name_colours`.
COLOUR_RGB = {
    "black": (20, 20, 20), "blue": (30, 70, 200), "brown": (120, 70, 30), "green": (40, 160, 50),
    "grey": (128, 128, 128), "orange": (245, 140, 20), "pink": (250, 160, 200), "purple": (130, 50, 170),
    "red": (210, 30, 30), "white": (240, 240, 240), "yellow": (240, 220, 30),
}
RING_INNER = 0.55  # inner / outer radius of a ring
STAR_INNER = 0.45  # inner / outer radius of a star
MIN_VISIBLE = 0.25  # a shape less visible than this (fraction of its area) is not drawn at all
JPEG_QUALITY = 95


# ---------------------------------------------------------------------------------------------- geometry
def polygon_vertices(kind: str, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """Vertices ``V x 2`` (x, y) of a polygonal shape with circumradius ``radius``, rotated by ``angle`` (rad).

    A square with ``angle = 0`` is axis-aligned (its corners lie at 45 degrees).
    """
    if kind == "square":
        t = angle + np.pi / 4 + np.arange(4) * np.pi / 2
        r = np.full(4, radius)
    elif kind == "triangle":
        t = angle - np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        r = np.full(3, radius)
    elif kind == "hexagon":
        t = angle + np.arange(6) * np.pi / 3
        r = np.full(6, radius)
    elif kind == "star":
        t = angle - np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, radius, radius * STAR_INNER)
    else:
        raise ValueError(f"not a polygonal shape: {kind!r}")
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def polygon_mask(vertices: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Boolean ``H x W`` mask of the pixels whose centres lie inside the polygon (even-odd rule)."""
    h, w = hw
    out = np.zeros((h, w), dtype=bool)
    x0, x1 = max(0, int(np.floor(vertices[:, 0].min()))), min(w, int(np.ceil(vertices[:, 0].max())) + 1)
    y0, y1 = max(0, int(np.floor(vertices[:, 1].min()))), min(h, int(np.ceil(vertices[:, 1].max())) + 1)
    if x0 >= x1 or y0 >= y1:
        return out
    py = np.arange(y0, y1) + 0.5
    px = np.arange(x0, x1) + 0.5
    inside = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    xa, ya = vertices[:, 0], vertices[:, 1]
    xb, yb = np.roll(xa, 1), np.roll(ya, 1)
    for i in range(len(vertices)):
        # a row crosses the edge when the edge spans its y (half-open, so a shared vertex counts once)
        crosses = (ya[i] > py) != (yb[i] > py)
        if not crosses.any():
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = xa[i] + (py - ya[i]) * (xb[i] - xa[i]) / (yb[i] - ya[i])
        inside ^= crosses[:, None] & (px[None, :] < x_at[:, None])
    out[y0:y1, x0:x1] = inside
    return out


def disc_mask(cx: float, cy: float, radius: float, hw: tuple[int, int]) -> np.ndarray:
    """Pixels whose centres are within ``radius`` of ``(cx, cy)``."""
    h, w = hw
    dy = (np.arange(h) + 0.5 - cy)[:, None]
    dx = (np.arange(w) + 0.5 - cx)[None, :]
    return dx * dx + dy * dy <= radius * radius


def shape_mask(kind: str, cx: float, cy: float, radius: float, angle: float, hw: tuple[int, int]) -> np.ndarray:
    """Exact boolean mask of one shape (before occlusion)."""
    if kind == "circle":
        return disc_mask(cx, cy, radius, hw)
    if kind == "ring":
        return disc_mask(cx, cy, radius, hw) & ~disc_mask(cx, cy, radius * RING_INNER, hw)
    return polygon_mask(polygon_vertices(kind, cx, cy, radius, angle), hw)


def visible_masks(full: list[np.ndarray]) -> list[np.ndarray]:
    """Occlusion: shape ``i`` is hidden wherever a later-painted shape covers it."""
    covered = np.zeros_like(full[0]) if full else None
    out = [None] * len(full)
    for i in range(len(full) - 1, -1, -1):
        out[i] = full[i] & ~covered
        covered = covered | full[i]
    return out


# ---------------------------------------------------------------------------------------------- textures
@lru_cache(maxsize=None)
def _photo_texture(name: str) -> np.ndarray:
    import skimage.data

    return np.asarray(getattr(skimage.data, name)(), dtype=np.uint8)


def _rotated_coords(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    t = rng.uniform(0, np.pi)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    return x * np.cos(t) + y * np.sin(t), -x * np.sin(t) + y * np.cos(t)


def _two_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return rng.integers(0, 256, 3).astype(np.float64), rng.integers(0, 256, 3).astype(np.float64)


def make_texture(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``size x size x 3`` uint8 texture patch, drawn from ``rng``."""
    if name in PHOTO_TEXTURES:
        src = _photo_texture(name)
        sh, sw = src.shape
        # the rotated sampling window must stay inside the photo: half-diagonal <= distance to border
        k_max = min(1.5, 0.95 * min(sh, sw) / (size * np.sqrt(2)))
        k = rng.uniform(0.5 * k_max, k_max)  # source pixels per output pixel
        t = rng.uniform(0, 2 * np.pi)
        half = size * k * np.sqrt(2) / 2
        cx, cy = rng.uniform(half, sw - half), rng.uniform(half, sh - half)
        a, b = k * np.cos(t), k * np.sin(t)
        # PIL's affine maps output (x, y) to input (a x + b y + c, d x + e y + f)
        c = cx - a * size / 2 - b * size / 2
        f = cy + b * size / 2 - a * size / 2
        grey = Image.fromarray(src).transform((size, size), Image.Transform.AFFINE, (a, b, c, -b, a, f), Image.Resampling.BILINEAR)
        tint = 0.4 + 0.6 * rng.uniform(0, 1, 3)
        return np.clip(np.asarray(grey, dtype=np.float64)[..., None] * tint, 0, 255).astype(np.uint8)
    c1, c2 = _two_colours(rng)
    period = size * rng.uniform(0.03, 0.10)
    u, v = _rotated_coords(size, rng)
    if name == "stripes":
        sel = (u / period) % 1.0 < 0.5
    elif name == "dots":
        du, dv = u % period - period / 2, v % period - period / 2
        sel = du * du + dv * dv < (period * rng.uniform(0.2, 0.4)) ** 2
    elif name == "checkerboard":
        sel = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    elif name == "gradient":
        t = (u - u.min()) / max(u.max() - u.min(), 1e-9)
        return np.clip(c1 * (1 - t[..., None]) + c2 * t[..., None], 0, 255).astype(np.uint8)
    elif name == "noise":
        cells = int(rng.integers(4, 16))
        low = Image.fromarray(rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8))
        smooth = np.asarray(low.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)
        return np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
    else:
        raise ValueError(f"unknown texture {name!r}")
    return np.where(sel[..., None], c1, c2).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- images
def render_image(seed: int, index: int, size: int) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """Image ``index`` of the data set: RGB ``size x size x 3`` and its ``(concept, exact mask)`` list."""
    rng = np.random.default_rng([seed, index])
    hw = (size, size)
    background = TEXTURES[int(rng.integers(len(TEXTURES)))]
    image = make_texture(background, size, rng)
    shapes = []
    for _ in range(int(rng.integers(1, 6))):
        kind = SHAPE_KINDS[int(rng.integers(len(SHAPE_KINDS)))]
        radius = size * rng.uniform(0.08, 0.25)
        cx, cy = rng.uniform(0.1, 0.9, 2) * size
        angle = rng.uniform(0, 2 * np.pi)
        if rng.random() < 0.6:
            fill = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
        else:  # a texture other than the background's, so the shape stays distinguishable
            fill = [t for t in TEXTURES if t != background][int(rng.integers(len(TEXTURES) - 1))]
        shapes.append((kind, fill, shape_mask(kind, cx, cy, radius, angle, hw)))
    # drop shapes that would be mostly hidden, until every drawn shape is visible enough
    while True:
        vis = visible_masks([m for _, _, m in shapes])
        ok = [v.sum() >= MIN_VISIBLE * s[2].sum() and v.any() for v, s in zip(vis, shapes)]
        if all(ok):
            break
        shapes = [s for s, good in zip(shapes, ok) if good]
    for kind, fill, m in shapes:
        if fill in COLOUR_RGB:
            pixels = np.asarray(COLOUR_RGB[fill], np.float64) + rng.normal(0, 6, (int(m.sum()), 3))
            image[m] = np.clip(pixels, 0, 255).astype(np.uint8)
        else:
            image[m] = make_texture(fill, size, rng)[m]
    concepts = []
    covered = np.zeros(hw, dtype=bool)
    for (kind, fill, m), v in zip(shapes, vis):
        concepts += [(kind, v), (fill, v)]
        covered |= m
    concepts.append((background, ~covered))
    return image, concepts


def _render_and_save(job: tuple[int, int, int, str]) -> tuple[str, list[tuple[str, dict]]]:
    seed, index, size, image_dir = job
    image, concepts = render_image(seed, index, size)
    fname = f"{index:06d}.jpg"
    Image.fromarray(image).save(Path(image_dir) / fname, quality=JPEG_QUALITY, subsampling=0)
    return fname, [(name, encode_mask(m)) for name, m in concepts if m.any()]


def categories() -> list[tuple[str, str]]:
    """``(name, supercategory)`` of every concept of the data set, in category-id order."""
    return [(s, "shape") for s in SHAPE_KINDS] + [(c, "colour") for c in COLOUR_NAMES] + [(t, "texture") for t in TEXTURES]


def build_shapes(out_dir: str | os.PathLike, n: int = 1200, size: int = 320, seed: int = 0, workers: int | None = None) -> Path:
    """Build the ``shapes`` dataset into ``out_dir``; returns its annotation file.

    Parameters
    ----------
    out_dir : target folder, replaced atomically (built in a temporary sibling, then renamed).
    n, size : number of images and their side in pixels.
    seed : see the module docstring; the same seed gives byte-identical files whatever ``workers`` is.
    workers : processes for rendering (default: up to 2, fewer for small ``n``).

    Layout: ``annotations.json`` (COCO, exact RLE instances: per drawn shape one ``shape`` and one
    ``colour``/``texture`` instance, per image one background ``texture`` instance) and
    ``images/NNNNNN.jpg`` (JPEG quality 95, no chroma subsampling; masks are exact in the geometry, the
    pixels carry JPEG's small compression error).
    """
    if n < 1 or size < 32:
        raise ValueError(f"shapes needs n >= 1 and size >= 32, got n={n} size={size}")
    out_dir = Path(out_dir)
    params = {"n": int(n), "size": int(size), "seed": int(seed)}
    writer = CocoWriter(categories(), {"generator": "conceptsim.data.shapes", "version": BUILDER_VERSION, "params": params})
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if n >= 100 else 1
    with atomic_path(out_dir) as tmp:
        (tmp / "images").mkdir(parents=True)
        jobs = [(int(seed), i, int(size), str(tmp / "images")) for i in range(n)]
        if workers > 1:
            with fork_pool(workers) as pool:
                results = list(pool.imap(_render_and_save, jobs, chunksize=16))
        else:
            results = [_render_and_save(j) for j in jobs]
        for fname, instances in results:
            iid = writer.add_image(fname, size, size)
            for name, rle in instances:
                writer.add_rle(iid, name, rle)
        writer.write(tmp / "annotations.json")
    return out_dir / "annotations.json"
