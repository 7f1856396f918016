"""The README's result-file tables name every column and key that the stages write: the concept stage's
``concept_quality.csv``, ``dissection.csv`` and concept vectors (run on a tiny planted store) and the
comparison stage's ``similarity.csv`` (the ``comparison_run`` fixture)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def documented(file: str) -> set[str]:
    """The names in backticks of the README's result-file row for ``file`` (``a, b, c`` spans split)."""
    row = next((line for line in (REPO / "README.md").read_text().splitlines() if line.startswith(f"| `{file}` |")), None)
    assert row is not None, f"README: no result-file row for {file}"
    return {name.strip() for span in re.findall(r"`([^`]*)`", row.split("|", 2)[2]) for name in span.split(",")}


@pytest.fixture(scope="module")
def concept_outputs(tmp_path_factory):
    from conceptsim.concepts import run_concept_stage
    from conceptsim.concepts.synthetic import planted_store

    tmp = tmp_path_factory.mktemp("readme")
    path, _ = planted_store(tmp / "s.zarr", n_split=(40, 20, 20), noise_layers=1, amplitude=5.0, k=2)
    return run_concept_stage(path, tmp / "out", bootstrap=20, batch_size=8, epochs=2)


def test_concept_stage_files_document_every_column_and_key(concept_outputs):
    # the README once lacked test_represented, val_value, val_control_value, threshold_error, and named the
    # cls vectors' `chosen_c` as "`C` chosen"; the vectors hold more keys than it listed
    paths = concept_outputs
    for file, table in (("concept_quality.csv", "concept_quality"), ("dissection.csv", "dissection")):
        missing = sorted(set(pd.read_csv(paths[table]).columns) - documented(file))
        assert not missing, f"README: {file} lacks {missing}"
    for file, key in (("vectors/seg_<layer>.npz", "seg_layer0"), ("vectors/cls_<layer>.npz", "cls_layer0")):
        with np.load(paths[key]) as npz:
            missing = sorted(set(npz.files) - documented(file))
        assert not missing, f"README: {file} lacks {missing}"


def test_similarity_csv_documents_every_column(comparison_run):
    _, similarity = comparison_run
    missing = sorted(set(similarity.columns) - documented("similarity.csv"))
    assert not missing, f"README: similarity.csv lacks {missing}"
