"""Planted matches: synthetic feature spaces with known shared concepts, and who finds them.

Two "models" A and B of ``n_layers`` layers each are built from concept maps (random blobs on a
``grid x grid`` activation grid, each concept present in about 60 % of the images, scaled to unit
variance). Layer ``i`` of A and layer ``i`` of B *share* a group of concepts (``n_shared``); each layer
also carries concepts of its own (``n_unique``, present in the images but in no layer of the other
model); layers ``i != j`` share nothing. In A every concept sits on one unit (the rest are silent units);
in B the shared concepts sit on units under a random **permutation**, optionally followed by a random
**rotation** of B's unit space (a random orthogonal matrix: every unit of B mixes all concepts), and both
models get independent Gaussian **noise** of standard deviation ``noise`` on every unit and cell.

**Graded maps.** A concept's map is its blob mask times a smooth random intensity in ``(0, 1)`` per image
and concept (:func:`graded_intensity`: smoothed white noise through the normal CDF), the same map in A and
B for a shared concept (before the permutation, rotation and noise); the truth is the blob mask
(``PlantedSpaces.masks``) and the label its presence. Real layers encode a concept with a graded strength,
and the weak parts of a shared map are where *both* layers' segmentation probes miss: errors shared beyond
the truth, which is what ``seg_kappa`` measures. With binary maps and independent noise two layers that
share a concept share no errors beyond the truth, and ``seg_kappa``'s planted answer would be "nothing" by
construction (``graded=False`` builds them). ``shared_grading=False`` is the control: B's shared concepts
keep the truth but get their own intensities, so only the truth is shared.

Each method proposes matches and is scored by precision and recall against the exact planted answer:

- ``units_bb`` -- unit best buddies (:mod:`conceptsim.comparison.units`) of every layer pair, significant
  at the stage's level; planted: (layer i of A, unit of concept c) ~ (layer i of B, unit of c) for shared c
  (in B's unit basis before the rotation: a rotation leaves no unit-to-unit answer, which is the point);
- ``seg_kappa`` and ``seg`` -- concept matching with the suite's Method A: Net2Vec segmentation probes and
  their shuffled-label control (:func:`conceptsim.concepts.net2vec.train_probes_and_control`, reference
  solver) on every layer, "represented" decided on val as the concept stage does (:func:`seg_outputs`); a
  (layer of A, layer of B, concept) represented in both is proposed when, on the test images, ``seg_kappa``'s
  ``O - E`` is significant against its exact null of independent decisions within strata (one-sided
  z-test, :func:`seg_kappa_z`), or S_seg beats B's masks on shuffled test images (permutation test,
  :func:`seg_permutation_p`), both at the stage's level ``ALPHA``; planted: (i, i, c) for c shared by layers i;
- ``cls`` and ``cls_partial`` -- concept matching with the suite's own probes: TCAV-style classification
  probes (:func:`conceptsim.concepts.tcav.train_classification_probes`, C chosen on val) on every layer's
  GAP features, compared on the test images with S_cls and agreement beyond accuracy (the comparison
  stage's functions); a (layer of A, layer of B, concept) match is proposed when both layers represent the
  concept (decided on val) and the similarity is significant (the same Fisher-z threshold); planted:
  (i, i, c) for c shared by layers i;
- ``cka``, ``cka_debiased`` -- a layer-level score: mutual best layer pairs by CKA of the flattened test
  activations; planted: (i, i).

Known limit (measured, not hidden): the stage's ``represented`` rule for Method A compares the probe's val
set IoU, *selected on val* by early stopping, with the control's; a probe that learns nothing but a positive
bias marks nearly every cell (set IoU = the concept's area share, above a chance probe's), so a few concepts
a layer does not hold pass as represented. Where two such probes sit on layers that share other concepts
they read the same directions (their weights fit the same chance correlations of the train targets with the
shared maps), and ``seg`` and ``seg_kappa`` then propose a few matches that were not planted (precision
below 1: under a rotation at the default seed, under a permutation at some seeds).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd
import torch
import zarr
from scipy.special import ndtr
from scipy.stats import norm

from conceptsim.comparison.agreement import partial_correlation
from conceptsim.comparison.cka import cka_matrices, gram
from conceptsim.comparison.similarity import cls_similarity
from conceptsim.comparison.synthetic import blob_masks
from conceptsim.comparison.units import ALPHA, best_buddies, significance_threshold, unit_correlations, unit_samples
from conceptsim.concepts import controls
from conceptsim.concepts.layerdata import SplitData, Standardiser
from conceptsim.concepts.net2vec import EVAL_BATCH, EvalSet, eval_logits, split_counts, train_probes_and_control
from conceptsim.concepts.tcav import train_classification_probes

TRANSFORMS = ("permutation", "rotation")
NOISE_LEVELS = (0.1, 1.0, 3.0)
METHODS = ("units_bb", "seg_kappa", "seg", "cls", "cls_partial", "cka", "cka_debiased")
#: smoothing (cells) of the graded intensity fields (:func:`graded_intensity`)
GRADING_SMOOTH = 1.0
#: bootstrap resamples of the val images for the ``represented`` rule (the concept stage's default)
BOOTSTRAP = 1000
#: permutations of the test images in the ``seg`` test: 999 is the fewest that reach p = ALPHA = 1e-3
SEG_PERMUTATIONS = 999


@dataclass
class PlantedSpaces:
    """Activations of both models and the exact planted answer.

    Attributes
    ----------
    acts_a, acts_b : per layer ``n x C x g x g`` float32 activations.
    labels : ``n x K`` presence labels; splits : ``n`` of ``train`` / ``val`` / ``test``.
    unit_pairs : planted ``(layer, unit of A, unit of B)`` triples (B's basis before the rotation).
    concept_pairs : planted ``(layer of A, layer of B, concept)`` triples.
    masks : ``n x K x g x g`` bool truth masks of every concept (the blobs; ``labels`` is their presence).
    """

    acts_a: list[np.ndarray]
    acts_b: list[np.ndarray]
    labels: np.ndarray
    splits: np.ndarray
    unit_pairs: set
    concept_pairs: set
    masks: np.ndarray


def graded_intensity(rng: np.random.Generator, n: int, k: int, grid: int, smooth: float = GRADING_SMOOTH) -> np.ndarray:
    """``n x k x grid x grid`` smooth random intensities in ``(0, 1)``, one field per image and concept.

    White noise smoothed by a periodic Gaussian filter of ``smooth`` cells (in Fourier space), standardised per
    field and sent through the normal CDF: every cell's intensity is uniform on ``(0, 1)`` and neighbouring
    cells have similar intensities. The field is stationary (every cell has the same distribution, whatever
    the blob), so two independent fields err at independent places given the truth *on average*: the
    expected overlap of their weak cells is what ``seg_kappa``'s independence null expects. A ramp or a bump
    tied to the blob's geometry would not be (its weakest cells always sit on the blob's rim).
    """
    white = rng.standard_normal((n, k, grid, grid))
    f = np.fft.fftfreq(grid)
    transfer = np.exp(-2.0 * np.pi**2 * smooth**2 * (f[:, None] ** 2 + f[None, :] ** 2))
    field = np.fft.ifft2(np.fft.fft2(white) * transfer).real
    field -= field.mean(axis=(2, 3), keepdims=True)
    field /= np.maximum(field.std(axis=(2, 3), keepdims=True), 1e-12)
    return ndtr(field)


def planted_spaces(*, transform: str = "permutation", noise: float = 0.1, n_layers: int = 3, n_shared: int = 4,
                   n_unique: int = 2, silent_units: int = 4, n_images: int = 400, grid: int = 8,
                   seed: int = 0, graded: bool = True, shared_grading: bool = True) -> PlantedSpaces:
    """Build the two models' layers (see the module docstring); same seed, same arrays.

    ``graded``: each concept's map is its blob mask times a smooth random intensity (:func:`graded_intensity`)
    instead of the binary mask. ``shared_grading=False`` (a control): B's shared concepts keep their truth
    masks and labels but get intensities drawn independently of A's, so the two layers' segmentation errors
    are independent given the truth (nothing else changes: the same masks, A, permutation and noise).
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    if noise < 0 or n_layers < 1 or n_shared < 1 or n_unique < 0 or silent_units < 0:
        raise ValueError("noise, n_shared, n_unique and silent_units must be non-negative and n_layers, n_shared >= 1")
    rng = np.random.default_rng([int(seed), 2025])
    per_layer = n_shared + 2 * n_unique  # shared, unique to A, unique to B
    k = n_layers * per_layer
    masks = blob_masks(rng, n_images, k, (grid, grid)).astype(bool)
    masks &= rng.random((n_images, k, 1, 1)) < 0.75  # about 60 % of the images hold each concept
    labels = masks.reshape(n_images, k, -1).any(axis=2).astype(np.uint8)
    # the intensities of A (and of B where shared), then B's own draw for the control: drawn either way, so
    # the control changes nothing but B's grading
    grade_a = graded_intensity(rng, n_images, k, grid)
    grade_b = graded_intensity(rng, n_images, k, grid)
    if not graded:
        grade_a = grade_b = np.ones_like(grade_a)
    elif shared_grading:
        grade_b = grade_a
    maps_a, maps_b = (standardised(masks * grade) for grade in (grade_a, grade_b))
    n_units = n_shared + n_unique + silent_units
    acts_a, acts_b, unit_pairs, concept_pairs = [], [], set(), set()
    for li in range(n_layers):
        base = li * per_layer
        shared = np.arange(base, base + n_shared)
        only_a = np.arange(base + n_shared, base + n_shared + n_unique)
        only_b = np.arange(base + n_shared + n_unique, base + per_layer)
        a = np.zeros((n_images, n_units, grid, grid), dtype=np.float32)
        a[:, : n_shared + n_unique] = maps_a[:, np.concatenate([shared, only_a])]
        b0 = np.zeros_like(a)
        b0[:, : n_shared + n_unique] = maps_b[:, np.concatenate([shared, only_b])]
        perm = rng.permutation(n_units)  # unit u of B holds what unit perm[u] held before
        b = b0[:, perm]
        where = np.argsort(perm)  # the B unit of pre-permutation unit v
        unit_pairs |= {(li, int(u), int(where[u])) for u in range(n_shared)}
        concept_pairs |= {(li, li, int(c)) for c in shared}
        if transform == "rotation":
            q, r = np.linalg.qr(rng.standard_normal((n_units, n_units)))
            rot = (q * np.sign(np.diag(r))).astype(np.float32)  # Haar-distributed orthogonal matrix
            b = np.einsum("nchw,cd->ndhw", b, rot)
        a += noise * rng.standard_normal(a.shape, dtype=np.float32)
        b += noise * rng.standard_normal(b.shape, dtype=np.float32)
        acts_a.append(a)
        acts_b.append(b)
    n_train, n_val = n_images // 2, n_images // 4
    splits = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * (n_images - n_train - n_val))
    return PlantedSpaces(acts_a, acts_b, labels, splits, unit_pairs, concept_pairs, masks)


def standardised(maps: np.ndarray) -> np.ndarray:
    """Each concept's maps (``n x K x g x g``) scaled to mean 0 and variance 1 over images and cells (float32)."""
    maps = maps.astype(np.float32)
    return (maps - maps.mean(axis=(0, 2, 3), keepdims=True)) / np.maximum(maps.std(axis=(0, 2, 3), keepdims=True), 1e-6)


def precision_recall(proposed: set, planted: set) -> dict[str, float]:
    """Precision (NaN when nothing is proposed) and recall of a set of proposed matches."""
    hits = len(proposed & planted)
    return {"proposed": len(proposed), "planted": len(planted), "true_positives": hits,
            "precision": hits / len(proposed) if proposed else float("nan"),
            "recall": hits / len(planted) if planted else float("nan")}


def propose_unit_matches(sp: PlantedSpaces) -> set:
    """Significant best buddies of every (layer of A, layer of B) pair on the test images, as
    ``(layer, unit of A, unit of B)`` where the two layers have the same index, else ``(-1, -1, -1 - pair)``
    (a match between layers that share nothing, always wrong)."""
    test = sp.splits == "test"
    threshold = significance_threshold(int(test.sum()))
    proposed = set()
    za = [unit_samples(torch.from_numpy(a[test])) for a in sp.acts_a]
    zb = [unit_samples(torch.from_numpy(b[test])) for b in sp.acts_b]
    for i, (sa, la) in enumerate(za):
        for j, (sb, lb) in enumerate(zb):
            ia, ib = best_buddies(unit_correlations(sa, sb), threshold, la, lb)
            proposed |= {(i, int(u), int(v)) if i == j else (-1 - i, -1 - j, int(u) * 10**6 + int(v))
                         for u, v in zip(ia, ib)}
    return proposed


def concept_logits(sp: PlantedSpaces, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Classification probes on every layer's GAP features (layers of A, then of B).

    Returns
    -------
    ``L x N_test x K`` test logits and ``L x K`` "represented" flags, decided on val as the suite does: the
    probe's val logits correlate with the label beyond the significance threshold.
    """
    tr, va, te = (sp.splits == s for s in ("train", "val", "test"))
    threshold = significance_threshold(int(va.sum()))
    logits, represented = [], []
    for acts in (*sp.acts_a, *sp.acts_b):
        gap = acts.mean(axis=(2, 3))
        st = Standardiser.fit(gap[tr])
        z = st.apply(torch.from_numpy(gap)).numpy()
        probes = train_classification_probes(z[tr], sp.labels[tr], z[va], sp.labels[va], seed=seed)
        val = probes.decision(z[va])
        r = cls_similarity(np.stack([val, sp.labels[va].astype(np.float64)]), np.random.default_rng(0))["cls"][:, 0, 1]
        represented.append(np.nan_to_num(r, nan=-1.0) >= threshold)
        logits.append(probes.decision(z[te]))
    return np.stack(logits), np.stack(represented)


def propose_concept_matches(sp: PlantedSpaces, logits: np.ndarray, represented: np.ndarray, method: str) -> set:
    """``(layer of A, layer of B, concept)`` represented in both layers whose S_cls (``cls``) or partial
    correlation given the label (``cls_partial``) on the test images is significant.

    Requiring both layers to represent the concept is the suite's rule (layer-level means use concepts
    represented in both); without it two similar layers match on concepts neither holds, because their
    probes for such a concept read the same unrelated directions.
    """
    n_layers = len(sp.acts_a)
    te = sp.splits == "test"
    if method == "cls":
        sim = cls_similarity(logits, np.random.default_rng(0))["cls"]
    elif method == "cls_partial":
        sim = partial_correlation(logits.transpose(2, 0, 1), sp.labels[te])
    else:
        raise ValueError(f"method must be 'cls' or 'cls_partial', got {method!r}")
    threshold = significance_threshold(int(te.sum()))
    both = represented[:n_layers].T[:, :, None] & represented[n_layers:].T[:, None, :]  # K x A layers x B layers
    cross = np.nan_to_num(sim[:, :n_layers, n_layers:], nan=-1.0)
    kk, ii, jj = np.nonzero(both & (cross >= threshold))
    return {(int(i), int(j), int(c)) for c, i, j in zip(kk, ii, jj)}


def split_data(acts: np.ndarray, splits: np.ndarray) -> dict[str, SplitData]:
    """One layer's activations as the concept stage holds them: a :class:`SplitData` per split over an
    in-memory Zarr array, standardised with the train split's channel moments (``stage.load_layer``)."""
    array = zarr.array(acts)
    data = {s: SplitData(array, np.flatnonzero(splits == s), budget_bytes=float(acts.nbytes) * 2,
                         with_moments=s == "train") for s in ("train", "val", "test")}
    for d in data.values():
        d.set_standardiser(data["train"].moments)
    return data


def seg_outputs(sp: PlantedSpaces, seed: int = 0, bootstrap: int = BOOTSTRAP) -> tuple[np.ndarray, np.ndarray]:
    """Method A on every layer (layers of A, then of B): Net2Vec segmentation probes with the reference solver
    and their shuffled-label control (:func:`conceptsim.concepts.net2vec.train_probes_and_control`, the stage's
    defaults), the evaluation grid equal to the activation grid (content boxes the full frame, so the
    resampling is the identity).

    Returns
    -------
    ``L x N_test x K x g x g`` float32 test logits (:func:`~conceptsim.concepts.net2vec.eval_logits`) and ``L x K``
    "represented" flags, decided on val as the concept stage does: the 95 % interval of the paired bootstrap
    (over val images) of probe set IoU minus control set IoU lies above 0 (:func:`controls.seg_intervals`).
    Runs on one torch thread (:func:`torch_threads`).
    """
    tr, va = sp.splits == "train", sp.splits == "val"
    g = sp.masks.shape[-1]
    targets = torch.from_numpy(sp.masks[tr].astype(np.float32))  # the soft targets: the masks on the layer's grid
    val_ev = EvalSet(torch.from_numpy(sp.masks[va]), torch.tensor([[0.0, 0.0, g, g]]).repeat(int(va.sum()), 1), (g, g))
    order = {s: controls.shuffle_permutation(int((sp.splits == s).sum()), seed + i) for i, s in enumerate(("train", "val"))}
    boot_val = controls.bootstrap_indices(int(va.sum()), bootstrap, seed + 1)
    logits, represented = [], []
    with torch_threads(1):
        for acts in (*sp.acts_a, *sp.acts_b):
            data = split_data(acts, sp.splits)
            probes, ctrl = train_probes_and_control(data["train"], targets, data["val"], val_ev, order["train"],
                                                    order["val"], seed=seed)
            counts = [split_counts(torch.from_numpy(q.weight), torch.from_numpy(q.bias), data["val"], val_ev)
                      for q in (probes, ctrl)]
            represented.append([iv.represented for iv in controls.seg_intervals(counts[0], counts[1], boot_val)])
            w, b = torch.from_numpy(probes.weight), torch.from_numpy(probes.bias)
            with torch.no_grad():
                logits.append(torch.cat([eval_logits(w, b, x) for _, x in data["test"].batches(EVAL_BATCH)]).numpy())
    return np.stack(logits), np.array(represented, dtype=bool)


def kappa_z(inter: np.ndarray, size_a: np.ndarray, size_b: np.ndarray, n: np.ndarray, axis: int = -1) -> np.ndarray:
    """One-sided z of ``seg_kappa``'s ``O - E`` against its exact null, from per-stratum counts.

    In stratum ``s`` with ``n_s`` pixels, ``a_s`` and ``b_s`` marked by the two layers and ``o_s`` by both, the
    null is the one ``seg_kappa`` measures agreement against: the two decisions independent within the stratum,
    i.e. B's ``b_s`` marks a random subset of the stratum given A's. Then ``o_s`` is hypergeometric with mean
    ``e_s = a_s b_s / n_s`` and variance ``a_s b_s (n_s - a_s)(n_s - b_s) / (n_s^2 (n_s - 1))``, strata
    independent: ``z = (O - E) / sqrt(sum_s Var(o_s))`` (the counts' arrays broadcast; strata along ``axis``).
    NaN where the variance is 0 (every stratum all or nothing for one layer: no room for chance agreement).
    """
    o, a, b, m = (np.asarray(x, dtype=np.float64) for x in (inter, size_a, size_b, n))
    with np.errstate(invalid="ignore", divide="ignore"):
        e = np.where(m > 0, a * b / np.where(m > 0, m, 1.0), 0.0)
        var = np.where(m > 1, a * b * (m - a) * (m - b) / np.where(m > 1, m**2 * (m - 1), 1.0), 0.0)
        ex, v = (np.sum(np.broadcast_to(x, np.broadcast(o, e).shape), axis=axis) for x in (e, var))
        diff = np.sum(o, axis=axis) - ex
        return np.where(v > 0, diff / np.sqrt(np.where(v > 0, v, 1.0)), np.nan)


def seg_kappa_z(marks_a: np.ndarray, marks_b: np.ndarray, truth: np.ndarray) -> float:
    """:func:`kappa_z` of two layers' masks of one concept (``N x ...`` bool) in the strata (image, truth value)
    of ``seg_kappa`` (:func:`conceptsim.comparison.agreement.concept_agreement`)."""
    ma, mb, t = (np.asarray(x, dtype=bool).reshape(len(x), -1) for x in (marks_a, marks_b, truth))
    strata = np.stack([t, ~t], axis=1)  # N x 2 x P
    o, a, b, n = ((m[:, None] & strata).sum(2) for m in (ma & mb, ma, mb, np.ones_like(ma)))
    return float(kappa_z(o.ravel(), a.ravel(), b.ravel(), n.ravel()))


def seg_permutation_p(marks_a: np.ndarray, marks_b: np.ndarray, permutations: np.ndarray) -> float:
    """One-sided permutation p-value of ``S_seg`` (set IoU over all images and pixels) of two layers' masks
    (``N x ...`` bool) against B's masks on other test images (the suite's seg control: the images shuffled).

    ``permutations``: ``R x N`` orders of the images; ``p = (1 + #{R: S_seg(A, B[order]) >= S_seg(A, B)}) /
    (1 + R)``. The image-pair intersections ``M[n, m] = |A_n and B_m|`` are computed once, so a permutation's
    intersection is ``sum_n M[n, order[n]]`` (the sizes, and so the union, do not change). NaN when both are
    empty.
    """
    ma, mb = (np.asarray(x, dtype=bool).reshape(len(x), -1).astype(np.float64) for x in (marks_a, marks_b))
    total = ma.sum() + mb.sum()
    if total == 0:
        return float("nan")
    pair = ma @ mb.T
    inter = np.trace(pair)
    perm_inter = pair[np.arange(len(ma))[None, :], permutations].sum(axis=1)
    iou, perm_iou = inter / (total - inter), perm_inter / (total - perm_inter)
    return float((1 + np.sum(perm_iou >= iou - 1e-12)) / (1 + len(permutations)))


def propose_seg_matches(sp: PlantedSpaces, logits: np.ndarray, represented: np.ndarray, method: str, *,
                        alpha: float = ALPHA, seed: int = 0, n_permutations: int = SEG_PERMUTATIONS) -> set:
    """``(layer of A, layer of B, concept)`` represented in both layers (Method A, decided on val) whose
    segmentation similarity on the test images is significant at ``alpha`` (the stage's level for
    correlations): ``seg_kappa`` by :func:`seg_kappa_z` (``z >= Phi^-1(1 - alpha)``), ``seg`` (S_seg) by
    :func:`seg_permutation_p` (``n_permutations`` seeded orders of the test images, ``p <= alpha``)."""
    if method not in ("seg", "seg_kappa"):
        raise ValueError(f"method must be 'seg' or 'seg_kappa', got {method!r}")
    n_layers = len(sp.acts_a)
    truth = sp.masks[sp.splits == "test"]
    marks = logits >= 0  # L x N x K x g x g: a cell is marked where the probe's logit >= 0 (sigmoid >= 1/2)
    rng = np.random.default_rng([int(seed), 2026])
    orders = np.stack([rng.permutation(len(truth)) for _ in range(n_permutations)])
    z_min = norm.ppf(1.0 - alpha)
    proposed = set()
    for c in range(truth.shape[1]):
        for i in np.flatnonzero(represented[:n_layers, c]):
            for j in np.flatnonzero(represented[n_layers:, c]):
                ma, mb = marks[i, :, c], marks[n_layers + j, :, c]
                if method == "seg_kappa":
                    ok = seg_kappa_z(ma, mb, truth[:, c]) >= z_min
                else:
                    ok = seg_permutation_p(ma, mb, orders) <= alpha
                if ok:
                    proposed.add((int(i), int(j), int(c)))
    return proposed


def propose_layer_matches(sp: PlantedSpaces, method: str) -> set:
    """Mutual best ``(layer of A, layer of B)`` pairs by CKA of the flattened test activations."""
    te = sp.splits == "test"
    grams = np.stack([gram(x[te]) for x in (*sp.acts_a, *sp.acts_b)])
    n_layers = len(sp.acts_a)
    cross = cka_matrices(grams)[method][:n_layers, n_layers:]
    ia, ib = best_buddies(cross)
    return {(int(i), int(j)) for i, j in zip(ia, ib)}


def planted_match_scores(transforms=TRANSFORMS, noise_levels=NOISE_LEVELS, *, seed: int = 0, **sizes) -> pd.DataFrame:
    """Precision and recall of every method at every transform and noise level.

    Returns
    -------
    One row per transform, noise and method: ``proposed``, ``planted``, ``true_positives``,
    ``precision``, ``recall`` (keyword ``sizes`` go to :func:`planted_spaces`).
    """
    rows = []
    with torch_threads(1):
        for transform in transforms:
            for noise in noise_levels:
                rows += _scores(transform, float(noise), seed, sizes)
    return pd.DataFrame(rows)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch on ``n`` threads, then restore the previous number.

    The planted spaces are small (products of a few hundred rows by tens of channels), where handing work to
    a second thread costs more than it saves; on a busy machine the Net2Vec probes ran 10x slower on two
    threads than on one. One thread also makes the sums' order, and so the numbers, independent of the core count.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _scores(transform: str, noise: float, seed: int, sizes: dict) -> list[dict]:
    """The rows of :func:`planted_match_scores` for one transform and noise level."""
    sp = planted_spaces(transform=transform, noise=noise, seed=seed, **sizes)
    found = {"units_bb": (propose_unit_matches(sp), sp.unit_pairs)}
    seg_logits, seg_represented = seg_outputs(sp, seed=seed)
    for m in ("seg_kappa", "seg"):
        found[m] = (propose_seg_matches(sp, seg_logits, seg_represented, m, seed=seed), sp.concept_pairs)
    logits, represented = concept_logits(sp, seed=seed)
    for m in ("cls", "cls_partial"):
        found[m] = (propose_concept_matches(sp, logits, represented, m), sp.concept_pairs)
    layers = {(i, i) for i in range(len(sp.acts_a))}
    for m in ("cka", "cka_debiased"):
        found[m] = (propose_layer_matches(sp, m), layers)
    return [{"transform": transform, "noise": noise, "method": method, **precision_recall(*found[method])}
            for method in METHODS]
