"""Datasets declared in a study file: the user's own COCO-format folder, beside the named datasets.

::

    datasets:
      my_data:
        coco: {images: path/to/images, annotations: path/to/instances.json}   # relative to the study file
        concepts: [person, vehicle]            # or {vehicle: [car, bus]}; default: every category
        concept_categories: {vehicle: object}  # concept -> category; required where a concept's supercategory
                                               # is none of colour, texture, shape, object, part, material, scene
        max_images: 100                        # optional, per split

Categories are grouped into concepts exactly as for the named datasets
(:func:`conceptsim.data.coco.resolve_concepts`). :func:`validate_dataset` checks the whole folder before a
study runs; every message names the file and the field (a missing image, a bad polygon, an unknown
category, a concept left empty by ``split.min_area``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from conceptsim.atomic import sha256_file, sha256_json
from conceptsim.data.coco import ConceptDataset, DatasetError, DatasetSource, load_annotations, resolve_concepts

USER_DATASET_KEYS = {"coco", "concepts", "concept_categories", "max_images"}
COCO_KEYS = {"images", "annotations"}


def is_user_dataset(options: Mapping | None) -> bool:
    return isinstance(options, Mapping) and "coco" in options


def parse_dataset(name: str, options: Any, base_dir: str | Path | None = None) -> dict:
    """Check a declared dataset's keys and paths; return its options with absolute paths."""
    key = f"datasets.{name}"
    if not isinstance(options, Mapping):
        raise DatasetError(f"'{key}' must be a mapping, got {type(options).__name__}")
    unknown = sorted(set(options) - USER_DATASET_KEYS)
    if unknown:
        raise DatasetError(f"unknown key(s) {unknown} in '{key}'; accepted keys: {sorted(USER_DATASET_KEYS)}")
    coco = options["coco"]
    if not isinstance(coco, Mapping) or set(coco) != COCO_KEYS:
        raise DatasetError(f"'{key}.coco' must be a mapping with exactly the keys {sorted(COCO_KEYS)}, got {coco!r}")
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    images = (base / str(coco["images"])).resolve()
    annotations = (base / str(coco["annotations"])).resolve()
    if not images.is_dir():
        raise DatasetError(f"'{key}.coco.images': folder {images} does not exist")
    if not annotations.is_file():
        raise DatasetError(f"'{key}.coco.annotations': file {annotations} does not exist")
    out = dict(options, coco={"images": str(images), "annotations": str(annotations)})
    concepts = options.get("concepts")
    if concepts is not None and not (
        (isinstance(concepts, list) and all(isinstance(c, str) for c in concepts))
        or (isinstance(concepts, Mapping) and all(isinstance(v, (str, list, Mapping)) for v in concepts.values()))
    ):
        raise DatasetError(f"'{key}.concepts' must be a list of category names or a mapping concept -> categories")
    cc = options.get("concept_categories")
    if cc is not None and not (isinstance(cc, Mapping) and all(isinstance(v, str) for v in cc.values())):
        raise DatasetError(f"'{key}.concept_categories' must be a mapping concept -> category name")
    mi = options.get("max_images")
    if mi is not None and (not isinstance(mi, int) or isinstance(mi, bool) or mi <= 0):
        raise DatasetError(f"'{key}.max_images' must be a positive integer or null, got {mi!r}")
    return out


def user_source(name: str, options: Mapping) -> DatasetSource:
    """The :class:`DatasetSource` of a declared dataset (hash: the annotation file and the image folder)."""
    coco = options["coco"]
    ann = Path(coco["annotations"])
    return DatasetSource(
        name=name, annotation_file=ann, image_dir=Path(coco["images"]),
        sha256=sha256_json({"annotations": sha256_file(ann), "params": {"images": coco["images"]}}),
        concept_categories=dict(options.get("concept_categories") or {}), concepts=None,
        params={"origin": coco["images"]},
    )


def undeclared_concept_categories(data: Mapping, options: Mapping, key: str, ann: Path) -> None:
    """Every concept of a declared dataset needs a concept category: its categories' shared supercategory if
    that is one of :data:`conceptsim.data.coco.CONCEPT_CATEGORIES`, else one given in ``concept_categories``
    or the concept's ``{categories: ..., category: ...}``. A user's unknown supercategory is an error, not
    silently ``object`` (a named dataset's object groups are declared in the registry)."""
    from conceptsim.data.coco import CONCEPT_CATEGORIES

    by_name = {c["name"]: c for c in data["categories"]}
    concepts = options.get("concepts")
    if concepts is None:
        spec = {c["name"]: [c["name"]] for c in data["categories"]}
    elif isinstance(concepts, Mapping):
        spec = {name: None if isinstance(v, Mapping) and v.get("category") else
                (list(v.get("categories", [name])) if isinstance(v, Mapping) else [v] if isinstance(v, str) else list(v))
                for name, v in concepts.items()}
    else:
        supers = {c.get("supercategory") for c in data["categories"]}
        spec = {name: [name] if name in by_name else [c["name"] for c in data["categories"]
                                                     if c.get("supercategory") == name] if name in supers else None
                for name in concepts}
    declared = dict(options.get("concept_categories") or {})
    missing = {}
    for name, cats in spec.items():
        if not cats or name in declared or any(c not in by_name for c in cats):
            continue  # declared, or an unknown category: reported by resolve_concepts
        sup = {by_name[c].get("supercategory") for c in cats}
        if len(sup) != 1 or sup.pop() not in CONCEPT_CATEGORIES:
            missing[name] = sorted({str(by_name[c].get("supercategory")) for c in cats})
    if missing:
        first = next(iter(missing))
        raise DatasetError(
            f"'{key}.concepts' ({ann}): concept(s) {sorted(missing)} have supercategories "
            f"{sorted({s for v in missing.values() for s in v})}, none of the concept categories "
            f"{', '.join(CONCEPT_CATEGORIES)}; declare theirs, e.g. concept_categories: {{{first}: object}}")


def check_image_file(path: Path, record: Mapping, key: str, ann: Path) -> None:
    """The image file decodes as an image and has the width and height its annotation record declares."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            size = img.size
            img.verify()  # the whole file: truncated or corrupt data is found here, not in the extraction
    except Exception as exc:  # noqa: BLE001 -- PIL raises many types for a bad file
        raise DatasetError(f"{key}: image {record['id']} ({path}) cannot be read as an image "
                           f"({type(exc).__name__}: {exc})") from None
    declared = (record.get("width"), record.get("height"))
    if None not in declared and tuple(int(v) for v in declared) != size:
        raise DatasetError(f"{key}: image {record['id']} ({path}) is {size[0]}x{size[1]} pixels, but {ann} declares "
                           f"width {declared[0]}, height {declared[1]}")


def validate_dataset(name: str, options: Mapping, split_options: Mapping) -> ConceptDataset:
    """Check every image, annotation and concept of a declared dataset; return it (all splits)."""
    key = f"datasets.{name}"
    ann = Path(options["coco"]["annotations"])
    image_dir = Path(options["coco"]["images"])
    try:
        data = load_annotations(ann)
    except DatasetError as exc:
        raise DatasetError(f"'{key}.coco.annotations': {exc}") from None
    for im in data["images"]:
        if not (image_dir / str(im["file_name"])).is_file():
            raise DatasetError(f"'{key}.coco.images': image {im['id']} of {ann} ({im['file_name']}) is not in {image_dir}")
        check_image_file(image_dir / str(im["file_name"]), im, f"'{key}.coco.images'", ann)
    undeclared_concept_categories(data, options, key, ann)
    try:
        resolve_concepts(data, options.get("concepts"), options.get("concept_categories"), f"'{key}.concepts' ({ann})")
        ds = ConceptDataset(user_source(name, options), concepts=options.get("concepts"), split=None,
                            split_seed=split_options["seed"], fractions=tuple(split_options["fractions"]),
                            min_area=split_options["min_area"], max_images=options.get("max_images"))
    except DatasetError as exc:
        raise DatasetError(str(exc) if str(exc).startswith("'") else f"'{key}': {exc}") from None
    used = {ds.split_of(i) for i in ds.image_ids}
    empty = sorted({e["concept"] for e in ds.excluded_concepts
                    if {x["split"] for x in ds.excluded_concepts if x["concept"] == e["concept"]} >= used})
    if empty or not ds.concepts:
        raise DatasetError(
            f"'{key}.concepts' ({ann}): concept(s) {empty or '(all)'} cover at least split.min_area = "
            f"{split_options['min_area']:g} of no image; lower 'split.min_area', annotate more images or drop them")
    return ds
