"""Markdown tables of a findings document (``findings.json``; numbers are never typed by hand), shown by
notebook 04 and glued into the book's Findings page by :mod:`conceptsim.book.findings`.

Every function takes the parsed document (or a path) and reads the typed records of
:mod:`~conceptsim.comparison.finding1`, :mod:`~conceptsim.comparison.finding2` and
:mod:`~conceptsim.comparison.verdicts`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    pass

from conceptsim.comparison.finding1 import Finding1
from conceptsim.comparison.finding2 import COMPONENTS, Finding2, PositiveControl, applies
from conceptsim.comparison.verdicts import VERDICTS, FindingTest  # noqa: F401 (FindingTest: for readers of records)

METHOD_NAMES = {"seg": "segmentation (agreement beyond accuracy: seg_kappa; raw S_seg beside it)",
                "cls": "classification (agreement beyond accuracy: cls_partial; raw S_cls beside it)"}
SHORT_METHOD = {"seg": "seg", "cls": "cls"}
COMPONENT_NAMES = {"aligned": "aligned by depth", "beyond_resolution": "beyond resolution",
                   "from_training": "from training"}


def load_findings(path_or_doc: str | Path | dict) -> dict:
    """The findings document from a path or an already parsed dict (schema 3)."""
    doc = path_or_doc if isinstance(path_or_doc, dict) else json.loads(Path(path_or_doc).read_text())
    if doc.get("schema") != 3:
        raise ValueError(f"findings document of schema {doc.get('schema')!r}; this version reads schema 3 "
                         "(rerun the comparison stage)")
    return doc


def fmt(x: Any, digits: int = 3) -> str:
    """A number for a table: fixed digits, an en dash for undefined values."""
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}f}"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "–"
    return f"{p:.2g}" if p >= 1e-4 else "< 0.0001"


def fmt_test(t: FindingTest | None, digits: int = 2) -> str:
    """``effect [low, high]`` of a test, or its verdict when it has no interval."""
    if t is None or t.ci_low is None:
        return "–"
    return f"{t.effect:+.{digits}f} [{t.ci_low:+.{digits}f}, {t.ci_high:+.{digits}f}]"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def verdict_cell(t: FindingTest | None) -> str:
    """The verdict in bold, with the MDE when inconclusive and the reason when not testable."""
    if t is None:
        return "–"
    if t.verdict == "inconclusive" and t.mde is not None:
        return f"**inconclusive** (MDE {t.mde:.2f}, p Holm {fmt_p(t.p_holm)})"
    if t.verdict == "not testable here":
        return f"**not testable here**{f' ({t.reason})' if t.reason else ''}"
    return f"**{t.verdict}**"


def pair_name(p: dict) -> str:
    return f"{p['model_a']} vs {p['model_b']}"


def records(doc: dict) -> Iterable[tuple[dict, str, Finding1 | None, Finding2 | None]]:
    """``(pair entry, method, Finding1, Finding2)`` of every model pair and method of a document."""
    for p in doc["pairs"]:
        for m in ("seg", "cls"):
            f1 = p["finding1"].get(m)
            f2 = p["finding2"].get(m)
            if f1 is None and f2 is None:
                continue
            yield p, m, Finding1.from_json(f1) if f1 else None, Finding2.from_json(f2) if f2 else None


def finding1_table(doc: dict | str | Path, method: str = "seg") -> str:
    """Finding 1 per model pair: verdict first, effect with interval, MDE, Holm p, concepts, twin spread."""
    doc = load_findings(doc)
    rows = []
    for p, m, f1, _ in records(doc):
        if m != method or f1 is None:
            continue
        t = f1.test
        rows.append([pair_name(p), verdict_cell(t), fmt_test(t), fmt_p(t.p_holm), f"{f1.n_learned}",
                     f"{fmt(f1.trained_mean, 2)} / {fmt(f1.twin_mean, 2)}", fmt(f1.twin_spread, 3)])
    if not rows:
        return f"_No pairs of trained models with {METHOD_NAMES.get(method, method)} outputs._"
    return table(["model pair", "verdict", "trained − twins [95 % CI]", "p (Holm)", "concepts", "trained / twins",
                  "twin-seed spread"], rows)


def finding1_category_table(doc: dict | str | Path, method: str = "seg") -> str:
    """Finding 1 per concept category (diagnostic: uncorrected p, no verdict)."""
    doc = load_findings(doc)
    rows = []
    for p, m, f1, _ in records(doc):
        if m != method or f1 is None:
            continue
        if not f1.per_category:  # no breakdown below 3 concepts: say how many passed rather than none
            rows.append([pair_name(p), "(no breakdown)", str(f1.n_learned), "fewer than 3 concepts" if f1.n_learned else
                         "no concept passes the learned-concept filter", "–"])
        for cat, t in f1.per_category.items():
            rows.append([pair_name(p), cat or "–", str(t.n), fmt_test(t) if t.ci_low is not None else "fewer than 3 concepts",
                         fmt_p(t.p_value)])
    if not rows:
        return f"_No pairs of trained models with {METHOD_NAMES.get(method, method)} outputs._"
    return table(["model pair", "category", "concepts", "trained − twins [95 % CI]", "p (one-sided, uncorrected, diagnostic)"], rows)


def finding1_concepts_table(doc: dict | str | Path, model_a: str, model_b: str, method: str = "seg") -> str:
    """Finding 1 for one model pair, concept by concept, with the val-selected layers."""
    doc = load_findings(doc)
    for p, m, f1, _ in records(doc):
        if (p["model_a"], p["model_b"], m) == (model_a, model_b, method) and f1 is not None:
            if not f1.per_concept:
                return f1.test.reason or "No concepts."
            rows = [[r["concept"], r.get("category", ""), r.get("layer_a") or "–", r.get("layer_b") or "–",
                     fmt(r["value"], 2), fmt(r["twin"], 2), fmt(r["diff"], 2), fmt(r.get("raw"), 2)]
                    for r in f1.per_concept]
            return table(["concept", "category", "layer (A)", "layer (B)", "trained", "twins (same layers)",
                          "difference", "raw S"], rows)
    return f"No results for {model_a} vs {model_b}."


def finding2_table(doc: dict | str | Path, method: str = "seg") -> str:
    """Finding 2 per model pair: three tests, verdicts first, then the errors behind them."""
    doc = load_findings(doc)
    rows = []
    for p, m, _, f2 in records(doc):
        if m != method or f2 is None:
            continue
        for c in COMPONENTS:
            t = getattr(f2, c)
            error, comparison = f2.error, {"aligned": f2.null_mean, "beyond_resolution": f2.oracle_error,
                                           "from_training": f2.twin_error}[c]
            if "comparison_error" in t.details:  # over the concepts the test compares (those both sides matched)
                error, comparison = t.details.get("error"), t.details.get("comparison_error")
            rows.append([pair_name(p), COMPONENT_NAMES[c], verdict_cell(t), fmt_test(t), fmt_p(t.p_holm), str(t.n),
                         f"{fmt(error, 2)} / {fmt(comparison, 2)}"])
    if not rows:
        return f"_No pairs of trained models with {METHOD_NAMES.get(method, method)} outputs._"
    return table(["model pair", "test", "verdict", "advantage [95 % CI]", "p (Holm)", "concepts",
                  "error trained / comparison (same concepts)"], rows)


def finding2_details_table(doc: dict | str | Path, method: str = "seg") -> str:
    """Predictors of the matched layer, val–test match agreement and the twins' own test (diagnostics)."""
    doc = load_findings(doc)
    rows = []
    for p, m, _, f2 in records(doc):
        if m != method or f2 is None:
            continue
        pred = (f2.predictors or {}).get("spearman") or {}
        tw = f2.diagnostics.get("twins_permutation") or {}
        rows.append([pair_name(p), " / ".join(fmt(pred.get(k), 2) for k in ("relative_depth", "absolute_depth", "stride")),
                     fmt(f2.match_stability, 2), f"{f2.n_matches} / {f2.n_concepts}", fmt_p(tw.get("p_value"))])
    if not rows:
        return "No matches."
    return table(["model pair", "Spearman rel. depth / abs. depth / stride", "val–test match agreement",
                  "matches / concepts", "twins' own permutation p (diagnostic)"], rows)


def positive_control_table(doc: dict | str | Path) -> str:
    """How often the matched layer is the corresponding shared backbone block, with its permutation p."""
    doc = load_findings(doc)
    rows = []
    for c in doc.get("positive_control", []):
        r = PositiveControl.from_json(c)
        status = "**passed**" if r.passed else ("**failed**" if r.passed is False else f"**cannot decide** ({r.reason})")
        rows.append([f"{r.model_a} vs {r.model_b}", r.method, status, fmt(r.rate, 2), fmt(r.chance, 2), fmt_p(r.p_value),
                     f"{r.hits} / {r.n}", str(r.n_blocks)])
    if not rows:
        return "No two models of the study share backbone blocks, so there is no positive control here."
    return table(["model pair", "method", "control", "recovered", "chance", "p (permutation)", "hits / matches",
                  "blocks"], rows)


def emergence_table(doc: dict | str | Path, method: str = "seg") -> str:
    """Emergence depth of every concept (rows) in every trained model (columns; twins in the figure)."""
    doc = load_findings(doc)
    models = [m for m in doc["models"] if ":random" not in m]
    depth = {(e["model"], e["concept"]): e["depth"] for e in doc["emergence"] if e["method"] == method}
    cat = doc.get("categories", {})
    rows = [[c, cat.get(c, "")] + [fmt(depth.get((m, c)), 2) for m in models] for c in doc["concepts"]]
    return table(["concept", "category"] + models, rows)


def tests_of(doc: dict) -> list[tuple[str, str, str, FindingTest]]:
    """``(finding, method, pair, test)`` of every primary test of a document."""
    out = []
    for p, m, f1, f2 in records(doc):
        if f1 is not None:
            out.append(("finding 1", m, pair_name(p), f1.test))
        if f2 is not None:
            out += [(f"finding 2: {COMPONENT_NAMES[c]}", m, pair_name(p), getattr(f2, c)) for c in COMPONENTS]
    return out


def count_text(tests: Iterable[FindingTest]) -> str:
    vs = [t.verdict for t in tests]
    return ", ".join(f"{vs.count(v)} {v}" for v in VERDICTS if vs.count(v)) or "no tests"


def summary_sentences(doc: dict | str | Path, method: str = "seg") -> str:
    """What was tested on this dataset and how the verdicts fell, in plain words."""
    doc = load_findings(doc)
    tests = [(f, t) for f, m, _, t in tests_of(doc) if m == method]
    if not tests:
        return f"No pairs of different trained models were compared with {METHOD_NAMES.get(method, method)} outputs."
    f1 = [t for f, t in tests if f == "finding 1"]
    f2 = [t for f, t in tests if f.startswith("finding 2") and applies(t)]
    per_pair = "three tests per pair" if method == "seg" else "two tests per pair: image-level outputs have no resolution"
    sizes = sorted({p.get("family_size", 0) for p in doc["pairs"]})
    return (
        f"On {doc['dataset']} ({doc['n_test']} test images; selection on {doc.get('selected_on', 'val')}, "
        f"{doc.get('n_val', 0)} images), with {method} outputs: **finding 1** (training makes two architectures "
        f"agree beyond accuracy at the same layers, more than their random-init twins): {count_text(f1)}; "
        f"**finding 2** (matched layers at similar relative depth; {per_pair}): {count_text(f2)}. "
        f"Each p (Holm) is corrected over the primary family of one model pair on this dataset "
        f"({', '.join(map(str, sizes))} tests: finding 1 and the finding-2 tests of both methods)."
    )


