"""End to end: wall time of ``conceptsim run studies/default.yml`` (``--smoke`` and full), after set-up.

Set-up (weights fetched, datasets built) is excluded: the run shares the project's cache
(``CONCEPTSIM_CACHE``) but writes results and executed notebooks into a fresh folder, so nothing is
reused from earlier runs and the project's own ``results/`` and ``book/`` are not touched. Both run with
``--jobs 2``, as ``make smoke`` and ``make study`` do on the 2-core machines the targets are set for; the
smoke entry carries the study's breakdown (``efficiency.study_breakdown``) like the default one.

``end_to_end`` runs the smoke study (target 90 s); ``bench_end_to_end_default`` the default study
(target 15 min) with the study efficiency and its breakdown.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from common import PY, ROOT, Context, entry
from conceptsim.paths import cache_dir

NAME = "end_to_end"
OPT_IN = False
TARGETS = {True: 90.0, False: 900.0}  # issue 24: smoke <= 90 s, default <= 15 min
JOBS = 2  # as the Makefile's JOBS
LINKED = ("notebooks", "studies", "pyproject.toml", "_toc.yml", "_config.yml", "lib")


def sandbox(scratch, label: str):
    """A project root of links to the real sources with its own ``results/`` and ``book/``."""
    root = scratch / f"e2e-{label}"
    shutil.rmtree(root, ignore_errors=True)
    (root / "book").mkdir(parents=True)
    for name in LINKED:
        if (ROOT / name).exists():
            (root / name).symlink_to(ROOT / name)
    return root


def measure(ctx: Context, smoke: bool, timeout: float, jobs: int = JOBS) -> dict:
    label = "smoke" if smoke else "default"
    root = sandbox(ctx.scratch, label)
    env = {**os.environ, "CONCEPTSIM_ROOT": str(root), "CONCEPTSIM_CACHE": str(cache_dir()),
           "CONCEPTSIM_RESULTS": str(root / "results"), "MPLBACKEND": "Agg"}
    cmd = [str(ROOT / ".venv" / "bin" / "conceptsim") if (ROOT / ".venv/bin/conceptsim").exists() else PY,
           "run", "studies/default.yml"] + (["--smoke"] if smoke else []) + ["--quiet", "--jobs", str(jobs)]
    if cmd[0] == PY:
        cmd[1:1] = ["-m", "conceptsim.cli"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
        rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-1500:]
    except subprocess.TimeoutExpired:
        rc, tail = -1, f"timed out after {timeout:.0f} s"
    seconds = time.perf_counter() - t0
    ctx.log(f"end to end {label}: {seconds:.1f} s, exit {rc}")
    return {"seconds": seconds, "rc": rc, "tail": tail, "sandbox": str(root)}


def entries(ctx: Context, smoke: bool, timeout: float) -> list[dict]:
    label = "smoke" if smoke else "default"
    from efficiency import study_breakdown

    runs = [measure(ctx, smoke, timeout) for _ in range(1 if not smoke else max(1, min(ctx.repeat, 2)))]
    ok = all(r["rc"] == 0 for r in runs)
    study = f"default{'-smoke' if smoke else ''}"
    breakdown = study_breakdown(Path(runs[-1]["sandbox"]) / "results" / study, Path(runs[-1]["sandbox"])) if ok else {}
    e = entry(f"end_to_end/{label}", f"{label.capitalize()} study, end to end after set-up", "wall time", "s",
              [r["seconds"] for r in runs], TARGETS[smoke], "lower",
              {"exit_codes": [r["rc"] for r in runs], "output_tail": runs[-1]["tail"], "jobs": JOBS,
               "breakdown": breakdown},
              benchmark=NAME if smoke else "end_to_end_default",
              notes="" if ok else "the run did not complete; the time is up to the failure")
    if not ok:
        e["passed"] = False
        e["status"] = "failed"
    return [e]


def run(ctx: Context) -> list[dict]:
    return entries(ctx, smoke=True, timeout=1800)
