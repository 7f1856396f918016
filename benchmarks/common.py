"""Shared helpers of the benchmark suite: machine description, repetitions, entries, child processes.

Every benchmark module exposes ``NAME``, ``OPT_IN`` (True: runs only when named with ``--only``) and
``run(ctx) -> list[dict]``; each dict is an *entry* made by :func:`entry`.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


@dataclass
class Context:
    """What every benchmark gets: mode, repetitions, a scratch folder and the results measured so far."""

    quick: bool
    repeat: int
    scratch: Path
    previous: dict = field(default_factory=dict)  # entry id -> entry (earlier runs and this one)

    def log(self, msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    import torch

    return {
        "cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def git_commit() -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "HEAD") or "unknown",
            "library_dirty": bool(git("status", "--porcelain", "--", "lib"))}


def summarize(values: Sequence[float]) -> dict:
    """Median and spread (min, max, quartiles) of repetitions."""
    v = np.asarray(list(values), dtype=float)
    return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()),
            "q1": float(np.percentile(v, 25)), "q3": float(np.percentile(v, 75)), "n": int(v.size),
            "values": [float(x) for x in v]}


def repeat(fn: Callable[[int], float], k: int) -> list[float]:
    return [float(fn(i)) for i in range(k)]


def entry(id: str, title: str, metric: str, unit: str, values: Sequence[float], target: float | None, better: str,
          details: dict | None = None, notes: str = "", benchmark: str = "") -> dict:
    """One benchmark figure against its target.

    ``better`` is ``"lower"`` (target is a maximum) or ``"higher"`` (a minimum). ``excess`` is the
    relative amount by which the median misses the target (positive: missed by that fraction; negative:
    met with that much headroom).
    """
    s = summarize(values)
    m = s["median"]
    passed = excess = None
    if target is not None:
        if better == "lower":
            passed, excess = bool(m <= target), (m - target) / target
        else:
            passed, excess = bool(m >= target), (target - m) / target
    return {"id": id, "benchmark": benchmark, "title": title, "metric": metric, "unit": unit, **s,
            "target": target, "better": better, "passed": passed, "excess": excess,
            "details": details or {}, "notes": notes, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "machine": machine(), **git_commit()}


def verdict(e: dict) -> str:
    if e.get("target") is None or e.get("passed") is None:
        return "info"
    pct = abs(e["excess"]) * 100
    return f"met ({pct:.0f} % headroom)" if e["passed"] else f"MISSED by {pct:.0f} %"


def child(module: str, args: Sequence[str], env: dict | None = None, timeout: float = 3600) -> dict:
    """Run ``python benchmarks/<module>.py child ARGS`` in a fresh process; it prints one JSON line last."""
    proc = subprocess.run([PY, str(ROOT / "benchmarks" / f"{module}.py"), "child", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"child {module} {list(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_rss_mib() -> dict:
    """Peak resident set size of this process: ``VmHWM`` from /proc and ``ru_maxrss`` (both MiB)."""
    import resource

    hwm = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    except OSError:
        pass
    return {"vmhwm_mib": hwm, "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def default_study(smoke: bool = False):
    from conceptsim.run.study import load_study

    return load_study(ROOT / "studies" / "default.yml", smoke=smoke)
