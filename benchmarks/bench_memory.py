"""Memory scaling: peak RSS of extraction, concepts and comparison at N and 4N images.

Each (stage, size) runs in a fresh Python process that imports the library, runs the stage once and
reports its own peak resident set size (``VmHWM`` from ``/proc/self/status`` and ``ru_maxrss`` from
``getrusage``; nothing is subtracted, so both numbers include the interpreter, torch and the model).
The entry's figure is the ratio peak(4N) / peak(N). The children also time the stage, which gives the
per-image rates the projection uses (slope between N and 4N, so fixed start-up costs cancel).

- extraction: ``ssd_mobilenet_v2_coco`` on ``shapes`` (default build), the default extraction settings;
- concepts: the concept stage (default probe settings, its first three probed layers: the largest grids)
  on the store the extraction child wrote;
- comparison: the comparison stage on a synthetic study (two models with twins, four layers, the
  default evaluation grid) with 3N and 12N images, half test and half val (the stage selects on val).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from common import Context, child, default_study, entry, peak_rss_mib

NAME = "memory"
OPT_IN = False
TARGET = 1.10
MODEL = "ssd_mobilenet_v2_coco"
CONCEPT_LAYERS = 3  # the concept child trains the first (largest-grid, most memory-hungry) probed layers


def COMPARISON_LAYOUT() -> dict:
    from conceptsim.comparison.synthetic import default_size_models

    return default_size_models(n_models=2, n_layers=4, channels=32)


def comparison_root(scratch: Path, per_split: int) -> Path:
    return scratch / f"mem-comparison-{per_split}"


def build_comparison_input(scratch: Path, per_split: int, quick: bool) -> None:
    """The synthetic study the comparison child reads, built here so its memory is not measured."""
    from conceptsim.comparison.synthetic import build_synthetic_study

    ex = default_study(smoke=quick).sections["extraction"]
    build_synthetic_study(comparison_root(scratch, per_split), COMPARISON_LAYOUT(), n_images=3 * per_split,
                          test_fraction=0.5, val_fraction=0.5, eval_grid=(ex["eval_grid"],) * 2, input_size=(300, 300), seed=0)


def child_main(stage: str, per_split: int, scratch: str, quick: bool) -> dict:
    import logging

    logging.getLogger("conceptsim").setLevel(logging.ERROR)
    from conceptsim.runtime import configure_process

    configure_process()  # as in the pipeline's processes
    study = default_study(smoke=quick)
    scratch_p = Path(scratch)
    store = scratch_p / f"mem-{MODEL}-{per_split}.zarr"
    t0 = time.perf_counter()
    n = None
    if stage == "extraction":
        from conceptsim.extraction.extract import extract
        from conceptsim.models.registry import build_model
        from conceptsim.pipeline import open_dataset, probed_layers

        ex = study.sections["extraction"]
        loaded = build_model(MODEL, device=ex["device"])
        ds, _ = open_dataset("shapes", {**study.datasets["shapes"], "max_images": per_split}, study.sections["split"],
                             loaded.preprocessing, ex["eval_grid"])
        t0 = time.perf_counter()
        extract(loaded, ds, store, layers=probed_layers(MODEL, study.layers.get(MODEL), ex.get("max_layers", 0)),
                batch_size=ex["batch_size"], num_workers=ex["num_workers"], grid_cap=ex["grid_cap"], dtype=ex["dtype"],
                metadata={"study": "benchmark-memory", "dataset": "shapes"}, force=True, progress=False)
        n = len(ds)
    elif stage == "concepts":
        from conceptsim.concepts.stage import run_concept_stage
        from conceptsim.extraction.store import ActivationStore

        co = study.sections["concepts"]
        opened = ActivationStore(store)
        n = len(opened.image_ids)
        run_concept_stage(store, scratch_p / f"mem-concepts-{per_split}", layers=opened.layer_names[:CONCEPT_LAYERS],
                          loss=co["loss"], lr=co["lr"],
                          epochs=co["epochs"], patience=co["patience"], bootstrap=co["bootstrap"], seed=study.seed)
    elif stage == "comparison":
        from conceptsim.comparison.stage import run_comparison_stage

        cmp = study.sections["comparison"]
        root = comparison_root(scratch_p, per_split)
        n = 3 * per_split
        t0 = time.perf_counter()
        run_comparison_stage(root, root, models=list(COMPARISON_LAYOUT()), seed=0, permutations=cmp["permutations"],
                             bootstrap=cmp["bootstrap"])
    else:
        raise ValueError(stage)
    return {"stage": stage, "images": n, "seconds": time.perf_counter() - t0, **peak_rss_mib()}


def run(ctx: Context) -> list[dict]:
    base = 4 if ctx.quick else 16
    sizes = (base, 4 * base)
    out = []
    stages = ("extraction", "concepts", "comparison")
    results = {s: {k: [] for k in sizes} for s in stages}
    for k in sizes:
        build_comparison_input(ctx.scratch, k, ctx.quick)
    for _ in range(min(ctx.repeat, 2)):  # peak RSS varies little; the children are long
        for k in sizes:
            for s in stages:  # concepts reads the store extraction just wrote at the same size
                r = child("bench_memory", [s, str(k), str(ctx.scratch), "1" if ctx.quick else "0"])
                results[s][k].append(r)
                ctx.log(f"memory {s} n={r['images']}: peak RSS {r['vmhwm_mib']:.0f} MiB, {r['seconds']:.1f} s")
    for s in stages:
        small, large = results[s][sizes[0]], results[s][sizes[1]]
        ratios = [b["vmhwm_mib"] / a["vmhwm_mib"] for a, b in zip(small, large)]
        med = lambda rs, key: sorted(r[key] for r in rs)[len(rs) // 2]  # noqa: E731
        n_small, n_large = small[0]["images"], large[0]["images"]
        per_image = (med(large, "seconds") - med(small, "seconds")) / max(1, n_large - n_small)
        details = {"stage": s, "n_small": n_small, "n_large": n_large,
                   "peak_rss_mib_small": [r["vmhwm_mib"] for r in small], "peak_rss_mib_large": [r["vmhwm_mib"] for r in large],
                   "ru_maxrss_mib_small": [r["ru_maxrss_mib"] for r in small],
                   "ru_maxrss_mib_large": [r["ru_maxrss_mib"] for r in large],
                   "seconds_small": [r["seconds"] for r in small], "seconds_large": [r["seconds"] for r in large],
                   "seconds_per_image_marginal": per_image,
                   "layers": CONCEPT_LAYERS if s == "concepts" else None,
                   "model": MODEL if s != "comparison" else "synthetic (2 models + twins, 4 layers)"}
        out.append(entry(f"memory_scaling/{s}", f"Peak RSS at {n_large} / at {n_small} images, {s}", "ratio", "x",
                         ratios, TARGET, "lower", details, benchmark=NAME,
                         notes="fresh process per measurement; nothing subtracted"))
    return out


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "child":
    print(json.dumps(child_main(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1")))
