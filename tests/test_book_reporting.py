"""Generated book pages: per-dataset index and findings page from the result files."""

import json

import pytest

from conceptsim.book import reporting
from conceptsim.paths import comparison_files, dataset_results
from conceptsim.study import Run, load_study


def test_dataset_index_lists_each_run_with_its_stage_title(tmp_path):
    study = load_study("studies/default.yml")
    runs = [r for r in study.runs() if r.dataset == "shapes"][:3]
    text = reporting.dataset_index(study, "shapes", runs)
    assert text.startswith("# Dataset `shapes`")
    assert "- Activation extraction: ssd_mobilenet_v2_coco on shapes" in text
    assert "- Concept learning: ssd_mobilenet_v2_coco on shapes" in text
    assert reporting.dataset_index(study, "x", [Run("compare_models", "x", None, {})]).endswith(
        "- Model comparison and findings: x\n")


def test_findings_page_is_absent_without_results_and_read_from_findings_json(tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTSIM_RESULTS", str(tmp_path / "results"))
    study = load_study("studies/default.yml")
    assert reporting.write_findings_page(study, tmp_path / "page.md") is None
    fj = comparison_files(dataset_results(study.name, "shapes"))["findings"]
    fj.parent.mkdir(parents=True)
    fj.write_text("not json")
    with pytest.raises(json.JSONDecodeError):  # generated from findings.json: a damaged one is read, not skipped
        reporting.write_findings_page(study, tmp_path / "page.md")
