"""Generated book pages: navigation titles and the parameter cells of executed notebooks."""

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from conceptsim.book.reporting import INJECTED_NOTE, label_parameter_cells, page_title
from conceptsim.run.study import parse_study


def test_page_titles_name_model_and_dataset():
    study = parse_study({"name": "t", "datasets": {"shapes": {}}, "models": ["mobilenet_v2_imagenet"]})
    titles = {r.id: page_title(r) for r in study.runs()}
    assert titles["concepts/shapes/mobilenet_v2_imagenet"] == "Concept learning: mobilenet_v2_imagenet on shapes"
    assert titles["compare_models/shapes"] == "Model comparison and findings: shapes"
    assert len(set(titles.values())) == len(titles)  # no two pages share a navigation name


def _executed(tmp_path, injected=True):
    cells = [new_code_cell("x = 1", metadata={"tags": ["parameters"]})]
    if injected:
        cells.append(new_code_cell("# Parameters\nx = 2", metadata={"tags": ["injected-parameters"]}))
    cells.append(new_code_cell("print(x)"))
    path = tmp_path / "nb.ipynb"
    nbformat.write(new_notebook(cells=cells), path)
    return path


def test_defaults_cell_removed_and_injected_cell_labelled(tmp_path):
    path = _executed(tmp_path)
    assert label_parameter_cells(path)
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].metadata["tags"] == ["parameters", "remove-cell"]
    assert nb.cells[1].cell_type == "markdown" and nb.cells[1].source == INJECTED_NOTE
    assert nb.cells[2].source.endswith("x = 2")
    assert not label_parameter_cells(path)  # idempotent
    assert len(nbformat.read(path, as_version=4).cells) == 4


def test_notebook_without_injected_parameters_keeps_its_defaults(tmp_path):
    path = _executed(tmp_path, injected=False)
    assert not label_parameter_cells(path)
    assert nbformat.read(path, as_version=4).cells[0].metadata["tags"] == ["parameters"]
