"""The package source a stage runs, found from the import graph (read with ``ast``), and a hash of it.

Cache keys (a run's key, a stage's identity) hash this instead of every ``.py`` of the package, so editing
the book's code, the CLI or a later stage reruns nothing earlier.

Rules. A module's imports are every ``import`` / ``from ... import`` of a ``conceptsim`` module anywhere in
its file, module level or inside functions (a local import is still code the module may run); importing
``conceptsim.a.b`` also runs ``conceptsim/__init__.py`` and ``conceptsim/a/__init__.py``. Entry points can
be narrowed to some *names* of a module (:func:`notebook_modules` does so for what a notebook uses of, for
example, ``conceptsim.pipeline``): then only that module's module-level imports and the imports inside the
named top-level functions or classes count, with the functions and classes of the same module that those
refer to by name, transitively. Modules reached through an import count whole.
"""

from __future__ import annotations

import ast
import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping

PACKAGE = "conceptsim"
ROOT = Path(__file__).resolve().parent


def module_file(name: str) -> Path | None:
    """The source file of package module ``name`` (``conceptsim.a.b``), or None when there is none."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = ROOT.joinpath(*parts[1:])
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
    out = [base]
    out += [f"{base}.{a.name}" for a in node.names if module_file(f"{base}.{a.name}") is not None]
    return out


@lru_cache(maxsize=None)
def _parse(name: str) -> tuple[frozenset, dict, dict]:
    """``(module-level imports, imports per top-level def/class, names each top-level def/class refers to)``."""
    path = module_file(name)
    tree = ast.parse(path.read_text(), filename=str(path))
    top: set[str] = set()
    local: dict[str, frozenset] = {}
    refs: dict[str, frozenset] = {}
    for stmt in tree.body:
        imports = {m for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom)) for m in _resolve(n, name)}
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            local[stmt.name] = frozenset(imports)
            refs[stmt.name] = frozenset(n.id for n in ast.walk(stmt) if isinstance(n, ast.Name))
        else:
            top |= imports
    return frozenset(top), local, refs


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def closure(entries: Mapping[str, Iterable[str] | None]) -> list[str]:
    """Package modules run by ``entries`` (module -> the names used, or None for the whole module), sorted."""
    seen: set[str] = set()
    todo: list[str] = []

    def add(mod: str) -> None:
        for m in _with_parents(mod):
            if m not in seen and module_file(m) is not None:
                seen.add(m)
                todo.append(m)

    narrowed = {m: set(n) for m, n in entries.items() if n is not None}
    for mod in entries:
        if mod in narrowed:
            top, local, refs = _parse(mod)
            for m in _with_parents(mod)[:-1]:
                add(m)
            seen.add(mod)
            names, stack = set(), list(narrowed[mod])
            while stack:
                n = stack.pop()
                if n in local and n not in names:
                    names.add(n)
                    stack += [r for r in refs[n] if r in local]
            for m in set(top).union(*(local[n] for n in names)):
                add(m)
        else:
            add(mod)
    while todo:
        top, local, _ = _parse(todo.pop())
        for m in set(top).union(*local.values()):
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
