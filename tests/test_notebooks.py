"""The stage notebooks are stored without outputs and have exactly one cell tagged `parameters`."""

from pathlib import Path

import nbformat
import pytest

from conceptsim.study import NOTEBOOKS

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("name", sorted(NOTEBOOKS.values()))
def test_notebook_clean_and_parametrised(name):
    nb = nbformat.read(NB_DIR / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{name} has stored outputs"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name} must have exactly one cell tagged 'parameters'"
    assert 'study = "default"' in tagged[0].source  # defaults run the default study's first combination
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


INTERACTIVE = ("explore.ipynb",)  # for JupyterLab (`make lab`), not run by the study runner


def test_every_notebook_in_the_folder_is_a_stage():
    assert sorted(p.name for p in NB_DIR.glob("*.ipynb")) == sorted([*NOTEBOOKS.values(), *INTERACTIVE])


@pytest.mark.parametrize("name", INTERACTIVE)
def test_interactive_notebooks_are_clean(name):
    nb = nbformat.read(NB_DIR / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    assert nb.metadata["kernelspec"]["name"] == "python3"
