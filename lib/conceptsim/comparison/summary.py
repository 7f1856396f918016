"""A study's findings in numbers, for release notes and the issue tracker: ``python -m conceptsim.comparison.summary STUDY``.

Read from the result files only (``findings.json``, each model's ``concept_quality.csv`` and the activation
stores' masks); prints markdown:

- per dataset and model pair: every primary test's effect, interval, Holm p, verdict and minimum detectable
  effect, the concepts finding 1 kept and the twin-seed spread, and how many selected pairs are both
  models' first layers;
- the positive control's hit rate and permutation p;
- the pixels floor per concept category (best pixels layer's test quality, mean over the category);
- per trained model, on datasets with object concepts: at the model's best val layer, the trained − twins
  margin of mean classification AP and the mean object-concept set IoU of the trained model, its twins
  (same layer) and the every-object mask, on test.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from conceptsim.comparison.report import COMPONENT_NAMES, load_findings, records, table
from conceptsim.data.coco import is_object_category
from conceptsim.extraction.store import ActivationStore
from conceptsim.models.names import PIXELS_MODEL, split_twin_name
from conceptsim.paths import activation_store, comparison_files, concept_quality_csv, dataset_results, model_dir_name


def _f(x, d=3):
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{d}f}"


def tests_table(doc: dict) -> str:
    rows = []
    for p, m, f1, f2 in records(doc):
        pair = f"{p['model_a']} vs {p['model_b']}"
        if f1 is not None:
            t = f1.test
            fl = f1.first_layer or {}
            rows.append([pair, m, "finding 1", _f(t.effect), f"[{_f(t.ci_low)}, {_f(t.ci_high)}]", _f(t.p_holm, 4), t.verdict,
                         _f(t.mde), str(f1.n_learned), _f(f1.twin_spread),
                         f"{fl.get('trained', '–')}/{fl.get('entries', '–')}; twins' own {fl.get('twins_own_selection', '–')}/"
                         f"{fl.get('twins_own_entries', '–')}"])
        if f2 is not None:
            for c in COMPONENT_NAMES:
                t = getattr(f2, c)
                rows.append([pair, m, f"finding 2: {COMPONENT_NAMES[c]}", _f(t.effect), f"[{_f(t.ci_low)}, {_f(t.ci_high)}]",
                             _f(t.p_holm, 4), t.verdict, _f(t.mde), str(t.n), "", ""])
    return table(["pair", "method", "test", "effect", "95 % CI", "p Holm", "verdict", "MDE", "concepts", "twin spread",
                  "first-layer pairs"], rows)


def control_table(doc: dict) -> str:
    rows = [[f"{c['model_a']} vs {c['model_b']}", c["method"], _f(c["rate"]), _f(c["chance"]), _f(c["p_value"], 4),
             str(c["passed"]), str(c["n_blocks"])] for c in doc.get("positive_control", [])]
    return table(["pair", "method", "hit rate", "chance", "p", "passed", "blocks"], rows) if rows else "no positive control"


def read_quality(study: str, dataset: str, model: str) -> pd.DataFrame | None:
    path = concept_quality_csv(dataset_results(study, dataset) / model_dir_name(model))
    return pd.read_csv(path, keep_default_na=False, na_values=[""]).astype({"layer": str}) if path.exists() else None


def pixels_floor(study: str, dataset: str) -> str:
    q = read_quality(study, dataset, PIXELS_MODEL)
    if q is None:
        return "no pixels model"
    rows = []
    for method, metric in (("seg", "set_iou"), ("cls", "ap")):
        sub = q[(q["method"] == method) & (q["metric"] == metric)]
        best = sub.groupby("concept")["value"].max()
        cats = sub.groupby("concept")["category"].first()
        for cat, v in best.groupby(cats).mean().items():
            rows.append([method, metric, cat, _f(v)])
    return table(["method", "metric", "category", "pixels floor (best layer, mean over concepts)"], rows)


def every_object_iou(study: str, dataset: str, model: str, concepts: list[str]) -> float | None:
    """Mean over ``concepts`` of the test set IoU of the every-object mask against the concept's mask."""
    store = ActivationStore(activation_store(dataset_results(study, dataset) / model_dir_name(model)))
    if not store.has_objects:
        return None
    rows = store.split_index("test")
    objects = np.asarray(store.object_masks.get_orthogonal_selection((rows,))).astype(bool)
    masks = np.asarray(store.masks.get_orthogonal_selection((rows,))).astype(bool)
    vals = []
    for c in concepts:
        m = masks[:, store.concept_names.index(c)]
        union = (m | objects).sum()
        vals.append((m & objects).sum() / union if union else np.nan)
    return float(np.nanmean(vals)) if vals else None


def best_val_layer(quality: pd.DataFrame, method: str, metric: str, concepts: list[str]) -> str:
    """The layer of ``quality`` (a model's ``concept_quality.csv``) with the highest mean val ``metric`` of
    ``method`` over ``concepts``."""
    sub = quality[(quality["method"] == method) & (quality["metric"] == metric) & quality["concept"].isin(concepts)]
    return str(sub.groupby("layer")["val_value"].mean().idxmax())


def object_concepts(quality: pd.DataFrame) -> list[str]:
    """The object concepts (COCO categories and their groups) of a ``concept_quality.csv``, sorted."""
    return sorted({c for c, cat in zip(quality["concept"], quality["category"]) if is_object_category(str(cat))})


def object_margins(study: str, dataset: str, models: list[str]) -> str:
    trained = [m for m in models if not split_twin_name(m)[1] and m != PIXELS_MODEL]
    rows = []
    for m in trained:
        q = read_quality(study, dataset, m)
        if q is None:
            continue
        twins = [t for t in models if split_twin_name(t)[0] == m and split_twin_name(t)[1]]
        tq = [x for x in (read_quality(study, dataset, t) for t in twins) if x is not None]
        obj = object_concepts(q)
        if not obj:
            continue
        out = [m]
        for method, metric in (("cls", "ap"), ("seg", "set_iou")):
            sub = q[(q["method"] == method) & (q["metric"] == metric) & q["concept"].isin(obj)]
            best = best_val_layer(q, method, metric, obj)
            test_t = sub[sub["layer"] == best]["value"].mean()
            test_w = np.mean([x[(x["method"] == method) & (x["metric"] == metric) & x["concept"].isin(obj) &
                                (x["layer"] == best)]["value"].mean() for x in tq]) if tq else np.nan
            out += [best, _f(test_t), _f(test_w), _f(test_t - test_w)]
        out.append(_f(every_object_iou(study, dataset, m, obj)))
        rows.append(out)
    if not rows:
        return "no object concepts"
    return table(["model", "cls best val layer", "AP trained", "AP twins", "AP margin", "seg best val layer", "IoU trained",
                  "IoU twins", "IoU margin", "IoU every-object mask"], rows)


def study_summary(study: str, datasets: list[str]) -> str:
    parts = [f"# Study `{study}`"]
    for ds in datasets:
        fj = comparison_files(dataset_results(study, ds))["findings"]
        if not fj.exists():
            parts.append(f"## {ds}\n\nno findings.json")
            continue
        doc = load_findings(fj)
        parts += [f"## {ds} ({doc['n_test']} test images, {doc['n_val']} val)", tests_table(doc),
                  "Positive control:", control_table(doc), "Pixels floor:", pixels_floor(study, ds),
                  "Object concepts (test, at each trained model's best val layer):", object_margins(study, ds, doc["models"])]
    return "\n\n".join(parts) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study")
    ap.add_argument("--datasets", nargs="*", default=None)
    args = ap.parse_args(argv)
    root = dataset_results(args.study, "x").parent
    datasets = args.datasets or sorted(p.name for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("_"))
    print(study_summary(args.study, datasets))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
