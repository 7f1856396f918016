"""What the selected runs of a valid study need from this machine, checked before any run starts.

:func:`check_inputs` checks data, weight files, the device, writable output folders and custom layer names,
and reports every gap at once (one :class:`~conceptsim.run.validation.StudyError`), so a study that cannot
run fails before the first notebook starts. The study file itself is checked by
:func:`conceptsim.run.validation.validate_study` when it is loaded.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable

from conceptsim.models.names import twin_name
from conceptsim.run.validation import Problems, StudyError, dotted_keys


def check_inputs(study, runs: Iterable | None = None) -> None:
    """Check that the runs (default: all of the study's) can run here; raise one StudyError listing every gap.

    Checked: each extraction's dataset is present or obtainable (online datasets: a local copy, or the
    network), each pretrained model's weight files are in place, a CUDA device exists when one is asked
    for, the output folders are writable, and custom layer names exist in their models. Then, when all that
    holds, each named dataset's build (built first if needed; checked against its manifest) or local copy keeps
    at least one concept under ``split.min_area`` and its ``max_images`` (:func:`_check_concepts_left`).
    """
    from conceptsim.data.coco import DatasetError
    from conceptsim.data.registry import DATASETS, unavailable_reason
    from conceptsim.data.user_datasets import is_user_dataset, validate_dataset
    from conceptsim.models.registry import missing_weights
    from conceptsim.models.user_models import declared_model_specs

    runs = list(study.runs() if runs is None else runs)
    p = Problems(study.path)
    if study.smoke and isinstance(study.raw.get("smoke"), dict):  # a value from the smoke: section is named smoke.<key>
        p.smoke = set(dotted_keys(study.raw["smoke"]))
    extractions = [r for r in runs if r.stage == "extract"]
    for ds in dict.fromkeys(r.dataset for r in extractions):
        if is_user_dataset(study.datasets[ds]):  # every image, annotation and concept of the user's folder
            try:
                validate_dataset(ds, study.datasets[ds], study.sections["split"])
            except DatasetError as exc:
                p.add(str(exc))
            continue
        reason = unavailable_reason(ds, study.datasets[ds].get("root"))
        if reason:
            p.add(f"dataset {ds}: {reason}")
    from conceptsim.extraction.store import foreign_files
    from conceptsim.paths import store_path

    for r in extractions:  # a store that is recomputed is replaced: never with the user's files in it
        found = foreign_files(store_path(study.name, r.dataset, r.model))
        if found:
            p.add(f"{store_path(study.name, r.dataset, r.model)} holds files the suite did not write "
                  f"({', '.join(f.name for f in found[:5])}); move them out of the folder, then run again")
    gaps = False
    user_models = declared_model_specs(study.model_specs)
    for model in dict.fromkeys(r.model for r in extractions):
        for gap in missing_weights(model, user_models):
            p.add(f"model {model}: {gap}")
            gaps = True
    if extractions or any(r.stage == "concepts" for r in runs):
        _check_device(p, study.sections["extraction"]["device"], _device_key(study))
    _check_writable(p, study.name, runs)
    _check_layer_names(p, study)  # on the CPU: whatever the device, its problem and these are named together
    if not p.messages:  # the named datasets' annotations are read (built first if needed) when all else is in place;
        for ds in dict.fromkeys(r.dataset for r in extractions):  # a fetched one's only from a local copy (root:)
            opts = study.datasets[ds]
            if not is_user_dataset(opts) and (DATASETS[ds].kind == "embedded" or opts.get("root")):
                _check_concepts_left(p, study, ds)
    try:
        p.raise_if_any(" (nothing was started)")
    except StudyError as exc:
        if not gaps:
            raise
        raise StudyError(f"{exc}\n(to rehearse the study's path before the trained weights are here: "
                         "conceptsim run ... --twins-only)") from None


def _check_concepts_left(p: Problems, study, ds: str) -> None:
    """A named dataset must keep at least one concept under ``split.min_area`` and its ``max_images``: a concept
    is kept when every split holds an image whose mask covers ``min_area`` of it (``ConceptDataset``); with
    none kept, the extraction has nothing to store and the notebooks fail. One concept must also have an image
    without it in every split, or no classification probe is learned and the comparison fails. Reads the
    build's annotations."""
    from conceptsim.data.coco import ConceptDataset, DatasetError
    from conceptsim.data.registry import DATASETS, build_params, dataset_dir, is_user_dataset, open_source, read_marker

    opts, split = study.datasets[ds], study.sections["split"]
    min_area, max_images = split["min_area"], opts.get("max_images")
    if not is_user_dataset(opts) and DATASETS[ds].kind == "embedded":
        out = dataset_dir(ds, build_params(ds, False, **(opts.get("build") or {})))
        if read_marker(out) is None:  # the first use builds it here, before the progress display starts
            print(f"building dataset {ds} (first use, once; it is checked before any run starts) in {out}", flush=True)
    try:
        every = ConceptDataset(open_source(ds, opts), concepts=opts.get("concepts"),
                               split_seed=split["seed"], fractions=tuple(split["fractions"]), min_area=0.0,
                               split_by=opts.get("split"))
    except (DatasetError, ValueError) as exc:
        p.add(f"dataset {ds}: {exc}")
        return
    largest, fewest = every.presence_limits(min_area, max_images)
    splits = "train, val and test"
    if largest >= min_area:  # concepts are kept; the classification probes also need images without one
        need = every.fewest_images_to_classify(min_area)
        if need is not None and (not max_images or max_images >= need):
            return
        problem = (f"no concept of {ds} has both an image whose mask covers split.min_area = {min_area:g} and an "
                   f"image without in each of {splits}, so the classification probes learn nothing and the comparison fails")
        if need is not None:
            p.add(f"'{p.key(f'datasets.{ds}.max_images')}' is {max_images}: {problem}; accepted here: max_images >= {need} "
                  "(or null)")
        else:
            sizes = {s: sum(every.split_of(i) == s for i in every.image_ids) for s in ("train", "val", "test")}
            held = ", ".join(f"{s} {n}" for s, n in sizes.items())
            key = f"datasets.{ds}.build.n" if DATASETS[ds].kind == "embedded" else "split.min_area"
            value = (opts.get("build") or {}).get("n", DATASETS[ds].defaults.get("n")) if key.endswith(".n") else f"{min_area:g}"
            p.add(f"'{p.key(key)}' is {value} (images per split: {held}): {problem}; accepted here: more images, other "
                  "split.fractions or another split.min_area")
        return
    if max_images and fewest is not None:
        p.add(f"'{p.key(f'datasets.{ds}.max_images')}' is {max_images}: among the first {max_images} images of each "
              f"split no concept of {ds} has one whose mask covers split.min_area = {min_area:g} in {splits}, so no "
              f"concept would be learned; accepted here: max_images >= {fewest} (or null)")
    else:
        bound = math.floor(largest * 1000) / 1000
        p.add(f"'{p.key('split.min_area')}' is {min_area:g}: no concept of {ds} has a mask covering that much of an "
              f"image in each of {splits}{f' (max_images {max_images})' if max_images else ''}, so no concept would "
              f"be learned; accepted here: split.min_area <= {bound:g}")


def _device_key(study) -> str:
    """The key the study's device was written under: top-level ``device`` (its alias) or ``extraction.device``."""
    raw = study.raw if isinstance(study.raw, dict) else {}
    smoke = raw.get("smoke") if study.smoke and isinstance(raw.get("smoke"), dict) else {}
    return "device" if "device" in raw or "device" in smoke else "extraction.device"


def _check_device(p: Problems, device: str, key: str = "extraction.device") -> None:
    """``key``: where the study file gives the device (``device`` or ``extraction.device``), as the message names it."""
    if device.startswith("cuda"):
        import torch

        key = p.key(key)
        if not torch.cuda.is_available():
            p.add(f"'{key}' is {device!r} but CUDA is not available here; accepted here: cpu (or auto)")
        elif ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
            p.add(f"'{key}' is {device!r} but this machine has {torch.cuda.device_count()} GPU(s)")


def _check_writable(p: Problems, study: str, runs: list) -> None:
    """Probe every folder the runs write to (results, executed notebooks, logs, records, built datasets), not
    only the study's root: a read-only subfolder is named before work starts."""
    from conceptsim.paths import (
        book_results_dir,
        dataset_results,
        datasets_dir,
        logs_dir,
        masks_dir,
        model_dir_name,
        model_results,
        project_root,
        results_dir,
        runs_dir,
        vectors_dir,
    )

    folders = [results_dir() / study, book_results_dir(study), project_root() / "book" / "_generated",
               runs_dir(study), logs_dir(study)]
    for r in runs:
        folders.append(dataset_results(study, r.dataset))
        folders.append(book_results_dir(study) / r.dataset)
        if r.model:
            folders.append(model_results(study, r.dataset, r.model))
            folders.append(book_results_dir(study) / r.dataset / model_dir_name(r.model))
        if r.stage == "extract":  # the dataset's build, and its mask stores (shared by the models)
            folders += [datasets_dir(), masks_dir(study, r.dataset)]
        if r.stage == "concepts":
            folders.append(vectors_dir(model_results(study, r.dataset, r.model)))
    reported: list[Path] = []
    for folder in dict.fromkeys(folders):
        if any(folder.is_relative_to(r) for r in reported):
            continue  # its parent's problem is already named
        problem = writable_problem(folder)
        if problem:
            reported.append(folder)
            p.add(problem)


def writable_problem(folder: Path) -> str | None:
    """None if files can be created in ``folder``, else a one-line reason naming it. Creates nothing: an
    absent folder is judged by its nearest existing parent (a probe file is written there and removed)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot create {folder}: {existing} is not a folder"
    probe = existing / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return f"cannot write to {existing}{'' if existing == folder else f' (to create {folder})'}: {exc.strerror or exc}"
    return None


def validate_layers(study) -> None:
    """Check every custom layer name against the built model (the random-init twin: no weights needed); raise
    one StudyError naming every model's unknown layers."""
    p = Problems(study.path)
    _check_layer_names(p, study)
    p.raise_if_any()


def _check_layer_names(p: Problems, study) -> None:
    """Record each model whose custom layer names its model does not have. The models are built on the CPU
    (the random-init twin: no weights needed), so the check does not depend on the study's device."""
    from conceptsim.extraction.hooks import resolve_layers
    from conceptsim.models.registry import build_model
    from conceptsim.models.user_models import UserModelError, choose_layers, declared_model_specs

    user_models = declared_model_specs(study.model_specs)
    for model, names in study.layers.items():
        if names:
            try:
                loaded = build_model(twin_name(model), device="cpu", user_models=user_models)
                resolve_layers(loaded.module, choose_layers(loaded.spec, loaded.module, names), model)
            except (KeyError, UserModelError) as exc:
                p.add(f"in '{p.key(f'layers.{model}')}': {exc}")
