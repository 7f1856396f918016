"""The stage notebooks are stored without outputs, have exactly one cell tagged `parameters`, and its values
are those of the default study's first run of the stage."""

from pathlib import Path

import nbformat
import pytest

from conceptsim.run.study import NOTEBOOKS, load_study

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


def parameter_defaults(name: str) -> dict:
    """The values the notebook's ``parameters`` cell assigns (the cell holds literals only)."""
    nb = nbformat.read(NB_DIR / name, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    values: dict = {}
    exec(compile(cell.source, f"{name}:parameters", "exec"), {}, values)
    return values


@pytest.mark.parametrize("stage", sorted(NOTEBOOKS))
def test_parameter_cell_is_the_default_studys_first_run(stage):
    """Run by hand, a notebook does what the runner does for the default study's first run of its stage
    (so it writes into the default study's folders with the same keys), and declares nothing else but
    ``force`` (the runner's --force, off by default: stored outputs are reused)."""
    study = load_study(Path(__file__).resolve().parents[1] / "studies" / "default.yml")
    first = next(r for r in study.runs() if r.stage == stage)
    defaults = parameter_defaults(NOTEBOOKS[stage])
    assert defaults.pop("force", False) is False
    assert defaults == first.parameters


@pytest.mark.parametrize("name", INTERACTIVE)
def test_interactive_notebooks_are_clean(name):
    nb = nbformat.read(NB_DIR / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    assert nb.metadata["kernelspec"]["name"] == "python3"
