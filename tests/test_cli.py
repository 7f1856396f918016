"""The `conceptsim` command line."""

from conceptsim.cli import main


def test_models_list(capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("ssd_mobilenet_v2_coco", "centernet_mobilenet_v3_coco", "mobilenet_v2_imagenet", "yolov5su",
                 "ssd300_vgg16", "fasterrcnn_resnet50_fpn"):
        assert name in out


def test_models_layers_prints_relative_depth(capsys):
    assert main(["models", "layers", "mobilenet_v2_imagenet:random"]) == 0
    out = capsys.readouterr().out
    assert "52 Conv2d modules executed" in out
    line = next(x for x in out.splitlines() if x.startswith("features.18 "))
    assert line.split()[-1] == "1.000" and "(1280, 7, 7)" in line


def test_bad_inputs_exit_2_with_a_message(capsys, tmp_path):
    assert main(["run", str(tmp_path / "missing.yml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["models", "layers", "resnet9000"]) == 2
    assert "unknown model" in capsys.readouterr().err
    bad = tmp_path / "bad.yml"
    bad.write_text("name: x\ndatasets: {shapes: {}}\nmodels: [mobilenet_v2_imagenet]\nconcepts: {epochs: many}\n")
    assert main(["run", str(bad)]) == 2
    assert "concepts.epochs" in capsys.readouterr().err
    assert main(["run", "studies/default.yml", "--only", "colour"]) == 2
