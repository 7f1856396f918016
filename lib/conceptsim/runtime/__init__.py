"""Process set-up, made explicitly by whoever runs the pipeline: importing the library changes nothing.

:func:`setup` prepares a process that runs the pipeline. It is called by the command line
(:func:`conceptsim.cli.main`), by the stage notebooks' first code cell (so every papermill kernel gets it)
and by the test suite's ``conftest.py``; a user's own notebook that only reads results or computes a
measure does not need it. It

- points tool config and cache folders (matplotlib, Jupyter, IPython, torch, ultralytics) into the
  project's cache and keeps ultralytics offline (:func:`conceptsim.paths.configure_environment`; values
  already set win);
- cuts the network (:mod:`conceptsim.netguard`) when ``CONCEPTSIM_FORBID_NETWORK=1`` (the test suite's
  switch, inherited by the kernels the tests start);
- tunes the process (:func:`configure_process`): freed memory is kept for reuse
  (:func:`conceptsim.allocator.keep_freed_memory`); torch uses ``CONCEPTSIM_TORCH_THREADS`` threads when
  that is set to a positive number (the runner sets it from ``--jobs`` so parallel runs do not oversubscribe
  the cores), else its own default; BLAS (numpy, scikit-learn) is held to one thread: the stages call it on
  many small problems, where extra BLAS threads only wait for each other;
- prints the library's notes as plain output lines (:func:`notes_to_stdout`);
- in a Jupyter kernel, shows figures as PNGs that carry their smallest font size
  (:func:`figures_carry_font_floor`), which the book's browser test reads.

Library entry points that are also called directly (:func:`conceptsim.extraction.extract.extract`, the
concept stage) apply :func:`configure_process` themselves when they run. Every step happens once per
process; calling :func:`setup` again does nothing more. ``tests/test_runtime.py`` checks that importing
the library leaves ``os.environ``, the thread counts and the allocator as they were.
"""

from __future__ import annotations

import logging
import os
import sys

_configured = False


def torch_threads_from_environment() -> int:
    """``CONCEPTSIM_TORCH_THREADS`` as a number (0 when unset or empty)."""
    return int(os.environ.get("CONCEPTSIM_TORCH_THREADS", "0") or 0)


def notes_to_stdout() -> None:
    """Show the library's notes (``conceptsim.*`` log records that reach its logger, warnings by default: e.g. a concept excluded
    for lack of positives) as plain output lines: in a notebook they are part of the page, not a red stderr
    stream that reads as a failure. Idempotent; a handler the user configured is kept."""
    logger = logging.getLogger("conceptsim")
    if not any(getattr(h, "conceptsim_notes", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("note: %(message)s"))
        handler.conceptsim_notes = True
        logger.addHandler(handler)  # with a handler in the chain, logging's stderr fallback stays silent


def configure_process() -> None:
    """Keep freed memory, set torch's threads from the environment and hold BLAS to one thread, once per process."""
    global _configured
    if _configured:
        return
    import torch
    from threadpoolctl import threadpool_limits

    from conceptsim.allocator import keep_freed_memory

    keep_freed_memory()
    n = torch_threads_from_environment()
    if n > 0:
        torch.set_num_threads(n)
    threadpool_limits(limits=1, user_api="blas")
    _configured = True


def fork_pool(processes: int):
    """A ``fork`` process pool whose workers leave interrupts to the parent.

    A forked worker inherits the parent's signal handlers. The command line turns SIGTERM into
    ``KeyboardInterrupt`` (:func:`conceptsim.cli.main`), and a pool used as a context manager ends by sending
    SIGTERM to its workers, so every worker printed a ``KeyboardInterrupt`` traceback at the end of a
    successful dataset build. The workers here end on SIGTERM without one (the default action) and ignore
    SIGINT: on Ctrl-C, which reaches the whole process group, the parent stops and terminates them.
    """
    import multiprocessing

    return multiprocessing.get_context("fork").Pool(int(processes), initializer=_worker_signals)


def _worker_signals() -> None:
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def figures_carry_font_floor() -> None:
    """In a Jupyter kernel, show matplotlib figures as PNGs that carry their smallest font size
    (:func:`conceptsim.atomic.figure_png`), so the built book can be checked for text too small to read.
    Outside a kernel it does nothing."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency of the notebooks
        return
    shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel"):
        return
    from matplotlib.figure import Figure

    from conceptsim.atomic import figure_png

    shell.run_line_magic("matplotlib", "inline")  # the inline backend registers its own formatter now, not later
    shell.display_formatter.formatters["image/png"].for_type(
        Figure, lambda fig: figure_png(fig, dpi=fig.dpi, bbox_inches="tight"))


def setup() -> None:
    """Prepare this process to run the pipeline (folders, network guard, threads, allocator, notes).

    See the module docstring for what it changes. Call it once, first, in a process that runs stages:
    the command line and the stage notebooks do. Calling it again does nothing more.
    """
    from conceptsim.paths import configure_environment

    configure_environment()
    if os.environ.get("CONCEPTSIM_FORBID_NETWORK") == "1":
        from conceptsim import netguard

        netguard.install()
    configure_process()
    notes_to_stdout()
    figures_carry_font_floor()
