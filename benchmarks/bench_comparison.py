"""Comparison stage: wall time of all pairwise layer comparisons and the findings, over the default study.

Measured as the study runs it: per dataset ``compare_layers`` (the comparison stage, notebook 03, with the
study's models, permutations and bootstrap resamples, outputs recomputed) and then ``compare_models``'s
reads of what it wrote (notebook 04 reads ``similarity.csv`` and ``findings.json``; its figures are not
timed). The entry's value is the sum over the datasets of both; ``details`` splits it.

When the default study's concept results exist (``results/default/<dataset>/<model>/`` for every model
and dataset, under ``$CONCEPTSIM_RESULTS`` or the project's ``results/``; another checkout's study is read
with ``CONCEPTSIM_RESULTS=<that checkout>/results``) the stage runs on them, writing only into the
benchmark's scratch folder. Otherwise it runs on a *synthetic
study of the same size*: for each dataset the same number of test images and concepts, the same models
(with twins) and, per model, the default probed layers with their real channel counts, stored grids
(after the grid cap) and relative depths (read by tracing the models), the same evaluation grid and the
study's permutation and bootstrap counts. Only the test images are built (the stage reads no others).
The entry says which was measured.
"""

from __future__ import annotations

import os
import shutil
import time

from common import Context, default_study, entry

NAME = "comparison"
OPT_IN = False
TARGET = 30.0


def default_layout(study, grid_cap: int) -> dict:
    """``{model: [(layer, relative depth, grid side, channels)]}`` of the study's models, from tracing."""
    from conceptsim.extraction.extract import probe_layers
    from conceptsim.models.names import is_twin, twin_name
    from conceptsim.models.registry import build_model
    from conceptsim.pipeline import probed_layers

    layout = {}
    for name in study.models:
        if is_twin(name):
            continue
        loaded = build_model(name)
        chosen = probed_layers(name, study.layers.get(name), study.sections["extraction"].get("max_layers", 0))
        infos, _ = probe_layers(loaded, chosen, grid_cap)
        # square grids in the synthetic builder: keep the larger side (never smaller than the real work)
        layout[name] = [(i.name, i.relative_depth, max(i.grid), i.channels) for i in infos]
        layout[twin_name(name)] = layout[name]
    return {m: layout[m] for m in study.models}


def dataset_sizes(study) -> dict:
    """Per dataset: (test images, concepts) of the default study's configuration."""
    from conceptsim.data.coco import ConceptDataset
    from conceptsim.pipeline import open_dataset

    out = {}
    for ds_name, opts in study.datasets.items():
        ds, _ = open_dataset(ds_name, opts, study.sections["split"], None, study.sections["extraction"]["eval_grid"],
                             split="test")
        assert isinstance(ds, ConceptDataset)
        out[ds_name] = (len(ds), [(c.name, c.category) for c in ds.concepts])
    return out


def real_results_exist(study) -> bool:
    from conceptsim.paths import concept_quality_csv, model_results

    return all(concept_quality_csv(model_results(study.name, d, m)).exists()
               for d in study.datasets for m in study.models)


def synthetic_study(ctx: Context, study, quick: bool) -> dict:
    from conceptsim.comparison.synthetic import build_synthetic_study, default_size_models

    ex = study.sections["extraction"]
    if quick:
        layout = default_size_models(n_models=2, n_layers=4, channels=8)
        sizes = {"synthetic": (16, [("a", "colour"), ("b", "shape"), ("c", "texture")])}
        grid = (16, 16)
    else:
        layout = default_layout(study, ex["grid_cap"])
        sizes = dataset_sizes(study)
        grid = (ex["eval_grid"], ex["eval_grid"])
    dirs = {}
    for ds_name, (n_test, concepts) in sizes.items():
        root = ctx.scratch / "comparison" / ds_name
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        # the builder plants one concept per channel: a layer needs at least as many channels as concepts
        fitted = {m: [(n, d, g, max(c, len(concepts))) for n, d, g, c in v] for m, v in layout.items()}
        # as many val images as test images (the default split is 0.6 / 0.2 / 0.2): the stage selects on val
        build_synthetic_study(root, fitted, n_images=2 * n_test, test_fraction=0.5, val_fraction=0.5,
                              concepts=concepts, eval_grid=grid, input_size=(300, 300), seed=0)
        ctx.log(f"comparison: synthetic {ds_name} ({n_test} test images, {len(concepts)} concepts) built in "
                f"{time.perf_counter() - t0:.1f} s")
        dirs[ds_name] = (root, n_test, len(concepts))
    return {"dirs": dirs, "models": list(layout), "layers": {m: len(v) for m, v in layout.items()}}


def real_spec(study) -> dict:
    """Sizes of the default study's own results: test images and concepts per dataset, layers per model."""
    import json

    from conceptsim.extraction.store import ActivationStore
    from conceptsim.paths import comparison_files, dataset_results, store_path

    dirs = {}
    for d in study.datasets:
        findings = json.loads(comparison_files(dataset_results(study.name, d))["findings"].read_text())
        dirs[d] = (dataset_results(study.name, d), int(findings["n_test"]), len(findings["concepts"]))
    first = next(iter(study.datasets))
    layers = {m: len(ActivationStore(store_path(study.name, first, m)).layers) for m in study.models}
    return {"dirs": dirs, "models": list(study.models), "layers": layers}


def run(ctx: Context) -> list[dict]:
    from conceptsim.comparison.stage import run_comparison_stage
    from conceptsim.runtime import torch_threads_from_environment

    study = default_study()
    cmp = study.sections["comparison"]
    perms, boot = (200, 50) if ctx.quick else (cmp["permutations"], cmp["bootstrap"])
    if not ctx.quick and real_results_exist(study):
        source = "default study results"
        spec = real_spec(study)
    else:
        source = ("synthetic study of the default study's size (the default study's concept results do not exist)"
                  if not ctx.quick else "small synthetic study (quick)")
        spec = synthetic_study(ctx, study, ctx.quick)
    totals, per_ds, reads = [], {d: [] for d in spec["dirs"]}, {d: [] for d in spec["dirs"]}
    for _ in range(ctx.repeat):
        total = 0.0
        for ds_name, (root, _, _) in spec["dirs"].items():
            out = ctx.scratch / "comparison-out" / ds_name
            out.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            paths = run_comparison_stage(root, out, models=spec["models"], seed=study.seed, permutations=perms,
                                         bootstrap=boot)
            dt = time.perf_counter() - t0
            per_ds[ds_name].append(dt)
            reads[ds_name].append(compare_models_reads(paths))
            total += dt + reads[ds_name][-1]
        totals.append(total)
        ctx.log(f"comparison: all datasets {total:.2f} s (compare_layers { {d: round(v[-1], 2) for d, v in per_ds.items()} }, "
                f"compare_models reads { {d: round(v[-1], 2) for d, v in reads.items()} }, load {os.getloadavg()[0]:.2f})")
    details = {"source": source, "datasets": {d: {"seconds": per_ds[d], "compare_models_read_seconds": reads[d],
                                                  "test_images": n, "concepts": k}
                                              for d, (_, n, k) in spec["dirs"].items()},
               "models": spec["models"], "layers_per_model": spec["layers"], "permutations": perms, "bootstrap": boot,
               "torch_threads": torch_threads_from_environment() or 1}
    return [entry("comparison_stage/default", "Comparison stage, all datasets of the default study", "wall time", "s",
                  totals, TARGET, "lower", details, benchmark=NAME, notes=source)]


def compare_models_reads(paths: dict) -> float:
    """Seconds of what notebook 04 (``compare_models``) reads from the stage's outputs: the similarity table
    and the findings document."""
    from conceptsim.api import read_table
    from conceptsim.comparison.report import load_findings

    t0 = time.perf_counter()
    read_table(paths["similarity"])
    load_findings(paths["findings"])
    return time.perf_counter() - t0
