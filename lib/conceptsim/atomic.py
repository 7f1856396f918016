"""Atomic writes and content hashes: an interrupted run never leaves a half-written result behind."""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import re
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it onto ``path`` (file or directory).

    On error the temporary is removed and ``path`` is left as it was. An OS error that names no file (a
    write or flush into a full disk: ``[Errno 28] No space left on device``) is raised again naming ``path``.
    Zarr writes still under way are waited for first (:func:`settle_zarr_writes`): they would re-create the
    temporary folder after its removal.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
    except OSError as exc:
        settle_zarr_writes()
        _remove(tmp)
        if exc.errno is None or exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path)) from exc
    except BaseException:
        settle_zarr_writes()
        _remove(tmp)
        raise
    if path.is_dir() and not path.is_symlink():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        _remove(old)
    else:
        os.replace(tmp, path)


def settle_zarr_writes(timeout: float = 120.0) -> None:
    """Wait until zarr's IO event loop has no task left, when this process has started it.

    A zarr write of several chunks runs them concurrently (``asyncio.gather`` in zarr's IO thread); when one
    fails (a full disk) the error reaches the caller at once while the others go on writing, and a chunk
    write makes its parent folders. Removing a store's temporary folder before they end leaves it re-created,
    behind a process that has stopped using it.
    """
    import sys

    zsync = sys.modules.get("zarr.core.sync")
    loop = getattr(zsync, "loop", [None])[0] if zsync is not None else None
    if loop is None or not loop.is_running():
        return
    import asyncio
    import threading

    if getattr(zsync, "iothread", [None])[0] is threading.current_thread():  # pragma: no cover - never from zarr's own IO
        return

    async def others_done() -> None:
        me = asyncio.current_task()
        while pending := [t for t in asyncio.all_tasks() if t is not me and not t.done()]:
            await asyncio.wait(pending)

    try:
        asyncio.run_coroutine_threadsafe(others_done(), loop).result(timeout)
    except Exception:  # noqa: BLE001 - a loop shutting down or a timeout: remove what is there now
        pass


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


FONT_FLOOR_KEY = "conceptsim-min-font-pt"
"""PNG text key of the smallest font size (points at the figure's own size) in a figure written by
:func:`figure_png`; with ``conceptsim-dpi`` a reader (the browser test) can tell how large that text shows."""


def smallest_font_pt(fig: Any, draw: bool = True) -> float | None:
    """The smallest font size, in points, of the visible, non-empty text of a matplotlib figure (None if it has none).

    ``draw=False`` reads a figure that has just been drawn as it stands (its tick labels have their text).
    """
    from matplotlib.text import Text

    if draw:
        fig.draw_without_rendering()  # tick labels get their text when the figure is laid out
    sizes = [t.get_fontsize() for t in fig.findobj(Text)
             if t.get_visible() and t.get_text().strip() and (t.axes is None or t.axes.get_visible())]
    return float(min(sizes)) if sizes else None


class _PngText(Mapping):
    """:func:`figure_png`'s PNG text metadata, made when matplotlib reads it to write the PNG: by then ``savefig`` has
    drawn the figure, so the font floor needs no layout pass of its own (a figure still stale then gets one)."""

    def __init__(self, fig: Any, dpi: float):
        self.fig, self.dpi, self._meta = fig, dpi, None

    def _items(self) -> dict:
        if self._meta is None:
            floor = smallest_font_pt(self.fig, draw=bool(self.fig.stale))
            self._meta = {"conceptsim-dpi": f"{self.dpi:g}"}
            if floor is not None:
                self._meta[FONT_FLOOR_KEY] = f"{floor:g}"
        return self._meta

    def __getitem__(self, key: str) -> str:
        return self._items()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())


def figure_png(fig: Any, dpi: float = 100, bbox_inches: str | None = None) -> bytes:
    """A matplotlib figure as PNG bytes that carry its smallest font size and its dpi as text metadata.

    The font floor is read from the drawing ``savefig`` makes anyway (:class:`_PngText`), not from a draw of its
    own: one draw fewer, the same bytes. A figure with a layout engine (``layout="constrained"``) refines its layout
    at every draw, so it still gets the one layout pass that draw made (only the layout, not the drawing).
    """
    import io

    engine = fig.get_layout_engine()
    if engine is not None and fig.axes:
        engine.execute(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches=bbox_inches, metadata=_PngText(fig, dpi))
    return buf.getvalue()


def save_figure(fig: Any, path: str | os.PathLike, dpi: float = 100, bbox_inches: str | None = None) -> Path:
    """Write a figure as PNG atomically, with its smallest font size in the metadata (:func:`figure_png`)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(figure_png(fig, dpi=dpi, bbox_inches=bbox_inches))
    return path


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


def folder_digest(path: str | os.PathLike, file_hash: Callable[[Path], Any] = sha256_file, skip: Iterable[Path] = ()) -> str:
    """sha256 of a folder's files: their relative names and ``file_hash`` values, in name order, leaving out
    this package's temporaries (:func:`debris_pid`) and the paths in ``skip`` (a store's own record of its digest)."""
    path, skip = Path(path), set(skip)
    files = sorted(p for p in path.rglob("*") if p.is_file() and p not in skip and debris_pid(p.name) is None)
    return sha256_json([(p.relative_to(path).as_posix(), file_hash(p)) for p in files])


def library_hash() -> str:
    """Hash of the source of every module of this package: results computed by other code are stale."""
    root = Path(__file__).resolve().parent
    files = sorted(root.rglob("*.py"))
    return sha256_json([(str(p.relative_to(root)), p.read_text()) for p in files])


def stage_identity(module: str, **what: Any) -> str:
    """Identity of a stage's results: a hash of what determines them and of the code the stage runs.

    ``module`` is the stage's entry module (its ``__name__``); the code is that module and every package
    module it imports, transitively (:func:`code_hash`), not the whole library.
    """
    return sha256_json({"inputs": what, "code": code_hash([module])})


def reusable_outputs(record: Path, identity: str) -> dict[str, Path] | None:
    """The outputs listed in a stage's JSON ``record`` if it was written with ``identity`` and every one of
    them still exists, with the content recorded when the record has their hashes; otherwise None (absent,
    unreadable or stale record, or an output removed or changed since).

    A stage writes its record last (``{"identity": ..., "outputs": {name: path relative to the record's
    folder}, "sha256": {name: hash}, ...}``, see :func:`output_digests`), so a record's presence means the
    outputs it lists were complete; their hashes tell an edited or damaged one from what the stage wrote.
    """
    try:
        data = json.loads(Path(record).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("identity") != identity or not isinstance(data.get("outputs"), dict):
        return None
    outputs = {str(k): Path(record).parent / str(v) for k, v in data["outputs"].items()}
    if not all(p.exists() for p in outputs.values()):
        return None
    digests = data.get("sha256") if isinstance(data.get("sha256"), dict) else {}
    for name, digest in digests.items():
        path = outputs.get(str(name))
        if path is not None and (not path.is_file() or sha256_file(path) != digest):
            return None
    return outputs


def output_digests(paths: Mapping[str, Path]) -> dict[str, str]:
    """``{name: sha256}`` of the files among a stage's outputs (the ``sha256`` of its record, read by
    :func:`reusable_outputs`)."""
    return {k: sha256_file(p) for k, p in paths.items() if Path(p).is_file()}


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


# ----------------------------------------------------------------------------- code a stage runs
# The package source a stage runs, found from the import graph (read with ``ast``), and a hash of it.
#
# Cache keys (a run's key, a stage's identity) hash this instead of every ``.py`` of the package, so editing
# the book's code, the CLI or a later stage reruns nothing earlier.
#
# Rules. A module's imports are every ``import`` / ``from ... import`` of a ``conceptsim`` module anywhere in
# its file, module level or inside functions (a local import is still code the module may run); importing
# ``conceptsim.a.b`` also runs ``conceptsim/__init__.py`` and ``conceptsim/a/__init__.py``. Entry points can
# be narrowed to some *names* of a module (:func:`notebook_modules` does so for what a notebook uses of, for
# example, ``conceptsim.pipeline``): then only that module's module-level imports and the imports inside the
# named top-level functions or classes count, with the functions and classes of the same module that those
# refer to by name, transitively. Modules reached through an import count whole.

PACKAGE = "conceptsim"
PACKAGE_ROOT = Path(__file__).resolve().parent  # the package whose source is hashed


def module_file(name: str) -> Path | None:
    """The source file of package module ``name`` (``conceptsim.a.b``), or None when there is none."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_ROOT.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _resolve(node: ast.ImportFrom | ast.Import, current: str) -> list[str]:
    """Package modules named by one import statement of module ``current``."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == PACKAGE]
    base = node.module or ""
    if node.level:
        pkg = current.split(".")
        is_pkg = module_file(current) is not None and module_file(current).name == "__init__.py"
        pkg = pkg[: len(pkg) - node.level + (1 if is_pkg else 0)]
        base = ".".join(pkg + ([base] if base else []))
    if base.split(".")[0] != PACKAGE:
        return []
    subs = [f"{base}.{a.name}" for a in node.names if module_file(f"{base}.{a.name}") is not None]
    # `from pkg import sub` runs pkg's module-level code only (a parent, see closure); `from pkg import name`
    # uses pkg itself
    return subs if len(subs) == len(node.names) else [base] + subs


@lru_cache(maxsize=None)
def _parse(name: str) -> tuple[frozenset, dict, dict]:
    """``(module-level imports, imports per top-level def/class, names each top-level def/class refers to)``."""
    path = module_file(name)
    tree = ast.parse(path.read_text(), filename=str(path))
    top: set[str] = set()
    local: dict[str, frozenset] = {}
    refs: dict[str, frozenset] = {}
    for stmt in tree.body:
        if _type_checking_only(stmt):
            continue  # `if TYPE_CHECKING:` imports never run
        imports = {m for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom)) for m in _resolve(n, name)}
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            local[stmt.name] = frozenset(imports)
            refs[stmt.name] = frozenset(n.id for n in ast.walk(stmt) if isinstance(n, ast.Name))
        else:
            top |= imports
    return frozenset(top), local, refs


def _type_checking_only(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.If) and isinstance(stmt.test, ast.Name) and stmt.test.id == "TYPE_CHECKING" and not stmt.orelse


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def closure(entries: Mapping[str, Iterable[str] | None]) -> list[str]:
    """Package modules run by ``entries`` (module -> the names used, or None for the whole module), sorted."""
    seen: set[str] = set()
    todo: list[str] = []
    packages_only: set[str] = set()  # parent packages: importing a submodule runs their module-level code only

    def add(mod: str, whole: bool = True) -> None:
        for m in _with_parents(mod):
            itself = m == mod and whole
            if m not in seen and module_file(m) is not None:
                seen.add(m)
                todo.append(m)
                if not itself:
                    packages_only.add(m)
            elif itself and m in packages_only:  # now imported for itself: its functions count too
                packages_only.discard(m)
                todo.append(m)

    narrowed = {m: set(n) for m, n in entries.items() if n is not None}
    for mod in entries:
        if mod in narrowed:
            top, local, refs = _parse(mod)
            for m in _with_parents(mod)[:-1]:
                add(m, whole=False)
            seen.add(mod)
            names, stack = set(), list(narrowed[mod])
            while stack:
                n = stack.pop()
                if n not in local and "__getattr__" in local:  # a name the module provides lazily (PEP 562)
                    n = "__getattr__"
                if n in local and n not in names:
                    names.add(n)
                    stack += [r for r in refs[n] if r in local]
            for m in set(top).union(*(local[n] for n in names)):
                add(m)
        else:
            add(mod)
    while todo:
        mod = todo.pop()
        top, local, _ = _parse(mod)
        for m in set(top) if mod in packages_only else set(top).union(*local.values()):
            add(m)
    return sorted(seen)


def code_hash(entries: Mapping[str, Iterable[str] | None] | Iterable[str]) -> str:
    """sha256 of the names and sources of :func:`closure` (a plain list of modules counts each whole)."""
    if not isinstance(entries, Mapping):
        entries = {m: None for m in entries}
    files = [(m, module_file(m).read_text()) for m in closure(entries)]
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()


def notebook_modules(sources: Iterable[str]) -> dict[str, set[str] | None]:
    """What the code cells ``sources`` of a notebook use of the package: module -> names (None: whole).

    ``from conceptsim import pipeline`` followed by ``pipeline.run_concepts(...)`` narrows
    ``conceptsim.pipeline`` to ``{"run_concepts"}``; a module alias used other than as ``alias.name`` counts
    whole; ``from conceptsim.m import f`` narrows ``conceptsim.m`` to ``f``. IPython magics are skipped.
    """
    code = "\n".join("\n".join(ln for ln in s.splitlines() if not ln.lstrip().startswith(("%", "!"))) for s in sources)
    tree = ast.parse(code)
    out: dict[str, set[str] | None] = {}
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == PACKAGE:
                    out[a.name] = None
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == PACKAGE:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                if module_file(sub) is not None:
                    aliases[a.asname or a.name] = sub
                    out.setdefault(sub, set())
                elif out.get(node.module, set()) is not None:
                    out.setdefault(node.module, set()).add(a.name)
    attribute_values = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            attribute_values.add(id(node.value))
            mod = aliases[node.value.id]
            if out.get(mod) is not None:
                out[mod].add(node.attr)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in aliases and id(node) not in attribute_values:
            out[aliases[node.id]] = None  # the module object itself is used: all of it counts
    return out


def notebook_code_hash(path: str | Path) -> str:
    """:func:`code_hash` of what a notebook's code cells use of the package."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    return code_hash(notebook_modules(c.source for c in nb.cells if c.cell_type == "code"))
