"""The book's Findings page (``findings.md`` of a study): the study-wide opening that states what was found,
the verdicts at a glance, and per dataset the findings tables, their key figures and where the concept view
and CKA disagree. Every number comes from the datasets' ``findings.json``, ``similarity.csv`` and
``grounding.csv``; none is typed by hand.

The tables it glues together are those notebook 04 shows too (:mod:`conceptsim.comparison.report`); the
figures are :mod:`conceptsim.comparison.figures`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from conceptsim.tables import read_table
from conceptsim.atomic import save_figure, write_text
from conceptsim.comparison.finding2 import PositiveControl, applies
from conceptsim.comparison.report import (
    COMPONENT_NAMES,
    METHOD_NAMES,
    count_text,
    emergence_table,
    finding1_category_table,
    finding1_table,
    finding2_details_table,
    finding2_table,
    fmt,
    fmt_test,
    load_findings,
    positive_control_table,
    summary_sentences,
    table,
    tests_of,
    verdict_cell,
)
from conceptsim.models.names import PIXELS_MODEL, is_twin
from conceptsim.paths import comparison_files, dataset_results

if TYPE_CHECKING:
    import pandas as pd

    from conceptsim.run.study import Study


def models_left_out_of_finding1(study: "Study") -> str:
    """One sentence per model that finding 1 leaves out and why (a declared model without weights), else ''."""
    from conceptsim.models.user_models import model_listing

    out = [f"- `{m}` ({s['label']}): {s['exclusion_reason']}."
           for m, s in model_listing(study.models, getattr(study, "model_specs", None)).items() if not s["in_finding1"]]
    return ("**Models left out of finding 1**\n\n" + "\n".join(out) + "\n\n") if out else ""


def write_findings_page(study: "Study", path: Path) -> Path | None:
    """Per dataset: the findings from ``findings.json``, their key figures, and where the concept view and
    CKA disagree (None when no dataset has results)."""
    from conceptsim.book.grounding import read_grounding

    parts, docs = [], []
    for ds in study.datasets:
        fj = comparison_files(dataset_results(study.name, ds))["findings"]
        if fj.exists():
            docs.append(load_findings(fj))
            parts.append(f"## Dataset `{ds}`\n\n" + _dataset_findings(study, ds, fj, path.parent))
    if not parts:
        return None
    grounding = read_grounding(study)
    header = (
        f"# Measured findings: study `{study.name}`\n\n"
        "Generated from each dataset's `findings.json` and `similarity.csv` by the runner; nothing here is "
        "typed by hand.\n\n"
        + models_left_out_of_finding1(study)
        + study_opening(docs, study.name)
        + ("\n" + measure_grounding(grounding, shortcut_studies(study.name)) if grounding is not None else "")
        + "\n## Verdicts at a glance\n\n" + verdict_overview(docs)
        + "\n"
    )
    write_text(path, header + "\n".join(parts))
    return path


def _dataset_findings(study: "Study", dataset: str, findings_json: Path, page_dir: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from conceptsim.comparison import figures
    from conceptsim.comparison.similarity import concept_vs_cka

    doc = load_findings(findings_json)
    fig_dir = page_dir / dataset / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    shown = []
    for name, make in (("finding1_seg", lambda: figures.finding1_plot(doc, "seg")),
                       ("depth_profile_seg", lambda: figures.depth_profile_plot(doc, "seg")),
                       ("finding2_seg", lambda: figures.finding2_plot(doc, "seg")),
                       ("emergence_seg", lambda: figures.emergence_plot(doc, "seg"))):
        fig = make()
        save_figure(fig, fig_dir / f"{name}.png", dpi=100)
        shown.append(f"![{name.replace('_', ' ')}]({dataset}/figures/{name}.png)")
    sim = read_table(comparison_files(findings_json.parent)["similarity"])
    floor = {PIXELS_MODEL}  # neither trained nor a twin: left out of "trained models"
    trained = sim[~sim["model_a"].map(is_twin) & ~sim["model_b"].map(is_twin)
                  & ~sim["model_a"].isin(floor) & ~sim["model_b"].isin(floor)]
    agree = concept_vs_cka(trained, method="seg")
    rows = [[f"{r.model_a} vs {r.model_b}", str(r.n_pairs), fmt(r.spearman), fmt(r.mean_concept),
             fmt(r.mean_cka), r.largest_gap] for r in agree.itertuples()]
    cka_text = (
        "**Concept similarity against CKA** (trained models, without the pixels floor; rank correlation over layer "
        "pairs of S_seg averaged over the concepts represented in both layers, and linear CKA; the largest gap is CKA "
        "minus S_seg):\n\n"
        + table(["models", "layer pairs", "Spearman", "mean S_seg", "mean CKA", "largest gap"], rows)
        + "\n"
    )
    return (findings_markdown(doc) + "\n\n### Key figures\n\n" + "\n\n".join(shown) + "\n\n"
            + cka_text)


def study_opening(docs: list[dict], study: str) -> str:
    """The opening of the Findings page: what was tested, what was found, how sure it is (all datasets)."""
    docs = [load_findings(d) for d in docs]
    tests = [(doc["dataset"], *t) for doc in docs for t in tests_of(doc)]
    f1 = [t for _, f, _, _, t in tests if f == "finding 1"]
    f2_all = [t for _, f, _, _, t in tests if f.startswith("finding 2")]
    f2 = [t for t in f2_all if applies(t)]  # classification has no beyond-resolution test: not counted as one
    ctl = [PositiveControl.from_json(c) for doc in docs for c in doc.get("positive_control", [])]
    mdes = [t.mde for t in f1 if t.verdict == "inconclusive" and t.mde is not None]
    supported1 = [(ds, m, p, t) for ds, f, m, p, t in tests if f == "finding 1" and t.verdict == "supported"]
    lines = [
        f"**What was tested.** Study `{study}` asks the paper's two questions of {len(docs)} dataset(s): "
        "(1) do two *trained* architectures agree on the concepts they learned, beyond what their accuracy explains "
        "and more than random-init twins of the same architectures agree at the same layers; (2) do the layers that "
        "match lie at similar *relative* depth, more than chance, more than the layers' resolution explains, and "
        "more than in the twins.",
        "",
        f"**What it found.** Finding 1: {count_text(f1)} of {len(f1)} tests. Finding 2: {count_text(f2)} of "
        f"{len(f2)} tests" + (f" (not counted: {len(f2_all) - len(f2)} classification beyond-resolution test(s), "
                              "which do not apply: image-level outputs have no resolution)." if len(f2_all) > len(f2) else "."),
    ]
    by_ds = {}
    for ds, f, m, p, t in tests:
        if f == "finding 1":
            by_ds.setdefault(ds, []).append(t)
    parts = []
    for ds, ts in by_ds.items():
        sup = [t for t in ts if t.verdict == "supported"]
        if sup:
            parts.append(f"on {ds}, {len(sup)} of {len(ts)} (trained − twins {min(t.effect for t in sup):+.2f} to "
                         f"{max(t.effect for t in sup):+.2f})")
    if supported1:
        lines.append(" Finding 1 is supported " + "; ".join(parts) + "; the tables below give every test.")
    contradicted = contradicted_sentence(docs, tests)
    if contradicted:
        lines.append(" " + contradicted)
    if ctl:
        passed, failed = sum(1 for c in ctl if c.passed), sum(1 for c in ctl if c.passed is False)
        undecided = len(ctl) - passed - failed
        outcomes = [f"passed {passed} of {len(ctl)} times"] + [f"failed {failed}"] * bool(failed) \
            + [f"cannot decide in {undecided} (the table below says why)"] * bool(undecided)
        said = outcomes[0] if len(outcomes) == 1 else ", ".join(outcomes[:-1]) + " and " + outcomes[-1]
        lines.append(f" The positive control (shared backbone blocks matched block to block) {said}; where it fails, "
                     "a null result of finding 2 says little about the models.")
    lines += [
        "",
        "**How sure.** *Inconclusive* means the test could not decide at this study's sizes: its interval "
        "includes both no effect and an effect worth having, or (finding 2's *aligned* test, whose p-value "
        "permutes the depths of 8 probed layers per model) its interval is clear of zero but the permutation "
        "null cannot reach Holm's level; each table states the minimum detectable effect. " + (
            f"The smallest effects the inconclusive finding-1 tests could have detected with 80 % power range from "
            f"{min(mdes):.2f} to {max(mdes):.2f} kappa / correlation units. " if mdes else "") +
        "*Contradicted* needs the whole interval below the smallest effect of interest (+0.05 for agreement, 0 for "
        "alignment); a failed test is never read as a refutation. Terms are defined in the "
        "{ref}`glossary`.",
    ]
    return "\n".join(lines) + "\n"


def contradicted_sentence(docs: list[dict], tests: list[tuple]) -> str:
    """The contradicted tests by name, each with its effect and interval; a from-training test of two models
    that share backbone blocks (a positive-control pair) names the shared block layout of their twins as a possible,
    untested reason."""
    shared = {(c["model_a"], c["model_b"]) for doc in docs for c in doc.get("positive_control", [])}
    named = []
    for ds, finding, m, pair, t in tests:
        if t.verdict != "contradicted":
            continue
        text = f"{ds}, {pair}, {m}, {finding} {fmt_test(t)}"
        if finding.endswith(COMPONENT_NAMES["from_training"]) and tuple(pair.split(" vs ")) in shared:
            text += (" (the two models share backbone blocks; a possible reason, not tested here, is that their "
                     "random-init twins share that block layout too and can match block to block without training)")
        named.append(text)
    if not named:
        return ""
    return f"Contradicted ({len(named)}): " + "; ".join(named) + "."


def verdict_overview(docs: list[dict]) -> str:
    """One short table per finding over datasets and model pairs: verdict and effect with interval."""
    docs = [load_findings(d) for d in docs]
    rows1, rows2 = [], []
    for doc in docs:
        for finding, m, pair, t in tests_of(doc):
            row = [doc["dataset"], pair, m, verdict_cell(t), fmt_test(t)]
            (rows1 if finding == "finding 1" else rows2).append(row if finding == "finding 1" else
                                                                  row[:3] + [finding.split(": ")[1]] + row[3:])
    parts = ["### Finding 1: trained architectures agree beyond accuracy, more than their twins at the same layers",
             table(["dataset", "model pair", "method", "verdict", "trained − twins [95 % CI]"], rows1) if rows1 else
             "No finding-1 tests.",
             "### Finding 2: matched layers at similar relative depth (three tests per pair for segmentation, two for "
             "classification)",
             table(["dataset", "model pair", "method", "test", "verdict", "advantage [95 % CI]"], rows2) if rows2 else
             "No finding-2 tests."]
    return "\n\n".join(parts) + "\n"


def findings_markdown(doc: dict | str | Path, methods: tuple[str, ...] = ("seg", "cls")) -> str:
    """The detailed generated section for one dataset (the page's heading names the dataset)."""
    doc = load_findings(doc)
    parts = ["### Positive control: shared backbone blocks matched block to block", positive_control_table(doc)]
    for m in methods:
        if not any(m in p["finding1"] for p in doc["pairs"]):
            continue
        parts += [
            f"### {METHOD_NAMES.get(m, m)[:1].upper()}{METHOD_NAMES.get(m, m)[1:]}", summary_sentences(doc, m),
            "**Finding 1**: agreement beyond accuracy of the trained pair's val-selected layer pair, minus the twins' "
            "at the same layers", finding1_table(doc, m),
            "<details><summary>Per concept category (diagnostic)</summary>\n\n" + finding1_category_table(doc, m)
            + "\n\n</details>",
            f"**Finding 2**: {'three' if m == 'seg' else 'two'} tests per model pair (advantage = comparison's error − "
            "trained error)" + ("" if m == "seg" else "; beyond resolution does not apply to image-level outputs"),
            finding2_table(doc, m),
            "<details><summary>Predictors and match stability (diagnostics)</summary>\n\n"
            + finding2_details_table(doc, m) + "\n\n</details>",
            "<details><summary>Emergence depth (relative depth where val quality first reaches 90 % of its maximum)"
            "</summary>\n\n" + emergence_table(doc, m) + "\n\n</details>",
        ]
    return "\n\n".join(parts) + "\n"


def shortcut_studies(exclude: str = "") -> dict[str, "pd.DataFrame"]:
    """The shortcut test's scores (``shortcut.csv``) of every other complete study that has them (e.g.
    ``studies/grounding.yml``), by ``<study>/<dataset>``; smoke studies are left out."""
    from conceptsim.paths import results_dir, shortcut_csv

    out = {}
    for dataset_dir in sorted(results_dir().glob("*/*/")):
        study, path = dataset_dir.parent.name, shortcut_csv(dataset_dir)
        if path.is_file() and study != exclude and not study.endswith("-smoke"):
            out[f"{study}/{dataset_dir.name}"] = read_table(path)
    return out


def shortcut_sentence(name: str, shortcut: "pd.DataFrame") -> str:
    """How the findings' measures (and linear CKA beside them) grouped networks trained with and without a
    planted cue, at the deepest layer of study ``name``'s shortcut test (AUPRC against its chance value)."""
    rows = shortcut[shortcut["concept"].fillna("") == ""]  # the rows over every concept (a read CSV has NaN there)
    parts = []
    for method, label in (("seg_kappa", "`seg_kappa`"), ("cls_partial", "`cls_partial`"), ("cka", "linear CKA")):
        sub = rows[rows["method"] == method]
        if not sub.empty:
            r = sub.iloc[-1]  # the rows follow the layers' order: the last is the deepest
            parts.append(f"{label} {fmt(r['auprc'], 2)} (violation rate {fmt(r['violation_rate'], 2)})")
    if not parts:
        return ""
    chance = fmt(rows["chance_auprc"].iloc[0], 2)
    return (f"In the shortcut and label-randomisation test (study `{name.split('/')[0]}`, layer `{rows['layer'].iloc[-1]}`), "
            f"the AUPRC of same-group network pairs (chance {chance}, perfect 1) was " + ", ".join(parts) + ". ")


def measure_grounding(grounding: "pd.DataFrame", shortcut: dict[str, "pd.DataFrame"] | None = None) -> str:
    """How the measures the findings rest on (``seg_kappa``, ``cls_partial``) passed layer monotonicity
    (rows of the datasets' ``grounding.csv`` over the concepts represented in both layers, the set the
    findings compare), trained models only, and the shortcut test where another study ran it
    (:func:`shortcut_studies`), with the link to the grounding page."""
    from conceptsim.comparison.grounding import monotonicity_summary
    from conceptsim.models.names import PIXELS_MODEL, is_twin

    g = grounding[(grounding["test"] == "layer_monotonicity") & (grounding["concepts"] == "represented")]
    g = g[~g["model"].map(is_twin) & (g["model"] != PIXELS_MODEL)]
    parts = []
    for method, finding in (("seg_kappa", "segmentation"), ("cls_partial", "classification")):
        sub = g[g["method"] == method]
        if sub.empty:
            continue
        s = monotonicity_summary(sub)
        parts.append(f"`{method}` ({finding} tests): violation rate {fmt(s['violation_rate'], 2)} (pooled over the "
                     f"triples of {s['n_violation']} trained model(s) and dataset(s)), Spearman {fmt(s['spearman'], 2)} "
                     f"(mean over the {s['n_spearman']} where it is defined), over the concepts represented in both "
                     "layers as in the findings; a good measure gives 0 and −1")
    if not parts:
        return ""
    return ("**Do the measures behind the findings measure?** Within one model a layer should resemble its "
            "neighbours more than layers further away. " + "; ".join(parts) + ". "
            + "".join(shortcut_sentence(name, frame) for name, frame in (shortcut or {}).items())
            + "Details and the other tests: {ref}`grounding`.\n")
