"""Study files are validated before anything runs, and expand into the documented runs."""

from pathlib import Path

import pytest
import yaml

from conceptsim.models.names import PIXELS_MODEL, is_twin, twin_name, twin_names
from conceptsim.run.study import StudyError, load_study, parse_study

ROOT = Path(__file__).resolve().parents[1]


def minimal(**over):
    raw = {"name": "t", "datasets": {"shapes": {}}, "models": ["mobilenet_v2_imagenet", "mobilenet_v2_imagenet:random"]}
    raw.update(over)
    return raw


def test_default_and_paper_studies_are_valid():
    default = load_study(ROOT / "studies" / "default.yml")
    assert set(default.datasets) == {"shapes", "photo-colors", "coco-icons"}
    assert default.datasets["coco-icons"]["split"] == {"by": "style", "test": ["noto"], "val": ["twemoji"]}
    trained = [m for m in default.models if not is_twin(m) and m != PIXELS_MODEL]
    assert len(trained) == 3 and all(set(twin_names(m, 3)) <= set(default.models) for m in trained)
    assert PIXELS_MODEL in default.models and PIXELS_MODEL in load_study(ROOT / "studies" / "default.yml", smoke=True).models
    smoke = load_study(ROOT / "studies" / "default.yml", smoke=True)  # one twin seed per model
    assert {m for m in smoke.models if is_twin(m)} == {twin_name(m) for m in trained}
    paper = load_study(ROOT / "studies" / "paper.yml")
    assert {"yolov5su", "ssd300_vgg16", "fasterrcnn_resnet50_fpn"} <= set(paper.models)


@pytest.mark.parametrize("path", sorted((ROOT / "studies").glob("*.yml")), ids=lambda p: p.name)
def test_every_shipped_study_is_valid(path):
    """Every study file the project ships loads, and expands into runs."""
    study = load_study(path)
    assert study.name == path.stem and study.datasets and study.models and study.runs()


def test_coco_icons_single_is_the_default_coco_icons_in_mode_single():
    """The composition study changes the default study's coco-icons in its mode only (the dataset page reads
    its object-concept IoU beside the default study's)."""
    default, single = load_study(ROOT / "studies" / "default.yml"), load_study(ROOT / "studies" / "coco-icons-single.yml")
    want = yaml.safe_load(yaml.safe_dump(default.datasets["coco-icons"]))
    want["build"]["mode"] = "single"
    assert single.datasets == {"coco-icons": want}
    assert set(single.models) <= set(default.models)
    for section in ("extraction", "concepts", "comparison", "split"):
        assert single.sections[section] == default.sections[section], section
    assert single.layers == default.layers


def test_smoke_merges_overrides_and_renames():
    s = load_study(ROOT / "studies" / "default.yml", smoke=True)
    assert s.name == "default-smoke"
    assert s.sections["concepts"]["epochs"] < 30
    assert s.sections["extraction"]["max_layers"] > 0
    assert s.datasets["shapes"]["build"]["n"] < 1200


def test_runs_and_dependencies():
    s = parse_study(minimal())
    runs = {r.id: r for r in s.runs()}
    assert set(runs) == {
        "extract/shapes/mobilenet_v2_imagenet", "concepts/shapes/mobilenet_v2_imagenet",
        "extract/shapes/mobilenet_v2_imagenet:random", "concepts/shapes/mobilenet_v2_imagenet:random",
        "compare_layers/shapes", "compare_models/shapes",
    }
    trained = runs["concepts/shapes/mobilenet_v2_imagenet"]
    assert "concepts/shapes/mobilenet_v2_imagenet:random" in trained.depends_on
    assert trained.parameters["random_twin"] == "mobilenet_v2_imagenet:random"
    assert set(runs["compare_layers/shapes"].depends_on) == {
        "concepts/shapes/mobilenet_v2_imagenet", "concepts/shapes/mobilenet_v2_imagenet:random"}
    # a stage only sees its own options, so changing concept options cannot invalidate an extraction
    assert "concept_options" not in runs["extract/shapes/mobilenet_v2_imagenet"].parameters


@pytest.mark.parametrize(
    "raw, words",
    [
        (minimal(colour="red"), ["unknown key", "colour", "accepted keys"]),
        (minimal(datasets={"imagenet": {}}), ["unknown dataset", "imagenet", "shapes"]),
        (minimal(models=["resnet9000"]), ["unknown model", "resnet9000", "known models"]),
        (minimal(concepts={"epochs": "ten"}), ["concepts.epochs", "int"]),
        (minimal(concepts={"loss": "hinge"}), ["concepts.loss", "balanced_bce"]),
        (minimal(extraction={"batchsize": 4}), ["unknown key", "batchsize", "batch_size"]),
        (minimal(split={"fractions": [0.5, 0.5, 0.5]}), ["split.fractions"]),
        (minimal(layers={"yolov8n": ["model.1"]}), ["layers", "yolov8n"]),
        (minimal(datasets={"shapes": {"max_images": -3}}), ["max_images"]),
        (minimal(datasets={"coco-icons": {"split": {"by": "style", "holdout": ["noto"]}}}),
         ["datasets.coco-icons.split", "holdout", "test: [values]"]),
        (minimal(datasets={"coco-icons": {"split": "by-style"}}), ["datasets.coco-icons.split", "random"]),
        (minimal(datasets={"photo-colors": {"bootstrap_by": 3}}), ["datasets.photo-colors.bootstrap_by"]),
        ({"name": "t", "models": ["yolov8n"]}, ["missing required key", "datasets"]),
    ],
)
def test_bad_study_is_rejected_naming_the_key(raw, words):
    with pytest.raises(StudyError) as err:
        parse_study(raw, Path("bad.yml"))
    msg = str(err.value)
    assert "bad.yml" in msg
    for w in words:
        assert w in msg


def test_unknown_layer_is_rejected_before_running(tmp_path):
    from conceptsim.run.preflight import validate_layers

    path = tmp_path / "s.yml"
    path.write_text(yaml.safe_dump(minimal(layers={"mobilenet_v2_imagenet": ["features.99"]})))
    with pytest.raises(StudyError, match=r"features\.99.*closest valid names"):
        validate_layers(load_study(path))


def test_missing_study_file():
    with pytest.raises(StudyError, match="does not exist"):
        load_study("nope.yml")


def test_every_problem_is_reported_at_once():
    raw = minimal(concepts={"epochs": 0, "lr": -1, "patience": -2}, extraction={"batch_size": 0, "device": "tpu"},
                  datasets={"shapes": {"build": {"n": 5, "colour": "red"}, "root": "/x"}})
    with pytest.raises(StudyError) as err:
        parse_study(raw, Path("bad.yml"))
    msg = str(err.value)
    assert msg.startswith("bad.yml: 7 problems:")
    for words in ("'concepts.epochs' is 0; accepted: an integer >= 1", "'concepts.lr' is -1; accepted: a number > 0",
                  "'concepts.patience' is -2; accepted: an integer >= 0", "'extraction.batch_size' is 0",
                  "'extraction.device' is 'tpu'; accepted: cpu, cuda, cuda:N", "unknown key(s) ['colour'] in 'datasets.shapes.build'",
                  "'datasets.shapes.root' does not apply"):
        assert words in msg


def test_duplicate_keys_are_rejected_at_any_depth(tmp_path):
    path = tmp_path / "s.yml"
    path.write_text("name: t\ndatasets:\n  shapes:\n    build: {n: 5, n: 6}\nmodels: [yolov8n:random]\n")
    with pytest.raises(StudyError, match=r"s.yml: not valid YAML at line 4, column 19: duplicate key 'n' \(first on line 4\)"):
        load_study(path)


def test_runs_receive_validated_parameters_with_defaults():
    s = parse_study(minimal(concepts={"epochs": 3}, extraction={"device": "cuda:1"}))
    co = next(r for r in s.runs() if r.stage == "concepts")
    assert co.parameters["concept_options"] == {"loss": "balanced_bce", "lr": 0.01, "epochs": 3, "patience": 5,
                                               "bootstrap": 1000, "dissection": True, "seg_solver": "reference",
                                               "cls_solver": "lbfgs"}
    assert co.parameters["device"] == "cuda:1"
def test_twin_seeds_are_models_of_the_study():
    models = ["mobilenet_v2_imagenet", "mobilenet_v2_imagenet:random", "mobilenet_v2_imagenet:random@1"]
    s = parse_study(minimal(models=models), Path("t.yml"))
    runs = {r.id: r for r in s.runs()}
    assert "extract/shapes/mobilenet_v2_imagenet:random@1" in runs
    assert runs["concepts/shapes/mobilenet_v2_imagenet"].parameters["random_twin"] == "mobilenet_v2_imagenet:random"
    assert runs["concepts/shapes/mobilenet_v2_imagenet:random@1"].parameters["random_twin"] == ""
    with pytest.raises(StudyError, match="random@SEED"):
        parse_study(minimal(models=["mobilenet_v2_imagenet:random@one"]), Path("t.yml"))


def test_twins_are_probed_at_their_architectures_layers():
    models = ["mobilenet_v2_imagenet", "mobilenet_v2_imagenet:random", "mobilenet_v2_imagenet:random@1"]
    s = parse_study(minimal(models=models, layers={"mobilenet_v2_imagenet": ["features.3", "features.6"],
                                                   "mobilenet_v2_imagenet:random@1": ["features.9"]}))
    layers = {r.model: r.parameters["layers"] for r in s.runs() if r.stage == "extract"}
    assert layers == {"mobilenet_v2_imagenet": ["features.3", "features.6"],
                      "mobilenet_v2_imagenet:random": ["features.3", "features.6"],
                      "mobilenet_v2_imagenet:random@1": ["features.9"]}  # its own entry wins


@pytest.mark.parametrize("smoke", [False, True])
def test_default_study_probes_shared_blocks_for_the_positive_control(smoke):
    """SSD-MobileNetV2 and MobileNetV2 (and each of their twins) are probed at >= 5 corresponding blocks
    (methods.md, "Testing the findings, third version"); in the smoke study at >= 2."""
    from conceptsim.models.registry import shared_blocks
    from conceptsim.pipeline import probed_layers

    s = load_study(ROOT / "studies" / "default.yml", smoke=smoke)
    probed = {r.model: probed_layers(r.model, r.parameters["layers"], s.sections["extraction"]["max_layers"])
              for r in s.runs() if r.stage == "extract" and r.dataset == "shapes"}
    ssd = [m for m in probed if m.startswith("ssd_mobilenet_v2_coco")]
    mobilenet = [m for m in probed if m.startswith("mobilenet_v2_imagenet")]
    assert len(ssd) == len(mobilenet) == (2 if smoke else 4)
    for a in ssd:
        for b in mobilenet:
            pairs = {(la, lb) for la, lb in shared_blocks(a, b).items() if la in probed[a] and lb in probed[b]}
            assert len(pairs) >= (2 if smoke else 5), (a, b, pairs)
