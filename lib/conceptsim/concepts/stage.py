"""The concept stage: from an activation store to concept vectors, their quality, controls and units.

:func:`run_concept_stage` writes into ``out_dir`` (``results/<study>/<dataset>/<model>/``), each file
atomically:

``concept_quality.csv`` -- one row per (layer, concept, method, metric)
    model, layer, relative_depth, probe_rank, concept, category, method (``seg`` | ``cls``),
    metric (``set_iou`` for seg; ``ap`` and ``balanced_accuracy`` for cls), value (test), ci_low,
    ci_high (95 % bootstrap over test images), control_value (shuffled-label probe on test),
    diff_ci_low, diff_ci_high (paired bootstrap interval of value - control), random_init_value (the
    random-init twin's value, joined from ``random_init_quality``; NaN without it), represented
    (decided on **val**: the paired 95 % interval of val quality - val shuffled control lies above zero),
    test_represented (the same rule on test: reported, decides nothing), val_value,
    val_control_value, n_test, n_test_positive (test images where the concept is present), excluded
    (empty, or the reason the concept was not trained; its numbers are then NaN), loss, seed.
``vectors/seg_<layer>.npz``, ``vectors/cls_<layer>.npz`` -- see :mod:`conceptsim.concepts.vectors`.
``dissection.csv`` -- one row per (layer, unit): model, layer, relative_depth, probe_rank, unit,
    threshold, threshold_error, concept (best by test IoU), category, iou, is_detector (iou > 0.04).
``dissection_summary.csv`` -- per layer: n_units, detector_units, unique_concepts.
``dissection_best_unit.csv`` -- per (layer, concept): the unit with the best val IoU, its val_iou, its
    test iou, is_detector, and net2vec_iou (the Net2Vec vector's test set IoU, for the comparison).
``concept_stage.json`` -- parameters, store key, per-layer timings and memory modes, constant-channel
    counts, excluded concepts with reasons and counts.

Memory and speed. A layer's splits are held in memory as float32 whenever they fit the budget
(:mod:`conceptsim.concepts.layerdata`), by design, in exchange for standardising once and never re-reading
the store; they and the masks of val and test are what grows with the number of images. The work on them
is bounded by the layer, not the images: bootstrap resamples in chunks
(:data:`conceptsim.concepts.controls.BOOTSTRAP_CHUNK_VALUES`), mask areas a block of images at a time,
standardising in place, dissection batches of :data:`conceptsim.concepts.dissection.BATCH_VALUES_PER_UNIT`
values per unit; none of these changes a number. Network Dissection reuses the in-memory splits when they
cover the whole store (see :func:`conceptsim.concepts.dissection.dissection_batches`), and IoUs are counted
on separable-matrix resamplings (:class:`conceptsim.data.geometry.Resampler`).

Exclusions (reported, counted, never silent): a concept is not trained for a method when it has no
positive pixels (seg) or lacks positives or negatives among the image labels (cls) in train, val or test.
Geometry that disagrees between activations, targets, masks and boxes raises :class:`GeometryError`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from conceptsim.atomic import (
    atomic_path,
    output_digests,
    relative_outputs,
    reusable_outputs,
    sha256_file,
    stage_identity,
    write_json,
)
from conceptsim.concepts import controls
from conceptsim.concepts import dissection as dis
from conceptsim.concepts.layerdata import SplitData, Standardiser
from conceptsim.concepts.net2vec import LOSSES, SOLVERS, EvalSet, split_counts, train_probes_and_control
from conceptsim.concepts.tcav import train_classification_probes
from conceptsim.concepts.vectors import save_npz, vector_path
from conceptsim.data.coco import SPLITS
from conceptsim.extraction.store import ActivationStore, LayerInfo, StoreError, read_rows
from conceptsim.paths import concept_quality_csv, concept_stage_json, concept_table_csv, vectors_dir
from conceptsim.runtime import configure_process

log = logging.getLogger(__name__)
METHODS = ("seg", "cls")


class GeometryError(ValueError):
    """Activations, targets, masks or boxes of a store disagree in shape."""


class DegenerateLayerError(ValueError):
    """A layer of a random-init twin has channels that are constant on the train images."""


#: what a constant channel means: an error in twins (the default), in every model, or nothing
CONSTANT_CHANNEL_POLICIES = ("error_for_twins", "error", "allow")


#: share of constant channels a checked layer may have: single dead ReLU units of a 1 x 1 map are possible
#: in a healthy twin (a unit that is negative on every image); a collapsed layer has most channels constant
MAX_CONSTANT_FRACTION = 0.01
#: with few values per channel (train images x stored grid pixels) a healthy ReLU unit is zero on all of them
#: by chance: at 1 x 1 and 6 train images about 3 % of SSD300's last layer (the paper smoke rehearsal)
FEW_OBSERVATIONS = 64
FEW_OBSERVATIONS_CONSTANT_FRACTION = 0.10


def excluded_pairs(quality: pd.DataFrame) -> pd.DataFrame:
    """The (concept, method) pairs a concept-quality table (``concept_quality.csv``) excludes, with the reason:
    one row each, columns ``concept, method, excluded``."""
    rows = quality[quality["excluded"].notna()][["concept", "method", "excluded"]]
    return rows.drop_duplicates().reset_index(drop=True)


def quality_overview(quality: pd.DataFrame) -> str:
    """One line on a concept-quality table: layers, concepts and excluded (concept, method) pairs."""
    return (f"{quality['layer'].nunique()} layers, {quality['concept'].nunique()} concepts; "
            f"{len(excluded_pairs(quality))} (concept, method) pairs excluded")


def check_constant_channels(model: str, layer: str, n_constant: int, channels: int, policy: str,
                            max_fraction: float | None = None, observations: int | None = None) -> None:
    """Fail loudly when a layer has constant channels where ``policy`` forbids them.

    A twin is initialised so that every layer carries signal (:mod:`conceptsim.models.twins`); constant
    channels there mean the initialisation collapsed (values below float16's range or dead units), which
    would make the twin's layer look uninformative for the wrong reason. Trained models may have dead units,
    so by default only twins are checked. More than ``max_fraction`` of the channels is an error; fewer are
    logged (and recorded in ``concept_stage.json`` as ``n_constant_channels``). ``max_fraction`` defaults to
    :data:`MAX_CONSTANT_FRACTION`, or :data:`FEW_OBSERVATIONS_CONSTANT_FRACTION` when a channel has fewer
    than :data:`FEW_OBSERVATIONS` ``observations`` (values on the train images).
    """
    if max_fraction is None:
        few = observations is not None and observations < FEW_OBSERVATIONS
        max_fraction = FEW_OBSERVATIONS_CONSTANT_FRACTION if few else MAX_CONSTANT_FRACTION
    if policy not in CONSTANT_CHANNEL_POLICIES:
        raise ValueError(f"constant_channels must be one of {CONSTANT_CHANNEL_POLICIES}, got {policy!r}")
    from conceptsim.models.names import is_twin

    checked = policy == "error" or (policy == "error_for_twins" and is_twin(model))
    if checked and 0 < n_constant <= max_fraction * channels:
        log.warning("%s layer %s: %d of %d channels are constant on the train images", model, layer, n_constant,
                    channels)
    elif checked and n_constant > 0:
        raise DegenerateLayerError(
            f"{model} layer {layer}: {n_constant} of {channels} channels are constant on the train images (at "
            f"most {int(max_fraction * channels)} allowed); a "
            "random-init twin must carry signal in every layer (see conceptsim.models.twins); re-extract the "
            "twin with the current initialisation, or pass constant_channels='allow' to accept it"
        )


@dataclass
class Inputs:
    """Everything the per-layer work shares: store, selection, rows, masks and labels per split."""

    store: ActivationStore
    cidx: np.ndarray
    names: list[str]
    categories: list[str]
    rows: dict
    eval_sets: dict  # split -> EvalSet (val, test)
    labels: dict  # split -> n x K uint8
    include: dict  # method -> bool K
    reasons: dict  # method -> {concept: reason}
    boot: np.ndarray
    boot_val: np.ndarray | None = None  # the same on val images: ``represented`` is decided on val


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise GeometryError(msg)


def check_store_geometry(store: ActivationStore) -> None:
    """Raise :class:`GeometryError` when the store's image-level arrays disagree."""
    n, k = len(store.image_ids), len(store.concepts)
    _check(store.labels.shape == (n, k), f"labels {store.labels.shape} != (images {n}, concepts {k})")
    _check(store.content_boxes.shape == (n, 4), f"content_box {store.content_boxes.shape} != ({n}, 4)")
    want = (n, k, *store.eval_grid)
    _check(tuple(store.masks.shape) == want, f"masks {tuple(store.masks.shape)} != {want} (images, concepts, eval grid)")


def check_layer_geometry(store: ActivationStore, info: LayerInfo) -> None:
    """Raise :class:`GeometryError` when a layer's activations or targets disagree with the store."""
    n, k = len(store.image_ids), len(store.concepts)
    act, tgt = store.activations(info.name), store.targets(info.name)
    want = (n, info.channels, *info.grid)
    _check(tuple(act.shape) == want, f"layer {info.name}: activations {tuple(act.shape)} != recorded {want}")
    want = (n, k, *info.grid)
    _check(tuple(tgt.shape) == want, f"layer {info.name}: targets {tuple(tgt.shape)} != {want} "
           "(targets must be on the activation grid)")


def read_selected(array, rows: np.ndarray, cidx: np.ndarray, dtype=None) -> np.ndarray:
    """Rows of a ``N x K x ...`` store array, restricted to the selected concept columns.

    Filled block by block into one array of ``dtype`` (default: the store's; ``bool`` gives ``value != 0``),
    concept-major in memory (strides of ``K x n x ...`` with the first two axes swapped): the layout that
    selecting the columns block by block and concatenating gives, which fixes the order of the probes' loss
    reductions over the targets, so the probes do not change with how the array is assembled.
    """
    out = np.empty((len(cidx), len(rows), *array.shape[2:]), dtype or array.dtype).swapaxes(0, 1)
    pos = 0
    for _, block in read_rows(array, rows, batch=64):
        out[pos : pos + len(block)] = block[:, cidx]
        pos += len(block)
    return out


def mask_areas(array, rows: np.ndarray, cidx: np.ndarray) -> np.ndarray:
    """Foreground pixel count ``n x K`` of the selected masks, streamed."""
    parts = [block[:, cidx].reshape(len(block), len(cidx), -1).sum(2, dtype=np.int64)
             for _, block in read_rows(array, rows, batch=64)]
    return np.concatenate(parts) if parts else np.zeros((0, len(cidx)), np.int64)


def exclusions(areas: dict, labels: dict, names: Sequence[str]) -> tuple[dict, dict]:
    """Per method, a bool ``K`` include mask and ``{concept: reason}`` for the excluded ones."""
    include, reasons = {}, {}
    for method in METHODS:
        ok, why = np.ones(len(names), bool), {}
        for split in SPLITS:
            pos = (areas[split] > 0).sum(0) if method == "seg" else labels[split].sum(0)
            neg = None if method == "seg" else len(labels[split]) - pos
            for j, name in enumerate(names):
                if not ok[j]:
                    continue
                if pos[j] == 0:
                    ok[j], why[name] = False, f"no positive {'pixels' if method == 'seg' else 'image'} in {split}"
                elif neg is not None and neg[j] == 0:
                    ok[j], why[name] = False, f"no negative image in {split}"
        include[method], reasons[method] = ok, why
    return include, reasons


def prepare(store: ActivationStore, concepts, bootstrap: int, seed: int) -> tuple[Inputs, dict]:
    """Select concepts, read masks and labels, decide exclusions; returns inputs and a report dict."""
    check_store_geometry(store)
    names_all = store.concept_names
    wanted = names_all if concepts is None else list(concepts)
    unknown = [c for c in wanted if c not in names_all]
    if unknown:
        raise ValueError(f"concepts {unknown} are not in the store; it has {names_all}")
    cidx = np.array([names_all.index(c) for c in wanted], dtype=np.int64)
    rows = {s: store.split_index(s) for s in SPLITS}
    empty = [s for s in SPLITS if len(rows[s]) == 0]
    if empty:
        raise ValueError(f"store {store.path} has no images in split(s) {empty}")
    labels = {s: store.labels[rows[s]][:, cidx] for s in SPLITS}
    areas = {s: mask_areas(store.masks, rows[s], cidx) for s in SPLITS}
    boxes = torch.from_numpy(store.content_boxes.astype(np.float32))
    eval_sets = {s: EvalSet(torch.from_numpy(read_selected(store.masks, rows[s], cidx, bool)),
                            boxes[rows[s]], store.input_size) for s in ("val", "test")}
    include, reasons = exclusions(areas, labels, wanted)
    cats = {c["name"]: c.get("category", "") for c in store.concepts}
    group_of = store.attrs.get("bootstrap_groups")  # image id -> group (e.g. source photo), see pipeline
    def groups(split):
        return None if not group_of else np.array([str(group_of[str(int(i))]) for i in store.image_ids[rows[split]]])

    inputs = Inputs(store, cidx, wanted, [cats[c] for c in wanted], rows, eval_sets, labels, include, reasons,
                    controls.bootstrap_indices(len(rows["test"]), bootstrap, seed, groups("test")),
                    controls.bootstrap_indices(len(rows["val"]), bootstrap, seed + 1, groups("val")))
    report = {
        "excluded": reasons,
        "n_excluded": {m: len(r) for m, r in reasons.items()},
        "positives": {s: {"images_with_pixels": dict(zip(wanted, (areas[s] > 0).sum(0).tolist())),
                          "images_labelled": dict(zip(wanted, labels[s].sum(0).tolist()))} for s in SPLITS},
        "n_images": {s: int(len(rows[s])) for s in SPLITS},
    }
    return inputs, report


def quality_rows(inp: Inputs, info: LayerInfo, method: str, metric: str, intervals, n_pos, val_intervals=None) -> list[dict]:
    """Rows of concept_quality.csv for one layer, method and metric (excluded concepts get NaN rows).

    ``val_intervals`` (same order as ``intervals``): the val quality and its paired interval against the
    shuffled control, which decides ``represented`` (methods.md, "Controls": flags that decide what enters
    a finding are computed on val); the test interval is reported as ``test_represented``.
    """
    rows, it = [], iter(intervals)
    vit = iter(val_intervals) if val_intervals is not None else None
    nan = controls.Interval(*([np.nan] * 6))
    reasons = inp.reasons[method]
    for j, name in enumerate(inp.names):
        iv = next(it) if inp.include[method][j] else nan
        viv = (next(vit) if inp.include[method][j] else nan) if vit is not None else iv
        rows.append({
            "model": inp.store.model, "layer": info.name, "relative_depth": info.relative_depth,
            "probe_rank": info.probe_rank, "concept": name, "category": inp.categories[j], "method": method,
            "metric": metric, "value": iv.value, "ci_low": iv.ci_low, "ci_high": iv.ci_high,
            "control_value": iv.control_value, "diff_ci_low": iv.diff_low, "diff_ci_high": iv.diff_high,
            "random_init_value": np.nan, "represented": viv.represented, "test_represented": iv.represented,
            "val_value": viv.value, "val_control_value": viv.control_value, "n_test": len(inp.rows["test"]),
            "n_test_positive": int(n_pos[j]), "excluded": reasons.get(name, ""),
        })
    return rows


@dataclass
class Params:
    """Probe settings shared by every layer (see :func:`run_concept_stage`)."""

    loss: str
    lr: float
    epochs: int
    patience: int
    batch_size: int
    seed: int
    device: str
    constant_channels: str = "error_for_twins"
    seg_solver: str = "reference"
    cls_solver: str = "lbfgs"

    def seg_kwargs(self) -> dict:
        return dict(solver=self.seg_solver, loss=self.loss, lr=self.lr, epochs=self.epochs, patience=self.patience,
                    batch_size=self.batch_size, seed=self.seed, device=self.device)


def load_layer(inp: Inputs, info: LayerInfo, budget_bytes: float) -> dict:
    """SplitData per split, standardised with train channel statistics (train gets 70 % of the budget)."""
    act = inp.store.activations(info.name)
    share = {"train": 0.7, "val": 0.15, "test": 0.15}
    data = {s: SplitData(act, inp.rows[s], budget_bytes=budget_bytes * share[s], with_moments=s == "train")
            for s in SPLITS}
    for d in data.values():
        d.set_standardiser(data["train"].moments)
    return data


def permutations(inp: Inputs, seed: int) -> dict:
    """The shuffled-label permutations of train and val images (one per stage, shared by both methods)."""
    return {s: controls.shuffle_permutation(len(inp.rows[s]), seed + i) for i, s in enumerate(("train", "val"))}


def run_seg(inp: Inputs, info: LayerInfo, data: dict, p: Params, vec_dir: Path) -> tuple[list, dict]:
    """Method A with its shuffled control on one layer: quality rows and ``{concept: test set IoU}``."""
    sel = np.flatnonzero(inp.include["seg"])
    test_ev = inp.eval_sets["test"].subset(sel)
    n_pos = inp.eval_sets["test"].masks.flatten(2).any(2).sum(0).numpy()
    if not len(sel):
        return quality_rows(inp, info, "seg", "set_iou", [], n_pos), {}
    targets = torch.from_numpy(read_selected(inp.store.targets(info.name), inp.rows["train"], inp.cidx[sel]))
    val_ev = inp.eval_sets["val"].subset(sel)
    perm = permutations(inp, p.seed)
    probes, ctrl = train_probes_and_control(data["train"], targets, data["val"], val_ev, perm["train"], perm["val"],
                                            **p.seg_kwargs())
    counts = [split_counts(torch.from_numpy(q.weight).to(p.device), torch.from_numpy(q.bias).to(p.device),
                           data["test"], test_ev, p.device) for q in (probes, ctrl)]
    intervals = controls.seg_intervals(counts[0], counts[1], inp.boot)
    val_counts = [split_counts(torch.from_numpy(q.weight).to(p.device), torch.from_numpy(q.bias).to(p.device),
                               data["val"], val_ev, p.device) for q in (probes, ctrl)]
    val_intervals = controls.seg_intervals(val_counts[0], val_counts[1], inp.boot_val)
    st = data["train"].moments
    save_npz(vector_path(vec_dir, "seg", info.name), weight=probes.weight.astype(np.float32),
             bias=probes.bias.astype(np.float32), mean=st.mean, std=st.std, **_meta(inp, info, sel, st),
             best_epoch=probes.best_epoch.astype(np.int64), val_iou=probes.val_iou)
    test_iou = {inp.names[j]: iv.value for j, iv in zip(sel, intervals)}
    return quality_rows(inp, info, "seg", "set_iou", intervals, n_pos, val_intervals), test_iou


def _meta(inp: Inputs, info: LayerInfo, sel: np.ndarray, st: Standardiser) -> dict:
    return dict(concepts=np.array([inp.names[j] for j in sel], dtype=str),
                categories=np.array([inp.categories[j] for j in sel], dtype=str), layer=np.array(info.name),
                relative_depth=np.float64(info.relative_depth), probe_rank=np.float64(info.probe_rank),
                n_constant_channels=np.int64(st.n_constant))


def run_cls(inp: Inputs, info: LayerInfo, data: dict, p: Params, vec_dir: Path) -> list:
    """Method B with its shuffled control on one layer: quality rows (AP and balanced accuracy)."""
    sel = np.flatnonzero(inp.include["cls"])
    n_pos = inp.labels["test"].sum(0)
    if not len(sel):
        return [r for m in ("ap", "balanced_accuracy") for r in quality_rows(inp, info, "cls", m, [], n_pos)]
    st = Standardiser.fit(data["train"].gap)
    z = {s: st.apply(torch.from_numpy(data[s].gap)).numpy() for s in SPLITS}
    y = {s: inp.labels[s][:, sel] for s in SPLITS}
    perm = permutations(inp, p.seed)
    probes = train_classification_probes(z["train"], y["train"], z["val"], y["val"], seed=p.seed, solver=p.cls_solver)
    ctrl = train_classification_probes(z["train"], y["train"][perm["train"]], z["val"], y["val"][perm["val"]],
                                       seed=p.seed, solver=p.cls_solver)
    ivs = controls.cls_intervals(y["test"], probes.decision(z["test"]), ctrl.decision(z["test"]), inp.boot)
    val_ivs = controls.cls_intervals(y["val"], probes.decision(z["val"]), ctrl.decision(z["val"]), inp.boot_val)
    save_npz(vector_path(vec_dir, "cls", info.name), coef=probes.coef, intercept=probes.intercept,
             chosen_c=probes.chosen_c, val_ap=probes.val_ap, mean=st.mean, std=st.std, **_meta(inp, info, sel, st))
    return [r for m, iv in ivs.items() for r in quality_rows(inp, info, "cls", m, iv, n_pos, val_ivs[m])]


def write_csv(path: Path, rows: list[dict], columns: Sequence[str] | None = None) -> Path:
    """Write rows atomically as CSV (an empty table keeps its header when ``columns`` is given)."""
    with atomic_path(path) as tmp:
        pd.DataFrame(rows, columns=columns).to_csv(tmp, index=False)
    return path


def join_random_init(quality: pd.DataFrame, twin_csv: Path | None) -> pd.DataFrame:
    """Fill ``random_init_value`` from the random-init twin's concept_quality.csv (same layer names)."""
    if twin_csv is None:
        return quality
    twin = pd.read_csv(twin_csv)
    key = ["layer", "concept", "method", "metric"]
    twin = twin[key + ["value"]].rename(columns={"value": "_twin"})
    out = quality.drop(columns="random_init_value").merge(twin, on=key, how="left")
    out.insert(list(quality.columns).index("random_init_value"), "random_init_value", out.pop("_twin"))
    return out


def run_layer(inp: Inputs, info: LayerInfo, p: Params, methods, dissection: bool, budget: float, vec_dir: Path):
    """All work on one layer; returns quality rows, dissection parts and a timing/memory record."""
    t0 = time.perf_counter()
    check_layer_geometry(inp.store, info)
    data = load_layer(inp, info, budget)
    rec = {"memory_mode": {s: d.mode for s, d in data.items()}, "n_constant_channels": data["train"].moments.n_constant,
           "load_s": time.perf_counter() - t0}
    check_constant_channels(inp.store.model, info.name, int(rec["n_constant_channels"]), info.channels,
                            p.constant_channels, observations=data["train"].count)
    rows, seg_iou, dis_parts = [], {}, None
    if "seg" in methods:
        t = time.perf_counter()
        seg_rows, seg_iou = run_seg(inp, info, data, p, vec_dir)
        rows += seg_rows
        rec["seg_s"] = time.perf_counter() - t
    if "cls" in methods:
        t = time.perf_counter()
        rows += run_cls(inp, info, data, p, vec_dir)
        rec["cls_s"] = time.perf_counter() - t
    if dissection:
        t = time.perf_counter()
        dis_parts = dis.run_dissection(inp, info, seg_iou, data)
        rec["dissection_s"] = time.perf_counter() - t
    del data
    rec["total_s"] = time.perf_counter() - t0
    return rows, dis_parts, rec


QUALITY_COLUMNS = ["model", "layer", "relative_depth", "probe_rank", "concept", "category", "method", "metric",
                   "value", "ci_low", "ci_high", "control_value", "diff_ci_low", "diff_ci_high", "random_init_value",
                   "represented", "test_represented", "val_value", "val_control_value", "n_test", "n_test_positive",
                   "excluded", "loss", "seed"]


def run_concept_stage(
    store_path: str | Path, out_dir: str | Path, *, layers: Sequence[str] | None = None,
    concepts: Sequence[str] | None = None, loss: str = "balanced_bce", lr: float = 1e-2, epochs: int = 30,
    patience: int = 5, batch_size: int = 32, seed: int = 0, device: str = "cpu",
    random_init_quality: Path | None = None, bootstrap: int = 1000, methods: Sequence[str] = ("seg", "cls"),
    dissection: bool = True, memory_budget_gb: float = 4.0,
    constant_channels: str = "error_for_twins", reuse: bool = False, seg_solver: str = "reference",
    cls_solver: str = "lbfgs",
) -> dict[str, Path]:
    """Train and evaluate concept vectors for every (layer, concept) of one store, with controls.

    Parameters
    ----------
    store_path : a complete activation store (:class:`conceptsim.extraction.store.ActivationStore`).
    out_dir : ``results/<study>/<dataset>/<model>/``; the files listed in the module docstring go here.
    layers, concepts : subsets by name (default: all in the store).
    loss : Method A loss, one of ``balanced_bce`` (default), ``net2vec_soft``, ``dice``.
    lr, epochs, patience, batch_size : Method A optimisation with the reference solver (Adam; early stopping
        on val set IoU).
    seg_solver : Method A solver, ``reference`` (default) or ``lbfgs`` (the loss's optimum to
        :data:`conceptsim.concepts.optimum.GTOL`; see :func:`conceptsim.concepts.net2vec.solve_segmentation_probes`).
    cls_solver : Method B solver, ``lbfgs`` (default; one batched solve per C) or ``reference`` (scikit-learn);
        see :mod:`conceptsim.concepts.tcav`. Both solvers are part of the stage's identity.
    seed : seeds batch order, shuffled-label permutations, bootstrap resamples and the classifiers.
    device : torch device for the Method A probes.
    random_init_quality : the random-init twin's concept_quality.csv, joined into ``random_init_value``.
    bootstrap : number of bootstrap resamples of the test images.
    methods : any of ``("seg", "cls")``. dissection : run the Network Dissection baseline.
    memory_budget_gb : memory for holding a layer's activations (see :mod:`conceptsim.concepts.layerdata`).
    constant_channels : ``error_for_twins`` (default: a twin layer with a channel constant on train is a
        :class:`DegenerateLayerError`), ``error`` (any model) or ``allow``.
    reuse : return the outputs already in ``out_dir`` without recomputing when ``concept_stage.json`` says
        they were computed from the same store (its key, and the content hash its mask store recorded when
        built), the same parameters, the same twin table and the same library code
        (:func:`conceptsim.atomic.stage_identity`), and they still have the content it recorded (their
        ``sha256``); anything else recomputes. A mask store whose data no longer match its hash is refused
        (:class:`StoreError`) before anything is computed from it. The
        pipeline's notebooks reuse, so a stage notebook opened in JupyterLab with the default study's
        parameters shows the stored results instead of computing them a second time.

    Threads come from the process settings (:func:`conceptsim.runtime.configure_process`, applied here if
    it was not yet): BLAS (numpy, scikit-learn) is held to one thread, since the logistic-regression fits of
    Method B are hundreds of small lbfgs problems whose BLAS threads only wait for each other (Performance
    page, "Design measurements").

    Returns
    -------
    ``{name: path}`` of every file written.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if not methods or set(methods) - set(METHODS):
        raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {methods!r}")
    if bootstrap < 1:
        raise ValueError(f"bootstrap must be >= 1, got {bootstrap}")
    if constant_channels not in CONSTANT_CHANNEL_POLICIES:
        raise ValueError(f"constant_channels must be one of {CONSTANT_CHANNEL_POLICIES}, got {constant_channels!r}")
    for name, value in (("seg_solver", seg_solver), ("cls_solver", cls_solver)):
        if value not in SOLVERS:
            raise ValueError(f"{name} must be one of {SOLVERS}, got {value!r}")
    configure_process()
    p = Params(loss, lr, epochs, patience, batch_size, seed, device, constant_channels, seg_solver, cls_solver)
    twin = Path(random_init_quality) if random_init_quality is not None else None
    store = ActivationStore(store_path)
    # the mask store's recorded content hash (a rebuilt store with other data recomputes; no re-hash on reuse)
    masks = store.mask_store.content_sha256 if store.mask_store is not None else None
    identity = stage_identity(
        __name__,
        store_key=store.attrs.get("key"), mask_store=masks, layers=list(layers or []),
        concepts=list(concepts or []), params=vars(p), bootstrap=bootstrap, methods=list(methods),
        dissection=dissection, memory_budget_gb=memory_budget_gb,
        twin_quality=sha256_file(twin) if twin is not None and twin.exists() else None)
    if reuse and (done := reusable_outputs(concept_stage_json(out_dir), identity)) is not None:
        log.info("concept stage: reusing the results in %s (same store, parameters and code)", out_dir)
        return {**done, "concept_stage": concept_stage_json(out_dir)}
    return _run(Path(store_path), Path(out_dir), layers, concepts, bootstrap, seed, methods, dissection,
                memory_budget_gb, random_init_quality, p, identity)


def _run(store_path: Path, out: Path, layers, concepts, bootstrap, seed, methods, dissection, memory_budget_gb,
         random_init_quality, p: Params, identity: str) -> dict[str, Path]:
    """The body of :func:`run_concept_stage` once parameters are checked."""
    t0 = time.perf_counter()
    store = ActivationStore(store_path)
    if store.mask_store is not None and (why := store.mask_store.damaged()):  # else zeros read as "no positive pixels"
        raise StoreError(why)
    infos = [store.layer(name) for name in (layers or store.layer_names)]
    inp, report = prepare(store, concepts, bootstrap, seed)
    vec_dir = vectors_dir(out)
    quality, units, summaries, best, timings = [], [], [], [], {}
    for info in infos:
        log.info("concept stage: %s layer %s", store.model, info.name)
        rows, dis_parts, timings[info.name] = run_layer(inp, info, p, methods, dissection, memory_budget_gb * 2**30, vec_dir)
        quality += rows
        if dis_parts:
            units += dis_parts[0]
            summaries.append(dis_parts[1])
            best += dis_parts[2]
    paths = write_outputs(out, quality, p, random_init_quality, (units, summaries, best) if dissection else None)
    paths.update({f"{m}_{i.name}": vector_path(vec_dir, m, i.name) for m in methods for i in infos
                  if vector_path(vec_dir, m, i.name).exists()})
    params = dict(store=str(store_path), layers=[i.name for i in infos], concepts=inp.names, **vars(p),
                  random_init_quality=random_init_quality, bootstrap=bootstrap, methods=list(methods),
                  dissection=dissection, memory_budget_gb=memory_budget_gb, threads=torch.get_num_threads())
    write_json(concept_stage_json(out), {"parameters": params, "store_key": store.attrs.get("key"),
                                            "model": store.model, "dataset": store.dataset, **report,
                                            "layers": timings, "total_s": time.perf_counter() - t0,
                                            "identity": identity, "outputs": relative_outputs(paths, out),
                                            "sha256": output_digests(paths)})
    paths["concept_stage"] = concept_stage_json(out)
    return paths


def write_outputs(out: Path, quality: list, p: Params, twin: Path | None, dis_tables) -> dict[str, Path]:
    """Write concept_quality.csv and, when given, the three dissection tables."""
    df = pd.DataFrame(quality, columns=QUALITY_COLUMNS)
    df["loss"], df["seed"] = p.loss, p.seed
    df = join_random_init(df, Path(twin) if twin is not None else None)
    paths = {"concept_quality": write_csv(concept_quality_csv(out), df.to_dict("records"), list(df.columns))}
    if dis_tables is not None:
        for name, rows in zip(("dissection", "dissection_summary", "dissection_best_unit"), dis_tables):
            paths[name] = write_csv(concept_table_csv(out, name), rows)
    return paths
