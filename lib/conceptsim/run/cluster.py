"""A study's runs as tasks of a Dask cluster: ``conceptsim run STUDY.yml --cluster local:N | tcp://HOST:PORT``.

Each run (one papermill execution, :func:`conceptsim.run.execution.execute_run`) is one Dask task; the runs it
depends on are its Dask dependencies. Dask does the scheduling, the placement (extraction and concepts ask
for ``resources={"GPU": 1}`` when the study's device is ``cuda``), the retries of a run whose worker died
(at most ``distributed.scheduler.allowed-failures`` times, then the run fails with ``KilledWorker``) and
the skipping of the dependents of a failed run (a failed run raises :class:`RunFailed`, which Dask hands to
its dependents). The records, the resumability and the failure report are the runner's, as with ``--jobs``.

Workers need the project checkout, the results folder and the cache at the client's paths (a shared
filesystem); each task runs with the client's ``CONCEPTSIM_*`` settings. The client writes a check file
into the results folder and every worker, at the start and before each run, must read it back; a worker
that cannot fails with a message naming itself and the folder. A recomputed task (Dask recomputes a
finished task whose small result was held by a worker that died) reuses the record its run wrote in this
session instead of executing again. This module is imported only by ``--cluster``: ``--jobs`` needs no Dask.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from conceptsim.atomic import write_text
from conceptsim.paths import cache_dir, datasets_dir, project_root, results_dir
from conceptsim.run.execution import RUN_THREADS, error_line, execute_run, log_path, stop_worker, watch_parent
from conceptsim.run.keys import is_complete, record_path
from conceptsim.run.study import Run

log = logging.getLogger("conceptsim.run.cluster")

CONNECT_TIMEOUT_S = 5  # an unreachable scheduler fails the command after this long
CHECK_WAIT_S = 5  # how long a worker polls for the client's check file (shared filesystems cache lookups)
GPU_STAGES = ("extract", "concepts")


class ClusterError(RuntimeError):
    """The cluster cannot run the study: bad address, unreachable scheduler, no suitable worker."""


class RunFailed(Exception):
    """A run failed on a worker; carries its record (the failure report reads it, Dask passes it on to the
    run's dependents, which therefore do not execute)."""

    def __init__(self, record: dict[str, Any]):
        super().__init__(record)

    @property
    def record(self) -> dict[str, Any]:
        return self.args[0]

    def __str__(self) -> str:
        return f"{self.record['id']}: {self.record['error']}"


def needs_gpu(run: Run) -> bool:
    """Extraction and concepts of a study whose device is ``cuda`` ask their worker for a GPU."""
    device = run.parameters.get("device") or run.parameters.get("extraction_options", {}).get("device", "cpu")
    return run.stage in GPU_STAGES and str(device).startswith("cuda")


def usable_cpus() -> int:
    """CPUs this process may use (its affinity: a batch job's share, not the whole node)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def failure_record(run: Run, key: str, error: str) -> dict[str, Any]:
    """The record of a run that failed outside its notebook (no executed copy; the log of its last try)."""
    return {
        "id": run.id, "stage": run.stage, "dataset": run.dataset, "model": run.model, "key": key,
        "status": "failed", "error": error, "parameters": run.parameters, "notebook": run.notebook,
        "executed_notebook": None, "started": None, "seconds": 0.0,
        "log": str(log_path(run)) if log_path(run).exists() else None,
    }


def client_settings() -> dict[str, str]:
    """The client's ``CONCEPTSIM_*`` environment with its project, results, cache and data folders resolved."""
    env = {k: v for k, v in os.environ.items() if k.startswith("CONCEPTSIM_")}
    env.update(CONCEPTSIM_ROOT=str(project_root()), CONCEPTSIM_RESULTS=str(results_dir()),
               CONCEPTSIM_CACHE=str(cache_dir()), CONCEPTSIM_DATA=str(datasets_dir()))
    return env


# ----------------------------------------------------------------------------- on the workers

def worker_name() -> str:
    from distributed import get_worker

    try:
        return get_worker().address
    except ValueError:  # not in a worker (tests calling the task function directly)
        return f"pid {os.getpid()}"


def sees_shared_folders(settings: dict[str, str], check_file: str, token: str) -> str | None:
    """None when this process sees the client's project checkout and results folder, else why not."""
    root = Path(settings["CONCEPTSIM_ROOT"])
    if not (root / "notebooks").is_dir():
        return f"sees no project checkout at {root} (no notebooks/ folder there)"
    deadline = time.monotonic() + CHECK_WAIT_S
    while True:
        try:
            if Path(check_file).read_text() == token:
                return None
        except OSError:
            pass
        if time.monotonic() > deadline:
            return (f"cannot see the results folder {settings['CONCEPTSIM_RESULTS']}: "
                    f"the check file {check_file} the client wrote there is missing or different. Workers "
                    f"need the project checkout and the results folder on a shared filesystem, at the same path")
        time.sleep(0.5)


def dask_setup(worker: Any = None) -> None:
    """Preload of ``--cluster local:N``'s worker processes (Dask calls it as each starts, in its main thread):
    Ctrl-C is the study's to handle (no traceback from every worker, which shares the terminal's process
    group); SIGTERM (the study stopping it) kills the worker's kernels and ends it at once, without a record."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, stop_worker)
    except ValueError:  # not the main thread: Dask's own handling remains
        log.debug("worker %s: signal handlers not installed (not the main thread)", worker)


def quiet_distributed_logs() -> None:
    """Hold Dask's ``distributed`` loggers to errors in this process from now on: the study is stopping, and
    the connections its ending workers drop are expected.

    A ``LocalCluster`` silences only its handlers' levels, and restores them as it closes; a connection that
    closed after that logged an INFO message with a traceback (``distributed.batched``: "Batched Comm
    Closed") beside the command line's one line. A logger level holds whatever the handlers' levels are.
    """
    logging.getLogger("distributed").setLevel(logging.ERROR)


def stop_runs() -> None:
    """Kill this worker's kernels: its running notebooks fail at once and write no record (the study was stopped)."""
    from conceptsim.run import kernels

    kernels.kill_all_now()


def report_started(topic: str | None, run: Run) -> None:
    """Tell the client's progress display that ``run`` starts on this worker (a Dask event on ``topic``)."""
    if not topic:
        return
    from distributed import get_worker

    try:
        get_worker().log_event(topic, [run.id, worker_name()])
    except ValueError:  # not in a worker (tests calling the task function directly)
        pass


def run_task(run: Run, key: str, force: bool | str, settings: dict[str, str], check: tuple[str, str],
             since: float, fresh_kernel: bool, *dependencies: dict, started_topic: str | None = None) -> dict[str, Any]:
    """One run as a Dask task (``dependencies``: the records of the runs it depends on, there only to order
    it), in the worker thread's warm kernel unless ``fresh_kernel``, with the runner's fixed thread count
    (:data:`conceptsim.run.execution.RUN_THREADS`, as with ``--jobs``); ``force``: recompute ignoring stored outputs.
    Returns the run's record; a failed run raises :class:`RunFailed`. When it executes, it reports its start
    and worker on ``started_topic``."""
    os.environ.update(settings)  # the kernel papermill starts inherits them
    watch_parent()  # a worker whose parent (its nanny; the study itself with local:N) died writes no record
    problem = sees_shared_folders(settings, *check)
    if problem:
        raise RunFailed(failure_record(run, key, f"worker {worker_name()} {problem}"))
    if is_complete(run, key):  # recomputed after its worker died: this session already ran it
        record = json.loads(record_path(run).read_text())
        if record.get("started", 0) >= since:
            return record
    report_started(started_topic, run)
    try:
        record = execute_run(run, key, RUN_THREADS, fresh_kernel=fresh_kernel, force=force)
    except Exception as exc:  # outside the notebook (its own errors are in the record)
        record = failure_record(run, key, error_line(exc))
    if record["status"] != "ok":
        raise RunFailed(record)
    return record


# ----------------------------------------------------------------------------- on the client
def local_workers(address: str) -> int:
    """N of ``local:N``, 0 for a scheduler address (``[PROTOCOL://]HOST:PORT``); anything else is a
    :class:`ClusterError` (checked before the study's inputs, so a typo never waits for a connection)."""
    address = address.strip()
    expected = "expected local:N with N >= 1 workers, or a scheduler address such as tcp://HOST:8786"
    if address.startswith("local"):
        n = address.partition(":")[2]
        if not address.startswith("local:") or not n.isdigit() or int(n) < 1:
            raise ClusterError(f"--cluster {address!r}: {expected}")
        return int(n)
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ClusterError(f"--cluster {address!r}: {expected}")
    return 0


class DaskExecutor:
    """Runs a study's runs on a Dask cluster; ``address`` is ``local:N`` (a ``LocalCluster`` of N process
    workers on this machine) or a scheduler address (``tcp://HOST:8786``). Each worker thread keeps a warm
    kernel (:mod:`conceptsim.run.kernels`) unless ``fresh_kernels``."""

    def __init__(self, address: str, fresh_kernels: bool = False):
        self.address = address.strip()
        self.fresh_kernels = fresh_kernels
        self.local_workers = 0
        self.cluster: Any = None  # the LocalCluster of local:N while it runs
        self.local_workers = local_workers(self.address)

    def execute(self, runs: list[Run], keys: dict[str, str], finish: Callable[[dict], None],
                skip: Callable[[str], None], priority: dict[str, float] | None = None, progress: Any = None,
                forced: dict[str, str] | None = None) -> None:
        """Submit ``runs`` (dependencies outside them are complete) and report each as it ends:
        ``finish(record)`` for an executed run, ok or failed, ``skip(run_id)`` for a dependent of a failed run.
        Workers take the ready run of highest ``priority`` first (Dask's task priority). ``progress`` (a
        :class:`conceptsim.run.progress.StudyProgress`) hears when each run starts and on which worker (a Dask
        event its task logs), and how many runs the cluster's workers execute at once. The runs in ``forced``
        (run id: why) recompute ignoring their stored outputs."""
        if not runs:
            return
        since = time.time()
        with ExitStack() as stack:
            client = self._connect(stack)
            check = self._write_check_file(runs[0].parameters["study"])
            settings = client_settings()
            self._check_workers(client, runs, settings, check)
            token = uuid.uuid4().hex[:8]
            topic = None
            if progress is not None:
                topic = f"conceptsim-started-{token}"
                client.subscribe_topic(topic, lambda event: progress.started(*event[1]))
                slots = sum(w.get("nthreads", 1) for w in client.scheduler_info(n_workers=-1)["workers"].values())
                progress.set_workers(slots or 1)
            futures: dict[str, Any] = {}
            for run in runs:  # topological: a run's dependencies are submitted before it
                deps = [futures[d] for d in run.depends_on if d in futures]
                futures[run.id] = client.submit(
                    run_task, run, keys[run.id], (forced or {}).get(run.id, False), settings, check, since,
                    self.fresh_kernels, *deps,
                    key=f"{run.stage}-{token}-{run.id}", resources={"GPU": 1} if needs_gpu(run) else None,
                    priority=round((priority or {}).get(run.id, 0.0)), started_topic=topic,
                )
            try:
                self._collect(futures, runs, keys, finish, skip)
            except KeyboardInterrupt:  # Ctrl-C, or SIGTERM as the CLI turns it into one: stop the runs now
                quiet_distributed_logs()
                self._stop(client, futures)
                raise

    def _stop(self, client: Any, futures: dict[str, Any]) -> None:
        """End the study's runs on the cluster: a local cluster's workers are ended (each kills its kernels
        first: :func:`dask_setup`); a remote cluster's workers kill their kernels, so that the running
        notebooks fail and write no record, and the runs not started are cancelled."""
        for nanny in list(getattr(self.cluster, "workers", {}).values()):
            try:
                nanny.close_gracefully()  # the nanny must not restart the worker it loses now
                pid = nanny.pid
                if pid:
                    os.kill(pid, signal.SIGTERM)
            except (OSError, AttributeError) as exc:
                log.debug("stopping a worker: %s", exc)
        if self.cluster is None:
            try:
                client.run(stop_runs, wait=False)
                client.cancel(list(futures.values()), force=True)
            except Exception as exc:  # the study is stopping: a cluster that does not answer is left to its own
                log.debug("stopping the runs on %s: %s", self.address, exc)

    @staticmethod
    def _collect(futures: dict[str, Any], runs: list[Run], keys: dict[str, str], finish: Callable[[dict], None],
                 skip: Callable[[str], None]) -> None:
        """Report each run as its task ends (see :meth:`execute`)."""
        from distributed import as_completed
        from distributed.scheduler import KilledWorker

        by_key = {f.key: rid for rid, f in futures.items()}
        runs_by_id = {r.id: r for r in runs}
        for fut in as_completed(list(futures.values())):
            rid = by_key[fut.key]
            if fut.status == "finished":
                finish(fut.result())
                continue
            if fut.status == "cancelled":
                finish(failure_record(runs_by_id[rid], keys[rid], "cancelled on the cluster"))
                continue
            exc = fut.exception()
            if isinstance(exc, RunFailed) and exc.record["id"] == rid:
                finish(exc.record)
            elif isinstance(exc, RunFailed) or (isinstance(exc, KilledWorker) and exc.task != fut.key):
                skip(rid)  # a run it depends on failed
            elif isinstance(exc, KilledWorker):
                finish(failure_record(runs_by_id[rid], keys[rid], (
                    f"its worker died each of the {exc.allowed_failures + 1} times it ran (Dask's "
                    f"distributed.scheduler.allowed-failures); last worker "
                    f"{getattr(exc.last_worker, 'address', exc.last_worker)}")))
            else:
                finish(failure_record(runs_by_id[rid], keys[rid], f"{type(exc).__name__}: {exc}"))

    def _connect(self, stack: ExitStack) -> Any:
        from distributed import Client, LocalCluster

        if self.local_workers:
            # the workers start with Ctrl-C ignored (inherited; their preload keeps it so for a restarted one)
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                self.cluster = stack.enter_context(LocalCluster(
                    n_workers=self.local_workers, threads_per_worker=1, processes=True, memory_limit=0,
                    resources={"GPU": 1}, dashboard_address=":0", silence_logs=logging.ERROR,
                    preload=["conceptsim.run.cluster"],
                ))
            finally:
                signal.signal(signal.SIGINT, previous)
            return stack.enter_context(Client(self.cluster))
        try:
            client = stack.enter_context(Client(self.address, timeout=CONNECT_TIMEOUT_S))
        except (OSError, ValueError) as exc:
            raise ClusterError(
                f"--cluster {self.address}: cannot reach a Dask scheduler there within {CONNECT_TIMEOUT_S} s "
                f"({type(exc).__name__}: {exc}). Start one with `dask scheduler` and workers with "
                f"`dask worker {self.address}`, or use --cluster local:N") from exc
        if not client.scheduler_info(n_workers=-1)["workers"]:  # e.g. batch jobs still queued
            log.warning("--cluster %s: no worker has joined the scheduler yet; the runs wait for one "
                        "(each worker is checked before its first run)", self.address)
        return client

    @staticmethod
    def _write_check_file(study: str) -> tuple[str, str]:
        """A fresh token in ``results/<study>/.cluster-check`` (a fixed name: a new name could hide behind
        a shared filesystem's cached lookups); workers must read it back."""
        path = results_dir() / study / ".cluster-check"
        token = uuid.uuid4().hex
        write_text(path, token)
        return str(path), token

    def _check_workers(self, client: Any, runs: list[Run], settings: dict[str, str],
                       check: tuple[str, str]) -> None:
        problems = [f"worker {w} {p}" for w, p in client.run(sees_shared_folders, settings, *check).items() if p]
        if problems:
            raise ClusterError(f"--cluster {self.address}: " + "; ".join(problems))
        gpu_runs = [r.id for r in runs if needs_gpu(r)]
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
        if gpu_runs and workers and not any(w.get("resources", {}).get("GPU") for w in workers):
            raise ClusterError(
                f"--cluster {self.address}: {len(gpu_runs)} run(s) need a GPU (the study's device is cuda), "
                f"e.g. {gpu_runs[0]}, but no worker offers one; start GPU workers with "
                f"`dask worker {self.address} --nthreads 1 --resources GPU=1`")
