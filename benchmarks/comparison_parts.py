"""The comparison stage's critical path on a finished study: when each part runs, in which thread, at what CPU.

Usage (from the repository root, with the library on the path)::

    python benchmarks/comparison_parts.py [--results results/default] [--study studies/default.yml] DATASET ...

For each dataset the stage (:func:`conceptsim.comparison.stage.run_comparison_stage`, the study's models,
permutations and resamples, nothing reused) runs into a scratch folder while its parts are timed: per call of
the selection and test passes (``compute_similarities``), the label-free pass and its unit matching, the
planning, the findings and the tables, the thread it ran in, its start and end (seconds from the stage's start)
and that thread's own CPU seconds; beside them the process's CPU use (cores busy) every half second. It prints
one JSON line per dataset with the wall time, the process CPU seconds, the parts, the utilisation and SHA-256s
of the outputs (``findings.json`` and the CSV tables), so two checkouts can be compared for speed and for equal
results (run it once per checkout, e.g. with ``PYTHONPATH`` pointing at each one's ``lib``). The study's
results are only read.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path

TIMED = ("compute_similarities", "plan_findings", "findings_document", "similarity_frame", "_layer_tables",
         "_label_free", "grid4_grams")
OUTPUTS = ("findings.json", "similarity.csv", "layer_similarity.csv", "grounding.csv")


class Recorder:
    """Timed calls of the stage's parts and the process's CPU use, from one origin (a context manager: the
    wrapped functions are restored on exit)."""

    def __init__(self, period: float = 0.5):
        self.t0 = time.perf_counter()
        self.parts: list[dict] = []
        self.busy: list[tuple[float, float]] = []
        self.period = period
        self._stop = threading.Event()
        self._wrapped: list[tuple[object, str, object]] = []

    def wrap(self, owner, name: str) -> None:
        """Time every call of ``owner.name`` (a module's function, looked up at call time, or a method)."""
        f = getattr(owner, name)
        self._wrapped.append((owner, name, f))

        @functools.wraps(f)
        def timed(*args, **kwargs):
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                return f(*args, **kwargs)
            finally:
                self.parts.append({"part": name, "thread": threading.current_thread().name,
                                   "start": round(start - self.t0, 3), "end": round(time.perf_counter() - self.t0, 3),
                                   "thread_cpu": round(time.thread_time() - cpu, 3)})

        setattr(owner, name, timed)

    def _sample(self) -> None:
        last, lt = os.times(), time.perf_counter()
        while not self._stop.wait(self.period):
            now, nt = os.times(), time.perf_counter()
            self.busy.append((round(lt - self.t0, 2), round((now.user + now.system - last.user - last.system) / (nt - lt), 2)))
            last, lt = now, nt

    def __enter__(self) -> "Recorder":
        self.t0 = time.perf_counter()
        threading.Thread(target=self._sample, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for owner, name, f in reversed(self._wrapped):
            setattr(owner, name, f)
        self._wrapped.clear()


def measure(results: Path, dataset: str, models: list[str], seed: int, permutations: int, bootstrap: int) -> dict:
    import conceptsim.comparison.stage as stage
    from conceptsim.comparison import units

    rec = Recorder()
    with tempfile.TemporaryDirectory() as scratch:
        cpu = time.process_time()
        with rec:
            for name in TIMED:
                rec.wrap(stage, name)
            rec.wrap(units.UnitMatcher, "results")
            stage.run_comparison_stage(results / dataset, Path(scratch), models=models, seed=seed,
                                       permutations=permutations, bootstrap=bootstrap, reuse=False)
            wall = time.perf_counter() - rec.t0
        digests = {name: hashlib.sha256((Path(scratch) / name).read_bytes()).hexdigest()[:16] for name in OUTPUTS
                   if (Path(scratch) / name).exists()}
    return {"dataset": dataset, "wall_s": round(wall, 2), "process_cpu_s": round(time.process_time() - cpu, 2),
            "parts": sorted(rec.parts, key=lambda p: p["start"]), "cores_busy": rec.busy, "sha256": digests}


def main() -> None:
    import yaml

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="+", help="datasets of the study, e.g. shapes coco-icons")
    ap.add_argument("--results", type=Path, default=Path("results/default"))
    ap.add_argument("--study", type=Path, default=Path("studies/default.yml"))
    args = ap.parse_args()
    study = yaml.safe_load(args.study.read_text())
    cmp = study.get("comparison", {})
    for ds in args.datasets:
        print(json.dumps(measure(args.results, ds, list(study["models"]), int(study.get("seed", 0)),
                                 int(cmp.get("permutations", 10000)), int(cmp.get("bootstrap", 10000)))), flush=True)


if __name__ == "__main__":
    main()
