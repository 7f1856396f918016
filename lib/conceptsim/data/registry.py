"""Named datasets, :func:`ensure_dataset` and :func:`open_source`, the one way the pipeline obtains a dataset.

:func:`open_source` serves every dataset a study names: a registry dataset (built or fetched first by
:func:`ensure_dataset`) or one the study file declares (the user's own COCO-format folder,
:mod:`conceptsim.data.user_datasets`).

Embedded datasets are built into ``datasets_dir()/<name>-<paramhash>/`` (the hash covers the builder's
name, version and parameters), so a different parameter set never reuses a stale build and the same one
is built once. A build happens in a temporary folder that is renamed into place together with its
``build.json`` (name, version, parameters and a sha256 manifest of every file it wrote); a folder without
it counts as incomplete and is rebuilt. Opening a build checks its files against the manifest.

``conceptsim data build NAME --out DIR`` writes into a folder the user chose: :func:`build_into` replaces
it only when it is empty or holds a previous build of the same dataset and nothing else; anything else
needs ``overwrite=True``, and the caller is told what is removed.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from conceptsim.atomic import atomic_path, debris_pid, exclusive, pid_alive, sha256_file, sha256_json, write_json
from conceptsim.data import coco_icons, fetch, photo_colors, shapes
from conceptsim.data.coco import DatasetError, DatasetSource
from conceptsim.data.user_datasets import is_user_dataset, user_source
from conceptsim.paths import datasets_dir

log = logging.getLogger("conceptsim.data.registry")


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
    limits : build parameter -> (lowest, highest or None) accepted value (embedded only).
    choices : build parameter -> its accepted names, for parameters that name an option (coco-icons' ``mode``)
        or a subset (coco-icons' ``styles`` and ``categories``: checked when the study is loaded, before any build).
    version : builder version, part of the cache key.
    concept_categories, concepts : passed on to :class:`DatasetSource` (``concepts`` may be a function of
        the build parameters, for builds whose categories are a parameter).
    split : the dataset's default split rule (see :func:`conceptsim.data.splits.check_split`); ``None``:
        random by image. A study's ``datasets.<name>.split`` replaces it.
    """

    name: str
    kind: str
    description: str
    build: Callable
    defaults: dict = field(default_factory=dict)
    smoke: dict = field(default_factory=dict)
    version: int = 1
    concept_categories: dict = field(default_factory=dict)
    concepts: dict | Callable | None = None
    limits: dict = field(default_factory=dict)
    choices: dict = field(default_factory=dict)
    split: dict | None = None
    missing: Callable[[], str | None] | None = None  # embedded: why its sources are absent here (None: present)
    image_fields: tuple = ()  # embedded: the fields its image records carry besides id, file_name, width, height


DATASETS: dict[str, DatasetSpec] = {
    "shapes": DatasetSpec(
        "shapes", "embedded", "synthetic composites of textured backgrounds and coloured/textured shapes, exact masks",
        shapes.build_shapes, {"n": 1200, "size": 320, "seed": 0}, {"n": 60, "size": 128, "seed": 0},
        shapes.BUILDER_VERSION, {name: sup for name, sup in shapes.categories()},
        limits={"n": (1, None), "size": (32, None), "seed": (0, None)},
    ),
    "photo-colors": DatasetSpec(
        "photo-colors", "embedded", "crops of real photos shipped in packages, per-pixel Broden colour names",
        photo_colors.build_photo_colors, {"n": 400, "size": 224, "seed": 0}, {"n": 40, "size": 96, "seed": 0},
        photo_colors.BUILDER_VERSION, {c: "colour" for c in photo_colors.COLOUR_NAMES},
        limits={"n": (1, None), "size": (16, None), "seed": (0, None), "min_region": (0, 1)},
        # split by source photo, 6 / 4 / 4 of the 14 photos, so that a photo bootstrap of val and test has
        # enough units; this choice keeps 10 of the 11 colours in every split (green is only in zidane.jpg,
        # china.jpg and flower.jpg: one per split; purple only in astronaut.png) and, among such choices,
        # the most colours shown by two or more photos in val and in test
        split={"by": "source", "test": ["astronaut.png", "bus.jpg", "coffee.png", "zidane.jpg"],
               "val": ["chelsea.png", "china.jpg", "ihc.png", "retina.jpg"]},
        image_fields=("source",),
    ),
    "coco-icons": DatasetSpec(
        "coco-icons", "embedded", "COCO object categories as emoji art in six styles on real photos, exact masks",
        coco_icons.build_coco_icons, {"n": 1200, "size": 320, "seed": 0}, {"n": 60, "size": 128, "seed": 0},
        coco_icons.BUILDER_VERSION, {**coco_icons.concept_categories(), coco_icons.CUE_CONCEPT: coco_icons.CUE_SUPERCATEGORY},
        coco_icons.concepts_of_build, limits={"n": (1, None), "size": (64, None), "seed": (0, None), "cue": (0, 1)},
        missing=coco_icons.missing_sources,
        choices={"mode": tuple(coco_icons.MODES), "styles": tuple(coco_icons.STYLES),
                 "categories": tuple(c.name for c in coco_icons.CATEGORIES)},
        image_fields=("style", "background"),
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


def option_problems(name: str, options: dict) -> list[str]:
    """What in an embedded dataset's study options names something its builds do not have (read from the
    registry, nothing built): concepts and the categories they group, the image field of ``split.by`` and
    ``bootstrap_by``, and coco-icons styles in a split. Each problem names its key under ``datasets.<name>``."""
    spec = _spec(name)
    if spec.kind != "embedded":
        return []
    build = options.get("build") if isinstance(options.get("build"), dict) else {}
    problems: list[str] = []
    try:
        full = build_params(name, False, **build)
        groups = spec.concepts(full) if callable(spec.concepts) else None
    except (ValueError, KeyError, TypeError):
        return []  # the build parameters themselves are wrong: reported by their own rules
    categories = set(c for names in groups.values() for c in names) if groups else set(spec.concept_categories)
    names = set(groups) | categories if groups else categories | set(spec.concept_categories.values())
    concepts = options.get("concepts")
    if isinstance(concepts, list):
        unknown = [c for c in concepts if c not in names]
        if unknown:
            problems.append(f"'datasets.{name}.concepts' names {unknown}, which {name} does not have; accepted: "
                            f"{sorted(names)}")
    elif isinstance(concepts, dict):
        for concept, d in concepts.items():
            cats = d.get("categories", [concept]) if isinstance(d, dict) else [d] if isinstance(d, str) else d
            unknown = [c for c in cats if c not in categories] if isinstance(cats, list) else []
            if unknown:
                problems.append(f"'datasets.{name}.concepts.{concept}' names categories {unknown}, which {name} "
                                f"does not have; accepted: {sorted(categories)}")
    fields = ("id", "file_name", "width", "height", *spec.image_fields)
    split = options.get("split")
    for key, field_name in (("split.by", split.get("by") if isinstance(split, dict) else None),
                            ("bootstrap_by", options.get("bootstrap_by"))):
        if isinstance(field_name, str) and field_name not in fields:
            problems.append(f"'datasets.{name}.{key}' is {field_name!r}, but {name}'s images have no such field; "
                            f"accepted: {', '.join(fields)}")
    if name == "coco-icons" and isinstance(split, dict) and split.get("by") == "style":
        styles = build.get("styles") or list(coco_icons.icon_sources.STYLES)
        for key in ("test", "val"):
            values = split.get(key) or []
            if not isinstance(values, (str, list)):
                continue  # not a list of values: the split rule names it
            unknown = [v for v in ([values] if isinstance(values, str) else values) if v not in styles]
            if unknown:
                problems.append(f"'datasets.{name}.split.{key}' names style(s) {unknown} that the build does not "
                                f"have; accepted: {', '.join(styles)}")
    return problems


def build_parameters(name: str) -> dict:
    """The build parameters of an embedded dataset and their builder defaults (``out_dir``/``workers`` excluded:
    ``workers`` changes speed, not output, so it is no build parameter nor part of the cache key)."""
    spec = _spec(name)
    if spec.kind != "embedded":
        return {}
    sig = inspect.signature(spec.build).parameters
    return {k: p.default for k, p in sig.items() if k not in ("out_dir", "workers")}


def build_params(name: str, smoke: bool = False, **overrides) -> dict:
    """The full parameter set of an embedded build (defaults or smoke values, then ``overrides``)."""
    spec = _spec(name)
    unknown = set(overrides) - set(build_parameters(name))
    if spec.kind != "embedded" or unknown:
        raise ValueError(f"dataset {name!r} takes no build parameters {sorted(unknown or overrides)}")
    return {**(spec.smoke if smoke else spec.defaults), **overrides}


def dataset_dir(name: str, params: dict) -> Path:
    """Cache folder of an embedded build: ``datasets_dir()/<name>-<12 hex of the parameter hash>``."""
    key = sha256_json({"name": name, "version": _spec(name).version, "params": params})[:12]
    return datasets_dir() / f"{name}-{key}"


MARKER = "build.json"


def _manifest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MARKER}


def _build(name: str, out: Path, params: dict) -> Path:
    """Build into ``out`` (replaced atomically, together with its ``build.json`` and manifest)."""
    spec = _spec(name)
    with atomic_path(out) as tmp:
        spec.build(tmp, **params)
        write_json(tmp / MARKER, {"name": name, "version": spec.version, "params": params,
                                  "annotations_sha256": sha256_file(tmp / "annotations.json"),
                                  "files": _manifest(tmp)})
    return out / "annotations.json"


def read_marker(folder: Path) -> dict | None:
    """The ``build.json`` of a complete build in ``folder`` (None when absent, unreadable or pre-manifest)."""
    try:
        meta = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and isinstance(meta.get("files"), dict) else None


def verify_build(folder: Path, meta: dict) -> None:
    """Check every file of a build against its manifest; a missing or changed file is a DatasetError naming it."""
    for rel, digest in meta["files"].items():
        f = folder / rel
        if not f.is_file():
            raise DatasetError(f"{f}: listed in the build manifest {folder / MARKER} but missing; "
                               f"delete {folder} and build it again")
        got = sha256_file(f)
        if got != digest:
            raise DatasetError(f"{f}{_image_record(folder, rel)}: sha256 {got} differs from the build manifest "
                               f"{folder / MARKER} ({digest}); the file was modified or corrupted. "
                               f"Delete {folder} and build it again")


def _image_record(folder: Path, rel: str) -> str:
    try:
        images = json.loads((folder / "annotations.json").read_text())["images"]
    except (OSError, ValueError, KeyError):
        return ""
    ids = [im.get("id") for im in images if f"images/{im.get('file_name')}" == rel]
    return f" (image id {ids[0]})" if ids else ""


def build_into(name: str, out: str | os.PathLike, params: dict, overwrite: bool = False,
               report: Callable[[str], None] = print) -> Path:
    """Build an embedded dataset into a folder the user chose; never removes what a build did not make.

    ``out`` may be absent, empty, or a previous build of the same dataset holding nothing but its own
    files. Otherwise :class:`DatasetError` is raised unless ``overwrite``, in which case ``report`` is
    told what is removed before anything is.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out} exists and is not a folder; choose another --out")
    foreign = _foreign_entries(name, out) if out.is_dir() else []
    if foreign:
        listing = ", ".join(str(p.relative_to(out)) + ("/" if p.is_dir() else "") for p in foreign[:10])
        more = f" and {len(foreign) - 10} more" if len(foreign) > 10 else ""
        if not overwrite:
            raise DatasetError(
                f"{out} is not empty and is not a previous {name} build ({len(foreign)} other entries: "
                f"{listing}{more}); choose an empty or new folder, or pass --overwrite to delete its contents")
        report(f"--overwrite: removing {len(foreign)} entries from {out}: {listing}{more}")
    return _build(name, out, params)


def _foreign_entries(name: str, out: Path) -> list[Path]:
    """Entries of ``out`` that a previous ``name`` build did not write (all of them if it is no such build)."""
    entries = sorted(out.iterdir())
    meta = read_marker(out)
    if meta is None or meta.get("name") != name:
        return entries
    ours = set(meta["files"]) | {MARKER}
    files = [p for p in sorted(out.rglob("*")) if not p.is_dir()]
    dirs = [p for p in sorted(out.rglob("*")) if p.is_dir()]
    foreign = [p for p in files if p.relative_to(out).as_posix() not in ours]
    foreign += [d for d in dirs if not any(f.startswith(d.relative_to(out).as_posix() + "/") for f in ours)]
    return foreign


def unavailable_reason(name: str, root: str | os.PathLike | None = None) -> str | None:
    """Why dataset ``name`` cannot be had here (None: present, buildable or downloadable)."""
    spec = _spec(name)
    if spec.kind == "online":
        return fetch.unavailable_reason(name, root)
    return spec.missing() if spec.missing else None


def remove_build_debris(out: Path) -> list[Path]:
    """Remove what killed builds of dataset folder ``out`` left beside it (``.<name>.tmp-<pid>...``, the writer
    gone); a live build's temporaries and every other file are left alone. Returns what was removed."""
    removed = []
    for path in sorted(out.parent.glob(f".{out.name}.*")):
        pid = debris_pid(path.name)
        if pid is None or pid_alive(pid):
            continue
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
        log.info("removed %s, left by a dataset build that no longer runs", path)
        removed.append(path)
    return removed


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
    DatasetError
        A built file differs from the build's manifest (names the file and the image).
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
    meta, built = read_marker(out), False
    if meta is None:
        # parallel runs of a study open the same dataset at once: one builds it, the others wait and reuse
        # it (a second build would also swap the folder under a run that is reading it)
        with exclusive(out):
            meta = read_marker(out)
            if meta is None:
                remove_build_debris(out)
                _build(name, out, full)
                meta, built = read_marker(out), True
    if not built:
        verify_build(out, meta)
    return DatasetSource(
        name=name, annotation_file=out / "annotations.json", image_dir=out / "images",
        sha256=sha256_json({"annotations": meta["annotations_sha256"], "params": full}),
        concept_categories=dict(spec.concept_categories),
        concepts=spec.concepts(full) if callable(spec.concepts) else spec.concepts, params=full,
        split=spec.split,
    )


def open_source(name: str, options: Mapping | None = None) -> DatasetSource:
    """The :class:`DatasetSource` of a dataset a study names, whichever kind it is.

    Parameters
    ----------
    name : a key of :data:`DATASETS`, or the name a study file declares its own dataset under.
    options : the study's ``datasets.<name>`` section: with ``coco`` (images and annotations, absolute
        paths as :func:`conceptsim.data.user_datasets.parse_dataset` returns them) the user's own folder;
        otherwise a registry dataset, with ``root`` (an online dataset's local copy) and ``build`` (an
        embedded dataset's build parameters) passed to :func:`ensure_dataset`. Other keys (``concepts``,
        ``max_images``, ...) are for :class:`conceptsim.data.coco.ConceptDataset` and ignored here.
    """
    opts = dict(options or {})
    if is_user_dataset(opts):
        return user_source(name, opts)
    return ensure_dataset(name, root=opts.get("root"), **(opts.get("build") or {}))
