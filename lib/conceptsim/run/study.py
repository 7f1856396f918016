"""Study files: what to run, validated before anything runs, and expanded into runs.

A study (YAML) names datasets, models and stage parameters::

    name: default                 # results go to results/<name>/, notebooks to book/results/<name>/
    description: ...
    seed: 0
    datasets:                     # dataset name -> options
      shapes: {build: {n: 1200, size: 320}, max_images: null}
      coco-icons: {split: {by: style, test: [noto], val: [twemoji]}}   # split: whole groups of images
                                  # (conceptsim.data.splits); 'random' = by image; default: the dataset's own
      photo-colors: {bootstrap_by: source}   # the concept stage's bootstrap resamples source photos
      my_data: {coco: {images: DIR, annotations: FILE}, concepts: [...]}   # data.user_datasets
    models: [ssd_mobilenet_v2_coco, ssd_mobilenet_v2_coco:random]   # or NAME: SPEC (models.user_models)
    layers: {}                    # optional: model name -> list of dotted module paths, a glob or "auto"
                                  # (a twin NAME:random@S without its own entry is probed at NAME's layers)
    device: cpu                   # extraction and concept learning (also accepted as extraction.device)
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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conceptsim.models.names import base_name, is_twin, twin_name
from conceptsim.run import validation
from conceptsim.run.validation import StudyError, load_yaml, validate_study

__all__ = ["Run", "Study", "StudyError", "parse_study", "load_study", "NOTEBOOKS"]


SECTION_DEFAULTS = validation.SECTION_DEFAULTS  # stage options and their defaults (the schema: validation.SECTIONS)

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
    model_specs: dict[str, dict] = field(default_factory=dict)  # models declared in the study file

    @property
    def device(self) -> str:
        """The one device of the study: extraction and concept learning run on it."""
        return self.sections["extraction"]["device"]

    def layers_of(self, model: str) -> list[str] | str:
        """The probed layers asked for ``model``: its own ``layers`` entry, else its architecture's (twins
        are probed at their trained model's layers), else empty (the registry's default)."""
        return self.layers.get(model, self.layers.get(base_name(model), []))

    def runs(self) -> list[Run]:
        """Expand into runs; each gets only the parameters its stage uses (so its key is exact)."""
        out: list[Run] = []
        common = {"study": self.name, "seed": self.seed}
        for ds, ds_opts in self.datasets.items():
            concept_ids = []
            for model in self.models:
                user_spec = self.model_specs.get(base_name(model))
                ex = Run("extract", ds, model, {
                    **common, "dataset": ds, "model": model, "layers": self.layers_of(model),
                    "dataset_options": ds_opts, "split_options": self.sections["split"],
                    "extraction_options": self.sections["extraction"],
                    "model_spec": user_spec or {},  # a model declared in the study file (empty: a registry model)
                })
                deps = [ex.id]
                twin = twin_name(model)
                has_twin = not is_twin(model) and twin in self.models
                if has_twin:
                    deps.append(f"concepts/{ds}/{twin}")
                co = Run("concepts", ds, model, {
                    **common, "dataset": ds, "model": model, "random_twin": twin if has_twin else "",
                    "concept_options": self.sections["concepts"],
                    "device": self.device,
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


def parse_study(raw: dict[str, Any], path: Path | None = None, smoke: bool = False) -> Study:
    """Validate a study mapping (see module docstring and :func:`conceptsim.run.validation.validate_study`);
    raise :class:`StudyError` listing every problem."""
    v = validate_study(raw, path, smoke)
    return Study(v["name"], v["description"], v["seed"], v["datasets"], v["models"], v["layers"], v["sections"],
                 path, smoke, raw, v["model_specs"])


def load_study(path: str | Path, smoke: bool = False) -> Study:
    """Read (duplicate keys rejected) and validate a study file."""
    path = Path(path)
    return parse_study(load_yaml(path), path, smoke)
