"""Projection of the paper study (COCO val2017, 5,000 images, three detectors and their random-init
twins, as many seeds as ``studies/paper.yml`` lists) on one GPU, from rates measured here on the CPU.

Method (every assumption is listed in the entry's ``details.assumptions`` and on the page):

* forward pass: the CPU's achieved throughput (FLOP/s of the bare forward pass of the default models,
  FLOPs counted with ``torch.utils.flop_counter`` at each model's input size, times from the extraction
  benchmark) fixes nothing on the GPU; the GPU forward time is the paper models' FLOPs (counted the same
  way on their random-init twins, which build offline) divided by an *assumed* effective GPU throughput;
* extraction overhead beyond the forward pass (image/mask loading, hooks, pooling, Zarr writes) stays on
  the CPU at the measured per-image rate, scaled by the pixel count of COCO images for the loading part
  and by the number of probed layers for the rest; no overlap with the GPU is assumed (conservative);
* concept stage: the measured seconds per image and probed layer (memory benchmark at 4N images, default
  probe settings, on the CPU), times images x layers; on the GPU it is divided by an assumed speed-up;
* comparison stage: the measured seconds per test image, concept and layer pair (comparison benchmark,
  CPU), times test images x concepts x layer pairs.
"""

from __future__ import annotations

from common import Context, entry

NAME = "projection"
OPT_IN = False
PAPER_MODELS = ("yolov5su", "ssd300_vgg16", "fasterrcnn_resnet50_fpn")
N_IMAGES = 5000
TEST_FRACTION = 0.2
COCO_PIXELS = 640 * 480  # typical COCO val2017 image (most are 640 px on the long side)
GPU_TFLOPS = 8.0  # assumed effective fp32 throughput of one GPU on these conv nets, batch 8
GPU_CONCEPT_SPEEDUP = 10.0  # assumed GPU / 2-core CPU speed-up of the Net2Vec probe training


def forward_flops(name: str) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from conceptsim.models.registry import build_model

    loaded = build_model(name)
    h, w = loaded.preprocessing.size
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        loaded.features(torch.zeros(1, 3, h, w))
    return float(counter.get_total_flops())


def twin_seeds(study_file: str = "studies/paper.yml") -> dict[str, int]:
    """Random-init twins per paper model in the paper study's model list (``NAME:random``, ``@1``, ...)."""
    from conceptsim.models.names import is_twin
    from conceptsim.paths import project_root
    from conceptsim.run.study import load_study

    models = load_study(project_root() / study_file).models
    return {name: sum(1 for m in models if is_twin(m) and m.split(":", 1)[0] == name) for name in PAPER_MODELS}


def need(ctx: Context, key: str) -> dict:
    if key not in ctx.previous:
        raise RuntimeError(f"projection needs the entry {key!r}: run the benchmark that produces it first")
    return ctx.previous[key]


def run(ctx: Context) -> list[dict]:
    from conceptsim.models.registry import parse_model_name

    ext = {k.split("/", 1)[1]: v["details"] for k, v in ctx.previous.items() if k.startswith("extraction_overhead/")}
    if not ext:
        raise RuntimeError("projection needs the extraction benchmark's entries")
    mem_c = need(ctx, "memory_scaling/concepts")["details"]
    # CPU achieved throughput of the forward pass, and CPU overhead per image and layer
    cpu = {}
    for name, d in ext.items():
        flops = forward_flops(name)
        cpu[name] = {"gflop_per_image": flops / 1e9, "cpu_gflops": flops / 1e9 / d["bare_s_per_image"],
                     # CPU-side data work per image: reading the image plus building its masks and targets
                     "loader_s_per_mpx": (d["image_loading_s"] + d["cold"]["mask_store_s"]) / d["images"]
                     / (d["image_pixels"] / 1e6),
                     "other_s_per_layer_image": max(0.0, d["extraction_s_per_image"] - d["bare_s_per_image"])
                     / d["layers"]}
        ctx.log(f"projection: {name} {flops / 1e9:.2f} GFLOP/image, CPU {cpu[name]['cpu_gflops']:.1f} GFLOP/s")
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    loader_s_per_mpx = med([c["loader_s_per_mpx"] for c in cpu.values()])
    other_s = med([c["other_s_per_layer_image"] for c in cpu.values()])
    # average rate at 4N (fixed start-up included: an upper bound; marginal rates are too noisy under load)
    concept_s = sorted(mem_c["seconds_large"])[0] / mem_c["n_large"] / mem_c["layers"]  # per image and layer, CPU
    cmp_d = need(ctx, "comparison_stage/default")["details"]
    n_layers_default = sum(cmp_d["layers_per_model"].values())
    big = max(cmp_d["datasets"].values(), key=lambda v: v["test_images"] or 0)
    compare_s = (sorted(big["seconds"])[0] / big["test_images"] / big["concepts"]
                 / (n_layers_default * (n_layers_default + 1) / 2))  # per test image, concept and layer pair
    from conceptsim.data.fetch import COCO_CONCEPTS
    from conceptsim.models.names import twin_name

    n_concepts = len(COCO_CONCEPTS)
    twins = twin_seeds()
    models, total_layers = {}, 0
    for name in PAPER_MODELS:
        spec = parse_model_name(name)[0]
        flops = forward_flops(twin_name(name))
        n_layers = len(spec.default_layers)
        total_layers += 2 * n_layers  # the model and its first twin: the layer pairs the comparison counts
        fwd = N_IMAGES * flops / (GPU_TFLOPS * 1e12)
        over = N_IMAGES * (loader_s_per_mpx * COCO_PIXELS / 1e6 + other_s * n_layers)
        conc = N_IMAGES * n_layers * concept_s
        models[name] = {"gflop_per_image": flops / 1e9, "layers": n_layers,
                        "input_size": list(spec.preprocessing.size),
                        "extraction_forward_gpu_s": fwd, "extraction_cpu_overhead_s": over,
                        "concepts_cpu_s": conc, "concepts_gpu_s": conc / GPU_CONCEPT_SPEEDUP, "twins": twins[name],
                        "cpu_forward_s_2cores": N_IMAGES * flops / 1e9 / med([c["cpu_gflops"] for c in cpu.values()])}
    pairs = total_layers * (total_layers + 1) / 2
    comparison = N_IMAGES * TEST_FRACTION * pairs * n_concepts * compare_s
    # each model runs once trained and once per twin seed
    per_model = sum((1 + m["twins"]) * (m["extraction_forward_gpu_s"] + m["extraction_cpu_overhead_s"]
                                        + m["concepts_gpu_s"]) for m in models.values())
    total_h = (per_model + comparison) / 3600
    cpu_only_h = (sum((1 + m["twins"]) * (m["cpu_forward_s_2cores"] + m["extraction_cpu_overhead_s"]
                                          + m["concepts_cpu_s"]) for m in models.values()) + comparison) / 3600
    assumptions = [
        f"COCO val2017: {N_IMAGES} images of about {COCO_PIXELS / 1e6:.2f} Mpx; test split {TEST_FRACTION:.0%}",
        f"three detectors and their random-init twins as studies/paper.yml lists them ({sum(twins.values())} twins: "
        f"{len(PAPER_MODELS) + sum(twins.values())} extractions and concept stages), default probed layers, "
        "grid cap 40, evaluation grid 112, default probe settings",
        f"GPU forward pass at an assumed effective {GPU_TFLOPS:g} TFLOP/s (fp32, batch 8); FLOPs counted with "
        "torch.utils.flop_counter on each model's feature forward at its input size",
        "image/mask loading scales with pixel count, hook/pool/write overhead with the number of probed layers, both "
        "at this machine's measured per-image CPU rates and not overlapped with the GPU (conservative)",
        "concept stage: measured CPU seconds per image and layer (on the largest-grid layers, so an upper bound), "
        f"assumed {GPU_CONCEPT_SPEEDUP:g}x faster on the GPU; "
        "cost taken as independent of the number of concepts (joint training)",
        "concept stage rate: the memory benchmark's run at 4N images divided by images and layers (start-up "
        "included, so an upper bound)",
        "comparison stage on the CPU at the rate of the default-size comparison benchmark, per test image, concept "
        f"and layer pair ({len(COCO_CONCEPTS)} COCO concepts, all pairs of the layers of the three detectors and "
        "their first twins; further twin seeds add pairs with their own models and trained models only); the work "
        "grows with pairs x concepts x test images",
        "one dataset (COCO); VOC 2012 would add a similar amount",
    ]
    details = {"models": models, "comparison_cpu_s": comparison, "total_layers": total_layers,
               "layer_pairs": pairs, "cpu_measured": cpu, "rates": {
                   "loader_s_per_mpx": loader_s_per_mpx, "hooks_pool_write_s_per_layer_image": other_s,
                   "concepts_s_per_image_layer_cpu": concept_s,
                   "comparison_s_per_test_image_concept_pair_cpu": compare_s, "coco_concepts": n_concepts},
               "gpu_tflops_assumed": GPU_TFLOPS, "gpu_concept_speedup_assumed": GPU_CONCEPT_SPEEDUP,
               "sensitivity_hours": {"gpu_half_as_fast": (per_model + comparison + sum(
                   (1 + m["twins"]) * m["extraction_forward_gpu_s"] for m in models.values())) / 3600},
               "cpu_only_hours_2_cores": cpu_only_h, "assumptions": assumptions}
    return [entry("projection/paper_study_gpu", "Projected paper study (COCO val2017, 5,000 images, 3 detectors + "
                  "twins) on one GPU", "wall time", "h", [total_h], None, "lower", details, benchmark=NAME,
                  notes="projection, not a measurement")]

