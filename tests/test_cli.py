"""The `conceptsim` command line."""
import pytest

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


def test_counts_and_sizes_must_be_positive(capsys):
    # `data summary --max-images -5` once dropped the last 5 images of each split, and 0 meant "all"
    for argv in (["data", "summary", "shapes", "--out", "s.csv", "--max-images", "-5"],
                 ["data", "summary", "shapes", "--out", "s.csv", "--max-images", "0"],
                 ["data", "build", "shapes", "--n", "0"], ["data", "build", "shapes", "--size", "-3"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and "expected a whole number >= 1" in capsys.readouterr().err


def test_a_bad_device_is_one_line_not_a_traceback(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device, said in (("cuda", "CUDA is not available"), ("gpu", "is not a device; expected 'cpu', 'cuda'")):
        assert main(["models", "layers", "pixels", "--device", device]) == 2
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_the_pixels_floor_is_listed_without_a_twin_and_has_nothing_to_fetch(capsys):
    assert main(["models", "list"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "weights: none (no weights)" in ln)
    assert "twin: none (no trained weights)" in line and "pixels:random" not in line
    assert main(["models", "fetch", "pixels"]) == 0
    assert "pixels: has no weights; nothing to fetch" in capsys.readouterr().out


def test_an_out_folder_that_cannot_be_made_is_named_before_any_work(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["data", "build", "shapes", "--smoke", "--out", str(blocker / "x")]) == 2
    assert f"--out {blocker / 'x'}: {blocker} is not a folder" in capsys.readouterr().err
    assert main(["data", "build", "shapes", "--smoke", "--out", str(blocker)]) == 2
    assert f"--out {blocker}: exists and is not a folder" in capsys.readouterr().err
