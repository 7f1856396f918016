"""Planted matches: synthetic feature spaces with known shared concepts, and who finds them.

Two "models" A and B of ``n_layers`` layers each are built from concept maps (random blobs on a
``grid x grid`` activation grid, each concept present in about 60 % of the images, scaled to unit
variance). Layer ``i`` of A and layer ``i`` of B *share* a group of concepts (``n_shared``); each layer
also carries concepts of its own (``n_unique``, present in the images but in no layer of the other
model); layers ``i != j`` share nothing. In A every concept sits on one unit (the rest are silent units);
in B the shared concepts sit on units under a random **permutation**, optionally followed by a random
**rotation** of B's unit space (a random orthogonal matrix: every unit of B mixes all concepts), and both
models get independent Gaussian **noise** of standard deviation ``noise`` on every unit and cell.

Each method proposes matches and is scored by precision and recall against the exact planted answer:

- ``units_bb`` -- unit best buddies (:mod:`conceptsim.comparison.units`) of every layer pair, significant
  at the stage's level; planted: (layer i of A, unit of concept c) ~ (layer i of B, unit of c) for shared c
  (in B's unit basis before the rotation: a rotation leaves no unit-to-unit answer, which is the point);
- ``cls`` and ``cls_partial`` -- concept matching with the suite's own probes: TCAV-style classification
  probes (:func:`conceptsim.concepts.tcav.train_classification_probes`, C chosen on val) on every layer's
  GAP features, compared on the test images with S_cls and agreement beyond accuracy (the comparison
  stage's functions); a (layer of A, layer of B, concept) match is proposed when both layers represent the
  concept (decided on val) and the similarity is significant (the same Fisher-z threshold); planted:
  (i, i, c) for c shared by layers i;
- ``cka``, ``cka_debiased`` -- a layer-level score: mutual best layer pairs by CKA of the flattened test
  activations; planted: (i, i).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from conceptsim.comparison.agreement import partial_correlation
from conceptsim.comparison.cka import cka_matrices, gram
from conceptsim.comparison.similarity import cls_similarity
from conceptsim.comparison.synthetic import blob_masks
from conceptsim.comparison.units import best_buddies, significance_threshold, unit_correlations, unit_samples
from conceptsim.concepts.layerdata import Standardiser
from conceptsim.concepts.tcav import train_classification_probes

TRANSFORMS = ("permutation", "rotation")
NOISE_LEVELS = (0.1, 1.0, 3.0)
METHODS = ("units_bb", "cls", "cls_partial", "cka", "cka_debiased")


@dataclass
class PlantedSpaces:
    """Activations of both models and the exact planted answer.

    Attributes
    ----------
    acts_a, acts_b : per layer ``n x C x g x g`` float32 activations.
    labels : ``n x K`` presence labels; splits : ``n`` of ``train`` / ``val`` / ``test``.
    unit_pairs : planted ``(layer, unit of A, unit of B)`` triples (B's basis before the rotation).
    concept_pairs : planted ``(layer of A, layer of B, concept)`` triples.
    """

    acts_a: list[np.ndarray]
    acts_b: list[np.ndarray]
    labels: np.ndarray
    splits: np.ndarray
    unit_pairs: set
    concept_pairs: set


def planted_spaces(*, transform: str = "permutation", noise: float = 0.1, n_layers: int = 3, n_shared: int = 4,
                   n_unique: int = 2, silent_units: int = 4, n_images: int = 400, grid: int = 8,
                   seed: int = 0) -> PlantedSpaces:
    """Build the two models' layers (see the module docstring); same seed, same arrays."""
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    if noise < 0 or n_layers < 1 or n_shared < 1 or n_unique < 0 or silent_units < 0:
        raise ValueError("noise, n_shared, n_unique and silent_units must be non-negative and n_layers, n_shared >= 1")
    rng = np.random.default_rng([int(seed), 2025])
    per_layer = n_shared + 2 * n_unique  # shared, unique to A, unique to B
    k = n_layers * per_layer
    masks = blob_masks(rng, n_images, k, (grid, grid)).astype(np.float32)
    masks *= (rng.random((n_images, k, 1, 1)) < 0.75)  # about 60 % of the images hold each concept
    labels = (masks.reshape(n_images, k, -1).mean(axis=2) > 0).astype(np.uint8)
    maps = (masks - masks.mean(axis=(0, 2, 3), keepdims=True)) / np.maximum(masks.std(axis=(0, 2, 3), keepdims=True), 1e-6)
    n_units = n_shared + n_unique + silent_units
    acts_a, acts_b, unit_pairs, concept_pairs = [], [], set(), set()
    for li in range(n_layers):
        base = li * per_layer
        shared = np.arange(base, base + n_shared)
        only_a = np.arange(base + n_shared, base + n_shared + n_unique)
        only_b = np.arange(base + n_shared + n_unique, base + per_layer)
        a = np.zeros((n_images, n_units, grid, grid), dtype=np.float32)
        a[:, : n_shared + n_unique] = maps[:, np.concatenate([shared, only_a])]
        b0 = np.zeros_like(a)
        b0[:, : n_shared + n_unique] = maps[:, np.concatenate([shared, only_b])]
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
    return PlantedSpaces(acts_a, acts_b, labels, splits, unit_pairs, concept_pairs)


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
    for transform in transforms:
        for noise in noise_levels:
            sp = planted_spaces(transform=transform, noise=float(noise), seed=seed, **sizes)
            found = {"units_bb": (propose_unit_matches(sp), sp.unit_pairs)}
            logits, represented = concept_logits(sp, seed=seed)
            for m in ("cls", "cls_partial"):
                found[m] = (propose_concept_matches(sp, logits, represented, m), sp.concept_pairs)
            layers = {(i, i) for i in range(len(sp.acts_a))}
            for m in ("cka", "cka_debiased"):
                found[m] = (propose_layer_matches(sp, m), layers)
            for method in METHODS:
                rows.append({"transform": transform, "noise": float(noise), "method": method,
                             **precision_recall(*found[method])})
    return pd.DataFrame(rows)
