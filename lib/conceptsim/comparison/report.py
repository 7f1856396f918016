"""Markdown for the book's Findings page, generated from ``findings.json`` (numbers are never typed by hand).

Every function takes the parsed document (or a path) and returns markdown text; the page build glues the
pieces in per dataset.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METHOD_NAMES = {"seg": "segmentation (S_seg, set IoU)", "cls": "classification (S_cls, Pearson)"}


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


def finding1_table(doc: dict | str | Path, method: str = "seg", kind: str = "trained") -> str:
    """Finding 1 per model pair: best-match similarity (trained, twins, control) with intervals."""
    doc = load_findings(doc)
    rows = []
    for p in doc["pairs"]:
        f = p["finding1"].get(method)
        if p["kind"] != kind or f is None:
            continue
        rows.append([
            f"{p['model_a']} vs {p['model_b']}", fmt_ci(f["trained"]), fmt_ci(f["random_twin"]), fmt_ci(f["control"]),
            fmt_ci(f["diff_control"]), fmt_ci(f["diff_random_twin"]), str(f["trained"]["n"]), fmt(f["holds"]),
        ])
    if not rows:
        return f"_No {kind} model pairs with {METHOD_NAMES.get(method, method)} outputs._"
    return table(
        ["model pair", "trained", "random-init twins", "shuffled control", "trained − control",
         "trained − twins", "concepts", "holds"],
        rows,
    )


def finding1_concepts_table(doc: dict | str | Path, model_a: str, model_b: str, method: str = "seg") -> str:
    """Finding 1 for one model pair, concept by concept, with the best-matching layers."""
    doc = load_findings(doc)
    pair = next((p for p in doc["pairs"] if p["model_a"] == model_a and p["model_b"] == model_b), None)
    if pair is None or method not in pair["finding1"]:
        return f"_No results for {model_a} vs {model_b}._"
    cat = doc.get("categories", {})
    rows = [
        [r["concept"], cat.get(r["concept"], ""), fmt(r["value"]), r.get("layer_a") or "–", r.get("layer_b") or "–",
         fmt(r["random_twin"]), fmt(r["control"])]
        for r in pair["finding1"][method]["per_concept"]
    ]
    return table(["concept", "category", "best match", "layer (A)", "layer (B)", "twins", "control"], rows)


def finding2_table(doc: dict | str | Path, method: str = "seg", kind: str = "trained") -> str:
    """Finding 2 per model pair and direction: alignment error, null mean, p-value, counts."""
    doc = load_findings(doc)
    perms = int(doc.get("permutations", 10000))
    rows = []
    for p in doc["pairs"]:
        f = p["finding2"].get(method)
        if p["kind"] != kind or f is None:
            continue
        for direction, (a, b) in (("a_to_b", (p["model_a"], p["model_b"])), ("b_to_a", (p["model_b"], p["model_a"]))):
            r = f[direction]
            rows.append([f"{a} → {b}", fmt(r["error"]), fmt(r["null_mean"]), fmt_p(r["p_value"], perms),
                         str(r["n_matches"]), str(r["n_concepts"])])
    if not rows:
        return f"_No {kind} model pairs with {METHOD_NAMES.get(method, method)} outputs._"
    return table(["layers of → matched in", "alignment error", "null mean", "p-value", "matched layers", "concepts"], rows)


def emergence_table(doc: dict | str | Path, method: str = "seg") -> str:
    """Emergence depth of every concept (rows) in every model (columns)."""
    doc = load_findings(doc)
    models = doc["models"]
    depth = {(e["model"], e["concept"]): e["depth"] for e in doc["emergence"] if e["method"] == method}
    cat = doc.get("categories", {})
    rows = [[c, cat.get(c, "")] + [fmt(depth.get((m, c)), 2) for m in models] for c in doc["concepts"]]
    return table(["concept", "category"] + models, rows)


def summary_sentences(doc: dict | str | Path, method: str = "seg") -> str:
    """One paragraph stating how often each finding held, with the decisive numbers."""
    doc = load_findings(doc)
    trained = [p for p in doc["pairs"] if p["kind"] == "trained" and method in p["finding1"]]
    if not trained:
        return f"No pairs of different trained models were compared with {METHOD_NAMES.get(method, method)} outputs."
    held = sum(p["finding1"][method]["holds"] for p in trained)
    perms = int(doc.get("permutations", 10000))
    sig = [
        p for p in trained
        for d in ("a_to_b", "b_to_a")
        if (p["finding2"][method][d]["p_value"] is not None and p["finding2"][method][d]["p_value"] < 0.05)
    ]
    n_dir = sum(1 for p in trained for d in ("a_to_b", "b_to_a") if p["finding2"][method][d]["p_value"] is not None)
    return (
        f"On {doc['dataset']} ({doc['n_test']} test images, {METHOD_NAMES.get(method, method)}), finding 1 holds for "
        f"{held} of {len(trained)} pairs of different trained models (trained best-match similarity above both the "
        f"random-init twins and the shuffled control, 95 % bootstrap intervals of the differences above zero). "
        f"Finding 2: the relative-depth alignment error is below its permutation null at p < 0.05 in {len(sig)} of "
        f"{n_dir} directed comparisons ({perms:,} permutations each)."
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
            "**Finding 1 — best-match similarity per model pair** (mean over concepts, 95 % bootstrap interval)",
            finding1_table(doc, m), "Random-init twin pairs:", finding1_table(doc, m, kind="random"),
            "**Finding 2 — relative-depth alignment of best-matching layers**", finding2_table(doc, m),
            "**Emergence depth** (relative depth where test quality first reaches 90 % of its maximum)",
            emergence_table(doc, m),
        ]
    return "\n\n".join(parts) + "\n"
