"""One ``conceptsim run`` per study at a time: a lock file in the study's results folder."""

from __future__ import annotations

import contextlib
import os

from conceptsim.paths import results_dir


class StudyBusy(RuntimeError):
    """Another process runs the same study (same results folder)."""


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
