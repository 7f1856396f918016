"""Grounding tests with known answers: layer monotonicity of every measure, label-free unit matching."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conceptsim.comparison.agreement import partial_correlation
from conceptsim.comparison.cka import cka_matrices, gram
from conceptsim.comparison.grounding import grounding_frame, monotonicity, monotonicity_summary
from conceptsim.comparison.similarity import SegAccumulator, cls_similarity, concept_similarity
from conceptsim.comparison.units import UnitMatcher, best_buddies, significance_threshold, unit_correlations, unit_samples


def noisy_copies(n_layers=6, n=400, c=12, g=4, keep=0.8, seed=0) -> list[np.ndarray]:
    """A synthetic model whose layer l is a noisy copy of layer l-1: ``keep * x + sqrt(1 - keep^2) * noise``
    (``n x c x g x g`` activations; every layer has the same variance, so the correlation of layers i and j
    is ``keep ** |i - j|`` whatever i)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, g, g))
    layers = [x]
    for _ in range(n_layers - 1):
        layers.append(keep * layers[-1] + np.sqrt(1 - keep**2) * rng.standard_normal(x.shape))
    return layers


def test_monotonicity_definition_on_known_matrices():
    d = np.abs(np.subtract.outer(np.arange(5), np.arange(5)))
    good = monotonicity(np.exp(-d))
    assert good["violation_rate"] == 0.0 and good["spearman"] == pytest.approx(-1.0)
    assert good["spearman_pairs"] == pytest.approx(-1.0)
    # a chain whose steps differ (similarity = product of the steps between i and j): every ordering
    # right, but not over all pairs at once
    steps = np.array([0.9, 0.5, 0.9, 0.5])
    chain = np.array([[np.prod(steps[min(i, j):max(i, j)]) for j in range(5)] for i in range(5)])
    uneven = monotonicity(chain)
    assert uneven["violation_rate"] == 0.0 and uneven["spearman"] == pytest.approx(-1.0)
    assert -1.0 < uneven["spearman_pairs"] < -0.5
    # triples: per anchor i, pairs of layers on the same side -> sum over i of C(right, 2) + C(left, 2)
    assert good["n_triples"] == sum(r * (r - 1) // 2 + l * (l - 1) // 2 for r, l in ((4 - i, i) for i in range(5)))
    bad = monotonicity(-np.exp(-d))  # similarity grows with distance
    assert bad["violation_rate"] == 1.0 and bad["spearman"] == pytest.approx(1.0)
    flat = monotonicity(np.ones((4, 4)))
    assert flat["violation_rate"] == 0.5 and np.isnan(flat["spearman"])  # ties count one half
    with_nan = np.exp(-d)
    with_nan[0, :] = with_nan[:, 0] = np.nan
    assert monotonicity(with_nan)["n_layers"] == 4
    with pytest.raises(ValueError, match="square"):
        monotonicity(np.ones((2, 3)))


def test_rank_correlation_is_spearmanr_to_the_bit():
    from scipy.stats import rankdata, spearmanr

    from conceptsim.comparison.grounding import average_ranks, rank_correlation

    rng = np.random.default_rng(7)
    for t in range(3000):
        n = int(rng.integers(3, 40))
        x = rng.standard_normal(n)
        if t % 3 == 0:
            x = np.round(x, 1)  # ties
        y = rng.integers(1, n + 1, size=n).astype(float) if t % 2 else np.abs(np.arange(n) - rng.integers(0, n)) + 0.0
        assert np.array_equal(average_ranks(x), rankdata(x)) and np.array_equal(average_ranks(y), rankdata(y))
        if np.ptp(x) > 0 and np.ptp(y) > 0:
            assert rank_correlation(x, y) == float(spearmanr(x, y).statistic), (x, y)
    assert np.isnan(rank_correlation(np.ones(5), np.arange(5.0))) and np.isnan(rank_correlation(np.ones(1), np.ones(1)))


def test_every_measure_is_monotone_on_successive_noisy_copies():
    layers = noisy_copies()
    n = len(layers[0])
    # label-free: CKA on GAP features (linear, debiased), grid CKA and unit matching
    grams = np.stack([gram(x.mean(axis=(2, 3))) for x in layers])
    mats = cka_matrices(grams)
    mats["cka_grid4"] = cka_matrices(np.stack([gram(x) for x in layers]))["cka"]
    matcher = UnitMatcher(len(layers), n)
    for li, x in enumerate(layers):
        matcher.add_layer(li, torch.from_numpy(x))
    units = matcher.results()
    mats["units_bb_corr"] = units["units_bb_corr"]
    # concept measures: one fixed probe read from every layer (the concept's direction is unit 0)
    w = np.zeros(layers[0].shape[1])
    w[:3] = 1.0
    seg_logits = [np.einsum("c,nchw->nhw", w, x) for x in layers]
    cls_logits = np.stack([s.mean(axis=(1, 2))[:, None] for s in seg_logits])  # L x N x 1
    labels = (cls_logits[0] > 0).astype(np.uint8)  # the concept's presence label
    cls = cls_similarity(cls_logits, np.random.default_rng(0))
    mats["cls"] = cls["cls"][0]
    mats["cls_partial"] = partial_correlation(cls_logits.transpose(2, 0, 1), labels)[0]
    nl = len(layers)
    for method in ("seg", "seg_pearson"):
        mats[method] = np.array([[concept_similarity(seg_logits[i], seg_logits[j], method) for j in range(nl)]
                                 for i in range(nl)])
    # agreement beyond accuracy: the stage's accumulator, the truth a noisy reading of the first layer
    truth = seg_logits[0] + 2.0 * np.random.default_rng(9).standard_normal(seg_logits[0].shape) > 0
    rows = np.stack([*seg_logits, np.where(truth, 30.0, -30.0)])[:, None]  # (L + 1) x 1 x n x g x g
    acc = SegAccumulator(nl + 1, 1, rows.shape[-2:], truth_row=nl)
    acc.update(torch.from_numpy(rows).float())
    mats["seg_kappa"] = acc.results()["seg_kappa"][0, :nl, :nl]
    for method, mat in mats.items():
        got = monotonicity(mat)
        assert got["violation_rate"] == 0.0, method
        assert got["spearman"] == pytest.approx(-1.0), method
    # unit matching of neighbouring copies: every unit finds its own copy
    assert np.allclose(np.diag(units["units_bb"]), 1.0)
    assert units["units_bb"][0, 1] == 1.0
    assert units["units_bb_control"][0, 1] < 0.2  # with B's images permuted almost nothing is significant


def test_best_buddies_of_a_layer_with_itself_are_the_identity():
    x = noisy_copies(n_layers=1, c=20)[0]
    z, live = unit_samples(torch.from_numpy(x))
    ia, ib = best_buddies(unit_correlations(z, z), live_a=live, live_b=live)
    assert np.array_equal(ia, np.arange(20)) and np.array_equal(ib, np.arange(20))


def test_a_pure_unit_permutation_is_recovered_exactly():
    x = noisy_copies(n_layers=1, c=30, seed=3)[0]
    x[:, 5] = 0.0  # a dead unit takes part in nothing
    perm = np.random.default_rng(1).permutation(30)
    y = x[:, perm]  # unit j of B is unit perm[j] of A
    za, live_a = unit_samples(torch.from_numpy(x))
    zb, live_b = unit_samples(torch.from_numpy(y))
    corr = unit_correlations(za, zb)
    ia, ib = best_buddies(corr, significance_threshold(len(x)), live_a, live_b)
    assert 5 not in ia and len(ia) == 29
    assert np.array_equal(perm[ib], ia)
    assert np.allclose(corr[ia, ib], 1.0, atol=1e-5)


def test_unit_inputs_are_checked():
    z = torch.zeros((10, 3))
    with pytest.raises(ValueError, match="same images"):
        unit_correlations(z, torch.zeros((8, 3)))
    with pytest.raises(ValueError, match="never added"):
        UnitMatcher(2, 10).results()
    assert significance_threshold(3) == float("inf")


def test_stage_writes_grounding_and_unit_rows(tmp_path):
    from conceptsim.comparison.stage import run_comparison_stage
    from conceptsim.comparison.synthetic import build_synthetic_study

    layers = [(f"l{i}", (i + 1) / 4, g, 6) for i, g in enumerate((8, 8, 4, 4))]
    models = {"a": layers, "a:random": layers, "b": layers[:3]}
    root = build_synthetic_study(tmp_path / "ds", models, n_images=40, seed=2)
    paths = run_comparison_stage(root, tmp_path / "out", models=list(models), permutations=100, bootstrap=50)
    g = pd.read_csv(paths["grounding"], keep_default_na=False, na_values=[""])
    mono = g[g["test"] == "layer_monotonicity"]
    methods = set(mono["method"])
    assert {"seg_kappa", "seg", "cls_partial", "cls", "cka", "cka_debiased", "units_bb", "units_bb_corr"} <= methods
    assert set(mono["model"]) == set(models)
    cka_a = mono[(mono["method"] == "cka") & (mono["model"] == "a")].iloc[0]
    assert cka_a["n_pairs"] == 6 and cka_a["n_triples"] == 8
    assert ((mono["violation_rate"].dropna() >= 0) & (mono["violation_rate"].dropna() <= 1)).all()
    align = g[g["test"] == "units_depth_alignment"]
    # a with its twin and a with b; a's twin against another architecture (b, trained) is not compared
    assert set(zip(align["model"], align["model_b"])) == {("a", "a:random"), ("a", "b")}
    assert (align["null_mean"] > 0).all()
    ls = pd.read_csv(paths["layer_similarity"], keep_default_na=False, na_values=[""])
    # similarity.csv says which concept rows are represented in both layers: exactly the concepts behind the
    # layer-level means (the same flags), empty for the label-free rows
    sim = pd.read_csv(paths["similarity"], keep_default_na=False, na_values=[""])
    assert sim.loc[sim["concept"].isna(), "represented"].isna().all()
    concept_rows = sim[sim["concept"].notna()]
    assert concept_rows["represented"].map(type).eq(bool).all()
    keys = ["method", "model_a", "layer_a", "model_b", "layer_b"]
    counted = concept_rows[concept_rows["represented"] & concept_rows["value"].notna()].groupby(keys).size()
    means = concept_rows[concept_rows["represented"]].groupby(keys)["value"].mean()
    seg = ls[ls["method"].isin(["seg", "seg_kappa", "cls_partial"]) & (ls["n_concepts"] > 0)].set_index(keys)
    assert len(seg) > 10
    assert (counted.reindex(seg.index).to_numpy() == seg["n_concepts"].to_numpy()).all()
    assert np.allclose(means.reindex(seg.index).to_numpy(), seg["value"].to_numpy())
    bb = ls[ls["method"] == "units_bb"]
    nl = 4 + 4 + 3
    assert len(bb) == nl * (nl + 1) // 2 - 4 * 3
    assert not ((bb["model_a"] == "a:random") & (bb["model_b"] == "b")).any()
    diag = bb[(bb["model_a"] == bb["model_b"]) & (bb["layer_a"] == bb["layer_b"])]
    assert np.allclose(diag["value"], 1.0) and bb["control"].notna().all()
    # the book page: one table per test, measure by measure, trained beside twins
    from conceptsim.book.grounding import grounding_markdown

    planted = {"commit": "abc", "details": {"scores": [
        {"transform": "permutation", "noise": 0.1, "method": m, "precision": 1.0, "recall": 1.0} for m in ("units_bb", "cka")]}}
    page = grounding_markdown("synthetic", g, planted)
    assert "| `seg_kappa` |" in page and "| `units_bb` |" in page and "a vs b" in page
    assert "| permutation | 0.1 | 1.00 / 1.00 | 1.00 / 1.00 |" in page
    assert "has not been run" in grounding_markdown("synthetic", g, None)


def test_planted_matches_known_answers():
    from conceptsim.comparison.planted import planted_match_scores, planted_spaces

    scores = planted_match_scores(("permutation", "rotation"), (0.1,), n_layers=2, n_shared=3, n_unique=1, n_images=240)
    got = scores.set_index(["transform", "method"])
    for method in ("units_bb", "seg_kappa", "seg", "cls", "cls_partial", "cka", "cka_debiased"):
        row = got.loc[("permutation", method)]  # pure permutation: every method recovers the planted answer
        assert row["precision"] == 1.0 and row["recall"] == 1.0, method
    for method in ("seg_kappa", "seg", "cls", "cls_partial", "cka", "cka_debiased"):  # rotation-invariant methods
        assert got.loc[("rotation", method), "recall"] == 1.0, method
    assert got.loc[("rotation", "units_bb"), "recall"] <= 0.5  # a rotated basis leaves no unit-to-unit answer
    a = planted_spaces(seed=4, n_layers=1, n_images=40)
    b = planted_spaces(seed=4, n_layers=1, n_images=40)
    assert np.array_equal(a.acts_b[0], b.acts_b[0]) and a.unit_pairs == b.unit_pairs  # same seed, same spaces
    with pytest.raises(ValueError, match="transform"):
        planted_spaces(transform="shear")


def test_grounding_page_is_written_and_listed_under_its_chapter(tmp_path, monkeypatch):
    import shutil
    from pathlib import Path
    from types import SimpleNamespace

    import yaml

    from conceptsim.book import toc as book_toc
    from conceptsim.book.grounding import write_grounding_page
    from conceptsim.paths import book_results_dir, comparison_files, dataset_results

    monkeypatch.setenv("CONCEPTSIM_ROOT", str(tmp_path))
    monkeypatch.delenv("CONCEPTSIM_RESULTS", raising=False)
    shutil.copy(Path(__file__).resolve().parents[1] / "_toc.yml", tmp_path / "_toc.yml")
    study = SimpleNamespace(name="s", datasets={"shapes": {}})
    out = book_results_dir("s")
    assert write_grounding_page(study, out / "grounding.md") is None  # no results, no page
    csv = comparison_files(dataset_results("s", "shapes"))["grounding"]
    csv.parent.mkdir(parents=True)
    pd.DataFrame([{"test": "layer_monotonicity", "dataset": "shapes", "model": "m", "model_b": "", "method": "cka",
                   "concepts": "none", "n_layers": 3, "n_triples": 2, "violation_rate": 0.0, "n_pairs": 3,
                   "spearman": -1.0, "spearman_pairs": -0.87}]).to_csv(csv, index=False)
    page = write_grounding_page(study, out / "grounding.md", results_json=tmp_path / "none.json")
    assert "| `cka` | 0.00 | -1.00 | 1 / 1 |" in page.read_text()
    (out / "shapes").mkdir()
    (out / "shapes" / "index.md").write_text("# shapes\n")
    (out / book_toc.TOC_PART).write_text(yaml.safe_dump({
        "study": "s", "chapters": [{"file": "book/results/s/shapes/index", "title": "Dataset shapes", "sections": []}],
        "reproducibility": "book/results/s/reproducibility", "findings": None, "grounding": "book/results/s/grounding"}))
    toc = yaml.safe_load(book_toc.write_toc().read_text())
    chapters = [ch for p in toc["parts"] for ch in p.get("chapters", [])]
    grounding = next(ch for ch in chapters if ch.get("file") == "book/grounding")
    assert grounding["sections"] == [{"file": "book/results/s/grounding"}]


def test_group_separation_scores_known_groupings():
    from conceptsim.comparison.grounding import group_separation

    groups = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    perfect = np.where(groups[:, None] == groups[None, :], 0.9, 0.2)
    got = group_separation(perfect, groups)
    assert got["auprc"] == 1.0 and got["violation_rate"] == 0.0 and got["base_rate"] == pytest.approx(9 / 36)
    inverted = group_separation(-perfect, groups)
    assert inverted["violation_rate"] == 1.0 and inverted["auprc"] == pytest.approx(0.25)  # ties: all at one threshold
    noise = np.random.default_rng(0).standard_normal((9, 9))
    assert 0.0 < group_separation(noise, groups)["violation_rate"] < 1.0
    with pytest.raises(ValueError, match="one group per network"):
        group_separation(perfect, groups[:5])


def test_monotonicity_summary_pools_the_violation_rate_over_triples():
    rows = pd.DataFrame({"violation_rate": [0.0, 0.5, np.nan], "n_triples": [1, 3, 0], "spearman": [-1.0, np.nan, np.nan]})
    s = monotonicity_summary(rows)
    assert s["violation_rate"] == pytest.approx(1.5 / 4)  # the mean over models would say 0.25
    assert (s["n_violation"], s["spearman"], s["n_spearman"]) == (2, -1.0, 1)
    assert np.isnan(monotonicity_summary(rows.iloc[2:])["violation_rate"])


def test_a_model_whose_layers_share_one_depth_gets_no_depth_alignment_row():
    # the pixels floor: every "layer" is the input at relative depth 0, so its alignment error is its null
    layer_models = ["a"] * 3 + ["b"] * 3 + ["pixels"] * 2
    depths = np.array([0.1, 0.5, 0.9, 0.2, 0.6, 1.0, 0.0, 0.0])
    mat = np.eye(8) + 0.1
    g = grounding_frame("d", ["a", "b", "pixels"], layer_models, depths, [("units_bb", "none", mat)])
    align = g[g["test"] == "units_depth_alignment"]
    assert set(zip(align["model"], align["model_b"])) == {("a", "b")}
    assert set(g.loc[g["test"] == "layer_monotonicity", "model"]) == {"a", "b", "pixels"}


# ---- planted matches: the segmentation measures (graded concept maps, Method A's probes)

PLANTED_SMALL = dict(n_layers=2, n_shared=3, n_unique=1, n_images=240)


@pytest.fixture(scope="module")
def planted_seg():
    """Small planted spaces (pure permutation, noise 0.1) with shared and with independent grading, and Method
    A's test logits and ``represented`` flags on every layer of each."""
    from conceptsim.comparison.planted import planted_spaces, seg_outputs

    out = {}
    for shared in (True, False):
        sp = planted_spaces(transform="permutation", noise=0.1, shared_grading=shared, **PLANTED_SMALL)
        out[shared] = (sp, *seg_outputs(sp))
    return out


def test_planted_maps_are_graded_and_shared_before_the_permutation():
    from conceptsim.comparison.planted import planted_spaces

    sp = planted_spaces(noise=0.0, n_layers=1, n_images=60)
    assert sp.masks.dtype == bool and sp.masks.shape == (60, 8, 8, 8)  # n x K x g x g, K = 4 + 2 * 2
    np.testing.assert_array_equal(sp.labels, sp.masks.any(axis=(2, 3)))
    a, b = sp.acts_a[0], sp.acts_b[0]
    for _, u, v in sp.unit_pairs:  # a shared concept: the same graded map in A and B (noise 0)
        np.testing.assert_allclose(a[:, u], b[:, v], atol=1e-5)
        inside = sp.masks[:, u]
        assert len(np.unique(a[:, u][inside].round(4))) > 100  # graded inside the blob, constant outside
        assert len(np.unique(a[:, u][~inside].round(4))) == 1
    binary = planted_spaces(noise=0.0, n_layers=1, n_images=60, graded=False)
    assert len(np.unique(binary.acts_a[0][:, 0].round(4))) == 2
    ctrl = planted_spaces(noise=0.0, n_layers=1, n_images=60, shared_grading=False)
    np.testing.assert_array_equal(ctrl.masks, sp.masks)  # the control changes B's grading only
    np.testing.assert_array_equal(ctrl.acts_a[0], a)
    for _, u, v in ctrl.unit_pairs:
        off = ctrl.acts_b[0][:, v]
        assert np.array_equal(off != off.min(), sp.masks[:, u]) and not np.allclose(off, a[:, u], atol=1e-3)


def test_planted_segmentation_matches_and_their_control(planted_seg):
    """Pure permutation at noise 0.1: seg and seg_kappa find exactly the planted (i, i, c). With B's grading
    drawn independently of A's (the same truth), the two layers' errors are independent given the truth:
    seg_kappa finds nothing, while raw S_seg still matches (both layers find the truth: it is bounded by
    accuracy, which is why seg_kappa is the primary measure)."""
    from conceptsim.comparison.planted import precision_recall, propose_seg_matches

    for shared, expect_kappa in ((True, 1.0), (False, 0.0)):
        sp, logits, represented = planted_seg[shared]
        for (i, j, c) in sp.concept_pairs:
            assert represented[i, c] and represented[len(sp.acts_a) + j, c]
        kappa = precision_recall(propose_seg_matches(sp, logits, represented, "seg_kappa"), sp.concept_pairs)
        seg = precision_recall(propose_seg_matches(sp, logits, represented, "seg"), sp.concept_pairs)
        assert kappa["recall"] == expect_kappa and seg["recall"] == 1.0, shared
        assert seg["precision"] == 1.0
        if shared:
            assert kappa["precision"] == 1.0
        else:
            assert kappa["true_positives"] == 0


def test_seg_kappa_z_and_its_exact_null():
    from scipy.stats import hypergeom, norm

    from conceptsim.comparison.agreement import concept_agreement
    from conceptsim.comparison.planted import kappa_z, seg_kappa_z

    # one stratum: the variance is the hypergeometric one
    n, a, b = 40, 12, 9
    v = hypergeom(n, a, b).var()
    z = kappa_z(np.array([5]), np.array([a]), np.array([b]), np.array([n]))
    assert z == pytest.approx((5 - a * b / n) / np.sqrt(v))
    rng = np.random.default_rng(11)
    truth = rng.random((20, 8, 8)) < 0.3

    def draw(p_on, p_off):  # decisions independent given the truth: a cell is marked with its stratum's rate
        return np.where(truth, rng.random(truth.shape) < p_on, rng.random(truth.shape) < p_off)
    zs = np.array([seg_kappa_z(draw(0.7, 0.2), draw(0.6, 0.1), truth) for _ in range(200)])
    assert abs(zs.mean()) < 0.2 and 0.8 < zs.std() < 1.2
    # the tail: 20,000 draws of 20 images' two strata at once (counts only), the one-sided 0.999 quantile
    m = rng.integers(5, 60, size=(1, 40))
    sa, sb = rng.binomial(m, 0.4, size=(20000, 40)), rng.binomial(m, 0.3, size=(20000, 40))
    o = rng.hypergeometric(sa, m - sa, sb)  # B's marks a random subset of its stratum given A's
    rate = np.mean(kappa_z(o, sa, sb, m) >= norm.ppf(0.999))
    assert 0.0003 < rate < 0.0025
    # z has the sign of seg_kappa (concept_agreement: the same strata)
    ma = draw(0.8, 0.1)
    mb = np.where(rng.random(truth.shape) < 0.7, ma, draw(0.8, 0.1))  # shares most of A's decisions
    kappa = concept_agreement(np.where(ma, 1.0, -1.0), np.where(mb, 1.0, -1.0), truth)
    assert kappa > 0.3 and seg_kappa_z(ma, mb, truth) > 5
    assert np.isnan(seg_kappa_z(truth, truth, truth))  # perfect probes: no room for chance agreement


def test_seg_permutation_p():
    from conceptsim.comparison.planted import seg_permutation_p

    rng = np.random.default_rng(5)
    masks = rng.random((30, 6, 6)) < 0.3
    orders = np.stack([rng.permutation(30) for _ in range(199)])
    assert seg_permutation_p(masks, masks, orders) == pytest.approx(1 / 200)  # no shuffle reaches identical masks
    ps = [seg_permutation_p(rng.random((30, 6, 6)) < 0.3, rng.random((30, 6, 6)) < 0.3, orders) for _ in range(40)]
    assert 0.3 < np.mean(ps) < 0.7  # unrelated masks: p about uniform
    assert np.isnan(seg_permutation_p(np.zeros((30, 6, 6), bool), np.zeros((30, 6, 6), bool), orders))
