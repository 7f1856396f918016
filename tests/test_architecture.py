"""The import graph of ``lib/conceptsim`` points down the layers and has no cycle.

Layers, lowest first: infrastructure (``paths``, ``atomic``, ``allocator``, ``netguard``, ``runtime``,
``tables``) < ``data`` < ``models`` < ``extraction`` < ``concepts`` < ``comparison`` (the pipeline stages)
< ``pipeline`` (the stage entry points the notebooks call) < the study model (``run.study``,
``run.validation``, ``run.preflight``, ``run.overrides``: what a study is and whether it can run here)
< ``book`` (the pages of a study) < the runner (the rest of ``run``: keys, scheduling, execution, kernels,
progress, the study loop that publishes the book, the Dask cluster) < the front doors (``api``, ``explorer``,
``cli``, the package itself). A module may import from its own layer or a lower one. Every ``import``
statement counts, also those inside functions, so an import cannot dodge a cycle by moving into a function body.

Run alone: ``pytest tests/test_architecture.py -q``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib" / "conceptsim"
INFRASTRUCTURE = ("paths", "atomic", "allocator", "netguard", "runtime", "tables")
STAGES = ("data", "models", "extraction", "concepts", "comparison")
STUDY_MODEL = ("run.study", "run.validation", "run.preflight", "run.overrides")
#: every layer, lowest first, by the module names (after ``conceptsim.``) it holds; a name holds its submodules
LAYERS = (INFRASTRUCTURE, *((s,) for s in STAGES), ("pipeline",), STUDY_MODEL, ("book",), ("run",),
          ("api", "explorer", "cli", ""))
FRONT = len(LAYERS) - 1


def module_name(root: Path, f: Path) -> str:
    parts = list(f.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([root.name, *parts])


def stage(module: str) -> int:
    """The layer of ``module``: its index in :data:`LAYERS` (the longest matching name wins: ``run.study``
    is the study model, ``run.keys`` the runner; ``conceptsim`` itself is a front door)."""
    name = module.partition(".")[2]
    best, layer = -1, None
    for i, names in enumerate(LAYERS):
        for n in names:
            if (name == n or name.startswith(n + ".") or n == "") and len(n) > best:
                best, layer = len(n), i
    if layer is None:
        raise AssertionError(f"{module}: in no layer of tests/test_architecture.py (add it to LAYERS)")
    return layer


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
    """Imports from a module into a higher layer."""
    return sorted(f"{a} imports {b}" for a, b in edges if stage(b) > stage(a))


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


def test_every_module_has_a_layer():
    """A new module or package must be placed in :data:`LAYERS` (the root is no longer one lump of 'the rest')."""
    files, _ = import_graph(LIB)
    unplaced = []
    for module in files:
        try:
            stage(module)
        except AssertionError:
            unplaced.append(module)
    assert unplaced == []
    top = {f.stem if f.is_file() else f.name for f in LIB.iterdir()
           if (f.suffix == ".py" and f.stem != "__init__") or (f / "__init__.py").exists()}
    placed = {n.split(".")[0] for names in LAYERS for n in names if n}
    assert top <= placed, f"unplaced top-level modules: {sorted(top - placed)}"


def test_the_runner_and_the_book_are_layers_of_their_own():
    assert stage("conceptsim.run.study") < stage("conceptsim.book.pages") < stage("conceptsim.run.orchestrate")
    assert stage("conceptsim.comparison.stage") < stage("conceptsim.pipeline") < stage("conceptsim.run.validation")
    assert stage("conceptsim.run.cluster") < stage("conceptsim.cli") == stage("conceptsim") == FRONT


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


@pytest.mark.parametrize("importer, text", [
    ("run/study.py", "from conceptsim.run.keys import run_keys\n"),  # the study model importing the runner
    ("book/pages.py", "def f():\n    from conceptsim.run.orchestrate import run_study\n"),  # the book, the runner
    ("run/keys.py", "import conceptsim.api\n"),  # the runner, the front door
])
def test_checker_finds_a_climb_between_the_upper_layers(tmp_path, importer, text):
    root = _package(tmp_path, {"run/__init__.py": "", "run/study.py": "", "run/keys.py": "", "run/orchestrate.py": "",
                               "book/__init__.py": "", "book/pages.py": "", "api.py": "", importer: text})
    importer_module = "conceptsim." + importer.removesuffix(".py").replace("/", ".")
    found = climbs(import_graph(root)[1])
    assert found and all(f.startswith(importer_module + " imports ") for f in found)
