"""End to end, offline: `conceptsim run studies/grounding.yml --smoke` -- small CNNs trained with a planted
cue and on shuffled labels, the pipeline on a held-out style, shortcut.csv and the "Do the measures measure?"
page's shortcut table. Slow (about 2 minutes on 2 cores); part of `make test`.

Runs in a temporary project root (``conftest.make_project``); weights, icons and datasets: the real cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conceptsim.comparison.grounding import SHORTCUT_MEASURES
from conftest import make_project

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_grounding_smoke_study_scores_every_measure(tmp_path):
    root = make_project(tmp_path / "project")
    env = {**os.environ, "CONCEPTSIM_ROOT": str(root), "CONCEPTSIM_RESULTS": str(root / "results"),
           "CONCEPTSIM_CACHE": os.environ.get("CONCEPTSIM_CACHE", str(REPO / ".cache"))}
    cmd = [str(os.path.join(os.path.dirname(sys.executable), "conceptsim")), "run", "studies/grounding.yml", "--smoke",
           "--jobs", "2", "--quiet"]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = root / "results" / "grounding-smoke" / "coco-icons"
    scores = pd.read_csv(out / "shortcut.csv", keep_default_na=False, na_values=[""]).fillna({"concept": ""})
    assert set(scores[scores["concept"] == ""]["method"]) == set(SHORTCUT_MEASURES)
    assert set(scores[scores["concept"] == "dot"]["method"]) == {"seg_kappa", "seg", "cls_partial", "cls"}
    assert set(scores["layer"]) == {"block1", "block2", "block3", "block4"}
    assert scores["auprc"].between(0, 1).all() and scores["violation_rate"].between(0, 1).all()
    assert (scores["n_networks"] == 4).all() and (scores["n_groups"] == 2).all()
    page = (root / "book" / "results" / "grounding-smoke" / "grounding.md").read_text()
    section = page.split("## Shortcut affinity and label randomisation")[1]
    assert "| `cka` | `block4` |" in section and "| `seg_kappa` on `dot` | `block4` |" in section
    assert "Training accuracy on the dominant-object label (mean per group): cue p=1 " in section
    assert "shuffled labels " in section and "(2 networks)" in section
