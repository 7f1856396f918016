"""Run keys and records on the fake project of :mod:`test_run_orchestrate`: a run loses its record when it
starts, a forced run recomputes, and an output changed since it was recorded is recomputed."""

import json

import pytest

import test_run_orchestrate
from conceptsim.run import orchestrate as runner
from conceptsim.run.execution import RUN_THREADS
from conceptsim.run.keys import is_complete, record_path, run_keys
from test_run_orchestrate import NOTEBOOKS, fake_execute, make_notebook

fake_project = test_run_orchestrate.fake_project  # the fake project (tiny notebooks) of the runner's tests


def test_forced_run_loses_its_record_before_it_starts(fake_project, monkeypatch):
    import papermill

    root, study = fake_project
    monkeypatch.setattr(runner, "execute_run", fake_execute)
    runner.run_study(study, progress=False)
    extract = next(r for r in study.runs() if r.stage == "extract")
    assert record_path(extract).exists()
    monkeypatch.undo()
    monkeypatch.setenv("CONCEPTSIM_ROOT", str(root))
    seen = []

    def killed(*a, **k):  # the process dies while the notebook runs
        seen.append(record_path(extract).exists())
        raise KeyboardInterrupt

    monkeypatch.setattr(papermill, "execute_notebook", killed)
    with pytest.raises(KeyboardInterrupt):
        runner.run_study(study, force=True, progress=False)
    assert seen == [False] and not record_path(extract).exists()
    keys = run_keys(study.runs())
    assert not is_complete(extract, keys[extract.id])  # so the next run redoes it


CONCEPT_STAGE = """
import json
from conceptsim.paths import concept_quality_csv, concept_stage_json, model_results
out = model_results(study, dataset, model)
out.mkdir(parents=True, exist_ok=True)
if force or not concept_quality_csv(out).exists():  # the stage's reuse check, as in run_concept_stage
    concept_quality_csv(out).write_text("concept,value\\ncircle,0.5\\n")
    concept_stage_json(out).write_text(json.dumps({"outputs": {"concept_quality": "concept_quality.csv"}}))
with open(out / "forced.log", "a") as f:
    f.write(str(force) + "\\n")
"""


def test_force_reaches_the_stage_and_a_changed_output_is_recomputed(fake_project):
    from conceptsim.paths import concept_quality_csv, model_results

    root, study = fake_project
    make_notebook(root / "notebooks" / NOTEBOOKS["concepts"], "concepts", CONCEPT_STAGE)
    concepts = next(r for r in study.runs() if r.stage == "concepts")
    out = model_results("fake", "shapes", concepts.model)
    runner.run_study(study, progress=False)
    rec = json.loads(record_path(concepts).read_text())
    assert rec["forced"] is False and rec["threads"] == RUN_THREADS
    assert set(rec["outputs"]) == {"fake/shapes/mobilenet_v2_imagenet/concept_stage.json",
                                   "fake/shapes/mobilenet_v2_imagenet/concept_quality.csv"}
    # a value edited by hand: the next plain run sees the hash differ and recomputes that run, forced
    concept_quality_csv(out).write_text("concept,value\ncircle,0.99\n")
    outcome = runner.run_study(study, progress=False)
    assert [r["id"] for r in outcome.executed] == [concepts.id]
    assert concept_quality_csv(out).read_text() == "concept,value\ncircle,0.5\n"
    rec = json.loads(record_path(concepts).read_text())
    assert rec["forced"] is True and "concept_quality.csv" in rec["forced_because"]
    # unchanged: reused; --force: every run recomputes, and the stage is told so
    assert not runner.run_study(study, progress=False).executed
    concept_quality_csv(out).write_text("concept,value\ncircle,0.99\n")
    assert len(runner.run_study(study, force=True, progress=False).executed) == 4
    assert concept_quality_csv(out).read_text() == "concept,value\ncircle,0.5\n"
    assert (out / "forced.log").read_text().split() == ["False", "True", "True"]
    assert json.loads(record_path(concepts).read_text())["forced_because"] == "--force"
