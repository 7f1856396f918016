"""The content of ``findings.json`` (schema 2): selection on val, tests on test, controls, Holm correction.

Flow (:func:`run_comparison_stage` in :mod:`conceptsim.comparison.stage`):

1. the val outputs are compared (agreement beyond accuracy, and the oracle's) -- the *selection* matrices;
2. :func:`plan_findings` applies the learned-concept filter and picks, per model pair, method and concept,
   the best-matching layer pair of the trained models and of every twin pair on val; the segmentation
   pairs picked are tracked per image in the test pass (image bootstrap);
3. the test outputs are compared once; :func:`findings_document` reports the tests on them.

Structure::

    {"schema": 2, "dataset", "models", "concepts", "categories", "n_test", "n_val", "seed", "permutations",
     "bootstrap", "selected_on": "val" | "test", "primary": {"seg": "seg_kappa", "cls": "cls_partial"},
     "family_size", "notes",
     "pairs": [{"model_a", "model_b", "twins_a", "twins_b",
        "finding1": {"seg" | "cls": {"method", "selected_on", "status", "holds", "n_learned", "learned": {...},
            "per_concept": [{concept, category, layer_a, layer_b, value, twin, twin_sd, twin_layers, diff,
                             raw, raw_twin}],
            "test": {mean, ci_low, ci_high, p_value, p_holm, n, family},   # trained - twin, hierarchical
            "trained": {mean}, "twin": {mean}, "raw": {trained, twin},
            "per_category": {category: {mean, ci_low, ci_high, p_value, p_holm, n, family}}}},
        "finding2": {"seg" | "cls": {"method", "selected_on", "status", "holds",
            "test": {error, null_mean, p_value, p_holm, n_matches, n_concepts, family},
            "oracle": {error, null_mean, p_value, n_matches, n_concepts} | null,
            "diff_oracle": {mean, ci_low, ci_high, p_value, p_holm, n, family} | null,
            "twins": {error, null_mean, p_value, p_holm, ...} | null, "diff_twin": {...} | null,
            "predictors": {"spearman": {relative_depth, absolute_depth, stride}, "best"},
            "match_stability"}}}],
     "positive_control": [{"model_a", "model_b", "method", "rate", "chance", "n", "hits", "per_layer"}],
     "emergence": [{"model", "concept", "category", "method", "depth", "layer", "test_quality",
                    "selected_on", "represented_any"}]}

Every ``p_value`` of an entry with ``"family": true`` has its Holm-adjusted ``p_holm`` beside it, corrected
over all such entries of the document (:mod:`conceptsim.comparison.multiplicity`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Sequence

import numpy as np
import pandas as pd

from conceptsim.comparison.alignment import (
    Matches,
    block_recovery,
    combined_matches,
    paired_concept_difference,
    permutation_test,
    predictor_agreement,
)
from conceptsim.comparison.findings import QUALITY_METRIC, emergence_depth, finite_or_none, quality_arrays, rng_for
from conceptsim.comparison.learned import (
    hierarchical_bootstrap,
    image_weights,
    learned_concepts,
    partial_replicates,
    seg_kappa_replicates,
    select_pair,
)
from conceptsim.comparison.multiplicity import annotate_holm
from conceptsim.comparison.outputs import StudyOutputs
from conceptsim.models.names import split_twin_name
from conceptsim.models.registry import shared_blocks

FINDINGS_SCHEMA = 2
#: the primary comparison of each method (agreement beyond accuracy) and its raw counterpart
PRIMARY = {"seg": "seg_kappa", "cls": "cls_partial"}
RAW = {"seg": "seg", "cls": "cls"}


def model_groups(models: Sequence[str]) -> dict[str, dict]:
    """Architecture -> ``{"trained": name | None, "twins": {seed: name}}``."""
    groups: dict[str, dict] = {}
    for m in models:
        base, twin, seed = split_twin_name(m)
        g = groups.setdefault(base, {"trained": None, "twins": {}})
        if twin:
            g["twins"][seed] = m
        else:
            g["trained"] = m
    return groups


@dataclass
class PairPlan:
    """What was selected on val for one trained model pair and method."""

    model_a: str
    model_b: str
    method: str
    seeds: list[int]  # twin seeds present for both models
    learned: dict[str, dict] = field(default_factory=dict)
    concepts: list[int] = field(default_factory=list)  # concept indices passing the filter
    trained: dict[int, tuple[int, int]] = field(default_factory=dict)
    twins: dict[int, list[tuple[int, int] | None]] = field(default_factory=dict)


def plan_findings(so: StudyOutputs, quality: pd.DataFrame, select: dict[str, np.ndarray]) -> tuple[list[PairPlan], dict]:
    """The learned-concept filter and the val-selected layer pairs of finding 1.

    Returns
    -------
    plans, track : ``track`` maps concept index -> ``P x 2`` study layer pairs to follow per image in the
    test pass (segmentation), in the order :func:`findings_document` reads them back.
    """
    groups = model_groups(so.models)
    by_model = layers_by_model(so)
    plans: list[PairPlan] = []
    track: dict[int, list[tuple[int, int]]] = {}
    bases = [b for b, g in groups.items() if g["trained"] is not None]
    for ba, bb in combinations(bases, 2):
        ga, gb = groups[ba], groups[bb]
        seeds = sorted(set(ga["twins"]) & set(gb["twins"]))
        for method in ("seg", "cls"):
            if PRIMARY[method] not in select:
                continue
            plan = PairPlan(ga["trained"], gb["trained"], method, seeds)
            la = learned_concepts(quality, ga["trained"], list(ga["twins"].values()), method, QUALITY_METRIC[method], so.concepts)
            lb = learned_concepts(quality, gb["trained"], list(gb["twins"].values()), method, QUALITY_METRIC[method], so.concepts)
            plan.learned = {c: {"a": la[c], "b": lb[c]} for c in so.concepts}
            sel = select[PRIMARY[method]]
            for k, c in enumerate(so.concepts):
                if not (la[c]["learned"] and lb[c]["learned"]):
                    continue
                pair = select_pair(sel[k], by_model[plan.model_a], by_model[plan.model_b])
                if pair is None:
                    continue
                twins = [select_pair(sel[k], by_model[ga["twins"][s]], by_model[gb["twins"][s]]) for s in seeds]
                plan.concepts.append(k)
                plan.trained[k] = pair
                plan.twins[k] = twins
                if method == "seg":
                    track.setdefault(k, [])
                    for p in [pair] + [t for t in twins if t is not None]:
                        if p not in track[k]:
                            track[k].append(p)
            plans.append(plan)
    return plans, {k: np.array(v, dtype=np.int64) for k, v in track.items()}


def nanmean_rows(x: np.ndarray) -> np.ndarray:
    """Row means over the finite entries (NaN for a row without any), without warnings."""
    ok = np.isfinite(x)
    n = ok.sum(axis=1)
    return np.where(n > 0, np.where(ok, x, 0.0).sum(axis=1) / np.maximum(n, 1), np.nan)


def layers_by_model(so: StudyOutputs) -> dict[str, np.ndarray]:
    return {m: np.array([pl.index for pl in so.layers if pl.model == m], dtype=np.int64) for m in so.models}


def _finding1(so: StudyOutputs, plan: PairPlan, sims: dict, rng_seed: int, n_boot: int, min_concepts: int,
              selected_on: str) -> dict:
    method, primary = plan.method, PRIMARY[plan.method]
    names = [f"{pl.model}/{pl.layer}" for pl in so.layers]
    cat = so.categories
    twins_ok = bool(plan.seeds)
    groups = bootstrap_groups(so)
    out = {"method": primary, "selected_on": selected_on, "n_learned": len(plan.concepts),
           "bootstrap_unit": "image" if groups is None else "group (bootstrap_groups of the store)",
           "learned": plan.learned, "twin_seeds": plan.seeds}
    if not twins_ok or len(plan.concepts) < min_concepts:
        reason = ("no random-init twins of both models in the study" if not twins_ok else
                  f"{len(plan.concepts)} concept(s) pass the learned-concept filter (at least {min_concepts} needed): "
                  "the twins represent this dataset's concepts as well as the trained models")
        out.update({"status": "not testable here", "reason": reason, "holds": None, "per_concept": [],
                    "test": None, "per_category": {}})
        return out
    rng = rng_for(rng_seed, "finding1", method, plan.model_a, plan.model_b)
    w = image_weights(rng, n_boot, so.n_test, bootstrap_groups(so))
    counts = sims.get("seg_image_counts", {})
    per, reps, obs = [], [], []
    for k in plan.concepts:
        pairs = [plan.trained[k]] + [t for t in plan.twins[k] if t is not None]
        if method == "seg":
            tracked = [tuple(p) for p in np.asarray(sims["seg_track"][k])]
            cols = [tracked.index(tuple(p)) for p in pairs]
            f = seg_kappa_replicates(counts[k][:, cols], so.eval_grid[0] * so.eval_grid[1])
        else:
            z = sims["cls_logits"]  # L x N x K
            f = partial_replicates(np.stack([z[a, :, k] for a, _ in pairs]), np.stack([z[b, :, k] for _, b in pairs]),
                                   so.labels[:, k])
        values = np.array([sims[primary][k, a, b] for a, b in pairs])
        raw = np.array([sims[RAW[method]][k, a, b] for a, b in pairs])
        r = f(w)  # B x P
        reps.append(r[:, 0] - nanmean_rows(r[:, 1:]) if r.shape[1] > 1 else np.full(len(r), np.nan))
        twin = float(np.nanmean(values[1:])) if len(values) > 1 and np.isfinite(values[1:]).any() else float("nan")
        obs.append(values[0] - twin)
        a, b = plan.trained[k]
        per.append({
            "concept": so.concepts[k], "category": cat[so.concepts[k]], "layer_a": names[a], "layer_b": names[b],
            "value": finite_or_none(values[0]), "twin": finite_or_none(twin),
            "twin_sd": finite_or_none(np.nanstd(values[1:])) if len(values) > 2 else None,
            "twin_layers": [[names[t[0]], names[t[1]]] if t is not None else None for t in plan.twins[k]],
            "diff": finite_or_none(values[0] - twin), "raw": finite_or_none(raw[0]),
            "raw_twin": finite_or_none(np.nanmean(raw[1:])) if len(raw) > 1 and np.isfinite(raw[1:]).any() else None,
        })
    reps_m, obs_a = np.stack(reps, axis=1), np.array(obs)
    out["per_concept"] = per
    out["test"] = {**hierarchical_bootstrap(reps_m, obs_a, rng_for(rng_seed, "finding1-concepts", method,
                                                                   plan.model_a, plan.model_b)), "family": True}
    out["trained"] = {"mean": finite_or_none(np.nanmean([p["value"] if p["value"] is not None else np.nan for p in per]))}
    out["twin"] = {"mean": finite_or_none(np.nanmean([p["twin"] if p["twin"] is not None else np.nan for p in per]))}
    out["raw"] = {"trained": finite_or_none(np.nanmean([np.nan if p["raw"] is None else p["raw"] for p in per])),
                  "twin": finite_or_none(np.nanmean([np.nan if p["raw_twin"] is None else p["raw_twin"] for p in per]))}
    cats = sorted({p["category"] for p in per})
    out["per_category"] = {}
    for c in cats:
        sel = np.array([p["category"] == c for p in per])
        out["per_category"][c] = {**hierarchical_bootstrap(reps_m[:, sel], obs_a[sel], rng_for(
            rng_seed, "finding1-category", c, method, plan.model_a, plan.model_b)), "family": False}
    out["status"] = "tested"
    return out


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
              select: dict, rep: np.ndarray, rng_seed: int, n_perm: int, n_boot: int, selected_on: str,
              oracle_candidates: str = "all") -> dict:
    primary = PRIMARY[method]
    by_model = layers_by_model(so)
    depths = so.depths
    sel = select[primary]
    la, lb = by_model[ma], by_model[mb]
    m = combined_matches(sel, la, lb, rep)
    out = {"method": primary, "selected_on": selected_on}
    res = permutation_test(m, la, lb, depths, rng_for(rng_seed, "finding2", method, ma, mb), n_perm)
    out["test"] = {**res, "family": True}
    if len(m) == 0:
        out.update({"status": "not testable here", "reason": "no concept is represented in layers of both models",
                    "holds": None, "oracle": None, "diff_oracle": None, "twins": None, "diff_twin": None,
                    "predictors": None, "match_stability": None})
        return out
    oracle_key = "oracle_seg_kappa"
    if method == "seg" and oracle_key in select:
        cand = np.ones_like(rep) if oracle_candidates == "all" else rep
        mo = combined_matches(select[oracle_key], la, lb, rep, ties=True, candidates=cand)
        out["oracle"] = permutation_test(mo, la, lb, depths, rng_for(rng_seed, "finding2-oracle", method, ma, mb), n_perm)
        out["diff_oracle"] = {**paired_concept_difference(m, mo, depths, rng_for(rng_seed, "f2-oracle-diff", ma, mb), n_boot),
                              "family": True}
    else:
        out["oracle"], out["diff_oracle"] = None, None
    tm = [combined_matches(sel, by_model[ta], by_model[tb], rep) for ta, tb in twins]
    if tm and any(len(x) for x in tm):
        pooled = Matches(*(np.concatenate([getattr(x, f) for x in tm]) for f in ("concept", "source", "match", "weight")))
        ta, tb = twins[0]
        out["twins"] = {**permutation_test(pooled, np.concatenate([by_model[a] for a, _ in twins]),
                                           np.concatenate([by_model[b] for _, b in twins]), depths,
                                           rng_for(rng_seed, "finding2-twins", method, ma, mb), n_perm),
                        "models": [list(t) for t in twins], "family": True}
        out["diff_twin"] = {**paired_concept_difference(m, pooled, depths, rng_for(rng_seed, "f2-twin-diff", ma, mb), n_boot),
                            "family": True}
    else:
        out["twins"], out["diff_twin"] = None, None
    out["predictors"] = predictor_agreement(m, _coords(so))
    test_m = combined_matches(sims[primary], la, lb, rep)
    same = {(k, s): d for k, s, d in zip(test_m.concept, test_m.source, test_m.match)}
    agree = [same.get((k, s)) == d for k, s, d in zip(m.concept, m.source, m.match)]
    out["match_stability"] = float(np.mean(agree)) if agree else None
    out["status"] = "tested"
    return out


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


def findings_document(so: StudyOutputs, sims: dict, select: dict, quality: pd.DataFrame, plans: list[PairPlan], *,
                      seed: int = 0, permutations: int = 10000, bootstrap: int = 1000, selected_on: str = "val",
                      n_val: int = 0, min_concepts: int = 3, oracle_candidates: str = "all") -> dict:
    """The content of ``findings.json`` (structure in the module docstring).

    Parameters
    ----------
    sims : test matrices of :func:`~conceptsim.comparison.stage.compute_similarities` (with
        ``seg_image_counts`` of the tracked pairs and ``seg_track``, the pairs tracked per concept).
    select : the selection matrices (val outputs; the test matrices when the study has no val images).
    plans : from :func:`plan_findings` on ``select``.
    min_concepts : finding 1 is "not testable here" with fewer concepts passing the learned filter.
    oracle_candidates : ``"all"`` (default: the oracle may match any layer, grid information only) or
        ``"represented"`` (the trained matches' restriction to layers that represent the concept).
    """
    if oracle_candidates not in ("all", "represented"):
        raise ValueError(f"oracle_candidates must be 'all' or 'represented', got {oracle_candidates!r}")
    groups = model_groups(so.models)
    by_model = layers_by_model(so)
    qual, rep = {}, {}
    for method in ("seg", "cls"):
        qual[method], rep[method] = quality_arrays(so, quality, method)
    pairs = []
    for ma, mb in {(p.model_a, p.model_b): None for p in plans}:
        ba, bb = split_twin_name(ma)[0], split_twin_name(mb)[0]
        seeds = sorted(set(groups[ba]["twins"]) & set(groups[bb]["twins"]))
        twins = [(groups[ba]["twins"][s], groups[bb]["twins"][s]) for s in seeds]
        entry = {"model_a": ma, "model_b": mb, "twins_a": [t[0] for t in twins], "twins_b": [t[1] for t in twins],
                 "finding1": {}, "finding2": {}}
        for plan in plans:
            if (plan.model_a, plan.model_b) != (ma, mb):
                continue
            method = plan.method
            entry["finding1"][method] = _finding1(so, plan, sims, seed, bootstrap, min_concepts, selected_on)
            entry["finding2"][method] = _finding2(so, ma, mb, twins, method, sims, select, rep[method], seed,
                                                  permutations, bootstrap, selected_on, oracle_candidates)
        pairs.append(entry)
    control = []
    names = [pl.layer for pl in so.layers]
    for ma, mb in combinations([g["trained"] for g in groups.values() if g["trained"]], 2):
        corr_names = shared_blocks(ma, mb)
        if not corr_names:
            continue
        pos_b = {names[i]: int(i) for i in by_model[mb]}
        corr = {int(i): pos_b[corr_names[names[i]]] for i in by_model[ma]
                if names[i] in corr_names and corr_names[names[i]] in pos_b}
        for method in ("seg", "cls"):
            if PRIMARY[method] in select:
                res = block_recovery(select[PRIMARY[method]], by_model[ma], by_model[mb], rep[method], corr)
                # both directions are counted: a layer of B is labelled with its block in A
                partner = {**corr, **{b: a for a, b in corr.items()}}
                res["per_layer"] = {f"{names[k]} ~ {names[partner[k]]}": v for k, v in res["per_layer"].items()}
                control.append({"model_a": ma, "model_b": mb, "method": PRIMARY[method], "selected_on": selected_on,
                                "corresponding": {names[a]: names[b] for a, b in corr.items()}, **res})
    doc = {
        "schema": FINDINGS_SCHEMA, "dataset": so.stores[0].dataset, "models": so.models, "concepts": so.concepts,
        "categories": so.categories, "n_test": so.n_test, "n_val": int(n_val), "seed": int(seed),
        "permutations": int(permutations), "bootstrap": int(bootstrap), "selected_on": selected_on,
        "primary": dict(PRIMARY), "pairs": pairs, "positive_control": control,
        "emergence": _emergence(so, qual, rep, by_model),
        "notes": NOTES,
    }
    doc["family_size"] = annotate_holm(doc)
    for p in pairs:
        for f in p["finding1"].values():
            if f["status"] == "tested":
                t = f["test"]
                f["holds"] = bool(t["ci_low"] is not None and t["ci_low"] > 0 and t["p_holm"] is not None and t["p_holm"] < 0.05)
        for f in p["finding2"].values():
            if f["status"] == "tested":
                t, o, d = f["test"], f["diff_oracle"], f["diff_twin"]
                ok = t["p_holm"] is not None and t["p_holm"] < 0.05
                ok &= o is None or (o["ci_high"] is not None and o["ci_high"] < 0)
                ok &= d is None or (d["ci_high"] is not None and d["ci_high"] < 0)
                f["holds"] = bool(ok)
    return doc


NOTES = {
    "agreement": "seg_kappa: (O - E) / (min(|B_A|, |B_B|) - E) over test pixels, E = TP_A TP_B / |M| + FP_A FP_B / "
    "|not M| (independent errors given the truth); cls_partial: pooled within-class correlation of the logits",
    "selection": "layer pairs, depth matches and emergence depths are chosen on val outputs and reported on test",
    "finding1": "concepts that each trained model represents better than its twin(s) in some layer (95 % intervals "
    "apart); agreement beyond accuracy of the val-selected best layer pair, trained minus twin pair (mean over "
    "seeds), mean over concepts; hierarchical bootstrap over concepts and test images; one-sided p; holds when the "
    "interval is above zero and p_holm < 0.05",
    "finding2": "one test per model pair: matches in both directions pooled, alignment error = mean over concepts of "
    "|depth(source) - depth(match)|; null 1: depths permuted within each model; null 2: the resolution-only "
    "oracle (pooled ground truth per layer grid); holds when p_holm < 0.05 and the errors are below the oracle's "
    "and the twins' (95 % intervals over concepts below zero)",
    "holm": "p_holm: Holm's correction over every entry with family = true in this document (one dataset)",
    "positive_control": "share of matches whose matched layer is the corresponding shared backbone block",
}
