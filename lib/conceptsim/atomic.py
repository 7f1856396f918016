"""Atomic writes and content hashes: an interrupted run never leaves a half-written result behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it onto ``path`` (file or directory).

    On error the temporary is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if path.is_dir() and not path.is_symlink():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        _remove(old)
    else:
        os.replace(tmp, path)


@contextlib.contextmanager
def exclusive(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the block: parallel runs build a shared result once.

    The lock is ``.<name>.lock`` beside ``path`` (an advisory ``flock``, released when the holder exits, even
    by a crash); whoever waited checks for the result again before building it. Where ``fcntl`` is missing
    (Windows) the block runs unlocked and :func:`atomic_path` alone keeps the result whole.
    """
    path = Path(path)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_json_default).encode()).hexdigest()


def library_hash() -> str:
    """Hash of the source of every module of this package: results computed by other code are stale."""
    root = Path(__file__).resolve().parent
    files = sorted(root.rglob("*.py"))
    return sha256_json([(str(p.relative_to(root)), p.read_text()) for p in files])


def stage_identity(**what: Any) -> str:
    """Identity of a stage's results: a hash of what determines them and of the library's code."""
    return sha256_json({"inputs": what, "library": library_hash()})


def reusable_outputs(record: Path, identity: str) -> dict[str, Path] | None:
    """The outputs listed in a stage's JSON ``record`` if it was written with ``identity`` and every one of
    them still exists; otherwise None (absent, unreadable or stale record, or an output removed since).

    A stage writes its record last (``{"identity": ..., "outputs": {name: path relative to the record's
    folder}, ...}``), so a record's presence means the outputs it lists were complete.
    """
    try:
        data = json.loads(Path(record).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("identity") != identity or not isinstance(data.get("outputs"), dict):
        return None
    outputs = {str(k): Path(record).parent / str(v) for k, v in data["outputs"].items()}
    return outputs if all(p.exists() for p in outputs.values()) else None


def relative_outputs(paths: dict[str, Path], folder: Path) -> dict[str, str]:
    """``paths`` relative to ``folder`` (the form :func:`reusable_outputs` reads)."""
    return {k: os.path.relpath(v, folder) for k, v in paths.items()}


# temporary names written by this package, each carrying the writer's process id:
# ``.<name>.tmp-<pid>`` / ``.<name>.old-<pid>`` (atomic_path), ``.tmp-<pid>-<name>`` (executed notebooks),
# ``.write-test-<pid>`` (writability probes)
_DEBRIS = re.compile(r"^\..+\.(?:tmp|old)-(?P<a>\d+)$|^\.tmp-(?P<b>\d+)-.+$|^\.write-test-(?P<c>\d+)$")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (one we may not signal counts as running)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def debris_pid(name: str) -> int | None:
    """The writer's process id if ``name`` is one of this package's temporary names, else None.

    An ``atomic_path`` temporary's target must look like what the package writes: a file name with an
    extension, a built dataset's folder (``<dataset>-<12 hex>``) or a fetched archive's ``unpacked`` folder; a
    user's ``.backup.tmp-99999`` is not debris."""
    m = _DEBRIS.match(name)
    if m and m.group("a"):
        target = re.sub(r"(\.(?:tmp|old)-\d+)+$", "", name)[1:]
        if "." not in target and target != "unpacked" and re.fullmatch(r"[a-z0-9-]+-[0-9a-f]{12}", target) is None:
            return None
    return int(m.group("a") or m.group("b") or m.group("c")) if m else None


def remove_debris(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders under ``folder`` whose writing process is gone.

    Only names of :data:`_DEBRIS`'s forms are touched, and only when their process id is not running
    (a live writer's temporaries are left alone). Zarr stores are not descended into. Returns what was removed.
    """
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in list(dirnames) + filenames:
            pid = debris_pid(name)
            if pid is None or pid_alive(pid):
                continue
            path = Path(dirpath) / name
            try:
                _remove(path)
            except FileNotFoundError:  # removed meanwhile by another cleaner
                continue
            removed.append(path)
            if name in dirnames:
                dirnames.remove(name)
        dirnames[:] = [d for d in dirnames if not d.endswith(".zarr") and debris_pid(d) is None]
    return removed
