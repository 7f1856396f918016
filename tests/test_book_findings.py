"""The book's Findings page: read from each dataset's findings.json, its text carries the document's numbers."""

import json

import pytest

from conceptsim.book import findings
from conceptsim.comparison import report
from conceptsim.paths import comparison_files, dataset_results
from conceptsim.study import load_study


def test_page_text_carries_the_json_numbers(comparison_run):
    doc, _ = comparison_run
    md = findings.findings_markdown(doc)
    t = report.FindingTest.from_json(doc["pairs"][0]["finding1"]["seg"]["test"])
    assert report.verdict_cell(t) in md and "| a vs b |" in md and "Finding 2" in md and "Holm" in md
    if t.ci_low is not None:
        assert report.fmt_test(t) in md
    assert report.finding2_table(doc) in md
    assert "emergence" in md.lower() and "### ds" not in md.splitlines()  # no duplicate dataset heading
    assert not any(line.startswith("#### ") for line in md.splitlines())  # ## Dataset, then ### sections
    opening = findings.study_opening([doc], "s")
    assert "What was tested" in opening and "What it found" in opening and "How sure" in opening
    overview = findings.verdict_overview([doc])
    assert overview.count("| ds | a vs b |") == 4 * len(doc["pairs"][0]["finding1"])


def test_findings_page_is_absent_without_results_and_read_from_findings_json(tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTSIM_RESULTS", str(tmp_path / "results"))
    study = load_study("studies/default.yml")
    assert findings.write_findings_page(study, tmp_path / "page.md") is None
    fj = comparison_files(dataset_results(study.name, "shapes"))["findings"]
    fj.parent.mkdir(parents=True)
    fj.write_text("not json")
    with pytest.raises(json.JSONDecodeError):  # generated from findings.json: a damaged one is read, not skipped
        findings.write_findings_page(study, tmp_path / "page.md")
