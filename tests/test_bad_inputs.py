"""A catalogue of bad inputs walked through the ``conceptsim`` command (in-process): each must give one clear
message naming the file, key or path, the value and what is accepted -- never a traceback, never work
that starts and fails later, never a lost file. Add a case whenever a new bad input is found.

Every test works in a temporary project root (``project`` fixture): the user's results, book and cache
are never touched.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conceptsim.cli import main

VALID = """\
name: t
datasets:
  shapes: {build: {n: 6, size: 48}}
models: [mobilenet_v2_imagenet:random]
"""

# VALID's 6 images leave one in val and one in test: too few for a classification probe (a case of its own below);
# a study that passes every check needs more
RUNNABLE = VALID.replace("n: 6", "n: 20")


def study_file(root: Path, text: str, name: str = "s.yml") -> Path:
    path = root / name
    path.write_text(text)
    return path


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


# --------------------------------------------------------------------------------------- study files
# (study text, words the error must contain): every case must fail in validation, before any run
STUDY_CASES = {
    "epochs 0": (VALID + "concepts: {epochs: 0}\n", ["'concepts.epochs' is 0", "an integer >= 1"]),
    "duplicate key in a section": (VALID + "concepts:\n  epochs: 3\n  epochs: 5\n",
                                   ["not valid YAML at line 7, column 3: duplicate key 'epochs' (first on line 6)",
                                    "each key may appear once"]),
    "duplicate top-level key": (VALID + "models: [ssd_mobilenet_v2_coco]\n", ["duplicate key 'models'", "first on line 4"]),
    "duplicate dataset": ("name: t\ndatasets:\n  shapes: {}\n  shapes: {max_images: 3}\nmodels: [yolov8n:random]\n",
                          ["duplicate key 'shapes'"]),
    "batch_size 0": (VALID + "extraction: {batch_size: 0}\n", ["'extraction.batch_size' is 0", ">= 1"]),
    "negative lr": (VALID + "concepts: {lr: -1}\n", ["'concepts.lr' is -1", "a number > 0"]),
    "lr nan": (VALID + "concepts: {lr: .nan}\n", ["'concepts.lr' is nan", "a number > 0"]),
    "lr as text": (VALID + "concepts: {lr: fast}\n", ["'concepts.lr' is 'fast'", "a number > 0"]),
    "negative patience": (VALID + "concepts: {patience: -1}\n", ["'concepts.patience' is -1", ">= 0"]),
    "bootstrap 0": (VALID + "concepts: {bootstrap: 0}\n", ["'concepts.bootstrap' is 0", "[1, 1000000]"]),
    "permutations 0": (VALID + "comparison: {permutations: 0}\n", ["'comparison.permutations' is 0", ">= 1"]),
    "dissection as text": (VALID + "concepts: {dissection: 'yes'}\n", ["'concepts.dissection' is 'yes'", "true or false"]),
    "device tpu": (VALID + "extraction: {device: tpu}\n", ["'extraction.device' is 'tpu'", "cpu, cuda, cuda:N"]),
    "device cuda:x": (VALID + "extraction: {device: 'cuda:x'}\n", ["'extraction.device' is 'cuda:x'"]),
    "dtype float64": (VALID + "extraction: {dtype: float64}\n", ["'extraction.dtype' is 'float64'", "float16", "float32"]),
    "compression gzip": (VALID + "extraction: {compression: gzip}\n", ["'extraction.compression'", "zstd"]),
    "num_workers -1": (VALID + "extraction: {num_workers: -1}\n", ["'extraction.num_workers' is -1"]),
    "unknown build key": (VALID.replace("{n: 6, size: 48}", "{n: 6, colour: red}"),
                          ["unknown key(s) ['colour'] in 'datasets.shapes.build'", "'n'", "'seed'", "'size'"]),
    "build n 0": (VALID.replace("n: 6", "n: 0"), ["'datasets.shapes.build.n' is 0", ">= 1"]),
    "build size too small": (VALID.replace("size: 48", "size: 8"), ["'datasets.shapes.build.size' is 8", ">= 32"]),
    "build seed text": (VALID.replace("n: 6", "n: 6, seed: x"), ["'datasets.shapes.build.seed' is 'x'"]),
    "build not a mapping": (VALID.replace("{build: {n: 6, size: 48}}", "{build: 5}"),
                            ["'datasets.shapes.build' is 5", "a mapping"]),
    "root on an embedded dataset": (VALID.replace("{build: {n: 6, size: 48}}", "{root: /data/shapes}"),
                                    ["'datasets.shapes.root' does not apply", "coco2017-val", "voc2012"]),
    "build on a fetched dataset": ("name: t\ndatasets: {coco2017-val: {build: {n: 3}}}\nmodels: [yolov8n:random]\n",
                                   ["'datasets.coco2017-val.build' does not apply", "root:"]),
    "unknown dataset option": (VALID.replace("{build: {n: 6, size: 48}}", "{maximages: 3}"),
                               ["unknown key(s) ['maximages'] in 'datasets.shapes'", "max_images"]),
    "max_images 0": (VALID.replace("{build: {n: 6, size: 48}}", "{max_images: 0}"),
                     ["'datasets.shapes.max_images' is 0", "positive integer"]),
    "concepts not a list": (VALID.replace("{build: {n: 6, size: 48}}", "{concepts: 5}"),
                            ["'datasets.shapes.concepts' is 5", "category"]),
    "unknown dataset": (VALID.replace("shapes:", "imagenet:"), ["unknown dataset 'imagenet'", "photo-colors"]),
    "datasets a list": (VALID.replace("  shapes: {build: {n: 6, size: 48}}", "  - shapes"),
                        ["'datasets' is ['shapes']", "a non-empty mapping"]),
    "models a string": (VALID.replace("[mobilenet_v2_imagenet:random]", "mobilenet_v2_imagenet"),
                        ["'models' is 'mobilenet_v2_imagenet'", "list of model names"]),
    "model twice": (VALID.replace("[mobilenet_v2_imagenet:random]", "[yolov8n:random, yolov8n:random]"),
                    ["lists ['yolov8n:random'] more than once"]),
    "unknown model": (VALID.replace("mobilenet_v2_imagenet:random", "resnet9000"), ["unknown model 'resnet9000'"]),
    "layers of a model not in the study": (VALID + "layers: {yolov8n: [model.1]}\n", ["'layers' names model 'yolov8n'"]),
    "layers not a list": (VALID + "layers: {'mobilenet_v2_imagenet:random': features.1}\n",
                          ["'layers.mobilenet_v2_imagenet:random' is 'features.1'", "list of dotted module paths"]),
    "fractions as text": (VALID + "split: {fractions: [a, b, c]}\n", ["'split.fractions' is ['a', 'b', 'c']", "summing to 1"]),
    "fractions not summing to 1": (VALID + "split: {fractions: [0.5, 0.5, 0.5]}\n", ["'split.fractions'", "summing to 1"]),
    "min_area 1.5": (VALID + "split: {min_area: 1.5}\n", ["'split.min_area' is 1.5", "[0, 1)"]),
    "negative seed": (VALID + "seed: -1\n", ["'seed' is -1", ">= 0"]),
    "float seed": (VALID + "seed: 1.5\n", ["'seed' is 1.5", "an integer"]),
    "name with a space": (VALID.replace("name: t", "name: my study"), ["'name' is 'my study'", "simple identifier"]),
    "section not a mapping": (VALID + "concepts: [1, 2]\n", ["'concepts' is [1, 2]", "a mapping"]),
    "unknown section key": (VALID + "extraction: {batchsize: 4}\n", ["unknown key(s) ['batchsize'] in 'extraction'", "batch_size"]),
    "unknown top-level key": (VALID + "colour: red\n", ["unknown key(s) ['colour'] in the study", "accepted keys"]),
    "non-text key": (VALID + "1: x\n", ["unknown key(s) [1] in the study"]),
    "missing models": ("name: t\ndatasets: {shapes: {}}\n", ["missing required key 'models'"]),
    "a list, not a mapping": ("- name: t\n", ["must be a YAML mapping", "got list"]),
    "empty file": ("", ["must be a YAML mapping", "got NoneType"]),
    "bad YAML": ("name: t\n  datasets: : :\n", ["not valid YAML"]),
    "tab indentation": ("name: t\ndatasets:\n\tshapes: {}\n", ["not valid YAML"]),
    # issue 26: semantic mistakes caught before work starts
    "fractions with an empty split": (VALID + "split: {fractions: [1, 0, 0]}\n",
                                      ["'split.fractions' is [1, 0, 0]", "three positive numbers", "every split needs images"]),
    "max_images too small for the splits": (VALID.replace("{build: {n: 6, size: 48}}", "{max_images: 1}"),
                                            ["'datasets.shapes.max_images' is 1: max_images caps the images of each split",
                                             "accepted: max_images >= 2"]),
    "concept bootstrap 10**12": (VALID + "concepts: {bootstrap: 1000000000000}\n",
                                 ["'concepts.bootstrap' is 1000000000000", "[1, 1000000]", "44 TiB"]),
    "comparison bootstrap 10**7": (VALID + "comparison: {bootstrap: 10000000}\n",
                                   ["'comparison.bootstrap' is 10000000", "[1, 1000000]"]),
    "python builder that cannot be imported": (
        VALID.replace("[mobilenet_v2_imagenet:random]", '[{mine: {python: "no.such.module:build", input_size: 64}}]'),
        ["'models.mine': python builder 'no.such.module:build': cannot import 'no.such.module'"]),
    "unknown concept": (VALID.replace("{build: {n: 6, size: 48}}", "{concepts: [circle, unicorn]}"),
                        ["'datasets.shapes.concepts' names ['unicorn'], which shapes does not have", "'circle'", "'shape'"]),
    "concept grouping an unknown category": (
        VALID.replace("{build: {n: 6, size: 48}}", "{concepts: {round: [circle, oval]}}"),
        ["'datasets.shapes.concepts.round' names categories ['oval']"]),
    "split by a field the images lack": (
        VALID.replace("{build: {n: 6, size: 48}}", "{split: {by: style}}"),
        ["'datasets.shapes.split.by' is 'style', but shapes's images have no such field", "id, file_name, width, height"]),
    "bootstrap_by a field the images lack": (
        VALID.replace("{build: {n: 6, size: 48}}", "{bootstrap_by: source}"),
        ["'datasets.shapes.bootstrap_by' is 'source', but shapes's images have no such field"]),
    "coco-icons split naming an unknown style": (
        VALID.replace("shapes: {build: {n: 6, size: 48}}", "coco-icons: {split: {by: style, test: [crayon]}}"),
        ["'datasets.coco-icons.split.test' names style(s) ['crayon']", "noto"]),
    # predicted from the build's annotations (built first if needed): no concept left, nothing to learn
    "min_area that no concept's mask reaches": (
        VALID + "split: {min_area: 0.99}\n",
        ["'split.min_area' is 0.99: no concept of shapes has a mask covering that much of an image in each of train, "
         "val and test", "accepted here: split.min_area <= 0.133"]),
    "max_images too few for any concept": (
        VALID.replace("{n: 6, size: 48}}", "{n: 20, size: 48}, max_images: 5}") + "split: {min_area: 0.13}\n",
        ["'datasets.shapes.max_images' is 5: among the first 5 images of each split no concept of shapes",
         "covers split.min_area = 0.13", "accepted here: max_images >= 6"]),
    "a build too small for any classification probe": (  # 6 images: val and test hold one each
        VALID, ["'datasets.shapes.build.n' is 6 (images per split: train 4, val 1, test 1): no concept of shapes has both "
                "an image whose mask covers split.min_area = 0.005 and an image without in each of train, val and test",
                "the comparison fails"]),
    "study name of 300 characters": (VALID.replace("name: t", "name: " + "a" * 300), ["'name' is 'aaaa", "at most 100 characters"]),
    "several mistakes at once": (VALID + "concepts: {epochs: 0, lr: -1}\nextraction: {device: tpu}\n",
                                 ["3 problems", "'concepts.epochs' is 0", "'concepts.lr' is -1", "'extraction.device' is 'tpu'"]),
}


@pytest.mark.parametrize("case", sorted(STUDY_CASES))
def test_bad_study_file(project, capsys, case):
    text, words = STUDY_CASES[case]
    path = study_file(project, text)
    code, err = run_cli(["run", str(path)], capsys)
    assert code == 2, err
    assert str(path) in err
    for w in words:
        assert w in err, f"{case}: {w!r} not in {err!r}"
    assert not (project / "results").exists() and not (project / "book" / "results").exists()


def test_bad_smoke_section(project, capsys):
    path = study_file(project, VALID + "smoke: {concepts: {epochs: 0}, colour: red}\n")
    code, err = run_cli(["run", str(path), "--smoke"], capsys)
    # the value comes from the smoke: section, and the message says so
    assert code == 2 and "'smoke.concepts.epochs' is 0" in err and "unknown key(s) ['colour'] in 'smoke'" in err
    path = study_file(project, VALID + "smoke: {datasets: {shapes: {max_images: 1}}}\n")
    code, err = run_cli(["run", str(path), "--smoke"], capsys)
    assert code == 2 and "'smoke.datasets.shapes.max_images' is 1: max_images caps the images of each split" in err
    path = study_file(project, VALID + "smoke: {split: {min_area: 0.99}}\n")
    code, err = run_cli(["run", str(path), "--smoke"], capsys)
    assert code == 2 and "'smoke.split.min_area' is 0.99: no concept of shapes" in err
    code, err = run_cli(["run", str(study_file(project, VALID + "smoke: [1]\n")), "--smoke"], capsys)
    assert code == 2 and "'smoke' is [1]" in err


@pytest.mark.parametrize("make, words", [
    (lambda p: p / "missing.yml", ["does not exist"]),
    (lambda p: (p / "adir").mkdir() or p / "adir", ["is not a file"]),
    (lambda p: [(p / "bin.yml").write_bytes(b"name: \xff\xfe\n"), p / "bin.yml"][1], ["not a UTF-8 text file"]),
])
def test_unreadable_study_file(project, capsys, make, words):
    path = make(project)
    code, err = run_cli(["run", str(path)], capsys)
    assert code == 2 and str(path) in err
    for w in words:
        assert w in err


# --------------------------------------------------------------------------------------- this machine
def test_paper_smoke_offline_fails_at_once_listing_everything_missing(project, capsys):
    code, err = run_cli(["run", "studies/paper.yml", "--smoke"], capsys)
    assert code == 2
    assert "5 problems (nothing was started)" in err
    for words in ("dataset coco2017-val", "val2017.zip", "dataset voc2012", "VOCtrainval_11-May-2012.tar",
                  "model yolov5su", "yolov5su.pt", "model ssd300_vgg16", "ssd300_vgg16_coco-b556d3b4.pth",
                  "model fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth"):
        assert words in err
    assert "model yolov5su:random" not in err  # twins need no files
    assert not (project / "results").exists() and not (project / "book" / "results").exists()


def test_missing_offline_weights_are_listed_before_any_run(project, capsys):
    code, err = run_cli(["run", "studies/default.yml", "--smoke", "--only", "dataset=shapes"], capsys)
    assert code == 2 and "(nothing was started)" in err
    for model in ("ssd_mobilenet_v2_coco", "centernet_mobilenet_v3_coco", "mobilenet_v2_imagenet"):
        assert f"model {model}: weight file" in err and "conceptsim models fetch" in err
    assert "dataset shapes" not in err  # built on demand


def test_local_root_without_the_layout(project, capsys, tmp_path):
    path = study_file(project, f"name: t\ndatasets: {{coco2017-val: {{root: {tmp_path / 'nothing'}}}}}\n"
                               "models: [yolov8n:random]\n")
    code, err = run_cli(["run", str(path)], capsys)
    assert code == 2 and f"dataset coco2017-val: {tmp_path / 'nothing'}: not a coco2017-val copy" in err
    assert "annotations/instances_val2017.json" in err


def test_cuda_requested_without_cuda(project, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, err = run_cli(["run", str(study_file(project, VALID + "extraction: {device: cuda}\n"))], capsys)
    assert code == 2 and "'extraction.device' is 'cuda' but CUDA is not available here" in err


def test_results_folder_that_cannot_be_written(project, capsys, monkeypatch):
    (project / "afile").write_text("x")
    monkeypatch.setenv("CONCEPTSIM_RESULTS", str(project / "afile" / "results"))
    code, err = run_cli(["run", str(study_file(project, VALID))], capsys)
    assert code == 2 and f"cannot create {project / 'afile' / 'results' / 't'}: {project / 'afile'} is not a folder" in err
    assert (project / "afile").read_text() == "x"


def test_every_folder_the_runs_write_to_is_probed(project, capsys):
    blocked = project / "results" / "t" / "shapes"  # the study's root is writable, a run's folder cannot be made
    blocked.parent.mkdir(parents=True)
    blocked.write_text("x")
    code, err = run_cli(["run", str(study_file(project, VALID)), "--quiet"], capsys)
    assert code == 2 and "(nothing was started)" in err
    assert f"cannot create {blocked}: {blocked} is not a folder" in err
    assert blocked.read_text() == "x" and not (project / "book" / "results").exists()
    blocked.unlink()
    for deeper in (blocked / "_masks", blocked / "mobilenet_v2_imagenet__random" / "vectors"):  # a run's subfolders too
        deeper.parent.mkdir(parents=True, exist_ok=True)
        deeper.write_text("x")
        code, err = run_cli(["run", str(study_file(project, VALID)), "--quiet"], capsys)
        assert code == 2 and f"cannot create {deeper}: {deeper} is not a folder" in err
        deeper.unlink()


def test_read_only_results_folder(project, capsys, monkeypatch):
    ro = Path("/sys/conceptsim-results")  # sysfs refuses new files, even to root
    if not Path("/sys/class").is_dir():
        pytest.skip("no sysfs here: no folder that refuses writes even to root")
    monkeypatch.setenv("CONCEPTSIM_RESULTS", str(ro))
    code, err = run_cli(["run", str(study_file(project, VALID))], capsys)
    assert code == 2 and "cannot write to /sys" in err and f"to create {ro / 't'}" in err
    assert len(err.strip().splitlines()) == 1


def test_os_error_during_a_run_is_one_line_with_the_traceback_in_a_log(project, capsys, monkeypatch):
    import conceptsim.run

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device", str(project / "results" / "t" / "x.csv"))

    monkeypatch.setattr(conceptsim.run, "run_study", disk_full)  # what the command line calls
    code, err = run_cli(["run", str(study_file(project, RUNNABLE))], capsys)
    assert code == 1
    line = err.strip()
    assert "\n" not in line
    assert line.startswith(f"conceptsim: error: {project / 'results' / 't' / 'x.csv'}: No space left on device (traceback in ")
    log = Path(line.rsplit("(traceback in ", 1)[1].rstrip(")"))
    assert log.is_relative_to(Path(os.environ["CONCEPTSIM_CACHE"])) and "Traceback" in log.read_text()
    assert "disk_full" in log.read_text()


# --------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("argv, words", [
    (["--jobs", "0"], ["--jobs", "expected a whole number >= 1, got 0"]),
    (["--jobs", "-1"], ["--jobs", "expected a whole number >= 1, got -1"]),
    (["--jobs", "two"], ["--jobs", "expected a whole number >= 1, got 'two'"]),
    (["--only", "colour"], ["--only expects KEY=VALUE", "'colour'"]),
    (["--only", "stage="], ["--only expects KEY=VALUE", "'stage='"]),
    (["--only", "colour=red"], ["--only accepts keys", "colour"]),
    (["--only", "stage=training"], ["--only stage=training: no such stage", "extract"]),
    (["--only", "model=a", "--only", "model=mobilenet_v2_imagenet:random"], ["--only model=a: no such model"]),
])
def test_bad_run_options(project, capsys, argv, words):
    code, err = run_cli(["run", str(study_file(project, VALID)), *argv], capsys)
    assert code == 2
    for w in words:
        assert w in err
    assert not (project / "results").exists()


# --------------------------------------------------------------------------------------- data commands
def test_data_build_out_refuses_a_folder_it_did_not_make(project, capsys, tmp_path):
    out = tmp_path / "precious"
    (out / "thesis").mkdir(parents=True)
    (out / "thesis" / "chapter1.tex").write_text("years of work")
    code, err = run_cli(["data", "build", "shapes", "--out", str(out), "--n", "2", "--size", "48"], capsys)
    assert code == 2 and f"{out} is not empty and is not a previous shapes build (1 other entries: thesis/)" in err
    assert "--overwrite" in err and (out / "thesis" / "chapter1.tex").read_text() == "years of work"
    code, err = run_cli(["data", "build", "shapes", "--out", str(out), "--n", "2", "--size", "48", "--overwrite"], capsys)
    assert code == 0 and f"--overwrite: removing 1 entries from {out}: thesis/" in err
    assert not (out / "thesis").exists() and (out / "annotations.json").is_file()
    code, err = run_cli(["data", "build", "shapes", "--out", str(out), "--n", "3", "--size", "48"], capsys)
    assert code == 0 and err == ""  # a previous build of the same dataset is replaced silently


def test_data_build_bad_parameters(project, capsys, tmp_path):
    code, err = run_cli(["data", "build", "shapes", "--out", str(tmp_path / "o"), "--n", "0"], capsys)
    assert code == 2 and "argument --n: expected a whole number >= 1, got 0" in err
    code, err = run_cli(["data", "build", "imagenet"], capsys)
    assert code == 2 and "invalid choice: 'imagenet'" in err


def test_data_fetch_root_that_is_no_copy(project, capsys, tmp_path):
    code, err = run_cli(["data", "fetch", "coco2017-val", "--root", str(tmp_path / "nothing")], capsys)
    assert code == 2 and "not a COCO val2017 copy" in err and "instances_val2017.json" in err


def test_data_fetch_root_with_duplicate_files(project, capsys, tmp_path):
    import json

    from test_data_coco import write_fake_coco

    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    ann = write_fake_coco(root, image_dir="val2017", ann_name="annotations/instances_val2017.json")
    data = json.loads(ann.read_text())
    data["images"][2]["file_name"] = data["images"][0]["file_name"]
    ann.write_text(json.dumps(data))
    code, err = run_cli(["data", "fetch", "coco2017-val", "--root", str(root)], capsys)
    assert code == 2 and f"{ann}: file '0001.png' is listed under two image ids, 1 and 3" in err


def test_models_commands(project, capsys):
    code, err = run_cli(["models", "layers", "resnet9000"], capsys)
    assert code == 2 and "unknown model 'resnet9000'" in err
    code, err = run_cli(["models", "fetch", "yolov8n"], capsys)
    assert code == 2 and "weights need internet or a local copy" in err


def test_only_runs_that_will_execute_need_their_inputs(project, capsys, monkeypatch):
    from conceptsim.run import orchestrate as runner
    from conceptsim.run.study import load_study
    from test_run_orchestrate import fake_execute

    path = study_file(project, VALID.replace("mobilenet_v2_imagenet:random", "mobilenet_v2_imagenet"))
    code, err = run_cli(["run", str(path), "--quiet"], capsys)
    assert code == 2 and "model mobilenet_v2_imagenet: weight file" in err
    monkeypatch.setattr(runner, "execute_run", fake_execute)
    runner.run_study(load_study(path), progress=False)  # as if extracted where the weights were
    assert main(["run", str(path), "--quiet"]) == 0
    assert "0 run(s) executed, 4 reused" in capsys.readouterr().out
    code, err = run_cli(["run", str(path), "--quiet", "--force"], capsys)  # --force re-runs, so needs them again
    assert code == 2 and "model mobilenet_v2_imagenet: weight file" in err


def test_smoke_without_a_smoke_section_stops_and_says_so(project, capsys):
    path = study_file(project, VALID)
    code, err = run_cli(["run", str(path), "--smoke", "--quiet"], capsys)
    assert code == 2 and f"{path}: --smoke, but the study has no 'smoke:' section" in err
    assert not (project / "results").exists()


def test_pinned_weight_of_the_right_size_but_another_hash(project, capsys):
    from conceptsim.models import weights
    from conceptsim.models.registry import parse_model_name

    carrier = weights.CARRIERS[parse_model_name("mobilenet_v2_imagenet")[0].carrier]
    for wf in carrier.files:  # in place, with the pinned size, but not the pinned bytes
        path = weights.carrier_dir(carrier) / wf.name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.truncate(wf.size)
    path = study_file(project, VALID.replace("mobilenet_v2_imagenet:random", "mobilenet_v2_imagenet"))
    code, err = run_cli(["run", str(path), "--quiet"], capsys)
    assert code == 2 and "(nothing was started)" in err
    assert f"weight file {weights.carrier_dir(carrier) / carrier.files[0].name} has sha256" in err
    assert f"expected the pinned {carrier.files[0].sha256}" in err


@pytest.mark.parametrize("content", ["empty", "another architecture"])
def test_user_weight_file_that_does_not_load(project, capsys, content):
    import torch

    weights = project / "mine.pth"
    if content == "empty":
        weights.write_bytes(b"")
    else:
        torch.save(torch.nn.Linear(2, 2).state_dict(), weights)
    path = study_file(project, VALID.replace("[mobilenet_v2_imagenet:random]",
                                             "[{mine: {torchvision: resnet18, weights: mine.pth}}]"))
    code, err = run_cli(["run", str(path), "--quiet"], capsys)
    assert code == 2 and "(nothing was started)" in err and f"model mine: 'weights': {weights}" in err
    assert ("cannot be loaded with torch.load" if content == "empty" else "does not fit the model") in err


def test_a_store_holding_the_users_files_is_refused_not_deleted(project, capsys):
    store = project / "results" / "t" / "shapes" / "mobilenet_v2_imagenet__random" / "activations.zarr"
    store.mkdir(parents=True)
    (store / "zarr.json").write_text("{}")
    (store / "my-notes.txt").write_text("mine")
    code, err = run_cli(["run", str(study_file(project, VALID)), "--quiet"], capsys)
    assert code == 2 and "(nothing was started)" in err
    assert f"{store} holds files the suite did not write (my-notes.txt)" in err
    assert (store / "my-notes.txt").read_text() == "mine"


def test_a_named_datasets_corrupted_image_is_found_before_any_run(project, capsys):
    from conceptsim.data.registry import ensure_dataset

    source = ensure_dataset("shapes", n=6, size=48)  # VALID's build, as a first run left it
    image = sorted((source.image_dir).iterdir())[0]
    image.write_bytes(image.read_bytes()[:100])  # cut short: no longer the build's bytes
    code, err = run_cli(["run", str(study_file(project, VALID)), "--quiet"], capsys)
    assert code == 2 and "(nothing was started)" in err
    assert f"dataset shapes: {image} (image id " in err and "differs from the build manifest" in err
    assert not (project / "results" / "t" / "_runs").exists()


def test_ctrl_c_while_a_dataset_is_built_before_the_runs_is_one_line(project, capsys, monkeypatch):
    import dataclasses

    from conceptsim.data import registry

    def interrupted_build(out_dir, n=1200, size=320, seed=0):  # Ctrl-C half way through the build the pre-run check starts
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "annotations.json").write_text("{")
        raise KeyboardInterrupt

    monkeypatch.setitem(registry.DATASETS, "shapes", dataclasses.replace(registry.DATASETS["shapes"], build=interrupted_build))
    code, err = run_cli(["run", str(study_file(project, VALID)), "--quiet"], capsys)
    assert code == 130 and err.strip() == "conceptsim run: interrupted before any run started"
    datasets = Path(os.environ["CONCEPTSIM_DATA"])
    assert [p.name for p in datasets.iterdir() if not p.name.endswith(".lock")] == []  # no half-built dataset left
    assert not (project / "results" / "t" / "_runs").exists()
