"""Every problem of a study file is listed at once, each naming the key the user wrote and what is accepted."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conceptsim.run.study import StudyError, load_study, parse_study

SHAPES = {"shapes": {"build": {"n": 20, "size": 48}}}


def problems_of(raw: dict, smoke: bool = False) -> str:
    with pytest.raises(StudyError) as err:
        parse_study(raw, Path("bad.yml"), smoke)
    return str(err.value)


def test_every_declared_models_problem_is_listed():
    msg = problems_of({"name": "t", "datasets": SHAPES, "models": [
        {"mine": {"torchvision": "resnet999"}},
        {"other": {"python": "nosuchpkg.mod:build"}},
        {"third": {"torchvision": "resnet18", "input_size": -3}},
        {"fourth": {"torchvision": "resnet18", "colour": "red"}},
        "mine:random",  # the twin of a model whose own problem is listed: not also an "unknown model"
    ]})
    assert msg.startswith("bad.yml: 4 problems:"), msg
    for words in ("'models.mine.torchvision': 'resnet999' is not a torchvision model",
                  "'models.other': python builder 'nosuchpkg.mod:build': cannot import",
                  "'models.third.input_size' must be a positive integer, got -3",
                  "unknown key(s) ['colour'] in 'models.fourth'"):
        assert words in msg
    assert "unknown model" not in msg


def test_a_declared_model_declared_twice_and_a_bad_entry_are_listed_with_the_rest():
    msg = problems_of({"name": "t", "datasets": SHAPES, "models": [
        {"a": {"torchvision": "resnet18"}}, {"a": {"torchvision": "resnet18"}}, 5,
        {"b": {"torchvision": "resnet999"}}]})
    assert "3 problems" in msg
    assert "'models' declares 'a' twice" in msg and "got 5" in msg and "'models.b.torchvision'" in msg


def test_device_and_layer_problems_are_listed_together(project, monkeypatch):
    import torch

    from conceptsim.run.preflight import check_inputs

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = project / "s.yml"
    path.write_text(yaml.safe_dump({"name": "t", "datasets": SHAPES, "models": ["mobilenet_v2_imagenet:random"],
                                    "device": "cuda", "layers": {"mobilenet_v2_imagenet:random": ["features.99"]}}))
    with pytest.raises(StudyError) as err:
        check_inputs(load_study(path))
    msg = str(err.value)
    assert "2 problems (nothing was started)" in msg
    # the top-level key the user wrote is named, not the extraction.device it stands for
    assert "'device' is 'cuda' but CUDA is not available here" in msg and "'extraction.device'" not in msg
    assert "in 'layers.mobilenet_v2_imagenet:random': layer 'features.99' is not a module" in msg


def test_extraction_device_keeps_its_name_and_a_smoke_device_is_named_so(project, monkeypatch):
    import torch

    from conceptsim.run.preflight import check_inputs

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    raw = {"name": "t", "datasets": SHAPES, "models": ["mobilenet_v2_imagenet:random"]}
    for extra, smoke, key in (({"extraction": {"device": "cuda"}}, False, "'extraction.device'"),
                              ({"smoke": {"device": "cuda"}}, True, "'smoke.device'"),
                              ({"smoke": {"extraction": {"device": "cuda"}}}, True, "'smoke.extraction.device'")):
        path = project / "s.yml"
        path.write_text(yaml.safe_dump({**raw, **extra}))
        with pytest.raises(StudyError, match=f"{key} is 'cuda' but CUDA is not available here"):
            check_inputs(load_study(path, smoke=smoke))


def test_every_models_unknown_layers_are_listed(project):
    from conceptsim.run.preflight import validate_layers

    path = project / "s.yml"
    path.write_text(yaml.safe_dump({
        "name": "t", "datasets": SHAPES, "models": ["mobilenet_v2_imagenet", "mobilenet_v2_imagenet:random"],
        "layers": {"mobilenet_v2_imagenet": ["features.99"], "mobilenet_v2_imagenet:random": ["features.98"]}}))
    with pytest.raises(StudyError) as err:
        validate_layers(load_study(path))
    msg = str(err.value)
    assert "2 problems" in msg and "'features.99'" in msg and "'features.98'" in msg


def test_coco_icons_styles_and_categories_are_checked_when_the_study_is_loaded(capsys):
    msg = problems_of({"name": "t", "models": ["mobilenet_v2_imagenet:random"], "datasets": {
        "coco-icons": {"build": {"n": 12, "size": 64, "styles": ["notastyle", "noto"], "categories": ["unicorn"]}}}})
    assert msg.startswith("bad.yml: 2 problems:"), msg
    assert "'datasets.coco-icons.build.styles' names ['notastyle'], which coco-icons does not have; accepted: " \
           "a non-empty list of distinct names among ['fluent-modern'" in msg
    assert "'datasets.coco-icons.build.categories' names ['unicorn'], which coco-icons does not have" in msg
    assert "'teddy bear'" in msg
    assert "building dataset" not in capsys.readouterr().out
    msg = problems_of({"name": "t", "models": ["mobilenet_v2_imagenet:random"], "datasets": {
        "coco-icons": {"build": {"styles": ["noto", "noto"], "categories": []}}}})
    assert "'datasets.coco-icons.build.styles' names ['noto'] more than once" in msg
    assert "'datasets.coco-icons.build.categories' is []; accepted: a non-empty list" in msg


def test_good_coco_icons_selection_is_accepted():
    study = parse_study({"name": "t", "models": ["mobilenet_v2_imagenet:random"], "datasets": {
        "coco-icons": {"build": {"styles": ["noto", "twemoji"], "categories": ["cat", "dog"]}}}})
    assert study.datasets["coco-icons"]["build"]["styles"] == ["noto", "twemoji"]


def test_split_values_in_both_test_and_val_are_named():
    msg = problems_of({"name": "t", "models": ["mobilenet_v2_imagenet:random"], "datasets": {
        "coco-icons": {"split": {"by": "style", "test": ["noto"], "val": ["noto"]}}}})
    assert "'datasets.coco-icons.split': style value(s) ['noto'] are in both test and val; accepted: 'random'" in msg


def test_unknown_keys_of_the_smoke_section_are_named_under_smoke():
    raw = {"name": "t", "datasets": SHAPES, "models": ["mobilenet_v2_imagenet:random"], "concepts": {"epochx": 2},
           "smoke": {"concepts": {"epochz": 1, "lr": -1}, "datasets": {"shapes": {"build": {"nn": 3}}}}}
    msg = problems_of(raw, smoke=True)
    assert "unknown key(s) ['epochz'] in 'smoke.concepts'; accepted keys:" in msg
    assert "unknown key(s) ['epochx'] in 'concepts'; accepted keys:" in msg  # the study's own key keeps its name
    assert "unknown key(s) ['nn'] in 'smoke.datasets.shapes.build'" in msg
    assert "'smoke.concepts.lr' is -1" in msg
    raw = {**raw, "concepts": {"epochs": 0}, "smoke": {"concepts": {"lr": 0.1}}}
    assert "'concepts.epochs' is 0" in problems_of(raw, smoke=True)  # not smoke.concepts.epochs


def test_a_split_rule_names_its_wrong_part():
    def split_problems(split):
        return problems_of({"name": "t", "models": ["mobilenet_v2_imagenet:random"],
                            "datasets": {"coco-icons": {"split": split}}})

    assert "'datasets.coco-icons.split.test' must be a list of style values, got 3; accepted: 'random'" \
        in split_problems({"by": "style", "test": 3})  # was a TypeError in the style check
    assert "'datasets.coco-icons.split.by' must name an image field" in split_problems({"test": ["noto"]})
