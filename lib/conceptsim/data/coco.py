"""COCO-format concept datasets: validation, deterministic splits, masks in a model's input geometry.

Every dataset of the suite -- embedded or downloaded -- reaches the pipeline through this one reader: an
images + instances JSON in COCO format whose instances carry polygon or RLE segmentations. A *concept* is
a category or a named group of categories; its mask on an image is the union of the instances of its
categories (rasterised by pycocotools).

The reader keeps only run-length encoded masks in memory (a few bytes per instance) and decodes one image
at a time, so memory is bounded by the batch, not by the data set. Presence labels and per-split
statistics are computed from RLE areas at full resolution, without decoding.

The small COCO *writer* that the embedded builders share is :mod:`conceptsim.data.coco_writer`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader, Dataset

from conceptsim.data.coco_writer import CocoWriter, encode_mask  # noqa: F401 (importable from here as before)
from conceptsim.data.geometry import Preprocessing, area_fraction_grid, eval_matrices, separable_planes
from conceptsim.data.splits import check_split, grouped_assignment

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: Concept categories the suite knows; a COCO supercategory outside this set (e.g. "vehicle") names an
#: object group, so its concepts get the category "object".
CONCEPT_CATEGORIES = ("colour", "texture", "shape", "object", "part", "material", "scene")
#: Concept categories that do not name objects; every other category (``object``, or a COCO supercategory
#: such as ``vehicle`` or ``animal``) does. An annotation file's *object categories* are the categories whose
#: own concept category (:func:`resolve_concepts` with each category a concept) is an object one.
NON_OBJECT_CATEGORIES = ("colour", "texture", "shape", "part", "material", "scene")


def is_object_category(category: str) -> bool:
    """Whether a concept category names objects (see :data:`NON_OBJECT_CATEGORIES`)."""
    return category not in NON_OBJECT_CATEGORIES
#: Polygon vertices may lie this many pixels outside the image (annotation tools round outwards);
#: anything further is an error, not a rounding artefact.
POLYGON_TOLERANCE_PX = 1.0


class DatasetError(ValueError):
    """A dataset file or item is malformed; the message names the file and the item."""


@dataclass(frozen=True)
class Concept:
    """A concept: a name, its category (colour, texture, shape, object, part, ...) and its COCO ids."""

    name: str
    category: str
    category_ids: tuple[int, ...]


@dataclass(frozen=True)
class DatasetSource:
    """Where a COCO-format dataset lies, and what identifies it.

    Attributes
    ----------
    name : registry name (``shapes``, ``photo-colors``, ``coco2017-val``, ``voc2012``) or a free label.
    annotation_file : the instances JSON.
    image_dir : folder that the images' ``file_name`` entries are relative to.
    sha256 : hash of the annotation file together with the build parameters; the dataset hash recorded
        in result metadata.
    concept_categories : concept name -> concept category, overriding the supercategory rule.
    concepts : default concept definition (``None``: every category is a concept; otherwise concept
        name -> list of category names).
    params : the build parameters (empty for fetched data).
    split : the dataset's default split rule (:func:`conceptsim.data.splits.check_split`; ``None``: random).
    """

    name: str
    annotation_file: Path
    image_dir: Path
    sha256: str
    concept_categories: dict = field(default_factory=dict)
    concepts: dict | None = None
    params: dict = field(default_factory=dict)
    split: dict | None = None


# ---------------------------------------------------------------------------------------------- loading
def load_annotations(annotation_file: str | os.PathLike) -> dict:
    """Read and validate a COCO instances JSON.

    Checks: JSON syntax; ``images``/``annotations``/``categories`` lists; unique image ids and file names
    (one file under two ids could land in two splits); unique category ids and names; every annotation
    names a known image and category; segmentations are polygons inside the image (within
    :data:`POLYGON_TOLERANCE_PX`) or RLEs of the image's size whose run lengths cover it exactly.

    Raises
    ------
    DatasetError
        Naming the file and the offending item.
    """
    path = Path(annotation_file)
    if not path.is_file():
        raise DatasetError(f"{path}: annotation file not found")
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    try:
        data = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: malformed JSON ({e})") from e
    if digest in _VALID_ANNOTATIONS:  # these very bytes passed every check below in this process
        return data
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: top level must be an object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{path}: missing or non-list key {key!r}")
    images: dict[int, dict] = {}
    by_file: dict[str, int] = {}
    for im in data["images"]:
        try:
            iid, w, h, fname = int(im["id"]), int(im["width"]), int(im["height"]), str(im["file_name"])
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{path}: image entry {im!r} lacks id/width/height/file_name ({e})") from e
        if iid in images:
            raise DatasetError(f"{path}: duplicate image id {iid}")
        if fname in by_file:
            raise DatasetError(f"{path}: file {fname!r} is listed under two image ids, {by_file[fname]} and {iid}")
        by_file[fname] = iid
        if w <= 0 or h <= 0:
            raise DatasetError(f"{path}: image {iid} ({fname}) has size {w}x{h}")
        images[iid] = im
    cats: dict[int, dict] = {}
    cat_names: dict[str, int] = {}
    for c in data["categories"]:
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise DatasetError(f"{path}: category entry {c!r} lacks id/name")
        if int(c["id"]) in cats:
            raise DatasetError(f"{path}: duplicate category id {c['id']}")
        if c["name"] in cat_names:
            raise DatasetError(
                f"{path}: category name {c['name']!r} is used by two categories, ids {cat_names[c['name']]} and {c['id']}")
        cats[int(c["id"])] = c
        cat_names[c["name"]] = int(c["id"])
    whole = _rles_cover_images(data["annotations"], images)
    for ann, rle_ok in zip(data["annotations"], whole):
        _validate_annotation(path, ann, images, cats, rle_checked=rle_ok)
    _VALID_ANNOTATIONS.add(digest)
    return data


# sha256 of the annotation files that passed load_annotations' checks in this process: the checks depend on
# the bytes alone, so a warm kernel's later runs (and a run's second reader of the same file) skip them
_VALID_ANNOTATIONS: set[str] = set()


def _rles_cover_images(annotations: list, images: Mapping[int, dict]) -> np.ndarray:
    """Per annotation, whether it is a compressed RLE of its image's size whose runs are non-negative and
    cover the image exactly: every string decoded in one numpy pass (what :func:`_compressed_runs` does for
    one string, vectorised over the annotations). False says only "not shown here": :func:`_validate_annotation` checks those one by one
    and names the problem."""
    ok = np.zeros(len(annotations), dtype=bool)
    picked, texts, pixels = [], [], []
    for i, ann in enumerate(annotations):
        seg = ann.get("segmentation") if isinstance(ann, dict) else None
        try:
            im = images.get(ann.get("image_id")) if isinstance(seg, dict) else None
        except TypeError:  # an unhashable image id: _validate_annotation names it
            continue
        if im is None or not isinstance(seg.get("counts"), str) or not seg["counts"] or not seg["counts"].isascii():
            continue
        if list(seg.get("size", [])) != [int(im["height"]), int(im["width"])]:
            continue
        picked.append(i)
        texts.append(seg["counts"])
        pixels.append(int(im["height"]) * int(im["width"]))
    if not picked:
        return ok
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    codes = np.frombuffer("".join(texts).encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    text_starts = np.cumsum(lengths) - lengths  # every string is non-empty: segments for reduceat
    ends = text_starts + lengths - 1
    valid = (codes >= 0) & (codes < 64)
    good = np.logical_and.reduceat(valid, text_starts) & ((codes[ends] & 0x20) == 0)  # none ends inside a run
    codes = np.where(valid, codes, 0)
    codes[ends] &= ~0x20  # runs never continue across strings (those that would are not good)
    last = np.flatnonzero((codes & 0x20) == 0)  # the last group of every run
    first = np.concatenate([[0], last[:-1] + 1])
    groups = last - first + 1
    text_of_run = np.repeat(np.arange(len(texts)), lengths)[last]
    good[text_of_run[groups > 12]] = False  # over 60 bits could overflow int64
    groups = np.minimum(groups, 12)
    shift = np.minimum(5 * (np.arange(codes.size) - np.repeat(first, last - first + 1)), 55)
    values = np.add.reduceat((codes & 0x1F) << shift, first)
    negative = (codes[last] & 0x10) != 0
    values[negative] -= np.int64(1) << (5 * groups[negative])
    # runs[i] = values[i] + runs[i - 2] from the string's fourth run on: running sums, restarted per string,
    # over its odd runs from 1 and its even runs from 2
    run_starts = np.searchsorted(text_of_run, np.arange(len(texts)))
    local = np.arange(last.size) - run_starts[text_of_run]
    for chain in ((local % 2 == 1), (local % 2 == 0) & (local >= 2)):
        sub, who = values[chain], text_of_run[chain]
        if sub.size:
            sums = np.cumsum(sub)
            starts = np.flatnonzero(np.concatenate([[True], who[1:] != who[:-1]]))
            before = np.concatenate([[0], sums[starts[1:] - 1]])
            values[chain] = sums - np.repeat(before, np.diff(np.concatenate([starts, [sub.size]])))
    good &= np.minimum.reduceat(values, run_starts) >= 0
    good &= np.add.reduceat(values, run_starts) == np.asarray(pixels, dtype=np.int64)
    ok[np.asarray(picked)] = good
    return ok


def _validate_annotation(path: Path, ann: dict, images: Mapping[int, dict], cats: Mapping[int, dict],
                         rle_checked: bool = False) -> None:
    aid = ann.get("id", "?")
    if ann.get("image_id") not in images:
        raise DatasetError(f"{path}: annotation {aid} names unknown image id {ann.get('image_id')!r}")
    if ann.get("category_id") not in cats:
        raise DatasetError(f"{path}: annotation {aid} names unknown category id {ann.get('category_id')!r}")
    im = images[ann["image_id"]]
    w, h = int(im["width"]), int(im["height"])
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        if not seg:
            raise DatasetError(f"{path}: annotation {aid} has an empty polygon list")
        for poly in seg:
            xy = np.asarray(poly, dtype=float)
            if xy.ndim != 1 or xy.size < 6 or xy.size % 2:
                raise DatasetError(f"{path}: annotation {aid} has a polygon with {xy.size} coordinates")
            xs, ys = xy[0::2], xy[1::2]
            t = POLYGON_TOLERANCE_PX
            if xs.min() < -t or ys.min() < -t or xs.max() > w + t or ys.max() > h + t:
                raise DatasetError(
                    f"{path}: annotation {aid} has a polygon outside image {ann['image_id']} "
                    f"({im['file_name']}, {w}x{h}): x in [{xs.min():g}, {xs.max():g}], y in [{ys.min():g}, {ys.max():g}]"
                )
    elif isinstance(seg, dict):
        if "counts" not in seg or list(seg.get("size", [])) != [h, w]:
            raise DatasetError(
                f"{path}: annotation {aid} has an RLE of size {seg.get('size')!r}, image {ann['image_id']} is {[h, w]}"
            )
        problem = None if rle_checked else rle_problem(seg["counts"], h * w)
        if problem:
            raise DatasetError(
                f"{path}: annotation {aid} (image {ann['image_id']}, {im['file_name']}) has a corrupt RLE: {problem}")
    else:
        raise DatasetError(f"{path}: annotation {aid} has no polygon or RLE segmentation")


def rle_problem(counts: Any, n_pixels: int) -> str | None:
    """Why RLE ``counts`` (a list of run lengths, or COCO's compressed string) cannot describe ``n_pixels``
    pixels; None when the runs are non-negative and cover them exactly."""
    if isinstance(counts, str):
        try:
            runs = _compressed_runs(counts)
        except ValueError as exc:
            return str(exc)
    elif isinstance(counts, list) and all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
        runs = counts
    else:
        return "counts must be a list of integers or a compressed string"
    if any(r < 0 for r in runs):
        return "a negative run length"
    if sum(runs) != n_pixels:
        return f"its runs cover {sum(runs)} pixels, the image has {n_pixels}"
    return None


def _compressed_runs(text: str) -> list[int]:
    """Run lengths of COCO's compressed RLE string: per run, 5-bit groups (low first) in characters from '0'
    (48), bit 0x20 set while more groups follow, bit 0x10 of the last group the sign; from the fourth run on,
    each value is the difference to the run two before."""
    runs: list[int] = []
    pos = 0
    while pos < len(text):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(text):
                raise ValueError("the string ends inside a run length")
            code = ord(text[pos]) - 48
            if not 0 <= code < 64:
                raise ValueError(f"character {text[pos]!r} at {pos} is not part of the encoding")
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            pos += 1
            shift += 5
            if not more and code & 0x10:
                value -= 1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def read_image(annotation_file: str | os.PathLike, image_dir: str | os.PathLike, image: Mapping) -> np.ndarray:
    """The image of one ``images`` entry of ``annotation_file`` as uint8 ``H x W x 3`` RGB; a missing, corrupt or
    wrongly sized file is an error naming both."""
    image_id, f = image["id"], Path(image_dir) / image["file_name"]
    hw = (int(image["height"]), int(image["width"]))
    try:
        with Image.open(f) as im:
            arr = np.array(im.convert("RGB"))
    except FileNotFoundError as e:
        raise DatasetError(f"{annotation_file}: image {image_id} file {f} not found") from e
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DatasetError(f"{annotation_file}: image {image_id} file {f} is unreadable or corrupt ({e})") from e
    if arr.shape[:2] != hw:
        raise DatasetError(f"{annotation_file}: image {image_id} file {f} is {arr.shape[1]}x{arr.shape[0]}, "
                           f"annotation says {hw[1]}x{hw[0]}")
    return arr


def annotation_rle(ann: dict, height: int, width: int) -> dict:
    """One annotation's segmentation as a compressed RLE (polygons rasterised by pycocotools)."""
    seg = ann["segmentation"]
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    if isinstance(seg["counts"], list):  # uncompressed RLE
        return mask_utils.frPyObjects(seg, height, width)
    return {"size": seg["size"], "counts": seg["counts"].encode() if isinstance(seg["counts"], str) else seg["counts"]}


# ---------------------------------------------------------------------------------------------- concepts
def resolve_concepts(
    data: dict,
    concepts: None | Sequence[str] | Mapping[str, Any],
    concept_categories: Mapping[str, str] | None = None,
    source: str = "",
) -> list[Concept]:
    """Turn a concept definition into :class:`Concept` objects.

    Parameters
    ----------
    data : validated COCO dict.
    concepts : ``None`` (every category is a concept); a list of names, each a category name or a
        supercategory name (which groups all its categories); or a dict name -> list of category names,
        or name -> ``{"categories": [...], "category": "object"}``.
    concept_categories : name -> concept category overrides.
    source : file name used in error messages.

    The concept category is, in order: the dict's ``category``; ``concept_categories``; the shared
    supercategory of its categories if that is one of :data:`CONCEPT_CATEGORIES`; otherwise ``"object"``.
    """
    by_name = {c["name"]: c for c in data["categories"]}
    by_super: dict[str, list[dict]] = {}
    for c in data["categories"]:
        by_super.setdefault(c.get("supercategory", ""), []).append(c)
    overrides = dict(concept_categories or {})
    spec: dict[str, tuple[list[str], str | None]] = {}
    if concepts is None:
        spec = {c["name"]: ([c["name"]], None) for c in data["categories"]}
    elif isinstance(concepts, Mapping):
        for name, v in concepts.items():
            if isinstance(v, Mapping):
                spec[name] = (list(v.get("categories", [name])), v.get("category"))
            else:
                spec[name] = ([v] if isinstance(v, str) else list(v), None)
    else:
        for name in concepts:
            if name in by_name:
                spec[name] = ([name], None)
            elif name in by_super:
                spec[name] = ([c["name"] for c in by_super[name]], None)
            else:
                raise DatasetError(f"{source}: concept {name!r} is neither a category nor a supercategory")
    out = []
    for name, (cat_names, category) in spec.items():
        unknown = [n for n in cat_names if n not in by_name]
        if unknown or not cat_names:
            raise DatasetError(f"{source}: concept {name!r} names unknown categories {unknown or cat_names}")
        if category is None:
            category = overrides.get(name)
        if category is None:
            supers = {by_name[n].get("supercategory") for n in cat_names}
            sup = supers.pop() if len(supers) == 1 else None
            category = sup if sup in CONCEPT_CATEGORIES else "object"
        out.append(Concept(name, str(category), tuple(int(by_name[n]["id"]) for n in cat_names)))
    return out


# ---------------------------------------------------------------------------------------------- splits
def split_assignment(
    image_ids: Iterable[int], seed: int = 0, fractions: Sequence[float] = (0.6, 0.2, 0.2)
) -> dict[int, str]:
    """Deterministic, disjoint train/val/test assignment by image id.

    The sorted ids are permuted with ``numpy.random.default_rng(seed)`` and cut at the cumulative
    fractions (rounded), so the split depends only on the set of ids, the seed and the fractions.
    """
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions!r}")
    ids = np.array(sorted(set(int(i) for i in image_ids)), dtype=np.int64)
    perm = ids[np.random.default_rng(seed).permutation(len(ids))]
    n_train = int(round(fr[0] * len(ids)))
    n_val = int(round((fr[0] + fr[1]) * len(ids))) - n_train
    out = {}
    for k, iid in enumerate(perm.tolist()):
        out[iid] = "train" if k < n_train else "val" if k < n_train + n_val else "test"
    return out


# ---------------------------------------------------------------------------------------------- dataset
class ConceptDataset(Dataset):
    """A COCO-format concept dataset, served in a model's input geometry.

    Parameters
    ----------
    source_or_annotation_file : a :class:`DatasetSource` or the path of an instances JSON.
    image_dir : folder of the images; default: the source's, else ``<json dir>/images`` if it exists,
        else the JSON's folder.
    concepts : see :func:`resolve_concepts`; default: the source's default concepts, else all categories.
    split : ``"train"``, ``"val"``, ``"test"`` or ``None`` (all images).
    split_seed, fractions : the split (see :func:`split_assignment`).
    split_by : a grouped split rule (:mod:`conceptsim.data.splits`, e.g. ``{"by": "style", "test": [...],
        "val": [...]}``), ``"random"`` for the random split by image, or ``None``: the source's default
        rule (random for a bare annotation file).
    min_area : presence label rule: ``labels[k] = 1`` iff the concept's mask covers at least
        ``min_area`` of the image area (at full resolution).
    preprocessing : the model's input geometry; default: a 224 x 224 letterbox (for inspection only; the
        pipeline always passes the model's own).
    eval_grid : ``(gh, gw)`` grid over the *image* frame for evaluation masks. A cell is 1 iff at least
        half of its area is inside the mask (exact area fraction >= 0.5, see :func:`area_fraction_grid`).
    max_images : keep at most this many images per split (the smallest ids); for smoke runs.

    Attributes
    ----------
    concepts : the concepts served, in mask/label order.
    has_objects : whether the served concepts include an object concept (:func:`is_object_category`) and
        the file has object categories. Then the dataset also serves the *every-object* control: per image
        the union of all instances of every object category, whatever the concepts
        (:meth:`object_mask`, :meth:`object_label`; items hold ``objects_eval`` and ``object_label``).
    excluded_concepts : concepts dropped because some split has no positive image, each a dict with
        ``concept``, ``split`` and ``reason``. The check covers all three splits, so every split of one
        configuration serves the same concepts.
    image_ids : ids of the served images: with ``split``, that split's ids sorted; without, split-major
        (train, then val, then test, each sorted), so that each split is one contiguous run of rows in
        the activation stores and a pass over one split reads only its own store chunks.
    """

    def __init__(
        self,
        source_or_annotation_file: DatasetSource | str | os.PathLike,
        image_dir: str | os.PathLike | None = None,
        *,
        concepts: None | Sequence[str] | Mapping[str, Any] = None,
        split: str | None = None,
        split_seed: int = 0,
        fractions: Sequence[float] = (0.6, 0.2, 0.2),
        min_area: float = 0.005,
        preprocessing: Preprocessing | None = None,
        eval_grid: Sequence[int] = (112, 112),
        max_images: int | None = None,
        split_by: Mapping | str | None = None,
    ) -> None:
        if isinstance(source_or_annotation_file, DatasetSource):
            src = source_or_annotation_file
            split_by = split_by if split_by is not None else src.split
            self.annotation_file = Path(src.annotation_file)
            image_dir = image_dir if image_dir is not None else src.image_dir
            concepts = concepts if concepts is not None else src.concepts
            overrides = src.concept_categories
        else:
            self.annotation_file = Path(source_or_annotation_file)
            overrides = {}
        if image_dir is None:
            guess = self.annotation_file.parent / "images"
            image_dir = guess if guess.is_dir() else self.annotation_file.parent
        self.image_dir = Path(image_dir)
        if split not in (None, *SPLITS):
            raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
        if not 0 <= min_area < 1:
            raise ValueError(f"min_area must be in [0, 1), got {min_area}")
        self.split = split
        self.min_area = float(min_area)
        self.preprocessing = preprocessing or Preprocessing(size=(224, 224), resize="letterbox")
        self.eval_grid = (int(eval_grid[0]), int(eval_grid[1]))
        self.target_grids: tuple[tuple[int, int], ...] = ()

        data = load_annotations(self.annotation_file)
        self._images = {int(im["id"]): im for im in data["images"]}
        all_concepts = resolve_concepts(data, concepts, overrides, str(self.annotation_file))
        self.split_rule = check_split(split_by, "split_by")
        if self.split_rule is None:
            self._split_of = split_assignment(self._images, split_seed, fractions)
        else:
            try:
                self._split_of = grouped_assignment(self._images, self.split_rule, split_seed, fractions, str(self.annotation_file))
            except ValueError as e:
                raise DatasetError(str(e)) from e
        per_split = {
            s: sorted(i for i, t in self._split_of.items() if t == s)[: max_images or None] for s in SPLITS
        }
        used = sorted(i for s in SPLITS for i in per_split[s])
        rles = self._concept_rles(data, all_concepts, used)
        areas = np.array([[mask_utils.area(r) if r is not None else 0 for r in rles[i]] for i in used], dtype=np.int64)
        self._area_fraction = dict(zip(used, areas / np.array([self._hw(i)[0] * self._hw(i)[1] for i in used])[:, None]))

        self.excluded_concepts: list[dict] = []
        keep = []
        for k, c in enumerate(all_concepts):
            empty = [s for s in SPLITS if per_split[s] and not any(self._area_fraction[i][k] >= self.min_area for i in per_split[s])]
            if empty:
                for s in empty:
                    self.excluded_concepts.append(
                        {"concept": c.name, "split": s, "reason": f"no positive image (area >= {self.min_area:g}) in split {s!r}"}
                    )
                log.warning("%s: concept %r excluded: no positive image in split(s) %s", self.annotation_file, c.name, empty)
            else:
                keep.append(k)
        self.concepts = [all_concepts[k] for k in keep]
        self._rles = {i: [rles[i][k] for k in keep] for i in used}
        self._area_fraction = {i: a[keep] for i, a in self._area_fraction.items()}
        object_ids = {c.category_ids[0] for c in resolve_concepts(data, None, overrides, str(self.annotation_file))
                      if is_object_category(c.category)}
        self.has_objects = bool(object_ids) and any(is_object_category(c.category) for c in self.concepts)
        self._object_rles: dict[int, Any] = {}
        self._object_area: dict[int, float] = {}
        if self.has_objects:
            every = Concept("every object", "control", tuple(sorted(object_ids)))
            self._object_rles = {i: r[0] for i, r in self._concept_rles(data, [every], used).items()}
            self._object_area = {i: (mask_utils.area(r) if r is not None else 0) / (self._hw(i)[0] * self._hw(i)[1])
                                 for i, r in self._object_rles.items()}
        self.image_ids = list(per_split[split]) if split else [i for s in SPLITS for i in per_split[s]]
        for iid in self.image_ids:
            f = self.image_dir / self._images[iid]["file_name"]
            if not f.is_file():
                raise DatasetError(f"{self.annotation_file}: image {iid} file {f} not found")

    # -------------------------------------------------------------------------------------- internals
    def _hw(self, image_id: int) -> tuple[int, int]:
        im = self._images[image_id]
        return int(im["height"]), int(im["width"])

    def _concept_rles(self, data: dict, concepts: list[Concept], image_ids: list[int]) -> dict[int, list]:
        """Per image, per concept: the union of its instances as one RLE (``None`` when absent)."""
        wanted = set(image_ids)
        cat_to_k: dict[int, list[int]] = {}
        for k, c in enumerate(concepts):
            for cid in c.category_ids:
                cat_to_k.setdefault(cid, []).append(k)
        parts: dict[int, list[list]] = {i: [[] for _ in concepts] for i in image_ids}
        for ann in data["annotations"]:
            iid = ann["image_id"]
            if iid not in wanted or ann["category_id"] not in cat_to_k:
                continue
            rle = annotation_rle(ann, *self._hw(iid))
            for k in cat_to_k[ann["category_id"]]:
                parts[iid][k].append(rle)
        return {
            i: [None if not p else p[0] if len(p) == 1 else mask_utils.merge(p, intersect=False) for p in parts[i]]
            for i in image_ids
        }

    # -------------------------------------------------------------------------------------- public
    def split_of(self, image_id: int) -> str:
        """The split ("train"/"val"/"test") of an image id of this annotation file."""
        return self._split_of[int(image_id)]

    def __len__(self) -> int:
        return len(self.image_ids)

    def file_of(self, image_id: int) -> Path:
        return self.image_dir / self._images[int(image_id)]["file_name"]

    def read_image(self, image_id: int) -> np.ndarray:
        """The image as uint8 ``H x W x 3`` RGB; a missing, corrupt or wrongly sized file is an error."""
        return read_image(self.annotation_file, self.image_dir, self._images[int(image_id)])

    def masks(self, image_id: int) -> np.ndarray:
        """Full-resolution concept masks ``K x H x W`` uint8 {0, 1} (union of instances)."""
        h, w = self._hw(image_id)
        out = np.zeros((len(self.concepts), h, w), dtype=np.uint8)
        for k, rle in enumerate(self._rles[int(image_id)]):
            if rle is not None:
                out[k] = mask_utils.decode(rle)
        return out

    def object_mask(self, image_id: int) -> np.ndarray:
        """The every-object mask ``H x W`` uint8 {0, 1}: the union of all instances of every object category."""
        if not self.has_objects:
            raise ValueError(f"{self.annotation_file}: no every-object mask: the served concepts are not objects")
        h, w = self._hw(image_id)
        rle = self._object_rles[int(image_id)]
        return mask_utils.decode(rle) if rle is not None else np.zeros((h, w), np.uint8)

    def object_label(self, image_id: int) -> int:
        """"Some object present": 1 iff the every-object mask covers at least ``min_area`` of the image."""
        if not self.has_objects:
            raise ValueError(f"{self.annotation_file}: no every-object label: the served concepts are not objects")
        return int(self._object_area[int(image_id)] >= self.min_area)

    def presence_limits(self, min_area: float, max_images: int | None) -> tuple[float, int | None]:
        """How far ``min_area`` and ``max_images`` may go before no concept is left (a concept is kept when every
        split holds an image whose mask covers ``min_area``; see the class). For a dataset opened with
        ``min_area=0`` and no ``max_images`` (every image and concept): returns the largest ``min_area`` that
        keeps a concept with ``max_images`` images per split, and the fewest images per split that keep one at
        ``min_area`` (None when no number of images does)."""
        per_split = [sorted(i for i, s in self._split_of.items() if s == split) for split in SPLITS]
        per_split = [ids for ids in per_split if ids]
        if not per_split or not self.concepts:
            return 0.0, None
        largest = max(min(float(max(self._area_fraction[i][k] for i in ids[: max_images or None])) for ids in per_split)
                      for k in range(len(self.concepts)))
        fewest: int | None = None
        for k in range(len(self.concepts)):
            firsts = [next((j for j, i in enumerate(ids) if self._area_fraction[i][k] >= min_area), None) for ids in per_split]
            if None not in firsts:
                need = max(firsts) + 1
                fewest = need if fewest is None else min(fewest, need)
        return largest, fewest

    def fewest_images_to_classify(self, min_area: float) -> int | None:
        """For a dataset opened as for :meth:`presence_limits`: the fewest images per split (``max_images``)
        with which some concept has, in every split, an image whose mask covers ``min_area`` and an image whose
        mask does not -- what an image-level classification probe needs (``concepts.stage.exclusions``);
        None when no number of images gives one."""
        per_split = [ids for ids in (sorted(i for i, s in self._split_of.items() if s == split) for split in SPLITS) if ids]
        fewest: int | None = None
        for k in range(len(self.concepts)):
            need = 0
            for ids in per_split:
                present = [self._area_fraction[i][k] >= min_area for i in ids]
                if True not in present or False not in present:
                    need = None
                    break
                need = max(need, present.index(True) + 1, present.index(False) + 1)
            if need is not None and per_split:
                fewest = need if fewest is None else min(fewest, need)
        return fewest

    def area_fractions(self, image_id: int) -> np.ndarray:
        """Per concept, the fraction of the image its mask covers (from RLE areas)."""
        return self._area_fraction[int(image_id)]

    def content_box_of(self, image_id: int) -> tuple[float, float, float, float]:
        """Where the image lies in the model's input frame (see :meth:`Preprocessing.content_box`)."""
        return self.preprocessing.content_box(self._hw(int(image_id)))

    def labels_of(self, image_id: int) -> np.ndarray:
        """Presence labels ``K`` uint8: mask area >= ``min_area`` x image area."""
        return (self._area_fraction[int(image_id)] >= self.min_area).astype(np.uint8)

    def with_targets(self, grids: Sequence[Sequence[int]]) -> "ConceptDataset":
        """This dataset serving soft targets on activation ``grids`` instead of input-size masks.

        Items then hold ``targets``, a list with one float16 ``K x grid`` tensor per grid
        (:meth:`Preprocessing.mask_targets`), and neither ``masks_input`` nor ``image``: the mask store
        needs only the targets (computing them straight from the image-size masks is several times
        cheaper) and the images are read by the forward loop.
        """
        out = copy.copy(self)
        out.target_grids = tuple((int(g[0]), int(g[1])) for g in grids)
        return out

    def images_only(self) -> Dataset:
        """The images of this dataset in the model's input geometry, without masks (the bare forward's input)."""
        return _Images(self)

    def __getitem__(self, index: int) -> dict:
        iid = self.image_ids[index]
        masks = self.masks(iid)
        pp = self.preprocessing
        spatial: dict[str, Any]
        if self.target_grids:  # the evaluation masks and every grid's targets in one pass over the present planes
            hw = masks.shape[1:]
            fractions, *targets = separable_planes(
                masks, [(eval_matrices(hw, self.eval_grid), np.float64)]
                + [(pp.target_matrices(hw, g), np.float32) for g in self.target_grids])
            spatial = {"targets": [torch.from_numpy(t.astype(np.float16)) for t in targets]}
        else:
            fractions = area_fraction_grid(masks, self.eval_grid)
            spatial = {"image": pp.apply_image(self.read_image(iid)), "masks_input": pp.apply_mask(masks)}
        if self.has_objects:  # the every-object control on the evaluation grid, by the same cell rule
            every = area_fraction_grid(self.object_mask(iid)[None], self.eval_grid)[0]
            spatial["objects_eval"] = torch.from_numpy((every >= 0.5).astype(np.uint8))
            spatial["object_label"] = torch.tensor(self.object_label(iid), dtype=torch.uint8)
        return {
            **spatial,
            "masks_eval": torch.from_numpy((fractions >= 0.5).astype(np.uint8)),
            "labels": torch.from_numpy(self.labels_of(iid)),
            "content_box": torch.tensor(self.content_box_of(iid), dtype=torch.float32),
            "image_id": iid,
            "split": self._split_of[iid],
        }


class _Images(Dataset):
    """The images of a :class:`ConceptDataset` in the model's input geometry: item ``i`` is one ``3 x size``
    tensor."""

    def __init__(self, dataset: ConceptDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        d = self.dataset
        return d.preprocessing.apply_image(d.read_image(d.image_ids[index]))


def collate(items: list[dict]) -> dict:
    """Stack items of :class:`ConceptDataset` into a batch (``image_id`` -> int64 tensor, ``split`` -> list,
    ``targets`` -> a list with one stacked tensor per grid; ``objects_eval`` and ``object_label`` when the
    dataset has objects)."""
    keys = [k for k in ("image", "masks_input", "masks_eval", "labels", "content_box", "objects_eval", "object_label")
            if k in items[0]]
    out = {k: torch.stack([it[k] for it in items]) for k in keys}
    if "targets" in items[0]:
        out["targets"] = [torch.stack([it["targets"][j] for it in items]) for j in range(len(items[0]["targets"]))]
    out["image_id"] = torch.tensor([it["image_id"] for it in items], dtype=torch.int64)
    out["split"] = [it["split"] for it in items]
    return out


def make_loader(dataset: ConceptDataset, batch_size: int, num_workers: int = 0, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A DataLoader over ``dataset`` with :func:`collate`; in-order unless ``shuffle`` (seeded)."""
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, collate_fn=collate, generator=gen,
        persistent_workers=False,
    )
