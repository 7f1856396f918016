"""Generated book pages: what was run, how long it took, the environment, and the findings.

Numbers on these pages come from result files; none is typed by hand.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from conceptsim.atomic import write_text
from conceptsim.comparison.report import table
from conceptsim.paths import project_root, results_dir

if TYPE_CHECKING:
    from conceptsim.study import Run, Study

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


def write_reproducibility_page(study: "Study", records: list[dict], path: Path) -> Path:
    study_text = study.path.read_text() if study.path and study.path.exists() else yaml.safe_dump(study.raw)
    rows = [[r["id"], f"{r['seconds']:.1f}", r["notebook"]] for r in records]
    total = sum(r["seconds"] for r in records)
    text = [
        f"# Reproducibility record: study `{study.name}`\n",
        f"Study file: `{study.path.relative_to(project_root()) if study.path and study.path.is_relative_to(project_root()) else study.path}`"
        + (" (smoke mode: tiny parameters)" if study.smoke else "") + "\n",
        "## Commands\n",
        "```bash\nmake setup\n"
        f"conceptsim run {study.path.name if study.path else 'STUDY.yml'}{' --smoke' if study.smoke else ''}\n"
        "make book\n```\n",
        "## Measured wall time of each run\n",
        "Times are those of the run's last complete execution, as recorded by the runner "
        f"(`results/{study.name}/_runs/`). Total: {total:.1f} s.\n",
        table(["run", "seconds", "notebook"], rows) if rows else "No run has completed yet.\n",
        "## Environment\n",
        f"Python {platform.python_version()} on {platform.system()} {platform.machine()}.\n",
        table(["package", "version"], [[k, v] for k, v in package_versions().items()]),
        "## Study file\n",
        "```yaml\n" + study_text.rstrip() + "\n```\n",
    ]
    write_text(path, "\n".join(text))
    return path


def write_findings_page(study: "Study", path: Path) -> Path | None:
    """Per dataset, the findings rendered from ``findings.json`` (None when no dataset has one)."""
    parts = []
    for ds in study.datasets:
        fj = results_dir() / study.name / ds / "findings.json"
        if fj.exists():
            from conceptsim.comparison import report

            parts.append(f"## Dataset `{ds}`\n\n" + report.findings_markdown(json.loads(fj.read_text())))
    if not parts:
        return None
    header = (
        f"# Measured findings: study `{study.name}`\n\n"
        "Generated from each dataset's `findings.json` by the runner; nothing here is typed by hand.\n\n"
    )
    write_text(path, header + "\n".join(parts))
    return path


def dataset_index(study: "Study", dataset: str, runs: list["Run"]) -> str:
    lines = [f"# Dataset `{dataset}`\n", f"Executed notebooks of study `{study.name}` on dataset `{dataset}`.\n"]
    for r in runs:
        title = STAGE_TITLES[r.stage] + (f", model `{r.model}`" if r.model else "")
        lines.append(f"- {title}")
    return "\n".join(lines) + "\n"
