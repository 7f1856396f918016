"""Process tuning, applied once per process: the allocator, torch's and BLAS's threads.

The stages run inside notebook kernels (one process per run, several runs at once with ``--jobs``) and
inside benchmark and test processes. :func:`configure_process` makes the same settings in all of them:

- freed memory is kept for reuse (:func:`conceptsim.allocator.keep_freed_memory`);
- torch uses ``CONCEPTSIM_TORCH_THREADS`` threads when that is set to a positive number (the runner sets
  it from ``--jobs`` so parallel runs do not oversubscribe the cores), else its own default;
- BLAS (numpy, scikit-learn) is held to one thread: the stages call it on many small problems, where
  extra BLAS threads only wait for each other.

The notebooks get it by importing :mod:`conceptsim.pipeline`; library entry points that are also called
directly (:func:`conceptsim.extraction.extract.extract`) call it themselves. Calling it again does nothing.
"""

from __future__ import annotations

import logging
import os
import sys

import torch
from threadpoolctl import threadpool_limits

from conceptsim.allocator import keep_freed_memory

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
    """Apply the settings of the module docstring, once per process."""
    global _configured
    if _configured:
        return
    keep_freed_memory()
    n = torch_threads_from_environment()
    if n > 0:
        torch.set_num_threads(n)
    threadpool_limits(limits=1, user_api="blas")
    _configured = True
