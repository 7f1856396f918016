"""S_seg / S_cls: exact values on known inputs, and the streamed Gram products against brute force."""

import numpy as np
import pytest
import torch

from conceptsim.comparison import concept_similarity
from conceptsim.comparison.similarity import SegAccumulator, cls_similarity, int8_gram, iou_from_counts, set_iou


def stream(logits: np.ndarray, chunk: int, workers: int = 1) -> dict:
    """Feed ``N x L x K x gh x gw`` logits to a SegAccumulator ``chunk`` images at a time."""
    n, L, K, gh, gw = logits.shape
    acc = SegAccumulator(L, K, (gh, gw), workers=workers)
    for s in range(0, n, chunk):
        block = torch.from_numpy(logits[s : s + chunk]).permute(1, 2, 0, 3, 4).contiguous()
        acc.update(block)
    return acc.results()


def test_set_iou_identical_disjoint_symmetric():
    rng = np.random.default_rng(0)
    a = rng.random((5, 8, 8)) > 0.6
    b = rng.random((5, 8, 8)) > 0.3
    assert set_iou(a, a) == 1.0
    assert set_iou(a, ~a) == 0.0
    assert set_iou(a, b) == set_iou(b, a)
    assert np.isnan(set_iou(np.zeros(4), np.zeros(4)))


def test_streamed_seg_matches_brute_force_and_is_chunk_invariant():
    rng = np.random.default_rng(1)
    n, L, K, gh, gw = 11, 5, 3, 6, 7
    logits = rng.normal(0.0, 2.0, (n, L, K, gh, gw)).astype(np.float32)
    logits[:, 1] = logits[:, 0]  # layer 1 identical to layer 0
    logits[:, 2] = -logits[:, 0]  # layer 2 the complement of layer 0 (disjoint)
    logits[:, 4, 1] = -5.0  # layer 4 predicts nothing for concept 1
    res = stream(logits, 3)
    binar = logits > 0
    soft = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    for k in range(K):
        for a in range(L):
            for b in range(L):
                ref = set_iou(binar[:, a, k], binar[:, b, k])
                np.testing.assert_equal(res["seg"][k, a, b], ref) if np.isnan(ref) else None
                if not np.isnan(ref):
                    assert res["seg"][k, a, b] == pytest.approx(ref, abs=1e-12)
                sa, sb = soft[:, a, k].ravel(), soft[:, b, k].ravel()
                if sa.std() > 1e-6 and sb.std() > 1e-6:
                    assert res["seg_pearson"][k, a, b] == pytest.approx(np.corrcoef(sa, sb)[0, 1], abs=2e-3)
    assert np.all(res["seg"][:, 0, 1] == 1.0)
    assert np.all(res["seg"][:, 0, 2] == 0.0)
    np.testing.assert_array_equal(res["seg"], res["seg"].transpose(0, 2, 1))
    assert np.isnan(res["seg_pearson"][1, 4, 0])  # constant soft mask: correlation undefined
    assert res["seg"][1, 4, 0] == 0.0  # empty vs non-empty: IoU 0
    again = stream(logits, 1)
    np.testing.assert_array_equal(np.nan_to_num(again["seg"], nan=-1), np.nan_to_num(res["seg"], nan=-1))
    np.testing.assert_array_equal(np.nan_to_num(again["seg_control"], nan=-1), np.nan_to_num(res["seg_control"], nan=-1))


def test_seg_control_is_the_permutation_expectation():
    rng = np.random.default_rng(2)
    n, L, K, gh, gw = 12, 2, 1, 5, 5
    logits = rng.normal(0.3, 1.0, (n, L, K, gh, gw)).astype(np.float32)
    res = stream(logits, 4)
    a, b = logits[:, 0, 0] > 0, logits[:, 1, 0] > 0
    inter = [np.logical_and(a, b[rng.permutation(n)]).sum() for _ in range(4000)]
    e = np.mean(inter)
    expected = e / (a.sum() + b.sum() - e)
    assert res["seg_control"][0, 0, 1] == pytest.approx(expected, rel=0.01)


def test_cls_similarity_pearson_and_jaccard():
    rng = np.random.default_rng(3)
    L, N, K = 4, 30, 2
    z = rng.normal(size=(L, N, K))
    z[1] = 3.0 * z[0] + 1.0  # affine copy: Pearson 1
    out = cls_similarity(z, np.random.default_rng(0))
    for k in range(K):
        np.testing.assert_allclose(out["cls"][k], np.corrcoef(z[:, :, k]), atol=1e-12)
        pos = z[:, :, k] > 0
        for a in range(L):
            for b in range(L):
                assert out["cls_jaccard"][k, a, b] == pytest.approx(set_iou(pos[a], pos[b]))
    assert out["cls"][0, 0, 1] == pytest.approx(1.0)
    assert np.all(np.abs(out["cls_control"]) < 0.7)
    np.testing.assert_allclose(out["cls_control"], out["cls_control"].transpose(0, 2, 1))


def test_iou_from_counts_empty_union_is_nan():
    r = iou_from_counts(np.array([[0.0, 0.0], [0.0, 3.0]]), np.array([0.0, 3.0]))
    assert np.isnan(r[0, 0]) and r[0, 1] == 0.0 and r[1, 1] == 1.0


def test_concept_vs_cka_agreement():
    import pandas as pd

    from conceptsim.comparison.similarity import concept_vs_cka

    rows = []
    layers = ["l1", "l2", "l3", "l4"]
    for i, a in enumerate(layers):
        for j, b in enumerate(layers[i:], start=i):
            cka = 1.0 - 0.2 * (j - i)
            rows.append(dict(concept="", method="cka", model_a="m", layer_a=a, model_b="m", layer_b=b, value=cka))
            for c, off in (("red", 0.0), ("blue", 0.1)):
                rows.append(dict(concept=c, method="seg", model_a="m", layer_a=a, model_b="m", layer_b=b,
                                 value=cka - 0.3 - off))
    out = concept_vs_cka(pd.DataFrame(rows))
    assert len(out) == 1 and out["n_pairs"].iloc[0] == 6  # the diagonal is left out
    assert out["spearman"].iloc[0] == pytest.approx(1.0)  # same ordering
    assert out["mean_cka"].iloc[0] - out["mean_concept"].iloc[0] == pytest.approx(0.35)


def test_concept_means_are_over_the_concepts_represented_in_both_layers():
    """Layer-level similarity (methods.md) is the mean over the concepts represented in both layers: an
    unrepresented concept's row changes neither concept_vs_cka nor figures.matrix; label-free rows (flag empty)
    and results without the column are averaged as before; a matrix with no represented concept is empty."""
    import pandas as pd

    from conceptsim.comparison import figures
    from conceptsim.comparison.similarity import concept_vs_cka

    rows = []
    layers = [("l1", 0.25), ("l2", 0.5), ("l3", 0.75), ("l4", 1.0)]
    for i, (a, da) in enumerate(layers):
        for b, db in layers[i:]:
            pair = dict(model_a="m", layer_a=a, depth_a=da, model_b="m", layer_b=b, depth_b=db)
            rows.append(dict(concept="", method="cka", value=1.0 - (db - da), represented="", **pair))
            rows.append(dict(concept="red", method="seg", value=0.6, represented="True", **pair))
            rows.append(dict(concept="blue", method="seg", value=0.0, represented="False", **pair))  # not represented
    sim = pd.DataFrame(rows)
    out = concept_vs_cka(sim)
    assert out["mean_concept"].iloc[0] == pytest.approx(0.6)  # blue's 0.0 left out
    values, _, _ = figures.matrix(sim, "m", "m", "seg")
    np.testing.assert_allclose(values, 0.6)
    read_back = sim.assign(represented=sim["represented"].map({"True": True, "False": False, "": np.nan}))
    np.testing.assert_allclose(figures.matrix(read_back, "m", "m", "seg")[0], 0.6)  # booleans, as read from the CSV
    assert np.isfinite(figures.matrix(sim, "m", "m", "cka")[0]).all()  # label-free rows: no flag, all averaged
    old = sim.drop(columns="represented")  # results written before the column
    assert concept_vs_cka(old)["mean_concept"].iloc[0] == pytest.approx(0.3)
    np.testing.assert_allclose(figures.matrix(old, "m", "m", "seg")[0], 0.3)
    none = sim.assign(represented=sim["represented"].replace("True", "False"))
    assert figures.matrix(none, "m", "m", "seg")[0].size == 0  # an empty panel
    assert concept_vs_cka(none).empty


def test_streamed_seg_is_identical_with_two_workers():
    rng = np.random.default_rng(3)
    logits = rng.normal(0.0, 2.0, (9, 4, 5, 6, 7)).astype(np.float32)
    one, two = stream(logits, 4), stream(logits, 4, workers=2)
    for key in one:
        np.testing.assert_array_equal(one[key], two[key])


def test_streamed_stage_metrics_equal_the_reference_concept_similarity():
    """The stage's streamed Gram products give, for every layer pair and concept, what the one-pair
    reference ``concept_similarity`` gives (soft-mask Pearson within its quantisation bound)."""
    rng = np.random.default_rng(7)
    n, L, K, gh, gw = 9, 4, 2, 5, 6
    seg = rng.normal(0.0, 2.0, (n, L, K, gh, gw)).astype(np.float32)
    seg[:, 3, 0] = seg[:, 1, 0]
    res = stream(seg, 4)
    cls_logits = rng.normal(0.0, 1.0, (L, 30, K))
    cls = cls_similarity(cls_logits, np.random.default_rng(0))
    for k in range(K):
        for a in range(L):
            for b in range(L):
                ref = concept_similarity(seg[:, a, k], seg[:, b, k], "seg")
                assert res["seg"][k, a, b] == pytest.approx(ref, abs=1e-12)
                ref = concept_similarity(seg[:, a, k], seg[:, b, k], "seg_pearson")
                assert res["seg_pearson"][k, a, b] == pytest.approx(ref, abs=2e-3)
                for method in ("cls", "cls_jaccard"):
                    ref = concept_similarity(cls_logits[a, :, k], cls_logits[b, :, k], method)
                    assert cls[method][k, a, b] == pytest.approx(ref, abs=1e-9)
    assert res["seg"][0, 1, 3] == 1.0


def test_concept_similarity_rejects_bad_input():
    with pytest.raises(ValueError, match="method must be one of"):
        concept_similarity(np.zeros(3), np.zeros(3), "cka")
    with pytest.raises(ValueError, match="same shape"):
        concept_similarity(np.zeros(3), np.zeros(4))
    assert np.isnan(concept_similarity(np.full(5, -1.0), np.full(5, -2.0), "seg"))  # empty union


@pytest.mark.parametrize("high", [2, 128, -128])  # 0/1 masks, quantised soft masks, signed values
@pytest.mark.parametrize("min_float32_cols", [512, 10**9])  # float32 column blocks / the float64 fallback
@pytest.mark.parametrize("native", [False, True])  # floating point / torch._int_mm (int32 sums, column blocks)
def test_int8_gram_is_exact_integer_arithmetic(high, min_float32_cols, native):
    """The floating-point product equals the int64 one to the last unit, across column blocks, for sums far
    beyond float32's exact range (127 * 127 * 100000 > 2**30): float32 blocks short enough to stay exact
    and the float64 path give the same integers."""
    g = torch.Generator().manual_seed(abs(high))
    low, high = (high, 128) if high < 0 else (0, high)
    a = torch.randint(low, high, (5, 100_000), dtype=torch.int8, generator=g)
    b = torch.randint(low, high, (3, 100_000), dtype=torch.int8, generator=g)
    want = a.long() @ b.long().T
    assert torch.equal(int8_gram(a, b, min_float32_cols=min_float32_cols, native=native), want)
    assert torch.equal(int8_gram(a, min_float32_cols=min_float32_cols, native=native), a.long() @ a.long().T)
    out = torch.ones((5, 3), dtype=torch.int64)
    int8_gram(a, b, out=out, max_cols=40_000, min_float32_cols=min_float32_cols, native=native)  # accumulates into out
    assert torch.equal(out, want + 1)
    # a bound the caller knows (no passes to find it) gives the same integers, as does a looser one
    known = max(abs(low), abs(high - 1)) ** 2
    for bound in (known, 4 * known):
        assert torch.equal(int8_gram(a, b, min_float32_cols=min_float32_cols, native=native, bound=bound), want)


def test_oracle_rows_skip_only_the_products_nobody_reads():
    """With ``oracle_rows`` the layer block and the truth/oracle block are exactly the full products."""
    rng = np.random.default_rng(4)
    n, L, K, gh, gw = 9, 7, 2, 5, 6  # rows: 4 layers, the truth (row 4), 2 oracles
    logits = rng.normal(0.0, 2.0, (n, L, K, gh, gw)).astype(np.float32)
    results = []
    for oracle_rows in (0, 2):
        acc = SegAccumulator(L, K, (gh, gw), truth_row=4, moment_rows=4, oracle_rows=oracle_rows)
        for s in range(0, n, 4):
            acc.update(torch.from_numpy(logits[s : s + 4]).permute(1, 2, 0, 3, 4).contiguous())
        results.append(acc.inter.numpy().copy())
    full, split = results
    np.testing.assert_array_equal(split[:, :5, :5], full[:, :5, :5])
    np.testing.assert_array_equal(split[:, 4:, 4:], full[:, 4:, 4:])
    assert not split[:, :4, 5:].any() and full[:, :4, 5:].any()
    with pytest.raises(ValueError, match="truth row"):
        SegAccumulator(L, K, (gh, gw), truth_row=3, oracle_rows=2)


def test_streamed_seg_is_identical_with_native_int8_products_and_without(monkeypatch):
    """The int8 dot-product path (``torch._int_mm``) and the floating-point path give the same accumulators,
    with a truth row, oracle rows and per-image tracking."""
    from conceptsim.comparison import similarity

    rng = np.random.default_rng(5)
    n, L, K, gh, gw = 9, 7, 3, 5, 6
    logits = rng.normal(0.0, 2.0, (n, L, K, gh, gw)).astype(np.float32)
    results = []
    for forced in ("0", "1"):
        monkeypatch.setenv("CONCEPTSIM_INT8_MM", forced)
        similarity.int8_dot_products.cache_clear()
        assert similarity.int8_dot_products() == (forced == "1")
        acc = SegAccumulator(L, K, (gh, gw), truth_row=4, moment_rows=4, oracle_rows=2, track={1: np.array([[0, 2]])})
        for s in range(0, n, 4):
            acc.update(torch.from_numpy(logits[s : s + 4]).permute(1, 2, 0, 3, 4).contiguous())
        results.append((acc.results(), acc.per_image()))
    similarity.int8_dot_products.cache_clear()
    (one, img_one), (two, img_two) = results
    for key in one:
        np.testing.assert_array_equal(one[key], two[key], err_msg=key)
    np.testing.assert_array_equal(img_one[1], img_two[1])
