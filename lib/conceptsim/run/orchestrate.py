"""The study runner: executes the stage notebooks of a study with papermill, resumably.

Records. Each run's completion is recorded in ``results/<study>/_runs/<run>.json`` *after* its executed
notebook and results are fully written (temporary name, then rename). A run is skipped when its key --
the hash of its notebook's code cells, its parameters, the library's source and the keys of the runs it
depends on -- equals the recorded one and its executed notebook exists; otherwise it and (through the key
chain) its dependents run again. A run's record is removed when the run starts, so a killed run (forced or
not) leaves no record and is redone; the temporary files it left (:func:`conceptsim.atomic.remove_debris`)
are removed by the next run once their process is gone.

Forcing. ``--force`` makes the selected runs recompute: the notebook gets ``force=True`` and the stage
ignores its stored outputs. A record lists the hashes of the run's outputs (:func:`output_paths`); a run
whose stored output no longer matches its recorded hash is forced on any run, and the record says which
runs were forced and why.

Threads. Every run gets :data:`RUN_THREADS` torch/BLAS threads, whatever ``--jobs`` or ``--cluster``:
float reductions depend on the thread count, so the same study gives byte-identical results either way.

Failures. A failing notebook keeps its executed copy with the traceback; runs that depend on it are
skipped; :func:`run_study` reports them and the CLI exits non-zero naming the failed run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat

from conceptsim.atomic import debris_pid, remove_debris, sha256_file, sha256_json, write_json
from conceptsim.atomic import notebook_code_hash as package_code_hash
from conceptsim.paths import (
    book_results_dir,
    comparison_stage_json,
    concept_stage_json,
    dataset_results,
    executed_path,
    load_records,
    logs_dir,
    model_results,
    project_root,
    results_dir,
    runs_dir,
    store_path,
)
from conceptsim.run.study import Run, Study

log = logging.getLogger("conceptsim.run.orchestrate")

_study_process: int | None = None  # in a pool worker: the process id of the study that started it


class StudyBusy(RuntimeError):
    """Another process runs the same study (same results folder)."""


class StudyInterrupted(KeyboardInterrupt):
    """The study was stopped (Ctrl-C, SIGTERM); ``runs`` were running and are left without a record."""

    def __init__(self, runs: list[str]):
        super().__init__(runs)
        self.runs = runs


@contextlib.contextmanager
def study_lock(study: str, create: bool = True):
    """Hold ``results/<study>/.study.lock`` (``flock``, released by the OS when the holder dies) for the block;
    :class:`StudyBusy` naming the holder's process id at once when another process holds it. Re-entrant
    within a process. Without ``create`` a study with no results folder yet is not locked (nothing is written
    before its inputs are checked; :func:`run_study` locks it)."""
    path = results_dir() / study / ".study.lock"
    if str(path) in _locks or (not create and not path.parent.is_dir()):
        yield
        return
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise StudyBusy(f"study {study} is already being run by process {holder} (lock {path}); "
                        f"wait for it to end or stop it (kill {holder})") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    _locks.add(str(path))
    try:
        yield
    finally:
        _locks.discard(str(path))
        handle.close()  # closing releases the lock


_locks: set[str] = set()


def _worker_start(study_pid: int) -> None:
    """Initializer of the pool's worker processes: Ctrl-C is the study process's to handle (no traceback from
    every worker); SIGTERM, or the study process's death (Linux: PR_SET_PDEATHSIG), kills the worker's kernel
    and ends the worker at once, without a record."""
    global _study_process
    _study_process = study_pid
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, stop_worker)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked by the study while it forked this worker
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent check before writing a record remains
        pass
    if os.getppid() != study_pid:  # the study ended before the line above
        stop_worker()


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def _stop_signals_held():
    """Hold Ctrl-C and SIGTERM back while the pool forks workers: a worker forked now starts with them blocked
    until its initializer has set its own handlers (no traceback from a worker caught mid-start); the study
    process receives them right after."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


def watch_parent() -> None:
    """From now on a run this process executes writes no record once the process's parent is gone (a Dask
    worker whose nanny or study died; the pool's workers are set up by their initializer)."""
    global _study_process
    if _study_process is None:
        _study_process = os.getppid()


def stop_worker(*_: Any) -> None:
    """Kill this worker's kernels and end it at once, without a record (a worker's SIGTERM handler)."""
    kernels = sys.modules.get("conceptsim.run.kernels")  # not imported yet: this worker started no kernel
    if kernels is not None and hasattr(kernels, "kill_all_now"):
        kernels.kill_all_now()
    os._exit(1)


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """End a pool's workers now (each kills its kernel) and drop the runs not yet started."""
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        if proc.is_alive():
            proc.terminate()
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        proc.join(timeout=10)
    pool.shutdown(wait=False, cancel_futures=True)


# torch and BLAS threads of every run, independent of --jobs and of the machine's cores (see the module docstring)
RUN_THREADS = 1


def notebooks_dir() -> Path:
    return project_root() / "notebooks"


def run_slug(run: Run) -> str:
    return run.id.replace("/", "__").replace(":", "-")


def record_path(run: Run) -> Path:
    return runs_dir(run.parameters["study"]) / f"{run_slug(run)}.json"


def log_path(run: Run) -> Path:
    return logs_dir(run.parameters["study"]) / f"{run_slug(run)}.log"


def notebook_code_hash(path: Path) -> str:
    """Hash of a notebook's code cells and their tags (outputs and metadata noise excluded)."""
    nb = nbformat.read(path, as_version=4)
    cells = [(c.cell_type, c.source, sorted(c.get("metadata", {}).get("tags", []))) for c in nb.cells]
    return sha256_json(cells)


def run_keys(runs: list[Run]) -> dict[str, str]:
    """Per run: a hash of its notebook's code, its parameters, the package code the notebook runs
    (:func:`conceptsim.atomic.notebook_code_hash`) and the keys of the runs it depends on."""
    code: dict[Path, str] = {}
    keys: dict[str, str] = {}
    by_id = {r.id: r for r in runs}
    for r in topological(runs):
        nb = notebooks_dir() / r.notebook
        if not nb.exists():
            raise FileNotFoundError(f"notebook {nb} for run {r.id} does not exist")
        if nb not in code:
            code[nb] = package_code_hash(nb)
        keys[r.id] = sha256_json(
            {"notebook": notebook_code_hash(nb), "parameters": r.parameters, "code": code[nb],
             "deps": [keys[d] for d in r.depends_on if d in by_id]}
        )
    return keys


def topological(runs: list[Run]) -> list[Run]:
    by_id = {r.id: r for r in runs}
    done: dict[str, Run] = {}

    def visit(r: Run, stack: tuple[str, ...]) -> None:
        if r.id in done:
            return
        if r.id in stack:
            raise ValueError(f"dependency cycle: {' -> '.join(stack + (r.id,))}")
        for d in r.depends_on:
            if d in by_id:
                visit(by_id[d], stack + (r.id,))
        done[r.id] = r

    for r in runs:
        visit(r, ())
    return list(done.values())


def critical_path(runs: list[Run], expected: dict[str, float | None]) -> dict[str, float]:
    """Each run's expected time from its start to the end of the study along its longest chain of dependents.

    Workers take the ready run with the longest chain first, so the long chains start early and the short
    runs (a dataset's comparisons) fill the time while they work, instead of one worker finishing a long
    run alone at the end. ``expected`` gives each run's time (:func:`conceptsim.run.progress.expected_seconds`);
    a run without one counts as the mean of the known times, or as 1 when none is known (a first run: the
    longest chain of runs).
    """
    by_id = {r.id: r for r in runs}
    known = [s for s in (expected.get(r.id) for r in runs) if s is not None]
    default = sum(known) / len(known) if known else 1.0
    dependents: dict[str, list[str]] = {r.id: [] for r in runs}
    for r in runs:
        for d in r.depends_on:
            if d in by_id:
                dependents[d].append(r.id)
    chain: dict[str, float] = {}
    for r in reversed(topological(runs)):  # dependents first
        own = expected.get(r.id)
        chain[r.id] = (default if own is None else own) + max((chain[c] for c in dependents[r.id]), default=0.0)
    return chain


def output_paths(run: Run) -> list[Path]:
    """The result files and folders a run writes (hashed into its record): the activation store of an
    extraction; the stage record of a concept or comparison stage and every output it lists."""
    study = run.parameters["study"]
    if run.stage == "extract":
        return [store_path(study, run.dataset, run.model)]
    if run.stage == "concepts":
        record = concept_stage_json(model_results(study, run.dataset, run.model))
    elif run.stage == "compare_layers":
        record = comparison_stage_json(dataset_results(study, run.dataset))
    else:
        return []
    try:
        listed = json.loads(record.read_text()).get("outputs") or {}
    except (OSError, ValueError, AttributeError):
        listed = {}
    return [record] + [record.parent / str(v) for v in sorted(listed.values())]


_hash_memo: dict[tuple, str] = {}


def content_hash(path: Path) -> str | None:
    """sha256 of a file, or of a folder's files (relative names and contents); None when absent. A file's
    hash is remembered for its size and modification time within this process."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and debris_pid(p.name) is None)
        return sha256_json([(str(p.relative_to(path)), content_hash(p)) for p in files])
    try:
        st = path.stat()
    except OSError:
        return None
    memo = (str(path), st.st_size, st.st_mtime_ns)
    if memo not in _hash_memo:
        _hash_memo[memo] = sha256_file(path)
    return _hash_memo[memo]


def output_hashes(run: Run) -> dict[str, str | None]:
    """``{path relative to the results folder: content hash}`` of the run's outputs (:func:`output_paths`)."""
    root = results_dir()
    return {os.path.relpath(p, root): content_hash(p) for p in output_paths(run)}


def changed_outputs(record: dict) -> list[str]:
    """The outputs of a record whose content no longer matches the hash recorded (edited, removed)."""
    root = results_dir()
    return [rel for rel, digest in sorted((record.get("outputs") or {}).items()) if content_hash(root / rel) != digest]


def recorded(run: Run, key: str) -> dict | None:
    """The run's completion record if it is ok, has ``key`` and its executed notebook exists, else None."""
    rec = record_path(run)
    if not rec.exists() or not executed_path(run).exists():
        return None
    try:
        data = json.loads(rec.read_text())
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) and data.get("key") == key and data.get("status") == "ok" else None


def is_complete(run: Run, key: str) -> bool:
    """Recorded with this key, and every recorded output still has its recorded content."""
    data = recorded(run, key)
    return data is not None and not changed_outputs(data)


def pending(runs: list[Run], force: bool = False) -> list[Run]:
    """The runs that :func:`run_study` would execute (all of them under ``force``)."""
    if force:
        return list(runs)
    keys = run_keys(runs)
    return [r for r in runs if not is_complete(r, keys[r.id])]


def forced_runs(runs: list[Run], keys: dict[str, str], force: bool) -> dict[str, str]:
    """``{run id: why}`` for the runs that must recompute ignoring stored outputs: all under ``force``, else
    those whose record is current but an output changed since it was recorded."""
    if force:
        return {r.id: "--force" for r in runs}
    why = {}
    for r in runs:
        data = recorded(r, keys[r.id])
        changed = changed_outputs(data) if data is not None else []
        if changed:
            why[r.id] = "output changed since it was recorded: " + ", ".join(changed)
            log.warning("%s: %s; recomputing it", r.id, why[r.id])
    return why


@contextlib.contextmanager
def run_threads(threads: int):
    """The thread settings of one run, in this process's environment while it runs (the kernel inherits them)."""
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CONCEPTSIM_TORCH_THREADS")
    before = {n: os.environ.get(n) for n in names}
    os.environ.update({n: str(threads) for n in names})
    try:
        yield
    finally:
        for n, v in before.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


def select(runs: list[Run], only: dict[str, str | list[str]]) -> list[Run]:
    """Keep runs matching every key (keys: stage, dataset, model; a key given several values matches any
    of them) plus what they depend on."""
    allowed = {"stage", "dataset", "model"}
    bad = set(only) - allowed
    if bad:
        raise ValueError(f"--only accepts keys {sorted(allowed)}, got {sorted(bad)}")
    wanted = {k: {v} if isinstance(v, str) else set(v) for k, v in only.items()}
    by_id = {r.id: r for r in runs}
    for key, values in wanted.items():
        present = {getattr(r, key) for r in runs}
        for value in sorted(values - present):
            raise ValueError(f"--only {key}={value}: no such {key} in the study; accepted: {sorted(v for v in present if v)}")
    chosen = {r.id for r in runs if all(getattr(r, k) in v for k, v in wanted.items())}
    stack = list(chosen)
    while stack:
        for d in by_id[stack.pop()].depends_on:
            if d in by_id and d not in chosen:
                chosen.add(d)
                stack.append(d)
    return [r for r in runs if r.id in chosen]


def execute_run(run: Run, key: str, threads: int | None = RUN_THREADS, fresh_kernel: bool = False,
                force: bool | str = False) -> dict[str, Any]:
    """Execute one run's notebook (in this process's papermill) and record it. Returns the record.

    The notebook runs in this thread's warm kernel (:mod:`conceptsim.run.kernels`), or in a new kernel of its
    own with ``fresh_kernel``, with ``threads`` torch/BLAS threads. ``force`` (true, or the reason) is given
    to the notebook as its ``force`` parameter: the stage recomputes instead of reusing stored outputs."""
    with run_threads(threads or RUN_THREADS):
        return _execute_run(run, key, fresh_kernel, force)


def _execute_run(run: Run, key: str, fresh_kernel: bool, force: bool | str) -> dict[str, Any]:
    import papermill
    from traitlets.config import Config

    from conceptsim.book import reporting
    from conceptsim.run import kernels

    record_path(run).unlink(missing_ok=True)  # executing means not complete: a kill from here on redoes the run
    out = executed_path(run)
    out.parent.mkdir(parents=True, exist_ok=True)
    logfile = log_path(run)
    logfile.parent.mkdir(parents=True, exist_ok=True)
    handler = _RunLog(logfile, mode="w")
    pm_log = logging.getLogger("papermill")
    pm_log.addHandler(handler)
    pm_log.setLevel(logging.INFO)
    t0 = time.time()
    status, error = "ok", None
    tmp = out.with_name(f".tmp-{os.getpid()}-{out.name}")
    # the kernel manager provisions CurveZMQ keys (ipykernel's kernelspec declares curve support):
    # encrypted sockets, and no "running over TCP without encryption" warning from every kernel
    config = Config({"KernelManager": {"transport_encryption": "auto"}})
    engine = {"config": config} if fresh_kernel else {
        "engine_name": kernels.ENGINE, "warm_kernel": kernels.kernel_of_this_thread(notebooks_dir(), config)}
    try:
        papermill.execute_notebook(
            str(notebooks_dir() / run.notebook), str(tmp), parameters={**run.parameters, "force": bool(force)},
            kernel_name="python3", progress_bar=False, log_output=True, cwd=str(notebooks_dir()), **engine,
        )
    except Exception as exc:  # papermill raises PapermillExecutionError with the cell's traceback
        # an OS error that names no file: in a cell (its traceback is in the log), or papermill's own (e.g. disk
        # full while it saves the executed copy)
        doing = (f"a cell of {run.notebook}, writing under {run_folder(run)}" if hasattr(exc, "ename")
                 else f"saving the executed notebook {tmp}")
        status, error = "failed", error_line(exc, unnamed=doing)
        pm_log.exception("run %s failed", run.id)  # the full traceback goes to the run's log
    finally:
        pm_log.removeHandler(handler)
        handler.close()
    if tmp.exists():
        reporting.label_parameter_cells(tmp)
        os.replace(tmp, out)  # a failed notebook keeps its executed copy with the traceback
    record = {
        "id": run.id, "stage": run.stage, "dataset": run.dataset, "model": run.model, "key": key,
        "status": status, "error": error, "parameters": run.parameters, "notebook": run.notebook,
        "executed_notebook": str(out.relative_to(project_root())) if out.is_relative_to(project_root()) else str(out),
        "started": t0, "seconds": round(time.time() - t0, 3), "log": str(logfile),
        "forced": bool(force), "forced_because": force if isinstance(force, str) else None,
        "threads": int(os.environ.get("CONCEPTSIM_TORCH_THREADS") or 0) or None,
    }
    if status == "ok":
        record["outputs"] = output_hashes(run)
    if _study_process is not None and os.getppid() != _study_process:  # a pool worker whose study was stopped
        os._exit(1)  # no record: the run is redone by the next study run
    if status == "ok":
        write_json(record_path(run), record)
    else:
        record_path(run).unlink(missing_ok=True)
    return record


#: ``str()`` of an OS error: ``[Errno 28] No space left on device`` and, when it names one, ``: '/the/file'``
_OS_ERROR = re.compile(r"\[Errno (-?\d+)\] (.+?)(?:: '(.+)')?(?: -> '.+')?")


class _RunLog(logging.FileHandler):
    """A run's log file. A line it cannot write (a full disk) is lost without a traceback on the console: the
    run's error says what failed and where."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


def run_folder(run: Run) -> Path:
    """The results folder a run writes into (a model's for extraction and concepts, else the dataset's)."""
    study = run.parameters["study"]
    return model_results(study, run.dataset, run.model) if run.model else dataset_results(study, run.dataset)


def error_line(exc: BaseException, unnamed: str | None = None) -> str:
    """One line for the console: a notebook's error name and value (its traceback is in the log and the copy).

    An OS error reads ``OSError: PATH: No space left on device (errno 28)``; one that names no file (raised
    outside the library's atomic writers, which name theirs) says what was going on, ``unnamed``, if given."""
    if hasattr(exc, "ename") and hasattr(exc, "evalue"):  # papermill.PapermillExecutionError
        name, value = str(exc.ename), str(exc.evalue)
    else:
        name, value = type(exc).__name__, str(exc)
    found = _OS_ERROR.fullmatch(value.strip())
    if found:
        errno_, message, path = found.groups()
        where = path or f"a file it does not name{f' ({unnamed})' if unnamed else ''}"
        text = f"{name}: {where}: {message} (errno {errno_})"
    else:
        text = f"{name}: {value}"
    lines = text.strip().splitlines()
    return lines[0] + (" ..." if len(lines) > 1 else "") if lines else type(exc).__name__


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
            pool = ProcessPoolExecutor(max_workers=jobs, initializer=_worker_start, initargs=(os.getpid(),))
            try:
                running: dict[Future, str] = {}
                while todo or running:
                    prune()
                    for r in ready()[: jobs - len(running)]:
                        start(r)
                        with _stop_signals_held():
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
