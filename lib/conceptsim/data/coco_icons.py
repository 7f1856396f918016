"""``coco-icons``: COCO object categories drawn in several emoji art styles, pasted on real photos.

Every image is a crop of a real photo or texture shipped in an installed package (scikit-image,
matplotlib, scikit-learn) with emoji of COCO categories composited over it. The emoji come from pinned
npm packages (:mod:`conceptsim.data.icon_sources`), rasterised by resvg (``resvg-py``); an image's emoji
all come from one *style* (Fluent modern, Fluent flat, OpenMoji, OpenMoji outline, Noto, Twemoji), so a
split that holds whole styles out measures transfer to an unseen style.

Three compositions (the build parameter ``mode``, :data:`MODES`):

- ``scene``: 1-4 objects per image, each 10-60 % of the image side, an object left less than 30 %
  visible is not drawn -- small, often occluded objects in clutter;
- ``objects``: 1-2 objects per image, each 35-80 % of the image side, an object left less than 60 %
  visible is not drawn -- object-centric pictures, where a probe on a few hundred images can learn the
  categories (see the dataset's book page for the measured difference);
- ``single``: one object per image, 50-90 % of the image side -- icon pictures, the easiest task (the
  power check on the book page gives it the largest trained-vs-twin margins).

Per object: a category, one of its emoji (uniform), a size drawn uniformly from the mode's range, a
rotation of up to +-30 degrees, a mirror flip (p = 0.5) and, for half of the objects, a random hue
rotation, so that colour does not predict the class. The category of an image's *top* (last-drawn) object is
balanced within each style (:func:`balanced_category`): the images of a style take the categories in turn,
in an order drawn afresh for every round, so every style shows every category as a top object equally often
(counts differ by at most one). A held-out style is a split: with uniform draws the default study's test style
(120 images, 14 categories) had between 2 (pizza) and 17 images per category, and the average precision
of a concept with 2 positives moves in large steps when one image changes rank. The other objects'
categories are uniform. Objects are alpha-composited in order (later ones occlude earlier ones). The mask of
an instance is where its *visible* alpha -- its alpha times the transparency of everything composited above
it -- exceeds 0.5; an object left less visible than the mode's ``min_visible`` (fraction of its own mask) is
not drawn. The balanced object is the top one, which nothing occludes, so it is always drawn.

Backgrounds are partitioned between styles (:func:`background_groups`): every background source photo
belongs to exactly one style, so holding styles out also holds their backgrounds out.

Image records carry ``style`` and ``background`` (the source photo's file name); categories keep their
COCO 2017 ``id``, ``name`` and ``supercategory``; every instance names its ``emoji`` (code point).
Image ``i`` is drawn from ``numpy.random.default_rng([seed, i])`` alone, except its top object's category,
which comes from its style's category order (``default_rng([seed, s, r, BALANCE_STREAM])`` for style position
``s`` and round ``r``, see :func:`balanced_category`); the same seed gives byte-identical files whatever the
number of workers.

A planted cue (build parameter ``cue``, a probability; default 0: no cue, and the build is the same as
before the parameter existed): with that probability an image gets a *dot*, an opaque disc of
:data:`CUE_RADIUS` of the side at a uniform position, painted over everything, whose colour
(:data:`CUE_COLOURS`) says the image's *label* -- its dominant object, the category of the largest
visible mask before the dot. The dot is the category ``dot`` (supercategory ``cue``, id :data:`CUE_ID`)
with its own instance mask (the objects' masks lose the pixels it covers), so it is a concept like any
other; image records carry ``label`` and ``cue`` (the dot drawn or not). Whether and where the dot goes
is drawn from ``default_rng([seed, i, CUE_STREAM])``: builds that differ only in ``cue`` have the same
pictures. The shortcut test of the grounding study trains small CNNs on such builds
(:mod:`conceptsim.models.small_cnn`).
"""

from __future__ import annotations

import io
import math
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from conceptsim.atomic import atomic_path, sha256_file
from conceptsim.data import icon_sources
from conceptsim.data.coco import DatasetError
from conceptsim.data.coco_writer import CocoWriter, encode_mask
from conceptsim.data.icon_sources import CATEGORIES, STYLES, IconSourceError
from conceptsim.data.photo_colors import _load_photo, random_crop
from conceptsim.runtime import fork_pool

BUILDER_VERSION = 3  # 2: the composition mode (scene / objects) is a build parameter
#                      3: the top object's category is balanced within each style (balanced_category)

#: The planted cue: its category, its colour per label (index of the category in COCO id order), its size.
CUE_CONCEPT = "dot"
CUE_SUPERCATEGORY = "cue"
CUE_ID = 1000  # outside COCO's 1-90
CUE_RADIUS = 0.1  # fraction of the image side
CUE_STREAM = 7919  # the third seed word of the cue's random stream
#: the last seed word of a style's top-object category order: last, because numpy's SeedSequence ignores
#: trailing zero words ([seed, 7919, 0, 0] would be image 7919's stream [seed, 7919])
BALANCE_STREAM = 7927
CUE_COLOURS = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
               (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
               (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
               (0, 0, 128), (128, 128, 128))


@dataclass(frozen=True)
class Composition:
    """How an image's objects are drawn: how many, how large, how much of each must stay visible."""

    objects: tuple[int, int]  # fewest and most objects per image (uniform)
    scale: tuple[float, float]  # icon side, fraction of the image side (uniform)
    min_visible: float  # an object left less visible than this (fraction of its own mask) is not drawn


#: The composition modes; ``scene`` is the original, harder one.
MODES = {
    "scene": Composition(objects=(1, 4), scale=(0.10, 0.60), min_visible=0.3),
    "objects": Composition(objects=(1, 2), scale=(0.35, 0.80), min_visible=0.6),
    "single": Composition(objects=(1, 1), scale=(0.50, 0.90), min_visible=0.6),
}
MAX_ROTATION = 30.0  # degrees
HUE_FRACTION = 0.5  # objects whose hue is rotated
RENDER_FRACTION = 0.5  # icons are rasterised once at this fraction of the image side, then resampled
JPEG_QUALITY = 95
#: Background source photos without COCO objects in them, in the order they are dealt to styles.
BACKGROUNDS = (
    ("skimage", "rocket.jpg"), ("sklearn", "china.jpg"), ("sklearn", "flower.jpg"),
    ("skimage", "hubble_deep_field.jpg"), ("skimage", "retina.jpg"), ("skimage", "ihc.png"),
    ("skimage", "brick.png"), ("skimage", "grass.png"), ("skimage", "gravel.png"), ("skimage", "moon.png"),
    ("skimage", "coins.png"), ("skimage", "cell.png"), ("skimage", "text.png"), ("skimage", "page.png"),
)


def background_path(package: str, name: str) -> Path:
    if package == "skimage":
        import skimage.data

        return Path(skimage.data.data_dir) / name
    import sklearn.datasets

    return Path(sklearn.datasets.__file__).parent / "images" / name


def background_groups(styles: Sequence[str]) -> dict[str, list[Path]]:
    """Style -> its background photos: :data:`BACKGROUNDS` dealt round-robin, so the groups are disjoint."""
    paths = [background_path(*b) for b in BACKGROUNDS]
    for p in paths:
        if not p.is_file():
            raise DatasetError(f"{p}: background photo missing (is its package installed?)")
    return {s: paths[k::len(styles)] for k, s in enumerate(styles)}


def missing_sources(styles: Sequence[str] | None = None) -> str | None:
    """Why a build cannot start here (a missing or altered icon package, with the fix), or None."""
    problems = []
    for key in sorted({STYLES[s].package for s in (styles or STYLES)}):
        try:
            icon_sources.package_path(key)
        except IconSourceError as e:
            problems.append(str(e))
    return "; ".join(problems) or None


def check_selection(styles: Sequence[str] | None, categories: Sequence[str] | None) -> tuple[list[str], list]:
    """Validate and order the chosen styles and categories (``None``: all); unknown names are errors."""
    try:
        styles = list(STYLES) if styles is None else [icon_sources.style(s).name for s in styles]
        cats = list(CATEGORIES) if categories is None else [icon_sources.category(c) for c in categories]
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    if not styles or not cats or len(set(styles)) != len(styles) or len({c.name for c in cats}) != len(cats):
        raise ValueError(f"coco-icons needs distinct, non-empty styles and categories, got {styles} and "
                         f"{[c.name for c in cats]}")
    if len(styles) > len(BACKGROUNDS):
        raise ValueError(f"coco-icons has {len(BACKGROUNDS)} background photos, too few for {len(styles)} styles")
    return styles, sorted(cats, key=lambda c: c.id)


# ---------------------------------------------------------------------------------------------- icons
def rasterise(svg: bytes, px: int, what: str) -> np.ndarray:
    """An SVG document fitted into a ``px x px`` box (aspect kept, centred): uint8 RGBA (resvg).

    ``what`` names the icon in errors.
    """
    import resvg_py

    def render(**fit) -> np.ndarray:
        png = resvg_py.svg_to_bytes(svg_string=svg.decode("utf-8"), **fit)
        with Image.open(io.BytesIO(bytes(png))) as im:
            return np.asarray(im.convert("RGBA"))

    try:
        rgba = render(width=px)
        if rgba.shape[0] > px:
            rgba = render(height=px)
    except Exception as e:  # resvg raises plain exceptions for unparsable SVG
        raise IconSourceError(f"{what}: SVG could not be rendered ({type(e).__name__}: {e})") from e
    h, w = rgba.shape[:2]
    if h > px or w > px or not (rgba[..., 3] > 127).any():
        raise IconSourceError(f"{what}: SVG rendered to an empty or wrongly sized picture ({w} x {h})")
    out = np.zeros((px, px, 4), np.uint8)
    out[(px - h) // 2 : (px - h) // 2 + h, (px - w) // 2 : (px - w) // 2 + w] = rgba
    return out


def _render_job(job: tuple[bytes, int, str]) -> np.ndarray:
    return rasterise(*job)


def icon_bank(styles: Sequence[str], cats: Sequence, px: int, pool=None) -> dict[tuple[str, str], np.ndarray]:
    """``(style, code) -> RGBA`` of every emoji of ``cats`` that the styles draw, rasterised at ``px``.

    The SVGs are read here (each package's tarball once); only the rasterising goes to ``pool``.
    """
    keys, jobs = [], []
    for s in styles:
        spec = icon_sources.PACKAGES[STYLES[s].package].spec
        for c in cats:
            drawn = [(e, icon_sources.svg_of(s, e)) for e in c.emoji]
            drawn = [(e, svg) for e, svg in drawn if svg is not None]
            if not drawn:
                raise IconSourceError(f"style {s!r} draws no emoji of category {c.name!r}")
            keys += [(s, e.code) for e, _ in drawn]
            jobs += [(svg, px, f"{s} emoji {e.code} ({e.name}) from {spec}") for e, svg in drawn]
    arrays = pool.map(_render_job, jobs, chunksize=4) if pool is not None else [_render_job(j) for j in jobs]
    return dict(zip(keys, arrays))


# ---------------------------------------------------------------------------------------------- scenes
def transform_icon(icon: np.ndarray, side: int, angle: float, flip: bool, hue: float | None) -> np.ndarray:
    """Resize to ``side``, mirror, rotate by ``angle`` degrees (canvas grows), rotate hue by ``hue`` (0-1)."""
    im = Image.fromarray(icon, "RGBA")
    if flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if hue is not None:
        hsv = np.array(im.convert("RGB").convert("HSV"))
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(hue * 256))) % 256
        rgb = Image.fromarray(hsv, "HSV").convert("RGB")
        im = Image.merge("RGBA", (*rgb.split(), im.getchannel("A")))
    # premultiplied alpha while resampling, so transparent pixels' colours do not bleed into the edges
    im = im.convert("RGBa").resize((side, side), Image.Resampling.BILINEAR)
    im = im.rotate(angle, Image.Resampling.BICUBIC, expand=True).convert("RGBA")
    return np.asarray(im)


def visible_alpha(alphas: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per layer (bottom first), its alpha times the transparency of every layer above it."""
    out = [None] * len(alphas)
    through = np.ones_like(alphas[0]) if alphas else None
    for i in range(len(alphas) - 1, -1, -1):
        out[i] = alphas[i] * through
        through = through * (1.0 - alphas[i])
    return out


def composition(mode: str) -> Composition:
    """The :class:`Composition` of a mode name; an unknown name is an error listing the modes."""
    if mode not in MODES:
        raise ValueError(f"unknown coco-icons mode {mode!r}; modes: {sorted(MODES)}")
    return MODES[mode]


def balanced_category(seed: int, index: int, n_styles: int, n_cats: int) -> int:
    """The category (an index into the build's categories) of image ``index``'s top (last-drawn) object.

    The images of style position ``s`` are ``index = s, s + n_styles, s + 2 n_styles, ...``; the ``j``-th of
    them (``j = index // n_styles``) takes entry ``j % n_cats`` of a permutation of the categories drawn from
    ``default_rng([seed, s, j // n_cats, BALANCE_STREAM])``: a new order for every round through the
    categories, so the order is neither periodic nor shared between styles, and within a style every
    category is the top object equally often (counts differ by at most one).
    """
    s, j = index % n_styles, index // n_styles
    rnd, k = divmod(j, n_cats)
    return int(np.random.default_rng([seed, s, rnd, BALANCE_STREAM]).permutation(n_cats)[k])


def place_objects(seed: int, index: int, size: int, styles: Sequence[str], cats: Sequence,
                  bank: dict, mode: str = "scene") -> tuple[np.random.Generator, str, list[dict]]:
    """Draw image ``index``'s style and objects; each object gets its full-canvas ``rgb`` and ``alpha``.

    The top (last-drawn) object's category is balanced within the image's style (:func:`balanced_category`),
    so that a held-out style has about as many positives of every category (a concept with 2 test positives,
    as uniform draws gave pizza in the default study, has an average precision that moves in large steps);
    nothing occludes the top object, so it is never dropped. The other objects' categories are uniform draws
    from the image's own stream. The top object still draws (and discards) a uniform category, so that the
    image's other draws (number of objects, emoji, sizes, rotations, positions, background crop) keep their
    places in its stream.
    """
    comp = composition(mode)
    rng = np.random.default_rng([seed, index])
    style_name = styles[index % len(styles)]
    objects = []
    n_objects = int(rng.integers(comp.objects[0], comp.objects[1] + 1))
    for k in range(n_objects):
        drawn = int(rng.integers(len(cats)))
        cat = cats[balanced_category(seed, index, len(styles), len(cats)) if k == n_objects - 1 else drawn]
        codes = [code for (s, code) in bank if s == style_name and code in {e.code for e in cat.emoji}]
        code = codes[int(rng.integers(len(codes)))]
        side = max(4, int(round(rng.uniform(*comp.scale) * size)))
        angle = float(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
        flip = bool(rng.random() < 0.5)
        hue = float(rng.uniform(0.1, 0.9)) if rng.random() < HUE_FRACTION else None
        cx, cy = rng.uniform(side / 2, size - side / 2, 2)
        rgba = transform_icon(bank[(style_name, code)], side, angle, flip, hue)
        h, w = rgba.shape[:2]
        x0, y0 = int(round(cx - w / 2)), int(round(cy - h / 2))
        alpha = np.zeros((size, size), np.float32)
        rgb = np.zeros((size, size, 3), np.float32)
        ys, xs = slice(max(y0, 0), min(y0 + h, size)), slice(max(x0, 0), min(x0 + w, size))
        src = rgba[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
        alpha[ys, xs] = src[..., 3] / 255.0
        rgb[ys, xs] = src[..., :3]
        objects.append({"category": cat, "emoji": code, "alpha": alpha, "rgb": rgb, "hue_rotated": hue is not None})
    return rng, style_name, objects


def render_image(seed: int, index: int, size: int, styles: Sequence[str], cats: Sequence, bank: dict,
                 groups: dict[str, list[Path]], mode: str = "scene") -> tuple[np.ndarray, str, str, list[dict]]:
    """Image ``index``: RGB uint8, its style, its background's file name, and its drawn objects with masks.

    Each returned object holds ``category``, ``emoji``, ``hue_rotated``, ``alpha`` (its own alpha on the
    canvas), ``visible`` (visible alpha) and ``mask`` (``visible > 0.5``).
    """
    rng, style_name, objects = place_objects(seed, index, size, styles, cats, bank, mode)
    min_visible = composition(mode).min_visible
    photos = groups[style_name]
    photo = photos[int(rng.integers(len(photos)))]
    canvas = random_crop(_load_photo(str(photo)), size, rng).astype(np.float32)
    while True:  # drop objects that would be mostly hidden, until every drawn one is visible enough
        vis = visible_alpha([o["alpha"] for o in objects])
        ok = [(v > 0.5).sum() >= min_visible * max((o["alpha"] > 0.5).sum(), 1) and (v > 0.5).any()
              for v, o in zip(vis, objects)]
        if all(ok):
            break
        objects = [o for o, good in zip(objects, ok) if good]
    for o, v in zip(objects, vis):
        a = o["alpha"][..., None]
        canvas = canvas * (1.0 - a) + o["rgb"] * a
        o["visible"] = v
        o["mask"] = v > 0.5
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return image, style_name, photo.name, objects


def dominant_index(objects: Sequence[dict]) -> int:
    """Index of the object with the largest visible mask (the first of equals): the image's label."""
    return int(np.argmax([int(o["mask"].sum()) for o in objects]))


def paint_cue(image: np.ndarray, objects: list[dict], label: int, seed: int, index: int,
              probability: float) -> np.ndarray | None:
    """Paint the dot of label ``label`` (an index into :data:`CUE_COLOURS`) into ``image`` in place with
    ``probability``; return its mask (the objects' masks lose its pixels), or None when it is not drawn."""
    rng = np.random.default_rng([seed, index, CUE_STREAM])
    drawn = rng.random() < probability
    size = image.shape[0]
    r = CUE_RADIUS * size
    cx, cy = rng.uniform(r, size - r, 2)
    if not drawn:
        return None
    yy, xx = np.mgrid[:size, :size]
    disc = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r
    image[disc] = CUE_COLOURS[label % len(CUE_COLOURS)]
    for o in objects:
        o["mask"] = o["mask"] & ~disc
    return disc


# worker state, set before the pool forks (see build_coco_icons)
_STATE: dict = {}


def _render_and_save(index: int) -> tuple[str, str, str, list[tuple[int, str, bool, dict]], dict]:
    st = _STATE
    image, style_name, background, objects = render_image(
        st["seed"], index, st["size"], st["styles"], st["cats"], st["bank"], st["groups"], st["mode"])
    extra, instances = {}, []
    if st["cue"] > 0 and objects:  # an image whose objects were all dropped has no label and no dot
        label = objects[dominant_index(objects)]["category"]
        dot = paint_cue(image, objects, st["cats"].index(label), st["seed"], index, st["cue"])
        extra = {"label": label.name, "cue": dot is not None}
        if dot is not None:
            instances.append((CUE_ID, "", False, encode_mask(dot)))
    fname = f"{index:06d}.jpg"
    Image.fromarray(image).save(Path(st["image_dir"]) / fname, quality=JPEG_QUALITY, subsampling=0)
    instances = [(o["category"].id, o["emoji"], o["hue_rotated"], encode_mask(o["mask"]))
                 for o in objects if o["mask"].any()] + instances
    return fname, style_name, background, instances, extra


def category_table(cats: Sequence) -> list[dict]:
    return [{"id": c.id, "name": c.name, "supercategory": c.supercategory} for c in cats]


def concepts(cats: Sequence = CATEGORIES) -> dict[str, list[str]]:
    """Default concepts: every category, plus each supercategory with two or more categories (its group)."""
    groups: dict[str, list[str]] = {}
    for c in cats:
        groups.setdefault(c.supercategory, []).append(c.name)
    out = {c.name: [c.name] for c in cats}
    out.update({sup: names for sup, names in groups.items() if len(names) > 1 and sup not in out})
    return out


def concept_categories(cats: Sequence = CATEGORIES) -> dict[str, str]:
    """Concept -> concept category: a category's COCO supercategory; a supercategory group, itself."""
    out = {c.name: c.supercategory for c in cats}
    out.update({c.supercategory: c.supercategory for c in cats if c.supercategory not in out})
    return out


def concepts_of_build(params: dict) -> dict[str, list[str]]:
    """The default concepts of a build with these parameters (its ``categories``, default all; ``dot`` when
    the build plants the cue)."""
    out = concepts(check_selection(None, params.get("categories"))[1])
    if params.get("cue", 0) > 0:
        out[CUE_CONCEPT] = [CUE_CONCEPT]
    return out


def image_labels(annotation_file: str | os.PathLike) -> tuple[list[dict], list[str], list[str]]:
    """A build's labelled images (file order), each one's label (its ``label`` field, else the category of its
    largest instance; the dot is no label) and the label names (the build's categories in COCO id order).
    Images without an object (rare: every object was left too hidden to draw) have no label and are left out."""
    import json

    doc = json.loads(Path(annotation_file).read_text())
    names = {c["id"]: c["name"] for c in doc["categories"]}
    label_names = [c["name"] for c in sorted(doc["categories"], key=lambda c: c["id"]) if c["id"] != CUE_ID]
    largest: dict[int, tuple[float, str]] = {}
    for a in doc["annotations"]:
        if a["category_id"] != CUE_ID and a["area"] > largest.get(a["image_id"], (-1.0, ""))[0]:
            largest[a["image_id"]] = (a["area"], names[a["category_id"]])
    images = [im for im in sorted(doc["images"], key=lambda im: im["id"]) if im.get("label") or im["id"] in largest]
    if not images:
        raise DatasetError(f"{annotation_file}: no image has an object to give it a label")
    return images, [im.get("label") or largest[im["id"]][1] for im in images], label_names


def build_coco_icons(out_dir: str | os.PathLike, n: int = 1200, size: int = 320, seed: int = 0,
                     styles: Sequence[str] | None = None, categories: Sequence[str] | None = None,
                     mode: str = "scene", cue: float = 0.0, workers: int | None = None) -> Path:
    """Build the ``coco-icons`` dataset into ``out_dir``; returns its annotation file.

    Parameters
    ----------
    out_dir : target folder, replaced atomically (built in a temporary sibling, then renamed).
    n, size : number of images and their side in pixels (images are dealt to styles round-robin).
    seed : see the module docstring.
    styles, categories : subsets by name (default: every style of :data:`icon_sources.STYLES` and every
        category of :data:`icon_sources.CATEGORIES`); an unknown name is an error naming it.
    mode : the composition, a key of :data:`MODES` (``scene``: 1-4 objects of 10-60 % of the side;
        ``objects``: 1-2 objects of 35-80 %; ``single``: 1 object of 50-90 %); see the module docstring.
    cue : probability of the planted dot whose colour gives the image's label (see the module docstring);
        0 (the default) plants none and leaves the build as it was before this parameter.
    workers : processes (default: up to 2, 1 for small ``n``); output does not depend on it.

    Raises
    ------
    IconSourceError
        An icon package is missing (the message names it and the command that fetches it), does not match
        its pinned hash, or holds an SVG that cannot be rendered (named by style and code point).
    """
    if n < 1 or size < 64:
        raise ValueError(f"coco-icons needs n >= 1 and size >= 64, got n={n} size={size}")
    if not 0.0 <= float(cue) <= 1.0:
        raise ValueError(f"coco-icons cue is a probability in [0, 1], got {cue!r}")
    style_list, cats = check_selection(styles, categories)
    composition(mode)
    for key in sorted({STYLES[s].package for s in style_list}):
        icon_sources.package_path(key)  # a missing or altered package fails here, before any work
    groups = background_groups(style_list)
    out_dir = Path(out_dir)
    params = {"n": int(n), "size": int(size), "seed": int(seed), "styles": style_list, "categories": [c.name for c in cats],
              "mode": mode}
    if cue > 0:
        params["cue"] = float(cue)
    pkgs = sorted({STYLES[s].package for s in style_list})
    info = {
        "generator": "conceptsim.data.coco_icons", "version": BUILDER_VERSION, "params": params,
        "icon_packages": [{"package": icon_sources.PACKAGES[k].spec, "sha256": icon_sources.PACKAGES[k].sha256,
                           "licence": icon_sources.PACKAGES[k].licence,
                           "attribution": icon_sources.PACKAGES[k].attribution} for k in pkgs],
        "styles": {s: {"package": icon_sources.PACKAGES[STYLES[s].package].spec,
                       "backgrounds": [p.name for p in groups[s]]} for s in style_list},
        "backgrounds": [{"file": p.name, "sha256": sha256_file(p)} for s in style_list for p in groups[s]],
    }
    writer = CocoWriter([(c.name, c.supercategory) for c in cats], info)
    writer.categories = category_table(cats)  # COCO's own ids, not 1..K
    writer.cat_id = {c.name: c.id for c in cats}
    name_of = {c.id: c.name for c in cats}
    if cue > 0:
        writer.categories.append({"id": CUE_ID, "name": CUE_CONCEPT, "supercategory": CUE_SUPERCATEGORY})
        writer.cat_id[CUE_CONCEPT] = CUE_ID
        name_of[CUE_ID] = CUE_CONCEPT
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if n >= 100 else 1
    px = max(32, int(math.ceil(RENDER_FRACTION * size)))
    with atomic_path(out_dir) as tmp:
        (tmp / "images").mkdir(parents=True)
        # leaving the pool terminates its workers (and waits for them): once the bank is complete, or an error
        # or Ctrl-C stopped it, nothing queued is wanted
        with fork_pool(workers) if workers > 1 else nullcontext() as pool:
            bank = icon_bank(style_list, cats, px, pool)
        _STATE.update(seed=int(seed), size=int(size), styles=style_list, cats=cats, bank=bank, groups=groups,
                      mode=mode, cue=float(cue), image_dir=str(tmp / "images"))
        try:
            if workers > 1:
                with fork_pool(workers) as pool:
                    results = list(pool.imap(_render_and_save, range(n), chunksize=16))
            else:
                results = [_render_and_save(i) for i in range(n)]
        finally:
            _STATE.clear()
        for fname, style_name, background, instances, extra in results:
            iid = writer.add_image(fname, size, size)
            writer.images[-1].update(style=style_name, background=background, **extra)
            for cid, code, hue_rotated, rle in instances:
                writer.add_rle(iid, name_of[cid], rle)
                writer.annotations[-1].update(emoji=code, hue_rotated=hue_rotated)
        writer.write(tmp / "annotations.json")
    return out_dir / "annotations.json"
