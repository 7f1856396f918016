"""The generated "Do the measures measure?" page: one table per grounding test, measure by measure.

Sources: each dataset's ``grounding.csv`` (layer monotonicity, unit-matching depth alignment; written by
the comparison stage, :mod:`conceptsim.comparison.grounding`), its ``shortcut.csv`` where the study's
networks have groups (the shortcut and label-randomisation test, ``studies/grounding.yml``) and the ``grounding/planted`` entry of
``benchmarks/results.json`` (planted matches, :mod:`conceptsim.comparison.planted`). Nothing is typed by
hand; a test without results says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from conceptsim.atomic import write_text
from conceptsim.comparison.grounding import monotonicity_summary
from conceptsim.comparison.report import table
from conceptsim.models.names import is_twin
from conceptsim.paths import comparison_files, dataset_results, project_root, shortcut_csv
from conceptsim.tables import read_table

if TYPE_CHECKING:
    from conceptsim.run.study import Study

#: measures in the order of the tables: concept measures (agreement beyond accuracy first), then label-free
MEASURES = ("seg_kappa", "seg", "seg_pearson", "cls_partial", "cls", "cls_jaccard", "cka", "cka_debiased", "cka_grid4",
            "units_bb", "units_bb_corr")


def model_group(model: str) -> str:
    """``trained``, ``twin`` (random-init) or ``pixels`` (the floor)."""
    if model == "pixels":
        return "pixels"
    return "twin" if is_twin(model) else "trained"


def fmt(x: float, digits: int = 2) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def monotonicity_table(grounding: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Per measure, trained models and twins: the violation rate pooled over the triples of all models and
    datasets, the mean Spearman, and how many (model, dataset) rows stand behind each
    (:func:`~conceptsim.comparison.grounding.monotonicity_summary`; concept measures over the concepts
    represented in both layers)."""
    g = grounding[(grounding["test"] == "layer_monotonicity") & grounding["concepts"].isin(["represented", "none"])].copy()
    g["group"] = g["model"].map(model_group)
    header = ["measure"] + [f"{grp} {col}" for grp in ("trained", "twin")
                            for col in ("violation", "Spearman", "n (violation / Spearman)")]
    rows = []
    for m in [m for m in MEASURES if m in set(g["method"])]:
        row = [f"`{m}`"]
        for grp in ("trained", "twin"):
            s = monotonicity_summary(g[(g["method"] == m) & (g["group"] == grp)])
            row += [fmt(s["violation_rate"]), fmt(s["spearman"]), f"{s['n_violation']} / {s['n_spearman']}"]
        rows.append(row)
    return header, rows


def alignment_table(grounding: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Per model pair and dataset: unit matching's relative-depth alignment error against its null."""
    g = grounding[grounding["test"] == "units_depth_alignment"]
    rows = [[r.dataset, f"{r.model} vs {r.model_b}", f"{model_group(r.model)} / {model_group(r.model_b)}",
             fmt(r.alignment_error, 3), fmt(r.null_mean, 3), str(int(r.n_layers))] for r in g.itertuples()]
    return ["dataset", "models", "kinds", "alignment error", "null mean", "layers"], rows


def planted_table(scores: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Per transform and noise level: precision / recall of every method the entry holds, in the order of
    :data:`MEASURES` (``seg_kappa``, ``seg``, ``cls_partial``, ``cls``, CKA, ``units_bb``)."""
    df = pd.DataFrame(scores)
    methods = [m for m in MEASURES if m in set(df["method"])]
    rows = []
    for (transform, noise), g in df.groupby(["transform", "noise"], sort=False):
        by = g.set_index("method")
        rows.append([transform, fmt(noise, 1)] + [f"{fmt(by.loc[m, 'precision'])} / {fmt(by.loc[m, 'recall'])}"
                                                  for m in methods])
    return ["transform", "noise"] + [f"`{m}` P / R" for m in methods], rows


def shortcut_table(shortcut: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Per measure (concept means, then the cue's concept alone, then label-free): AUPRC, its chance value and
    the violation rate at the deepest probed layer, and both at every probed layer (shallow to deep)."""
    rows = []
    for concept in ("", *sorted(set(shortcut["concept"]) - {""})):
        for m in [m for m in MEASURES if m in set(shortcut[shortcut["concept"] == concept]["method"])]:
            sel = shortcut[(shortcut["method"] == m) & (shortcut["concept"] == concept)]
            last = sel.iloc[-1]
            rows.append([f"`{m}`" + (f" on `{concept}`" if concept else ""), f"`{last.layer}`", fmt(last.auprc),
                         fmt(last.chance_auprc), fmt(last.violation_rate), " / ".join(fmt(v) for v in sel["auprc"]),
                         " / ".join(fmt(v) for v in sel["violation_rate"]), str(int(last.n_networks))])
    layers = " / ".join(dict.fromkeys(shortcut["layer"]))
    return ["measure", "deepest layer", "AUPRC", "chance", "violation", f"AUPRC per layer ({layers})",
            "violation per layer", "networks"], rows


def training_line(study: "Study") -> str:
    """One sentence: each group's mean training accuracy (from the checkpoints' records), empty without any."""
    from conceptsim.models.small_cnn import group_of, training_record

    acc: dict[str, list[float]] = {}
    for spec in study.model_specs.values():
        if "small_cnn" in spec and (rec := training_record(spec["small_cnn"])) is not None:
            acc.setdefault(group_of(spec["small_cnn"]), []).append(rec["train_accuracy"])
    if not acc:
        return ""
    parts = [f"{g} {np.mean(v):.2f} ({len(v)} networks)" for g, v in acc.items()]
    return "Training accuracy on the dominant-object label (mean per group): " + "; ".join(parts) + "."


def read_shortcut(study: "Study") -> pd.DataFrame | None:
    """All datasets' ``shortcut.csv`` rows of a study (None when none exists)."""
    frames = [read_table(p) for ds in study.datasets
              if (p := shortcut_csv(dataset_results(study.name, ds))).exists()]
    return pd.concat(frames, ignore_index=True).fillna({"concept": ""}) if frames else None


def read_grounding(study: "Study") -> pd.DataFrame | None:
    """All datasets' ``grounding.csv`` rows of a study (None when none exists)."""
    frames = []
    for ds in study.datasets:
        path = comparison_files(dataset_results(study.name, ds))["grounding"]
        if path.exists():
            frames.append(read_table(path))
    return pd.concat(frames, ignore_index=True) if frames else None


def planted_scores(results_json: Path | None = None) -> dict | None:
    """The ``grounding/planted`` benchmark entry (None when it was never run)."""
    path = results_json or project_root() / "benchmarks" / "results.json"
    try:
        return json.loads(path.read_text())["entries"].get("grounding/planted")
    except (OSError, ValueError, KeyError):
        return None


SECTIONS = (
    ("Layer monotonicity", "A good measure finds layer i more similar to a nearer layer than to a farther one on the "
     "same side: violation rate 0 and Spearman -1. The violation rate is pooled over the triples of all models and "
     "datasets, Spearman is the mean over the (model, dataset) rows where it is defined (n: rows behind each); concept "
     "measures over the concepts represented in both layers.",
     "No `grounding.csv` exists for this study yet (run the comparison stage)."),
    ("Unit matching across models: relative depth", "Where unit best buddies of two models' layers sit in relative "
     "depth. A label-free finding 2 shows an alignment error below the null mean for trained pairs, and twins as a "
     "control.", "No `grounding.csv` exists for this study yet (run the comparison stage)."),
    ("Planted matches", "Synthetic spaces with known shared concepts: a good method proposes exactly the planted "
     "matches (precision and recall 1) under a pure permutation at low noise; a basis-free method keeps them under "
     "rotation at low and moderate noise. At the highest noise recall falls and some methods also propose wrong pairs "
     "(each row is one draw of the spaces).",
     "The `grounding/planted` benchmark has not been run (`benchmarks/run.py --only grounding`)."),
    ("Shortcut affinity and label randomisation", "Small CNNs trained with a planted cue (a dot whose colour gives the "
     "label) present with probability 0, 0.5 or 1, or on shuffled labels, three seeds per group: a good measure finds "
     "networks of one group more alike than networks of different groups -- AUPRC of same-group pairs near 1 (chance: "
     "a random ranking's expected AUPRC) and violation rate near 0 (averaged over groups, ReSi's scores). CKA stands beside "
     "the concept measures; the rows on `dot` ask the concept measures whether the networks that use the cue share it.",
     "This study has no networks trained in groups (the study `studies/grounding.yml` runs this test)."),
)


def grounding_markdown(study_name: str, grounding: pd.DataFrame | None, planted: dict | None,
                       shortcut: pd.DataFrame | None = None, training: str = "") -> str:
    """The page's markdown: one section per test, its table or a sentence saying why there is none."""
    bodies = [None, None, None, table(*shortcut_table(shortcut)) + (f"\n\n{training}" if training else "")
              if shortcut is not None else None]
    if grounding is not None:
        bodies[0] = table(*monotonicity_table(grounding))
        bodies[1] = table(*alignment_table(grounding))
    if planted is not None:
        bodies[2] = (table(*planted_table(planted["details"]["scores"])) + "\n\n"
                     f"Measured at commit `{planted.get('commit', 'unknown')[:10]}` "
                     f"({'quick sizes' if planted.get('quick') else 'default sizes'}).")
    parts = [f"# Do the measures measure? Study `{study_name}`\n",
             "Generated from each dataset's `grounding.csv` and the `grounding/planted` benchmark; the tests and "
             "their definitions are on the page *Do the measures measure?* (book/grounding).\n"]
    for (title, intro, missing), body in zip(SECTIONS, bodies):
        parts.append(f"## {title}\n\n{intro}\n\n{body if body is not None else missing}\n")
    return "\n".join(parts)


def write_grounding_page(study: "Study", path: Path, results_json: Path | None = None) -> Path | None:
    """Write the page (None, and nothing written, when the study has no grounding results)."""
    grounding = read_grounding(study)
    if grounding is None:
        return None
    shortcut = read_shortcut(study)
    write_text(path, grounding_markdown(study.name, grounding, planted_scores(results_json), shortcut,
                                        training_line(study) if shortcut is not None else ""))
    return path
