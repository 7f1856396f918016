"""Models declared in a study file: each kind builds, reads its preprocessing, has a twin, default layers,
hashes and loads weights safely; bad specs name the key."""

from __future__ import annotations

import textwrap

import pytest
import torch

from conceptsim.cli import main
from conceptsim.models import registry
from conceptsim.models.registry import PretrainedWeightsUnavailable, build_model
from conceptsim.models.twins import TWIN_INIT_VERSION
from conceptsim.models.user_models import (
    UserModelError,
    auto_layers,
    choose_layers,
    declared_model_specs,
    layer_candidates,
    parse_model_arg,
    parse_spec,
    weights_record,
)
from formats import TINY_YOLO, write_python_model

pytestmark = pytest.mark.usefixtures("one_thread")


def declare(models: dict, name: str, spec: dict):
    """Add a declared model to ``models`` (the ``user_models`` passed to ``build_model``); return its spec."""
    models.update(declared_model_specs({name: spec}))
    return models[name]


# ----------------------------------------------------------------------------------------- torchvision
def test_torchvision_name_twin_layers_and_weights(tmp_path):
    models: dict = {}
    spec = parse_spec("my_resnet", {"torchvision": "resnet18", "num_classes": 5, "input_size": 64})
    s = declare(models, "my_resnet", spec)
    assert s.preprocessing.size == (64, 64) and s.preprocessing.mean == registry.IMAGENET_MEAN
    assert s.default_layers == ("maxpool", "layer1", "layer2", "layer3", "layer4")  # stem and stage outputs
    twin = build_model("my_resnet:random", user_models=models)
    assert twin.module.fc.out_features == 5 and twin.weights_sha256 == f"random-init-v{TWIN_INIT_VERSION}-seed-0"
    # no weights file: randomly initialised, deterministically, and the hash says so
    plain = build_model("my_resnet", user_models=models)
    assert plain.weights_sha256.startswith("random-init") and "no weights file" in plain.weights_sha256
    assert weights_record(spec) == "none (random init, seed 0)"
    # a state_dict saved by the user loads with weights_only and is hashed
    trained = {k: v + 1.0 if v.is_floating_point() else v for k, v in twin.module.state_dict().items()}
    torch.save(trained, tmp_path / "w.pth")
    spec_w = parse_spec("my_resnet_w", {"torchvision": "resnet18", "num_classes": 5, "input_size": 64,
                                        "weights": "w.pth"}, base_dir=tmp_path)
    declare(models, "my_resnet_w", spec_w)
    loaded = build_model("my_resnet_w", user_models=models)
    assert torch.equal(loaded.module.state_dict()["fc.weight"], trained["fc.weight"])
    from conceptsim.atomic import sha256_file

    assert loaded.weights_sha256 == sha256_file(tmp_path / "w.pth") == weights_record(spec_w).split()[-1]


def test_torchvision_detector_preprocessing_from_its_transform():
    models: dict = {}
    s = declare(models, "my_ssdlite", parse_spec("my_ssdlite", {"torchvision": "ssdlite320_mobilenet_v3_large", "num_classes": 3}))
    prep = s.preprocessing
    assert prep.size == (320, 320) and prep.mean == (0.5, 0.5, 0.5) and prep.std == (0.5, 0.5, 0.5)
    assert s.task == "detector" and all(n.startswith("backbone.") for n in s.default_layers)


def test_weights_that_do_not_fit_or_are_pickles_name_the_key(tmp_path):
    models: dict = {}
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "pickled.pth")  # a whole module: not weights_only-loadable
    for f, match in (("other.pth", "does not fit the model"), ("pickled.pth", "weights_only=True")):
        declare(models, "m", parse_spec("m", {"torchvision": "resnet18", "weights": f}, base_dir=tmp_path))
        with pytest.raises(UserModelError, match=match) as err:
            build_model("m", user_models=models)
        assert "'weights'" in str(err.value) and f in str(err.value)


@pytest.mark.parametrize("raw, match", [
    ({"tensorflow": "x"}, r"'models.bad' must have exactly one of the keys"),
    ({"torchvision": "resnet18", "python": "a:b"}, "exactly one of the keys"),
    ({"torchvision": "resnet18", "colour": 1}, r"unknown key\(s\) \['colour'\] in 'models.bad'"),
    ({"torchvision": "resnet_18"}, r"'models.bad.torchvision': 'resnet_18' is not a torchvision model.*did you mean"),
    ({"torchvision": "resnet18", "weights": "missing.pth"}, r"'models.bad.weights': file .*missing.pth does not exist"),
    ({"torchvision": "resnet18", "num_classes": "7"}, r"'models.bad.num_classes' must be a positive integer"),
    ({"python": "mynets.tiny"}, r"'models.bad.python' must be 'package.module:function'"),
    ({"ultralytics": "nothing.pt"}, r"'models.bad.ultralytics': file .* does not exist"),
    ("resnet18", r"'models.bad' must be a mapping"),
])
def test_bad_specs_name_the_key(raw, match, tmp_path):
    with pytest.raises(UserModelError, match=match):
        parse_spec("bad", raw, base_dir=tmp_path)


def test_registry_names_cannot_be_redeclared():
    from conceptsim.models.user_models import declared_models

    with pytest.raises(UserModelError, match="is a registry model"):
        declared_models([{"yolov8n": {"torchvision": "resnet18"}}])


# ----------------------------------------------------------------------------------------- ultralytics
def test_ultralytics_yaml_and_checkpoint_behind_the_trust_setting(tmp_path, monkeypatch):
    models: dict = {}
    (tmp_path / "tiny.yaml").write_text(TINY_YOLO)
    s = declare(models, "tiny_yolo", parse_spec("tiny_yolo", {"ultralytics": "tiny.yaml", "input_size": 60}, base_dir=tmp_path))
    prep = s.preprocessing
    assert prep.resize == "letterbox" and prep.size == (64, 64)  # rounded up to the stride (16)
    assert s.default_layers == tuple(f"model.{i}" for i in range(7))
    yolo = build_model("tiny_yolo", user_models=models)
    assert yolo.weights_sha256.startswith("random-init")
    # a checkpoint written by ultralytics itself
    from ultralytics import YOLO

    torch.manual_seed(1)
    YOLO(str(tmp_path / "tiny.yaml")).save(str(tmp_path / "best.pt"))
    declare(models, "my_yolo", parse_spec("my_yolo", {"ultralytics": "best.pt", "input_size": 64}, base_dir=tmp_path))
    monkeypatch.delenv("CONCEPTSIM_TRUST_ULTRALYTICS_CHECKPOINTS", raising=False)
    with pytest.raises(PretrainedWeightsUnavailable, match="sha256sum .*best.pt.*CONCEPTSIM_TRUST_ULTRALYTICS_CHECKPOINTS=1"):
        build_model("my_yolo", user_models=models)
    monkeypatch.setenv("CONCEPTSIM_TRUST_ULTRALYTICS_CHECKPOINTS", "1")
    trained, twin = build_model("my_yolo", user_models=models), build_model("my_yolo:random", user_models=models)
    from conceptsim.atomic import sha256_file

    assert trained.weights_sha256 == sha256_file(tmp_path / "best.pt")
    w = "model.0.conv.weight"
    assert trained.module.state_dict()[w].shape == twin.module.state_dict()[w].shape
    assert not torch.equal(trained.module.state_dict()[w].float(), twin.module.state_dict()[w].float())


# ----------------------------------------------------------------------------------------- python
def test_python_builder_preprocessing_weights_and_errors(tmp_path):
    models: dict = {}
    write_python_model(tmp_path)
    s = declare(models, "tiny", parse_spec("tiny", {"python": "mynets.tiny:build"}, base_dir=tmp_path))
    prep = s.preprocessing
    assert prep.size == (40, 40) and prep.resize == "letterbox" and prep.mean == (0.5, 0.5, 0.5)
    assert s.default_layers == ("1", "2", "3", "4")  # after the first ReLU, then each block
    twin = build_model("tiny:random", user_models=models)
    torch.save(twin.module.state_dict(), tmp_path / "tiny.pth")
    declare(models, "tiny_w", parse_spec("tiny_w", {"python": "mynets.tiny:build", "weights": "tiny.pth", "input_size": 32},
                                  base_dir=tmp_path))
    loaded = build_model("tiny_w", user_models=models)
    assert loaded.preprocessing.size == (32, 32) and len(loaded.weights_sha256) == 64
    declare(models, "nomod", parse_spec("nomod", {"python": "mynets.tiny:not_a_module"}, base_dir=tmp_path))
    with pytest.raises(UserModelError, match="returned int, not an nn.Module"):
        build_model("nomod", user_models=models)
    declare(models, "noimp", parse_spec("noimp", {"python": "yournets.tiny:build"}, base_dir=tmp_path))
    with pytest.raises(UserModelError, match="cannot import 'yournets.tiny'"):
        build_model("noimp", user_models=models)


def test_python_builder_module_preprocessing_is_read_and_the_network_one_wins(tmp_path):
    # the README's way: a `preprocessing` attribute of the builder's module (once ignored: 224 x 224)
    (tmp_path / "modprep_nets.py").write_text(textwrap.dedent("""\
        from torch import nn
        preprocessing = {"size": [48, 32], "resize": "letterbox"}
        def build():
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
        def build_own():
            net = build()
            net.preprocessing = {"size": [24, 24]}
            return net
        """))
    (tmp_path / "modprep_bad.py").write_text("from torch import nn\npreprocessing = {'size': 128}\n"
                                             "def build():\n    return nn.Conv2d(3, 4, 3)\n")
    models: dict = {}
    prep = declare(models, "modprep", parse_spec("modprep", {"python": "modprep_nets:build"}, base_dir=tmp_path)).preprocessing
    assert prep.size == (48, 32) and prep.resize == "letterbox"
    own = declare(models, "modprep_own", parse_spec("modprep_own", {"python": "modprep_nets:build_own"},
                                                    base_dir=tmp_path)).preprocessing
    assert own.size == (24, 24) and own.resize == "letterbox"  # the network's fields win, the module's fill in
    bad = declare(models, "modprep_bad", parse_spec("modprep_bad", {"python": "modprep_bad:build"}, base_dir=tmp_path))
    with pytest.raises(UserModelError, match=r"module modprep_bad\): preprocessing 'size' must be \[H, W\]"):
        bad.preprocessing


# ----------------------------------------------------------------------------------------- layers
def test_layer_choice_auto_pattern_and_list():
    models: dict = {}
    net = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Conv2d(3 if i == 0 else 4, 4, 3, padding=1), torch.nn.ReLU())
                                for i in range(12)])
    cands = layer_candidates(net, torch.zeros(1, 3, 16, 16))
    assert [c[1] for c in cands] == sorted(c[1] for c in cands)
    assert auto_layers(cands, n=4) == ["0", "4", "7", "11"]  # block outputs, evenly spread over 12 convolutions
    assert auto_layers(cands, n=30) == [str(i) for i in range(12)]
    s = declare(models, "tv", parse_spec("tv", {"torchvision": "resnet18", "input_size": 64}))
    module = build_model("tv:random", user_models=models).module
    assert choose_layers(s, module, "layer*.0") == ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]
    below = choose_layers(s, module, "layer4.**")
    assert below[0] == "layer4.0.conv1" and below[-1] == "layer4.1" and "layer4.0.downsample.0" in below
    assert all(n.startswith("layer4.") for n in below)
    assert choose_layers(s, module, ["layer2"]) == ["layer2"]
    # character classes, as in the shell: one character of one name part
    assert choose_layers(s, module, "layer[13].0") == ["layer1.0", "layer3.0"]
    assert choose_layers(s, module, "layer[!1-3].1") == ["layer4.1"]
    assert choose_layers(s, module, None) == list(s.default_layers)
    with pytest.raises(UserModelError, match="matches no module"):
        choose_layers(s, module, "head.*")


# ----------------------------------------------------------------------------------------- CLI
def test_models_inspect_prints_the_layer_table_for_a_spec(capsys):
    assert main(["models", "inspect", "my_net: {torchvision: resnet18, input_size: 64}"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("my_net: 20 Conv2d modules executed; input (64, 64) (stretch); weights: random-init")
    assert "rel. depth" in out[1] and len(out) == 2 + 5
    assert out[-1].split()[0] == "layer4" and out[-1].split()[-1] == "1.000"
    assert main(["models", "inspect", "{torchvision: resnet18, input_size: 64}", "--layers", "layer?"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]] == [f"layer{i}" for i in range(1, 5)]
    assert main(["models", "inspect", "{torchvision: resnet_18}"]) == 2
    assert "'model.user_model.torchvision': 'resnet_18' is not a torchvision model" in capsys.readouterr().err


def test_parse_model_arg_keeps_registry_names():
    assert parse_model_arg("yolov8n:random") == ("yolov8n:random", None)
    name, spec = parse_model_arg("{torchvision: resnet18}")
    assert name == "user_model" and spec == {"torchvision": "resnet18"}


def test_parse_model_arg_reads_a_one_key_mapping_of_a_kind_as_a_spec():
    # the README's `{small_cnn: {cue: 0.5, seed: 1}}` was once read as a model named small_cnn, and rejected
    name, spec = parse_model_arg("{small_cnn: {cue: 0.5, seed: 1}}")
    assert name == "user_model" and spec["small_cnn"]["cue"] == 0.5 and spec["small_cnn"]["seed"] == 1
    name, spec = parse_model_arg("my_cnn: {small_cnn: {cue: 0.5, seed: 1}}")
    assert name == "my_cnn" and spec["small_cnn"]["seed"] == 1


# ----------------------------------------------------------------------------------------- study
def test_study_declares_models_twins_layers_and_device(tmp_path):
    import torchvision

    from conceptsim.run.study import StudyError, load_study

    write_python_model(tmp_path)
    (tmp_path / "tiny.yaml").write_text(TINY_YOLO)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet.pth")
    text = textwrap.dedent("""\
        name: mine
        datasets: {shapes: {}}
        models:
          - my_resnet: {torchvision: resnet18, input_size: 64, weights: resnet.pth}
          - my_resnet:random
          - my_yolo: {ultralytics: tiny.yaml}
          - my_net: {python: "mynets.tiny:build"}
        layers: {my_yolo: "model.*", my_net: auto}
        device: cpu
        """)
    (tmp_path / "s.yml").write_text(text)
    study = load_study(tmp_path / "s.yml")
    assert study.models == ["my_resnet", "my_resnet:random", "my_yolo", "my_net"] and study.device == "cpu"
    ex = {r.id: r.parameters for r in study.runs() if r.stage == "extract"}
    assert ex["extract/shapes/my_resnet:random"]["model_spec"] == {"torchvision": "resnet18", "input_size": 64,
                                                                   "weights": str(tmp_path / "resnet.pth")}
    assert ex["extract/shapes/my_yolo"]["model_spec"]["ultralytics"] == str(tmp_path / "tiny.yaml")
    assert ex["extract/shapes/my_yolo"]["layers"] == "model.*"
    co = {r.id: r.parameters for r in study.runs() if r.stage == "concepts"}
    assert co["concepts/shapes/my_resnet"]["random_twin"] == "my_resnet:random"
    for bad, match in (
        (text.replace("  - my_resnet:random\n", "  - other:random\n"), "unknown model 'other:random'"),
        (text.replace("input_size: 64,", "input_size: 64, colour: red,"), r"unknown key\(s\) \['colour'\] in 'models.my_resnet'"),
        (text.replace("device: cpu", "device: gpu"), "'device' is 'gpu'; accepted: cpu, cuda"),
        (text.replace(", weights: resnet.pth}", "}"), r"'my_resnet:random' is the random-init twin of 'my_resnet', which is "
                                                      r"declared without weights"),
        (text.replace("device: cpu", "device: cpu\nextraction: {device: cuda}"), "'device' .* and 'extraction.device' .* differ"),
    ):
        (tmp_path / "bad.yml").write_text(bad)
        with pytest.raises(StudyError, match=match):
            load_study(tmp_path / "bad.yml")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the guard where CUDA is absent")
def test_cuda_asked_for_and_absent_stops_before_any_run(tmp_path):
    from conceptsim import pipeline
    from conceptsim.run.preflight import check_inputs
    from conceptsim.run.study import StudyError, load_study

    (tmp_path / "s.yml").write_text("name: g\ndatasets: {shapes: {}}\nmodels: [mobilenet_v2_imagenet]\ndevice: cuda\n")
    study = load_study(tmp_path / "s.yml")
    assert {r.parameters.get("device") for r in study.runs() if r.stage == "concepts"} == {"cuda"}
    with pytest.raises(StudyError, match="'device' is 'cuda' but CUDA is not available here"):
        check_inputs(study)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        pipeline.run_concepts("g", "shapes", "m", "", {}, "cuda", 0)


def test_reproducibility_page_lists_declared_models_and_hashes(tmp_path):
    from conceptsim.atomic import sha256_file
    from conceptsim.book.reporting import write_reproducibility_page
    from conceptsim.run.study import load_study

    torch.save({"w": torch.ones(2)}, tmp_path / "w.pth")
    (tmp_path / "s.yml").write_text(
        "name: r\ndatasets: {shapes: {}}\nmodels:\n  - a: {torchvision: resnet18, weights: w.pth}\n"
        "  - b: {torchvision: resnet18}\n")
    page = write_reproducibility_page(load_study(tmp_path / "s.yml"), [], tmp_path / "r.md").read_text()
    section = page.split("## Models declared in the study file")[1].split("## Environment")[0]
    assert f"sha256 {sha256_file(tmp_path / 'w.pth')}" in section and "`a`" in section
    assert "| `b` | random init (no weights) | none (random init, seed 0) |" in section
    assert f"weights: {tmp_path / 'w.pth'}" in section


def test_a_model_without_weights_is_random_init_has_no_twin_and_is_left_out_of_finding1(tmp_path, monkeypatch):
    from conceptsim.book.findings import models_left_out_of_finding1
    from conceptsim.book.reporting import page_title
    from conceptsim.models.user_models import NO_WEIGHTS_LABEL, model_listing, read_model_listing, write_model_listing
    from conceptsim.run.study import parse_study

    study = parse_study({"name": "mine", "datasets": {"shapes": {}}, "models": [
        "mobilenet_v2_imagenet", "mobilenet_v2_imagenet:random", {"my_resnet": {"torchvision": "resnet18", "input_size": 64}}]})
    listing = model_listing(study.models, study.model_specs)
    assert listing["my_resnet"]["trained"] is False and listing["my_resnet"]["label"] == NO_WEIGHTS_LABEL
    assert listing["my_resnet"]["in_finding1"] is False and "without weights" in listing["my_resnet"]["exclusion_reason"]
    assert listing["mobilenet_v2_imagenet"] == {"model": "mobilenet_v2_imagenet", "trained": True, "label": "trained",
                                                "twin_of": None, "in_finding1": True, "exclusion_reason": None}
    assert listing["mobilenet_v2_imagenet:random"]["label"] == "random-init twin"
    co = {r.id: r.parameters for r in study.runs() if r.stage == "concepts"}
    assert co["concepts/shapes/my_resnet"]["random_twin"] == ""  # no twin run
    monkeypatch.setenv("CONCEPTSIM_RESULTS", str(tmp_path / "results"))
    assert read_model_listing("mine") == {}
    write_model_listing("mine", study.models, study.model_specs)
    assert read_model_listing("mine") == listing
    titles = {r.id: page_title(r, study.model_specs) for r in study.runs()}
    assert titles["extract/shapes/my_resnet"] .endswith(f": my_resnet, {NO_WEIGHTS_LABEL} on shapes")
    assert NO_WEIGHTS_LABEL not in titles["extract/shapes/mobilenet_v2_imagenet"]
    note = models_left_out_of_finding1(study)
    assert "`my_resnet` (random init (no weights)): declared without weights" in note and "mobilenet" not in note


# ----------------------------------------------------------------------------------------- one process, two studies
def test_two_studies_in_one_process_see_only_their_own_declared_models(tmp_path, monkeypatch):
    """A declared model lives in its study, not in the process: two extractions in one process (a warm kernel)
    that declare different models under the same name each build their own, and afterwards the name resolves
    to nothing (before, the first study's model stayed registered for every later run)."""
    from conceptsim import pipeline
    from conceptsim.extraction.store import ActivationStore
    from conceptsim.models.registry import UnknownModelError, parse_model_name

    monkeypatch.setenv("CONCEPTSIM_RESULTS", str(tmp_path / "results"))
    write_python_model(tmp_path)
    specs = {"study_a": parse_spec("net", {"python": "mynets.tiny:build", "input_size": 32}, base_dir=tmp_path),
             "study_b": parse_spec("net", {"torchvision": "resnet18", "num_classes": 3, "input_size": 32})}
    split = {"fractions": [0.5, 0.25, 0.25], "seed": 0, "min_area": 0.005}
    extraction = {"device": "cpu", "eval_grid": 8, "max_layers": 2, "batch_size": 4, "num_workers": 0, "grid_cap": 4,
                  "dtype": "float16", "compression": "none"}
    layers = {}
    for study, spec in specs.items():
        result, loaded, _ = pipeline.run_extraction(study, "shapes", "net", [], {"build": {"n": 6, "size": 32, "seed": 1}},
                                                    split, extraction, seed=0, model_spec=spec)
        store = ActivationStore(result.path)
        assert store.attrs["model_spec"] == spec and loaded.spec.family == f"user:{next(iter(spec.keys() & {'python', 'torchvision'}))}"
        layers[study] = store.layer_names
        with pytest.raises(UnknownModelError, match="unknown model 'net'"):
            parse_model_name("net")  # nothing was left behind in the process
    assert layers["study_a"] != layers["study_b"]  # the tiny net's layers, then resnet18's
    assert all(n.startswith("layer") or n == "maxpool" for n in layers["study_b"])


def test_a_study_accepts_the_same_layer_globs_as_the_command_line(tmp_path):
    from conceptsim.models.user_models import is_layer_pattern
    from conceptsim.run.study import parse_study

    assert is_layer_pattern("features.[12]") and is_layer_pattern("layer*") and not is_layer_pattern("features.1")
    study = parse_study({"name": "g", "datasets": {"shapes": {}}, "models": ["mobilenet_v2_imagenet"],
                         "layers": {"mobilenet_v2_imagenet": "features.[12]"}})
    assert study.layers["mobilenet_v2_imagenet"] == "features.[12]"


def test_a_model_without_a_python_builder_keeps_its_networks_preprocessing():
    # preprocessing_of read the spec's `python` key for every kind (KeyError for a small CNN)
    import torch.nn as nn

    from conceptsim.data.geometry import Preprocessing
    from conceptsim.models.user_models import preprocessing_of

    net = nn.Conv2d(3, 4, 3)
    net.preprocessing = Preprocessing(size=(64, 64), resize="stretch", scale=1 / 255.0)
    assert preprocessing_of({"small_cnn": {"cue": 0.5, "seed": 1}}, net).size == (64, 64)
