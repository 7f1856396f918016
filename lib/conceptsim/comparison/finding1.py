"""Finding 1, third version: does training make different architectures agree on learned concepts?

(methods.md, "Testing the findings, third version".)

1. Learned-concept filter on **val** (:func:`learned_concepts`): a concept enters a model pair only where
   each trained model represents it better than its random-init twins *at the same layer* -- the paired
   bootstrap interval (val images, or source photos) of trained - twin quality (twin quality = mean over
   seeds) lies above zero -- and better than the ``pixels`` floor (the same paired rule against the pixels
   layer with the best val quality), in some layer.
2. Selection on val (:func:`plan_finding1`): per concept, the layer pair ``(L_A, L_B)`` with the highest
   *trained* agreement beyond accuracy on val. The twins are read at the **same** pair (twins share layer
   names): taking each side's own maximum (second version) favoured the twins, whose first layers make
   near-identical pixel classifiers.
3. Statistic (:func:`finding1_test`): on test, trained agreement at ``(L_A, L_B)`` minus the twins' (mean
   over seeds), averaged over concepts. Interval and p: hierarchical bootstrap (test images or source
   photos, then concepts) with the t form of :func:`conceptsim.comparison.verdicts.t_summary`; the spread
   over twin seeds is reported (one effect per seed).
4. Beside it, with no selection (:func:`depth_profile`): agreement against relative depth (bins of 0.2) for
   the trained and the twin pair.

The result is a :class:`Finding1` record (``to_json`` / ``from_json``).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np

from conceptsim.comparison.agreement import kappa_from_strata
from conceptsim.comparison.verdicts import FindingTest, _jsonable, not_testable, t_summary

#: relative-depth bins of the depth profile
DEPTH_BINS = np.linspace(0.0, 1.0, 6)


# ---------------------------------------------------------------------------------------------------------
# bootstrap machinery


def image_weights(rng: np.random.Generator, n_boot: int, n: int, groups: np.ndarray | None = None) -> np.ndarray:
    """``B x n`` multiplicities of a bootstrap resample of ``n`` images per replicate.

    With ``groups`` (one label per image, e.g. the source photo of a crop) whole groups are resampled: an
    image's multiplicity is the number of times its group was drawn.
    """
    if groups is None:
        draws = rng.integers(0, n, size=(n_boot, n))
        w = np.zeros((n_boot, n))
        np.add.at(w, (np.repeat(np.arange(n_boot), n), draws.ravel()), 1.0)
        return w
    _, inv = np.unique(np.asarray(groups), return_inverse=True)
    g = int(inv.max()) + 1
    counts = image_weights(rng, n_boot, g)  # B x G multiplicities of the groups
    return counts[:, inv]


def seg_kappa_replicates(counts: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Replicate function of ``seg_kappa`` from per-image strata sums ``N x P x 5`` (``[O, A, B, E, min]``,
    see :class:`~conceptsim.comparison.similarity.SegAccumulator`): ``w`` (``B x N``) -> ``B x P``.

    ``O``, ``A`` and ``B`` are pixel counts and the bootstrap's weights are multiplicities, both whole numbers,
    so their weighted sums are exact in float64 in any order: they are one BLAS product. ``E`` is fractional
    and keeps its own sum (``einsum``, as before), so the replicates have the bits of one ``einsum`` over all
    columns at about a quarter of its time (``min`` is not read).
    """
    counts = np.asarray(counts, dtype=np.float64)
    n, p = counts.shape[:2]
    whole = np.ascontiguousarray(counts[..., :3]).reshape(n, 3 * p)
    expected = np.ascontiguousarray(counts[..., 3])

    def f(w: np.ndarray) -> np.ndarray:
        s = (w @ whole).reshape(len(w), p, 3)
        return kappa_from_strata(s[..., 0], s[..., 1], s[..., 2], np.einsum("bn,np->bp", w, expected))[0]

    return f


def partial_replicates(x: np.ndarray, y: np.ndarray, label: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Replicate function of ``cls_partial`` of logits ``x`` (``P x N``) against ``y`` (``P x N``) given the label.

    Weighted within-class moments: each replicate's image multiplicities weight the class means and the
    pooled within-class covariance.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    lab = np.asarray(label, bool)

    def f(w: np.ndarray) -> np.ndarray:
        sxy = np.zeros((w.shape[0], x.shape[0]))
        sxx, syy = np.zeros_like(sxy), np.zeros_like(sxy)
        for cls_value in (True, False):
            wc = w * (lab == cls_value)[None]
            n = wc.sum(axis=1)[:, None]
            safe = np.where(n > 0, n, 1.0)
            mx, my = (wc @ x.T) / safe, (wc @ y.T) / safe
            sxy += wc @ (x * y).T - n * mx * my
            sxx += wc @ (x * x).T - n * mx**2
            syy += wc @ (y * y).T - n * my**2
        with np.errstate(invalid="ignore", divide="ignore"):
            ok = (sxx > 1e-12) & (syy > 1e-12)
            return np.where(ok, sxy / np.sqrt(np.where(ok, sxx * syy, 1.0)), np.nan)

    return f


def concept_level_means(diff_replicates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The concept level of the hierarchical bootstrap: per replicate, ``K`` concepts drawn with replacement
    from that replicate's per-concept values (``B x K``, NaN = undefined in that replicate); returns the
    ``B`` replicate means (NaN where every drawn concept is undefined)."""
    reps = np.asarray(diff_replicates, np.float64)
    b, k = reps.shape
    idx = rng.integers(0, k, size=(b, k))
    return nanmean_rows(np.take_along_axis(reps, idx, axis=1))


def nanmean_rows(x: np.ndarray) -> np.ndarray:
    """Row means over the finite entries (NaN for a row without any), without warnings."""
    ok = np.isfinite(x)
    n = ok.sum(axis=1)
    return np.where(n > 0, np.where(ok, x, 0.0).sum(axis=1) / np.maximum(n, 1), np.nan)


# ---------------------------------------------------------------------------------------------------------
# quality on val and the learned-concept filter


def weighted_set_iou(tp: np.ndarray, size: np.ndarray, truth: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Set IoU of ``R`` probes under image weights ``w`` (``B x N``) -> ``B x R``.

    ``tp``, ``size``: ``R x N`` per-image true positives and marked pixels; ``truth``: ``N`` true pixels.
    """
    inter = w @ np.asarray(tp, np.float64).T
    union = w @ (np.asarray(size, np.float64) + np.asarray(truth, np.float64)[None] - tp).T
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), np.nan)


def integer_weights(w: np.ndarray) -> np.ndarray:
    """``w`` as int32 when every weight is a whole number of modest size (bootstrap multiplicities), else
    unchanged: sums of them are then exact integers whatever the order."""
    w = np.asarray(w)
    if w.dtype == np.int32:
        return w
    if w.size and np.issubdtype(w.dtype, np.floating) and np.abs(w).max() < 2**20 and np.array_equal(w, np.round(w)):
        return w.astype(np.int32)
    return w


def weighted_average_precision(scores: np.ndarray, labels: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Average precision of ``R`` scorers (``R x N``) under image weights ``w`` (``B x N``) -> ``B x R``.

    Images are ranked by score (descending); a replicate's AP is the weighted mean, over its positives, of
    the weighted precision at each positive's rank (scikit-learn's step-wise AP when all weights are 1 and
    scores have no ties).

    With integer weights (the bootstrap's multiplicities) only the positives' ranks are visited: the
    weight at or above each positive is one product of the weights with a rank indicator (``N x P`` per
    scorer, all scorers in one product), whose integer sums float64 holds exactly, so the precisions and
    their sums have the same bits as running sums over every rank (:func:`_weighted_ap_running_sums`,
    used for other weights).
    """
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels, bool)
    w = integer_weights(w)
    if w.dtype != np.int32 or not y.any() or float(np.abs(w).sum(axis=1).max(initial=0)) >= 2**52:
        return _weighted_ap_running_sums(s, y, w)
    n_rep, n = w.shape
    pos = np.flatnonzero(y)
    wf = w.astype(np.float64)
    w_pos = wf[:, pos]
    pos_w = w_pos.sum(axis=1)  # exact integers
    out = np.empty((n_rep, s.shape[0]))
    order = np.argsort(-s, axis=1, kind="stable")
    rank = np.empty(s.shape[1], np.int64)
    for r in range(s.shape[0]):
        rank[order[r]] = np.arange(n)
        pos_rank = np.sort(rank[pos])  # the positives' ranks, in rank order
        w_ranked = w_pos[:, np.argsort(rank[pos], kind="stable")]
        # the weight at or above each positive: exact integer sums in float64
        cum_all = wf @ (rank[:, None] <= pos_rank[None, :]).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            prec = np.where(cum_all > 0, np.cumsum(w_ranked, axis=1) / np.where(cum_all > 0, cum_all, 1.0), 0.0)
        # the running sums add every rank's term in rank order, zeros included; adding the positives' terms
        # in the same order (a column-major row sum adds column by column) gives the same bits
        out[:, r] = np.asfortranarray(w_ranked * prec).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pos_w[:, None] > 0, out / np.where(pos_w > 0, pos_w, 1.0)[:, None], np.nan)


def _weighted_ap_running_sums(s: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """:func:`weighted_average_precision` by running sums over every rank (any weights)."""
    # multiplicities (the bootstrap's weights) are small integers: their running sums are exact in int32 and
    # give the same float64 precisions as float64 sums, with half the memory traffic of the B x N passes
    acc = np.int32 if w.dtype == np.int32 else np.float64
    out = np.full((w.shape[0], s.shape[0]), np.nan)
    for r in range(s.shape[0]):
        order = np.argsort(-s[r], kind="stable")
        ws, ys = w[:, order], y[order]
        cum_all = np.cumsum(ws, axis=1, dtype=acc)
        cum_pos = np.cumsum(ws * ys, axis=1, dtype=acc)
        with np.errstate(invalid="ignore", divide="ignore"):
            prec = np.where(cum_all > 0, cum_pos / np.where(cum_all > 0, cum_all, 1.0), 0.0)
            pos_w = (ws * ys).sum(axis=1)
            out[:, r] = np.where(pos_w > 0, (ws * ys * prec).sum(axis=1) / np.where(pos_w > 0, pos_w, 1.0), np.nan)
    return out


def quality_replicates(method: str, val: dict, labels: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Val quality of every study layer and concept under image weights ``w``: ``B x L x K``.

    ``val`` holds the val pass's matrices (:func:`~conceptsim.comparison.stage.compute_similarities` with
    ``image_quality=True``): ``seg_image_quality`` (tp, size, truth) and ``cls_logits`` (``L x N x K``).
    """
    if method == "seg":
        tp, size, truth = val["seg_image_quality"]  # K x L x N, K x L x N, K x N
        return np.stack([weighted_set_iou(tp[k], size[k], truth[k], w) for k in range(tp.shape[0])], axis=2)
    z = val["cls_logits"]  # L x N x K
    w = integer_weights(w)  # checked once for all concepts
    return np.stack([weighted_average_precision(z[:, :, k], labels[:, k], w) for k in range(z.shape[2])], axis=2)


def weighted_binary_ap(score: np.ndarray, labels: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Average precision of a 0/1 score (ties broken as scikit-learn does: one threshold per score value)
    under image weights ``w`` (``B x N``) -> ``B``: ``R1 P1 + (1 - R1) P``, with ``R1``, ``P1`` the recall
    and precision of the images scored 1 and ``P`` the weighted prevalence."""
    s, y = np.asarray(score, bool), np.asarray(labels, bool)
    pos, pos1, all1 = w @ y, w @ (y & s), w @ s
    tot = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r1 = np.where(pos > 0, pos1 / np.where(pos > 0, pos, 1.0), np.nan)
        p1 = np.where(all1 > 0, pos1 / np.where(all1 > 0, all1, 1.0), 0.0)
        return np.where(pos > 0, r1 * p1 + (1 - r1) * pos / tot, np.nan)


def every_object_replicates(method: str, val: dict, labels: np.ndarray, object_labels: np.ndarray | None,
                            w: np.ndarray) -> np.ndarray | None:
    """The every-object control's val quality per concept under image weights ``w``: ``B x K`` (None
    without objects). Segmentation: set IoU of the mask of all objects against the concept's mask;
    classification: AP of "some object present" as the score of the concept's presence."""
    if method == "seg":
        if "seg_object_quality" not in val:
            return None
        otp, osize = val["seg_object_quality"]
        truth = val["seg_image_quality"][2]
        return np.stack([weighted_set_iou(otp[k][None], osize[k][None], truth[k], w)[:, 0] for k in range(len(otp))], axis=1)
    if object_labels is None:
        return None
    return np.stack([weighted_binary_ap(object_labels, labels[:, k], w) for k in range(labels.shape[1])], axis=1)


def beats_control(reps: np.ndarray, control: np.ndarray, concepts_mask: np.ndarray) -> np.ndarray:
    """``L x K``: the lower 95 % bound of quality - control (paired replicates) lies above zero; True for the
    concepts outside ``concepts_mask`` (the control does not apply to them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (no vector) give NaN: not beaten
        low = np.nanpercentile(reps - control[:, None, :], 2.5, axis=0)
    return np.where(concepts_mask[None, :], np.isfinite(low) & (low > 0), True)


@dataclass
class LearnedConcept:
    """The learned-concept filter's decision for one model and concept (on val)."""

    learned: bool | None
    layer: str | None = None
    twin_margin_low: float | None = None  # lower 95 % bound of trained - twins at ``layer``
    pixels_margin_low: float | None = None  # lower 95 % bound of trained - pixels floor at ``layer``
    reason: str | None = None


def learned_concepts(point: np.ndarray, reps: np.ndarray, trained: np.ndarray, twins: Sequence[np.ndarray],
                     pixels: np.ndarray | None, layer_names: Sequence[str], concepts: Sequence[str],
                     available: np.ndarray | None = None, beats_every_object: np.ndarray | None = None
                     ) -> dict[str, LearnedConcept]:
    """Per concept: does the trained model represent it better than its twins and the pixels floor?

    Parameters
    ----------
    point, reps : val quality ``L x K`` and its paired bootstrap replicates ``B x L x K``
        (:func:`quality_replicates`; every layer shares each replicate's image draw).
    trained : study layer indices of the trained model; twins : per twin seed, the indices of the *same*
        layers (aligned with ``trained``); pixels : the pixels model's layer indices (``None``: no floor).
    available : ``L x K`` layers that have a vector for the concept (default all).
    beats_every_object : ``L x K`` layers whose quality beats the every-object control (object concepts;
        :func:`beats_control`); a layer must also pass it.
    """
    out = {}
    if not len(twins):
        return {c: LearnedConcept(None, reason="no random-init twin in the study") for c in concepts}
    twin_reps = np.nanmean(np.stack([reps[:, t] for t in twins]), axis=0)  # B x |A| x K
    with np.errstate(invalid="ignore"):
        d_twin = np.nanpercentile(reps[:, trained] - twin_reps, 2.5, axis=0)
    d_pix = None
    if pixels is not None and len(pixels):
        pq = np.where(np.isfinite(point[pixels]), point[pixels], -np.inf)
        best_pix = pixels[np.argmax(pq, axis=0)]  # K
        pix_reps = reps[:, best_pix, np.arange(point.shape[1])]  # B x K
        with np.errstate(invalid="ignore"):
            d_pix = np.nanpercentile(reps[:, trained] - pix_reps[:, None, :], 2.5, axis=0)
    for k, c in enumerate(concepts):
        lt = d_twin[:, k]
        ok = np.isfinite(lt) & (lt > 0)
        if available is not None:
            ok &= available[trained, k]
        lp = d_pix[:, k] if d_pix is not None else None
        if lp is not None:
            ok &= np.isfinite(lp) & (lp > 0)
        obj_ok = beats_every_object[trained, k] if beats_every_object is not None else np.ones(len(trained), bool)
        ok &= obj_ok
        if not np.isfinite(lt).any():
            out[c] = LearnedConcept(False, reason="no val quality")
            continue
        if ok.any():
            i = int(np.flatnonzero(ok)[np.argmax(lt[ok])])
            out[c] = LearnedConcept(True, layer_names[trained[i]], float(lt[i]), None if lp is None else float(lp[i]))
        else:
            i = int(np.nanargmax(lt))
            if not (lt > 0).any():
                why = "not better than its twins on val"
            elif lp is not None and not ((lt > 0) & (lp > 0)).any():
                why = "not better than the pixels floor on val"
            else:
                why = "not better than the every-object control on val (the probe finds objects, not the category)"
            out[c] = LearnedConcept(False, layer_names[trained[i]], float(lt[i]), None if lp is None else float(lp[i]), why)
    return out


# ---------------------------------------------------------------------------------------------------------
# selection and the test


def select_pair(val: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[int, int] | None:
    """Study layer indices ``(a, b)`` of the largest finite ``val[a, b]``, ``a in rows``, ``b in cols``."""
    sub = val[np.ix_(rows, cols)]
    if sub.size == 0 or not np.isfinite(sub).any():
        return None
    i, j = np.unravel_index(np.nanargmax(sub), sub.shape)
    return int(rows[i]), int(cols[j])


@dataclass
class Finding1Plan:
    """What was selected on val for one trained model pair and method."""

    model_a: str
    model_b: str
    method: str
    seeds: list[int]
    learned: dict[str, dict] = field(default_factory=dict)  # concept -> {"a": LearnedConcept, "b": ...}
    concepts: list[int] = field(default_factory=list)  # concept indices passing the filter
    trained: dict[int, tuple[int, int]] = field(default_factory=dict)
    twins: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # the same layer pair in each twin pair
    twin_own: dict[int, list[tuple[int, int] | None]] = field(default_factory=dict)  # twins' own val argmax (diagnostic)


@dataclass
class Finding1:
    """The finding-1 record of one model pair and method (``findings.json`` schema 3)."""

    method: str  # the primary statistic: seg_kappa | cls_partial
    selected_on: str
    test: FindingTest
    n_learned: int = 0
    learned: dict = field(default_factory=dict)
    twin_seeds: list = field(default_factory=list)
    per_concept: list = field(default_factory=list)
    trained_mean: float | None = None
    twin_mean: float | None = None
    raw_trained: float | None = None
    raw_twin: float | None = None
    per_seed_effect: list = field(default_factory=list)  # effect against each twin seed alone
    twin_spread: float | None = None  # SD of the per-seed effects
    per_category: dict = field(default_factory=dict)  # category -> FindingTest (diagnostic, uncorrected)
    first_layer: dict = field(default_factory=dict)  # entries whose selected pair is both models' first layer
    depth_profile: dict = field(default_factory=dict)
    bootstrap_unit: str = "image"

    def to_json(self) -> dict:
        d = {k: _jsonable(v) for k, v in asdict(self).items() if k not in ("test", "per_category")}
        d["test"] = self.test.to_json()
        d["per_category"] = {c: t.to_json() for c, t in self.per_category.items()}
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Finding1":
        d = dict(d)
        d["test"] = FindingTest.from_json(d["test"])
        d["per_category"] = {c: FindingTest.from_json(t) for c, t in (d.get("per_category") or {}).items()}
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def finding1_test(plan: Finding1Plan, *, concepts: Sequence[str], categories: dict, layer_names: Sequence[str],
                  first_layers: set[int], primary: np.ndarray, raw: np.ndarray, replicate_fn, weights: np.ndarray,
                  rng: np.random.Generator, selected_on: str, min_concepts: int, bootstrap_unit: str,
                  profile: dict | None = None) -> Finding1:
    """Finding 1 of one plan on test outputs.

    Parameters
    ----------
    primary, raw : ``K x L x L`` test matrices of the primary statistic and its raw counterpart.
    replicate_fn : ``replicate_fn(k, pairs)`` -> function of image weights ``B x N`` returning ``B x P``
        replicate values of the primary statistic of the layer ``pairs`` of concept ``k``.
    weights : ``B x N`` image (or group) multiplicities, shared by every concept (crossed design).
    first_layers : study indices of each model's first probed layer.
    """
    rec = Finding1(method="", selected_on=selected_on, test=not_testable("finding1", "agreement", ""),
                   n_learned=len(plan.concepts), learned={c: {s: asdict(v) for s, v in d.items()} for c, d in plan.learned.items()},
                   twin_seeds=list(plan.seeds), bootstrap_unit=bootstrap_unit, depth_profile=profile or {})
    own = [p for ps in plan.twin_own.values() for p in ps if p is not None]
    rec.first_layer = {
        "trained": sum(1 for k in plan.concepts if plan.trained[k][0] in first_layers and plan.trained[k][1] in first_layers),
        "twins_own_selection": sum(1 for p in own if p[0] in first_layers and p[1] in first_layers),
        "twins_own_entries": len(own), "entries": len(plan.concepts)}
    if not plan.seeds:
        rec.test = not_testable("finding1", "agreement", "no random-init twins of both models in the study")
        return rec
    if len(plan.concepts) < min_concepts:
        rec.test = not_testable("finding1", "agreement",
                                f"{len(plan.concepts)} concept(s) pass the learned-concept filter on val "
                                f"(at least {min_concepts} needed)", n=len(plan.concepts))
        return rec
    per, reps, obs, seed_obs = [], [], [], []
    for k in plan.concepts:
        pairs = [plan.trained[k]] + plan.twins[k]
        values = np.array([primary[k, a, b] for a, b in pairs])
        raws = np.array([raw[k, a, b] for a, b in pairs])
        r = replicate_fn(k, pairs)(weights)  # B x P
        reps.append(r[:, 0] - nanmean_rows(r[:, 1:]))
        twin = float(np.nanmean(values[1:])) if np.isfinite(values[1:]).any() else float("nan")
        obs.append(values[0] - twin)
        seed_obs.append(values[0] - values[1:])
        a, b = plan.trained[k]
        c = concepts[k]
        per.append({"concept": c, "category": categories.get(c, ""), "layer_a": layer_names[a], "layer_b": layer_names[b],
                    "value": values[0], "twin": twin, "twin_sd": float(np.nanstd(values[1:])) if len(values) > 2 else None,
                    "diff": values[0] - twin, "raw": raws[0],
                    "raw_twin": float(np.nanmean(raws[1:])) if np.isfinite(raws[1:]).any() else None})
    reps_m, obs_a = np.stack(reps, axis=1), np.array(obs)
    keep = np.isfinite(obs_a)
    means = concept_level_means(reps_m[:, keep], rng)
    rec.test = t_summary("finding1", "agreement", obs_a, means)
    rec.per_concept = [_jsonable(p) for p in per]
    rec.trained_mean = float(np.nanmean([p["value"] for p in per]))
    rec.twin_mean = float(np.nanmean([p["twin"] for p in per]))
    rec.raw_trained = float(np.nanmean([p["raw"] for p in per]))
    rec.raw_twin = float(np.nanmean([np.nan if p["raw_twin"] is None else p["raw_twin"] for p in per]))
    so = np.array(seed_obs)  # K x seeds
    rec.per_seed_effect = [float(np.nanmean(so[:, s])) for s in range(so.shape[1])]
    rec.twin_spread = float(np.std(rec.per_seed_effect, ddof=1)) if len(rec.per_seed_effect) > 1 else None
    for cat in sorted({p["category"] for p in per}):
        sel = np.array([p["category"] == cat for p in per]) & keep
        m = concept_level_means(reps_m[:, sel], rng) if sel.any() else None
        rec.per_category[cat] = t_summary("finding1", "agreement", obs_a[sel], m)
        rec.per_category[cat].verdict = "diagnostic"
    return rec


def depth_profile(sim: np.ndarray, layers_a: np.ndarray, layers_b: np.ndarray, twin_layers: Sequence[tuple],
                  depths: np.ndarray, concepts: Sequence[int]) -> dict:
    """Agreement against relative depth, no selection: per bin of 0.2, the mean over ``concepts`` and over
    layer pairs whose two layers both fall in the bin, for the trained pair and the twin pairs (mean over
    seeds). ``twin_layers``: per seed, the twin models' layer indices aligned with ``layers_a``,
    ``layers_b``."""
    def profile(la, lb):
        out = []
        for lo, hi in zip(DEPTH_BINS[:-1], DEPTH_BINS[1:]):
            ia = la[(depths[la] >= lo) & ((depths[la] < hi) | (hi >= 1.0))]
            ib = lb[(depths[lb] >= lo) & ((depths[lb] < hi) | (hi >= 1.0))]
            if not len(ia) or not len(ib) or not len(concepts):
                out.append(None)
                continue
            v = sim[np.ix_(np.asarray(concepts), ia, ib)]
            out.append(float(np.nanmean(v)) if np.isfinite(v).any() else None)
        return out

    twins = [profile(ta, tb) for ta, tb in twin_layers]
    twin_mean = [None if all(t[i] is None for t in twins) else float(np.mean([t[i] for t in twins if t[i] is not None]))
                 for i in range(len(DEPTH_BINS) - 1)] if twins else []
    return {"bins": [float(b) for b in DEPTH_BINS], "trained": profile(layers_a, layers_b), "twins": twin_mean,
            "n_concepts": len(concepts)}
