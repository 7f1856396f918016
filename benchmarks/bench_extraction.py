"""Extraction overhead: the pipeline's extraction wall time / the bare forward pass, per default model.

Same model object, images, batch size and torch threads; the two are interleaved (alternating order)
so that load drifts hit both. The extraction time includes what the pipeline does beyond the forward
pass: reading and transforming images and masks, the hooks, pooling to the grid cap, and the Zarr
writes. ``bare_forward_seconds`` (the library's baseline) pre-loads the image batches, so the ratio
charges data loading to the extraction; the loader time alone is reported as well.
"""

from __future__ import annotations

import shutil
import time

from common import Context, default_study, entry

NAME = "extraction"
OPT_IN = False
TARGET = 1.10


def loader_seconds(ds, batch_size: int) -> float:
    from conceptsim.data.coco import make_loader

    t0 = time.perf_counter()
    for _ in make_loader(ds, batch_size=batch_size, num_workers=0):
        pass
    return time.perf_counter() - t0


def run(ctx: Context) -> list[dict]:
    import torch

    from conceptsim.extraction.extract import bare_forward_seconds, extract
    from conceptsim.models.registry import build_model
    from conceptsim.pipeline import open_dataset, probed_layers

    study = default_study(smoke=ctx.quick)
    ex = study.sections["extraction"]
    per_split = 4 if ctx.quick else 40  # 120 images: fixed costs (store creation) amortised as in a real run
    ds_opts = {**study.datasets["shapes"], "max_images": per_split}
    models = [m for m in study.models if not m.endswith(":random")]
    if ctx.quick:
        models = ["mobilenet_v2_imagenet"]
    out = []
    for name in models:
        loaded = build_model(name, device=ex["device"])
        ds, _ = open_dataset("shapes", ds_opts, study.sections["split"], loaded.preprocessing, ex["eval_grid"])
        layers = probed_layers(name, study.layers.get(name), ex.get("max_layers", 0))
        store = ctx.scratch / f"extract-{name}.zarr"
        bs = ex["batch_size"]
        bare_forward_seconds(loaded, ds, bs)  # warm-up (allocator, first-call costs)
        ratios, bares, exts, loads = [], [], [], []
        for i in range(ctx.repeat):
            order = ("bare", "ext") if i % 2 == 0 else ("ext", "bare")
            t = {}
            for what in order:
                if what == "bare":
                    t["bare"] = bare_forward_seconds(loaded, ds, bs)
                else:
                    t["ext"] = extract(loaded, ds, store, layers=layers, batch_size=bs, num_workers=ex["num_workers"],
                                       grid_cap=ex["grid_cap"], dtype=ex["dtype"], metadata={"study": "benchmark-extraction", "dataset": "shapes"},
                                       force=True, progress=False).seconds
            loads.append(loader_seconds(ds, bs))
            bares.append(t["bare"])
            exts.append(t["ext"])
            ratios.append(t["ext"] / t["bare"])
            ctx.log(f"extraction {name}: bare {t['bare']:.2f} s, extraction {t['ext']:.2f} s, "
                    f"loader {loads[-1]:.2f} s, ratio {ratios[-1]:.3f}")
        shutil.rmtree(store, ignore_errors=True)
        n = len(ds)
        med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
        details = {
            "model": name, "images": n, "batch_size": bs, "layers": len(layers), "grid_cap": ex["grid_cap"],
            "input_size": list(loaded.preprocessing.size),
            "image_pixels": int(study.datasets["shapes"]["build"]["size"]) ** 2, "torch_threads": torch.get_num_threads(),
            "bare_s": bares, "extraction_s": exts, "loader_s": loads,
            "bare_s_per_image": med(bares) / n, "extraction_s_per_image": med(exts) / n,
            "loader_s_per_image": med(loads) / n,
            "overhead_breakdown": {
                "loader_fraction_of_bare": med(loads) / med(bares),
                "hooks_pool_write_fraction_of_bare": max(0.0, med(exts) - med(bares) - med(loads)) / med(bares),
            },
        }
        out.append(entry(f"extraction_overhead/{name}", f"Extraction / bare forward, {name}", "ratio", "x",
                         ratios, TARGET, "lower", details, benchmark=NAME,
                         notes=f"{n} shapes images ({'smoke' if ctx.quick else 'default'} build), batch {bs}"))
        del loaded
    return out
