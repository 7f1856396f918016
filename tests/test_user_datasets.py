"""A COCO-format dataset declared in a study file: validation messages name file and field, and the data
goes through extraction, concepts and comparison with every declared model kind (smoke sizes)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from formats import TINY_YOLO, write_coco, write_python_model

STUDY = """\
name: own
datasets:
  my_data:
    coco: {images: data/images, annotations: data/annotations/instances.json}
    concepts: {person: [person], wheeled: [car, bus], pet: [dog, cat]}
    concept_categories: {person: object, wheeled: object, pet: object}
models:
  - my_resnet: {torchvision: resnet18, input_size: 64, weights: resnet.pth}
  - my_resnet:random
  - my_yolo: {ultralytics: tiny.yaml, input_size: 64}
  - my_net: {python: "mynets.tiny:build", input_size: 32}
layers: {my_resnet: [layer1, layer3], "my_resnet:random": [layer1, layer3], my_yolo: [model.2, model.6], my_net: auto}
device: cpu
split: {fractions: [0.5, 0.25, 0.25], seed: 0, min_area: 0.005}
extraction: {batch_size: 4, grid_cap: 8, eval_grid: 16, max_layers: 2}
concepts: {epochs: 2, patience: 1, bootstrap: 20, dissection: false}
comparison: {permutations: 20, bootstrap: 20}
"""


def write_project(root, study_text=STUDY, n=8):
    write_coco(root / "data", n=n, ann_name="instances.json", image_dir="images", fractions=(0.5, 0.25, 0.25))
    write_python_model(root)
    (root / "tiny.yaml").write_text(TINY_YOLO)
    import torchvision

    torch.manual_seed(3)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), root / "resnet.pth")
    (root / "study.yml").write_text(study_text)
    return root / "study.yml"


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    """Every run of the study through the library calls the notebooks make."""
    from conceptsim import pipeline
    from conceptsim.run.preflight import check_inputs
    from conceptsim.run.scheduling import topological
    from conceptsim.run.study import load_study

    root = tmp_path_factory.mktemp("own")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONCEPTSIM_RESULTS", str(root / "results"))
        torch.set_num_threads(1)
        study = load_study(write_project(root))
        check_inputs(study)
        for run in topological(study.runs()):
            p = dict(run.parameters)
            if run.stage == "extract":
                pipeline.run_extraction(**p, force=False)
            elif run.stage == "concepts":
                pipeline.run_concepts(**p)
            elif run.stage == "compare_layers":
                pipeline.run_comparison(**p)
                summary, _ = pipeline.dataset_summary(p["study"], p["dataset"], "my_net")
        yield study, root / "results" / "own" / "my_data", summary
        torch.set_num_threads(threads)


def test_every_model_kind_goes_through_extraction_concepts_and_comparison(study_run):
    from conceptsim.atomic import sha256_file
    from conceptsim.extraction.store import ActivationStore

    study, out, _ = study_run
    root = out.parents[2]
    for model in study.models:
        store = ActivationStore(out / model.replace(":", "__") / "activations.zarr")
        assert store.concept_names == ["person", "wheeled", "pet"]
        assert len(store.layers) == 2
        q = pd.read_csv(out / model.replace(":", "__") / "concept_quality.csv")
        assert set(q["concept"]) == {"person", "wheeled", "pet"} and q["value"].notna().any()
        assert q.loc[q["concept"] == "wheeled", "category"].eq("object").all()
        assert q["relative_depth"].between(0, 1).all()
    attrs = ActivationStore(out / "my_resnet" / "activations.zarr").attrs
    assert attrs["weights_sha256"] == sha256_file(root / "resnet.pth")
    assert attrs["model_spec"]["weights"] == str(root / "resnet.pth")
    assert ActivationStore(out / "my_yolo" / "activations.zarr").attrs["weights_sha256"].startswith("random-init")
    assert ActivationStore(out / "my_yolo" / "activations.zarr").attrs["preprocessing"]["resize"] == "letterbox"
    q = pd.read_csv(out / "my_resnet" / "concept_quality.csv")
    assert q["random_init_value"].notna().any()  # joined from the declared twin
    sim = pd.read_csv(out / "similarity.csv", keep_default_na=False, na_values=[""])
    assert {"my_resnet", "my_yolo", "my_net", "my_resnet:random"} <= set(sim["model_a"]) | set(sim["model_b"])
    assert {"seg", "cls", "cka"} <= set(sim["method"])
    assert json.loads((out / "findings.json").read_text())


def test_summary_reads_named_concept_groups(study_run):
    _, _, summary = study_run
    assert {"person", "wheeled", "pet"} <= set(summary["concept"].dropna())


def test_the_dataset_summary_is_computed_once_and_reused_by_every_model(study_run, monkeypatch):
    """Every model of the study stores the same images: the first call writes the summary and its record,
    later calls (any model) reuse them untouched; a removed file, a record of other inputs or ``force`` recomputes."""
    from conceptsim import pipeline

    study, out, summary = study_run
    monkeypatch.setenv("CONCEPTSIM_RESULTS", str(out.parents[1]))
    table, figure, record = out / "dataset_summary.csv", out / "dataset_examples.png", out / "dataset_summary.json"
    written = {p: p.stat().st_mtime_ns for p in (table, figure, record)}
    content = table.read_bytes()
    for model in study.models:
        again, path = pipeline.dataset_summary(study.name, "my_data", model)
        pd.testing.assert_frame_equal(again, summary)
        assert path == figure
    assert {p: p.stat().st_mtime_ns for p in written} == written
    table.unlink()
    pipeline.dataset_summary(study.name, "my_data", "my_yolo")
    assert table.read_bytes() == content and figure.stat().st_mtime_ns != written[figure]
    stale = json.loads(record.read_text())
    record.write_text(json.dumps({**stale, "identity": "computed from other images"}))
    before = table.stat().st_mtime_ns
    pipeline.dataset_summary(study.name, "my_data", "my_resnet")
    assert json.loads(record.read_text()) == stale and table.stat().st_mtime_ns != before
    before = table.stat().st_mtime_ns
    pipeline.dataset_summary(study.name, "my_data", "my_net", force=True)  # conceptsim run --force
    assert table.stat().st_mtime_ns != before and table.read_bytes() == content


def _break(study_path, edit):
    ann = study_path.parent / "data" / "annotations" / "instances.json"
    doc = json.loads(ann.read_text())
    edit(doc, study_path.parent)
    ann.write_text(json.dumps(doc))
    return ann


@pytest.mark.parametrize("case, match", [
    ("missing image", r"'datasets.my_data.coco.images': image 107 of .*instances.json \(000000000107.jpg\) is not in"),
    ("bad polygon", r"'datasets.my_data.coco.annotations': .*instances.json: annotation 2 has a polygon with 5 coordinates"),
    ("unknown category id", r"'datasets.my_data.coco.annotations': .*instances.json: annotation 3 names unknown category id 999"),
    ("unknown category in concepts",
     r"'datasets.my_data.concepts' \(.*instances.json\): concept 'wheeled' names unknown categories \['tram'\]"),
    ("empty after min_area",
     r"'datasets.my_data.concepts' \(.*instances.json\): concept\(s\) \['pet'\] cover at least split.min_area = 0.05 of no image"),
    ("unknown key", r"unknown key\(s\) \['colour'\] in 'datasets.my_data'"),
    ("missing annotations", r"'datasets.my_data.coco.annotations': file .*nowhere.json does not exist"),
    ("unknown supercategory",
     r"'datasets.my_data.concepts' \(.*instances.json\): concept\(s\) \['pet'\] have supercategories \['animal'\], "
     r"none of the concept categories .*concept_categories: \{pet: object\}"),
    ("corrupt image", r"'datasets.my_data.coco.images': image 107 \(.*000000000107.jpg\) cannot be read as an image"),
    ("declared size differs",
     r"'datasets.my_data.coco.images': image 107 \(.*000000000107.jpg\) is 32x32 pixels, but .*instances.json declares width"),
])
def test_dataset_errors_name_file_and_field(case, match, tmp_path):
    from conceptsim.run.preflight import check_inputs
    from conceptsim.run.study import StudyError, load_study

    text = STUDY
    if case == "unknown category in concepts":
        text = STUDY.replace("wheeled: [car, bus]", "wheeled: [car, tram]")
    elif case == "empty after min_area":
        text = STUDY.replace("pet: [dog, cat]", "pet: [cat]").replace("min_area: 0.005", "min_area: 0.05")
    elif case == "unknown key":
        text = STUDY.replace("    concept_categories:", "    colour: red\n    concept_categories:")
    elif case == "unknown supercategory":  # 'animal' is no concept category: declared, not silently 'object'
        text = STUDY.replace("person: object, wheeled: object, pet: object", "person: object, wheeled: object")
    elif case == "missing annotations":
        text = STUDY.replace("data/annotations/instances.json", "data/nowhere.json")
    study_path = write_project(tmp_path, text, n=4)
    if case == "missing image":
        (tmp_path / "data" / "images" / "000000000107.jpg").unlink()
    elif case == "bad polygon":
        _break(study_path, lambda d, _: d["annotations"][1].update(segmentation=[[1, 2, 3, 4, 5]]))
    elif case == "unknown category id":
        _break(study_path, lambda d, _: d["annotations"][2].update(category_id=999))
    elif case == "corrupt image":
        image = tmp_path / "data" / "images" / "000000000107.jpg"
        image.write_bytes(image.read_bytes()[:200])  # truncated mid-file
    elif case == "declared size differs":  # the file was resized after it was annotated
        from PIL import Image

        image = tmp_path / "data" / "images" / "000000000107.jpg"
        Image.new("RGB", (32, 32)).save(image)
    with pytest.raises(StudyError, match=match):
        check_inputs(load_study(study_path))


def test_run_stops_before_any_notebook_on_a_bad_dataset(tmp_path, monkeypatch, capsys):
    from conceptsim.cli import main

    monkeypatch.setenv("CONCEPTSIM_RESULTS", str(tmp_path / "results"))
    study_path = write_project(tmp_path, n=4)
    (tmp_path / "data" / "images" / "000000000107.jpg").unlink()
    assert main(["run", str(study_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "nothing was started" in err and "000000000107.jpg" in err
    assert not (tmp_path / "results").exists()


def test_declared_dataset_hash_follows_the_annotations(tmp_path):
    from conceptsim.data.user_datasets import parse_dataset, user_source

    write_coco(tmp_path / "d", n=3, ann_name="a.json", image_dir="im")
    opts = parse_dataset("x", {"coco": {"images": "d/im", "annotations": "d/annotations/a.json"}}, tmp_path)
    before = user_source("x", opts).sha256
    ann = tmp_path / "d" / "annotations" / "a.json"
    doc = json.loads(ann.read_text())
    doc["annotations"].pop()
    ann.write_text(json.dumps(doc))
    assert user_source("x", opts).sha256 != before


def test_readme_example_writes_a_valid_dataset_and_study(tmp_path):
    """The README's "Your own model and data" example: its data script and study file pass every check."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    from conceptsim.run.preflight import check_inputs
    from conceptsim.run.study import load_study

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Your own model and data", 1)[1].split("\n## ", 1)[0]
    script = re.search(r"python - <<'EOF'\n(.*?)\nEOF\n", section, re.S).group(1)
    study = re.search(r"cat > study.yml <<'EOF'\n(.*?)\nEOF\n", section, re.S).group(1)
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, timeout=120)
    (tmp_path / "study.yml").write_text(study)
    loaded = load_study(tmp_path / "study.yml")
    check_inputs(loaded)
    assert loaded.model_specs == {"my_resnet": {"torchvision": "resnet18", "input_size": 128}}
    assert len(loaded.runs()) == 3 * 2 + 2
