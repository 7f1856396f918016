"""The results explorer on a synthetic study: catalogue, two-layer masks, similarity rows, widgets."""

import numpy as np
import pandas as pd
import pytest

from conceptsim import explorer
from conceptsim.comparison.stage import run_comparison_stage
from conceptsim.comparison.synthetic import build_synthetic_study

# model a: layer l1 carries every concept (signal 1), l2 none (signal 0); model b carries them everywhere
SPEC = {"a": [("l2", 1.0, 4, 4), ("l1", 0.4, 8, 4)], "b": [("m1", 0.5, 8, 3)]}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    mp = pytest.MonkeyPatch()
    mp.setenv("CONCEPTSIM_RESULTS", str(results))
    root = results / "syn" / "shapes"
    build_synthetic_study(root, SPEC, n_images=24, noise=0.1,
                          signal=lambda m, i, d, c: 0.0 if (m, d) == ("a", 1.0) else 1.0)
    run_comparison_stage(root, root, models=list(SPEC), permutations=50, bootstrap=20)
    yield "syn"
    mp.undo()


def test_catalogue_lists_models_layers_by_depth_and_concepts(study):
    cat = explorer.catalogue(study)
    assert list(cat) == ["shapes"]
    assert cat["shapes"]["a"]["layers"] == ["l1", "l2"]  # ordered by relative depth, not by name or store order
    assert cat["shapes"]["b"]["concepts"] == ["sky", "dog", "red"]
    with pytest.raises(FileNotFoundError, match="no results for study 'nope'"):
        explorer.catalogue("nope")


def test_two_layer_view_predicts_with_each_layers_vectors(study):
    view = explorer.two_layer_view(study, "shapes", ("a", "l1"), ("a", "l2"), "dog", n=3)
    assert len(view.image_ids) == 3 and view.truth.shape == view.predicted[0].shape
    assert all(t.any() for t in view.truth)  # images chosen among those containing the concept
    iou = np.array(view.iou())
    assert (iou[:, 0] > 0.5).all() and (iou[:, 1] < 0.1).all()  # the planted layer finds it, the empty one not
    across = explorer.two_layer_view(study, "shapes", ("a", "l1"), ("b", "m1"), "dog", n=3)
    assert list(across.image_ids) == list(view.image_ids)  # the same images in both models' stores
    assert (np.array(across.iou())[:, 1] > 0.5).all()
    fig = explorer.two_layer_figure(view)
    assert len(fig.axes) == 2 * 3 and "IoU" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="concept 'cat'"):
        explorer.two_layer_view(study, "shapes", ("a", "l1"), ("a", "l2"), "cat")


def test_similarity_rows_are_the_files_rows_for_the_pair(study, tmp_path):
    from conceptsim import pipeline

    rows = explorer.similarity_rows(study, "shapes", ("a", "l1"), ("b", "m1"), "dog")
    sim = pd.read_csv(pipeline.dataset_results(study, "shapes") / "similarity.csv", keep_default_na=False, na_values=[""])
    assert {"seg", "cls", "cka"} <= set(rows["method"])
    assert set(rows["concept"].dropna()) == {"dog"}
    seg = rows[rows["method"] == "seg"].iloc[0]
    match = sim[(sim["method"] == "seg") & (sim["concept"] == "dog") & (sim["layer_a"] == seg["layer_a"])
                & (sim["layer_b"] == seg["layer_b"]) & (sim["model_a"] == seg["model_a"]) & (sim["model_b"] == seg["model_b"])]
    assert match["value"].iloc[0] == seg["value"]
    # order of the pair does not matter
    flipped = explorer.similarity_rows(study, "shapes", ("b", "m1"), ("a", "l1"), "dog")
    assert sorted(flipped["value"]) == sorted(rows["value"])
    with pytest.raises(ValueError, match="'a' and 'b:random' are not compared"):
        explorer.similarity_rows(study, "shapes", ("a", "l1"), ("b:random", "m1"), "dog")


def test_explorer_widgets_offer_the_catalogue(study):
    pytest.importorskip("ipywidgets")
    ui = explorer.explorer(study, n=2)
    dataset, concept = ui.children[0].children
    model_a, model_b = ui.children[1].children
    layer_a, layer_b = ui.children[2].children
    assert dataset.options == ("shapes",) and concept.options == ("sky", "dog", "red")
    assert model_a.options == ("a", "b") and layer_a.options == ("l1", "l2") and layer_b.value == "l2"
    model_b.value = "b"
    assert layer_b.options == ("m1",)
