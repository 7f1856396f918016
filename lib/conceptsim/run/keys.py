"""Run keys and records: whether a run is complete, and which runs must (re)compute.

Records. Each run's completion is recorded in ``results/<study>/_runs/<run>.json`` *after* its executed
notebook and results are fully written (temporary name, then rename). A run is skipped when its key --
the hash of its notebook's code cells, its parameters, the library's source and the keys of the runs it
depends on -- equals the recorded one and its executed notebook exists; otherwise it and (through the key
chain) its dependents run again. A run's record is removed when the run starts, so a killed run (forced or
not) leaves no record and is redone; the temporary files it left (:func:`conceptsim.atomic.remove_debris`)
are removed by the next run once their process is gone.

Forcing. ``--force`` makes the selected runs recompute: the notebook gets ``force=True`` and the stage
ignores its stored outputs. A record lists the hashes of the run's outputs (:func:`output_paths`); a run
whose stored output no longer matches its recorded hash is forced on any run, and the record says which
runs were forced and why. A forced run leaves ``_runs/<run>.forced`` (:func:`force_marker_path`, written
before its record is removed, removed once its new record is written): a forced run killed or failed before
it completed is forced again by the next study run, since the stored outputs it was forced to replace are
still there and its record, which showed why, is gone.

Outputs the stage checks itself. The dataset summary's files (:func:`conceptsim.pipeline.dataset_summary`
records their hashes and recomputes them when they differ) are among an extraction run's outputs: a changed
one reruns the run, unforced, and only they are recomputed (:func:`self_checked`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import nbformat

from conceptsim.atomic import folder_digest, sha256_file, sha256_json
from conceptsim.atomic import notebook_code_hash as package_code_hash
from conceptsim.paths import (
    comparison_stage_json,
    concept_stage_json,
    dataset_results,
    dataset_summary_files,
    dataset_summary_json,
    executed_path,
    model_results,
    project_root,
    results_dir,
    runs_dir,
    store_path,
)
from conceptsim.run.scheduling import topological
from conceptsim.run.study import Run

log = logging.getLogger("conceptsim.run.keys")


def notebooks_dir() -> Path:
    return project_root() / "notebooks"


def run_slug(run: Run) -> str:
    return run.id.replace("/", "__").replace(":", "-")


def record_path(run: Run) -> Path:
    return runs_dir(run.parameters["study"]) / f"{run_slug(run)}.json"


def force_marker_path(run: Run) -> Path:
    """``_runs/<run>.forced``: the run was forced and has not completed since (see the module docstring)."""
    return runs_dir(run.parameters["study"]) / f"{run_slug(run)}.forced"


def forced_marker(run: Run) -> str | None:
    """Why the run was forced when it started and did not complete, or None (no marker)."""
    try:
        data = json.loads(force_marker_path(run).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # unreadable: still a forced run that did not complete
        return "forced"
    return str(data.get("forced_because") or "forced") if isinstance(data, dict) else "forced"


def notebook_code_hash(path: Path) -> str:
    """Hash of a notebook's code cells and their tags (outputs and metadata noise excluded)."""
    nb = nbformat.read(path, as_version=4)
    cells = [(c.cell_type, c.source, sorted(c.get("metadata", {}).get("tags", []))) for c in nb.cells]
    return sha256_json(cells)


def run_keys(runs: list[Run]) -> dict[str, str]:
    """Per run: a hash of its notebook's code, its parameters, the package code the notebook runs
    (:func:`conceptsim.atomic.notebook_code_hash`) and the keys of the runs it depends on."""
    code: dict[Path, str] = {}
    keys: dict[str, str] = {}
    by_id = {r.id: r for r in runs}
    for r in topological(runs):
        nb = notebooks_dir() / r.notebook
        if not nb.exists():
            raise FileNotFoundError(f"notebook {nb} for run {r.id} does not exist")
        if nb not in code:
            code[nb] = package_code_hash(nb)
        keys[r.id] = sha256_json(
            {"notebook": notebook_code_hash(nb), "parameters": r.parameters, "code": code[nb],
             "deps": [keys[d] for d in r.depends_on if d in by_id]}
        )
    return keys


def output_paths(run: Run) -> list[Path]:
    """The result files and folders a run writes (hashed into its record): for an extraction, the activation
    store, the shared mask store it uses (its ``mask_store`` attribute) and the dataset summary with its
    record; for a concept or comparison stage, the stage record and every output it lists."""
    study = run.parameters["study"]
    if run.stage == "extract":
        store = store_path(study, run.dataset, run.model)
        masks = _mask_store_of(store)
        return [store] + ([masks] if masks is not None else []) + _listed(dataset_summary_json(
            dataset_results(study, run.dataset)))
    if run.stage == "concepts":
        return _listed(concept_stage_json(model_results(study, run.dataset, run.model)))
    if run.stage == "compare_layers":
        return _listed(comparison_stage_json(dataset_results(study, run.dataset)))
    return []


def _listed(record: Path) -> list[Path]:
    """A stage record and the outputs it lists (relative to its folder)."""
    try:
        listed = json.loads(record.read_text()).get("outputs") or {}
    except (OSError, ValueError, AttributeError):
        listed = {}
    return [record] + [record.parent / str(v) for v in sorted(listed.values())]


def _mask_store_of(store: Path) -> Path | None:
    """The mask store an activation store names (``mask_store`` in its ``zarr.json``), or None."""
    try:
        rel = json.loads((store / "zarr.json").read_text())["attributes"]["mask_store"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Path(os.path.normpath(store.parent / str(rel)))  # relative to the store's folder, as the store reads it


def self_checked(run: Run) -> set[Path]:
    """The outputs of ``run`` whose stage checks their content itself: the dataset summary of an extraction
    (:func:`conceptsim.pipeline.dataset_summary` compares its files with the hashes of its record). A change
    reruns the run without forcing it: forcing would recompute the activations as well."""
    if run.stage != "extract":
        return set()
    folder = dataset_results(run.parameters["study"], run.dataset)
    return {dataset_summary_json(folder), *dataset_summary_files(folder), *_listed(dataset_summary_json(folder))}


_hash_memo: dict[tuple, str] = {}


def content_hash(path: Path) -> str | None:
    """sha256 of a file, or of a folder's files (relative names and contents); None when absent. A file's
    hash is remembered for its size and modification time within this process."""
    if path.is_dir():
        return folder_digest(path, content_hash)
    try:
        st = path.stat()
    except OSError:
        return None
    memo = (str(path), st.st_size, st.st_mtime_ns)
    if memo not in _hash_memo:
        _hash_memo[memo] = sha256_file(path)
    return _hash_memo[memo]


def output_hashes(run: Run) -> dict[str, str | None]:
    """``{path relative to the results folder: content hash}`` of the run's outputs (:func:`output_paths`)."""
    root = results_dir()
    return {os.path.relpath(p, root): content_hash(p) for p in output_paths(run)}


def changed_outputs(record: dict) -> list[str]:
    """The outputs of a record whose content no longer matches the hash recorded (edited, removed)."""
    root = results_dir()
    return [rel for rel, digest in sorted((record.get("outputs") or {}).items()) if content_hash(root / rel) != digest]


def recorded(run: Run, key: str) -> dict | None:
    """The run's completion record if it is ok, has ``key`` and its executed notebook exists, else None."""
    rec = record_path(run)
    if not rec.exists() or not executed_path(run).exists():
        return None
    try:
        data = json.loads(rec.read_text())
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) and data.get("key") == key and data.get("status") == "ok" else None


def is_complete(run: Run, key: str) -> bool:
    """Recorded with this key, every recorded output still has its recorded content, and no forced run of it
    is unfinished (:func:`forced_marker`)."""
    data = recorded(run, key)
    return data is not None and not changed_outputs(data) and not force_marker_path(run).exists()


def pending(runs: list[Run], force: bool = False) -> list[Run]:
    """The runs that :func:`run_study` would execute (all of them under ``force``)."""
    if force:
        return list(runs)
    keys = run_keys(runs)
    return [r for r in runs if not is_complete(r, keys[r.id])]


_UNFINISHED = "a forced run that did not complete"


def forced_runs(runs: list[Run], keys: dict[str, str], force: bool) -> dict[str, str]:
    """``{run id: why}`` for the runs that must recompute ignoring stored outputs: all under ``force``, else
    those forced earlier that did not complete (:func:`forced_marker`) and those whose record is current but
    an output changed since it was recorded (one the stage checks itself, :func:`self_checked`, reruns the
    run without forcing it)."""
    if force:
        return {r.id: "--force" for r in runs}
    why = {}
    root = results_dir()
    for r in runs:
        unfinished = forced_marker(r)
        if unfinished is not None:
            if unfinished.startswith(_UNFINISHED + " (") and unfinished.endswith(")"):  # killed again: said once
                unfinished = unfinished[len(_UNFINISHED) + 2:-1]
            why[r.id] = f"{_UNFINISHED} ({unfinished})"
            log.warning("%s: %s; recomputing it, forced", r.id, why[r.id])
            continue
        data = recorded(r, keys[r.id])
        own = {os.path.relpath(p, root) for p in self_checked(r)}
        changed = changed_outputs(data) if data is not None else []
        if any(rel in own for rel in changed):
            log.warning("%s: output changed since it was recorded: %s; rerunning it (its stage recomputes it)", r.id,
                        ", ".join(rel for rel in changed if rel in own))
        changed = [rel for rel in changed if rel not in own]
        if changed:
            why[r.id] = "output changed since it was recorded: " + ", ".join(changed)
            log.warning("%s: %s; recomputing it", r.id, why[r.id])
    return why
