"""Warm kernels: one IPython kernel per worker, reused by the runs it executes, reset between them.

A fresh kernel costs about 5 s per run before the notebook's own work starts (launching the kernel,
then importing torch, pandas, matplotlib and the library), a third of the smoke study's run time. A
worker (a process of ``--jobs``, a Dask worker thread, or the runner's own process with one job) keeps
its kernel and the modules it has imported, and after every run restores what a fresh kernel would
start with:

- the user namespace is emptied and the execution count starts again at 1 (IPython's reset of a new
  session), open figures are closed, the garbage collected (what is left is frozen: ``gc.freeze``);
- the warning filters are those the kernel started with, and warnings already shown are shown again;
- torch's default random generator is back at its start state, autograd is on again, the working
  folder is the notebooks folder.

What a run reads from the process that is not reset (the library's modules, their caches of pinned
input files, the thread settings made once per process) is the same in every run of a study. The run
keys and outputs do not depend on it: ``tests/test_kernels.py`` checks a reused kernel against fresh
ones, and the closing note of #17 compares the default study's results byte for byte.

A kernel that died or failed to reset, or that was started with another environment (the runner sets the
thread counts, a cluster worker the project's folders) or another version of the library's source, is shut
down and the next run starts a new one. ``conceptsim run --fresh-kernels`` gives every run a new kernel, as before.
"""

from __future__ import annotations

import logging
import multiprocessing.util
import os
import threading
from pathlib import Path
from typing import Any

from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine, papermill_engines

log = logging.getLogger("conceptsim.run.kernels")

ENGINE = "conceptsim-warm"

# Run in a new kernel before its first run: what the reset restores.
_SNAPSHOT = """
def __conceptsim_snapshot():
    import sys, warnings, torch
    state = sys.modules.setdefault("__conceptsim_kernel_start__", type(sys)("__conceptsim_kernel_start__"))
    state.filters = list(warnings.filters)
    state.torch_rng = torch.get_rng_state()
    state.cwd = __import__("os").getcwd()
__conceptsim_snapshot()
del __conceptsim_snapshot
"""

# Run after every run; the namespace reset also removes the function itself.
_RESET = """
def __conceptsim_reset():
    import gc, os, sys, warnings
    start = sys.modules["__conceptsim_kernel_start__"]
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")
    get_ipython().reset(new_session=True)  # the namespace, the history and the execution count
    warnings.filters[:] = start.filters
    warnings._filters_mutated()  # forget which warnings were already shown
    import torch
    torch.set_rng_state(start.torch_rng)
    torch.set_grad_enabled(True)
    os.chdir(start.cwd)
    gc.collect()
    # what survives the reset lives on (modules, their caches): out of later collections, which then look only
    # at what the next run makes (a full collection of torch, pandas and matplotlib took 0.3 s per run)
    gc.freeze()
__conceptsim_reset()
"""


class KernelResetError(RuntimeError):
    pass


class WarmKernel:
    """An IPython kernel kept across runs (see the module docstring). Not thread-safe: one per thread."""

    def __init__(self, kernel_name: str = "python3", cwd: Path | str | None = None, config: Any = None):
        self.kernel_name = kernel_name
        self.cwd = str(cwd) if cwd is not None else None
        self.config = config
        self.manager: Any = None
        self.client: Any = None  # one client per kernel: its channels serve every run and reset (no reconnect)
        self.environment: tuple = ()
        self.runs = 0
        self.owner: int | None = None  # the process that started the kernel (a forked child must not use it)

    @staticmethod
    def _started_with() -> tuple:
        """What a kernel keeps from its start: the environment it inherited and the library it imports."""
        from conceptsim.atomic import library_hash

        return tuple(sorted(os.environ.items())), library_hash()

    def ensure(self) -> Any:
        """The kernel manager of a live kernel started with this process's thread settings (started if needed)."""
        from jupyter_client.manager import AsyncKernelManager
        from jupyter_core.utils import run_sync

        if self.manager is not None and self.owner != os.getpid():
            self.manager = self.client = None  # inherited through fork: the parent's kernel, left to the parent
        if self.manager is not None:
            why = ("its environment or the library changed" if self.environment != self._started_with()
                   else None if run_sync(self.manager.is_alive)() else "it is no longer alive")
            if why:
                log.info("replacing the kernel: %s", why)
                self.shutdown()
        if self.manager is None:
            km = AsyncKernelManager(kernel_name=self.kernel_name, **({"config": self.config} if self.config else {}))
            run_sync(km.start_kernel)(cwd=self.cwd, extra_arguments=["--HistoryManager.hist_file=:memory:"])
            self.manager, self.environment, self.runs, self.owner = km, self._started_with(), 0, os.getpid()
            _register(self)
            try:
                self.client = km.client()
                self.client.start_channels()
                run_sync(self.client.wait_for_ready)(timeout=120)
                self.client.allow_stdin = False
                self.run_code(_SNAPSHOT)
            except Exception:
                self.shutdown()
                raise
        return self.manager

    def run_code(self, code: str, timeout: float = 120) -> None:
        """Execute ``code`` silently in the kernel; raises :class:`KernelResetError` unless it succeeds."""
        from jupyter_core.utils import run_sync

        reply = run_sync(self.client.execute_interactive)(code, silent=True, store_history=False, timeout=timeout,
                                                          output_hook=lambda msg: None)
        content = reply.get("content", {})
        if content.get("status") != "ok":
            raise KernelResetError(f"{content.get('ename', 'error')}: {content.get('evalue', content)}")

    def finish_run(self) -> None:
        """Reset the kernel after a run; a kernel that cannot be reset is shut down (the next run starts a new one)."""
        if self.manager is None:
            return
        self.runs += 1
        try:
            self.run_code(_RESET)
        except Exception as exc:  # dead kernel, timeout, or the reset itself failed
            log.warning("kernel not reusable after a run (%s); the next run starts a new one", exc)
            self.shutdown()

    def kill(self) -> None:
        """Kill the kernel's process group at once (no shutdown handshake: the kernel may be busy)."""
        import signal

        provisioner = getattr(self.manager, "provisioner", None)
        if provisioner is not None and self.owner == os.getpid():
            pid, pgid = getattr(provisioner, "pid", None), getattr(provisioner, "pgid", None)
            try:
                if pgid and pgid != os.getpgid(0):
                    os.killpg(pgid, signal.SIGKILL)
                elif pid:
                    os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.client is not None and self.owner == os.getpid():
            self.client.stop_channels()
        self.manager = self.client = None

    def shutdown(self) -> None:
        from jupyter_core.utils import run_sync

        km, self.manager = self.manager, None
        kc, self.client = self.client, None
        if km is None or self.owner != os.getpid():
            return
        if kc is not None:
            kc.stop_channels()
        try:
            run_sync(km.shutdown_kernel)(now=True)
        except Exception as exc:  # already gone
            log.debug("kernel shutdown: %s", exc)


class WarmKernelEngine(NBClientEngine):
    """Papermill's nbclient engine on a :class:`WarmKernel` (the ``warm_kernel`` keyword) instead of a new kernel."""

    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, stdout_file=None, stderr_file=None,
                                 start_timeout=60, execution_timeout=None, warm_kernel: WarmKernel | None = None,
                                 **kwargs):
        if warm_kernel is None:
            raise TypeError(f"the {ENGINE!r} papermill engine needs warm_kernel=WarmKernel(...)")
        kwargs.pop("input_path", None)
        kwargs.pop("config", None)  # kernel manager settings: given to the WarmKernel when it is made
        timeout = execution_timeout or kwargs.pop("timeout", None)
        kwargs.pop("startup_timeout", None)
        client = PapermillNotebookClient(
            nb_man, km=warm_kernel.ensure(), kernel_name=kernel_name, log=logging.getLogger("papermill"),
            log_output=log_output, stdout_file=stdout_file, stderr_file=stderr_file, timeout=timeout,
            startup_timeout=start_timeout, **kwargs)
        client.kc = warm_kernel.client  # connected and ready: nbclient starts no client of its own
        # papermill rewrites the whole executed copy before and after every cell (dozens of writes of a
        # notebook that grows to megabytes of figures); the runner's copy is a temporary that nothing reads
        # until the run ends, so it is written once, when the run ends (notebook_complete, then papermill's
        # final write; a failing cell's copy by papermill's error handling)
        nb_man.save = _no_save
        try:
            result = client.execute()
        except Exception:
            client.kc = None  # the channels stay with the kernel
            warm_kernel.finish_run()
            raise
        except BaseException:  # the study is being stopped (Ctrl-C): the kernel is killed, not reset
            client.kc = None
            warm_kernel.kill()
            raise
        finally:
            del nb_man.save  # the manager's own save again, for notebook_complete
        client.kc = None
        warm_kernel.finish_run()
        return result


def _no_save(**kwargs: Any) -> None:
    """A papermill execution manager's ``save`` while a warm kernel runs the notebook's cells."""


papermill_engines.register(ENGINE, WarmKernelEngine)

_local = threading.local()
_all: list[WarmKernel] = []
_all_lock = threading.Lock()
_finalizer_pid: int | None = None


def _register(kernel: WarmKernel) -> None:
    """Remember a started kernel for :func:`shutdown_all`, which runs when this process ends.

    multiprocessing runs finalizers with an exit priority when a pool worker ends (a worker skips atexit) and,
    through atexit, when the main process ends; a forked worker starts with none, so each process registers
    its own."""
    global _finalizer_pid
    with _all_lock:
        if kernel not in _all:
            _all.append(kernel)
        if _finalizer_pid != os.getpid():
            multiprocessing.util.Finalize(None, shutdown_all, exitpriority=10)
            _finalizer_pid = os.getpid()


def kernel_of_this_thread(cwd: Path | str, config: Any = None) -> WarmKernel:
    """This thread's warm kernel (made on first use; all are shut down when the process exits)."""
    kernel = getattr(_local, "kernel", None)
    if kernel is None or kernel.cwd != str(cwd):
        if kernel is not None:
            kernel.shutdown()
        kernel = _local.kernel = WarmKernel(cwd=cwd, config=config)
    return kernel


def shutdown_all() -> None:
    """Shut down every warm kernel of this process (also run at exit, in pool workers too)."""
    with _all_lock:
        kernels = list(_all)
        _all.clear()
    for k in kernels:
        k.shutdown()


def kill_all_now() -> None:
    """Kill every warm kernel of this process at once (for a worker that is being stopped)."""
    with _all_lock:
        kernels = list(_all)
    for k in kernels:
        k.kill()
