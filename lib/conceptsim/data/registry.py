"""Named datasets and :func:`ensure_dataset`, the one way the pipeline obtains a dataset.

Embedded datasets are built into ``datasets_dir()/<name>-<paramhash>/`` (the hash covers the builder's
name, version and parameters), so a different parameter set never reuses a stale build and the same one
is built once. A build happens in a temporary folder that is renamed into place; ``build.json`` is written
last, and a folder without it counts as incomplete and is rebuilt.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from conceptsim.atomic import sha256_file, sha256_json, write_json
from conceptsim.data import fetch, photo_colors, shapes
from conceptsim.data.coco import DatasetSource
from conceptsim.paths import datasets_dir


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset.

    Attributes
    ----------
    name : registry key.
    kind : ``"embedded"`` (built offline from installed packages) or ``"online"`` (fetched).
    description : one line for listings and the book.
    build : ``build(out_dir, **params) -> annotation file`` (embedded) or ``fetch(root) -> DatasetSource``.
    defaults, smoke : build parameters of a full and of a smoke run (embedded only).
    version : builder version, part of the cache key.
    concept_categories, concepts : passed on to :class:`DatasetSource`.
    """

    name: str
    kind: str
    description: str
    build: Callable
    defaults: dict = field(default_factory=dict)
    smoke: dict = field(default_factory=dict)
    version: int = 1
    concept_categories: dict = field(default_factory=dict)
    concepts: dict | None = None


DATASETS: dict[str, DatasetSpec] = {
    "shapes": DatasetSpec(
        "shapes", "embedded", "synthetic composites of textured backgrounds and coloured/textured shapes, exact masks",
        shapes.build_shapes, {"n": 1200, "size": 320, "seed": 0}, {"n": 60, "size": 128, "seed": 0},
        shapes.BUILDER_VERSION, {name: sup for name, sup in shapes.categories()},
    ),
    "photo-colors": DatasetSpec(
        "photo-colors", "embedded", "crops of real photos shipped in packages, per-pixel Broden colour names",
        photo_colors.build_photo_colors, {"n": 400, "size": 224, "seed": 0}, {"n": 40, "size": 96, "seed": 0},
        photo_colors.BUILDER_VERSION, {c: "colour" for c in photo_colors.COLOUR_NAMES},
    ),
    "coco2017-val": DatasetSpec(
        "coco2017-val", "online", "COCO val2017 instance masks (person, vehicles, animals)",
        fetch.fetch_coco2017_val, concept_categories=fetch.object_categories(fetch.COCO_CONCEPTS),
        concepts=fetch.COCO_CONCEPTS,
    ),
    "voc2012": DatasetSpec(
        "voc2012", "online", "Pascal VOC 2012 segmentation (train+val), converted to COCO format",
        fetch.fetch_voc2012, concept_categories=fetch.object_categories(fetch.VOC_CONCEPTS), concepts=fetch.VOC_CONCEPTS,
    ),
}


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def build_params(name: str, smoke: bool = False, **overrides) -> dict:
    """The full parameter set of an embedded build (defaults or smoke values, then ``overrides``)."""
    spec = _spec(name)
    # ``workers`` changes speed, not output, so it is no build parameter (nor part of the cache key)
    unknown = set(overrides) - (set(inspect.signature(spec.build).parameters) - {"out_dir", "workers"})
    if spec.kind != "embedded" or unknown:
        raise ValueError(f"dataset {name!r} takes no build parameters {sorted(unknown or overrides)}")
    return {**(spec.smoke if smoke else spec.defaults), **overrides}


def dataset_dir(name: str, params: dict) -> Path:
    """Cache folder of an embedded build: ``datasets_dir()/<name>-<12 hex of the parameter hash>``."""
    key = sha256_json({"name": name, "version": _spec(name).version, "params": params})[:12]
    return datasets_dir() / f"{name}-{key}"


def ensure_dataset(name: str, smoke: bool = False, root: str | os.PathLike | None = None, **params) -> DatasetSource:
    """Return the dataset ``name``, building or fetching it first if needed.

    Parameters
    ----------
    name : a key of :data:`DATASETS`.
    smoke : embedded datasets: use the tiny smoke parameters (``shapes`` n=60 at 128 px,
        ``photo-colors`` n=40 at 96 px).
    root : online datasets: an existing local copy (see :mod:`conceptsim.data.fetch`).
    **params : embedded datasets: build parameters overriding the defaults (``n``, ``size``, ``seed``).

    Raises
    ------
    conceptsim.data.fetch.DatasetUnavailable
        An online dataset is absent and cannot be downloaded; the message says which files to place where.
    """
    spec = _spec(name)
    if spec.kind == "online":
        if params:
            raise ValueError(f"dataset {name!r} takes no build parameters, got {sorted(params)}")
        return spec.build(root)
    if root is not None:
        raise ValueError(f"dataset {name!r} is built, not fetched: root= does not apply")
    full = build_params(name, smoke, **params)
    out = dataset_dir(name, full)
    marker = out / "build.json"
    if not marker.is_file():
        ann = spec.build(out, **full)
        write_json(marker, {"name": name, "version": spec.version, "params": full, "annotations_sha256": sha256_file(ann)})
    meta = json.loads(marker.read_text())
    return DatasetSource(
        name=name, annotation_file=out / "annotations.json", image_dir=out / "images",
        sha256=sha256_json({"annotations": meta["annotations_sha256"], "params": full}),
        concept_categories=dict(spec.concept_categories), concepts=spec.concepts, params=full,
    )
