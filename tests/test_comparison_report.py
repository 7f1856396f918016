"""Findings tables (shown by notebook 04 and the book's Findings page) and figures render from a stage run (no
hand-typed numbers)."""

import json

import numpy as np
import pandas as pd
import pytest

from conceptsim.comparison import figures, report


def test_tables_carry_the_json_numbers(comparison_run):
    doc, _ = comparison_run
    f1 = doc["pairs"][0]["finding1"]["seg"]
    t = report.FindingTest.from_json(f1["test"])
    assert t.verdict in report.VERDICTS
    assert report.verdict_cell(t) in report.finding1_table(doc) and "| a vs b |" in report.finding1_table(doc)
    if t.ci_low is not None:
        assert report.fmt_test(t) in report.finding1_table(doc)
    f2 = doc["pairs"][0]["finding2"]["seg"]
    for c in ("aligned", "beyond_resolution", "from_training"):
        assert report.COMPONENT_NAMES[c] in report.finding2_table(doc)
    assert report.fmt(f2["error"], 2) in report.finding2_table(doc)


def test_untestable_finding_is_said_so(comparison_run):
    doc, _ = comparison_run
    doc = json.loads(json.dumps(doc))
    f1 = doc["pairs"][0]["finding1"]["seg"]
    f1["test"] = report.FindingTest("finding1", "agreement", reason="2 concept(s) pass the filter").to_json()
    assert "not testable here" in report.finding1_table(doc) and "2 concept(s)" in report.finding1_table(doc)
    assert "not testable here" in report.summary_sentences(doc)


def test_category_table_counts_the_concepts_that_passed_below_three(comparison_run):
    doc, _ = comparison_run
    doc = json.loads(json.dumps(doc))
    f1 = doc["pairs"][0]["finding1"]["seg"]
    f1["per_category"], f1["n_learned"] = {}, 2
    text = report.finding1_category_table(doc)
    assert "| (no breakdown) | 2 | fewer than 3 concepts |" in text and "No concept" not in text
    f1["n_learned"] = 0
    assert "no concept passes the learned-concept filter" in report.finding1_category_table(doc)


def test_old_documents_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="schema 3"):
        report.load_findings({"schema": 2, "pairs": []})


def test_figures_render(comparison_run):
    doc, sim = comparison_run
    for fig in (
        figures.layer_heatmaps(sim, "a"),
        figures.layer_heatmaps(sim, "a", "b", method="cls", cka="cka_grid4"),
        figures.cross_model_matrix(sim, ["a", "b", "a:random"]),
        figures.emergence_plot(doc),
        figures.finding1_plot(doc),
        figures.depth_profile_plot(doc),
        figures.finding2_plot(doc),
    ):
        fig.canvas.draw() if hasattr(fig.canvas, "draw") else None
        fig.savefig(__import__("io").BytesIO(), format="png")
    values, rows, cols = figures.matrix(sim, "b", "a", "cka")
    assert values.shape == (2, 2) and rows[0][1] == "m1"


def test_figures_draw_what_matrix_reads_from_all_rows(comparison_run):
    """layer_heatmaps and cross_model_matrix select their models' and methods' rows once (rows_between): every
    panel still shows what matrix() reads from the whole table, and the within-model rows that notebook 03
    passes draw the same heat maps."""
    import numpy as np

    _, sim = comparison_run

    def drawn(fig):
        return [np.ma.filled(a.get_array().astype(float), np.nan) for ax in fig.axes
                for a in [*ax.get_images(), *ax.collections] if a.get_array() is not None and ax.get_label() != "<colorbar>"]

    cka = drawn(figures.layer_heatmaps(sim, "a"))[-1]
    np.testing.assert_array_equal(cka, figures.matrix(sim, "a", "a", "cka")[0])
    within = sim[sim["model_a"] == sim["model_b"]]
    for got, want in zip(drawn(figures.layer_heatmaps(within, "a", method="cls")), drawn(figures.layer_heatmaps(sim, "a", method="cls"))):
        np.testing.assert_array_equal(got, want)
    models = ["a", "b", "a:random"]
    grid = drawn(figures.cross_model_matrix(sim, models, method="seg"))
    expected = [figures.matrix(sim, ma, mb, "seg")[0] for ma in models for mb in models]
    assert len(grid) == sum(e.size > 0 for e in expected)
    for got, want in zip(grid, [e for e in expected if e.size]):
        np.testing.assert_array_equal(got, want)


def _text_boxes(fig):
    """Window extents of every non-empty title and axis label of a drawn figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    canvas.draw()  # constrained layout settles on the second pass
    renderer = fig.canvas.get_renderer()
    texts = [fig._suptitle] if fig._suptitle else []
    for ax in fig.axes:
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
    return [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_text() and t.get_visible()]


def test_cross_model_titles_are_legible_with_long_model_names(comparison_run):
    _, sim = comparison_run
    long = {"a": "centernet_mobilenet_v3_coco", "b": "ssd_mobilenet_v2_coco", "a:random": "centernet_mobilenet_v3_coco:random"}
    sim = sim.assign(model_a=sim["model_a"].map(lambda m: long.get(m, m)), model_b=sim["model_b"].map(lambda m: long.get(m, m)))
    fig = figures.cross_model_matrix(sim, list(long.values()))
    boxes = _text_boxes(fig)
    assert any("ssd_mobilenet" in t for t, _ in boxes)  # the models are named
    width, height = fig.bbox.width, fig.bbox.height
    for i, (ta, a) in enumerate(boxes):
        assert a.x0 >= -1 and a.y0 >= -1 and a.x1 <= width + 1 and a.y1 <= height + 1, f"{ta!r} outside the figure"
        for tb, b in boxes[i + 1:]:
            assert not a.overlaps(b), f"{ta!r} overlaps {tb!r}"
    assert figures.wrap_name("centernet_mobilenet_v3_coco") == "centernet_\nmobilenet_v3_\ncoco"


def test_finding1_legend_and_pair_names_when_the_first_pair_is_not_testable(comparison_run):
    """The interval and MDE enter the legend from the first pair that has them (photo-colors seg: the first
    pairs are not testable), and the model pair names under the axis do not run into each other."""
    doc, _ = comparison_run
    doc = json.loads(json.dumps(doc))
    first = doc["pairs"][0]
    first["model_a"], first["model_b"] = "ssd_mobilenet_v2_coco", "centernet_mobilenet_v3_coco"
    first["finding1"]["seg"]["test"] = report.FindingTest("finding1", "agreement", reason="2 concept(s)").to_json()
    second = json.loads(json.dumps(first))
    second["model_a"], second["model_b"] = "ssd_mobilenet_v2_coco", "mobilenet_v2_imagenet"
    second["finding1"]["seg"]["test"] = report.FindingTest(
        "finding1", "agreement", effect=0.2, ci_low=-0.2, ci_high=0.6, n=5, p_value=0.2, mde=0.8,
        verdict="inconclusive").to_json()
    third = json.loads(json.dumps(second))
    third["model_a"], third["model_b"] = "centernet_mobilenet_v3_coco", "mobilenet_v2_imagenet"
    doc["pairs"] = [first, second, third]
    fig = figures.finding1_plot(doc)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "trained − twins, 95 % CI" in labels and "minimum detectable effect (80 % power)" in labels
    assert len(labels) == len(set(labels))  # one entry per kind
    _text_boxes(fig)  # draws the figure
    renderer = fig.canvas.get_renderer()
    ticks = [t.get_window_extent(renderer) for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert len(ticks) == 3
    for i, a in enumerate(ticks):
        assert not any(a.overlaps(b) for b in ticks[i + 1:]), "model pair names overlap"


def test_emergence_depth_label_fits_the_figure(comparison_run):
    """The emergence plot's axis label and title stay inside the figure beside a legend of long model names
    (coco-icons: the label was clipped at the left)."""
    doc, _ = comparison_run
    doc = json.loads(json.dumps(doc))
    long = {m: f"centernet_mobilenet_v3_coco{m}" for m in doc["models"]}
    doc["models"] = list(long.values())
    for e in doc["emergence"]:
        e["model"] = long.get(e["model"], e["model"])
    fig = figures.emergence_plot(doc)
    width, height = fig.bbox.width, fig.bbox.height
    for text, box in _text_boxes(fig):
        assert box.x0 >= -1 and box.y0 >= -1 and box.x1 <= width + 1 and box.y1 <= height + 1, f"{text!r} clipped"


def test_signed_measures_are_drawn_on_a_diverging_scale_and_ties_in_depth_keep_the_study_order(comparison_run):
    """A negative cls_partial (layers that disagree) must not look like 0: correlations and agreement beyond
    chance are drawn on [-1, 1]; set IoU and CKA on [0, 1]. Layers at one relative depth (the pixels floor's
    strides) keep the study's layer order, not their names' (stride16 before stride4)."""
    _, sim = comparison_run
    for method, low in (("cls_partial", -1.0), ("seg_kappa", -1.0), ("seg", 0.0)):
        meshes = [a for ax in figures.layer_heatmaps(sim, "a", method=method).axes for a in ax.get_images()]
        assert meshes and all(m.norm.vmin == low and m.norm.vmax == 1.0 for m in meshes), method
    grid = figures.cross_model_matrix(sim, ["a", "b"], method="cls_partial")
    assert all(c.norm.vmin == -1.0 for ax in grid.axes for c in ax.collections if c.get_array() is not None)
    names = ["stride4", "stride8", "stride16", "stride32"]
    rows = [{"method": "seg", "model_a": "p", "layer_a": a, "depth_a": 0.0, "model_b": "p", "layer_b": b,
             "depth_b": 0.0, "value": 0.5} for i, a in enumerate(names) for b in names[i:]]
    _, order, cols = figures.matrix(pd.DataFrame(rows), "p", "p", "seg")
    assert [r[1] for r in order] == names and [c[1] for c in cols] == names


def test_emergence_markers_stay_on_their_concepts_row(comparison_run):
    doc, _ = comparison_run
    doc = json.loads(json.dumps(doc))
    doc["models"] = [f"m{i}" for i in range(13)]  # the default study's 13 models
    doc["emergence"] = [{"model": m, "concept": c, "method": "seg", "depth": 0.5} for m in doc["models"]
                        for c in doc["concepts"]]
    fig = figures.emergence_plot(doc)
    ys = np.concatenate([c.get_offsets()[:, 1] for c in fig.axes[0].collections])
    assert np.abs(ys - np.round(ys)).max() <= 0.3 + 1e-9


def test_a_cell_without_a_value_is_not_drawn_as_zero(comparison_run):
    # white is 0 on the diverging scale: a missing cell shows the axes' grey
    _, sim = comparison_run
    fig = figures.layer_heatmaps(sim, "a", method="cls_partial")
    drawn = [ax for ax in fig.axes if ax.get_images()]
    assert drawn and all(ax.get_facecolor()[:3] == (0.75, 0.75, 0.75) for ax in drawn)
