"""Proxy of the default study on coco-icons alone, for choosing its build (issue 28's object-concept targets).

The default study's coco-icons section with a variant's overrides (build ``mode``, ``categories``, ``n``, ``seed``,
``max_images``, ``eval_grid``), run through the real runner on the three trained detectors, ONE twin seed
each and the pixels floor, at three deep layers per model (the default study's best val layers), without
dissection. It writes the study file to ``benchmarks/scratch/coco-icons-proxy-<variant>.yml``, runs
``conceptsim run`` (results in ``results/coco-icons-proxy-<variant>/`` under ``CONCEPTSIM_ROOT``) and prints
the summary's coco-icons section: per model pair the concepts that pass the learned-concept filter, and per
trained model the AP margin and the object-concept set IoU (trained, twin, every-object mask).

    PYTHONPATH=$PWD/lib CONCEPTSIM_ROOT=$PWD .venv/bin/python benchmarks/coco_icons_proxy.py objects
    PYTHONPATH=$PWD/lib CONCEPTSIM_ROOT=$PWD .venv/bin/python benchmarks/coco_icons_proxy.py single --mode single

Measured at 8ac9054 (n 720, size 320; one twin seed; 3 layers, so the filter counts read lower than the
study's 8 layers and 3 twins: on ``objects`` the study has 10/11, 14/12, 10/10). IoU: mean object-concept set
IoU on test at the seg best val layer, trained / twin / every-object mask; AP margin at the cls best val layer;
filter: concepts passing the learned-concept filter, seg/cls, for SSD-CN, SSD-MNv2, CN-MNv2 (of K concepts).

| variant | SSD IoU | CN IoU | MNv2 IoU | AP margin SSD/CN/MNv2 | filter | K |
|---|---|---|---|---|---|---|
| objects, 14 cats, 360 (the default) | .116/.050/.109 | .099/.037/.109 | .170/.044/.109 | .21/.17/.39 | 7/5 12/9 7/6 | 18 |
| single, 14 cats, 360 | .139/.055/.110 | .096/.038/.110 | .177/.043/.110 | .26/.15/.54 | 9/10 12/14 11/10 | 18 |
| objects, 11 cats, 360 | .161/.064/.133 | .117/.049/.133 | .162/.062/.133 | .27/.16/.40 | 6/4 7/10 7/5 | 15 |
| single, 11 cats, 360 | .175/.066/.133 | .133/.049/.133 | .222/.062/.133 | .33/.26/.56 | 6/7 12/11 6/7 | 15 |
| single, 11 cats, 480 | .181/.067/.133 | .141/.052/.133 | .227/.064/.133 | .35/.25/.55 | 5/7 13/11 5/7 | 15 |

Probing the layers the detectors' heads read (``--layers``), at a0e1443 on the default study's 14 categories
(``objects``, 360; every-object mask .098): SSD-MobileNetV2 ``blocks.13.expand,blocks.16,last_conv`` (the two
feature maps its box heads read, and the block between) and CenterNet-MobileNetV3
``extern1.hard_swish.mul_1,CenternetHead.Relu_2,CenternetHead.mul`` (the backbone's output and the neck's last
maps, which its heads read). The best val layers become ``last_conv`` and ``extern1``, with IoU trained / twin
.120/.040 (SSD) and .108/.035 (CenterNet), against .120 (``blocks.16``) and .103 (``expanded_conv_14``) at the
default study's 8 layers: the head-input layers do not lift either detector to 0.15. AP margins .255 / .105
(CenterNet's is lower than at its study layers, .175); filter 12/9 15/13 13/10.

    PYTHONPATH=$PWD/lib CONCEPTSIM_ROOT=$PWD .venv/bin/python benchmarks/coco_icons_proxy.py headlayers --jobs 2 \
        --layers ssd_mobilenet_v2_coco=blocks.13.expand,blocks.16,last_conv \
        --layers centernet_mobilenet_v3_coco=extern1.hard_swish.mul_1,CenternetHead.Relu_2,CenternetHead.mul

11 categories: car, airplane, bus, train, dog, horse, elephant, pizza, cake, tv, laptop (person, boat and bird
dropped: the weakest on val in the objects run). No variant gives CenterNet-MobileNetV3 a set IoU >= 0.15, and
its probes stay at the every-object mask's level in all of them.

Screening the categories (``--select K``, no run: reads a finished proxy's ``findings.json``). A proxy of
many categories on a build of *other* images (``--seed 1``) gives, per trained model, method and concept,
the learned-concept filter's decision on val; :func:`select_categories` then chooses the K categories whose
concepts (each category and each supercategory group of two or more, the groups' decisions read from the
screening's own groups) the most model pairs learn: the largest smallest count over pairs and methods, then
the largest sum. Measured at 5473e9d: ``screen28 --seed 1 --n 1200 --max-images 728`` (28 categories, the
default study's 14 and 14 more: bicycle, motorcycle, truck, stop sign, cat, cow, zebra, giraffe, umbrella,
sports ball, cup, banana, broccoli, clock; 26 training images per category, 200 val and test images; 497 s
with one job) and ``screen28 --select 14``: counts per pair (SSD-CN, SSD-MNv2, CN-MNv2) x (seg, cls) of
[14, 9, 14, 11, 14, 12] for the chosen person, car, airplane, bus, truck, boat, stop sign, zebra, giraffe,
sports ball, banana, pizza, tv, laptop, against [9, 7, 12, 9, 10, 8] for the 14 the default study used
until then (train, bird, dog, horse, elephant and cake out). The default study uses the chosen 14 since.

    PYTHONPATH=$PWD/lib CONCEPTSIM_ROOT=$PWD .venv/bin/python benchmarks/coco_icons_proxy.py screen28 --seed 1 \
        --n 1200 --max-images 728 --categories "person,car,...,clock"
    PYTHONPATH=$PWD/lib CONCEPTSIM_ROOT=$PWD .venv/bin/python benchmarks/coco_icons_proxy.py screen28 --select 14
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TRAINED = ("ssd_mobilenet_v2_coco", "centernet_mobilenet_v3_coco", "mobilenet_v2_imagenet")
#: the default study's best val layers (seg and cls) per trained model, and their neighbours
LAYERS = {
    "ssd_mobilenet_v2_coco": ["blocks.12", "blocks.16", "extras.0"],
    "centernet_mobilenet_v3_coco": ["MobilenetV3.expanded_conv_14.add", "CenternetHead.Relu", "CenternetHead.Relu_2"],
    "mobilenet_v2_imagenet": ["features.15", "features.17", "features.18"],
}


def proxy_study(variant: str, mode: str | None, categories: list[str] | None, n: int | None,
                max_images: int | None, eval_grid: int | None, size: int | None = None,
                seed: int | None = None, layers: dict[str, list[str]] | None = None) -> dict:
    """The default study cut down to coco-icons, with the variant's build, size and layer overrides."""
    default = yaml.safe_load((ROOT / "studies" / "default.yml").read_text())
    ds = default["datasets"]["coco-icons"]
    build = dict(ds["build"])
    for key, value in (("mode", mode), ("categories", categories), ("n", n), ("size", size), ("seed", seed)):
        if value is not None:
            build[key] = value
    coco = {**ds, "build": build}
    if max_images is not None:
        coco["max_images"] = max_images
    extraction = dict(default["extraction"])
    if eval_grid is not None:
        extraction["eval_grid"] = eval_grid
    return {
        "name": f"coco-icons-proxy-{variant}",
        "description": f"coco-icons proxy of the default study ({variant}); benchmarks/coco_icons_proxy.py",
        "seed": default["seed"],
        "datasets": {"coco-icons": coco},
        "models": [m for t in TRAINED for m in (t, f"{t}:random")] + ["pixels"],
        "layers": {**LAYERS, **(layers or {})},
        "split": default["split"],
        "extraction": extraction,
        "concepts": {**default["concepts"], "dissection": False},
        "comparison": default["comparison"],
    }


def learned_flags(findings: Path) -> tuple[list[tuple[str, str]], dict[tuple[str, str, str], bool]]:
    """The model pairs of a finished proxy and, per (model, method, concept), the learned-concept filter's
    decision (on val) from its ``findings.json``."""
    from conceptsim.comparison.report import load_findings, records

    pairs, flags = [], {}
    for p, method, f1, _ in records(load_findings(findings)):
        if (p["model_a"], p["model_b"]) not in pairs:
            pairs.append((p["model_a"], p["model_b"]))
        for concept, sides in (f1.learned if f1 is not None else {}).items():
            for side, model in (("a", p["model_a"]), ("b", p["model_b"])):
                flags[model, method, concept] = bool(sides[side]["learned"])
    return pairs, flags


def kept_counts(categories: list[str], pairs, flags) -> list[int]:
    """Per model pair and method, the concepts of a build with ``categories`` (each category and each
    supercategory group of two or more) that both models of the pair learn, by the screening's flags."""
    from conceptsim.data.coco_icons import concepts
    from conceptsim.data.icon_sources import CATEGORIES

    cats = [c for c in CATEGORIES if c.name in set(categories)]
    names = list(concepts(cats))
    return [sum(flags.get((a, m, c), False) and flags.get((b, m, c), False) for c in names)
            for a, b in pairs for m in ("seg", "cls")]


def select_categories(findings: Path, size: int, starts: int = 200, seed: int = 0) -> tuple[list[str], list[int]]:
    """The ``size`` categories of a screening proxy whose concepts the most model pairs learn: the largest
    smallest count of :func:`kept_counts` over pairs and methods, then the largest sum, by local search
    (single swaps) from ``starts`` seeded random starts."""
    import random

    from conceptsim.data.icon_sources import CATEGORIES

    pairs, flags = learned_flags(findings)
    screened = {c for _, _, c in flags}
    pool = [c.name for c in CATEGORIES if c.name in screened]
    if len(pool) < size:
        raise ValueError(f"{findings} screened {len(pool)} categories, fewer than the {size} asked for")

    def score(sel):
        counts = kept_counts(sel, pairs, flags)
        return min(counts), sum(counts)

    rng = random.Random(seed)
    best, best_score = None, None
    for _ in range(starts):
        sel = rng.sample(pool, size)
        current, improved = score(sel), True
        while improved:
            improved = False
            for i in range(size):
                for c in pool:
                    if c in sel:
                        continue
                    trial = sel[:i] + [c] + sel[i + 1:]
                    if (s := score(trial)) > current:
                        sel, current, improved = trial, s, True
        if best is None or current > best_score:
            best, best_score = sel, current
    chosen = [c for c in pool if c in best]
    return chosen, kept_counts(chosen, pairs, flags)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variant", help="a name for the variant (results/coco-icons-proxy-<variant>/)")
    ap.add_argument("--mode", help="coco-icons build mode (default: the default study's)")
    ap.add_argument("--categories", help="comma-separated categories (default: the default study's)")
    ap.add_argument("--n", type=int, help="images built")
    ap.add_argument("--size", type=int, help="image side")
    ap.add_argument("--max-images", type=int, help="at most this many images per split")
    ap.add_argument("--eval-grid", type=int, help="common evaluation grid")
    ap.add_argument("--seed", type=int, help="build seed (another seed draws other images: a screening sample apart "
                                              "from the default study's)")
    ap.add_argument("--layers", action="append", metavar="MODEL=L1,L2,...",
                    help="probe these layers of MODEL instead of LAYERS' (repeatable)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--select", type=int, metavar="K",
                    help="do not run: choose K categories from the finished proxy VARIANT's learned-concept filter")
    ap.add_argument("--compare", help="with --select: comma-separated categories to score beside the choice")
    args = ap.parse_args(argv)
    if args.select:
        from conceptsim.paths import dataset_results

        findings = dataset_results(f"coco-icons-proxy-{args.variant}", "coco-icons") / "findings.json"
        chosen, counts = select_categories(findings, args.select)
        print(f"chosen: {','.join(chosen)}\nconcepts both models learn (pairs x seg/cls): {counts}")
        if args.compare:
            pairs, flags = learned_flags(findings)
            print(f"compared: {kept_counts(args.compare.split(','), pairs, flags)}")
        return 0
    cats = args.categories.split(",") if args.categories else None
    layers = {}
    for spec in args.layers or []:
        model, sep, names = spec.partition("=")
        if not sep or model not in TRAINED or not names:
            raise SystemExit(f"--layers: expected MODEL=L1,L2,... with MODEL one of {TRAINED}, got {spec!r}")
        layers[model] = names.split(",")
    study = proxy_study(args.variant, args.mode, cats, args.n, args.max_images, args.eval_grid, args.size, args.seed,
                        layers)
    out = ROOT / "benchmarks" / "scratch" / f"{study['name']}.yml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(study, sort_keys=False))
    env = {**os.environ, "CONCEPTSIM_ROOT": os.environ.get("CONCEPTSIM_ROOT", str(ROOT))}
    t0 = time.perf_counter()
    rc = subprocess.call([sys.executable, "-m", "conceptsim.cli", "run", str(out), "--jobs", str(args.jobs), "--quiet"],
                         env=env, cwd=ROOT)
    print(f"run: {time.perf_counter() - t0:.0f} s, exit {rc}", flush=True)
    if rc == 0:
        rc = subprocess.call([sys.executable, "-m", "conceptsim.comparison.summary", study["name"]], env=env, cwd=ROOT)
    return rc


if __name__ == "__main__":
    sys.exit(main())
