"""The default study end to end (target 15 min) with the study efficiency and its breakdown.

One run on one machine, so that the ratio holds when the machine is slow:

1. ``conceptsim run studies/default.yml --jobs 2`` (as ``make report``) in a fresh sandbox: the wall time;
2. the strict book build of that sandbox (``jupyter-book build``, as ``make book``): its wall time;
3. the bare forward pass of every (dataset, model) of the study over the dataset's images, one thread
   (``extraction.extract.bare_forward_seconds``; a random-init twin has its trained model's architecture
   and is measured with its own weights).

The efficiency is ``wall ÷ (Σ bare forward ÷ cores)``; the breakdown (``efficiency.study_breakdown``) comes
from the sandbox's run records, executed notebooks and ``concept_stage.json`` files.

The bare forward passes are always measured in the same invocation as the study (two machines that report
the same CPU model can differ in speed by a factor of two). With ``BENCH_REUSE_STUDY=1``
steps 1 and 2 are skipped instead when the previous ``end_to_end/default`` entry was measured, with a clean
library, at a commit with the same library, notebooks, study file and requirements as this one
(:data:`STUDY_INPUTS`) and its sandbox is still there: its wall time, book build and breakdown are reused,
the floor is measured now, and the entry says so (``study_from``: when that entry was measured).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from bench_end_to_end import JOBS, TARGETS, measure
from common import ROOT, Context, default_study, entry, git_commit
from efficiency import forward_floor, study_breakdown, study_efficiency

NAME = "end_to_end_default"
OPT_IN = False
EFFICIENCY_TARGET = 2.0


def book_build_seconds(root: Path, timeout: float = 3600) -> tuple[float, int]:
    """Time the strict book build of a sandbox (hand-written pages linked in beside its generated ones)."""
    for page in (ROOT / "book").iterdir():
        if page.name not in ("results", "_generated") and not (root / "book" / page.name).exists():
            (root / "book" / page.name).symlink_to(page)
    env = {**os.environ, "CONCEPTSIM_ROOT": str(root)}
    cmd = [str(ROOT / ".venv" / "bin" / "jupyter-book"), "build", ".", "--toc", "book/_generated/_toc.yml", "-W", "-n",
           "--keep-going"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    return time.perf_counter() - t0, proc.returncode


def bare_forward_all(smoke: bool = False) -> dict[str, float]:
    """Single-threaded bare forward seconds per ``dataset/model`` over each dataset's images in the study."""
    import torch

    from conceptsim.extraction.extract import bare_forward_seconds
    from conceptsim.models.registry import build_model
    from conceptsim.pipeline import open_dataset

    study = default_study(smoke=smoke)
    ex = study.sections["extraction"]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for ds_name, ds_opts in study.datasets.items():
            for model in study.models:
                loaded = build_model(model, device=ex["device"])
                ds, _ = open_dataset(ds_name, ds_opts, study.sections["split"], loaded.preprocessing, ex["eval_grid"])
                out[f"{ds_name}/{model}"] = bare_forward_seconds(loaded, ds, ex["batch_size"])
    finally:
        torch.set_num_threads(before)
    return out


#: what the default study's outcome depends on besides the machine
STUDY_INPUTS = ("lib", "notebooks", "studies/default.yml", "requirements.txt", "pyproject.toml")


def same_study_code(commit_a: str, commit_b: str) -> bool:
    """Whether two commits hold the same :data:`STUDY_INPUTS` (``git diff --quiet``)."""
    r = subprocess.run(["git", "diff", "--quiet", commit_a, commit_b, "--", *STUDY_INPUTS], cwd=ROOT,
                       capture_output=True)
    return r.returncode == 0


def reused_study(ctx: Context) -> dict | None:
    """The study half (wall, book build, sandbox) of the previous default-study entry, when
    ``BENCH_REUSE_STUDY=1`` and that entry was measured with a clean library at a commit with the same
    :data:`STUDY_INPUTS`; else ``None``."""
    if os.environ.get("BENCH_REUSE_STUDY") != "1":
        return None
    prev = ctx.previous.get("end_to_end/default")
    if not prev or prev.get("library_dirty") or not same_study_code(prev.get("commit", ""), git_commit()["commit"]):
        return None
    d = prev.get("details") or {}
    sandbox = ctx.scratch / "e2e-default"
    if d.get("exit_code") != 0 or not (sandbox / "results" / "default").is_dir():
        return None
    return {"rc": 0, "seconds": d["wall_s"], "tail": d.get("output_tail", ""), "sandbox": str(sandbox),
            "book": (d.get("book_build_s"), d.get("book_build_rc")), "from": prev.get("measured_at")}


def run(ctx: Context) -> list[dict]:
    run_ = reused_study(ctx)
    if run_ is not None:
        ctx.log(f"study wall time and sandbox reused from the entry of {run_['from']} (BENCH_REUSE_STUDY)")
    else:
        run_ = measure(ctx, smoke=False, timeout=3 * 3600)
    root = Path(run_["sandbox"])
    ok = run_["rc"] == 0
    wall = run_["seconds"]
    if "book" in run_:
        book_s, book_rc = run_["book"]
    else:
        book_s, book_rc = book_build_seconds(root) if ok else (None, None)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ctx.log("bare forward passes of every (dataset, model), one thread")
    bare = bare_forward_all()
    breakdown = study_breakdown(root / "results" / "default", root, book_s) if ok else {}
    details = {"jobs": JOBS, "cores": cores, "wall_s": wall, "book_build_s": book_s, "book_build_rc": book_rc,
               "bare_forward_s": bare, "study_from": run_.get("from"), "forward_floor_s": forward_floor(bare, cores),
               "breakdown": breakdown,
               "exit_code": run_["rc"], "output_tail": run_["tail"]}
    wall_entry = entry("end_to_end/default", "Default study, end to end after set-up", "wall time", "s", [wall],
                       TARGETS[False], "lower", details, benchmark=NAME,
                       notes="" if ok else "the run did not complete; the time is up to the failure")
    eff = entry("end_to_end/efficiency", "Study efficiency: default study wall ÷ (Σ bare forward ÷ cores)",
                "efficiency", "x", [study_efficiency(wall, bare, cores)], EFFICIENCY_TARGET, "lower", details,
                benchmark=NAME)
    if not ok:
        for e in (wall_entry, eff):
            e["passed"], e["status"] = False, "failed"
    return [wall_entry, eff]
