"""Run the benchmark suite, merge into ``results.json`` and regenerate the book's Performance page.

    .venv/bin/python benchmarks/run.py [--quick] [--only NAME ...] [--repeat K] [--out DIR]

Benchmarks (``--only`` takes these names): extraction, concepts, comparison, grounding (planted matches:
precision and recall per noise level, ``grounding/planted``), memory, dataset,
end_to_end, end_to_end_default (the default study with the study efficiency and its breakdown), solver_change (the
default study's probes rerun with the reference solvers: |delta AP| and |delta IoU| per dataset, seconds of each;
reads ``$CONCEPTSIM_RESULTS/default``, else the study end_to_end_default ran, else ``results/default``), projection
(uses the entries of extraction and memory, from this run or the stored results). Entries of earlier runs that were not re-measured are
kept, so a partial run updates only what it measured.

Default outputs: ``benchmarks/results.json``, ``book/performance.md``, plots under
``book/_static/performance/``. ``--out DIR`` writes ``DIR/results.json``, ``DIR/performance.md`` and
``DIR/_static/performance/`` instead (and starts from an empty result set there).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import ROOT, Context, git_commit, machine  # noqa: E402

ORDER = ("dataset", "extraction", "concepts", "comparison", "grounding", "memory", "end_to_end", "end_to_end_default",
         "solver_change", "projection")
MODULES = {"dataset": "bench_dataset", "extraction": "bench_extraction", "concepts": "bench_concepts",
           "comparison": "bench_comparison", "grounding": "bench_grounding", "memory": "bench_memory",
           "end_to_end": "bench_end_to_end", "end_to_end_default": "bench_end_to_end_default", "solver_change": "bench_solver_change",
           "projection": "projection"}
SCHEMA = 1


def load(path: Path) -> dict:
    if path.exists():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            pass
    return {"schema": SCHEMA, "entries": {}, "runs": []}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shrink every benchmark (for tests)")
    ap.add_argument("--only", nargs="+", choices=ORDER, metavar="NAME", help=f"subset of {', '.join(ORDER)}")
    ap.add_argument("--repeat", type=int, default=None, help="repetitions per figure (default 3; quick 1)")
    ap.add_argument("--out", type=Path, default=None, help="write results.json, performance.md and plots here")
    args = ap.parse_args(argv)

    os.environ.setdefault("MPLBACKEND", "Agg")
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("conceptsim").setLevel(logging.ERROR)  # dataset exclusion warnings are expected here
    from conceptsim.atomic import write_json
    from conceptsim.paths import configure_environment

    configure_environment()
    if args.out:
        results_path, page, static = args.out / "results.json", args.out / "performance.md", args.out / "_static" / "performance"
    else:
        results_path, page, static = HERE / "results.json", ROOT / "book" / "performance.md", ROOT / "book" / "_static" / "performance"
    data = load(results_path)
    names = [n for n in ORDER if (n in args.only if args.only else not importlib.import_module(MODULES[n]).OPT_IN)]
    scratch = HERE / "scratch" / ("quick" if args.quick else "full")
    scratch.mkdir(parents=True, exist_ok=True)
    ctx = Context(quick=args.quick, repeat=args.repeat or (1 if args.quick else 3), scratch=scratch,
                  previous=dict(data["entries"]))
    run = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "benchmarks": names, "quick": args.quick,
           "repeat": ctx.repeat, "machine": machine(), **git_commit(), "errors": {}}
    for name in names:
        ctx.log(f"== {name}")
        t0 = time.perf_counter()
        try:
            for e in importlib.import_module(MODULES[name]).run(ctx):
                e["quick"] = args.quick
                data["entries"][e["id"]] = e
                ctx.previous[e["id"]] = e
        except Exception as exc:  # a failing benchmark is recorded; the others still run
            run["errors"][name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        ctx.log(f"== {name} done in {time.perf_counter() - t0:.1f} s")
        data.update(schema=SCHEMA, updated=time.strftime("%Y-%m-%dT%H:%M:%S"), machine=machine(), **git_commit())
        run["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_json(results_path, {**data, "runs": data.get("runs", [])[-19:] + [run]})  # atomic, after each one
    data["runs"] = data.get("runs", [])[-19:] + [run]
    write_json(results_path, data)
    from report import write_page

    write_page(data, page, static)
    ctx.log(f"wrote {results_path} and {page}")
    if not args.quick:
        shutil.rmtree(HERE / "scratch" / "full" / "e2e-smoke", ignore_errors=True)
    return 1 if run["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
