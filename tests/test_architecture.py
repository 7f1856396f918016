"""The import graph of ``lib/conceptsim`` points down the pipeline and has no cycle.

Stages, lowest first: infrastructure (``paths``, ``atomic``, ``allocator``, ``netguard``, ``runtime``)
< ``data`` < ``models`` < ``extraction`` < ``concepts`` < ``comparison`` < the rest (orchestration, book,
command line). A module may import from its own stage or a lower one. Every ``import`` statement counts,
also those inside functions, so an import cannot dodge a cycle by moving into a function body.

Run alone: ``pytest tests/test_architecture.py -q``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib" / "conceptsim"
INFRASTRUCTURE = ("paths", "atomic", "allocator", "netguard", "runtime")
STAGES = ("data", "models", "extraction", "concepts", "comparison")
REST = len(STAGES) + 1


def module_name(root: Path, f: Path) -> str:
    parts = list(f.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([root.name, *parts])


def stage(module: str) -> int:
    """0 for infrastructure, 1.. for the pipeline stages in order, :data:`REST` for everything else."""
    parts = module.split(".")
    if len(parts) < 2:
        return REST
    if parts[1] in INFRASTRUCTURE:
        return 0
    return STAGES.index(parts[1]) + 1 if parts[1] in STAGES else REST


def import_graph(root: Path) -> tuple[dict[str, Path], set[tuple[str, str]]]:
    """Modules of the package at ``root`` and the (importer, imported) pairs between them."""
    files = {module_name(root, f): f for f in sorted(root.rglob("*.py"))}
    edges: set[tuple[str, str]] = set()
    for mod, f in files.items():
        package = mod if f.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in files:
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != mod and not mod.startswith(t + "."):
                    edges.add((mod, t))
    return files, edges


def climbs(edges: set[tuple[str, str]]) -> list[str]:
    """Imports from a pipeline stage (or infrastructure) into a later stage."""
    return sorted(f"{a} imports {b}" for a, b in edges if stage(a) < REST and stage(b) > stage(a))


def cycles(files: dict[str, Path], edges: set[tuple[str, str]]) -> list[list[str]]:
    """Import cycles between modules (a package's ``__init__`` re-exports are left out: importing a
    submodule runs its package's ``__init__``, which is not a dependency of the submodule's code)."""
    graph: dict[str, list[str]] = {}
    for a, b in sorted(edges):
        if files[a].name != "__init__.py" and files[b].name != "__init__.py":
            graph.setdefault(a, []).append(b)
    found, state = [], {}

    def visit(u: str, path: list[str]) -> None:
        state[u] = 1
        path.append(u)
        for v in graph.get(u, ()):
            if state.get(v) == 1:
                found.append(path[path.index(v):] + [v])
            elif not state.get(v):
                visit(v, path)
        path.pop()
        state[u] = 2

    for m in sorted(graph):
        if not state.get(m):
            visit(m, [])
    return found


def test_imports_point_down_the_pipeline():
    files, edges = import_graph(LIB)
    assert len(files) > 40 and len(edges) > 80, "the import graph looks empty: wrong package path?"
    assert climbs(edges) == []


def test_no_import_cycles():
    files, edges = import_graph(LIB)
    assert [" -> ".join(c) for c in cycles(files, edges)] == []


def test_every_top_level_module_has_a_known_place():
    """New packages must be placed in the stage order here (else they silently count as 'the rest')."""
    packages = {p.name for p in LIB.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    placed = set(STAGES) | set(INFRASTRUCTURE) | {"book"}
    assert packages <= placed, f"unplaced packages: {sorted(packages - placed)}"


def _package(tmp_path: Path, sources: dict[str, str]) -> Path:
    root = tmp_path / "conceptsim"
    for rel, text in {"__init__.py": "", **sources}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.mark.parametrize("importer, text", [
    ("data/coco.py", "from conceptsim.concepts.vectors import segment\n"),
    ("data/coco.py", "def f():\n    from ..concepts import vectors\n"),  # relative, inside a function
    ("paths.py", "import conceptsim.data.coco\n"),
])
def test_checker_finds_a_climbing_import(tmp_path, importer, text):
    root = _package(tmp_path, {"data/__init__.py": "", "data/coco.py": "", "concepts/__init__.py": "",
                               "concepts/vectors.py": "", "paths.py": "", importer: text})
    importer_module = "conceptsim." + importer.removesuffix(".py").replace("/", ".")
    found = climbs(import_graph(root)[1])
    assert found and all(f.startswith(importer_module + " imports ") for f in found)


def test_checker_finds_a_cycle_through_a_function_level_import(tmp_path):
    root = _package(tmp_path, {
        "extraction/__init__.py": "",
        "extraction/store.py": "from conceptsim.extraction.maskstore import MaskStore\n",
        "extraction/maskstore.py": "def f():\n    from conceptsim.extraction.store import read_rows\n",
    })
    files, edges = import_graph(root)
    assert climbs(edges) == []
    assert [sorted(set(c)) for c in cycles(files, edges)] == [["conceptsim.extraction.maskstore",
                                                              "conceptsim.extraction.store"]]
