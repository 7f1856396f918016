"""Study files: what to run, validated before anything runs, and expanded into runs.

A study (YAML) names datasets, models and stage parameters::

    name: default                 # results go to results/<name>/, notebooks to book/results/<name>/
    description: ...
    seed: 0
    datasets:                     # dataset name -> options
      shapes: {build: {n: 1200, size: 320}, max_images: null}
    models: [ssd_mobilenet_v2_coco, ssd_mobilenet_v2_coco:random]
    layers: {}                    # optional: model name -> list of dotted module paths
    split: {fractions: [0.6, 0.2, 0.2], seed: 0, min_area: 0.005}
    extraction: {batch_size: 8, grid_cap: 40, eval_grid: 112, dtype: float16, device: cpu, num_workers: 0,
                 max_layers: 0,          # max_layers > 0 keeps that many default layers, evenly spread
                 compression: none}      # activations stored raw (none) or zstd-compressed (zstd: about 2/3
                                         # of the disk, a little more extraction time)
    concepts: {loss: balanced_bce, lr: 0.01, epochs: 30, patience: 5, bootstrap: 1000}
    comparison: {permutations: 10000, bootstrap: 1000}
    smoke: {...}                  # overrides merged in by --smoke (same keys as above)

Runs, per dataset D and model M: ``extract/D/M`` (notebook 01), ``concepts/D/M`` (02, after the
extraction, and after the random-init twin's concept run when the twin is in the study); per dataset:
``compare_layers/D`` (03, after every concept run of D), ``compare_models/D`` (04, after 03).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from conceptsim.concepts.net2vec import LOSSES
from conceptsim.extraction.store import COMPRESSORS, STORE_DTYPES
from conceptsim.models.names import is_twin, twin_name
from conceptsim.models.registry import UnknownModelError, parse_model_name


class StudyError(ValueError):
    """A study file is invalid; the message names the key and the accepted values."""


SECTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "split": {"fractions": [0.6, 0.2, 0.2], "seed": 0, "min_area": 0.005},
    "extraction": {"batch_size": 8, "grid_cap": 40, "eval_grid": 112, "dtype": "float16", "device": "cpu",
                   "num_workers": 0, "max_layers": 0, "compression": "none"},
    "concepts": {"loss": "balanced_bce", "lr": 0.01, "epochs": 30, "patience": 5, "bootstrap": 1000,
                 "dissection": True},
    "comparison": {"permutations": 10000, "bootstrap": 1000},
}
# the stages own their allowed values; the study file is checked against them
ALLOWED = {
    "extraction.dtype": STORE_DTYPES,
    "extraction.compression": tuple(COMPRESSORS),
    "concepts.loss": LOSSES,
}
TOP_KEYS = {"name", "description", "seed", "datasets", "models", "layers", "smoke", *SECTION_DEFAULTS}
DATASET_KEYS = {"build", "max_images", "root", "concepts"}

NOTEBOOKS = {
    "extract": "01_extract.ipynb",
    "concepts": "02_concepts.ipynb",
    "compare_layers": "03_compare_layers.ipynb",
    "compare_models": "04_compare_models.ipynb",
}


@dataclass(frozen=True)
class Run:
    """One notebook execution."""

    stage: str
    dataset: str
    model: str | None
    parameters: dict[str, Any]
    depends_on: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.stage}/{self.dataset}" + (f"/{self.model}" if self.model else "")

    @property
    def notebook(self) -> str:
        return NOTEBOOKS[self.stage]


@dataclass
class Study:
    name: str
    description: str
    seed: int
    datasets: dict[str, dict[str, Any]]
    models: list[str]
    layers: dict[str, list[str]]
    sections: dict[str, dict[str, Any]]
    path: Path | None = None
    smoke: bool = False
    raw: dict[str, Any] = field(default_factory=dict)

    def runs(self) -> list[Run]:
        """Expand into runs; each gets only the parameters its stage uses (so its key is exact)."""
        out: list[Run] = []
        common = {"study": self.name, "seed": self.seed}
        for ds, ds_opts in self.datasets.items():
            concept_ids = []
            for model in self.models:
                ex = Run("extract", ds, model, {
                    **common, "dataset": ds, "model": model, "layers": self.layers.get(model, []),
                    "dataset_options": ds_opts, "split_options": self.sections["split"],
                    "extraction_options": self.sections["extraction"],
                })
                deps = [ex.id]
                twin = twin_name(model)
                has_twin = not is_twin(model) and twin in self.models
                if has_twin:
                    deps.append(f"concepts/{ds}/{twin}")
                co = Run("concepts", ds, model, {
                    **common, "dataset": ds, "model": model, "random_twin": twin if has_twin else "",
                    "concept_options": self.sections["concepts"],
                    "device": self.sections["extraction"]["device"],
                }, tuple(deps))
                out += [ex, co]
                concept_ids.append(co.id)
            dparams = {**common, "dataset": ds, "models": list(self.models),
                       "comparison_options": self.sections["comparison"]}
            cl = Run("compare_layers", ds, None, dparams, tuple(concept_ids))
            # notebook 04 only renders 03's results: no seed or comparison options
            cm = Run("compare_models", ds, None, {"study": self.name, "dataset": ds, "models": list(self.models)}, (cl.id,))
            out += [cl, cm]
        return out

    def section(self, name: str) -> dict[str, Any]:
        return self.sections[name]


def _fail(path: Path | None, msg: str) -> StudyError:
    return StudyError(f"{path or 'study'}: {msg}")


def _check_keys(where: str, got: dict, allowed: set, path: Path | None) -> None:
    unknown = sorted(set(got) - allowed)
    if unknown:
        raise _fail(path, f"unknown key(s) {unknown} in {where}; accepted keys: {sorted(allowed)}")


def _check_section(name: str, values: dict, path: Path | None) -> dict:
    if not isinstance(values, dict):
        raise _fail(path, f"'{name}' must be a mapping, got {type(values).__name__}")
    defaults = SECTION_DEFAULTS[name]
    _check_keys(f"'{name}'", values, set(defaults), path)
    merged = {**defaults, **values}
    for key, value in values.items():
        want = type(defaults[key])
        ok = isinstance(value, want) or (want is float and isinstance(value, int) and not isinstance(value, bool))
        if isinstance(value, bool) and want is not bool:
            ok = False
        if not ok:
            raise _fail(path, f"'{name}.{key}' must be of type {want.__name__}, got {value!r}")
        allowed = ALLOWED.get(f"{name}.{key}")
        if allowed and value not in allowed:
            raise _fail(path, f"'{name}.{key}' must be one of {list(allowed)}, got {value!r}")
    fr = merged.get("fractions")
    if fr is not None and (len(fr) != 3 or any(f < 0 for f in fr) or abs(sum(fr) - 1) > 1e-6):
        raise _fail(path, f"'split.fractions' must be three non-negative numbers summing to 1, got {fr}")
    return merged


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def parse_study(raw: dict[str, Any], path: Path | None = None, smoke: bool = False) -> Study:
    """Validate a study mapping (see module docstring); raise :class:`StudyError` on any problem."""
    from conceptsim.data.registry import DATASETS

    if not isinstance(raw, dict):
        raise _fail(path, "a study file must be a YAML mapping")
    _check_keys("the study", raw, TOP_KEYS, path)
    for req in ("name", "datasets", "models"):
        if req not in raw:
            raise _fail(path, f"missing required key '{req}'")
    if smoke:
        smoke_over = raw.get("smoke") or {}
        if not isinstance(smoke_over, dict):
            raise _fail(path, "'smoke' must be a mapping")
        _check_keys("'smoke'", smoke_over, TOP_KEYS - {"smoke", "name"}, path)
        raw = _deep_merge(raw, smoke_over)
    name = raw["name"]
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise _fail(path, f"'name' must be a simple identifier (letters, digits, - and _), got {name!r}")
    if smoke:  # smoke results never mix with the full study's
        name = f"{name}-smoke"
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise _fail(path, f"'seed' must be an integer, got {seed!r}")
    datasets = raw["datasets"]
    if not isinstance(datasets, dict) or not datasets:
        raise _fail(path, "'datasets' must be a non-empty mapping of dataset name -> options")
    for ds, opts in datasets.items():
        if ds not in DATASETS:
            raise _fail(path, f"unknown dataset {ds!r} in 'datasets'; accepted: {sorted(DATASETS)}")
        if opts is None:
            datasets[ds] = opts = {}
        if not isinstance(opts, dict):
            raise _fail(path, f"'datasets.{ds}' must be a mapping, got {type(opts).__name__}")
        _check_keys(f"'datasets.{ds}'", opts, DATASET_KEYS, path)
        mi = opts.get("max_images")
        if mi is not None and (not isinstance(mi, int) or isinstance(mi, bool) or mi <= 0):
            raise _fail(path, f"'datasets.{ds}.max_images' must be a positive integer or null, got {mi!r}")
    models = raw["models"]
    if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
        raise _fail(path, "'models' must be a non-empty list of model names")
    if len(set(models)) != len(models):
        raise _fail(path, f"'models' lists a model twice: {models}")
    for m in models:
        try:
            parse_model_name(m)
        except UnknownModelError as exc:
            raise _fail(path, f"in 'models': {exc}") from None
    layers = raw.get("layers") or {}
    if not isinstance(layers, dict):
        raise _fail(path, "'layers' must be a mapping of model name -> list of layer names")
    for m, names in layers.items():
        if m not in models:
            raise _fail(path, f"'layers' names model {m!r}, which is not in 'models' {models}")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise _fail(path, f"'layers.{m}' must be a list of dotted module paths")
    sections = {k: _check_section(k, raw.get(k) or {}, path) for k in SECTION_DEFAULTS}
    return Study(name, str(raw.get("description", "")), seed, datasets, list(models),
                 {k: list(v) for k, v in layers.items()}, sections, path, smoke, raw)


def load_study(path: str | Path, smoke: bool = False) -> Study:
    path = Path(path)
    if not path.exists():
        raise StudyError(f"study file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise StudyError(f"{path}: not valid YAML ({exc})") from None
    return parse_study(raw, path, smoke)


def validate_layers(study: Study) -> None:
    """Check every custom layer name against the built model (needs the models; run before anything)."""
    from conceptsim.extraction.hooks import resolve_layers
    from conceptsim.models.registry import build_model

    for model, names in study.layers.items():
        if names:
            loaded = build_model(twin_name(model))
            try:
                resolve_layers(loaded.module, names, model)
            except KeyError as exc:
                raise _fail(study.path, f"in 'layers.{model}': {exc}") from None
