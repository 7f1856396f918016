"""Sanity figures of the ``coco-icons`` dataset for its book page (run by hand; see ``book/datasets/coco-icons.md``).

``python -m conceptsim.book.coco_icons [--n N --size S --seed K --out DIR]`` builds (or reuses) the
dataset and writes into ``DIR`` (default ``book/datasets/coco-icons``):

- ``examples.png``: example images per style, beside them the instance masks in colour (``mode: scene``);
  ``examples-objects.png`` the same for a build of the same size in ``mode: objects`` (the default study's);
- ``counts.csv``: images per concept and split under the style-held-out split of the default study;
- ``detector_recall.csv`` and ``detector_recall.png``: the COCO detectors' own ``detect()`` at score
  >= 0.3 on the images of each style: the fraction of instances found (a detection of the right class with
  box IoU >= 0.5 against the visible mask's box) and the fraction found by class alone (a detection of the
  right class anywhere in the image).

``python -m conceptsim.book.coco_icons --power [--mode objects --n 720 --max-images 240]`` instead runs
the power check (:func:`probe_power`): a cheap proxy of the concept stage's classification probes, on
global-average-pooled features, for a trained model and its random-init twin, written to ``--out`` as CSV.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np

from conceptsim.atomic import save_figure
from conceptsim.paths import project_root

DETECTORS = ("ssd_mobilenet_v2_coco", "centernet_mobilenet_v3_coco")
#: The split the default study uses (see studies/default.yml).
STYLE_SPLIT = {"by": "style", "test": ["noto"], "val": ["twemoji"]}
#: The 14 categories of the default study's coco-icons build (studies/default.yml), chosen by the screening of
#: ``benchmarks/coco_icons_proxy.py --select`` (dataset page).
DEFAULT_STUDY_CATEGORIES = ("person", "car", "airplane", "bus", "truck", "boat", "stop sign", "zebra", "giraffe",
                            "sports ball", "banana", "pizza", "tv", "laptop")
#: The 14 categories the default study used before the screening (the power check's "14" rows).
UNSCREENED_STUDY_CATEGORIES = ("person", "car", "airplane", "bus", "train", "boat", "bird", "dog", "horse", "elephant",
                               "pizza", "cake", "tv", "laptop")
#: The 20 categories the default study used before (the power check's earlier rows on the dataset page).
EARLIER_STUDY_CATEGORIES = ("person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "bird",
                            "cat", "dog", "horse", "sheep", "cow", "elephant", "cup", "pizza", "chair", "tv")


def _coco(annotation_file):
    import contextlib
    import io

    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(annotation_file))


def example_figure(annotation_file: str | Path, path: str | Path, per_style: int = 3) -> Path:
    """Per style (rows), ``per_style`` images and their instance masks (each instance one colour)."""
    import matplotlib.pyplot as plt
    from PIL import Image

    coco = _coco(annotation_file)
    image_dir = Path(annotation_file).parent / "images"
    styles = sorted({im["style"] for im in coco.imgs.values()})
    fig, axes = plt.subplots(len(styles), 2 * per_style, figsize=(2 * per_style * 1.6, len(styles) * 1.7), squeeze=False)
    palette = plt.get_cmap("tab10")
    for r, style in enumerate(styles):
        ids = sorted(i for i, im in coco.imgs.items() if im["style"] == style)[:per_style]
        for k, iid in enumerate(ids):
            rgb = np.asarray(Image.open(image_dir / coco.imgs[iid]["file_name"]).convert("RGB"))
            over = (rgb * 0.25).astype(np.uint8)
            names = []
            for j, ann in enumerate(coco.loadAnns(coco.getAnnIds(imgIds=[iid]))):
                m = coco.annToMask(ann).astype(bool)
                over[m] = (np.array(palette(j % 10)[:3]) * 255).astype(np.uint8)
                names.append(coco.cats[ann["category_id"]]["name"])
            axes[r, 2 * k].imshow(rgb)
            axes[r, 2 * k + 1].imshow(over)
            axes[r, 2 * k + 1].set_title(", ".join(names), fontsize=8)
        axes[r, 0].set_ylabel(style, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return Path(path)


def split_counts(annotation_file: str | Path, split_by=STYLE_SPLIT, seed: int = 0,
                 fractions: Sequence[float] = (0.6, 0.2, 0.2)):
    """Images and instances per concept (categories and supercategory groups) and split."""
    import pandas as pd

    from conceptsim.data.coco import split_assignment
    from conceptsim.data.coco_icons import concepts
    from conceptsim.data.icon_sources import category
    from conceptsim.data.splits import check_split, grouped_assignment

    coco = _coco(annotation_file)
    rule = check_split(split_by)
    split = grouped_assignment(coco.imgs, rule, seed, fractions) if rule else split_assignment(coco.imgs, seed, fractions)
    names = {c["id"]: c["name"] for c in coco.cats.values()}
    cats = [category(n) for n in names.values()]
    rows = []
    for concept, members in concepts(cats).items():
        for s in ("train", "val", "test"):
            anns = [a for a in coco.anns.values() if names[a["category_id"]] in members and split[a["image_id"]] == s]
            rows.append({"concept": concept, "split": s, "images": len({a["image_id"] for a in anns}), "instances": len(anns)})
    return pd.DataFrame(rows)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``a`` (N x 4) with ``b`` (M x 4), both x1 y1 x2 y2."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def detector_recall(annotation_file: str | Path, models: Sequence[str] = DETECTORS, score_threshold: float = 0.3,
                    iou: float = 0.5, max_images_per_style: int | None = None, batch_size: int = 8):
    """Per model and style: instances, the fraction found with IoU >= ``iou``, the fraction found by class."""
    import pandas as pd
    import torch
    from PIL import Image

    from conceptsim.models.registry import build_model

    coco = _coco(annotation_file)
    image_dir = Path(annotation_file).parent / "images"
    styles = sorted({im["style"] for im in coco.imgs.values()})
    chosen = [i for s in styles for i in sorted(i for i, im in coco.imgs.items() if im["style"] == s)[:max_images_per_style]]
    rows = []
    for name in models:
        loaded = build_model(name)
        spec, pp = loaded.spec, loaded.preprocessing
        loaded.module.eval()
        found = {s: [0, 0, 0] for s in styles}  # instances, found by box, found by class
        for start in range(0, len(chosen), batch_size):
            ids = chosen[start : start + batch_size]
            rgbs = [np.asarray(Image.open(image_dir / coco.imgs[i]["file_name"]).convert("RGB")) for i in ids]
            with torch.no_grad():
                dets = spec.detect(loaded.module, torch.stack([pp.apply_image(x) for x in rgbs]), score_threshold=score_threshold)
            for iid, rgb, det in zip(ids, rgbs, dets):
                top, left, bottom, right = pp.content_box(rgb.shape[:2])
                boxes = det["boxes"].numpy().astype(np.float64)
                if boxes.size and boxes.max() <= 1.5:  # normalised to the input frame (SSD)
                    boxes = boxes * np.array([pp.size[1], pp.size[0], pp.size[1], pp.size[0]])
                # input frame -> image pixels
                sx, sy = (right - left) / rgb.shape[1], (bottom - top) / rgb.shape[0]
                boxes = (boxes - np.array([left, top, left, top])) / np.array([sx, sy, sx, sy])
                labels = [spec.label_name(int(k)) for k in det["labels"]]
                style = coco.imgs[iid]["style"]
                for ann in coco.loadAnns(coco.getAnnIds(imgIds=[iid])):
                    cname = coco.cats[ann["category_id"]]["name"]
                    x, y, w, h = ann["bbox"]
                    same = np.array([lab == cname for lab in labels], bool)
                    found[style][0] += 1
                    found[style][2] += bool(same.any())
                    if same.any():
                        found[style][1] += bool((_iou(np.array([[x, y, x + w, y + h]], float), boxes[same]) >= iou).any())
        for s, (n, box, cls) in found.items():
            rows.append({"model": name, "style": s, "instances": n, "recall_iou": box / max(n, 1),
                         "recall_class": cls / max(n, 1), "score_threshold": score_threshold, "iou": iou})
    return pd.DataFrame(rows)


def recall_figure(table, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    piv = table.pivot(index="style", columns="model", values="recall_iou")
    ax = piv.plot.bar(figsize=(6.5, 3.4), rot=20, ylim=(0, 1))
    ax.set_ylabel("instance recall")
    ax.set_title(f"detect() at score ≥ {table['score_threshold'].iloc[0]:g}: right class, box IoU ≥ {table['iou'].iloc[0]:g}",
                 fontsize=9)
    ax.figure.tight_layout()
    save_figure(ax.figure, path, dpi=110)
    plt.close(ax.figure)
    return Path(path)


def layer_activations(loaded, dataset, layers: Sequence[str], spatial: Sequence[str] = (), grid_cap: int = 16,
                      batch_size: int = 16) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per layer, the global-average-pooled activations (images x channels) of ``dataset``'s images; and for
    the ``spatial`` layers the activation maps themselves (images x channels x h x w, float16), average-pooled
    to at most ``grid_cap`` x ``grid_cap`` as the extraction stage pools to its ``grid_cap``."""
    import torch
    import torch.nn.functional as F

    from conceptsim.extraction.hooks import record_activations

    loaded.module.eval()
    pooled: dict[str, list] = {layer: [] for layer in layers}
    maps: dict[str, list] = {layer: [] for layer in spatial}
    with torch.no_grad(), record_activations(loaded.module, list(dict.fromkeys([*layers, *spatial])),
                                             model_name=loaded.spec.name) as rec:
        for start in range(0, len(dataset), batch_size):
            x = torch.stack([dataset.preprocessing.apply_image(dataset.read_image(i))
                             for i in dataset.image_ids[start : start + batch_size]])
            loaded.features(x)
            for layer in layers:
                pooled[layer].append(rec[layer].float().mean(dim=(2, 3)).numpy())
            for layer in spatial:
                a = rec[layer].float()
                if max(a.shape[2:]) > grid_cap:
                    a = F.adaptive_avg_pool2d(a, (min(a.shape[2], grid_cap), min(a.shape[3], grid_cap)))
                maps[layer].append(a.half().numpy())
    return ({layer: np.concatenate(v) for layer, v in pooled.items()},
            {layer: np.concatenate(v) for layer, v in maps.items()})


def pooled_features(loaded, dataset, layers: Sequence[str], batch_size: int = 16) -> dict[str, np.ndarray]:
    """Per layer, the global-average-pooled activations (images x channels) of ``dataset``'s images."""
    return layer_activations(loaded, dataset, layers, batch_size=batch_size)[0]


def segmentation_targets(dataset, grid: Sequence[int]) -> dict[str, np.ndarray]:
    """A split's segmentation inputs: soft ``targets`` on the activation ``grid`` (n x K x h x w), ``masks``
    and the every-object mask ``objects`` on the evaluation grid (bool), and the ``boxes`` (content boxes)."""
    ds = dataset.with_targets([tuple(grid)])
    items = [ds[i] for i in range(len(ds))]
    return {"targets": np.stack([it["targets"][0].float().numpy() for it in items]),
            "masks": np.stack([it["masks_eval"].numpy().astype(bool) for it in items]),
            "objects": np.stack([it["objects_eval"].numpy().astype(bool) for it in items]),
            "boxes": np.stack([it["content_box"].numpy() for it in items])}


def seg_probe_iou(train: tuple, val: tuple, test: tuple, input_size: Sequence[int], rounds: int = 8,
                  steps: int = 10) -> dict[str, np.ndarray]:
    """Segmentation probes on one layer, a cheap proxy of the concept stage's Method A.

    Each split is ``(activations n x C x h x w, segmentation_targets(...))``. Per concept a 1 x 1 linear
    probe on train-standardised activations is fitted to the balanced BCE of the soft targets (all concepts
    jointly; full-batch L-BFGS, ``rounds`` x ``steps`` iterations); the logits are resampled onto the
    evaluation grid and thresholded at 0, as the stage does. Each concept keeps the round with the best val
    set IoU (early stopping, like the stage's reference solver). Returns per concept the ``val`` and
    ``test`` set IoU, and ``every_object``: the set IoU of the every-object mask on test (the control).
    """
    import torch

    from conceptsim.concepts.layerdata import Standardiser
    from conceptsim.concepts.metrics import set_iou_from_counts
    from conceptsim.concepts.net2vec import foreground_alpha, probe_logits, probe_loss, threshold_counts
    from conceptsim.data.geometry import input_to_image_grid

    c = train[0].shape[1]
    st = Standardiser.fit(train[0].astype(np.float32).transpose(0, 2, 3, 1).reshape(-1, c))
    xs = [st.apply(torch.from_numpy(split[0].astype(np.float32))) for split in (train, val, test)]
    t = torch.from_numpy(train[1]["targets"])
    alpha = foreground_alpha(t)
    k = t.shape[1]
    weight = torch.zeros(k, c, requires_grad=True)
    bias = torch.zeros(k, requires_grad=True)

    def iou(x: torch.Tensor, seg: dict) -> np.ndarray:
        with torch.no_grad():
            z = input_to_image_grid(probe_logits(weight, bias, x), torch.from_numpy(seg["boxes"]), input_size,
                                    seg["masks"].shape[-2:])
            masks = torch.from_numpy(seg["masks"])
            return set_iou_from_counts(*(a.numpy() for a in threshold_counts(z, 0.0, masks, masks.flatten(2).sum(2))))

    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=steps, history_size=10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = probe_loss(probe_logits(weight, bias, xs[0]), t, alpha, "balanced_bce")
        loss.backward()
        return loss

    best_val = np.full(k, -1.0)
    best_test = np.zeros(k)
    for _ in range(rounds):
        opt.step(closure)
        v, te = np.nan_to_num(iou(xs[1], val[1])), np.nan_to_num(iou(xs[2], test[1]))
        better = v > best_val
        best_val[better], best_test[better] = v[better], te[better]
    every = np.repeat(test[1]["objects"][:, None], k, axis=1)
    inter = (every & test[1]["masks"]).sum((2, 3))
    union = (every | test[1]["masks"]).sum((2, 3))
    return {"val": best_val, "test": best_test, "every_object": set_iou_from_counts(inter, union)}


def dominant_category(dataset) -> np.ndarray:
    """Per image, the index (into the single-category concepts) of the category with the largest visible area."""
    single = [k for k, c in enumerate(dataset.concepts) if len(c.category_ids) == 1]
    return np.array([int(np.argmax(dataset.area_fractions(i)[single])) for i in dataset.image_ids])


def probe_scores(train: tuple, val: tuple, test: tuple, cs: Sequence[float] = (0.1,)) -> dict:
    """Linear probes on one layer's pooled features: ``(features, dominant category, presence labels)`` per split.

    ``accuracy``: multinomial logistic regression on the standardised features, predicting the dominant
    category (inverse regularisation ``cs``, the best on val if several; ``val_accuracy``); ``ap``: mean over
    concepts with positives in every split of the average precision of a one-vs-rest logistic regression
    (class-balanced, C = 0.1) on presence (``val_ap`` on val); ``concept_ap`` and ``concept_val_ap`` per
    concept (NaN for a concept without positives in some split).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train[0])
    xs = [scaler.transform(split[0]) for split in (train, val, test)]
    best = None
    for c in cs:
        clf = LogisticRegression(C=c, max_iter=500, tol=1e-3).fit(xs[0], train[1])
        v = float((clf.predict(xs[1]) == val[1]).mean())
        if best is None or v > best[0]:
            best = (v, float((clf.predict(xs[2]) == test[1]).mean()))
    k = train[2].shape[1]
    aps, val_aps = np.full(k, np.nan), np.full(k, np.nan)
    for j in range(k):
        if train[2][:, j].min() == train[2][:, j].max() or test[2][:, j].max() == 0 or val[2][:, j].max() == 0:
            continue
        clf = LogisticRegression(C=0.1, class_weight="balanced", max_iter=500, tol=1e-3).fit(xs[0], train[2][:, j])
        val_aps[j] = average_precision_score(val[2][:, j], clf.decision_function(xs[1]))
        aps[j] = average_precision_score(test[2][:, j], clf.decision_function(xs[2]))
    return {"val_accuracy": best[0], "accuracy": best[1], "val_ap": float(np.nanmean(val_aps)), "ap": float(np.nanmean(aps)),
            "ap_concepts": int(np.isfinite(aps).sum()), "concept_val_ap": val_aps, "concept_ap": aps}


#: Per model, the layers the power check probes for segmentation: the default study's deep probed layers,
#: where its trained models' best val layers for the object concepts lie.
SEG_LAYERS = {
    "ssd_mobilenet_v2_coco": ("blocks.12", "blocks.16"),
    "centernet_mobilenet_v3_coco": ("MobilenetV3.expanded_conv_11.add", "MobilenetV3.expanded_conv_14.add"),
    "mobilenet_v2_imagenet": ("features.15", "features.18"),
}


def probe_power(source, model: str = "mobilenet_v2_imagenet", split_by=STYLE_SPLIT, max_images: int | None = 240,
                layers: Sequence[str] | None = None, seg_layers: Sequence[str] | None = None, grid_cap: int = 16,
                eval_grid: int = 56):
    """The power check: ``model`` and its random-init twin, linear probes per layer.

    ``source`` is a coco-icons :class:`~conceptsim.data.coco.DatasetSource`; the splits (``split_by``,
    ``max_images`` per split, smallest ids first) are the concept stage's. Classification: probes on pooled
    features of every layer (:func:`probe_scores`). Segmentation: at ``seg_layers`` (default
    :data:`SEG_LAYERS` of the model, else its last two layers), 1 x 1 probes on the activations pooled to at
    most ``grid_cap`` (:func:`seg_probe_iou`), read on an ``eval_grid`` square. Returns ``(layers, concepts)``:
    one row per model and layer (classification columns, and ``seg_iou``, ``seg_val_iou``,
    ``every_object_iou`` -- means over concepts -- at the segmentation layers), and one row per model, layer,
    method and concept (``val``, ``test`` and, for seg, ``control``: the every-object mask's IoU).
    """
    import pandas as pd

    from conceptsim.data.coco import ConceptDataset
    from conceptsim.models.names import twin_name
    from conceptsim.models.registry import build_model

    rows, concept_rows = [], []
    seg_chosen = None
    for name in (model, twin_name(model)):
        loaded = build_model(name)
        chosen = list(layers or loaded.spec.default_layers)
        if seg_chosen is None:
            seg_chosen = list(seg_layers or SEG_LAYERS.get(model, chosen[-2:]))
        data, maps, splits = {}, {}, {}
        for s in ("train", "val", "test"):
            ds = ConceptDataset(source, split=s, split_by=split_by, max_images=max_images,
                                preprocessing=loaded.preprocessing, eval_grid=(eval_grid, eval_grid))
            labels = np.array([ds.labels_of(i) for i in ds.image_ids])
            pooled, maps[s] = layer_activations(loaded, ds, chosen, seg_chosen, grid_cap=grid_cap)
            data[s], splits[s] = (pooled, dominant_category(ds), labels), ds
        names = [c.name for c in splits["train"].concepts]
        for depth, layer in enumerate(chosen):
            split = {s: (f[layer], d, y) for s, (f, d, y) in data.items()}
            scores = probe_scores(split["train"], split["val"], split["test"])
            concept_rows += [{"model": name, "layer": layer, "method": "cls", "concept": c, "val": v, "test": t}
                             for c, v, t in zip(names, scores.pop("concept_val_ap"), scores.pop("concept_ap"))]
            rows.append({"model": name, "layer": layer, "depth": depth, **scores,
                         "train_images": len(split["train"][1]), "test_images": len(split["test"][1]),
                         "categories": int(np.max([d.max() for _, d, _ in data.values()]) + 1)})
        for layer in seg_chosen:
            grid = maps["train"][layer].shape[2:]
            seg = {s: (maps[s][layer], segmentation_targets(splits[s], grid)) for s in splits}
            iou = seg_probe_iou(seg["train"], seg["val"], seg["test"], loaded.preprocessing.size)
            concept_rows += [{"model": name, "layer": layer, "method": "seg", "concept": c, "val": v, "test": t,
                              "control": e} for c, v, t, e in zip(names, iou["val"], iou["test"], iou["every_object"])]
            row = next((r for r in rows if r["model"] == name and r["layer"] == layer), None)
            if row is None:
                rows.append(row := {"model": name, "layer": layer, "depth": -1})
            row.update(seg_val_iou=float(np.mean(iou["val"])), seg_iou=float(np.mean(iou["test"])),
                       every_object_iou=float(np.nanmean(iou["every_object"])))
    return pd.DataFrame(rows), pd.DataFrame(concept_rows)


def power_summary(table, label: str = "", concepts=None):
    """One row per model pair of a :func:`probe_power` table: the trained model's best layer by val AP, and
    there (the *same* layer for both) the test AP and accuracy of the trained model and of its twin.

    Where the table has segmentation columns, the same for the mean set IoU at the trained model's best
    segmentation layer by val IoU, beside the every-object mask's. With ``concepts`` (the second table of
    :func:`probe_power`), also how many concepts the trained model learned at those layers: test quality
    above the twin's by ``LEARNED_MARGIN`` (and, for seg, above the every-object mask's IoU).
    """
    import pandas as pd

    from conceptsim.models.names import is_twin

    twin_rows = table["model"].map(is_twin).astype(bool)
    rows = []
    for model, t in table[~twin_rows].groupby("model", sort=False):
        t = t[t["val_ap"].notna()] if "val_ap" in t else t
        best = t.loc[t["val_ap"].idxmax()]
        twin = table[twin_rows & (table["layer"] == best["layer"])].iloc[0]
        row = {"setting": label, "model": model, "best_val_layer": best["layer"], "train_images": best["train_images"],
               "test_images": best["test_images"], "ap_trained": best["ap"], "ap_twin": twin["ap"],
               "ap_margin": best["ap"] - twin["ap"], "accuracy_trained": best["accuracy"],
               "accuracy_twin": twin["accuracy"]}
        seg_layer = None
        if "seg_val_iou" in table and table.loc[t.index, "seg_val_iou"].notna().any():
            sbest = table.loc[table.loc[t.index, "seg_val_iou"].idxmax()]
            seg_layer = sbest["layer"]
            stwin = table[twin_rows & (table["layer"] == seg_layer)].iloc[0]
            row.update(seg_layer=seg_layer, iou_trained=sbest["seg_iou"], iou_twin=stwin["seg_iou"],
                       iou_every_object=sbest["every_object_iou"])
        if concepts is not None:
            for method, layer in (("cls", best["layer"]), ("seg", seg_layer)):
                at = concepts[(concepts["method"] == method) & (concepts["layer"] == layer)]
                mine = at[at["model"] == model].set_index("concept")
                theirs = at[at["model"].map(is_twin).astype(bool)].set_index("concept")
                if mine.empty:
                    continue
                floor = theirs["test"].reindex(mine.index) + LEARNED_MARGIN
                if method == "seg":
                    floor = np.maximum(floor, mine["control"])
                row[f"{method}_learned"] = int((mine["test"] > floor).sum())
                row[f"{method}_concepts"] = len(mine)
        rows.append(row)
    return pd.DataFrame(rows)


#: How far a trained model's concept quality must exceed its twin's to count as learned in
#: :func:`power_summary` (a point proxy of the study's paired-bootstrap filter).
LEARNED_MARGIN = 0.05


def study_layers(model: str, study: str | Path | None = None) -> list[str]:
    """The layers the default study (or ``study``, a YAML file) probes in ``model``."""
    from conceptsim.pipeline import probed_layers
    from conceptsim.run.study import load_study

    spec = load_study(Path(study) if study else project_root() / "studies" / "default.yml")
    layers = spec.layers_of(model)
    return probed_layers(model, layers if isinstance(layers, list) else None, spec.sections["extraction"].get("max_layers", 0))


def write_sanity(out: str | Path | None = None, n: int = 240, size: int = 320, seed: int = 0,
                 max_images_per_style: int | None = 40) -> Path:
    """Build (or reuse) ``coco-icons`` with these parameters and write the sanity figures into ``out``."""
    from conceptsim.data.registry import ensure_dataset

    out = Path(out) if out else project_root() / "book" / "datasets" / "coco-icons"
    out.mkdir(parents=True, exist_ok=True)
    src = ensure_dataset("coco-icons", n=n, size=size, seed=seed)
    example_figure(src.annotation_file, out / "examples.png")
    example_figure(ensure_dataset("coco-icons", n=n, size=size, seed=seed, mode="objects").annotation_file,
                   out / "examples-objects.png")
    counts = split_counts(src.annotation_file)
    wide = counts.pivot(index="concept", columns="split", values="images")[["train", "val", "test"]]
    wide.reindex(counts["concept"].unique()).to_csv(out / "counts.csv")
    rec = detector_recall(src.annotation_file, max_images_per_style=max_images_per_style)
    rec.to_csv(out / "detector_recall.csv", index=False, float_format="%.3f")
    recall_figure(rec, out / "detector_recall.png")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m conceptsim.book.coco_icons", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=240)
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-images-per-style", type=int, default=40)
    p.add_argument("--out")
    p.add_argument("--power", action="store_true", help="run the power check (probe_power) and write its CSV to --out")
    p.add_argument("--mode", default="scene", help="--power: the build's composition mode")
    p.add_argument("--max-images", type=int, default=240, help="--power: images per split (smallest ids)")
    p.add_argument("--categories", help="--power: comma-separated categories (default: the default study's 14)")
    p.add_argument("--model", default="mobilenet_v2_imagenet", help="--power: the trained model (beside its twin)")
    a = p.parse_args(argv)
    if a.power:
        from conceptsim.data.registry import ensure_dataset

        cats = a.categories.split(",") if a.categories else list(DEFAULT_STUDY_CATEGORIES)
        src = ensure_dataset("coco-icons", n=a.n, size=a.size, seed=a.seed, categories=cats, mode=a.mode)
        table, concepts = probe_power(src, model=a.model, max_images=a.max_images, layers=study_layers(a.model))
        out = Path(a.out or f"coco-icons-power-{a.model}-{a.mode}-{a.n}-{a.max_images}.csv")
        table.to_csv(out, index=False, float_format="%.4f")
        concepts.to_csv(out.with_suffix(".concepts.csv"), index=False, float_format="%.4f")
        print(table.to_string(index=False, float_format="%.3f"))
        print(power_summary(table, f"{a.mode} {a.n} {a.max_images}", concepts).T.to_string())
        print(out)
        return 0
    print(write_sanity(a.out, a.n, a.size, a.seed, a.max_images_per_style))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
