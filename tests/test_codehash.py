"""Cache keys per stage: the package code a stage or notebook runs, found from the import graph."""

import shutil

import pytest

from conceptsim import atomic
from conceptsim.run.keys import notebooks_dir

NOTEBOOKS = ("01_extract", "02_concepts", "03_compare_layers", "04_compare_models")
STAGES = ("conceptsim.extraction.extract", "conceptsim.concepts.stage", "conceptsim.comparison.stage")


@pytest.fixture()
def package(tmp_path, monkeypatch):
    """A copy of the package's source that the tests may edit; atomic reads it instead of the real one."""
    root = tmp_path / "conceptsim"
    shutil.copytree(atomic.PACKAGE_ROOT, root, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(atomic, "PACKAGE_ROOT", root)
    atomic._parse.cache_clear()
    yield root
    atomic._parse.cache_clear()


def _hashes() -> dict[str, str]:
    atomic._parse.cache_clear()
    out = {nb: atomic.notebook_code_hash(notebooks_dir() / f"{nb}.ipynb") for nb in NOTEBOOKS}
    out.update({s: atomic.code_hash([s]) for s in STAGES})
    return out


def _edit(path):
    path.write_text(path.read_text() + "\n# an edit\n")


def test_book_and_cli_edits_change_no_stage(package):
    before = _hashes()
    _edit(package / "book" / "reporting.py")
    _edit(package / "cli.py")
    assert _hashes() == before


def test_net2vec_edit_changes_concepts_and_comparison_not_extraction(package):
    before = _hashes()
    _edit(package / "concepts" / "net2vec.py")
    after = _hashes()
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"02_concepts", "03_compare_layers", "04_compare_models", "conceptsim.concepts.stage",
                       "conceptsim.comparison.stage"}


def test_comparison_edit_changes_no_earlier_stage(package):
    """A later stage's code is no part of an earlier stage's key: editing the findings reruns the comparison
    notebooks only (the concept notebook reads its tables with ``conceptsim.tables``, not the public API,
    which imports the comparison package)."""
    before = _hashes()
    _edit(package / "comparison" / "finding2.py")
    after = _hashes()
    assert {k for k in before if before[k] != after[k]} == {"03_compare_layers", "04_compare_models",
                                                             "conceptsim.comparison.stage"}


def test_notebook_modules_narrow_to_the_names_used():
    used = atomic.notebook_modules([
        "%matplotlib inline\nfrom conceptsim import pipeline\nfrom conceptsim.paths import comparison_files\n",
        "paths = pipeline.run_concepts(1)\nimport conceptsim.concepts.metrics\n",
    ])
    assert used == {"conceptsim.pipeline": {"run_concepts"}, "conceptsim.paths": {"comparison_files"},
                    "conceptsim.concepts.metrics": None}
    mods = atomic.closure(used)
    assert "conceptsim.concepts.stage" in mods and "conceptsim.extraction.extract" not in mods
    assert "conceptsim.concepts" in mods and "conceptsim" in mods  # packages' __init__ run on import
    # the module object used as a value: all of it counts
    assert atomic.notebook_modules(["from conceptsim import pipeline\nf(pipeline)\n"]) == {"conceptsim.pipeline": None}


def test_lazy_package_names_count_only_where_the_package_is_used():
    """``conceptsim.comparison`` provides its names through ``__getattr__`` (PEP 562): a submodule import runs
    none of the stage's code, and a name taken from the package brings the module that defines it."""
    import sys

    assert "conceptsim.comparison.stage" not in atomic.closure({"conceptsim.comparison.report": None})
    used = atomic.notebook_modules(["from conceptsim.comparison import run_comparison_stage\n"
                                    "run_comparison_stage(1, 2)\n"])
    assert used == {"conceptsim.comparison": {"run_comparison_stage"}}
    assert "conceptsim.comparison.stage" in atomic.closure(used)
    import conceptsim.comparison as comparison

    assert comparison.run_comparison_stage.__module__ == "conceptsim.comparison.stage" and "conceptsim.comparison.stage" in sys.modules
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        comparison.nothing


def test_unparsable_module_is_a_clear_error(package):
    (package / "concepts" / "net2vec.py").write_text("def broken(:\n")
    atomic._parse.cache_clear()
    with pytest.raises(SyntaxError, match="net2vec.py"):
        atomic.code_hash(["conceptsim.concepts.stage"])
