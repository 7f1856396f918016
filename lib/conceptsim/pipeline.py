"""Stage entry points that the notebooks call: each joins the data, model and stage modules.

Result paths come from :mod:`conceptsim.paths` (``dataset_results``, ``model_results``, ``store_path`` and
``masks_dir`` stay importable from here). Importing this module changes nothing in the process: the
notebooks call :func:`conceptsim.runtime.setup` first (allocator, torch and BLAS threads, folders).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from conceptsim.atomic import write_json
from conceptsim.paths import (
    comparison_stage_json,
    concept_quality_csv,
    concept_stage_json,
    dataset_results,
    dataset_summary_files,
    dataset_summary_json,
    extraction_timings_json,
    masks_dir,
    model_results,
    store_path,
    vectors_dir,
)


def spread(items: Sequence[str], k: int) -> list[str]:
    """``k`` items evenly spread over ``items`` (first and last included); all when ``k`` <= 0."""
    items = list(items)
    if k <= 0 or k >= len(items):
        return items
    idx = np.unique(np.round(np.linspace(0, len(items) - 1, k)).astype(int))
    return [items[i] for i in idx]


def probed_layers(model_name: str, layers: Sequence[str] | None, max_layers: int = 0, user_models=None) -> list[str]:
    """``layers`` (default: the model's default layers) spread down to ``max_layers``; ``user_models``: the
    study's declared models (:func:`conceptsim.models.user_models.declared_model_specs`)."""
    from conceptsim.models.registry import parse_model_name

    spec, _ = parse_model_name(model_name, user_models)
    return spread(list(layers) if layers else list(spec.default_layers), max_layers)


def open_dataset(dataset: str, dataset_options: dict, split_options: dict, preprocessing: Any,
                 eval_grid: int, split: str | None = None):
    """The dataset (built or fetched if needed) served in a model's input geometry."""
    from conceptsim.data.coco import ConceptDataset
    from conceptsim.data.registry import open_source

    opts = dict(dataset_options or {})
    source = open_source(dataset, opts)
    return ConceptDataset(
        source, concepts=opts.get("concepts"), split=split, split_seed=split_options["seed"],
        fractions=tuple(split_options["fractions"]), min_area=split_options["min_area"],
        preprocessing=preprocessing, eval_grid=(eval_grid, eval_grid), max_images=opts.get("max_images"),
        split_by=opts.get("split"),
    ), source


def bootstrap_groups(annotation_file, field: str | None) -> dict[str, str] | None:
    """Image id (as text) -> the value of image field ``field`` (the concept stage's bootstrap groups)."""
    if not field:
        return None
    images = json.loads(Path(annotation_file).read_text())["images"]
    missing = [im["id"] for im in images if field not in im]
    if missing:
        raise ValueError(f"{annotation_file}: bootstrap_by {field!r}, but images {missing[:5]} have no such field")
    return {str(im["id"]): str(im[field]) for im in images}


def run_extraction(study: str, dataset: str, model: str, layers: Sequence[str] | str, dataset_options: dict,
                   split_options: dict, extraction_options: dict, seed: int, force: bool = False,
                   model_spec: dict | None = None):
    """Build model and dataset, extract every probed layer into the store. Returns (result, model, ds).

    ``model_spec``: the spec of a model declared in the study file (``conceptsim.models.user_models``);
    ``layers`` may be a list, empty (the model's default), ``"auto"`` or a glob pattern.
    """
    from conceptsim.extraction.extract import extract
    from conceptsim.extraction.store import concept_definition_attrs, source_attrs
    from conceptsim.models.names import base_name
    from conceptsim.models.registry import build_model
    from conceptsim.models.user_models import choose_layers, declared_model_specs

    opts = extraction_options
    t0 = time.perf_counter()
    user_models = declared_model_specs({base_name(model): model_spec} if model_spec else None)
    loaded = build_model(model, device=opts["device"], user_models=user_models)
    t1 = time.perf_counter()
    ds, source = open_dataset(dataset, dataset_options, split_options, loaded.preprocessing, opts["eval_grid"])
    t2 = time.perf_counter()
    if isinstance(layers, str):
        layers = choose_layers(loaded.spec, loaded.module, layers)
    chosen = probed_layers(model, layers, opts.get("max_layers", 0), user_models)
    meta = {"study": study, "dataset": dataset, "dataset_sha256": source.sha256, "seed": seed, **source_attrs(source),
            "min_area": split_options["min_area"], "split": dict(split_options), "split_by": ds.split_rule,
            "bootstrap_groups": bootstrap_groups(source.annotation_file, (dataset_options or {}).get("bootstrap_by"))}
    if model_spec:  # the results say what the model is and whether it has trained weights
        meta["model_spec"] = dict(model_spec)
    meta.update(concept_definition_attrs(source, (dataset_options or {}).get("concepts") or source.concepts))
    result = extract(loaded, ds, store_path(study, dataset, model), layers=chosen,
                     batch_size=opts["batch_size"], num_workers=opts["num_workers"], grid_cap=opts["grid_cap"],
                     dtype=opts["dtype"], metadata=meta, masks_dir=masks_dir(study, dataset),
                     compression=opts["compression"], force=force)
    # where the run's time went (the study-efficiency benchmark splits the extraction cell by it)
    write_json(extraction_timings_json(model_results(study, dataset, model)), {
        "model_build_s": t1 - t0, "dataset_open_s": t2 - t1, "mask_store_s": result.mask_seconds,
        "activations_s": result.activation_seconds, "extract_s": result.seconds, "reused": result.reused})
    return result, loaded, ds


def _read(path: Path) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _shown(path: Path) -> str:
    """A path as a page shows it: relative to the project (``results/<study>/...``) when inside it."""
    from conceptsim.paths import project_root

    path = Path(path).resolve()
    return str(path.relative_to(project_root())) if path.is_relative_to(project_root()) else str(path)


def provenance(what: str, record: Path, before: str | None) -> str:
    """One line for a stage notebook: whether ``what`` was reused from the stored results or computed, and
    why, from the stage's record (written last, with the identity of its inputs) before and after the call."""
    after = _read(record)
    if before is None:
        return f"Computed the {what}: no stored results in {_shown(record.parent)} yet."
    if after == before:
        return (f"Reused the stored {what} in {_shown(record.parent)}: same inputs, parameters and library code as when "
                f"they were computed (its record {record.name} is unchanged).")
    try:
        same = json.loads(before).get("identity") == json.loads(after or "{}").get("identity")
    except (json.JSONDecodeError, AttributeError):
        same = False
    return (f"Recomputed the {what}: " + ("an output listed in the stored record was missing." if same else
            "the stored results were computed from other inputs, parameters or library code."))


def extraction_provenance(result: Any, existed: bool) -> str:
    """The line of :func:`provenance` for the extraction stage (its store says whether it was reused)."""
    where = _shown(result.path)
    if result.reused:
        return (f"Reused the stored activations in {where}: same model weights, images, layers and parameters "
                "(the store's key matches).")
    return (f"Recomputed the activations in {where}: the stored ones were made with other weights, images, layers "
            "or parameters, or were incomplete." if existed else f"Computed the activations: no store at {where} yet.")


def run_concepts(study: str, dataset: str, model: str, random_twin: str, concept_options: dict,
                 device: str, seed: int, force: bool = False) -> dict:
    """The concept stage on one model's store (stored outputs of the same inputs are reused unless ``force``);
    the returned paths carry ``"provenance"``, one line saying whether the results were reused or computed
    and why."""
    from conceptsim.concepts.stage import run_concept_stage
    from conceptsim.models.registry import resolve_device

    device = str(resolve_device(device))  # CUDA asked for but absent: a clear error, before any work
    out = model_results(study, dataset, model)
    twin_csv = concept_quality_csv(model_results(study, dataset, random_twin)) if random_twin else None
    opts = dict(concept_options)
    before = _read(concept_stage_json(out))
    paths = run_concept_stage(
        store_path(study, dataset, model), out, loss=opts["loss"], lr=opts["lr"], epochs=opts["epochs"],
        patience=opts["patience"], bootstrap=opts["bootstrap"], dissection=opts["dissection"], seed=seed,
        device=device, random_init_quality=twin_csv, reuse=not force, seg_solver=opts.get("seg_solver", "reference"),
        cls_solver=opts.get("cls_solver", "lbfgs"),
    )
    return {**paths, "provenance": provenance("concept results", concept_stage_json(out), before)}


def run_comparison(study: str, dataset: str, models: Sequence[str], comparison_options: dict, seed: int,
                   force: bool = False) -> dict:
    """The comparison stage on a dataset's models (stored outputs of the same inputs are reused unless
    ``force``); the returned paths carry ``"provenance"`` (see :func:`run_concepts`)."""
    from conceptsim.comparison.stage import run_comparison_stage

    out = dataset_results(study, dataset)
    before = _read(comparison_stage_json(out))
    paths = run_comparison_stage(out, out, models=list(models), seed=seed,
                                 permutations=comparison_options["permutations"],
                                 bootstrap=comparison_options["bootstrap"], reuse=not force)
    return {**paths, "provenance": provenance("comparison results", comparison_stage_json(out), before)}


def concept_segmentations(study: str, dataset: str, model: str, layer: str | None = None, n: int = 4,
                          concepts: Sequence[str] | None = None):
    """Test images with one layer's Net2Vec segmentations and the true masks, for the overlay figure.

    Returns ``(layer, images, predicted, truth, concept_names)``; ``layer`` defaults to the layer with the
    best mean *val* IoU (a choice made on val, as every argmax of the methods; test IoU where the study has no
    val images).
    """
    import pandas as pd

    from conceptsim.concepts.vectors import ConceptVectors, vector_path
    from conceptsim.extraction.store import ActivationStore

    store = ActivationStore(store_path(study, dataset, model))
    out = model_results(study, dataset, model)
    if layer is None:
        layer = best_val_seg_layer(pd.read_csv(concept_quality_csv(out)))
    names = list(concepts or ConceptVectors.load(vector_path(vectors_dir(out), "seg", layer)).concepts)
    rows = store.split_index("test")
    # prefer test images where the chosen concepts are present
    cidx = [store.concept_names.index(c) for c in names]
    order = np.argsort(-store.labels[rows][:, cidx].sum(1), kind="stable")
    rows = np.sort(rows[order[:n]])
    truth = np.asarray(store.masks.get_orthogonal_selection((rows,)))[:, cidx]
    images = store.read_images(rows)
    return layer, images, layer_segmentation(store, out, layer, rows, names), truth, names


def best_val_seg_layer(quality) -> str:
    """The layer with the best mean segmentation set IoU on val (``val_value`` of ``concept_quality.csv``; the
    test ``value`` only where the study has no val images): a display choice made on val, like every argmax."""
    q = quality[(quality["method"] == "seg") & (quality["metric"] == "set_iou")]
    if q.empty:
        raise ValueError("concept_quality.csv has no segmentation set_iou rows to choose a layer from")
    column = "val_value" if "val_value" in q and q["val_value"].notna().any() else "value"
    return str(q.groupby("layer")[column].mean().idxmax())


def layer_segmentation(store, model_out: Path, layer: str, rows: np.ndarray, concepts: Sequence[str]) -> np.ndarray:
    """Binary Net2Vec segmentations ``len(rows) x len(concepts) x gh x gw`` of one layer on stored images
    (the layer's stored activations and vectors; threshold 0.5 on the evaluation grid)."""
    from conceptsim.concepts.vectors import ConceptVectors, segment, vector_path

    vectors = ConceptVectors.load(vector_path(vectors_dir(model_out), "seg", layer))
    missing = [c for c in concepts if c not in vectors.concepts]
    if missing:
        raise ValueError(f"layer {layer} of {model_out} has no segmentation vector for {missing}; it has {vectors.concepts}")
    acts = np.asarray(store.activations(layer).get_orthogonal_selection((rows,)), dtype=np.float32)
    prob = segment(vectors, acts, store.content_boxes[rows], store.input_size, store.eval_grid).numpy()
    return prob[:, [vectors.concepts.index(c) for c in concepts]] >= 0.5


def dataset_summary(study: str, dataset: str, model: str, force: bool = False):
    """Summarise the images a study analysed on ``dataset`` (as stored for ``model``).

    Writes ``results/<study>/<dataset>/dataset_summary.csv`` (images per split; per concept: images that
    contain it per split and mean mask area) and ``dataset_examples.png`` (example masks per concept), then
    their record ``dataset_summary.json``. Every model of a study analyses the same images, so the
    extraction notebook of each calls this and only the first computes: a summary recorded from the same
    dataset files, concepts, split and images by the same code is reused (``force``: recomputed), unless a
    file of it was removed or changed since (the record holds their hashes): then it is recomputed. The
    runner lists the three files among every extraction run's outputs, so such a change reruns the runs, and
    this recomputes just the summary (:func:`conceptsim.run.keys.self_checked`). Parallel runs wait for each
    other (a lock beside the table). Returns ``(DataFrame, figure path)``.
    """
    import pandas as pd

    from conceptsim.atomic import code_hash, exclusive, output_digests, relative_outputs, reusable_outputs, stage_identity
    from conceptsim.data.summary import write_summary
    from conceptsim.extraction.store import ActivationStore

    store = ActivationStore(store_path(study, dataset, model))
    split = store.attrs["split"]
    max_images = int(np.bincount(store.splits).max())
    folder = dataset_results(study, dataset)
    table, figure = dataset_summary_files(folder)
    record = dataset_summary_json(folder)
    identity = stage_identity(
        "conceptsim.data.summary", store_code=code_hash(["conceptsim.extraction.store"]),
        dataset_sha256=store.attrs.get("dataset_sha256"), annotation_file=store.attrs.get("annotation_file"),
        image_dir=store.attrs.get("image_dir"), concept_definition=store.attrs.get("concept_definition"),
        concepts=list(store.concept_names), split=split, split_by=store.attrs.get("split_by") or "random",
        max_images=max_images, image_ids=sorted(int(i) for i in store.image_ids))
    with exclusive(table):
        if force or reusable_outputs(record, identity) is None:
            ds = store.open_dataset(split=None, split_seed=split["seed"], fractions=tuple(split["fractions"]),
                                    min_area=split["min_area"], max_images=max_images, concepts=store.concept_names,
                                    split_by=store.attrs.get("split_by") or "random")
            if sorted(int(i) for i in ds.image_ids) != sorted(int(i) for i in store.image_ids):
                raise ValueError(f"the dataset summary would describe other images than store {store.path} holds")
            record.unlink(missing_ok=True)  # the files change below: no record names them until they are whole
            write_summary(ds, table, figure)
            outputs = {"table": table, "figure": figure}
            write_json(record, {"identity": identity, "outputs": relative_outputs(outputs, folder),
                                "sha256": output_digests(outputs)})
    return pd.read_csv(table), figure
