"""Figures of the comparison stage; every function returns a matplotlib figure (the notebooks show them).

- :func:`layer_heatmaps` -- layer x layer similarity of one model (or two) per concept category, beside CKA;
- :func:`cross_model_matrix` -- one method's matrix between two models drawn on relative-depth axes;
- :func:`emergence_plot` -- emergence depth of every concept for every model on one axis;
- :func:`finding1_plot`, :func:`depth_profile_plot`, :func:`finding2_plot` -- the finding tests from
  ``findings.json`` (typed records); :func:`power_plot` -- the power curve of finding 1.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from conceptsim.comparison.finding2 import COMPONENTS
from conceptsim.comparison.report import COMPONENT_NAMES, records
from conceptsim.models.names import is_twin


def matrix(df: pd.DataFrame, model_a: str, model_b: str, method: str, concepts=None) -> tuple[np.ndarray, list, list]:
    """Full matrix (rows: layers of ``model_a``, columns: layers of ``model_b``) from similarity rows.

    ``df`` holds rows of ``similarity.csv`` or ``layer_similarity.csv`` (unordered pairs); the missing
    orientation is filled by symmetry. With ``concepts`` (a list) the matrix is the mean over those concepts
    of the per-concept rows. A concept method's cell averages only the concepts represented in both layers
    (:func:`represented_rows`), as the Methods page defines layer-level similarity; a cell with none is
    missing, and a matrix with none at all is empty.

    Returns
    -------
    values, row depths (with layer names), column depths (with layer names).
    """
    d = df[df["method"] == method]
    if concepts is not None:
        d = d[d["concept"].isin(list(concepts))]
    fwd = d[(d["model_a"] == model_a) & (d["model_b"] == model_b)]
    rev = d[(d["model_a"] == model_b) & (d["model_b"] == model_a)].rename(
        columns={"model_a": "model_b", "model_b": "model_a", "layer_a": "layer_b", "layer_b": "layer_a",
                 "depth_a": "depth_b", "depth_b": "depth_a"}
    )
    both = pd.concat([fwd, rev], ignore_index=True).drop_duplicates(
        subset=[c for c in ("concept", "layer_a", "layer_b") if c in fwd.columns]
    )
    if both.empty:
        return np.zeros((0, 0)), [], []
    axes = dict(index=["depth_a", "layer_a"], columns=["depth_b", "layer_b"], values="value", aggfunc="mean")
    piv = both.pivot_table(**axes)
    represented = represented_rows(both)
    if represented is not None:  # the layers stay where they are; cells without a represented concept are missing
        if not represented.any():
            return np.zeros((0, 0)), [], []
        piv = both[represented].pivot_table(**axes).reindex(index=piv.index, columns=piv.columns)
    # by relative depth, then (layers at one depth, e.g. the pixels floor's strides) in the study's layer order,
    # which the rows follow, not by name (stride16 before stride4)
    seen = {str(name): i for i, name in enumerate(dict.fromkeys(
        [x for pair in zip(both["layer_a"].astype(str), both["layer_b"].astype(str)) for x in pair]))}

    def ordered(labels):
        return sorted(labels, key=lambda dl: (dl[0], seen.get(str(dl[1]), len(seen)), str(dl[1])))

    piv = piv.reindex(index=ordered(piv.index), columns=ordered(piv.columns))
    return piv.to_numpy(dtype=float), list(piv.index), list(piv.columns)


def represented_rows(rows: pd.DataFrame) -> np.ndarray | None:
    """Which similarity rows enter a concept mean: those whose concept is represented in both layers.

    The comparison stage's ``represented`` column (True / False on the concept methods' rows, empty on the
    label-free ones; text or booleans, as read back or as built) decides. ``None`` when it has nothing to
    decide: results written before the column, or rows of a label-free method (CKA, unit matching).
    """
    if "represented" not in rows.columns:
        return None
    flag = rows["represented"].astype(str).str.lower()
    if not flag.isin(["true", "false"]).any():
        return None
    return flag.eq("true").to_numpy()


def rows_between(df: pd.DataFrame, models: list[str], methods: list[str]) -> pd.DataFrame:
    """The rows of ``df`` (similarity rows) of ``methods`` whose two models are both among ``models``: what
    :func:`matrix` reads for any pair of them, selected once for a figure of many panels."""
    keep = df["method"].isin(list(methods)) & df["model_a"].isin(list(models)) & df["model_b"].isin(list(models))
    return df[keep]


def _edges(depths: list[float]) -> np.ndarray:
    """Cell edges halfway between consecutive relative depths (first from 0, last to the last depth)."""
    d = np.asarray(depths, dtype=float)
    mid = (d[1:] + d[:-1]) / 2 if len(d) > 1 else np.array([])
    lo = max(0.0, d[0] - (mid[0] - d[0] if len(mid) else 0.05))
    hi = d[-1] + (d[-1] - mid[-1] if len(mid) else 0.05)
    return np.concatenate([[lo], mid, [hi]])


#: the smallest text of the layer and model comparison figures, in points (readable at the book's width)
MIN_FONT = 9


#: measures that can be negative (correlations, agreement beyond chance): drawn on [-1, 1] with a diverging map,
#: so that disagreement is not shown as 0; the others (set IoU, Jaccard, CKA, a share of units) on [0, 1]
SIGNED = ("seg_kappa", "seg_kappa_max", "seg_pearson", "cls", "cls_partial", "units_bb_corr")


def colour_scale(method: str) -> dict:
    """``vmin``, ``vmax`` and ``cmap`` of a heat map of ``method``."""
    return dict(vmin=-1.0, vmax=1.0, cmap="RdBu_r") if method in SIGNED else dict(vmin=0.0, vmax=1.0, cmap="viridis")


#: the colour of a cell without a value (no concept represented in both layers): grey, apart from both scales
#: (white is 0 on the diverging one)
MISSING = "0.75"


def _draw(ax, values, rows, cols, title, vmin=0.0, vmax=1.0, depth_axes=True, cmap="viridis"):
    if values.size == 0:
        ax.set_axis_off()
        ax.set_title(f"{title}\n(no values)" if title else "")
        return None
    ax.set_facecolor(MISSING)
    if depth_axes:
        mesh = ax.pcolormesh(_edges([c[0] for c in cols]), _edges([r[0] for r in rows]), np.ma.masked_invalid(values),
                             vmin=vmin, vmax=vmax, cmap=cmap)
        ax.set_xlabel("relative depth")
        ax.set_ylabel("relative depth")
        ax.set_aspect("equal")
    else:
        mesh = ax.imshow(np.ma.masked_invalid(values), vmin=vmin, vmax=vmax, cmap=cmap, origin="lower")
        ax.set_xticks(range(len(cols)), [c[1] for c in cols], rotation=90, fontsize=MIN_FONT)
        ax.set_yticks(range(len(rows)), [r[1] for r in rows], fontsize=MIN_FONT)
        ax.tick_params(labelsize=MIN_FONT)
    ax.set_title(title, fontsize=10)
    return mesh


def layer_heatmaps(
    similarity: pd.DataFrame, model_a: str, model_b: str | None = None, method: str = "seg", cka: str = "cka"
) -> Figure:
    """Layer x layer heat maps: the concept-mean similarity per concept category, beside CKA.

    Parameters
    ----------
    similarity : rows of ``similarity.csv``.
    model_a, model_b : the models on the rows / columns (``model_b`` defaults to ``model_a``).
    method : the concept method (``seg``, ``cls``, ``seg_pearson``, ``cls_jaccard``).
    cka : the CKA variant drawn last.
    """
    model_b = model_b or model_a
    similarity = rows_between(similarity, [model_a, model_b], [method, cka])  # one pass over a study's rows
    conc = similarity[similarity["method"] == method]
    cats = sorted(c for c in conc["category"].dropna().unique() if c != "")
    panels = [(f"{method}: {cat}", method, sorted(conc[conc["category"] == cat]["concept"].unique())) for cat in cats]
    panels.append((cka, cka, None))
    drawn = [(title, *matrix(similarity, model_a, model_b, m, concepts)) for title, m, concepts in panels]
    most = max([max(len(rows), len(cols)) for _, _, rows, cols in drawn] + [1])
    longest = max([len(str(x[1])) for _, _, rows, cols in drawn for x in list(rows) + list(cols)] + [0])
    # room for one 9 pt layer name per row and column, and for the longest name beside / below the panel
    side = max(3.2, 0.17 * most + 1.8) + 0.07 * max(0, longest - 12)
    fig = Figure(figsize=(side * len(panels) + 0.8, side + 0.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    mesh = None
    scale = colour_scale(method)  # CKA (in [0, 1]) is drawn on the concept measure's scale, under one colour bar
    for ax, (title, values, rows, cols) in zip(axes, drawn):
        mesh = _draw(ax, values, rows, cols, title, depth_axes=False, **scale) or mesh
    if mesh is not None:
        fig.colorbar(mesh, ax=list(axes), shrink=0.8, label=f"{method} (and {cka})")
    fig.suptitle(f"{model_a} × {model_b}" if model_b != model_a else model_a)
    return fig


def wrap_name(name: str, width: int = 16) -> str:
    """A model name broken into lines of at most ``width`` characters at its underscores (for axis titles)."""
    lines: list[str] = []
    for part in name.replace("_", "_\x00").split("\x00"):
        if lines and len(lines[-1]) + len(part) <= width:
            lines[-1] += part
        else:
            lines.append(part)
    return "\n".join(lines)


def cross_model_matrix(similarity: pd.DataFrame, models: list[str], method: str = "seg", concepts=None) -> Figure:
    """A grid of model x model matrices of one method on relative-depth axes (concept mean when given).

    Rows are model A (named at the left of each row), columns model B (named above each column), so no
    panel carries a title of its own and long model names never run into each other.
    """
    n = len(models)
    similarity = rows_between(similarity, models, [method])  # one pass over a study's rows, not one per panel
    fig = Figure(figsize=(2.8 * n + 1.0, 2.8 * n + 0.8), layout="constrained")
    axes = fig.subplots(n, n, squeeze=False)
    mesh = None
    for i, ma in enumerate(models):
        for j, mb in enumerate(models):
            ax = axes[i, j]
            values, rows, cols = matrix(similarity, ma, mb, method, concepts)
            mesh = _draw(ax, values, rows, cols, "", **colour_scale(method)) or mesh
            ax.tick_params(labelsize=MIN_FONT)
            ax.set_xlabel("relative depth" if i == n - 1 and values.size else "", fontsize=MIN_FONT)
            ax.set_ylabel(f"{wrap_name(ma)}\nrelative depth" if j == 0 else "", fontsize=MIN_FONT)
            if i == 0:
                ax.set_title(wrap_name(mb), fontsize=MIN_FONT)
            elif values.size == 0:
                ax.set_title("(no values)", fontsize=MIN_FONT)
    if mesh is not None:
        fig.colorbar(mesh, ax=axes.ravel().tolist(), shrink=0.6, label=method)
    fig.suptitle(f"{method}: rows model A (left), columns model B (top)", fontsize=10)
    return fig


def emergence_plot(findings: dict, method: str = "seg") -> Figure:
    """Emergence depth (x) of every concept (rows) with one marker per model that represents the concept in
    some layer (the findings' ``represented`` flag, on val); a model without one has no marker on that row."""
    concepts = findings["concepts"]
    models = findings["models"]
    # wide enough for the legend of model names beside the axes and the two-line depth label under them
    fig = Figure(figsize=(8.0, 0.36 * len(concepts) + 1.8), layout="constrained")
    ax = fig.subplots()
    depth = {(e["model"], e["concept"]): e["depth"] for e in findings["emergence"] if e["method"] == method}
    markers = "osD^v<>pP*Xh"
    # the models' markers spread over at most 0.6 of a row (centred on it), so none reads as the next row's
    step = 0.6 / max(1, len(models) - 1)
    for mi, m in enumerate(models):
        ys = [ci + (mi - (len(models) - 1) / 2) * step for ci, c in enumerate(concepts) if depth.get((m, c)) is not None]
        xs = [depth[(m, c)] for c in concepts if depth.get((m, c)) is not None]
        ax.scatter(xs, ys, marker=markers[mi % len(markers)], label=m, alpha=0.5 if is_twin(m) else 0.9)
    ax.set_yticks(range(len(concepts)), concepts, fontsize=MIN_FONT)
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("emergence depth\n(relative depth at 90 % of the maximum val quality)")
    ax.legend(fontsize=MIN_FONT, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"{findings['dataset']}: emergence depth ({method})")
    return fig


def finding1_plot(findings: dict, method: str = "seg") -> Figure:
    """Finding 1 per trained model pair: the effect (trained − twins at the same layers) with its interval,
    the smallest effect of interest and the minimum detectable effect; the verdict under each pair."""
    recs = [(p, f1) for p, m, f1, _ in records(findings) if m == method and f1 is not None]
    fig = Figure(figsize=(max(5.0, 1.8 * len(recs) + 2.5), 4.6), layout="constrained")
    ax = fig.subplots()
    labelled: set[str] = set()

    def once(label: str) -> str | None:
        """The legend label for the first element of its kind drawn (the first pair may be untestable)."""
        if label in labelled:
            return None
        labelled.add(label)
        return label

    for xi, (p, f1) in enumerate(recs):
        t = f1.test
        if t.ci_low is not None:
            ax.errorbar([xi], [t.effect], yerr=[[t.effect - t.ci_low], [t.ci_high - t.effect]], fmt="o", color="C0",
                        capsize=4, label=once("trained − twins, 95 % CI"))
            if t.mde is not None:
                ax.plot([xi - 0.25, xi + 0.25], [t.mde] * 2, color="C3", lw=1.5, ls=":",
                        label=once("minimum detectable effect (80 % power)"))
        ax.text(xi, -0.02, t.verdict, ha="center", va="top", fontsize=9, transform=ax.get_xaxis_transform())
    ax.axhline(0, color="k", lw=0.6)
    ax.axhline(0.05, color="0.5", lw=0.8, ls="--", label="smallest effect of interest")
    # model names broken at their underscores, so neighbouring pairs' names do not run into each other
    ax.set_xticks(range(len(recs)), [f"{wrap_name(p['model_a'])}\nvs {wrap_name(p['model_b'])}" for p, _ in recs],
                  fontsize=9)
    ax.tick_params(axis="x", pad=16)
    ax.set_xlim(-0.6, len(recs) - 0.4)
    ax.set_ylabel(f"{findings.get('primary', {}).get(method, method)}: trained − twins", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"{findings['dataset']}: finding 1 ({method})", fontsize=11)
    return fig


def depth_profile_plot(findings: dict, method: str = "seg") -> Figure:
    """Finding 1 without a layer-pair selection: agreement against relative depth (bins of 0.2), trained and
    twins, over the concepts the profile records (``concepts``: the learned concepts of finding 1, or all
    where none was given)."""
    recs = [(p, f1) for p, m, f1, _ in records(findings) if m == method and f1 is not None and f1.depth_profile]
    fig = Figure(figsize=(3.2 * max(1, len(recs)) + 2.0, 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(1, len(recs)), sharey=True))
    for ax, (p, f1) in zip(axes, recs):
        prof = f1.depth_profile
        centres = 0.5 * (np.array(prof["bins"][:-1]) + np.array(prof["bins"][1:]))
        for key, label, style in (("trained", "trained", "o-"), ("twins", "twins (mean over seeds)", "s--")):
            vals = [np.nan if v is None else v for v in prof.get(key) or []]
            if vals:
                ax.plot(centres, vals, style, label=label)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xlim(0, 1)
        ax.set_xlabel("relative depth (both layers in the bin)", fontsize=9)
        ax.set_title(f"{p['model_a']}\nvs {p['model_b']}", fontsize=9)
    axes[0].set_ylabel(findings.get("primary", {}).get(method, method), fontsize=10)
    if recs:
        axes[-1].legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    used = sorted({str(f1.depth_profile["concepts"]) for _, f1 in recs if f1.depth_profile.get("concepts")})
    over = f", {' / '.join(used)} concepts" if used else ""
    fig.suptitle(f"{findings['dataset']}: agreement by relative depth, no layer-pair selection{over} ({method})",
                 fontsize=11)
    return fig


def finding2_plot(findings: dict, method: str = "seg") -> Figure:
    """Finding 2 per trained model pair: the three advantages (comparison error − trained error) with their
    intervals, and each test's verdict."""
    recs = [(p, f2) for p, m, _, f2 in records(findings) if m == method and f2 is not None]
    fig = Figure(figsize=(max(5.0, 2.2 * len(recs) + 2.5), 4.0), layout="constrained")
    ax = fig.subplots()
    for xi, (p, f2) in enumerate(recs):
        for ci, c in enumerate(COMPONENTS):
            t = getattr(f2, c)
            x = xi + (ci - 1) * 0.25
            if t.ci_low is not None:
                ax.errorbar([x], [t.effect], yerr=[[t.effect - t.ci_low], [t.ci_high - t.effect]], fmt="os^"[ci],
                            color=f"C{ci}", capsize=3, label=COMPONENT_NAMES[c] if xi == 0 else None)
            ax.text(x, -0.02, t.verdict.replace(" here", "").replace("not testable", "n/t"), ha="center", va="top",
                    rotation=90, fontsize=9, transform=ax.get_xaxis_transform())
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(range(len(recs)), [f"{p['model_a']}\nvs {p['model_b']}" for p, _ in recs], fontsize=9)
    ax.tick_params(axis="x", pad=70)
    ax.set_xlim(-0.6, len(recs) - 0.4)
    ax.set_ylabel("advantage in |Δ relative depth|", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"{findings['dataset']}: finding 2 ({method})", fontsize=11)
    return fig


def power_plot(points, stated_mde: float | None = None) -> Figure:
    """Share of supported verdicts against the planted effect (:func:`conceptsim.comparison.power.simulate_power`)."""
    fig = Figure(figsize=(5.5, 3.4), layout="constrained")
    ax = fig.subplots()
    ax.plot([p.effect for p in points], [p.supported for p in points], "o-", label="simulated: share supported")
    ax.axhline(0.8, color="0.5", ls="--", lw=0.8, label="80 % power")
    ax.axhline(0.05, color="0.7", ls=":", lw=0.8, label="5 %")
    if stated_mde is not None:
        ax.axvline(stated_mde, color="C3", ls=":", label="stated MDE (median)")
    ax.set_xlabel("planted effect (kappa units)", fontsize=10)
    ax.set_ylabel("share of simulated studies", fontsize=10)
    ax.set_ylim(0, 1.02)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig
