"""Markdown for the book's Findings page, generated from ``findings.json`` (numbers are never typed by hand).

Every function takes the parsed document (or a path) and returns markdown text; the page build glues the
pieces in per dataset.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METHOD_NAMES = {"seg": "segmentation (agreement beyond accuracy: seg_kappa; raw S_seg beside it)",
                "cls": "classification (agreement beyond accuracy: cls_partial; raw S_cls beside it)"}
VERDICT = {True: "holds", False: "does not hold", None: "not testable here"}


def load_findings(path_or_doc: str | Path | dict) -> dict:
    """The findings document from a path or an already parsed dict."""
    if isinstance(path_or_doc, dict):
        return path_or_doc
    return json.loads(Path(path_or_doc).read_text())


def fmt(x: Any, digits: int = 3) -> str:
    """A number for a table: fixed digits, an en dash for undefined values."""
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}f}"


def fmt_ci(stat: dict, digits: int = 3) -> str:
    """``mean [low, high]`` of a bootstrap summary."""
    if not stat or stat.get("mean") is None:
        return "–"
    return f"{fmt(stat['mean'], digits)} [{fmt(stat['ci_low'], digits)}, {fmt(stat['ci_high'], digits)}]"


def fmt_p(p: float | None, permutations: int) -> str:
    """A permutation p-value, shown as a bound when no permutation reached the observed value."""
    if p is None:
        return "–"
    floor = 1.0 / (1 + permutations)
    return f"≤ {floor:.1g}" if p <= floor * (1 + 1e-9) else f"{p:.3g}"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def verdict(f: dict | None) -> str:
    """``holds`` / ``does not hold`` / ``not testable here`` of a finding entry."""
    if not f or f.get("status") != "tested":
        return VERDICT[None]
    return VERDICT[bool(f.get("holds"))]


def fmt_test(stat: dict | None, permutations: int | None = None) -> tuple[str, str, str]:
    """``(estimate [interval], p, p_holm)`` cells of a test summary."""
    if not stat:
        return "–", "–", "–"
    if permutations is not None:
        return fmt(stat.get("error")), fmt_p(stat.get("p_value"), permutations), fmt_p(stat.get("p_holm"), permutations)
    p, ph = stat.get("p_value"), stat.get("p_holm")
    return fmt_ci(stat), "–" if p is None else f"{p:.3g}", "–" if ph is None else f"{ph:.3g}"


def finding1_table(doc: dict | str | Path, method: str = "seg") -> str:
    """Finding 1 per model pair: trained vs twin agreement beyond accuracy of the val-selected best pair."""
    doc = load_findings(doc)
    rows = []
    for p in doc["pairs"]:
        f = p["finding1"].get(method)
        if f is None:
            continue
        est, pv, ph = fmt_test(f.get("test"))
        raw = f.get("raw") or {}
        rows.append([
            f"{p['model_a']} vs {p['model_b']}", str(f.get("n_learned", 0)), fmt((f.get("trained") or {}).get("mean")),
            fmt((f.get("twin") or {}).get("mean")), est, pv, ph,
            f"{fmt(raw.get('trained'))} / {fmt(raw.get('twin'))}", verdict(f),
        ])
    if not rows:
        return f"_No pairs of trained models with {METHOD_NAMES.get(method, method)} outputs._"
    return table(["model pair", "learned concepts", "trained", "twins", "trained − twins [95 % CI]", "p",
                  "p (Holm)", "raw S trained / twins", "verdict"], rows)


def finding1_category_table(doc: dict | str | Path, method: str = "seg") -> str:
    """Finding 1 per concept category (uncorrected p: the categories are a breakdown, not extra tests)."""
    doc = load_findings(doc)
    rows = []
    for p in doc["pairs"]:
        f = p["finding1"].get(method)
        for cat, stat in ((f or {}).get("per_category") or {}).items():
            est, pv, _ = fmt_test(stat)
            rows.append([f"{p['model_a']} vs {p['model_b']}", cat or "–", str(stat.get("n", 0)), est, pv])
    if not rows:
        return "_No concept passes the learned-concept filter._"
    return table(["model pair", "category", "concepts", "trained − twins [95 % CI]", "p (uncorrected)"], rows)


def finding1_concepts_table(doc: dict | str | Path, model_a: str, model_b: str, method: str = "seg") -> str:
    """Finding 1 for one model pair, concept by concept, with the val-selected layers."""
    doc = load_findings(doc)
    pair = next((p for p in doc["pairs"] if p["model_a"] == model_a and p["model_b"] == model_b), None)
    if pair is None or method not in pair["finding1"]:
        return f"_No results for {model_a} vs {model_b}._"
    rows = [
        [r["concept"], r.get("category", ""), r.get("layer_a") or "–", r.get("layer_b") or "–", fmt(r["value"]),
         fmt(r["twin"]), fmt(r["diff"]), fmt(r.get("raw")), fmt(r.get("raw_twin"))]
        for r in pair["finding1"][method]["per_concept"]
    ]
    if not rows:
        return f"_{pair['finding1'][method].get('reason', 'No concepts.')}_"
    return table(["concept", "category", "layer (A)", "layer (B)", "agreement", "twins", "difference", "raw S",
                  "raw S twins"], rows)


def finding2_table(doc: dict | str | Path, method: str = "seg") -> str:
    """Finding 2 per model pair (one combined test): error, permutation null, oracle and twins, predictors."""
    doc = load_findings(doc)
    perms = int(doc.get("permutations", 10000))
    rows = []
    for p in doc["pairs"]:
        f = p["finding2"].get(method)
        if f is None:
            continue
        t = f.get("test") or {}
        err, pv, ph = fmt_test(t, perms)
        oracle = f.get("oracle") or {}
        do, _, do_h = fmt_test(f.get("diff_oracle"))
        tw = f.get("twins") or {}
        dt, _, dt_h = fmt_test(f.get("diff_twin"))
        pred = (f.get("predictors") or {}).get("spearman") or {}
        rows.append([
            f"{p['model_a']} vs {p['model_b']}", err, fmt(t.get("null_mean")), pv, ph,
            fmt(oracle.get("error")), f"{do} (p Holm {do_h})", fmt(tw.get("error")), f"{dt} (p Holm {dt_h})",
            " / ".join(fmt(pred.get(k), 2) for k in ("relative_depth", "absolute_depth", "stride")),
            fmt(f.get("match_stability"), 2), f"{t.get('n_matches', 0)} / {t.get('n_concepts', 0)}", verdict(f),
        ])
    if not rows:
        return f"_No pairs of trained models with {METHOD_NAMES.get(method, method)} outputs._"
    return table(["model pair", "alignment error", "null mean", "p", "p (Holm)", "oracle error",
                  "trained − oracle [95 % CI]", "twins error", "trained − twins [95 % CI]",
                  "Spearman rel. depth / abs. depth / stride", "val–test match agreement", "matches / concepts",
                  "verdict"], rows)


def positive_control_table(doc: dict | str | Path) -> str:
    """How often the matched layer is the corresponding shared backbone block."""
    doc = load_findings(doc)
    rows = [[f"{c['model_a']} vs {c['model_b']}", c["method"], fmt(c.get("rate"), 2), fmt(c.get("chance"), 2),
             f"{c.get('hits', 0)} / {c.get('n', 0)}"] for c in doc.get("positive_control", [])]
    if not rows:
        return "_No two models of the study share backbone blocks._"
    return table(["model pair", "method", "recovered", "chance", "hits / matches"], rows)


def emergence_table(doc: dict | str | Path, method: str = "seg") -> str:
    """Emergence depth of every concept (rows) in every model (columns)."""
    doc = load_findings(doc)
    models = doc["models"]
    depth = {(e["model"], e["concept"]): e["depth"] for e in doc["emergence"] if e["method"] == method}
    cat = doc.get("categories", {})
    rows = [[c, cat.get(c, "")] + [fmt(depth.get((m, c)), 2) for m in models] for c in doc["concepts"]]
    return table(["concept", "category"] + models, rows)


def summary_sentences(doc: dict | str | Path, method: str = "seg") -> str:
    """The hypotheses, what was measured, and how often each finding held (corrected p-values)."""
    doc = load_findings(doc)
    pairs = [p for p in doc["pairs"] if method in p["finding1"]]
    if not pairs:
        return f"No pairs of different trained models were compared with {METHOD_NAMES.get(method, method)} outputs."
    v1 = [verdict(p["finding1"][method]) for p in pairs]
    v2 = [verdict(p["finding2"][method]) for p in pairs]
    prim = doc.get("primary", {}).get(method, method)

    def count(vs):
        return ", ".join(f"{vs.count(v)} {v}" for v in ("holds", "does not hold", "not testable here") if vs.count(v))

    return (
        f"On {doc['dataset']} ({doc['n_test']} test images; layers selected on {doc.get('selected_on', 'val')}, "
        f"{doc.get('n_val', 0)} images), **finding 1** is tested as: *for concepts each trained model represents "
        f"better than its random-init twin, the val-selected best layer pair of two trained models agrees beyond "
        f"accuracy ({prim}) more than the twins' best pair*; effect = mean over concepts of trained − twins, "
        f"95 % hierarchical bootstrap interval (concepts and test images), one-sided p. Result over "
        f"{len(pairs)} model pair(s): {count(v1)}. **Finding 2** is tested as: *matched layers of two trained "
        f"models lie at similar relative depth, more than a depth permutation, the resolution-only oracle and "
        f"the twins allow*; one combined test per pair: {count(v2)}. Every p-value is Holm-corrected over the "
        f"{doc.get('family_size', 0)} tests of this dataset (p (Holm))."
    )


def findings_markdown(doc: dict | str | Path, methods: tuple[str, ...] = ("seg", "cls")) -> str:
    """The whole generated section for one dataset: summary and tables for every method."""
    doc = load_findings(doc)
    parts = [f"### {doc['dataset']}"]
    for m in methods:
        if not any(m in p["finding1"] for p in doc["pairs"]):
            continue
        parts += [
            f"#### {METHOD_NAMES.get(m, m)[:1].upper()}{METHOD_NAMES.get(m, m)[1:]}", summary_sentences(doc, m),
            "**Finding 1 — agreement beyond accuracy of the val-selected best layer pair, trained vs twins**",
            finding1_table(doc, m), "Per concept category:", finding1_category_table(doc, m),
            "**Finding 2 — one relative-depth alignment test per model pair, against a depth permutation, the "
            "resolution-only oracle and the twins**", finding2_table(doc, m),
            "**Emergence depth** (relative depth where val quality first reaches 90 % of its maximum)",
            emergence_table(doc, m),
        ]
    parts += ["**Positive control — shared backbone blocks matched block to block**", positive_control_table(doc)]
    return "\n\n".join(parts) + "\n"
