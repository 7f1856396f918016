"""Generated book pages: the per-dataset index pages."""



from conceptsim.book import reporting
from conceptsim.run.study import Run, load_study


def test_dataset_index_links_each_runs_executed_notebook_under_its_stage_title(tmp_path):
    study = load_study("studies/default.yml")
    runs = [r for r in study.runs() if r.dataset == "shapes"][:3]
    text = reporting.dataset_index(study, "shapes", runs)
    assert text.startswith("# Dataset `shapes`")
    assert "- [Activation extraction: ssd_mobilenet_v2_coco on shapes](ssd_mobilenet_v2_coco/01_extract.ipynb)" in text
    assert "- [Concept learning: ssd_mobilenet_v2_coco on shapes](ssd_mobilenet_v2_coco/02_concepts.ipynb)" in text
    assert reporting.dataset_index(study, "x", [Run("compare_models", "x", None, {})]).endswith(
        "- [Model comparison and findings: x](04_compare_models.ipynb)\n")


def test_reproducibility_page_gives_a_runnable_command_and_marks_reused_extractions(tmp_path, monkeypatch):
    import json

    from conceptsim.paths import concept_stage_json, extraction_timings_json, model_results

    monkeypatch.setenv("CONCEPTSIM_ROOT", str(tmp_path))
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "s.yml").write_text("name: s\ndatasets: {shapes: {}}\nmodels: [ssd_mobilenet_v2_coco]\n")
    study = load_study(tmp_path / "studies" / "s.yml")
    timings = extraction_timings_json(model_results("s", "shapes", "ssd_mobilenet_v2_coco"))
    timings.parent.mkdir(parents=True)
    timings.write_text(json.dumps({"reused": True}))
    stage_record = concept_stage_json(model_results("s", "shapes", "ssd_mobilenet_v2_coco"))
    stage_record.write_text("{}")
    written = stage_record.stat().st_mtime
    run = {"dataset": "shapes", "model": "ssd_mobilenet_v2_coco", "parameters": {"study": "s"}}
    records = [{**run, "id": "extract/shapes/ssd_mobilenet_v2_coco", "stage": "extract", "seconds": 2.0,
                "notebook": "01_extract.ipynb", "started": written + 1},
               {**run, "id": "concepts/shapes/ssd_mobilenet_v2_coco", "stage": "concepts", "seconds": 1.5,
                "notebook": "02_concepts.ipynb", "started": written + 1}]  # its stage record predates the run
    page = reporting.write_reproducibility_page(study, records, tmp_path / "r.md").read_text()
    assert "conceptsim run studies/s.yml\n" in page  # runnable from the project root, not just the file name
    assert "| extract/shapes/ssd_mobilenet_v2_coco | 2.0 (reused stored activations) |" in page
    assert "| concepts/shapes/ssd_mobilenet_v2_coco | 1.5 (reused stored concept vectors) |" in page
    assert "not the cost of a fresh study" in page
    records[1]["started"] = written - 1  # the record was written during the run: computed, nothing to say
    page = reporting.write_reproducibility_page(study, records, tmp_path / "r.md").read_text()
    assert "| concepts/shapes/ssd_mobilenet_v2_coco | 1.5 |" in page
