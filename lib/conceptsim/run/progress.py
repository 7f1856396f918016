"""Live progress of ``conceptsim run``: which runs execute, where and for how long, what is done, skipped and
left, and an estimate of the time left from the recorded wall times of earlier runs of the same study.

The estimate. A run's expected time is its own last recorded time (``results/<study>/_runs/<run>.json``,
field ``seconds``); a run never recorded takes the mean recorded time of its stage, or, in a first run of
the study, the mean time of the runs of its stage that finished in this session. A run of a stage that has
no time yet is bracketed by the stages that have one: it takes at least the shortest stage mean and at most
the longest, so from the first finished run on the display shows a range ("about 4 min 10 s to 9 min 30 s
left; not yet timed: compare_models"); before any run has a time it says "no estimate until the first run
ends". The time left is the end of a greedy schedule of the runs still to do on ``jobs`` workers, each worker
first finishing its running run (expected time minus elapsed, at least zero); dependencies between runs are
ignored, so with several workers it is a lower bound.

The display. On a terminal one block of lines is redrawn every second (a summary line, then one line per
executing run, with the worker it executes on where the executor says: a Dask worker's address with
``--cluster``); elsewhere (a log file, CI) one line is printed whenever a run starts or ends.
``enabled=False`` (``--quiet``) prints nothing.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TextIO


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def stage_of(run_id: str) -> str:
    """The stage of a run id ``stage/dataset[/model]``."""
    return run_id.split("/", 1)[0]


def expected_seconds(records: Iterable[dict], run_ids: Iterable[str]) -> dict[str, float | None]:
    """Expected wall time of each run from earlier complete runs' records (see the module docstring)."""
    own: dict[str, float] = {}
    by_stage: dict[str, list[float]] = defaultdict(list)
    for rec in records:
        if rec.get("status", "ok") != "ok" or not isinstance(rec.get("seconds"), (int, float)) or "id" not in rec:
            continue
        own[rec["id"]] = float(rec["seconds"])
        by_stage[rec.get("stage") or stage_of(rec["id"])].append(float(rec["seconds"]))
    out: dict[str, float | None] = {}
    for rid in run_ids:
        stage = by_stage.get(stage_of(rid))
        out[rid] = own.get(rid, sum(stage) / len(stage) if stage else None)
    return out


def time_left(pending: Iterable[float], running: Iterable[float], jobs: int) -> float:
    """End of a greedy schedule: ``jobs`` workers, busy for the ``running`` remainders, take the ``pending``
    runs in order, each on the worker free first."""
    free = sorted(max(0.0, r) for r in running)
    workers = max(1, jobs)
    free = (free + [0.0] * workers)[:max(workers, len(free))]
    for seconds in pending:
        free.sort()
        free[0] += max(0.0, seconds)
    return max(free) if free else 0.0


@dataclass
class StudyProgress:
    """Counts and clocks of one study run; :meth:`lines` renders them, :meth:`start` shows them live."""

    study: str
    total: int
    skipped: int = 0
    jobs: int = 1
    expected: dict[str, float | None] = field(default_factory=dict)
    enabled: bool = True
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    clock: Callable[[], float] = time.monotonic
    done: int = 0
    failed: int = 0
    blocked: int = 0
    running: dict[str, float] = field(default_factory=dict)
    workers: dict[str, str] = field(default_factory=dict)  # run -> the worker executing it, where known
    ended: set[str] = field(default_factory=set)
    last: str = ""
    observed: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # this session, by stage

    # ------------------------------------------------------------------ state
    @property
    def left(self) -> int:
        return self.total - self.skipped - self.done - self.failed - self.blocked - len(self.running)

    def started(self, run_id: str, worker: str | None = None) -> None:
        """``run_id`` began executing (on ``worker``, where known: a Dask worker reports it when its task
        starts; a run retried on another worker is reported again)."""
        with self._lock:
            if run_id in self.ended:  # a late start report (Dask events travel apart from the results)
                return
            again = run_id in self.running
            if not again or worker != self.workers.get(run_id):
                self.running[run_id] = self.clock()
            if worker:
                self.workers[run_id] = worker
        self._event(f"started {run_id}" + (f" on {worker}" if worker else "") + (" (retried)" if again else ""))

    def finished(self, run_id: str, ok: bool, seconds: float) -> None:
        with self._lock:
            self.running.pop(run_id, None)
            self.workers.pop(run_id, None)
            self.ended.add(run_id)
            if ok:
                self.done += 1
                self.observed[stage_of(run_id)].append(float(seconds))
            else:
                self.failed += 1
            self.expected.pop(run_id, None)
        self._event(f"{'finished' if ok else 'FAILED'} {run_id} in {format_duration(seconds)}")

    def set_workers(self, n: int) -> None:
        """The number of runs that execute at once (a cluster's worker threads): the estimate's ``jobs``."""
        with self._lock:
            self.jobs = max(1, int(n))

    def skipped_dependency(self, run_id: str) -> None:
        with self._lock:
            self.blocked += 1
            self.expected.pop(run_id, None)
        self._event(f"skipped {run_id}: a run it depends on failed")

    def _pending(self) -> list[str]:
        return [rid for rid in self.expected if rid not in self.running]

    def stage_times(self) -> dict[str, float]:
        """Mean expected time per stage: of the records of runs still to do and of runs finished here."""
        times: dict[str, list[float]] = defaultdict(list)
        for rid, v in self.expected.items():
            if v is not None:
                times[stage_of(rid)].append(v)
        for stage, seen in self.observed.items():
            times[stage] += seen
        return {stage: sum(v) / len(v) for stage, v in times.items() if v}

    def untimed_stages(self, pending: Iterable[str] | None = None) -> list[str]:
        """The stages of runs to do that have no expected time of their own or of their stage."""
        ids = list(self._pending() if pending is None else pending) + list(self.running)
        return sorted({stage_of(rid) for rid in ids if self.expected_for(rid) is None})

    def estimate_range(self, pending: Iterable[str] | None = None) -> tuple[float, float] | None:
        """Seconds left, (low, high): runs of an untimed stage taken as the shortest and the longest stage
        mean (equal when every run to do has a time). None while no run has a time at all. ``pending``
        defaults to every run with an expected-time entry that is not running."""
        now = self.clock()
        pending = self._pending() if pending is None else list(pending)
        means = self.stage_times()
        if not means:
            return None
        out = []
        for guess in (min(means.values()), max(means.values())):
            expect = {rid: self.expected_for(rid) for rid in pending + list(self.running)}
            expect = {rid: guess if v is None else v for rid, v in expect.items()}
            remaining = [expect[rid] - (now - t0) for rid, t0 in self.running.items()]
            out.append(time_left([expect[rid] for rid in pending], remaining, self.jobs))
        return out[0], out[1]

    def estimate(self, pending: Iterable[str] | None = None) -> float | None:
        """Seconds left when every run to do has a time (None otherwise: see :meth:`estimate_range`)."""
        pending = self._pending() if pending is None else list(pending)
        if self.untimed_stages(pending):
            return None
        span = self.estimate_range(pending)
        return None if span is None else span[0]

    def expected_for(self, run_id: str) -> float | None:
        """The recorded expectation, else the mean of this session's finished runs of the same stage."""
        exp = self.expected.get(run_id)
        if exp is None:
            seen = self.observed.get(stage_of(run_id))
            exp = sum(seen) / len(seen) if seen else None
        return exp

    def time_left_text(self) -> str:
        span = self.estimate_range()
        if span is None:
            return "no estimate until the first run ends"
        low, high = span
        text = f"about {format_duration(low)}" + (f" to {format_duration(high)}" if round(high) > round(low) else "")
        untimed = self.untimed_stages()
        return text + " left" + (f"; not yet timed: {', '.join(untimed)}" if untimed else "")

    # ------------------------------------------------------------------ text
    def summary(self) -> str:
        parts = [f"{self.done} done", f"{self.skipped} skipped (complete)"]
        if self.failed:
            parts.append(f"{self.failed} failed")
        if self.blocked:
            parts.append(f"{self.blocked} skipped (failed dependency)")
        parts += [f"{len(self.running)} running", f"{self.left} left"]
        tail = self.time_left_text() if self.left + len(self.running) else ""
        return f"study {self.study}: " + ", ".join(parts) + (f"; {tail}" if tail else "")

    def lines(self) -> list[str]:
        now = self.clock()
        out = [self.summary()]
        for rid, t0 in self.running.items():
            exp = self.expected_for(rid)
            where = f" on {self.workers[rid]}" if rid in self.workers else ""
            out.append(f"  {rid}{where}: {format_duration(now - t0)}" + (f" of about {format_duration(exp)}" if exp else ""))
        return out

    # ------------------------------------------------------------------ output
    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._drawn = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.live = self.enabled and hasattr(self.stream, "isatty") and self.stream.isatty()

    def start(self) -> StudyProgress:
        """Print the first state; on a terminal, redraw it every second until :meth:`close`."""
        if not self.enabled:
            return self
        if self.live:
            self._thread = threading.Thread(target=self._tick, name="conceptsim-progress", daemon=True)
            self._thread.start()
        else:
            self._print(self.summary())
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if self.enabled:
            if self.live:
                self._redraw()
            else:
                self._print(self.summary())

    def _event(self, what: str) -> None:
        self.last = what
        if not self.enabled:
            return
        if self.live:
            self._redraw()
        else:
            self._print(f"{what} | {self.summary()}")

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            self._redraw()

    def _redraw(self) -> None:
        with self._lock:
            text = self.lines()
            up = f"\x1b[{self._drawn}F" if self._drawn else ""
            self.stream.write(up + "".join(f"\x1b[2K{line}\n" for line in text) + "\x1b[J")
            self.stream.flush()
            self._drawn = len(text)

    def _print(self, line: str) -> None:
        with self._lock:
            print(line, file=self.stream, flush=True)
