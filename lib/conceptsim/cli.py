"""The ``conceptsim`` command line: run studies, manage models and datasets."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from conceptsim.data.cli import positive_int


def _cmd_run(args: argparse.Namespace) -> int:
    from conceptsim.run import StudyBusy, StudyInterrupted, apply_roots, keep_random_twins, load_study, study_lock

    only: dict[str, list[str]] = {}
    for item in args.only or []:
        k, sep, v = item.partition("=")
        if not sep or not k or not v:
            print(f"conceptsim run: --only expects KEY=VALUE (stage=, dataset= or model=), got {item!r}", file=sys.stderr)
            return 2
        only.setdefault(k, []).append(v)  # a key given twice matches either value
    roots = dict(item.split("=", 1) for item in args.root or [] if "=" in item)
    if len(roots) != len(args.root or []):
        print(f"conceptsim run: --root expects DATASET=DIR, got {args.root}", file=sys.stderr)
        return 2
    if args.cluster:  # the address's form, before anything else (connecting waits until runs are pending)
        from conceptsim.run.cluster import ClusterError, local_workers

        try:
            local_workers(args.cluster)
        except ClusterError as exc:
            print(f"conceptsim run: error: {exc}", file=sys.stderr)
            return 2
    study = load_study(args.study, smoke=args.smoke)
    apply_roots(study, roots)
    if args.twins_only:
        keep_random_twins(study)
    _stop_on_signals()  # main() did it before the imports; again for a direct call
    try:
        with study_lock(study.name, create=False):  # one `conceptsim run` per study at a time: a second one stops here
            return _run_locked(args, study, only)
    except StudyBusy as exc:
        print(f"conceptsim run: error: {exc}", file=sys.stderr)
        return 2
    except StudyInterrupted as exc:
        runs = ", ".join(exc.runs) if exc.runs else "none was running"
        print(f"conceptsim run: interrupted; stopped run(s): {runs} (no record: the next run redoes them)",
              file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # while the inputs were checked (a dataset being built): no run had started
        print("conceptsim run: interrupted before any run started", file=sys.stderr)
        return 130


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop_on_signals() -> None:
    """``kill PID`` stops a study as Ctrl-C does, and Ctrl-C stops it even when it was started from a
    non-interactive shell's background job, whose children inherit SIGINT ignored (then Python installs no
    KeyboardInterrupt handler of its own)."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _run_locked(args: argparse.Namespace, study, only: dict[str, list[str]]) -> int:
    from conceptsim.run import check_inputs, pending, run_study, select

    # data, weights, device, output folders of the runs that will execute: all checked before any run starts
    check_inputs(study, pending(select(study.runs(), only), force=args.force))
    if args.cluster:  # only this path imports Dask
        from conceptsim.run.cluster import ClusterError, DaskExecutor

        try:
            outcome = run_study(study, only=only, force=args.force, progress=not args.quiet,
                                executor=DaskExecutor(args.cluster, fresh_kernels=args.fresh_kernels))
        except ClusterError as exc:
            print(f"conceptsim run: error: {exc}", file=sys.stderr)
            return 2
    else:
        outcome = run_study(study, jobs=args.jobs, only=only, force=args.force, progress=not args.quiet,
                            fresh_kernels=args.fresh_kernels)
    n_exec = len(outcome.executed)
    print(f"study {study.name}: {n_exec} run(s) executed, {len(outcome.skipped_complete)} reused (complete and unchanged)")
    print(where_results_are(study, complete=not (outcome.failed or outcome.skipped_dependency)))
    if outcome.failed or outcome.skipped_dependency:
        for rec in outcome.failed:
            where = [f"\n  {label}: {rec[k]}" for k, label in (("executed_notebook", "executed notebook"), ("log", "log"))
                     if rec.get(k)]
            print(f"FAILED {rec['id']}: {rec['error']}" + "".join(where), file=sys.stderr)
        for rid in outcome.skipped_dependency:
            print(f"SKIPPED {rid}: a run it depends on failed", file=sys.stderr)
        return 1
    return 0


def where_results_are(study, complete: bool) -> str:
    """Where a study's numbers and executed notebooks are, and the command that publishes them in the book
    (the book lists complete studies; smoke and incomplete ones only with ``BOOK_ALL=1``)."""
    from conceptsim.paths import book_results_dir, project_root, results_dir

    root = project_root()
    rehearsal = study.smoke or not complete
    return "\n".join([
        f"  results:            {results_dir() / study.name}",
        f"  executed notebooks: {book_results_dir(study.name)}",
        f"  publish the book:   make -C {root} book{' BOOK_ALL=1' if rehearsal else ''}"
        f"   (then open {root / '_build' / 'html' / 'index.html'})"
        # the part's caption as the book writes it (conceptsim.book.toc)
        + (f"\n  (a smoke or incomplete study is listed in the book only with BOOK_ALL=1, under the part "
           f"\"Rehearsal ({'smoke' if study.smoke else 'incomplete'} study): '{study.name}'\")" if rehearsal else ""),
    ])


def _cmd_models_list(args: argparse.Namespace) -> int:
    from conceptsim.models.names import twin_name
    from conceptsim.models.registry import MODELS

    for spec in MODELS.values():
        where = "offline" if spec.offline else "needs internet or a local file"
        print(f"{spec.name:30s} {spec.task:10s} {where:32s} {spec.description}")
        twin = twin_name(spec.name) if spec.has_twin else "none (no trained weights)"
        print(f"{'':30s} weights: {spec.weights_source}; twin: {twin}")
    return 0


def _cmd_models_layers(args: argparse.Namespace) -> int:
    from conceptsim.extraction.extract import probe_layers
    from conceptsim.models.registry import build_model
    from conceptsim.models.user_models import choose_layers, declared_model_specs, is_layer_pattern, parse_model_arg

    name, spec = parse_model_arg(args.name)
    loaded = build_model(name, device=args.device, user_models=declared_model_specs({name: spec} if spec else None))
    choice = "**" if args.all else args.layers[0] if args.layers and len(args.layers) == 1 and (
        args.layers[0] == "auto" or is_layer_pattern(args.layers[0])) else args.layers
    infos, total = probe_layers(loaded, choose_layers(loaded.spec, loaded.module, choice), grid_cap=10**9)
    prep = loaded.preprocessing
    print(f"{loaded.name}: {total} Conv2d modules executed; input {prep.size} ({prep.resize}); "
          f"weights: {loaded.weights_sha256}")
    print(f"{'layer':34s} {'module':22s} {'output (C, H, W)':20s} {'conv pos':>8s} {'rel. depth':>10s}")
    for i in infos:
        shape = f"({i.channels}, {i.native_grid[0]}, {i.native_grid[1]})"
        print(f"{i.name:34s} {i.module_type:22s} {shape:20s} {i.conv_position:8d} {i.relative_depth:10.3f}")
    return 0


def _cmd_models_fetch(args: argparse.Namespace) -> int:
    from conceptsim.models.registry import MODELS, parse_model_name
    from conceptsim.models.weights import fetch_all

    keys = []
    for name in args.names or [s.name for s in MODELS.values() if s.carrier]:
        spec, _ = parse_model_name(name)
        if not spec.has_twin:  # nothing trained to fetch (the pixels floor)
            print(f"{spec.name}: has no weights; nothing to fetch")
            continue
        if spec.carrier is None:
            print(f"{spec.name}: weights need internet or a local copy; see `conceptsim models list`", file=sys.stderr)
            return 2
        keys.append(spec.carrier)
    for key, paths in fetch_all(sorted(set(keys))).items():
        for p in paths:
            print(f"{key}: {p} (sha256 verified)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="conceptsim", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a study file with papermill (resumable)")
    r.add_argument("study", type=Path)
    where = r.add_mutually_exclusive_group()
    where.add_argument("--jobs", type=positive_int, default=1, help="independent runs in parallel processes (>= 1)")
    where.add_argument("--cluster", metavar="local:N|tcp://HOST:PORT",
                       help="run on a Dask cluster: local:N starts N process workers here; an address joins a "
                            "running scheduler (workers need the checkout and results on a shared filesystem)")
    r.add_argument("--only", action="append", metavar="KEY=VALUE",
                   help="stage=, dataset= or model= filter; repeat a key to accept several values")
    r.add_argument("--force", action="store_true", help="recompute the selected runs, ignoring their stored outputs")
    r.add_argument("--fresh-kernels", action="store_true",
                   help="a new kernel for every run (default: each worker reuses one kernel, reset between runs)")
    r.add_argument("--smoke", action="store_true", help="tiny parameters (the study's smoke section)")
    r.add_argument("--quiet", action="store_true", help="no progress display (for batch use; the summary is still printed)")
    r.add_argument("--root", action="append", metavar="DATASET=DIR", help="a local copy of a downloadable dataset")
    r.add_argument("--twins-only", action="store_true",
                   help="run only the random-init twins (rehearse a study before its trained weights are here)")
    r.set_defaults(func=_cmd_run)

    m = sub.add_parser("models", help="the model registry").add_subparsers(dest="models_command", required=True)
    ml = m.add_parser("list", help="list registry models")
    ml.set_defaults(func=_cmd_models_list)
    for command in ("layers", "inspect"):
        mla = m.add_parser(command, help="probed layers with shapes and relative depth, for a registry name or a "
                                         "model spec such as '{torchvision: resnet18}'")
        mla.add_argument("name", metavar="SPEC", help="NAME, NAME:random, or a YAML spec '{KIND: ..., ...}'")
        mla.add_argument("--layers", nargs="*", help="dotted module paths, a glob pattern or 'auto'")
        mla.add_argument("--all", action="store_true", help="every module with a feature-map output")
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
    if args.func is _cmd_run:  # before the library's imports, which take seconds: an early Ctrl-C or kill stops it too
        _stop_on_signals()
    try:
        return _main(args)
    except KeyboardInterrupt:  # before a command's own handling (importing, loading the study): nothing had started
        print(f"conceptsim {args.command}: interrupted before anything started" if getattr(args, "command", None)
              else "conceptsim: interrupted before anything started", file=sys.stderr)
        return 130


def _main(args: argparse.Namespace) -> int:
    from conceptsim import runtime

    runtime.setup()  # this process and the kernels it starts: folders, threads, allocator (nothing is set on import)
    from conceptsim.models.registry import UnknownModelError
    from conceptsim.models.weights import WeightsError
    from conceptsim.run import StudyError

    try:
        return int(args.func(args) or 0)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and exc.errno is None:  # ours: "... does not exist: run ... first"
            print(f"conceptsim: error: {exc}", file=sys.stderr)
            return 2
        # from the operating system (disk full, read-only folder, permission, a missing folder, as the README
        # says): one line naming the path, the traceback in a log
        log = _write_traceback(args)
        where = exc.filename or "a file"
        print(f"conceptsim: error: {where}: {exc.strerror or exc} (traceback in {log})", file=sys.stderr)
        return 1
    except (StudyError, UnknownModelError, WeightsError, ValueError, KeyError) as exc:
        print(f"conceptsim: error: {exc}", file=sys.stderr)
        return 2


def _write_traceback(args: argparse.Namespace) -> str:
    """Write the current exception's traceback to a log file; returns its path (the cache's, else the temp folder's)."""
    import tempfile
    import time
    import traceback

    from conceptsim.paths import cache_dir

    text = f"conceptsim {' '.join(sys.argv[1:])}\n{time.strftime('%Y-%m-%d %H:%M:%S')}\n{traceback.format_exc()}"
    name = f"conceptsim-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for folder in (cache_dir() / "logs", Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
            return str(folder / name)
        except OSError:
            continue
    return "(no writable folder for a log)"


if __name__ == "__main__":
    sys.exit(main())
