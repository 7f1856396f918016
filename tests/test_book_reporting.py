"""Generated book pages: the per-dataset index pages."""



from conceptsim.book import reporting
from conceptsim.run.study import Run, load_study


def test_dataset_index_lists_each_run_with_its_stage_title(tmp_path):
    study = load_study("studies/default.yml")
    runs = [r for r in study.runs() if r.dataset == "shapes"][:3]
    text = reporting.dataset_index(study, "shapes", runs)
    assert text.startswith("# Dataset `shapes`")
    assert "- Activation extraction: ssd_mobilenet_v2_coco on shapes" in text
    assert "- Concept learning: ssd_mobilenet_v2_coco on shapes" in text
    assert reporting.dataset_index(study, "x", [Run("compare_models", "x", None, {})]).endswith(
        "- Model comparison and findings: x\n")
