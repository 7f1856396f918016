"""The content of ``findings.json`` (schema 3): selection on val, tests on test, verdicts with stated power.

Flow (:func:`run_comparison_stage` in :mod:`conceptsim.comparison.stage`):

1. the val outputs are compared (agreement beyond accuracy, the native-stride oracle's, and every layer's
   per-image val quality) -- the *selection* matrices;
2. :func:`plan_findings` applies the learned-concept filter on val (:mod:`~conceptsim.comparison.finding1`)
   and picks, per model pair, method and concept, the trained models' best layer pair on val; the twins are
   read at the same pair; those pairs are tracked per image in the test pass (image bootstrap);
3. the test outputs are compared once; :func:`findings_document` reports the tests on them and gives every
   primary test its verdict (:mod:`~conceptsim.comparison.verdicts`).

Structure::

    {"schema": 3, "dataset", "models", "pixels", "concepts", "categories", "n_test", "n_val", "seed",
     "permutations", "bootstrap", "selected_on", "primary": {"seg": "seg_kappa", "cls": "cls_partial"},
     "family_size", "notes",
     "positive_control": [PositiveControl.to_json()],
     "pairs": [{"model_a", "model_b", "twins_a", "twins_b", "family", "family_size",
                "finding1": {"seg" | "cls": Finding1.to_json()},
                "finding2": {"seg" | "cls": Finding2.to_json()}}],
     "emergence": [{"model", "concept", "category", "method", "depth", "layer", "test_quality", "max_quality",
                    "selected_on", "represented_any"}]}

Every primary test (``FindingTest``: ``effect, ci_low, ci_high, se, n, p_value, p_holm, mde, verdict, family,
family_size``) is Holm-corrected over its **family**: the primary tests of one model pair on one dataset
(finding 1 and the three finding-2 components, for both methods). Per-category breakdowns and the twins'
own permutation tests are diagnostics: uncorrected and labelled so.
"""

from __future__ import annotations

import warnings
from itertools import combinations
from typing import Sequence

import numpy as np
import pandas as pd

from conceptsim.comparison.alignment import (
    Matches,
    block_recovery,
    combined_matches,
    per_concept_error,
    permutation_test,
    predictor_agreement,
)
from conceptsim.comparison.finding1 import (
    Finding1Plan,
    beats_control,
    depth_profile,
    every_object_replicates,
    finding1_test,
    image_weights,
    learned_concepts,
    partial_replicates,
    quality_replicates,
    seg_kappa_replicates,
    select_pair,
)
from conceptsim.comparison.finding2 import NO_RESOLUTION, Finding2, advantage, aligned_test, positive_control
from conceptsim.comparison.findings import emergence_depth, finite_or_none, quality_arrays, represented_flags, rng_for
from conceptsim.comparison.outputs import StudyOutputs
from conceptsim.comparison.verdicts import assign_verdicts, not_testable
from conceptsim.models.names import PIXELS_MODEL, split_twin_name
from conceptsim.models.registry import shared_blocks

FINDINGS_SCHEMA = 3
#: the primary comparison of each method (agreement beyond accuracy) and its raw counterpart
PRIMARY = {"seg": "seg_kappa", "cls": "cls_partial"}
RAW = {"seg": "seg", "cls": "cls"}
#: the floor model: image pixels pooled to the study's grids; never one side of a finding
PIXELS = PIXELS_MODEL
#: bootstrap replicates of the learned-concept filter on val
FILTER_BOOTSTRAP = 1000


def model_groups(models: Sequence[str]) -> dict[str, dict]:
    """Architecture -> ``{"trained": name | None, "twins": {seed: name}}`` (the pixels floor excluded)."""
    groups: dict[str, dict] = {}
    for m in models:
        base, twin, seed = split_twin_name(m)
        if base == PIXELS:
            continue
        g = groups.setdefault(base, {"trained": None, "twins": {}})
        if twin:
            g["twins"][seed] = m
        else:
            g["trained"] = m
    return groups


def layers_by_model(so: StudyOutputs) -> dict[str, np.ndarray]:
    return {m: np.array([pl.index for pl in so.layers if pl.model == m], dtype=np.int64) for m in so.models}


def same_layers(so: StudyOutputs, source: str, target: str) -> np.ndarray:
    """Study indices of ``target``'s layers with the names of ``source``'s layers, in ``source``'s order
    (a model and its twins share layer names)."""
    index = {(pl.model, pl.layer): pl.index for pl in so.layers}
    try:
        return np.array([index[(target, pl.layer)] for pl in so.layers if pl.model == source], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(f"{target!r} does not probe the layers of {source!r} ({exc.args[0][1]!r} missing)") from exc


def plan_findings(so: StudyOutputs, quality: pd.DataFrame, select: dict[str, np.ndarray], so_val: StudyOutputs | None = None,
                  seed: int = 0, excluded: dict[str, str] | None = None) -> tuple[list[Finding1Plan], dict]:
    """The learned-concept filter (on the selection split) and the val-selected layer pairs of finding 1.

    Parameters
    ----------
    select : selection matrices (val pass of :func:`~conceptsim.comparison.stage.compute_similarities`
        with ``image_quality=True``).
    so_val : the outputs the selection matrices were computed on (labels, bootstrap groups; default ``so``).
    excluded : models left out of the findings, with the reason (e.g. a declared model without weights).

    Returns
    -------
    plans, track : ``track`` maps concept index -> ``P x 2`` study layer pairs to follow per image in the
    test pass (segmentation), in the order :func:`findings_document` reads them back.
    """
    so_sel = so_val if so_val is not None else so
    groups = model_groups(so.models)
    by_model = layers_by_model(so)
    names = [pl.layer for pl in so.layers]
    pixels = by_model.get(PIXELS)
    plans: list[Finding1Plan] = []
    track: dict[int, list[tuple[int, int]]] = {}
    bases = [b for b, g in groups.items() if g["trained"] is not None and g["trained"] not in (excluded or {})]
    w = image_weights(rng_for(seed, "learned-filter"), FILTER_BOOTSTRAP, so_sel.n_test, bootstrap_groups(so_sel))
    learned_cache: dict[tuple[str, str], dict] = {}
    select["beats_every_object"] = {}
    for method in ("seg", "cls"):
        if PRIMARY[method] not in select:
            continue
        point = quality_replicates(method, select, so_sel.labels, np.ones((1, so_sel.n_test)))[0]
        reps = quality_replicates(method, select, so_sel.labels, w)
        avail = so.seg_available if method == "seg" else so.cls_available
        control = every_object_replicates(method, select, so_sel.labels, so_sel.object_labels, w)
        beats = beats_control(reps, control, so.object_concepts) if control is not None else None
        select["beats_every_object"][method] = beats
        for b in bases:
            g = groups[b]
            twins = [same_layers(so, g["trained"], t) for t in g["twins"].values()]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                learned_cache[b, method] = learned_concepts(point, reps, by_model[g["trained"]], twins, pixels, names,
                                                            so.concepts, avail, beats)
    for ba, bb in combinations(bases, 2):
        ga, gb = groups[ba], groups[bb]
        seeds = sorted(set(ga["twins"]) & set(gb["twins"]))
        for method in ("seg", "cls"):
            if PRIMARY[method] not in select:
                continue
            plan = Finding1Plan(ga["trained"], gb["trained"], method, seeds)
            la, lb = learned_cache[ba, method], learned_cache[bb, method]
            plan.learned = {c: {"a": la[c], "b": lb[c]} for c in so.concepts}
            sel = select[PRIMARY[method]]
            ta = {s: same_layers(so, ga["trained"], ga["twins"][s]) for s in seeds}
            tb = {s: same_layers(so, gb["trained"], gb["twins"][s]) for s in seeds}
            pos_a = {int(x): i for i, x in enumerate(by_model[ga["trained"]])}
            pos_b = {int(x): i for i, x in enumerate(by_model[gb["trained"]])}
            for k, c in enumerate(so.concepts):
                if not (la[c].learned and lb[c].learned):
                    continue
                pair = select_pair(sel[k], by_model[plan.model_a], by_model[plan.model_b])
                if pair is None:
                    continue
                plan.concepts.append(k)
                plan.trained[k] = pair
                plan.twins[k] = [(int(ta[s][pos_a[pair[0]]]), int(tb[s][pos_b[pair[1]]])) for s in seeds]
                plan.twin_own[k] = [select_pair(sel[k], by_model[ga["twins"][s]], by_model[gb["twins"][s]]) for s in seeds]
                if method == "seg":
                    track.setdefault(k, [])
                    for p in [pair] + plan.twins[k]:
                        if p not in track[k]:
                            track[k].append(p)
            plans.append(plan)
    return plans, {k: np.array(v, dtype=np.int64) for k, v in track.items()}


def bootstrap_groups(so: StudyOutputs) -> np.ndarray | None:
    """Per compared image its resampling group (e.g. source photo) from the store's ``bootstrap_groups``."""
    group_of = so.stores[0].attrs.get("bootstrap_groups")
    if not group_of:
        return None
    return np.array([str(group_of.get(str(int(i)), f"image-{int(i)}")) for i in so.image_ids])


def _coords(so: StudyOutputs) -> dict[str, np.ndarray]:
    """Per study layer: relative depth, absolute depth (Conv2d position), log2 stride."""
    infos = so._layer_info
    stride = []
    for li, info in enumerate(infos):
        size = so.stores[so._store_of[li]].input_size
        stride.append(np.log2(size[0] / max(info.native_grid[0], 1)))
    return {"relative_depth": so.depths, "absolute_depth": np.array([i.conv_position for i in infos], np.float64),
            "stride": np.array(stride, np.float64)}


def _finding2(so: StudyOutputs, ma: str, mb: str, twins: list[tuple[str, str]], method: str, sims: dict,
              select: dict, rep: np.ndarray, rng_seed: int, n_perm: int, selected_on: str,
              oracle_candidates: str = "all") -> Finding2:
    primary = PRIMARY[method]
    by_model = layers_by_model(so)
    depths = so.depths
    sel = select[primary]
    la, lb = by_model[ma], by_model[mb]
    m = combined_matches(sel, la, lb, rep)
    perm = permutation_test(m, la, lb, depths, rng_for(rng_seed, "finding2", method, ma, mb), n_perm)
    rec = Finding2(primary, selected_on, aligned_test(m, perm, depths),
                   not_testable("beyond_resolution", "alignment", ""), not_testable("from_training", "alignment", ""),
                   error=perm["error"], null_mean=perm["null_mean"], n_matches=perm["n_matches"],
                   n_concepts=perm["n_concepts"])
    if len(m) == 0:
        why = "no concept is represented (on val) in layers of both models"
        rec.beyond_resolution = not_testable("beyond_resolution", "alignment", why)
        rec.from_training = not_testable("from_training", "alignment", why)
        return rec
    oracle_key = "oracle_seg_kappa"
    if method == "seg" and oracle_key in select:
        cand = np.ones_like(rep) if oracle_candidates == "all" else rep
        mo = combined_matches(select[oracle_key], la, lb, rep, ties=True, candidates=cand)
        rec.oracle_error = finite_or_none(np.mean(per_concept_error(mo, depths)[1])) if len(mo) else None
        rec.beyond_resolution = advantage("beyond_resolution", m, mo, depths,
                                          reason="the oracle matched no concept")
    else:
        rec.beyond_resolution = not_testable(
            "beyond_resolution", "alignment",
            NO_RESOLUTION if method == "cls" else "no resolution oracle in this comparison")
    tm = [combined_matches(sel, by_model[ta], by_model[tb], rep) for ta, tb in twins]
    if tm and any(len(x) for x in tm):
        pooled = Matches(*(np.concatenate([getattr(x, f) for x in tm]) for f in ("concept", "source", "match", "weight")))
        tperm = permutation_test(pooled, np.concatenate([by_model[a] for a, _ in twins]),
                                 np.concatenate([by_model[b] for _, b in twins]), depths,
                                 rng_for(rng_seed, "finding2-twins", method, ma, mb), n_perm)
        rec.twin_error = tperm["error"]
        rec.diagnostics["twins_permutation"] = {k: tperm[k] for k in ("error", "null_mean", "p_value", "n_matches", "n_concepts")}
        rec.diagnostics["twins_permutation"]["label"] = "diagnostic (uncorrected): the twins' own depth-permutation test"
        rec.from_training = advantage("from_training", m, pooled, depths, reason="the twins matched no concept")
    else:
        rec.from_training = not_testable("from_training", "alignment", "no random-init twins of both models with matches")
    rec.predictors = predictor_agreement(m, _coords(so))
    test_m = combined_matches(sims[primary], la, lb, rep)
    same = {(k, s): d for k, s, d in zip(test_m.concept, test_m.source, test_m.match)}
    agree = [same.get((k, s)) == d for k, s, d in zip(m.concept, m.source, m.match)]
    rec.match_stability = float(np.mean(agree)) if agree else None
    return rec


def _emergence(so: StudyOutputs, qual: dict, rep: dict, by_model: dict) -> list[dict]:
    rows = []
    depths = so.depths
    names = [pl.layer for pl in so.layers]
    for mname in so.models:
        idx = by_model[mname]
        for method in ("seg", "cls"):
            for k, c in enumerate(so.concepts):
                val_q = so.val_quality[method][idx, k]
                test_q = qual[method][idx, k]
                use_val = np.isfinite(val_q).any()
                q = val_q if use_val else test_q
                any_rep = bool(rep[method][idx, k].any())
                d = emergence_depth(depths[idx], q) if any_rep else float("nan")
                layer, tq = None, None
                if np.isfinite(d):
                    li = idx[int(np.flatnonzero(np.isclose(depths[idx], d))[0])]
                    layer, tq = names[li], finite_or_none(qual[method][li, k])
                rows.append({"model": mname, "concept": c, "category": so.categories[c], "method": method,
                             "depth": finite_or_none(d), "layer": layer, "test_quality": tq,
                             "max_quality": finite_or_none(np.nanmax(test_q)) if np.isfinite(test_q).any() else None,
                             "selected_on": "val" if use_val else "test", "represented_any": any_rep})
    return rows


def findings_document(so: StudyOutputs, sims: dict, select: dict, quality: pd.DataFrame, plans: list[Finding1Plan], *,
                      seed: int = 0, permutations: int = 10000, bootstrap: int = 10000, selected_on: str = "val",
                      n_val: int = 0, min_concepts: int = 3, oracle_candidates: str = "all",
                      excluded: dict[str, str] | None = None) -> dict:
    """The content of ``findings.json`` (structure in the module docstring).

    Parameters
    ----------
    sims : test matrices of :func:`~conceptsim.comparison.stage.compute_similarities` (with
        ``seg_image_counts`` of the tracked pairs and ``seg_track``, the pairs tracked per concept).
    select : the selection matrices (val outputs; the test matrices when the study has no val images).
    plans : from :func:`plan_findings` on ``select``.
    bootstrap : replicates of the hierarchical bootstrap of finding 1 (at least 10,000 by the methods).
    min_concepts : finding 1 is "not testable here" with fewer concepts passing the learned-concept filter
        (never below 3: no interval is computed from fewer).
    oracle_candidates : ``"all"`` (default: the oracle may match any layer, grid information only) or
        ``"represented"`` (the trained matches' restriction to layers that represent the concept).
    """
    if oracle_candidates not in ("all", "represented"):
        raise ValueError(f"oracle_candidates must be 'all' or 'represented', got {oracle_candidates!r}")
    min_concepts = max(3, int(min_concepts))
    groups = model_groups(so.models)
    by_model = layers_by_model(so)
    qual = {method: quality_arrays(so, quality, method)[0] for method in ("seg", "cls")}
    rep = represented_flags(so, quality, select)
    names = [f"{pl.model}/{pl.layer}" for pl in so.layers]
    first_layers = {int(idx[0]) for idx in by_model.values() if len(idx)}
    bgroups = bootstrap_groups(so)
    unit = "image" if bgroups is None else "group (bootstrap_groups of the store, e.g. source photo)"
    weights = image_weights(rng_for(seed, "finding1-images"), bootstrap, so.n_test, bgroups)
    counts = sims.get("seg_image_counts", {})

    def replicate_fn(method):
        def make(k, pairs):
            if method == "seg":
                tracked = [tuple(p) for p in np.asarray(sims["seg_track"][k])]
                return seg_kappa_replicates(counts[k][:, [tracked.index(tuple(p)) for p in pairs]])
            z = sims["cls_logits"]  # L x N x K
            return partial_replicates(np.stack([z[a, :, k] for a, _ in pairs]), np.stack([z[b, :, k] for _, b in pairs]),
                                      so.labels[:, k])
        return make

    pairs = []
    for ma, mb in {(p.model_a, p.model_b): None for p in plans}:
        ba, bb = split_twin_name(ma)[0], split_twin_name(mb)[0]
        seeds = sorted(set(groups[ba]["twins"]) & set(groups[bb]["twins"]))
        twins = [(groups[ba]["twins"][s], groups[bb]["twins"][s]) for s in seeds]
        family = f"{so.stores[0].dataset}: {ma} vs {mb}"
        entry = {"model_a": ma, "model_b": mb, "twins_a": [t[0] for t in twins], "twins_b": [t[1] for t in twins],
                 "family": family, "finding1": {}, "finding2": {}}
        records1, records2 = {}, {}
        for plan in plans:
            if (plan.model_a, plan.model_b) != (ma, mb):
                continue
            method = plan.method
            prim = sims[PRIMARY[method]]
            twin_layers = [(same_layers(so, ma, ta), same_layers(so, mb, tb)) for ta, tb in twins]
            prof_concepts = plan.concepts or list(range(len(so.concepts)))
            profile = depth_profile(prim, by_model[ma], by_model[mb], twin_layers, so.depths, prof_concepts)
            profile["concepts"] = "learned" if plan.concepts else "all"
            records1[method] = finding1_test(
                plan, concepts=so.concepts, categories=so.categories, layer_names=names, first_layers=first_layers,
                primary=prim, raw=sims[RAW[method]], replicate_fn=replicate_fn(method), weights=weights,
                rng=rng_for(seed, "finding1-concepts", method, ma, mb), selected_on=selected_on,
                min_concepts=min_concepts, bootstrap_unit=unit, profile=profile)
            records1[method].method = PRIMARY[method]
            records2[method] = _finding2(so, ma, mb, twins, method, sims, select, rep[method], seed, permutations,
                                         selected_on, oracle_candidates)
        tests = [r.test for r in records1.values()] + [t for r in records2.values() for t in r.tests()]
        entry["family_size"] = assign_verdicts(tests, family)
        entry["finding1"] = {m: r.to_json() for m, r in records1.items()}
        entry["finding2"] = {m: r.to_json() for m, r in records2.items()}
        pairs.append(entry)
    control = []
    lnames = [pl.layer for pl in so.layers]
    for ma, mb in combinations([g["trained"] for g in groups.values() if g["trained"] and g["trained"] not in (excluded or {})], 2):
        corr_names = shared_blocks(ma, mb)
        if not corr_names:
            continue
        pos_b = {lnames[i]: int(i) for i in by_model[mb]}
        corr = {int(i): pos_b[corr_names[lnames[i]]] for i in by_model[ma]
                if lnames[i] in corr_names and corr_names[lnames[i]] in pos_b}
        for method in ("seg", "cls"):
            if PRIMARY[method] in select:
                res = block_recovery(select[PRIMARY[method]], by_model[ma], by_model[mb], rep[method], corr,
                                     rng=rng_for(seed, "positive-control", method, ma, mb), n_perm=permutations)
                # both directions are counted: a layer of B is labelled with its block in A
                partner = {**corr, **{b: a for a, b in corr.items()}}
                res["per_layer"] = {f"{lnames[k]} ~ {lnames[partner[k]]}": v for k, v in res["per_layer"].items()}
                control.append(positive_control(ma, mb, PRIMARY[method], selected_on,
                                                 {lnames[a]: lnames[b] for a, b in corr.items()}, res).to_json())
    doc = {
        "schema": FINDINGS_SCHEMA, "dataset": so.stores[0].dataset, "models": so.models,
        "pixels": PIXELS if PIXELS in so.models else None, "excluded_from_findings": dict(excluded or {}),
        "concepts": so.concepts,
        "categories": so.categories, "n_test": so.n_test, "n_val": int(n_val), "seed": int(seed),
        "permutations": int(permutations), "bootstrap": int(bootstrap), "selected_on": selected_on,
        "primary": dict(PRIMARY), "positive_control": control, "pairs": pairs,
        "emergence": _emergence(so, qual, rep, by_model),
        "family_size": max([p["family_size"] for p in pairs], default=0),
        "notes": NOTES,
    }
    return rounded(doc)


def rounded(x, digits: int = 10):
    """Floats rounded to ``digits`` decimals, recursively: sums of per-image strata are added in an order that
    depends on the chunk size, so the last bits differ; the same seed and inputs give the same file."""
    if isinstance(x, float):
        return round(x, digits)
    if isinstance(x, dict):
        return {k: rounded(v, digits) for k, v in x.items()}
    if isinstance(x, list):
        return [rounded(v, digits) for v in x]
    return x


NOTES = {
    "agreement": "seg_kappa: Cohen's kappa of the two layers' decisions within strata (test image x truth value): "
    "2(O - E) / (A + B - 2E), E = sum over strata of a_s b_s / n_s; seg_kappa_max = (O - E) / (sum min(a_s, b_s) - E); "
    "cls_partial: pooled within-class correlation of the logits",
    "selection": "layer pairs, depth matches, emergence depths and every flag that decides what enters a finding "
    "(represented, the learned-concept filter) are decided on val outputs; tests are reported on test",
    "finding1": "concepts each trained model represents better than its twins at the same layer and better than the "
    "pixels floor (paired bootstrap on val); per concept the trained pair's best layer pair on val; on test, trained "
    "minus twins at that same pair (mean over twin seeds), mean over concepts; hierarchical bootstrap (images or "
    "source photos, then concepts), t interval, one-sided p",
    "finding2": "three tests per model pair: aligned (advantage over the depth-permutation null; its p is the "
    "permutation test's, which respects that concepts share layers, so its t-based MDE is a lower bound), beyond resolution "
    "(over the oracle at each layer's native stride), from training (over the twins); per-concept advantages, t "
    "intervals",
    "verdicts": "supported: 95 % interval clear of zero and Holm p < 0.05; contradicted: interval below the smallest "
    "effect of interest (+0.05 agreement, 0 alignment); inconclusive otherwise, with the minimum detectable effect at "
    "80 % power (Holm's strictest step); not testable here below 3 concepts",
    "holm": "p_holm: Holm's correction over the primary family of each model pair on this dataset (finding 1 and the "
    "three finding-2 components, both methods); diagnostics are uncorrected",
    "positive_control": "share of matches whose matched layer is the corresponding shared backbone block, with a "
    "permutation p-value (correspondence relabelled among the candidate layers); passed when p < 0.05 with at least "
    "5 corresponding blocks",
}
