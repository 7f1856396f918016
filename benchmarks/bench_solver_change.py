"""The change against the reference solvers on the default study (issue 24): per dataset, the median and
largest |delta test AP| and |delta test set IoU| over (model, layer, concept).

The default study's results (``results/default/<dataset>/<model>/``: ``concept_quality.csv``,
``concept_stage.json`` and ``activations.zarr``) are read, never written. For every model (trained, twins,
pixels) and every probed layer, with the study's own probe settings (``concept_stage.json``'s parameters;
one thread), the concept stage's Method B (:func:`conceptsim.concepts.stage.run_cls`, with its
shuffled-label control) runs twice side by side, in alternating order: with the study's solver
(``cls_solver``, by default batched L-BFGS) and with the reference (scikit-learn).

- |delta AP|: the study's stored test AP against the reference's on the same stored activations. The live
  run with the study's solver checks that the stored values are reproduced (``reproduction`` in the details).
  Both solvers choose C from the same grid by val AP, so a difference has two sources: the solvers' fits at
  one C, and a different C chosen where val AP barely depends on C (a near tie moved by the fits' small
  differences, or by scikit-learn stopping before the optimum at large C). ``ap_same_c`` pools the values
  where both chose the same C (the solvers' own difference), ``ap_other_c`` the others (read from the
  stored and the rerun vector files' ``chosen_c``).
- |delta IoU|: the study's Method A solver (``seg_solver``) against the reference (Adam with early stopping
  on val IoU). The default study's solver *is* the reference, so the change is zero by construction; it is
  computed, not assumed: Method A is rerun with the reference solver on every layer of the trained models
  (not their twins or pixels, to bound the time; ``BENCH_SOLVER_SEG_MODELS`` names others) and compared with
  the stored IoUs. For information, the full-batch solver (``seg_solver="lbfgs"``) runs there too against
  the same reference.

Only the test point values are compared; the bootstrap intervals are not (:data:`BOOTSTRAP` resamples).
Seconds of each solver are summed per dataset, measured in the same process.

Study folder: ``$CONCEPTSIM_RESULTS/default`` when that variable is set; else the end-to-end benchmark's
sandbox (``scratch/full/e2e-default/results/default``, the default study run by this ``make bench``) when it
holds results; else ``results/default``. ``BENCH_SOLVER_MODELS`` (comma-separated model names) restricts
the models, ``BENCH_SOLVER_SEG_MODELS`` those where Method A is rerun (default: the trained ones).
``--quick``: a small study of two planted stores (a "trained" model and a twin) made in the
scratch folder by the concept stage itself.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from bench_concepts import DELTA_TARGET, abs_deltas, delta_summary, solver_runs
from common import Context, entry

NAME = "solver_change"
OPT_IN = False
BOOTSTRAP = 100  # the intervals are not compared; the point values do not depend on the resamples
METRICS = {"seg": "set_iou", "cls": "ap"}


def study_folder(ctx: Context) -> Path:
    """The default study's results folder (see the module docstring)."""
    from conceptsim.paths import results_dir, study_results

    sandbox = ctx.scratch / "e2e-default" / "results" / "default"
    if "CONCEPTSIM_RESULTS" not in os.environ and any(sandbox.glob("*/*/concept_quality.csv")):
        return sandbox
    return study_results("default", results_dir())


def model_folders(root: Path, models: list[str] | None = None) -> list[Path]:
    """``<dataset>/<model>/`` folders with a concept stage's outputs and their store, sorted."""
    from conceptsim.paths import activation_store, concept_quality_csv, model_dir_name

    found = sorted(p.parent for p in root.glob("*/*/concept_stage.json")
                   if concept_quality_csv(p.parent).exists() and activation_store(p.parent).exists())
    if models:
        found = [f for f in found if f.name in {model_dir_name(m) for m in models}]
    if not found:
        raise FileNotFoundError(f"no concept-stage results with an activation store under {root}/<dataset>/<model>/ "
                                "(run the default study first: `make study`, or set CONCEPTSIM_RESULTS)")
    return found


def study_params(stage_json: Path):
    """The probe settings a concept stage ran with (``concept_stage.json``) as its Params, and the rest."""
    from conceptsim.concepts.stage import Params

    par = json.loads(stage_json.read_text())["parameters"]
    fields = Params.__dataclass_fields__
    missing = [k for k in fields if k not in par]
    if missing:
        raise ValueError(f"{stage_json}: parameters lack {missing}")
    return Params(**{k: par[k] for k in fields}), par


def stored_values(csv: Path) -> dict:
    """``{(layer, concept, metric): test value}`` of a concept_quality.csv (set IoU and AP)."""
    q = pd.read_csv(csv)
    q = q[q["metric"].isin(METRICS.values())]
    return {(r.layer, r.concept, r.metric): float(r.value) for r in q.itertuples()}


def is_trained(folder: Path) -> bool:
    from conceptsim.models.names import PIXELS_MODEL, is_twin

    model = folder.name.replace("__", ":")
    return not is_twin(model) and model != PIXELS_MODEL


def measure_model(ctx: Context, folder: Path, with_seg: bool) -> dict:
    """Values and seconds of every solver on every probed layer of one model (see the module docstring)."""
    from conceptsim.concepts.stage import load_layer, prepare
    from conceptsim.extraction.store import ActivationStore
    from conceptsim.paths import activation_store, concept_quality_csv, concept_stage_json, vectors_dir

    p, par = study_params(concept_stage_json(folder))
    store = ActivationStore(activation_store(folder))
    inp, _ = prepare(store, par.get("concepts"), BOOTSTRAP, p.seed)
    reference = replace(p, seg_solver="reference", cls_solver="reference")
    seg_default = with_seg and p.seg_solver != "reference"  # else the reference run is the study's own solver
    runs = {"default": (p, ("cls",) + (("seg",) if seg_default else ())),
            "reference": (reference, ("cls",) + (("seg",) if with_seg else ()))}
    if with_seg:
        runs["seg_lbfgs"] = (replace(p, seg_solver="lbfgs"), ("seg",))
    values = {name: {} for name in runs}
    seconds = {name: {} for name in runs}
    same_c: dict[tuple[str, str], bool] = {}
    scratch = ctx.scratch / "solver-change" / folder.parent.name / folder.name
    for i, layer in enumerate(par.get("layers") or store.layer_names):
        info = store.layer(layer)
        data = load_layer(inp, info, float(par.get("memory_budget_gb", 4.0)) * 2**30)
        vals, secs = solver_runs(ctx, inp, info, data, runs, scratch, flip=i % 2 == 1)
        same_c.update(same_chosen_c(vectors_dir(folder), scratch / "solver-vectors-reference", layer))
        for name in runs:
            values[name].update(vals[name])
            for method, dt in secs[name].items():
                seconds[name][method] = seconds[name].get(method, 0.0) + dt
        del data
    if with_seg and not seg_default:
        values["default"].update({k: v for k, v in values["reference"].items() if k[2] == METRICS["seg"]})
        seconds["default"]["seg"] = seconds["reference"]["seg"]
    return {"stored": stored_values(concept_quality_csv(folder)), "values": values, "seconds": seconds, "same_c": same_c,
            "seg_solver": p.seg_solver, "cls_solver": p.cls_solver, "layers": len(par.get("layers") or store.layer_names)}


def same_chosen_c(stored_dir: Path, rerun_dir: Path, layer: str) -> dict[tuple[str, str], bool]:
    """Per concept of ``layer``'s classification probes: did the study and the rerun choose the same C?"""
    from conceptsim.concepts.vectors import load_layer_vectors

    a, b = load_layer_vectors(stored_dir, layer, "cls"), load_layer_vectors(rerun_dir, layer, "cls")
    rerun = dict(zip(b["concepts"], np.asarray(b["chosen_c"], dtype=float)))
    return {(layer, c): bool(c in rerun and float(v) == rerun[c])
            for c, v in zip(a["concepts"], np.asarray(a["chosen_c"], dtype=float))}


def split_by_c(stored: dict, rerun: dict, same_c: dict) -> tuple[np.ndarray, np.ndarray]:
    """``|stored - rerun|`` AP values where both chose the same C, and where they did not."""
    same = {k: v for k, v in stored.items() if same_c.get(k[:2], False)}
    other = {k: v for k, v in stored.items() if k not in same}
    return abs_deltas(same, rerun, "ap"), abs_deltas(other, rerun, "ap")


def dataset_summary(measured: dict[str, dict]) -> dict:
    """Per dataset: deltas pooled over its models, and the seconds of each solver."""
    d: dict = {"models": sorted(measured), "layers": sum(m["layers"] for m in measured.values()),
               "seg_models": sorted(k for k, m in measured.items() if "seg" in m["seconds"]["reference"])}
    pooled = {key: [] for key in ("ap", "ap_same_c", "ap_other_c", "ap_reproduction", "iou", "iou_lbfgs")}
    secs = {"cls_default_s": 0.0, "cls_reference_s": 0.0, "seg_default_s": 0.0, "seg_reference_s": 0.0, "seg_lbfgs_s": 0.0}
    for m in measured.values():
        v, s = m["values"], m["seconds"]
        pooled["ap"].append(abs_deltas(m["stored"], v["reference"], "ap"))
        pooled["ap_reproduction"].append(abs_deltas(m["stored"], v["default"], "ap"))
        for key, deltas in zip(("ap_same_c", "ap_other_c"), split_by_c(m["stored"], v["reference"], m["same_c"])):
            pooled[key].append(deltas)
        secs["cls_default_s"] += s["default"]["cls"]
        secs["cls_reference_s"] += s["reference"]["cls"]
        if "seg" in s["reference"]:
            pooled["iou"].append(abs_deltas(m["stored"], v["reference"], "set_iou"))
            pooled["iou_lbfgs"].append(abs_deltas(v["seg_lbfgs"], v["reference"], "set_iou"))
            secs["seg_default_s"] += s["default"]["seg"]
            secs["seg_reference_s"] += s["reference"]["seg"]
            secs["seg_lbfgs_s"] += s["seg_lbfgs"]["seg"]
    d.update({k: delta_summary(np.concatenate(v) if v else np.zeros(0)) for k, v in pooled.items()})
    d.update(secs)
    d["solvers"] = {k: sorted({m[k] for m in measured.values()}) for k in ("seg_solver", "cls_solver")}
    return d


def quick_study(ctx: Context) -> Path:
    """Two planted stores (a trained model and its twin) with the concept stage's outputs, in scratch."""
    from conceptsim.concepts.stage import run_concept_stage
    from conceptsim.concepts.synthetic import planted_store
    from conceptsim.paths import activation_store

    root = ctx.scratch / "solver-change-study" / "default"
    for seed, model in enumerate(("planted", "planted__random")):
        folder = root / "synthetic" / model
        if not (folder / "concept_quality.csv").exists():
            path, _ = planted_store(activation_store(folder), n_split=(40, 12, 12), channels=8, grid=(6, 6), k=3,
                                    noise_layers=1, seed=seed)
            run_concept_stage(path, folder, epochs=3, patience=2, bootstrap=20, dissection=False,
                              constant_channels="allow")
    return root


def run(ctx: Context) -> list[dict]:
    import torch

    from conceptsim.runtime import configure_process

    configure_process()
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # results and seconds of one thread, as the study records them
    try:
        return measure(ctx)
    finally:
        torch.set_num_threads(before)


def measure(ctx: Context) -> list[dict]:
    """The body of :func:`run`, with one thread."""
    import torch

    from conceptsim.paths import model_dir_name

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # the reference's one-off import is not timed
    root = quick_study(ctx) if ctx.quick else study_folder(ctx)
    env_models = [m for m in os.environ.get("BENCH_SOLVER_MODELS", "").split(",") if m]
    seg_models = [m for m in os.environ.get("BENCH_SOLVER_SEG_MODELS", "").split(",") if m]
    folders = model_folders(root, env_models or None)
    seg_folders = {f for f in folders if (f.name in {model_dir_name(m) for m in seg_models} if seg_models else is_trained(f))}
    chosen = "".join(f"; {k}={','.join(v)}" for k, v in (("BENCH_SOLVER_MODELS", env_models),
                                                          ("BENCH_SOLVER_SEG_MODELS", seg_models)) if v)
    source = f"{root} ({len(folders)} model folders{chosen})"
    ctx.log(f"solver change: {source}")
    per_dataset: dict[str, dict] = {}
    t_all = time.perf_counter()
    for folder in folders:
        t0 = time.perf_counter()
        per_dataset.setdefault(folder.parent.name, {})[folder.name] = measure_model(ctx, folder, folder in seg_folders)
        secs = {k: {m: round(t, 1) for m, t in v.items()} for k, v in per_dataset[folder.parent.name][folder.name]["seconds"].items()}
        ctx.log(f"solver change {folder.parent.name}/{folder.name}: {time.perf_counter() - t0:.1f} s {secs}")
    summaries = {ds: dataset_summary(m) for ds, m in per_dataset.items()}
    common = {"source": source, "bootstrap": BOOTSTRAP, "threads": torch.get_num_threads(), "datasets": summaries,
              "wall_s": round(time.perf_counter() - t_all, 1),
              "note": "AP: stored default (study's cls_solver) vs Method B rerun with the reference solver (scikit-learn) "
                      "on every model and layer; IoU: stored default (study's seg_solver) vs Method A rerun with the "
                      "reference solver (Adam, early stopping on val IoU) on the trained models' layers; iou_lbfgs: "
                      "seg_solver='lbfgs' vs the reference there, for information"}
    out = []
    for ds, s in summaries.items():
        out.append(entry(f"solver_change/ap/{ds}", f"Default vs reference Method B solver on the default study ({ds}): "
                         "median |delta test AP| (largest in details)", "median |dAP|", "AP", [s["ap"]["median"]],
                         DELTA_TARGET["ap"], "lower", {**common, "dataset": ds}, benchmark=NAME, notes=source))
        if s["iou"]["n"]:
            out.append(entry(f"solver_change/iou/{ds}", f"Default vs reference Method A solver on the default study ({ds}, "
                             "trained models): median |delta test set IoU| (largest in details)", "median |dIoU|", "IoU",
                             [s["iou"]["median"]], DELTA_TARGET["set_iou"], "lower", {**common, "dataset": ds},
                             benchmark=NAME, notes=source))
    ref = sum(s["cls_reference_s"] + s["seg_reference_s"] for s in summaries.values())
    default = sum(s["cls_default_s"] + s["seg_default_s"] for s in summaries.values())
    out.append(entry("solver_change/seconds", "Concept probes on the default study (Method B everywhere, Method A on the "
                     "trained models): reference ÷ default solver seconds, side by side", "ratio", "x", [ref / default],
                     None, "higher", {**common, "reference_s": ref, "default_s": default},
                     benchmark=NAME, notes=source))
    return out
