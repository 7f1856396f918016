"""Generated book pages: what was run, how long it took, the environment, and the findings.

Numbers on these pages come from result files; none is typed by hand.
"""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from conceptsim.atomic import write_text
from conceptsim.comparison.report import table
from conceptsim.paths import project_root

if TYPE_CHECKING:
    from conceptsim.run.study import Run, Study

PACKAGES = (
    "torch", "torchvision", "ultralytics", "numpy", "pandas", "scikit-learn", "scikit-image", "matplotlib",
    "seaborn", "opencv-python", "pycocotools", "zarr", "papermill", "jupyter-book", "nbclient", "ipykernel",
)

STAGE_TITLES = {
    "extract": "Activation extraction",
    "concepts": "Concept learning",
    "compare_layers": "Layer comparison",
    "compare_models": "Model comparison and findings",
}


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def reused_outputs(record: dict) -> str | None:
    """What a run's last execution reused instead of computing, or None: an extraction whose timings say it
    found its stored activations, a concept or layer-comparison run whose stage record predates the run's
    start (the notebook re-executed after a code change, and the stage found its outputs still valid)."""
    import json

    from conceptsim.paths import comparison_stage_json, concept_stage_json, dataset_results, extraction_timings_json, \
        model_results

    params = record.get("parameters") or {}
    study, dataset, model, stage = params.get("study"), record.get("dataset"), record.get("model"), record.get("stage")
    if not study or not dataset:
        return None
    try:
        if stage == "extract" and model:
            path = extraction_timings_json(model_results(study, dataset, model))
            return "reused stored activations" if json.loads(path.read_text()).get("reused") else None
        if stage == "concepts" and model:
            stage_record, what = concept_stage_json(model_results(study, dataset, model)), "concept vectors"
        elif stage == "compare_layers":
            stage_record, what = comparison_stage_json(dataset_results(study, dataset)), "comparison outputs"
        else:
            return None
        started = record.get("started")
        return f"reused stored {what}" if started is not None and stage_record.stat().st_mtime < float(started) else None
    except (OSError, ValueError, AttributeError):  # no timings or record (an older run): nothing to say
        return None


def write_reproducibility_page(study: "Study", records: list[dict], path: Path) -> Path:
    study_text = study.path.read_text() if study.path and study.path.exists() else yaml.safe_dump(study.raw)
    rows = [[r["id"], f"{r['seconds']:.1f}" + (f" ({why})" if (why := reused_outputs(r)) else ""), r["notebook"]]
            for r in records]
    total = sum(r["seconds"] for r in records)
    study_file = study.path.relative_to(project_root()) if study.path and study.path.is_relative_to(project_root()) else study.path
    text = [
        f"# Reproducibility record: study `{study.name}`\n",
        f"Study file: `{study_file}`"
        + (" (smoke mode: tiny parameters)" if study.smoke else "") + "\n",
        "## Commands\n",
        "```bash\nmake setup\n"
        f"conceptsim run {study_file if study.path else 'STUDY.yml'}{' --smoke' if study.smoke else ''}\n"
        "make book\n```\n",
        "## Measured wall time of each run\n",
        "Times are those of the run's last complete execution, as recorded by the runner "
        f"(`results/{study.name}/_runs/`). Total: {total:.1f} s. A run re-executed after a code change that found "
        "its stage's stored outputs still valid (same inputs, parameters and stage code) reused them (marked below) and took "
        "seconds, so the total is not the cost of a fresh study; the Performance page measures that "
        "(`end_to_end/default`).\n",
        table(["run", "seconds", "notebook"], rows) if rows else "No run has completed yet.\n",
        *_declared_models_section(study),
        "## Environment\n",
        f"Python {platform.python_version()} on {platform.system()} {platform.machine()}.\n",
        table(["package", "version"], [[k, v] for k, v in package_versions().items()]),
        "## Study file\n",
        "```yaml\n" + study_text.rstrip() + "\n```\n",
    ]
    write_text(path, "\n".join(text))
    return path


def _declared_models_section(study: "Study") -> list[str]:
    """The models declared in the study file: each spec and the sha256 of its weights (or random init)."""
    specs = getattr(study, "model_specs", None) or {}
    if not specs:
        return []
    from conceptsim.models.user_models import describe_spec, model_status, weights_record

    rows = [[f"`{name}`", model_status(name, specs)["label"], weights_record(spec), f"`{describe_spec(spec)}`"]
            for name, spec in specs.items()]
    return [
        "## Models declared in the study file\n",
        "Each model's spec as the runs received it (paths resolved) and the sha256 of its weight file; a model "
        "declared without weights is randomly initialised, and its results are those of an untrained network.\n",
        table(["model", "status", "weights", "spec"], rows),
    ]


def page_title(run: "Run", model_specs: dict | None = None) -> str:
    """The navigation title of an executed notebook: its stage, and the model and dataset it is about (a
    declared model without weights says so: ``my_net (random init (no weights))``)."""
    from conceptsim.models.user_models import model_status

    model = run.model
    if model and not model_status(model, model_specs)["in_finding1"]:
        model = f"{model}, {model_status(model, model_specs)['label']}"
    return f"{STAGE_TITLES[run.stage]}: " + (f"{model} on {run.dataset}" if model else run.dataset)


def dataset_index(study: "Study", dataset: str, runs: list["Run"]) -> str:
    """The dataset's chapter page: a link to each run's executed notebook (kept beside it, in the model's
    folder: :func:`conceptsim.paths.executed_path`)."""
    from conceptsim.paths import model_dir_name

    lines = [f"# Dataset `{dataset}`\n", f"Executed notebooks of study `{study.name}` on dataset `{dataset}`.\n"]
    for r in runs:
        link = "/".join(([model_dir_name(r.model)] if r.model else []) + [r.notebook])
        lines.append(f"- [{page_title(r, study.model_specs)}]({link})")
    return "\n".join(lines) + "\n"


INJECTED_NOTE = ("The parameters this run used, passed by the study runner (`conceptsim run`); the notebook's "
                 "own defaults cell is hidden on this page.")


def label_parameter_cells(path: Path) -> bool:
    """Make an executed notebook show the parameters that ran: hide the defaults cell (tag ``remove-cell``)
    and put a note before papermill's ``injected-parameters`` cell. Returns whether the notebook changed
    (not when it has no injected cell, or was labelled already)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    tags = [c.get("metadata", {}).get("tags", []) for c in nb.cells]
    injected = next((i for i, t in enumerate(tags) if "injected-parameters" in t), None)
    if injected is None or any("parameters-note" in t for t in tags):
        return False
    for cell, t in zip(nb.cells, tags):
        if "parameters" in t and "remove-cell" not in t:
            cell.metadata["tags"] = [*t, "remove-cell"]
    nb.cells.insert(injected, nbformat.v4.new_markdown_cell(INJECTED_NOTE, metadata={"tags": ["parameters-note"]}))
    nbformat.write(nb, path)
    return True
