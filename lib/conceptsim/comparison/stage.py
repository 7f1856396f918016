"""The comparison stage: every pair of probed layers of all models of one dataset, and the findings.

Inputs (per model directory ``<dataset dir>/<model dir>/``): ``activations.zarr`` (the activation store),
``vectors/seg_<layer>.npz`` and ``vectors/cls_<layer>.npz`` (concept vectors) and ``concept_quality.csv``
(whose ``represented`` column, with the every-object control on val for object concepts, selects the concepts
behind layer-level means and the findings: :func:`~conceptsim.comparison.findings.represented_flags`).

Outputs, written atomically into ``out_dir`` (normally ``results/<study>/<dataset>/``):

``similarity.csv`` -- one row per concept, method and *unordered* layer pair of two compared models
(:func:`~conceptsim.comparison.outputs.compared_models`: not a trained model against another architecture's
twin, nor twins of two architectures with different seeds; ``layer_a`` comes first in the study-wide layer
order: models in the given order, layers in store order; diagonal included; all similarities are symmetric,
so the other orientation has the same value). Columns:

=============  =======================================================================================
concept        concept name; empty for the CKA methods
category       the concept's category (store metadata); empty for CKA
method         ``seg`` (set IoU of binarised masks), ``seg_kappa`` (agreement beyond accuracy: observed
               overlap against the overlap of probes erring independently given the true mask, kappa-like,
               per-image strata, see :mod:`conceptsim.comparison.agreement`), ``seg_kappa_max`` (the same
               normalised by the overlap the margins allow), ``seg_obs_exp`` (observed / expected overlap),
               ``seg_pearson`` (Pearson of soft masks), ``cls`` (Pearson of logits over images),
               ``cls_partial`` (partial correlation of the logits given the label),
               ``cls_jaccard`` (Jaccard of predicted-positive images),
               ``cka`` (linear CKA, GAP features), ``cka_debiased`` (debiased linear CKA, GAP features),
               ``cka_grid4`` (linear CKA, activations average-pooled to 4 x 4 and flattened),
               ``units_bb`` / ``units_bb_corr`` (label-free unit matching: share of units in significant
               best-buddy pairs / their mean correlation, :mod:`conceptsim.comparison.units`)
model_a/b      model display names (``NAME``, ``NAME:random`` or ``NAME:random@SEED``)
layer_a/b      probed layer names
depth_a/b      relative depths of the layers
value          the similarity (empty = undefined, e.g. a union of empty masks or a constant output)
control        chance value of the same statistic with the test images of B permuted (``seg``, ``cls``,
               ``units_bb`` only; see :mod:`conceptsim.comparison.similarity`), else empty
represented    concept methods: whether the concept is represented in *both* layers (the flags the findings
               use, :func:`~conceptsim.comparison.findings.represented_flags`; layer-level means average the
               rows where it is True); empty for the label-free methods
n_test         number of test images
=============  =======================================================================================

``layer_similarity.csv`` -- concept-averaged matrices: columns ``method, model_a, layer_a, depth_a,
model_b, layer_b, depth_b, value, control, n_concepts, n_test``; for the concept methods ``value`` is the
mean over the ``n_concepts`` concepts represented in *both* layers (the ``represented`` column of
``similarity.csv``), ``control`` the mean chance value over the same concepts; CKA rows are copied with
``n_concepts`` empty.

``grounding.csv`` -- layer monotonicity of every measure per model, and the relative-depth alignment of
unit matching per model pair: see :mod:`conceptsim.comparison.grounding`.

``findings.json`` -- see :mod:`conceptsim.comparison.document` (selection on val, the tests, Holm).

``comparison_stage.json`` -- written last: the stage's identity (parameters, the concept stages' identities,
the library code) and the three outputs, read by ``reuse=True``.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

from conceptsim.allocator import release_freed_memory
from conceptsim.atomic import atomic_path, relative_outputs, reusable_outputs, sha256_file, stage_identity, write_json
from conceptsim.comparison.agreement import partial_correlation
from conceptsim.comparison.cka import cka_matrices
from conceptsim.comparison.document import findings_document, plan_findings
from conceptsim.comparison.findings import represented_flags, rng_for
from conceptsim.comparison.grounding import grounding_frame, layer_matrices, shortcut_frame
from conceptsim.comparison.outputs import ComparisonError, StudyOutputs
from conceptsim.comparison.similarity import SegAccumulator, cls_similarity
from conceptsim.comparison.units import UNIT_METHODS, UnitMatcher
from conceptsim.data.coco_icons import CUE_CONCEPT
from conceptsim.models.user_models import MODEL_LISTING
from conceptsim.paths import (
    comparison_files,
    comparison_stage_json,
    concept_quality_csv,
    concept_stage_json,
    model_dir_name,
    shortcut_csv,
)
from conceptsim.runtime import torch_threads_from_environment
from conceptsim.runtime.background import prefetched

CONCEPT_METHODS = {"seg": "seg", "seg_kappa": "seg", "seg_kappa_max": "seg", "seg_obs_exp": "seg", "seg_pearson": "seg",
                   "cls": "cls", "cls_partial": "cls", "cls_jaccard": "cls"}
CKA_METHODS = ("cka", "cka_debiased", "cka_grid4")
#: label-free measures: one L x L matrix each (CKA, and unit matching from the grid-4 pass, :mod:`.units`)
LABEL_FREE_METHODS = CKA_METHODS + UNIT_METHODS
QUALITY_COLUMNS = ("model", "layer", "relative_depth", "concept", "method", "metric", "value", "represented")


def read_quality(so: StudyOutputs) -> pd.DataFrame:
    """The ``concept_quality.csv`` rows of all models, checked for the columns the stage needs."""
    frames = []
    for m in so.models:
        path = concept_quality_csv(so.dataset_dir / model_dir_name(m))
        if not path.exists():
            raise ComparisonError(f"{path} does not exist; run the concept stage first")
        df = pd.read_csv(path, keep_default_na=True)
        missing = [c for c in QUALITY_COLUMNS if c not in df.columns]
        if missing:
            raise ComparisonError(f"{path} lacks columns {missing}")
        df["model"] = m
        frames.append(df)
    q = pd.concat(frames, ignore_index=True)
    q["represented"] = q["represented"].astype(str).str.lower().isin(["true", "1", "1.0", "yes"])
    return q


def compute_similarities(
    so: StudyOutputs, *, seed: int = 0, chunk_images: int = 16, read_images: int = 16, grid4: bool = True,
    cka: bool = True, track: dict[int, np.ndarray] | None = None, image_quality: bool = False,
    label_free: Future | None = None,
) -> dict[str, np.ndarray]:
    """All similarity matrices of a study: one streaming pass over the compared images (+ one for grid-4 CKA).

    When ``so`` reads the ground truth (``StudyOutputs(truth=True)``) the truth mask is one more row of the
    segmentation accumulator and the resolution-only oracles (``oracles=True``) further rows, so agreement
    beyond accuracy and the oracle's matrices come from the same pass.

    Parameters
    ----------
    cka : compute the CKA matrices, the permuted-image control and the soft-mask Pearson (off for the val
        pass, which only selects layers).
    track : per concept, ``P x 2`` study layer pairs whose per-image segmentation counts are kept
        (``seg_image_counts``, for the image bootstrap of finding 1).
    label_free : the grid-4 pass already started by the caller (:func:`start_label_free` on the same
        ``so``): its matrices join the result and ``grid4`` is not read.

    Returns
    -------
    ``K x L x L`` arrays ``seg``, ``seg_control``, ``seg_pearson``, ``cls``, ``cls_control``,
    ``cls_jaccard``, ``cls_partial``, with the truth also ``seg_kappa`` and ``seg_obs_exp``, with oracles
    ``oracle_seg_kappa`` (the oracle of each layer's native stride against the other's, ``K x L x L``);
    with ``image_quality`` also ``seg_image_quality`` (per concept, layer and image the true positives and
    marked pixels, and the true pixels: the paired bootstrap of val quality) and on object datasets
    ``seg_object_quality``; ``L x L`` arrays ``cka``, ``cka_debiased`` and ``cka_grid4``, and with the
    grid-4 pass the unit matching matrices of :class:`~conceptsim.comparison.units.UnitMatcher`;
    ``seg_image_counts`` (concept -> ``N x P x 5``) when ``track`` is given.
    """
    nl, nk, n = len(so.layers), len(so.concepts), so.n_test
    n_or = len(so.oracles)
    rows_total = nl + (1 + n_or if so.use_truth else 0)
    seg_acc = None
    if so.use_seg:
        seg_acc = SegAccumulator(rows_total, nk, so.eval_grid, workers=min(2, os.cpu_count() or 1),
                                 track=track, truth_row=nl if so.use_truth else None, moment_rows=nl if cka else 0,
                                 oracle_rows=n_or if so.use_truth else 0,
                                 image_quality=image_quality and so.use_truth,
                                 object_concepts=so.object_concepts if so.use_truth else None)
    cls_logits = np.zeros((nl, n, nk), dtype=np.float32)
    gap = [None] * nl if cka else None
    # The grid-4 pass reads the activations once more: it runs in a second Python thread beside the main
    # pass (torch releases the GIL), which keeps two cores busy without OpenMP teams of the many small
    # products waiting for each other (:func:`start_label_free`).
    pool = ThreadPoolExecutor(1) if (label_free is None and grid4 and cka) else None
    if pool is not None:
        label_free = start_label_free(pool, so, seed=seed, read_images=read_images)

    def fill(chunk, li: int, k: int, buf: torch.Tensor):
        if li < nl:
            return buf if chunk.seg_map(li, k, buf) else None
        if li == nl:
            return buf if chunk.truth_map(k, buf) else None
        return buf if chunk.oracle_map(li - nl - 1, k, buf) else None

    # the next block's reads and low-resolution maps are prepared in a thread while this one accumulates
    with prefetched(so.iter_chunks(chunk_images, read_images), depth=2) as chunks:
        for chunk in chunks:
            _accumulate(chunk, seg_acc, fill, cls_logits, gap, n)
            release_freed_memory()  # each thread keeps its own heap: without this their freed blocks pile up
    out: dict[str, np.ndarray] = {}
    if seg_acc is not None:
        full = seg_acc.results()
        layers = slice(0, nl)
        for key, value in full.items():
            out[key] = value[:, layers, layers].copy()
        keys = ["seg", "seg_control", "seg_pearson", "seg_kappa", "seg_kappa_max", "seg_obs_exp"]
        for key in (k for k in keys if k in out):
            out[key][~pair_mask(so.seg_available)] = np.nan
        if n_or:
            o = nl + 1 + so.oracle_of
            out["oracle_seg_kappa"] = full["seg_kappa"][:, o[:, None], o[None, :]]
        if track:
            out["seg_image_counts"] = seg_acc.per_image()
        if image_quality and so.use_truth:
            tp, size, truth = seg_acc.image_quality()
            out["seg_image_quality"] = (tp[:, :nl], size[:, :nl], truth)
            if (oq := seg_acc.object_quality()) is not None:
                out["seg_object_quality"] = oq
    if so.use_cls:
        out.update(cls_similarity(cls_logits, rng_for(seed, "cls_control")))
        out["cls_partial"] = partial_correlation(cls_logits.transpose(2, 0, 1), so.labels)
        out["cls_logits"] = cls_logits
        for key in ("cls", "cls_control", "cls_jaccard", "cls_partial"):
            out[key][~pair_mask(so.cls_available)] = np.nan
    if gap is not None:
        grams = np.empty((nl, n, n))
        for li, g in enumerate(gap):
            t = torch.from_numpy(g).double()
            torch.matmul(t, t.T, out=torch.from_numpy(grams[li]))
            gap[li] = None  # the features are not needed any more
        out.update(cka_matrices(grams))
    if label_free is not None:
        out.update(label_free.result())
    if pool is not None:
        pool.shutdown()
    return out


def _accumulate(chunk, seg_acc, fill, cls_logits: np.ndarray, gap: list | None, n: int) -> None:
    """Add one chunk of outputs to the accumulators of :func:`compute_similarities`."""
    if seg_acc is not None:
        seg_acc.update_streamed(len(chunk.rows), lambda li, k, buf, c=chunk: fill(c, li, k, buf), objects=chunk.objects)
    if chunk.cls is not None:
        cls_logits[:, chunk.rows] = chunk.cls.numpy()
    if gap is not None:
        for li, g in enumerate(chunk.gap):
            if gap[li] is None:
                gap[li] = np.zeros((n, g.shape[1]), dtype=np.float32)  # float64 only for the product
            gap[li][chunk.rows] = g.numpy()


def start_label_free(pool: ThreadPoolExecutor, so: StudyOutputs, *, seed: int = 0, read_images: int = 16) -> Future:
    """Start the grid-4 pass of ``so`` in ``pool``: the future of ``cka_grid4`` and the unit matching matrices
    (:class:`~conceptsim.comparison.units.UnitMatcher`) of the test images.

    The pass needs nothing of the concept outputs, so the stage starts it first and it runs beside the
    selection pass, the planning and the test pass (filling the cores those leave idle). It uses the calling
    thread's torch thread count; unit matching shares its layers between two threads of its own. The
    matrices do not depend on when or beside what it runs.
    """
    return pool.submit(_label_free, so, read_images, torch.get_num_threads(), seed)


def _label_free(so: StudyOutputs, read_images: int, threads: int, seed: int) -> dict[str, np.ndarray]:
    """The work of :func:`start_label_free`, in a worker thread with ``threads`` torch threads."""
    torch.set_num_threads(threads)
    units = UnitMatcher(len(so.layers), so.n_test, seed=seed)  # fed by the grid-4 pass
    out = {"cka_grid4": cka_matrices(grid4_grams(so, read_images, units.add_layer))["cka"]}
    out.update(units.results(workers=min(2, os.cpu_count() or 1), keep=so.compared_layers))
    return out


def pair_mask(available: np.ndarray) -> np.ndarray:
    """``K x L x L`` mask of layer pairs where both layers have a vector for the concept."""
    a = available.T
    return a[:, :, None] & a[:, None, :]


def grid4_grams(so: StudyOutputs, chunk_images: int, on_layer=None) -> np.ndarray:
    """Gram matrices of activations pooled to 4 x 4, one layer at a time (memory: one layer's features).

    ``on_layer(li, pooled)`` receives each layer's ``n_test x (C * 16)`` pooled features (unit matching).
    """
    grams = np.empty((len(so.layers), so.n_test, so.n_test))
    for li in range(len(so.layers)):
        x = None
        for pos in so.read_blocks(chunk_images):
            acts = so.layer_activations(li, so.rows[pos])
            pooled = F.adaptive_avg_pool2d(acts, 4).reshape(len(acts), -1)
            if x is None:
                x = torch.empty((so.n_test, pooled.shape[1]), dtype=torch.float64)
            x[torch.from_numpy(pos)] = pooled.double()
        torch.matmul(x, x.T, out=torch.from_numpy(grams[li]))
        if on_layer is not None:
            on_layer(li, x)
    return grams


def similarity_frame(so: StudyOutputs, sims: dict[str, np.ndarray], rep: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """The rows of ``similarity.csv`` (see the module docstring); ``rep`` (``{"seg"|"cls": L x K}``, from
    :func:`~conceptsim.comparison.findings.represented_flags`) gives the ``represented`` column.

    The text columns are categorical (codes into the study's few names): a million rows cost no string
    objects, and :func:`csv_text` prints each name once.
    """
    ia, ib = so.layer_pairs()
    depths = so.depths
    category_names = list(dict.fromkeys([so.categories[c] for c in so.concepts] + [""]))
    concept_names = [*so.concepts, ""]  # "" for the label-free rows
    blank = len(so.concepts)
    concept_category = np.array([category_names.index(so.categories[c]) for c in so.concepts] + [category_names.index("")])
    method_names, concept, method, pair, value, control, both = [], [], [], [], [], [], []
    for name in [m for m in CONCEPT_METHODS if m in sims] + [m for m in LABEL_FREE_METHODS if m in sims]:
        concept_method = name in CONCEPT_METHODS
        ctl = sims.get(f"{name}_control")
        vals = sims[name][:, ia, ib] if concept_method else sims[name][ia, ib][None]
        nk, npairs = vals.shape
        concept.append(np.repeat(np.arange(nk) if concept_method else np.array([blank]), npairs))
        method.append(np.full(nk * npairs, len(method_names)))
        method_names.append(name)
        pair.append(np.tile(np.arange(npairs), nk))
        value.append(vals.ravel())
        control.append((ctl[:, ia, ib] if concept_method else ctl[ia, ib]).ravel() if ctl is not None
                       else np.full(nk * npairs, np.nan))
        if rep is not None:  # codes into ("False", "True", ""): empty for the label-free rows
            r = rep[CONCEPT_METHODS[name]].T if concept_method else None  # K x L
            both.append((r[:, ia] & r[:, ib]).astype(np.int64).ravel() if concept_method
                        else np.full(nk * npairs, 2, dtype=np.int64))

    def joined(parts: list[np.ndarray], dtype=np.int64) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    concept_codes, p = joined(concept), joined(pair)
    model_names = list(dict.fromkeys(pl.model for pl in so.layers))
    layer_names = list(dict.fromkeys(pl.layer for pl in so.layers))
    model_of = np.array([model_names.index(pl.model) for pl in so.layers], dtype=np.int64)
    layer_of = np.array([layer_names.index(pl.layer) for pl in so.layers], dtype=np.int64)
    categorical = pd.Categorical.from_codes
    columns = {
        "concept": categorical(concept_codes, concept_names),
        "category": categorical(concept_category[concept_codes], category_names),
        "method": categorical(joined(method), method_names),
        "model_a": categorical(model_of[ia][p], model_names),
        "layer_a": categorical(layer_of[ia][p], layer_names),
        "depth_a": depths[ia][p],
        "model_b": categorical(model_of[ib][p], model_names),
        "layer_b": categorical(layer_of[ib][p], layer_names),
        "depth_b": depths[ib][p],
        "value": joined(value, np.float64),
        "control": joined(control, np.float64),
    }
    if rep is not None:
        columns["represented"] = categorical(joined(both), ["False", "True", ""])
    columns["n_test"] = np.full(len(p), so.n_test, dtype=np.int64)
    return pd.DataFrame(columns)


def layer_similarity_frame(so: StudyOutputs, sims: dict[str, np.ndarray], rep: dict[str, np.ndarray]) -> pd.DataFrame:
    """The rows of ``layer_similarity.csv``: concept means over concepts represented in both layers."""
    ia, ib = so.layer_pairs()
    rows = []
    for method, base in CONCEPT_METHODS.items():
        if method not in sims:
            continue
        r = rep[base].T  # K x L
        both = r[:, :, None] & r[:, None, :] & np.isfinite(sims[method])
        count = both.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(both, sims[method], 0.0).sum(axis=0) / count
            ctl = sims.get(f"{method}_control")
            cmean = np.where(both, np.nan_to_num(ctl), 0.0).sum(axis=0) / count if ctl is not None else None
        rows.append(
            pd.DataFrame(
                {"method": method, "pair": np.arange(len(ia)), "value": mean[ia, ib],
                 "control": cmean[ia, ib] if cmean is not None else np.nan, "n_concepts": count[ia, ib]}
            )
        )
    for method in LABEL_FREE_METHODS:
        if method in sims:
            ctl = sims.get(f"{method}_control")
            rows.append(
                pd.DataFrame({"method": method, "pair": np.arange(len(ia)), "value": sims[method][ia, ib],
                              "control": ctl[ia, ib] if ctl is not None else np.nan, "n_concepts": pd.NA})
            )
    df = pd.concat(rows, ignore_index=True)
    p = df.pop("pair").to_numpy()
    for pos, (col, arr) in enumerate(
        [("model_a", [pl.model for pl in so.layers]), ("layer_a", [pl.layer for pl in so.layers]), ("depth_a", so.depths)]
    ):
        df.insert(1 + pos, col, np.asarray(arr, dtype=object if col != "depth_a" else float)[ia][p])
    for pos, (col, arr) in enumerate(
        [("model_b", [pl.model for pl in so.layers]), ("layer_b", [pl.layer for pl in so.layers]), ("depth_b", so.depths)]
    ):
        df.insert(4 + pos, col, np.asarray(arr, dtype=object if col != "depth_b" else float)[ib][p])
    df["n_concepts"] = df["n_concepts"].astype("Int64")
    df["n_test"] = so.n_test
    return df


def write_csv(path: Path, df: pd.DataFrame) -> None:
    """Atomic CSV write of floats rounded to 8 decimals (identical inputs give identical bytes).

    Rounding first and printing the shortest repr is several times faster than a ``float_format``, which
    formats every value in Python. The text is that of ``df.to_csv(index=False)`` (:func:`csv_text`).
    """
    df = df.copy()
    for col in df.columns:
        if df[col].dtype == np.float64:
            df[col] = df[col].round(8)
    text = csv_text(df)
    with atomic_path(path) as tmp:
        if text is None:
            df.to_csv(tmp, index=False)
        else:
            Path(tmp).write_text(text)


#: characters that make the csv module quote a field (QUOTE_MINIMAL with pandas' delimiter and line ends)
_QUOTED = (",", '"', "\n", "\r")


def csv_text(df: pd.DataFrame) -> str | None:
    """``df.to_csv(index=False)``'s text, or None for a frame it does not cover (a field that would be quoted,
    a column of another dtype than float, integer, nullable integer, text and categorical text).

    pandas formats every cell in its writer's row loop; the tables of the stage repeat a few names and
    depths over hundreds of thousands of rows, so here each column's *distinct* values are formatted once
    (floats by ``astype(str)``, as pandas does, missing values empty; a categorical column's categories,
    without hashing its cells) and the rows joined from them. Neighbouring columns with few distinct
    combinations (a layer pair's models, layers and depths) are joined once per combination first
    (:func:`_joined_columns`), so the rows join few fields.
    """
    columns = []
    for name in df.columns:
        if any(ch in str(name) for ch in _QUOTED):
            return None
        column = _column_codes(df[name])
        if column is None:
            return None
        columns.append(column)
    lines = [",".join(str(c) for c in df.columns)]
    if len(df):
        fields = [text[codes] for codes, text in _joined_columns(columns, len(df))]
        lines.extend(map(",".join, zip(*fields)))
    return "\n".join(lines) + "\n"


def _column_codes(col: pd.Series) -> tuple[np.ndarray, np.ndarray] | None:
    """``(codes, text)`` of one column: ``text[codes]`` are its cells as ``to_csv`` prints them (``text`` an
    object array whose last entry is the empty field of a missing value), or None for a column
    :func:`csv_text` leaves to pandas."""
    kind = col.dtype
    if kind == np.float64:  # distinct bit patterns: -0.0 prints apart from 0.0
        codes, bits = pd.factorize(col.to_numpy().view(np.int64))
        floats = bits.view(np.float64)
        text = np.where(np.isnan(floats), "", floats.astype(str))
    elif kind == np.int64 or isinstance(kind, pd.Int64Dtype):
        codes, uniques = pd.factorize(col, use_na_sentinel=True)
        text = np.asarray(uniques, dtype=np.int64).astype(str)
    elif isinstance(kind, pd.CategoricalDtype) or pd.api.types.is_object_dtype(kind) or isinstance(kind, pd.StringDtype):
        if isinstance(kind, pd.CategoricalDtype):
            codes, values = col.cat.codes.to_numpy(), list(col.cat.categories)
        else:
            codes, uniques = pd.factorize(col, use_na_sentinel=True)
            values = list(uniques)
        if not all(isinstance(v, str) for v in values):
            return None
        if any(ch in v for v in values for ch in _QUOTED):
            return None
        text = np.asarray(values, dtype=str) if values else np.zeros(0, dtype=str)
    else:
        return None
    formatted = np.empty(len(text) + 1, dtype=object)
    formatted[:-1] = text.tolist()
    formatted[-1] = ""  # missing values (code -1)
    return np.where(codes < 0, len(text), codes), formatted


def _joined_columns(columns: list[tuple[np.ndarray, np.ndarray]], rows: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Neighbouring ``(codes, text)`` columns merged into one while their distinct combinations stay few
    (at most ``rows // 16``): each combination's fields are joined once instead of once per row."""
    limit = max(1, rows // 16)
    merged = [columns[0]]
    for codes, text in columns[1:]:
        left_codes, left_text = merged[-1]
        if len(left_text) * len(text) <= 2**62:
            pair, combos = pd.factorize(left_codes.astype(np.int64) * len(text) + codes)
            if len(combos) <= limit:
                joined = np.array([f"{left_text[c // len(text)]},{text[c % len(text)]}" for c in combos.tolist()]
                                  + [""], dtype=object)
                merged[-1] = (pair, joined)
                continue
        merged.append((codes, text))
    return merged


def run_comparison_stage(
    dataset_dir: str | Path,
    out_dir: str | Path,
    *,
    models: Sequence[str],
    seed: int = 0,
    permutations: int = 10000,
    bootstrap: int = 10000,
    chunk_images: int = 16,
    grid4: bool = True,
    select_split: str = "val",
    min_concepts: int = 3,
    reuse: bool = False,
) -> dict[str, Path]:
    """Compare every pair of probed layers of ``models`` on one dataset and test the two findings.

    Parameters
    ----------
    dataset_dir : ``results/<study>/<dataset>`` holding one directory per model (see module docstring).
    out_dir : where ``similarity.csv``, ``layer_similarity.csv`` and ``findings.json`` are written.
    models : model names (trained ``NAME`` and random-init twins ``NAME:random``).
    seed : seeds the controls, bootstraps and permutations (same seed, same files).
    permutations : permutations of the finding-2 test.
    bootstrap : resamples of the hierarchical bootstrap of finding 1 (the methods ask for at least 10,000).
    chunk_images : test images per streaming step; memory is about ``chunk_images x layers x grid pixels
        x 2`` bytes (one concept's int8 masks) plus the low-resolution logits of ``chunk_images`` images.
    grid4 : also compute CKA on activations pooled to 4 x 4 (one extra read of the activations).
    select_split : where layer pairs, depth matches and emergence depths are chosen (``"val"``, the default;
        ``"test"`` is the pre-review behaviour, kept as an alternative). Without val images the stage
        selects on test and ``findings.json`` says so (``selected_on``).
    min_concepts : finding 1 is "not testable here" with fewer concepts passing the learned-concept filter.
    reuse : return the outputs already in ``out_dir`` without recomputing when ``comparison_stage.json``
        says they were computed with the same parameters and library code from the same concept-stage
        results (each model's ``concept_stage.json``, byte for byte); anything else recomputes.

    Threads: torch runs ``CONCEPTSIM_TORCH_THREADS`` threads per worker of the stage when that is set to a
    positive number and otherwise 1, and numpy's BLAS one thread, both restored afterwards (the stage runs
    its two reading passes in two Python threads, which keeps two cores busy). On a machine shared with other
    busy processes one thread is much faster than two, because OpenMP threads of the many short products wait
    for each other.

    Returns
    -------
    ``{"similarity": path, "layer_similarity": path, "grounding": path, "findings": path}``.
    """
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    records = [concept_stage_json(dataset_dir / model_dir_name(m)) for m in models]
    identity = stage_identity(
        __name__,
        models=list(models), seed=seed, permutations=permutations, bootstrap=bootstrap, chunk_images=chunk_images,
        grid4=grid4, select_split=select_split, min_concepts=min_concepts,
        concept_stages=[concept_stage_identity(r) for r in records])
    record = comparison_stage_json(out_dir)
    known_inputs = all(r.exists() for r in records)  # without the concept stages' records nothing is reused
    if reuse and known_inputs and (done := reusable_outputs(record, identity)) is not None:
        return done
    previous = torch.get_num_threads()
    torch.set_num_threads(torch_threads_from_environment() or 1)
    # numpy's BLAS (the findings' resampling products) on one thread: its own pool would spin beside the
    # stage's two Python threads and take CPU time from them (in the study the notebooks' process is held to
    # one BLAS thread already; a caller such as the benchmark is not)
    blas = threadpool_limits(limits=1, user_api="blas")
    try:
        paths = _run(dataset_dir, out_dir, models, seed, permutations, bootstrap, chunk_images, grid4, select_split,
                     min_concepts)
    finally:
        blas.restore_original_limits()
        torch.set_num_threads(previous)
    write_json(record, {"identity": identity, "outputs": relative_outputs(paths, out_dir)})
    return paths


def _model_listing(dataset_dir: Path) -> dict[str, dict]:
    path = dataset_dir.parent / MODEL_LISTING
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())["models"]
    except (ValueError, KeyError) as exc:
        raise ComparisonError(f"{path} is not a model listing ({exc})") from exc


def excluded_models(dataset_dir: Path) -> dict[str, str]:
    """Models the study's listing (``results/<study>/models.json``, written by the runner) leaves out of the
    findings, with the reason (a declared model without weights is a random network, not a trained one)."""
    models = _model_listing(dataset_dir)
    return {m: s.get("exclusion_reason") or s.get("label", "") for m, s in models.items() if not s.get("in_finding1", True)}


def network_groups(dataset_dir: Path, models: Sequence[str]) -> dict[str, str]:
    """The shortcut test's networks and their groups, from the study's listing (empty unless two or more groups)."""
    listing = _model_listing(dataset_dir)
    groups = {m: listing[m]["group"] for m in models if listing.get(m, {}).get("group")}
    return groups if len(set(groups.values())) >= 2 else {}


def concept_stage_identity(record: Path) -> str | None:
    """The identity a model's concept stage recorded (its store, parameters and code), else the record's
    hash (an older record), or None without one."""
    try:
        return json.loads(record.read_text()).get("identity") or sha256_file(record)
    except (OSError, ValueError, AttributeError):
        return None


def _layer_tables(so: StudyOutputs, sims: dict, rep: dict, paths: dict) -> pd.DataFrame:
    """Write ``layer_similarity.csv`` and ``grounding.csv`` (layer monotonicity of every measure and the depth
    alignment of unit matching, :mod:`.grounding`); returns the layer similarity rows."""
    layer_pairs = layer_similarity_frame(so, sims, rep)
    write_csv(paths["layer_similarity"], layer_pairs)
    write_csv(paths["grounding"], grounding_frame(so.dataset_dir.name, list(so.models), [pl.model for pl in so.layers],
                                                  so.depths, layer_matrices(sims, rep, CONCEPT_METHODS, LABEL_FREE_METHODS)))
    return layer_pairs


def _run(dataset_dir, out_dir, models, seed, permutations, bootstrap, chunk_images, grid4, select_split="val",
         min_concepts=3) -> dict[str, Path]:
    so = StudyOutputs(dataset_dir, models, truth=True, oracles=True)
    # the label-free matrices (grid-4 CKA, unit matching) need only the test activations: started first, they
    # run beside everything up to the tables (the findings do not read them)
    with ThreadPoolExecutor(1) as background:
        label_free = start_label_free(background, so, seed=seed) if grid4 else None
        return _run_beside(so, label_free, dataset_dir, out_dir, models, seed, permutations, bootstrap, chunk_images,
                           select_split, min_concepts)


def _run_beside(so, label_free, dataset_dir, out_dir, models, seed, permutations, bootstrap, chunk_images, select_split,
                min_concepts) -> dict[str, Path]:
    """:func:`_run` once the label-free pass (``label_free``, a future or None) is under way."""
    quality = read_quality(so)
    # 1. selection matrices on val (agreement beyond accuracy and the oracle's); no CKA, no grid-4 pass
    n_val = len(so.stores[0].split_index("val"))
    if select_split == "val" and n_val > 0:
        so_val = StudyOutputs(dataset_dir, models, split="val", truth=True, oracles=True)
        select = compute_similarities(so_val, seed=seed, chunk_images=chunk_images, grid4=False, cka=False,
                                      image_quality=True)
        release_freed_memory()  # the pass's freed blocks, kept in several threads' heaps, go before the test pass
        selected_on = "val"
    elif select_split in ("val", "test"):
        so_val, select, selected_on = None, None, "test"  # no val images: select on test (recorded in findings.json)
    else:
        raise ValueError(f"select_split must be 'val' or 'test', got {select_split!r}")
    # 2. the val-selected finding-1 pairs are followed per image in the test pass
    excluded = excluded_models(dataset_dir)
    plans, track = plan_findings(so, quality, select, so_val, seed, excluded) if select is not None else (None, None)
    # 3. one pass over the test images
    sims = compute_similarities(so, seed=seed, chunk_images=chunk_images, grid4=False, track=track,
                                image_quality=select is None)
    if select is None:
        select = sims
        plans, track = plan_findings(so, quality, select, so, seed, excluded)
        if track:  # selection on test: the tracked pairs are known only now (a second, rare pass)
            sims = compute_similarities(so, seed=seed, chunk_images=chunk_images, grid4=False, track=track)
    release_freed_memory()  # the findings' bootstrap starts from the live matrices, not on top of the passes' heaps
    sims["seg_track"] = track
    rep = represented_flags(so, quality, select)  # as the findings count them (every-object control included)
    paths = comparison_files(out_dir)
    # the findings (numpy resampling, mostly outside the GIL) in a second thread beside the tables, which are
    # mostly Python (formatting the CSVs): both only read ``sims``, and each has its own seeded generators.
    # The findings take longer than all the tables together, so this thread writes every table meanwhile.
    with ThreadPoolExecutor(1) as pool:
        findings = pool.submit(findings_document, so, dict(sims), select, quality, plans, seed=seed,
                               permutations=permutations, bootstrap=bootstrap, selected_on=selected_on, n_val=n_val,
                               min_concepts=min_concepts, excluded=excluded)
        if label_free is not None:  # the tables need the label-free rows (the findings started without them)
            sims.update(label_free.result())
        pairs = similarity_frame(so, sims, rep)
        write_csv(paths["similarity"], pairs)
        layer_pairs = _layer_tables(so, sims, rep, paths)
        groups = network_groups(dataset_dir, so.models)
        if groups:  # the shortcut and label-randomisation test (.grounding.shortcut_frame)
            paths["shortcut"] = shortcut_csv(out_dir)
            write_csv(paths["shortcut"], shortcut_frame(so.dataset_dir.name, groups, layer_pairs, pairs,
                                                        cue_concept=CUE_CONCEPT))
        doc = findings.result()
    write_json(paths["findings"], doc)
    return paths
