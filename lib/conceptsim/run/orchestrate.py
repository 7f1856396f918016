"""The study runner: executes the stage notebooks of a study with papermill, resumably.

Each run is skipped when it is complete and unchanged (:mod:`conceptsim.run.keys`), or executed
(:mod:`conceptsim.run.execution`) once the runs it depends on are done, the ready run with the longest chain
of dependents first (:mod:`conceptsim.run.scheduling`): in this process (one job), in a pool of worker
processes (``--jobs``) or on a Dask cluster (:mod:`conceptsim.run.cluster`). One study runs at a time
(:mod:`conceptsim.run.lock`).

Failures. A failing notebook keeps its executed copy with the traceback; runs that depend on it are
skipped; :func:`run_study` reports them and the CLI exits non-zero naming the failed run.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from conceptsim.atomic import remove_debris
from conceptsim.paths import book_results_dir, load_records, results_dir
from conceptsim.run.execution import RUN_THREADS, execute_run, stop_signals_held, worker_start
from conceptsim.run.keys import forced_runs, is_complete, run_keys
from conceptsim.run.lock import study_lock
from conceptsim.run.scheduling import critical_path, select, topological
from conceptsim.run.study import Run, Study

log = logging.getLogger("conceptsim.run.orchestrate")


class StudyInterrupted(KeyboardInterrupt):
    """The study was stopped (Ctrl-C, SIGTERM); ``runs`` were running and are left without a record."""

    def __init__(self, runs: list[str]):
        super().__init__(runs)
        self.runs = runs


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """End a pool's workers now (each kills its kernel) and drop the runs not yet started."""
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        if proc.is_alive():
            proc.terminate()
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        proc.join(timeout=10)
    pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class StudyOutcome:
    executed: list[dict] = field(default_factory=list)
    skipped_complete: list[str] = field(default_factory=list)
    skipped_dependency: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.executed if r["status"] != "ok"]


def run_study(
    study: Study, *, jobs: int = 1, only: dict[str, str] | None = None, force: bool = False, progress: bool = True,
    executor: Any = None, fresh_kernels: bool = False,
) -> StudyOutcome:
    """Execute the study's runs respecting dependencies; see the module docstring.

    Each worker (this process with one job, each of the ``jobs`` processes otherwise) executes its runs in
    one warm kernel, reset between runs (:mod:`conceptsim.run.kernels`); ``fresh_kernels`` starts a new kernel
    for every run instead.

    ``executor`` (e.g. :class:`conceptsim.run.cluster.DaskExecutor`) replaces the local process pool: its
    ``execute(runs, keys, finish, skip, priority=..., progress=...)`` runs ``runs`` (in dependency order, the
    ready run of highest priority first: :func:`critical_path`), calls ``finish(record)`` for each executed
    run and ``skip(run_id)`` for each dependent of a failed one, and tells ``progress`` (the display) when a
    run starts and on which worker (``progress.started(run_id, worker)``).
    """
    with study_lock(study.name):
        return _run_study(study, jobs, only, force, progress, executor, fresh_kernels)


def _run_study(study: Study, jobs: int, only: dict[str, str] | None, force: bool, progress: bool, executor: Any,
               fresh_kernels: bool) -> StudyOutcome:
    from conceptsim.models.user_models import write_model_listing
    from conceptsim.run.progress import StudyProgress, expected_seconds

    runs = select(study.runs(), only or {})
    keys = run_keys(runs)
    write_model_listing(study.name, study.models, study.model_specs)  # trained or not, read by the findings
    for folder in (results_dir() / study.name, book_results_dir(study.name)):
        for path in remove_debris(folder):
            log.info("removed %s, left by a process that no longer runs", path)
    by_id = {r.id: r for r in runs}
    outcome = StudyOutcome()
    forced = forced_runs(runs, keys, force)
    todo: dict[str, Run] = {}
    for r in topological(runs):
        if r.id not in forced and is_complete(r, keys[r.id]):
            outcome.skipped_complete.append(r.id)
        else:
            todo[r.id] = r
    expected = expected_seconds(load_records(study.name), todo)
    chain = critical_path(list(todo.values()), expected)
    expected = {rid: expected[rid] for rid in sorted(todo, key=lambda rid: -chain[rid])}  # the order workers take them
    bar = StudyProgress(study.name, total=len(runs), skipped=len(outcome.skipped_complete), jobs=jobs,
                        expected=expected, enabled=progress).start()
    done_ok = set(outcome.skipped_complete)
    failed: set[str] = set()

    def ready() -> list[Run]:
        """The runs whose dependencies are done, the longest chain of dependents first (as the estimate)."""
        runs = [r for r in todo.values() if all(d in done_ok or d not in by_id for d in r.depends_on)]
        return sorted(runs, key=lambda r: -chain[r.id])

    def blocked(r: Run) -> bool:
        return any(d in failed for d in r.depends_on)

    def skip(rid: str) -> None:
        todo.pop(rid, None)
        failed.add(rid)
        outcome.skipped_dependency.append(rid)
        bar.skipped_dependency(rid)

    def prune() -> None:
        changed = True
        while changed:
            changed = False
            for rid, r in list(todo.items()):
                if blocked(r):
                    skip(rid)
                    changed = True

    in_progress: list[str] = []

    def start(r: Run) -> None:
        del todo[r.id]
        in_progress.append(r.id)
        bar.started(r.id)

    def finish(rec: dict) -> None:
        if rec["id"] in in_progress:
            in_progress.remove(rec["id"])
        outcome.executed.append(rec)
        (done_ok if rec["status"] == "ok" else failed).add(rec["id"])
        bar.finished(rec["id"], rec["status"] == "ok", rec["seconds"])

    try:
        if executor is not None:
            executor.execute(list(todo.values()), keys, finish, skip, priority=chain, progress=bar, forced=forced)
        elif jobs <= 1:
            from conceptsim.run.kernels import shutdown_all

            try:
                while todo:
                    prune()
                    nxt = next(iter(ready()), None)
                    if nxt is None:
                        break
                    start(nxt)
                    finish(execute_run(nxt, keys[nxt.id], RUN_THREADS, fresh_kernels, forced.get(nxt.id, False)))
            finally:
                shutdown_all()  # this process's kernel ends with the study
        else:
            pool = ProcessPoolExecutor(max_workers=jobs, initializer=worker_start, initargs=(os.getpid(),))
            try:
                running: dict[Future, str] = {}
                while todo or running:
                    prune()
                    for r in ready()[: jobs - len(running)]:
                        start(r)
                        with stop_signals_held():
                            running[pool.submit(execute_run, r, keys[r.id], RUN_THREADS, fresh_kernels,
                                                forced.get(r.id, False))] = r.id
                    if not running:
                        break
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        running.pop(fut)
                        finish(fut.result())
            except BaseException:
                _stop_pool(pool)
                raise
            pool.shutdown()
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM as the CLI turns it into one: the runs stopped, no records
        bar.enabled = False
        bar.close()  # the runs this process started, or the cluster reported started
        raise StudyInterrupted(list(dict.fromkeys([*in_progress, *bar.running]))) from None
    bar.close()
    from conceptsim import book

    book.publish(study)
    return outcome
