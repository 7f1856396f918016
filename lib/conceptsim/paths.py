"""Where the project keeps its caches and results, and the environment that keeps $HOME clean.

Result layout (every stage, the runner, the book pages and the benchmarks build their paths here)::

    results/<study>/                        study_results
      _runs/<run>.json  _logs/<run>.log     run records and logs of the runner
      <dataset>/                            dataset_results: cross-model results
        _masks/                             mask stores, shared by the models of one input geometry
        similarity.csv  layer_similarity.csv  findings.json     comparison stage
        dataset_summary.csv  dataset_examples.png  dataset_summary.json    dataset summary (and its record)
        <model_dir>/                        model_results; ``NAME:random`` is written ``NAME__random``
          activations.zarr                  extraction stage
          vectors/  concept_quality.csv  concept_stage.json  dissection*.csv    concept stage
    book/results/<study>/                   book_results_dir: executed notebooks and generated pages
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def project_root() -> Path:
    """The repository root (the folder holding ``pyproject.toml``), or ``$CONCEPTSIM_ROOT``."""
    env = os.environ.get("CONCEPTSIM_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").exists() and (parent / "lib" / "conceptsim").is_dir():
            return parent
    return Path.cwd().resolve()


def cache_dir() -> Path:
    """Git-ignored cache: weights, tool config dirs. ``$CONCEPTSIM_CACHE`` overrides."""
    env = os.environ.get("CONCEPTSIM_CACHE")
    return Path(env).resolve() if env else project_root() / ".cache"


def weights_dir() -> Path:
    return cache_dir() / "weights"


def datasets_dir() -> Path:
    """Where built or fetched datasets live (``$CONCEPTSIM_DATA`` overrides)."""
    env = os.environ.get("CONCEPTSIM_DATA")
    return Path(env).resolve() if env else cache_dir() / "datasets"


def results_dir() -> Path:
    env = os.environ.get("CONCEPTSIM_RESULTS")
    return Path(env).resolve() if env else project_root() / "results"


def _check_name(value, parameter: str) -> str:
    """``value`` if it is a name (a str), else a TypeError naming ``parameter``."""
    if not isinstance(value, str):
        raise TypeError(f"{parameter} must be a str (a name), got {type(value).__name__} {value!r}")
    return value


def model_dir_name(model: str) -> str:
    """Folder name of a model's results: ``NAME:random`` is written ``NAME__random``."""
    return _check_name(model, "model").replace(":", "__")


# ----------------------------------------------------------------------------- result layout
def study_results(study: str, root: str | Path | None = None) -> Path:
    """A study's results folder, under ``root`` (a results folder) or :func:`results_dir`."""
    return (Path(root) if root is not None else results_dir()) / _check_name(study, "study")


def dataset_results(study: str, dataset: str, root: str | Path | None = None) -> Path:
    return study_results(study, root) / _check_name(dataset, "dataset")


def model_results(study: str, dataset: str, model: str, root: str | Path | None = None) -> Path:
    return dataset_results(study, dataset, root) / model_dir_name(model)


def store_path(study: str, dataset: str, model: str) -> Path:
    return activation_store(model_results(study, dataset, model))


def masks_dir(study: str, dataset: str) -> Path:
    """Where the mask stores of a (study, dataset) live: shared by every model with the same input geometry."""
    return dataset_results(study, dataset) / "_masks"


def runs_dir(study: str) -> Path:
    return study_results(study) / "_runs"


def logs_dir(study: str) -> Path:
    return study_results(study) / "_logs"


def book_results_dir(study: str) -> Path:
    return project_root() / "book" / "results" / study


def executed_path(run) -> Path:
    """Where the runner keeps the executed notebook of ``run`` (a :class:`conceptsim.run.study.Run`; a page of the book)."""
    parts = [run.dataset] + ([model_dir_name(run.model)] if run.model else [])
    return book_results_dir(run.parameters["study"]).joinpath(*parts, run.notebook)


def load_records(study: str) -> list[dict]:
    """The runner's records of a study's runs (``_runs/<run>.json``), sorted by file name."""
    folder = runs_dir(study)
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.exists() else []


# files of one model folder (``model_results``)
def activation_store(model_dir: str | Path) -> Path:
    return Path(model_dir) / "activations.zarr"


def vectors_dir(model_dir: str | Path) -> Path:
    return Path(model_dir) / "vectors"


def concept_quality_csv(model_dir: str | Path) -> Path:
    return Path(model_dir) / "concept_quality.csv"


def concept_table_csv(model_dir: str | Path, table: str) -> Path:
    """A further concept-stage table (``dissection``, ``dissection_summary``, ``dissection_best_unit``)."""
    return Path(model_dir) / f"{table}.csv"


def extraction_timings_json(model_dir: str | Path) -> Path:
    """Per-phase wall times of one extraction (model build, dataset, mask store, forward passes and writes)."""
    return Path(model_dir) / "extraction_timings.json"


def concept_stage_json(model_dir: str | Path) -> Path:
    return Path(model_dir) / "concept_stage.json"


# files of one dataset folder (``dataset_results``)
def comparison_files(dataset_dir: str | Path) -> dict[str, Path]:
    """The comparison stage's outputs: ``similarity``, ``layer_similarity``, ``grounding`` and ``findings``."""
    d = Path(dataset_dir)
    return {"similarity": d / "similarity.csv", "layer_similarity": d / "layer_similarity.csv",
            "grounding": d / "grounding.csv", "findings": d / "findings.json"}


def shortcut_csv(dataset_dir: str | Path) -> Path:
    """The shortcut test's scores (:func:`conceptsim.comparison.grounding.shortcut_frame`), where a study's
    networks have groups."""
    return Path(dataset_dir) / "shortcut.csv"


def comparison_stage_json(dataset_dir: str | Path) -> Path:
    """The comparison stage's record (what its outputs were computed from), written after them."""
    return Path(dataset_dir) / "comparison_stage.json"


def dataset_summary_files(dataset_dir: str | Path) -> tuple[Path, Path]:
    """``(dataset_summary.csv, dataset_examples.png)`` of a dataset folder."""
    return Path(dataset_dir) / "dataset_summary.csv", Path(dataset_dir) / "dataset_examples.png"


def dataset_summary_json(dataset_dir: str | Path) -> Path:
    """The dataset summary's record (what it was computed from), written after the summary's files."""
    return Path(dataset_dir) / "dataset_summary.json"


def configure_environment() -> None:
    """Point ultralytics, matplotlib and Jupyter config dirs into the cache; keep ultralytics offline.

    Values already set by the user win (``setdefault``).
    """
    cache = cache_dir()
    defaults = {
        "YOLO_CONFIG_DIR": cache / "ultralytics",
        "MPLCONFIGDIR": cache / "matplotlib",
        "JUPYTER_CONFIG_DIR": cache / "jupyter" / "config",
        "JUPYTER_DATA_DIR": cache / "jupyter" / "data",
        "JUPYTER_RUNTIME_DIR": cache / "jupyter" / "runtime",
        "IPYTHONDIR": cache / "ipython",
        "TORCH_HOME": cache / "torch",
    }
    for key, value in defaults.items():
        if key not in os.environ:
            os.environ[key] = str(value)
            Path(value).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    os.environ.setdefault("YOLO_VERBOSE", "False")
