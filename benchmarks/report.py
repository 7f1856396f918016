"""The book's Performance page and its plots, generated from ``results.json`` (never edited by hand)."""

from __future__ import annotations

from pathlib import Path

from common import verdict

PLOTS = ("targets.png", "extraction.png", "memory.png", "breakdown.png")

# What profiling found behind a missed target (file, function, cause); shown next to the miss.
CAUSES: dict[str, str] = {
    **{f"extraction_overhead/{m}": (
        "Profiles (cProfile per stage, time stamps per phase, and loops that add one part at a time to the bare "
        "pass) drove the present design: on 2 cores the forward pass keeps both cores busy, so every other CPU "
        "cycle adds to the wall time. The concept masks and targets are built once per input geometry into the "
        "shared mask store (`extraction/maskstore.py`); images are decoded in a prefetch thread with OpenCV and "
        "BLAS held to one thread; writes go to a writer thread, one whole 32-image chunk per array, all arrays "
        "of a chunk in one concurrent Zarr round, without Zarr's per-chunk fill-value scan (which cost five "
        "times the write itself), raw by default (`extraction.compression: zstd` saves a third of the disk for "
        "2-4 % more time). What remains is the hooks' pooling (about 3 % on MobileNetV2), the writes and fixed "
        "costs per call (the depth trace, store creation, the last chunk). The ratio of two nearly equal times "
        "on a shared machine scatters by several per cent."
    ) for m in ("ssd_mobilenet_v2_coco", "centernet_mobilenet_v3_coco", "mobilenet_v2_imagenet")},
    "concepts_joint/speedup": (
        "Almost all per-epoch work of the joint probe (the K x C x P products, loss and backward, the K "
        "validation maps) is linear in the number of concepts K; only reading the activations is shared. A "
        "concept whose early stopping has fired now leaves the joint computation (its rows are no longer in the "
        "products, loss or validation counts) and the balanced BCE is one fused kernel. With few training "
        "images (40 per split) the ratio stays below 10x (about 8.5x); at the default study's sizes it is "
        "above."
    ),
    "memory_scaling/concepts": (
        "What grows with the images by design: the splits `load_layer` (`lib/conceptsim/concepts/stage.py`) / "
        "`SplitData` (`concepts/layerdata.py`) hold in memory (float32 while they fit `memory_budget_gb`) and "
        "the val and test masks. The work on them is bounded by the layer, not the images, with no number "
        "changed (issue 24): bootstrap intervals a chunk of resamples at a time (the K x B x n arrays of "
        "average precision were the largest growth), mask areas a block of images at a time and shared by "
        "subsets, channel moments with one float64 copy per read, splits standardised in place, dissection "
        "batches sized by the layer."
    ),
    "memory_scaling/extraction": (
        "Buffers are per batch or per chunk (prefetch and writer queues of two batches, one 32-image chunk per "
        "array); the small growth between N and 4N images was not profiled."
    ),
    "memory_scaling/comparison": (
        "Re-measured after the comparison fixes; the growth with the number of test images (concept outputs "
        "and masks of the test split are held per layer pair) was not profiled further."
    ),
}


# settings chosen from one-off measurements; the docstrings of the modules point here
DESIGN_MEASUREMENTS = [
    "## Design measurements", "",
    "One-off measurements behind settings in the library (not re-measured by `make bench`; each names where "
    "the setting lives).", "",
    "- Allocator (`conceptsim.allocator`, applied by `conceptsim.runtime`): CenterNet at 512 x 512, batch 8, "
    "120 images: 21.1 s wall (19.2 s user + 18.3 s system) with glibc's default `mmap` threshold; 11.7 s "
    "(20.8 s user, 0.4 s system) with freed memory kept, the same results.",
    "- Zarr writes (`conceptsim.extraction.zarrio.WRITE_EVERY_CHUNK`): the per-chunk fill-value scan cost "
    "0.17 s of CPU on 44 MB of float16 activations, against 0.04 s for encoding and writing them.",
    "- Activation compression (`conceptsim.extraction.store.COMPRESSORS`): zstd level 1 stores real feature "
    "maps in 2/3 to 3/4 of their size and adds 2-4 % to the extraction's wall time on 2 cores (default models).",
    "- Helper libraries during extraction (`conceptsim.runtime.background`): OpenCV's and BLAS's own thread "
    "pools in the prefetch thread took about a third more CPU time for the same work on 2 cores.",
    "- BLAS threads in the concept stage (`conceptsim.runtime`): Method B on a 1280-unit layer took 104 s with "
    "BLAS threads and 11 s with one, with identical results.",
    "- Exact integer Gram products of the comparison stage (`conceptsim.comparison.similarity.int8_gram`): on "
    "this AMD EPYC (AVX512-VNNI), one thread, a 105 x 50,176 int8 matrix times its transpose took 2.4 ms with "
    "`torch._int_mm` against 12.7 ms as a float32 product (0/1 masks) and 43-66 ms in float64 (soft masks "
    "quantised to 0..127; 13-43 ms in float32 blocks of 1,040 columns), the same integers; CPU time of the "
    "stage on shapes 39 s -> 31 s, outputs identical. The per-image stratum counts "
    "(`conceptsim.comparison.agreement.stratum_counts`) as one int8 product with a block-diagonal selector: "
    "1.05 ms against 5.3 ms for the batched float32 products (118 rows, 16 images of 56 x 56).",
    "- Unit matching (`conceptsim.comparison.units.batched_matches`): one product of a layer with all deeper "
    "layers at once took 8.8 s of CPU against 8.0 s pair by pair (16,492 units, 100 layers; the products are "
    "compute-bound and the wide blocks add memory traffic); dropping dead units once, 6.7 s.", "",
]


def fmt(x, unit: str = "") -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        s = f"{x:.3g}" if abs(x) < 100 else f"{x:,.0f}"
    else:
        s = str(x)
    return f"{s} {unit}".strip() if unit and unit != "x" else (f"{s}×" if unit == "x" else s)


def target_text(e: dict) -> str:
    if e.get("target") is None:
        return "–"
    return ("≤ " if e["better"] == "lower" else "≥ ") + fmt(float(e["target"]), e["unit"])


def plot_targets(entries: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    rows = [e for e in entries if e.get("target")]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    for i, e in enumerate(rows):
        # "fraction of the budget used": < 1 is inside the target for both directions
        frac = lambda v: v / e["target"] if e["better"] == "lower" else e["target"] / max(v, 1e-12)  # noqa: E731
        m, lo, hi = frac(e["median"]), frac(e["min"]), frac(e["max"])
        lo, hi = min(lo, hi), max(lo, hi)
        ax.barh(i, m, color="tab:green" if e["passed"] else "tab:red", alpha=0.8)
        ax.plot([lo, hi], [i, i], color="black", lw=1.5)
    ax.axvline(1.0, color="black", ls="--", lw=1)
    ax.set_yticks(range(len(rows)), [e["id"] for e in rows], fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("measured / target (≥-targets inverted); < 1 meets the target; line: min–max")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_extraction(entries: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [e for e in entries if e["id"].startswith("extraction_overhead/")]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    if rows:
        x = np.arange(len(rows))
        d = [e["details"] for e in rows]
        ax.bar(x - 0.27, [v["bare_s_per_image"] * 1e3 for v in d], 0.27, label="bare forward (images read in a thread)")
        ax.bar(x, [v["extraction_s_per_image"] * 1e3 for v in d], 0.27, label="extraction (mask store reused)")
        ax.bar(x + 0.27, [v["cold"]["extraction_s"] / v["images"] * 1e3 for v in d], 0.27,
               label="extraction, cold (mask store built)", color="tab:gray")
        ax.set_xticks(x, [v["model"] for v in d], fontsize=8)
        ax.set_ylabel("ms per image (median)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_memory(entries: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [e for e in entries if e["id"].startswith("memory_scaling/")]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    if rows:
        x = np.arange(len(rows))
        d = [e["details"] for e in rows]
        ax.bar(x - 0.2, [np.median(v["peak_rss_mib_small"]) for v in d], 0.4, label="N images")
        ax.bar(x + 0.2, [np.median(v["peak_rss_mib_large"]) for v in d], 0.4, label="4N images")
        ax.set_xticks(x, [f"{v['stage']}\n(N={v['n_small']}, 4N={v['n_large']})" for v in d], fontsize=8)
        ax.set_ylabel("peak RSS (MiB, VmHWM)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_breakdown(entries: list[dict], path: Path) -> bool:
    """The default study's time by part (summed over its runs) beside its wall time and forward-pass floor;
    False (and no file) when no default-study measurement has a breakdown."""
    import matplotlib.pyplot as plt

    e = next((e for e in entries if e["id"] == "end_to_end/efficiency" and e["details"].get("breakdown")), None)
    if e is None:
        return False
    d = e["details"]
    parts = d["breakdown"]["parts"]
    names = list(parts)[::-1]
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(names) + 1.6))
    ax.barh(range(len(names)), [parts[n] for n in names], color="tab:blue")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.axvline(d["wall_s"], color="black", lw=1.2, label=f"study wall time ({d['jobs']} jobs)")
    ax.axvline(d["forward_floor_s"], color="tab:green", ls="--", lw=1.2,
               label=f"Σ bare forward ÷ {d['cores']} cores")
    ax.set_xlabel("seconds (parts summed over the study's runs; runs overlap with several jobs)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def breakdown_cause(e: dict) -> str:
    """Where an end-to-end study's time went, from the entry's own breakdown (the run records, executed
    notebooks and ``concept_stage.json`` files of the measured run)."""
    b = (e.get("details") or {}).get("breakdown") or {}
    parts = b.get("parts") or {}
    if not parts:
        return ""
    p = {k: v for k, v in parts.items() if k != "book build"}
    concepts = sum(v for k, v in p.items() if k.startswith("concepts:"))
    extraction = sum(v for k, v in p.items() if k.startswith("extraction"))
    fixed = p.get("kernel start-up", 0.0) + p.get("imports", 0.0)
    where = "; figure below" if e["id"] != "end_to_end/smoke" else ""
    return (f"From the study's own breakdown (run records, executed notebooks, `concept_stage.json`{where}): "
            f"of {fmt(sum(p.values()))} run-seconds over {b['runs']} runs ({e['details'].get('jobs', '?')} at a time), "
            f"the concept stage takes {fmt(concepts)} (Method A segmentation probes {fmt(p.get('concepts: seg', 0.0))}, "
            f"Method B classification probes {fmt(p.get('concepts: cls', 0.0))}, Network Dissection "
            f"{fmt(p.get('concepts: dissection', 0.0))}), extraction {fmt(extraction)}"
            + (f" (bare forward passes alone: {fmt(sum(e['details']['bare_forward_s'].values()))})"
               if e["details"].get("bare_forward_s") else "")
            + f", kernel start-up and imports {fmt(fixed)} "
            f"({fmt(fixed / max(b['runs'], 1), 's')} per notebook), figures and tables {fmt(p.get('figures and tables', 0.0))}, "
            f"the comparison {fmt(p.get('comparison', 0.0))}, building datasets and models "
            f"{fmt(p.get('dataset opening', 0.0) + p.get('model build', 0.0))}. The largest parts: "
            + ", ".join(f"{k} {fmt(v)}" for k, v in sorted(p.items(), key=lambda kv: -kv[1])[:3])
            + ". In place: one warm kernel per worker (imports once per worker), the ready run with the longest "
            "chain of dependents first. Not tried: fewer epochs or a closed-form start for the segmentation probes "
            "(book/methods.md fixes Adam, up to 30 epochs, early stopping with patience 5).")


def efficiency_section(by_id: dict) -> list[str]:
    e = by_id.get("end_to_end/efficiency")
    if e is None or not e["details"].get("breakdown"):
        return []
    d = e["details"]
    b = d["breakdown"]
    lines = ["## The default study: efficiency and breakdown", "",
             f"Study efficiency **{e['median']:.2f}** (target ≤ {e['target']:.1f}): wall time {fmt(d['wall_s'], 's')} "
             f"(`conceptsim run studies/default.yml --jobs {d['jobs']}`) over the forward-pass floor "
             f"{fmt(d['forward_floor_s'], 's')} = Σ single-threaded bare forward passes of every (dataset, model) over "
             f"the dataset's images ({fmt(sum(d['bare_forward_s'].values()), 's')}) ÷ {d['cores']} cores. "
             f"{b['runs']} runs; per run, kernel start-up {fmt(b['kernel_start_up_per_run'], 's')} and imports "
             f"{fmt(b['imports_per_run'], 's')}"
             + (f"; book build {fmt(d['book_build_s'], 's')}." if d.get("book_build_s") is not None else "."), "",
             "| Part | Seconds (summed over runs) | Share of run-seconds |", "|---|---|---|"]
    total = sum(v for k, v in b["parts"].items() if k != "book build") or 1.0
    for part, seconds in b["parts"].items():
        share = "–" if part == "book build" else f"{100 * seconds / total:.0f} %"
        lines.append(f"| {part} | {fmt(seconds)} | {share} |")
    lines += ["", "![Default study: time by part](_static/performance/breakdown.png)", ""]
    return lines


def other_machine(e: dict, machine: dict | None) -> str:
    """`` (measured on CPU, date)`` for an entry measured on another CPU than the page's machine, else ``""``."""
    cpu = (e.get("machine") or {}).get("cpu_model")
    if not machine or not cpu or cpu == machine.get("cpu_model"):
        return ""
    return f" (measured on {cpu}, {str(e.get('measured_at', '?'))[:10]})"


def table(entries: list[dict], machine: dict | None = None) -> list[str]:
    """The Targets table: the benchmark, then its verdict and target (what a reader looks for, visible at
    1,000 px), then the measurement and what it is (and the CPU, where it is not ``machine``'s)."""
    out = ["| Benchmark | Verdict | Target | Median | Spread (min – max, n) | Figure |",
           "|---|---|---|---|---|---|"]
    for e in entries:
        status = verdict(e) if e.get("status") != "failed" else "FAILED (run incomplete)"
        if e.get("quick"):
            status += " (quick mode)"
        out.append(f"| `{e['id']}` | {status} | {target_text(e)} | {fmt(e['median'], e['unit'])} | "
                   f"{fmt(e['min'], e['unit'])} – {fmt(e['max'], e['unit'])}, {e['n']} | {e['title']}"
                   f"{other_machine(e, machine)} |")
    return out


def details_sections(by_id: dict) -> list[str]:
    lines: list[str] = []
    ext = [e for k, e in by_id.items() if k.startswith("extraction_overhead/")]
    if ext:
        lines += ["## Extraction overhead", "",
                  "Pipeline extraction (the image loop plus hooks, pooling to the grid cap and Zarr writes) over the "
                  "bare forward pass of the same model on the same images (a real extraction of the default study: "
                  "its dataset at the study's size), batch size and threads, interleaved. Both "
                  "read and pre-process the images in a prefetch thread. The concept masks and targets, which do not "
                  "depend on the model, come from the shared mask store: built by the first (cold) call, reused by the "
                  "timed ones, as by a random-init twin or a rerun. The cold call and the stricter ratio against a "
                  "forward pass over batches already in memory are given for reference.", "",
                  "| Model | Images | Layers | Bare (ms/img) | Extraction (ms/img) | Ratio | vs preloaded forward | "
                  "Cold call (s) | of which mask store (s) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for e in ext:
            d = e["details"]
            lines.append(f"| {d['model']} | {d['images']} ({d.get('dataset', 'shapes')}) | {d['layers']} | "
                         f"{d['bare_s_per_image'] * 1e3:.1f} | "
                         f"{d['extraction_s_per_image'] * 1e3:.1f} | {e['median']:.3f} | "
                         f"{d['ratio_vs_preloaded_forward']:.3f} | {d['cold']['extraction_s']:.2f} | "
                         f"{d['cold']['mask_store_s']:.2f} |")
        lines += ["", "![Extraction vs bare forward pass](_static/performance/extraction.png)", ""]
    if "concepts_joint/speedup" in by_id:
        d = by_id["concepts_joint/speedup"]["details"]
        lines += ["## Joint vs one-at-a-time concept training", "",
                  f"{d['source']}; layer `{d['layer']}` ({d['channels']} channels, grid {d['grid'][0]}×{d['grid'][1]}), "
                  f"{d['concepts']} concepts, {d['n_train']} training images, settings {d['probe_settings']}. "
                  f"Joint: {fmt(min(d['joint_s']), 's')} – {fmt(max(d['joint_s']), 's')}; one at a time: "
                  f"{fmt(min(d['sequential_s']), 's')} – {fmt(max(d['sequential_s']), 's')}. "
                  "The IoU difference is the largest over concepts of |test set IoU (joint) − test set IoU (separate)|.", ""]
    if "solver_change/seconds" in by_id:
        lines += solver_change_section(by_id["solver_change/seconds"])
    if "comparison_stage/default" in by_id:
        d = by_id["comparison_stage/default"]["details"]
        per = "; ".join(f"{k}: {v['test_images'] if v['test_images'] is not None else '?'} test images, "
                        f"{v['concepts'] if v['concepts'] is not None else '?'} concepts, median "
                        f"{fmt(sorted(v['seconds'])[len(v['seconds']) // 2], 's')}" for k, v in d["datasets"].items())
        lines += ["## Comparison stage", "", f"Measured on: **{d['source']}**. {per}. "
                  f"{len(d['models'])} models; {d['permutations']} permutations, {d['bootstrap']} bootstrap resamples.", ""]
    mem = [e for k, e in by_id.items() if k.startswith("memory_scaling/")]
    if mem:
        lines += ["## Memory scaling", "",
                  "Each figure is measured in a fresh process; peak RSS is the process's own `VmHWM` (and "
                  "`ru_maxrss`), nothing subtracted.", "",
                  "| Stage | N | peak RSS at N (MiB) | 4N | peak RSS at 4N (MiB) | Ratio |", "|---|---|---|---|---|---|"]
        for e in mem:
            d = e["details"]
            lines.append(f"| {d['stage']} | {d['n_small']} | {min(d['peak_rss_mib_small']):.0f} – {max(d['peak_rss_mib_small']):.0f} | "
                         f"{d['n_large']} | {min(d['peak_rss_mib_large']):.0f} – {max(d['peak_rss_mib_large']):.0f} | {e['median']:.3f} |")
        lines += ["", "![Peak memory at N and 4N images](_static/performance/memory.png)", ""]
    if "projection/paper_study_gpu" in by_id:
        e = by_id["projection/paper_study_gpu"]
        d = e["details"]
        lines += ["## Projection: the paper study on one GPU", "",
                  f"**About {e['median']:.1f} hours** for COCO val2017 (5,000 images) with the three detectors and their "
                  f"random-init twins; with a GPU half as fast, {d['sensitivity_hours']['gpu_half_as_fast']:.1f} h; on this "
                  f"2-core CPU alone, about {d['cpu_only_hours_2_cores']:.0f} h. A projection, not a measurement.", "",
                  "| Model | GFLOP/image | Layers | GPU forward (s) | CPU loading+writes (s) | Concepts, GPU (s) |",
                  "|---|---|---|---|---|---|"]
        for name, m in d["models"].items():
            lines.append(f"| {name} | {m['gflop_per_image']:.1f} | {m['layers']} | {m['extraction_forward_gpu_s']:.0f} | "
                         f"{m['extraction_cpu_overhead_s']:.0f} | {m['concepts_gpu_s']:.0f} |")
        lines += ["", f"Comparison stage (CPU): {d['comparison_cpu_s']:.0f} s for {d['layer_pairs']:.0f} layer pairs. "
                  "Each model row counts once; each of its random-init twins (seeds) costs the same again.", "", "Assumptions:", ""]
        lines += [f"- {a}" for a in d["assumptions"]] + [""]
    return lines


def solver_change_section(e: dict) -> list[str]:
    """The change against the reference solvers on the default study, per dataset (``bench_solver_change``)."""
    d = e["details"]

    def dl(x: dict) -> list[str]:
        return [f"{x['median']:.2g}" if x["n"] else "–", f"{x['max']:.2g}" if x["n"] else "–"]

    lines = ["## Change against the reference solvers", "",
             f"Measured on: **{d['source']}**; {d['threads']} thread, {d['bootstrap']} bootstrap resamples (only the test "
             "point values are compared). |ΔAP|: the study's stored test AP (Method B with its solver, "
             f"{', '.join(sorted({s for v in d['datasets'].values() for s in v['solvers']['cls_solver']}))}) against "
             "Method B rerun with the reference solver (scikit-learn) on the same stored activations, every model "
             "(trained, twins, pixels) and every probed layer. |ΔIoU|: the study's stored test set IoU (Method A with "
             f"its solver, {', '.join(sorted({s for v in d['datasets'].values() for s in v['solvers']['seg_solver']}))}) "
             "against Method A rerun with the reference solver (Adam, early stopping on val IoU) on every layer of the "
             "models named in the second table; where the study's solver is the reference this is zero by construction, "
             "and the rerun shows it. n counts (model, layer, concept) values. Seconds: the probes with their shuffled controls, "
             "summed, side by side in this run; the Method A seconds of the study's solver are the reference's own "
             f"where it is the reference. Reference ÷ default seconds over all: {e['median']:.2f}× "
             f"({fmt(d['reference_s'], 's')} against {fmt(d['default_s'], 's')}).", "",
             "| Dataset | Models | Layers | n (AP) | median \\|ΔAP\\| | largest \\|ΔAP\\| | n (IoU) | median \\|ΔIoU\\| | "
             "largest \\|ΔIoU\\| | Method B s, reference / default | Method A s, reference / default |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for ds, v in d["datasets"].items():
        lines.append(f"| {ds} | {len(v['models'])} | {v['layers']} | {v['ap']['n']} | " + " | ".join(dl(v["ap"])) +
                     f" | {v['iou']['n']} | " + " | ".join(dl(v["iou"])) +
                     f" | {v['cls_reference_s']:.1f} / {v['cls_default_s']:.1f} | {v['seg_reference_s']:.1f} / "
                     f"{v['seg_default_s']:.1f} |")
    lines += ["", "Both solvers choose C by val AP from the same grid, so a |ΔAP| has two sources: the two fits at one C, "
              "and a different C chosen where val AP barely depends on C (a near tie that the fits' small differences, "
              "or scikit-learn stopping before the optimum at large C, tip the other way). Split by whether the study "
              "and the rerun chose the same C (from the vector files' `chosen_c`):", "",
              "| Dataset | n, same C | median \\|ΔAP\\|, same C | largest, same C | n, another C | median, another C | "
              "largest, another C |", "|---|---|---|---|---|---|---|"]
    for ds, v in d["datasets"].items():
        if "ap_same_c" in v:
            lines.append(f"| {ds} | {v['ap_same_c']['n']} | " + " | ".join(dl(v["ap_same_c"])) +
                         f" | {v['ap_other_c']['n']} | " + " | ".join(dl(v["ap_other_c"])) + " |")
    lines += ["", "For information: the full-batch Method A solver (`seg_solver=\"lbfgs\"`, the loss's optimum) against the "
              "reference on the same layers, and the reproduction of the stored AP by the study's "
              "own solver rerun here.", "",
              "| Dataset | Method A rerun on | n | median \\|ΔIoU\\| lbfgs vs reference | largest | Method A s, reference / lbfgs | "
              "stored vs rerun AP, largest \\|Δ\\| |",
              "|---|---|---|---|---|---|---|"]
    for ds, v in d["datasets"].items():
        lines.append(f"| {ds} | {', '.join(v['seg_models']) or '–'} | {v['iou_lbfgs']['n']} | " + " | ".join(dl(v["iou_lbfgs"])) +
                     f" | {v['seg_reference_s']:.1f} / {v['seg_lbfgs_s']:.1f} | "
                     f"{dl(v['ap_reproduction'])[1]} |")
    return lines + [""]


def write_page(data: dict, page: Path, static: Path) -> None:
    from conceptsim.atomic import write_text

    static.mkdir(parents=True, exist_ok=True)
    order = ("dataset_masks", "extraction_overhead", "concepts_joint", "solver_change", "comparison_stage", "memory_scaling",
             "end_to_end", "projection")
    entries = sorted(data["entries"].values(),
                     key=lambda e: (order.index(e["id"].split("/")[0]) if e["id"].split("/")[0] in order else 99, e["id"]))
    by_id = {e["id"]: e for e in entries}
    plot_targets(entries, static / "targets.png")
    plot_extraction(entries, static / "extraction.png")
    plot_memory(entries, static / "memory.png")
    plot_breakdown(entries, static / "breakdown.png")
    m = data.get("machine", {})
    missed = [e for e in entries if e.get("passed") is False]
    lines = ["# Performance", "",
             "Generated by `make bench` (`benchmarks/run.py`) from `benchmarks/results.json`; do not edit by hand. "
             "Every figure is a ratio or time measured within one run on one machine, the median of the "
             "repetitions with its spread: the machine below, unless the figure's row names another CPU.", "",
             f"Machine: {m.get('cpu_model', '?')}, {m.get('cores', '?')} cores, torch {m.get('torch', '?')} with "
             f"{m.get('torch_threads', '?')} threads; commit `{data.get('commit', '?')[:12]}`"
             f"{' (library modified)' if data.get('library_dirty') else ''}; updated {data.get('updated', '?')}. "
             "Each entry in `results.json` records its own machine, load average and commit.", "",
             "## Targets", ""] + table(entries, m) + ["",
             "![Measured figures against their targets](_static/performance/targets.png)", ""]
    if missed:
        lines += ["## Missed targets", ""]
        for e in missed:
            how = ("the run did not complete" if e.get("status") == "failed"
                   else f"{fmt(e['median'], e['unit'])} against {target_text(e)}, missed by {abs(e['excess']) * 100:.0f} %")
            cause = breakdown_cause(e) if e["id"].startswith("end_to_end/") else CAUSES.get(e["id"], "")
            lines.append(f"- `{e['id']}`: {how}. {cause}".rstrip())
        lines.append("")
    lines += efficiency_section(by_id)
    lines += details_sections(by_id)
    lines += DESIGN_MEASUREMENTS
    lines += ["## Reproduce", "", "```bash", "make bench                                   # everything, the default study included (long)",
              ".venv/bin/python benchmarks/run.py --only extraction --repeat 5   # one benchmark",
              ".venv/bin/python benchmarks/run.py --only end_to_end_default     # the default study, efficiency and breakdown",
              "CONCEPTSIM_RESULTS=results .venv/bin/python benchmarks/run.py --only solver_change  # the stored default study's "
              "probes, default vs reference solvers",
              "```", ""]
    write_text(page, "\n".join(lines))
