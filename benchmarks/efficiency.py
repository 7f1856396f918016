"""Study efficiency and the breakdown of a study's wall time, from what a run of the study recorded.

**Study efficiency** = wall time of the study ÷ (sum over the study's models and datasets of the bare
forward pass over the dataset's images, single-threaded, ÷ cores): how far the whole study is from the
cost of only running every model once over its images on every core. 1.0 is that floor.

The breakdown sums, over the study's runs (``results/<study>/_runs/*.json``: wall ``seconds`` and the
executed notebook), what each part cost, from papermill's per-cell timings
(``metadata.papermill.duration`` of every executed cell) and the concept stage's own timings
(``concept_stage.json``: per layer ``load_s``, ``seg_s``, ``cls_s``, ``dissection_s``;
``extraction_timings.json``, written by ``pipeline.run_extraction``):

- ``kernel start-up``: a run's wall time minus the time of its cells (papermill, writing the executed copy,
  and the kernel: launched for a worker's first run, reset after every run, :mod:`conceptsim.run.kernels`);
- ``imports``: the first code cell after the parameters (imports and thread set-up);
- ``model build``, ``dataset opening``, ``extraction: mask store``, ``extraction: forward passes and
  writes``: the cell calling ``pipeline.run_extraction``, split by ``extraction_timings.json``; what is
  left of the cell stays ``extraction``;
- ``concepts: <part>``: the cell calling ``pipeline.run_concepts``, split by ``concept_stage.json`` into
  loading activations, ``seg``, ``cls``, dissection, and the rest (bootstrap tables, writes);
- ``dataset summary``, ``comparison``: the cells calling ``pipeline.dataset_summary`` /
  ``pipeline.run_comparison``;
- ``figures and tables``: every other cell.

With ``--jobs 2`` runs overlap, so the parts sum to more than the wall time (they are run-seconds).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

PARTS = ("kernel start-up", "imports", "model build", "dataset opening", "extraction: mask store",
         "extraction: forward passes and writes", "extraction", "concepts: loading activations", "concepts: seg",
         "concepts: cls", "concepts: dissection", "concepts: other", "dataset summary", "comparison",
         "figures and tables", "book build")
STAGE_CALLS = (("run_extraction", "extraction"), ("run_concepts", "concepts"), ("dataset_summary", "dataset summary"),
               ("run_comparison", "comparison"))
EXTRACTION_TIMINGS = (("model_build_s", "model build"), ("dataset_open_s", "dataset opening"),
                      ("mask_store_s", "extraction: mask store"), ("activations_s", "extraction: forward passes and writes"))
CONCEPT_TIMINGS = (("load_s", "concepts: loading activations"), ("seg_s", "concepts: seg"), ("cls_s", "concepts: cls"),
                   ("dissection_s", "concepts: dissection"))


def cell_parts(nb: dict) -> dict[str, float]:
    """Seconds per part of one executed notebook (papermill cell durations; see the module docstring)."""
    parts: dict[str, float] = defaultdict(float)
    setup_seen = False
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        meta = cell.get("metadata", {})
        tags = meta.get("tags", [])
        seconds = float((meta.get("papermill") or {}).get("duration") or 0.0)
        source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        if "parameters" in tags or "injected-parameters" in tags:
            parts["figures and tables"] += seconds
            continue
        part = next((name for call, name in STAGE_CALLS if f"{call}(" in source), None)
        if part is None and not setup_seen:
            part = "imports"
        setup_seen = True
        parts[part or "figures and tables"] += seconds
    return dict(parts)


def split_concepts(seconds: float, stage_json: dict) -> dict[str, float]:
    """The concept cell's seconds split by the stage's per-layer timings; the rest is ``concepts: other``."""
    out: dict[str, float] = defaultdict(float)
    for rec in stage_json.get("layers", {}).values():
        for key, name in CONCEPT_TIMINGS:
            out[name] += float(rec.get(key, 0.0))
    out["concepts: other"] = max(0.0, seconds - sum(out.values()))
    return dict(out)


def split_extraction(seconds: float, timings: dict) -> dict[str, float]:
    """The extraction cell's seconds split by ``extraction_timings.json``; the rest stays ``extraction``."""
    out = {name: float(timings[key]) for key, name in EXTRACTION_TIMINGS if timings.get(key) is not None}
    out["extraction"] = max(0.0, seconds - sum(out.values()))
    return out


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def run_parts(record: dict, project_root: Path, study_results: Path) -> dict[str, float]:
    """Seconds per part of one recorded run; they sum to its wall time."""
    nb_path = Path(record["executed_notebook"])
    nb = json.loads((nb_path if nb_path.is_absolute() else project_root / nb_path).read_text())
    parts = cell_parts(nb)
    model_results = study_results / record["dataset"] / (record.get("model") or "").replace(":", "__")
    if "concepts" in parts:
        parts.update(split_concepts(parts.pop("concepts"), _json(model_results / "concept_stage.json")))
    if "extraction" in parts:
        parts.update(split_extraction(parts.pop("extraction"), _json(model_results / "extraction_timings.json")))
    parts["kernel start-up"] = max(0.0, float(record["seconds"]) - sum(parts.values()))
    return parts


def study_breakdown(study_results: Path, project_root: Path, book_build_s: float | None = None) -> dict:
    """Parts summed over every recorded run of a study (``results/<study>``), per stage too."""
    records = [json.loads(p.read_text()) for p in sorted((study_results / "_runs").glob("*.json"))]
    records = [r for r in records if r.get("status", "ok") == "ok"]
    if not records:
        raise FileNotFoundError(f"no complete run recorded in {study_results / '_runs'}")
    total: dict[str, float] = defaultdict(float)
    per_stage: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for rec in records:
        for part, seconds in run_parts(rec, project_root, study_results).items():
            total[part] += seconds
            per_stage[rec["stage"]][part] += seconds
    if book_build_s is not None:
        total["book build"] = float(book_build_s)
    return {"runs": len(records), "run_seconds": sum(float(r["seconds"]) for r in records),
            "parts": {p: round(total[p], 3) for p in PARTS if p in total},
            "per_stage": {s: {p: round(v, 3) for p, v in d.items()} for s, d in per_stage.items()},
            "kernel_start_up_per_run": round(total["kernel start-up"] / len(records), 3),
            "imports_per_run": round(total["imports"] / len(records), 3)}


def forward_floor(bare_forward_s: dict[str, float], cores: int) -> float:
    """Seconds the study cannot beat: single-threaded bare forward passes of every (dataset, model) on all cores."""
    if cores < 1:
        raise ValueError(f"cores must be at least 1, got {cores}")
    if not bare_forward_s:
        raise ValueError("no bare forward-pass times given")
    return sum(bare_forward_s.values()) / cores


def study_efficiency(wall_s: float, bare_forward_s: dict[str, float], cores: int) -> float:
    """Wall time of the study over its forward-pass floor (see the module docstring)."""
    return wall_s / forward_floor(bare_forward_s, cores)
