"""Interactive exploration of a study's stored results (``notebooks/explore.ipynb``, ``make lab``).

Everything here reads result files only -- activation stores, concept vectors, ``similarity.csv`` -- and
the images the stores were extracted from; nothing is recomputed or written. Pick a dataset, two (model,
layer) pairs and a concept: :func:`two_layer_view` segments the concept with both layers' Net2Vec vectors
on test images that contain it, :func:`two_layer_figure` draws them side by side with the true masks, and
:func:`similarity_rows` lists what ``similarity.csv`` says about the two layers (the concept's rows and the
concept-free CKA rows). :func:`explorer` puts widgets on top of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from conceptsim import pipeline
from conceptsim.comparison.outputs import compared_models
from conceptsim.paths import results_dir


def catalogue(study: str) -> dict[str, dict[str, dict]]:
    """``{dataset: {model: {"layers": [...], "concepts": [...]}}}`` of every model with an activation store
    and segmentation vectors under ``results/<study>/``; layers in order of relative depth."""
    from conceptsim.extraction.store import ActivationStore

    root = results_dir() / study
    if not root.is_dir():
        raise FileNotFoundError(f"no results for study {study!r} in {root}; run `conceptsim run` first")
    out: dict[str, dict[str, dict]] = {}
    for store_dir in sorted(root.glob("*/*/activations.zarr")):
        vectors = sorted((store_dir.parent / "vectors").glob("seg_*.npz"))
        if not vectors:
            continue
        store = ActivationStore(store_dir)
        layers = [name for name in sorted(store.layer_names, key=lambda n: store.layer(n).relative_depth)
                  if (store_dir.parent / "vectors" / f"seg_{name}.npz") in vectors]
        if layers:
            out.setdefault(store_dir.parent.parent.name, {})[store.model] = {
                "layers": layers, "concepts": list(store.concept_names)}
    if not out:
        raise FileNotFoundError(f"no model under {root} has an activation store with concept vectors yet")
    return out


@dataclass
class TwoLayerView:
    """Test images of one dataset with a concept's true mask and two layers' predicted masks."""

    concept: str
    layers: tuple[tuple[str, str], tuple[str, str]]  # ((model, layer), (model, layer))
    image_ids: np.ndarray
    images: list[np.ndarray]
    truth: np.ndarray  # n x gh x gw, binary, evaluation grid over the image frame
    predicted: tuple[np.ndarray, np.ndarray]  # each n x gh x gw

    def iou(self) -> list[tuple[float, float]]:
        """Per image, the set IoU of each layer's mask with the true mask (nan where both are empty)."""
        out = []
        for i in range(len(self.image_ids)):
            pair = []
            for pred in self.predicted:
                union = np.logical_or(pred[i], self.truth[i]).sum()
                pair.append(float(np.logical_and(pred[i], self.truth[i]).sum() / union) if union else float("nan"))
            out.append((pair[0], pair[1]))
        return out


def _image(store, row: int) -> np.ndarray:
    """The stored row's image, or a blank frame of the model's input size where the files are unknown."""
    if "annotation_file" in store.attrs and Path(store.attrs["image_dir"]).exists():
        return store.read_images([row])[0]
    h, w = store.input_size
    return np.full((h, w, 3), 235, np.uint8)


def two_layer_view(study: str, dataset: str, a: tuple[str, str], b: tuple[str, str], concept: str,
                   n: int = 4) -> TwoLayerView:
    """``n`` test images containing ``concept`` (fewer if fewer do), with its true mask and the masks
    predicted by layer ``a = (model, layer)`` and ``b = (model, layer)`` (the models may differ)."""
    from conceptsim.extraction.store import ActivationStore

    stores = [ActivationStore(pipeline.store_path(study, dataset, model)) for model, _ in (a, b)]
    if concept not in stores[0].concept_names:
        raise ValueError(f"concept {concept!r} is not in the {dataset} store; concepts: {stores[0].concept_names}")
    first = stores[0]
    test = first.split_index("test")
    with_concept = test[first.labels[test][:, first.concept_names.index(concept)] > 0]
    rows_a = np.sort((with_concept if len(with_concept) else test)[:n])
    ids = first.image_ids[rows_a]
    where = {int(i): r for r, i in enumerate(stores[1].image_ids)}
    missing = [int(i) for i in ids if int(i) not in where]
    if missing:
        raise ValueError(f"{b[0]}'s store on {dataset} lacks test images {missing[:5]} of {a[0]}'s")
    rows_b = np.array([where[int(i)] for i in ids], dtype=int)
    predicted = tuple(
        pipeline.layer_segmentation(store, pipeline.model_results(study, dataset, model), layer, rows, [concept])[:, 0]
        for store, (model, layer), rows in zip(stores, (a, b), (rows_a, rows_b))
    )
    truth = np.asarray(first.masks.get_orthogonal_selection((rows_a,)))[:, first.concept_names.index(concept)] > 0
    return TwoLayerView(concept, (tuple(a), tuple(b)), ids, [_image(first, int(r)) for r in rows_a], truth, predicted)


def two_layer_figure(view: TwoLayerView):
    """One row per layer, one column per image: true and predicted masks as outlines on the grey image."""
    from conceptsim.concepts.figures import segmentation_overlay

    predicted = np.stack(view.predicted, axis=1)
    truth = np.stack([view.truth, view.truth], axis=1)
    names = [f"{model}\n{layer}" for model, layer in view.layers]
    fig = segmentation_overlay(view.images, predicted, truth, names, max_images=len(view.images),
                               title=f"concept {view.concept}: IoU of the first / second layer per image")
    for ax, (iou_a, iou_b), image_id in zip(fig.axes[: len(view.images)], view.iou(), view.image_ids):
        ax.set_title(f"image {int(image_id)}\nIoU {iou_a:.2f} / {iou_b:.2f}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.75 / fig.get_figheight()))  # room for the titles just set
    return fig


def similarity_rows(study: str, dataset: str, a: tuple[str, str], b: tuple[str, str], concept: str) -> pd.DataFrame:
    """Rows of the dataset's ``similarity.csv`` comparing layer ``a`` with layer ``b`` (either order):
    the concept's rows of every method, then the concept-free CKA rows."""
    if not compared_models(a[0], b[0]):
        raise ValueError(f"models {a[0]!r} and {b[0]!r} are not compared, so similarity.csv holds no rows for them: a "
                         "trained model is not compared with another architecture's twin, nor twins of two architectures "
                         "with different seeds (conceptsim.comparison.outputs.compared_models)")
    path = pipeline.dataset_results(study, dataset) / "similarity.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist yet: the layer comparison (notebook 03) has not run")
    sim = pd.read_csv(path, keep_default_na=False, na_values=[""])
    fwd = (sim["model_a"] == a[0]) & (sim["layer_a"] == a[1]) & (sim["model_b"] == b[0]) & (sim["layer_b"] == b[1])
    rev = (sim["model_a"] == b[0]) & (sim["layer_a"] == b[1]) & (sim["model_b"] == a[0]) & (sim["layer_b"] == a[1])
    concept_ok = (sim["concept"] == concept) | sim["concept"].isna() | (sim["concept"] == "")
    rows = sim[(fwd | rev) & concept_ok].drop_duplicates(subset=["concept", "method"])
    cols = ["concept", "method", "model_a", "layer_a", "depth_a", "model_b", "layer_b", "depth_b", "value", "n_test"]
    return rows.sort_values(["concept", "method"], na_position="last")[cols].reset_index(drop=True)


def explorer(study: str = "default", n: int = 4):
    """Widgets: dataset, model and layer for A and B, concept; redraws the view and the similarity rows."""
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    cat = catalogue(study)
    dataset = w.Dropdown(description="dataset", options=sorted(cat), value=sorted(cat)[0])
    models = [w.Dropdown(description=f"model {s}") for s in "AB"]
    layers = [w.Dropdown(description=f"layer {s}") for s in "AB"]
    concept = w.Dropdown(description="concept")
    out = w.Output()

    def offer(dropdown, options, pick: int = 0):
        dropdown.options = list(options)
        if dropdown.value not in dropdown.options:
            dropdown.value = dropdown.options[pick]

    def fill(*_):
        ds = cat[dataset.value]
        for m in models:
            offer(m, sorted(ds))
        for i, (m, lay) in enumerate(zip(models, layers)):
            offer(lay, ds[m.value]["layers"], pick=-1 if i else 0)  # B starts at the deepest layer
        offer(concept, ds[models[0].value]["concepts"])

    def refresh_layers(i):
        def _f(*_):
            if models[i].value in cat[dataset.value]:
                offer(layers[i], cat[dataset.value][models[i].value]["layers"], pick=-1 if i else 0)
        return _f

    def draw(*_):
        if not (dataset.value and all(m.value for m in models) and all(lay.value for lay in layers) and concept.value):
            return
        a, b = (models[0].value, layers[0].value), (models[1].value, layers[1].value)
        with out:
            out.clear_output(wait=True)
            try:
                view = two_layer_view(study, dataset.value, a, b, concept.value, n=n)
                display(two_layer_figure(view))
                plt.close("all")
                display(similarity_rows(study, dataset.value, a, b, concept.value))
            except (ValueError, FileNotFoundError, KeyError) as exc:
                print(f"cannot show this choice: {exc}")

    dataset.observe(fill, "value")
    for i, m in enumerate(models):
        m.observe(refresh_layers(i), "value")
    fill()
    for widget in (*layers, concept, dataset, *models):
        widget.observe(draw, "value")
    draw()
    return w.VBox([w.HBox([dataset, concept]), w.HBox(models), w.HBox(layers), out])
