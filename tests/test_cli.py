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


def _no_work(monkeypatch):
    """Make building, reading or summarising a dataset fail the test: the checks must come first."""
    from conceptsim.data import registry, summary

    def work(*a, **k):
        raise AssertionError("the dataset was built or read before the command's arguments were checked")

    monkeypatch.setattr(registry, "ensure_dataset", work)
    monkeypatch.setattr(summary, "write_summary", work)


def test_data_summary_checks_its_outputs_before_any_work(capsys, tmp_path, monkeypatch):
    # `--out /proc/x.csv` once computed the summary, then failed naming an internal temporary file
    _no_work(monkeypatch)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["data", "summary", "shapes", "--smoke", "--out", str(blocker / "s.csv")]) == 2
    assert f"--out {blocker / 's.csv'}: {blocker} is not a folder" in capsys.readouterr().err
    assert main(["data", "summary", "shapes", "--smoke", "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path}: is a folder; expected a file path" in capsys.readouterr().err
    out = tmp_path / "s.csv"
    assert main(["data", "summary", "shapes", "--smoke", "--out", str(out), "--figure", str(blocker / "f.png")]) == 2
    assert f"--figure {blocker / 'f.png'}: {blocker} is not a folder" in capsys.readouterr().err
    # an unsupported figure format once exited after the CSV was written
    assert main(["data", "summary", "shapes", "--smoke", "--out", str(out), "--figure", str(tmp_path / "x.xyz")]) == 2
    err = capsys.readouterr().err
    assert f"--figure {tmp_path / 'x.xyz'}: figure format 'xyz' is not supported" in err and ".png" in err
    assert not out.exists()


def test_data_summary_of_an_unknown_name_lists_the_datasets(capsys, tmp_path, monkeypatch):
    # a misspelt dataset once read "shape: annotation file not found"
    _no_work(monkeypatch)
    monkeypatch.chdir(tmp_path)
    assert main(["data", "summary", "shape", "--out", "s.csv"]) == 2
    err = capsys.readouterr().err
    assert "shape: neither a dataset name (" in err and "shapes" in err and "coco-icons" in err
    assert "nor an existing COCO annotation file" in err and len(err.strip().splitlines()) == 1


def test_an_os_error_is_one_line_naming_the_path_with_the_traceback_in_a_log(capsys, tmp_path, monkeypatch):
    # a missing file or folder reported by the operating system once printed no log (unlike other OS errors)
    from pathlib import Path

    from conceptsim.data import registry, summary

    monkeypatch.setenv("CONCEPTSIM_CACHE", str(tmp_path / "cache"))
    gone = tmp_path / "gone" / "s.csv"

    def vanished(*a, **k):
        raise FileNotFoundError(2, "No such file or directory", str(gone))

    monkeypatch.setattr(registry, "ensure_dataset", lambda *a, **k: tmp_path / "annotations.json")
    monkeypatch.setattr(summary, "write_summary", vanished)
    assert main(["data", "summary", "shapes", "--out", str(tmp_path / "s.csv")]) == 1
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and line.startswith(f"conceptsim: error: {gone}: No such file or directory (traceback in ")
    log = Path(line.rsplit("(traceback in ", 1)[1].rstrip(")"))
    assert log.is_relative_to(tmp_path / "cache" / "logs") and "vanished" in log.read_text()

    def ours(*a, **k):  # the library's own "... does not exist" messages stay one line, without a log
        raise FileNotFoundError(f"{gone} does not exist: run the stage that writes it first")

    monkeypatch.setattr(summary, "write_summary", ours)
    assert main(["data", "summary", "shapes", "--out", str(tmp_path / "s.csv")]) == 2
    assert capsys.readouterr().err.strip() == f"conceptsim: error: {gone} does not exist: run the stage that writes it first"


def test_a_rehearsal_is_announced_as_the_book_captions_it(monkeypatch, tmp_path):
    from conceptsim.cli import where_results_are
    from conceptsim.run.study import parse_study

    monkeypatch.setenv("CONCEPTSIM_ROOT", str(tmp_path))
    study = parse_study({"name": "mine", "datasets": {"shapes": {}}, "models": ["mobilenet_v2_imagenet"]})
    # the hint once said "under 'Rehearsals'", a caption the book never writes
    assert "under the part \"Rehearsal (incomplete study): 'mine'\"" in where_results_are(study, complete=False)
    smoke = parse_study({"name": "mine", "datasets": {"shapes": {}}, "models": ["mobilenet_v2_imagenet"], "smoke": {}},
                        smoke=True)
    assert f"under the part \"Rehearsal (smoke study): '{smoke.name}'\"" in where_results_are(smoke, complete=True)


def test_an_early_interrupt_of_a_study_is_one_line_even_from_a_background_job(monkeypatch, capsys):
    # a background job of a non-interactive shell inherits SIGINT ignored; the handler must be back before
    # the library's imports and the study's loading (seconds), and an interrupt there is one line, not a traceback
    import signal

    import conceptsim.runtime

    seen = []

    def interrupted_setup():
        seen.append(signal.getsignal(signal.SIGINT))
        raise KeyboardInterrupt

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    monkeypatch.setattr(conceptsim.runtime, "setup", interrupted_setup)
    try:
        assert main(["run", "studies/default.yml", "--smoke"]) == 130
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    assert seen == [signal.default_int_handler]
    err = capsys.readouterr().err
    assert err.strip() == "conceptsim run: interrupted before anything started"
