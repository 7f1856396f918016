"""Executing one run: its notebook in papermill, in the worker's warm kernel, with fixed threads; its log,
its record and the one-line error the console shows.

Threads. Every run gets :data:`RUN_THREADS` torch/BLAS threads, whatever ``--jobs`` or ``--cluster``:
float reductions depend on the thread count, so the same study gives byte-identical results either way.

Workers. A run executes in the study process (one job) or in a worker process (``--jobs``, a Dask worker);
a worker whose study is gone writes no record (:func:`worker_start`, :func:`watch_parent`), so the next
study run redoes the run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

from conceptsim.atomic import write_json
from conceptsim.paths import dataset_results, executed_path, logs_dir, model_results, project_root
from conceptsim.run.keys import force_marker_path, notebooks_dir, output_hashes, record_path, run_slug
from conceptsim.run.study import Run

_study_process: int | None = None  # in a pool worker: the process id of the study that started it


# torch and BLAS threads of every run, independent of --jobs and of the machine's cores (see the module docstring)
RUN_THREADS = 1


def log_path(run: Run) -> Path:
    return logs_dir(run.parameters["study"]) / f"{run_slug(run)}.log"


def worker_start(study_pid: int) -> None:
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
def stop_signals_held():
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

    if force:  # written before the record goes: a forced run killed or failed from here on is forced again
        write_json(force_marker_path(run), {"id": run.id, "forced_because": force if isinstance(force, str) else "forced",
                                           "started": time.time(), "pid": os.getpid()})
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
        force_marker_path(run).unlink(missing_ok=True)  # complete: the next study run forces it no more
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
