"""Dataset: reading and rasterising the concept masks of the ``shapes`` dataset (1,200 images at 320 px).

Measured: opening the COCO annotations (JSON, polygon/RLE to per-concept RLE unions, areas, split and
labels: the :class:`~conceptsim.data.coco.ConceptDataset` constructor) plus, for every image, decoding
its concept masks to pixels and computing what the mask store holds: the soft targets on every distinct
activation grid of the model's probed layers (in its input geometry) and the binary masks on the
evaluation grid -- exactly the items the mask store is built from. Building the dataset is set-up, not
measured (it is cached). Image decoding is timed separately for reference.
"""

from __future__ import annotations

import time

from common import Context, default_study, entry

NAME = "dataset"
OPT_IN = False
TARGET = 20.0
MODEL = "ssd_mobilenet_v2_coco"  # whose input geometry the masks are rasterised into


def run(ctx: Context) -> list[dict]:
    from conceptsim.data.coco import ConceptDataset
    from conceptsim.data.registry import ensure_dataset
    from conceptsim.extraction.extract import probe_layers
    from conceptsim.models.registry import build_model
    from conceptsim.pipeline import probed_layers

    study = default_study()
    params = {"n": 60, "size": 128, "seed": 0} if ctx.quick else {"n": 1200, "size": 320, "seed": 0}
    t0 = time.perf_counter()
    source = ensure_dataset("shapes", **params)
    ctx.log(f"dataset: shapes {params} ready in {time.perf_counter() - t0:.1f} s (set-up, not measured)")
    ex = study.sections["extraction"]
    model = build_model(MODEL)
    prep = model.preprocessing
    infos, _ = probe_layers(model, probed_layers(MODEL, study.layers.get(MODEL), ex.get("max_layers", 0)), ex["grid_cap"])
    grids = sorted({i.grid for i in infos})
    grid = (ex["eval_grid"],) * 2
    split = study.sections["split"]
    times, opens, images = [], [], []
    for _ in range(ctx.repeat):
        t0 = time.perf_counter()
        ds = ConceptDataset(source, split_seed=split["seed"], fractions=tuple(split["fractions"]),
                            min_area=split["min_area"], preprocessing=prep, eval_grid=grid)
        t1 = time.perf_counter()
        served = ds.with_targets(grids)
        for i in range(len(served)):
            served[i]
        t2 = time.perf_counter()
        for iid in ds.image_ids:
            ds.read_image(iid)
        t3 = time.perf_counter()
        times.append(t2 - t0)
        opens.append(t1 - t0)
        images.append(t3 - t2)
        ctx.log(f"dataset: {len(ds)} images, masks {t2 - t0:.2f} s (open {t1 - t0:.2f} s), image decode {t3 - t2:.2f} s")
    details = {"images": len(ds), "size": params["size"], "concepts": len(ds.concepts), "open_s": opens,
               "image_decode_s": images, "input_geometry": prep.to_dict(), "eval_grid": list(grid),
               "target_grids": [list(g) for g in grids],
               "seconds_per_image": sorted(times)[len(times) // 2] / len(ds)}
    return [entry("dataset_masks/shapes", f"Mask reading and rasterising, {len(ds)} images at {params['size']} px",
                  "wall time", "s", times, TARGET if not ctx.quick else TARGET * len(ds) / 1200, "lower", details,
                  benchmark=NAME, notes="quick: 60 images at 128 px, target scaled by image count" if ctx.quick else "")]
