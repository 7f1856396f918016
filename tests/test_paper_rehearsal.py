"""The paper study's path, offline: `studies/paper.yml --smoke` on COCO val2017 and VOC 2012 copies in the real
on-disk formats (written by tests/formats.py), with `--root` pointing at them.

Without the trained checkpoints the run stops at once, before any notebook, saying where to put each file
(fast). With `--twins-only` the paper models' random-init twins go through every notebook and the strict
book build (slow: minutes).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_project
from formats import write_coco, write_voc

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PAPER_MODELS = ("yolov5su", "ssd300_vgg16", "fasterrcnn_resnet50_fpn")


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    """Local copies of the two datasets: ten images each (the smoke split gives six, two and two)."""
    base = tmp_path_factory.mktemp("paper-data")
    write_coco(base / "coco", n=10)
    write_voc(base / "voc", n=10)
    return base


def roots(copies):
    return ["--root", f"coco2017-val={copies / 'coco'}", "--root", f"voc2012={copies / 'voc'}"]


def test_missing_checkpoints_stop_the_run_at_once_saying_where_to_put_them(copies, tmp_path, monkeypatch, capsys):
    from conceptsim.cli import main

    monkeypatch.setenv("CONCEPTSIM_CACHE", str(tmp_path / "cache"))  # no weights here
    monkeypatch.setenv("CONCEPTSIM_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("CONCEPTSIM_DATA", str(tmp_path / "data"))
    assert main(["run", str(ROOT / "studies" / "paper.yml"), "--smoke", "--quiet", *roots(copies)]) == 2
    err = capsys.readouterr().err
    assert "nothing was started" in err and "--twins-only" in err
    paper = tmp_path / "cache" / "weights" / "paper"
    for model, file in zip(PAPER_MODELS, ("yolov5su.pt", "ssd300_vgg16_coco-b556d3b4.pth",
                                          "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth")):
        assert f"model {model}: pretrained weights {file} are not available offline: place the file at {paper / file}" in err
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()  # nothing written


def test_an_untrusted_ultralytics_checkpoint_is_named_with_how_to_verify(copies, tmp_path, monkeypatch, capsys):
    from conceptsim.cli import main

    paper = tmp_path / "cache" / "weights" / "paper"
    paper.mkdir(parents=True)
    (paper / "yolov5su.pt").write_bytes(b"not checked before the trust setting")
    monkeypatch.setenv("CONCEPTSIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CONCEPTSIM_RESULTS", str(tmp_path / "results"))
    monkeypatch.delenv("CONCEPTSIM_TRUST_ULTRALYTICS_CHECKPOINTS", raising=False)
    assert main(["run", str(ROOT / "studies" / "paper.yml"), "--smoke", "--quiet", "--only", "model=yolov5su",
                 *roots(copies)]) == 2
    err = capsys.readouterr().err
    assert f"sha256sum {paper / 'yolov5su.pt'}" in err and "CONCEPTSIM_TRUST_ULTRALYTICS_CHECKPOINTS=1" in err
    assert "ssd300" not in err  # --only: only the selected runs' models are checked


def test_twins_only_needs_no_weights_and_keeps_the_study_shape(copies, tmp_path, monkeypatch):
    from conceptsim.run.overrides import apply_roots, keep_random_twins
    from conceptsim.run.preflight import check_inputs
    from conceptsim.run.study import load_study

    monkeypatch.setenv("CONCEPTSIM_CACHE", str(tmp_path / "cache"))
    study = load_study(ROOT / "studies" / "paper.yml", smoke=True)
    apply_roots(study, {"coco2017-val": str(copies / "coco"), "voc2012": str(copies / "voc")})
    keep_random_twins(study)
    check_inputs(study)
    assert study.models == [m + ":random" for m in PAPER_MODELS]
    assert len(study.runs()) == 2 * (3 * 2 + 2)
    assert study.datasets["voc2012"]["root"] == str((copies / "voc").resolve())


@pytest.mark.slow
def test_paper_smoke_rehearsal_through_every_notebook_and_the_book(copies, tmp_path):
    # a project root of its own (the checkout's sources, its own results, book pages and toc): the user's
    # book/results/ and book/_generated/_toc.yml stay as they are
    project = make_project(tmp_path / "project")
    results, data = tmp_path / "results", tmp_path / "data"
    env = {**os.environ, "CONCEPTSIM_RESULTS": str(results), "CONCEPTSIM_DATA": str(data),
           "CONCEPTSIM_ROOT": str(project), "CONCEPTSIM_BOOK_ALL": "1"}  # a smoke study: listed only with BOOK_ALL=1
    book_results = project / "book" / "results" / "paper-smoke"
    cmd = [str(VENV_BIN / "conceptsim"), "run", "studies/paper.yml", "--smoke", "--twins-only", "--quiet", *roots(copies)]
    proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "16 run(s) executed" in proc.stdout
    executed = sorted(book_results.rglob("*.ipynb"))
    assert len(executed) == 2 * (3 * 2 + 2)
    for ds in ("coco2017-val", "voc2012"):
        out = results / "paper-smoke" / ds
        for m in PAPER_MODELS:
            assert (out / f"{m}__random" / "concept_quality.csv").is_file()
            # the smoke study turns Network Dissection off: no unit tables, and the notebook says so
            assert not (out / f"{m}__random" / "dissection.csv").exists()
            concepts_nb = book_results / ds / f"{m}__random" / "02_concepts.ipynb"
            assert "Network Dissection is off in this study" in concepts_nb.read_text()
        assert (out / "similarity.csv").is_file() and (out / "findings.json").is_file()
    build = tmp_path / "book"
    cmd = [str(VENV_BIN / "jupyter-book"), "build", ".", "--toc", "book/_generated/_toc.yml", "-W", "-n",
           "--keep-going", "--path-output", str(build)]
    proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    html = build / "_build" / "html" / "book" / "results" / "paper-smoke"
    assert (html / "voc2012" / "yolov5su__random" / "01_extract.html").is_file()
    assert (html / "coco2017-val" / "04_compare_models.html").is_file()
