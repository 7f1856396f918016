"""Scheduling: the ``--only`` selection (with what the chosen runs depend on) and the critical path that
decides which ready run a worker takes first."""

import pytest

from conceptsim.run.scheduling import critical_path, select
from conceptsim.run.study import parse_study


def test_only_selects_runs_and_their_dependencies():
    study = parse_study({"name": "fake", "datasets": {"shapes": {}}, "models": ["mobilenet_v2_imagenet"]})
    chosen = select(study.runs(), {"stage": "concepts"})
    assert {r.stage for r in chosen} == {"extract", "concepts"}
    with pytest.raises(ValueError, match="no such model"):
        select(study.runs(), {"model": "nope"})
    with pytest.raises(ValueError, match="accepts keys"):
        select(study.runs(), {"colour": "red"})


def test_only_with_a_repeated_key_matches_either_value():
    study = parse_study({"name": "f", "datasets": {"shapes": {}},
                         "models": ["mobilenet_v2_imagenet", "ssd_mobilenet_v2_coco", "centernet_mobilenet_v3_coco"]})
    chosen = select(study.runs(), {"stage": ["extract"], "model": ["mobilenet_v2_imagenet", "ssd_mobilenet_v2_coco"]})
    assert {r.id for r in chosen} == {"extract/shapes/mobilenet_v2_imagenet", "extract/shapes/ssd_mobilenet_v2_coco"}
    with pytest.raises(ValueError, match="--only model=nope: no such model"):
        select(study.runs(), {"model": ["mobilenet_v2_imagenet", "nope"]})


def test_workers_take_the_longest_chain_first():
    study = parse_study({"name": "chains", "datasets": {"shapes": {}, "photo-colors": {}},
                         "models": ["mobilenet_v2_imagenet", "ssd_mobilenet_v2_coco"]})
    runs = study.runs()
    # a first run (nothing recorded): the longest chain of runs, extract -> concepts -> compare_layers -> compare_models
    unit = critical_path(runs, {})
    assert unit["extract/shapes/mobilenet_v2_imagenet"] == 4.0 and unit["compare_models/shapes"] == 1.0
    # recorded times: the run with the long concept stage after it starts first, and unknown runs count as the mean
    seconds = {r.id: 10.0 for r in runs}
    seconds["concepts/photo-colors/ssd_mobilenet_v2_coco"] = 100.0
    seconds["extract/shapes/mobilenet_v2_imagenet"] = None
    chain = critical_path(runs, seconds)
    first = max((r for r in runs if r.stage == "extract"), key=lambda r: chain[r.id])
    assert first.id == "extract/photo-colors/ssd_mobilenet_v2_coco"
    assert chain[first.id] == 10 + 100 + 10 + 10
    mean = (sum(v for v in seconds.values() if v is not None)) / (len(runs) - 1)
    assert chain["extract/shapes/mobilenet_v2_imagenet"] == pytest.approx(mean + 10 + 10 + 10)


def test_only_that_matches_no_run_is_an_error_not_a_silent_no_op():
    from conceptsim.run.study import load_study

    study = load_study("studies/default.yml")
    with pytest.raises(ValueError, match=r"stage=compare_layers model=pixels: no run of the study matches all of these "
                                         r"\(the runs with the other keys are of the stages \['concepts', 'extract'\]"):
        select(study.runs(), {"stage": "compare_layers", "model": "pixels"})
