"""The layer and model comparison figures of the book (not the findings figures): every text at least 9 pt,
layer names on an axis not overlapping each other; the concept notebook's quality legend beside the data."""

import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text

from conceptsim.comparison import figures
from conceptsim.comparison.stage import run_comparison_stage
from conceptsim.comparison.synthetic import build_synthetic_study


@pytest.fixture(scope="module")
def similarity(tmp_path_factory):
    root = tmp_path_factory.mktemp("figs") / "ds"
    layers = [(f"features.{i}", (i + 1) / 12, 4, 4) for i in range(12)]  # twelve layers: crowded axes
    spec = {"a": layers, "b": [("m1", 0.5, 4, 3), ("m2", 1.0, 2, 3)]}
    spec.update({f"{m}:random": v for m, v in list(spec.items())})
    build_synthetic_study(root, spec, n_images=12, signal=lambda m, i, d, c: 0.1 if ":random" in m else 1.0)
    paths = run_comparison_stage(root, root, models=list(spec), permutations=50, bootstrap=50)
    return pd.read_csv(paths["similarity"])


def drawn_texts(fig):
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    return [(t, t.get_window_extent(renderer)) for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


@pytest.mark.parametrize("make", [
    lambda sim: figures.layer_heatmaps(sim, "a"),
    lambda sim: figures.layer_heatmaps(sim, "a", "b", method="cls", cka="cka_grid4"),
    lambda sim: figures.cross_model_matrix(sim, ["a", "b", "a:random"]),
])
def test_comparison_figure_text_is_at_least_9_pt_and_layer_names_do_not_overlap(similarity, make):
    fig = make(similarity)
    texts = drawn_texts(fig)
    small = sorted({(t.get_text(), t.get_fontsize()) for t, _ in texts if t.get_fontsize() < figures.MIN_FONT})
    assert not small, f"text below {figures.MIN_FONT} pt: {small[:5]}"
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            labels = [t for t in axis.get_ticklabels() if t.get_visible() and t.get_text()]
            boxes = [b for t, b in texts if t in labels]
            for i, a in enumerate(boxes):
                assert not any(a.overlaps(b) for b in boxes[i + 1:]), f"tick labels overlap on {ax.get_title()!r}"


def test_concept_quality_legend_sits_beside_the_panels():
    from conceptsim.concepts.figures import quality_vs_depth

    q = pd.DataFrame({"model": "m", "method": "seg", "metric": "set_iou", "category": ["colour"] * 4 + ["shape"] * 4,
                      "concept": ["red", "red", "blue", "blue", "sq", "sq", "disc", "disc"],
                      "relative_depth": [0.2, 0.8] * 4, "value": 0.5, "random_init_value": 0.3, "control_value": 0.1})
    fig = quality_vs_depth(q)
    texts = drawn_texts(fig)
    legend = fig.legends[0]
    assert min(t.get_fontsize() for t in legend.get_texts()) >= 9
    box = legend.get_window_extent(FigureCanvasAgg(fig).get_renderer())
    for ax in fig.axes:  # no panel's data area under the legend
        assert not box.overlaps(ax.get_window_extent()), "the legend covers a panel"
    assert texts
