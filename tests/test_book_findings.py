"""The book's Findings page: read from each dataset's findings.json, its text carries the document's numbers."""

import json

import pytest

from conceptsim.book import findings
from conceptsim.comparison import report
from conceptsim.paths import comparison_files, dataset_results
from conceptsim.run.study import load_study


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


def test_shortcut_sentence_reads_the_deepest_layer():
    import pandas as pd

    from conceptsim.book.findings import shortcut_sentence

    rows = [("seg_kappa", "", "block1", 0.2, 0.45), ("seg_kappa", "", "block4", 0.45, 0.12),
            ("cls_partial", "", "block4", 0.69, 0.13), ("cka", "", "block4", 0.76, 0.09), ("seg_kappa", "dot", "block4", 0.9, 0.0)]
    frame = pd.DataFrame([{"dataset": "coco-icons", "method": m, "concept": c, "layer": L, "auprc": a, "base_rate": 0.1,
                           "chance_auprc": 0.19, "violation_rate": v} for m, c, L, a, v in rows])
    text = shortcut_sentence("grounding/coco-icons", frame)
    assert "study `grounding`" in text and "layer `block4`" in text and "chance 0.19" in text
    assert "`seg_kappa` 0.45 (violation rate 0.12)" in text and "linear CKA 0.76" in text and "0.9" not in text
    assert shortcut_sentence("x/y", frame[frame["method"] == "cls"]) == ""
    frame["concept"] = frame["concept"].replace("", None)  # as read from shortcut.csv with na_values=[""]
    assert shortcut_sentence("grounding/coco-icons", frame) == text


def test_opening_names_each_contradicted_test_and_the_shared_backbone_of_a_control_pair(comparison_run):
    from conceptsim.comparison.finding2 import PositiveControl

    doc, _ = comparison_run
    doc = json.loads(json.dumps(doc))  # a copy: the fixture is shared
    pair = doc["pairs"][0]
    pair["finding2"]["seg"]["from_training"].update(verdict="contradicted", effect=-0.11, ci_low=-0.19, ci_high=-0.02)
    assert "Contradicted (" not in findings.study_opening([{**doc, "pairs": []}], "s")
    n = sum(t.verdict == "contradicted" for *_, t in report.tests_of(doc))
    control = PositiveControl(pair["model_a"], pair["model_b"], "seg_kappa", "val", {}, 0.8, 0.2, 0.2, 0.001, 10, 8, 5,
                              {}, True)
    doc["positive_control"] = [control.to_json()]
    sentence = next(ln for ln in findings.study_opening([doc], "s").splitlines() if "Contradicted (" in ln)
    entry = f"{doc['dataset']}, {pair['model_a']} vs {pair['model_b']}, seg, finding 2: from training -0.11 [-0.19, -0.02]"
    assert f"Contradicted ({n}):" in sentence and f"{entry} (the two models share backbone blocks" in sentence
    assert sentence.count("share backbone blocks") == 1  # only the from-training test of the control pair
    doc["positive_control"] = []
    sentence = next(ln for ln in findings.study_opening([doc], "s").splitlines() if "Contradicted (" in ln)
    assert entry in sentence and "share backbone blocks" not in sentence


def test_opening_counts_controls_that_passed_failed_or_could_not_decide(comparison_run):
    from conceptsim.comparison.finding2 import PositiveControl

    doc, _ = comparison_run
    doc = json.loads(json.dumps(doc))

    def ctl(passed, reason=None):
        return PositiveControl("a", "b", "seg_kappa", "val", {}, 1.0, 0.75, 0.75, 0.5, 2, 2, 6, {}, passed, reason,
                               0.5).to_json()

    def sentence():
        return next(ln for ln in findings.study_opening([doc], "s").splitlines() if "positive control" in ln)

    doc["positive_control"] = [ctl(True), ctl(True)]
    assert "passed 2 of 2 times;" in sentence()
    doc["positive_control"] = [ctl(True), ctl(False), ctl(None, "even a perfect recovery would have p 0.5")]
    assert "passed 1 of 3 times, failed 1 and cannot decide in 1 (the table below says why);" in sentence()
    doc["positive_control"] = [ctl(True), ctl(None, "too few blocks")]
    assert "passed 1 of 2 times and cannot decide in 1" in sentence() and "failed" not in sentence().split(";")[0]


def test_opening_does_not_count_tests_that_cannot_exist(comparison_run):
    # classification's beyond-resolution test does not apply (image-level outputs have no resolution): it is
    # not one of the finding's tests, and the opening says so instead of counting it as "not testable here"
    from conceptsim.comparison.finding2 import NO_RESOLUTION
    from conceptsim.comparison.verdicts import not_testable

    doc, _ = comparison_run
    doc = json.loads(json.dumps(doc))
    doc["pairs"][0]["finding2"]["cls"] = json.loads(json.dumps(doc["pairs"][0]["finding2"]["seg"]))
    doc["pairs"][0]["finding2"]["cls"]["beyond_resolution"] = not_testable(
        "beyond_resolution", "alignment", NO_RESOLUTION).to_json()
    line = next(ln for ln in findings.study_opening([doc], "s").splitlines() if ln.startswith("**What it found"))
    n_f2 = sum(1 for m in doc["pairs"][0]["finding2"].values() for c in ("aligned", "beyond_resolution",
                                                                          "from_training") if c in m)
    assert f"of {n_f2 - 1} tests (not counted: 1 classification beyond-resolution test(s), which do not apply" in line


def test_finding2_headings_count_two_tests_for_classification(comparison_run):
    # classification's beyond-resolution test does not exist (image-level outputs), as the opening says
    doc, _ = comparison_run
    md = findings.findings_markdown(doc)
    assert "**Finding 2**: three tests per model pair" in md and "**Finding 2**: two tests per model pair" in md
    assert "two for classification" in findings.verdict_overview([doc])
