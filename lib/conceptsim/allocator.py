"""Keep freed memory in the process instead of handing it back to the OS after every large tensor.

glibc serves allocations above a threshold (at most 32 MB) with fresh ``mmap`` regions and unmaps them
on free, so a forward pass whose feature maps are tens of MB (CenterNet at 512 x 512, batch 8) pays page
faults and kernel zeroing on every layer, every batch, as much system time as compute.
:func:`keep_freed_memory` turns ``mmap`` off for the heap allocator and raises the trim threshold to
1 GiB, so freed blocks are reused: the same pass then takes little system time and about half the wall
time, with the same results (numbers: the book's Performance page, "Design measurements"). Peak memory is unchanged (a block
is reused, not added); the process keeps up to 1 GiB of freed heap instead of returning it at once.

Only glibc on Linux is affected; elsewhere, or with ``CONCEPTSIM_KEEP_FREED_MEMORY=0``, nothing changes.

:func:`release_freed_memory` hands the kept memory back at a phase boundary of a stage (``malloc_trim``):
every thread's heap keeps its own high-water mark, so a stage whose passes run in several threads would
otherwise end with the sum of those marks plus what the next phase adds on top of them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_applied: bool | None = None
_libc = None


def keep_freed_memory() -> bool:
    """Apply the setting once per process; returns whether it is in effect."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or os.environ.get("CONCEPTSIM_KEEP_FREED_MEMORY", "1") == "0":
        return False
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    return _applied


def _glibc():
    """glibc's handle on Linux, else None."""
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                if hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim"):
                    _libc = lib
            except OSError:  # not glibc (e.g. musl): leave the allocator alone
                pass
    return _libc or None


def release_freed_memory() -> bool:
    """Return the freed memory of every thread's heap to the OS (glibc's ``malloc_trim(0)``), once, now.

    For phase boundaries: the next phase's allocations then start from the live data, not from the freed
    blocks of the last one scattered over several heaps. Returns whether glibc released anything; elsewhere
    a no-op returning False.
    """
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False

