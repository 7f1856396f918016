"""The comparison stage end to end on tiny synthetic studies with planted concepts."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conceptsim.comparison.outputs import ComparisonError, StudyOutputs, native_oracle, oracle_masks
from conceptsim.comparison.stage import run_comparison_stage
from conceptsim.comparison.synthetic import build_synthetic_study
from conceptsim.data.geometry import input_to_image_grid, resampling_matrices

PEAKS = (0.2, 0.5, 0.85)  # depth at which each planted concept is strongest


def depth_signal(model, i, depth, c):
    if ":random" in model:
        return 0.1
    return float(np.exp(-(((depth - PEAKS[c]) / 0.12) ** 2)))


def trained_share(model, i, depth, c):
    """Trained models share part of their errors (planted agreement beyond accuracy); twins do not."""
    return 0.0 if ":random" in model else 0.4 * depth_signal(model, i, depth, c)


def layers(n, grids=(8, 8, 4, 4, 4, 2, 2, 2, 2, 2, 2, 2)):
    return [(f"L{i}", (i + 1) / n, grids[i], 5) for i in range(n)]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "ds"
    # one grid for every layer: the resolution-only oracle cannot tell depths apart
    models = {"deep": layers(10, (4,) * 10), "shallow": layers(6, (4,) * 6)}
    models.update({f"{m}:random": v for m, v in list(models.items())})
    build_synthetic_study(root, models, n_images=80, signal=depth_signal, shared=trained_share, noise=0.5, seed=3)
    out = root / "out"
    paths = run_comparison_stage(root, out, models=list(models), permutations=2000, bootstrap=300, seed=5)
    return root, models, paths


def test_similarity_schema_and_identities(study):
    root, models, paths = study
    df = pd.read_csv(paths["similarity"], keep_default_na=False, na_values=[""])
    for col in ("concept", "category", "method", "model_a", "layer_a", "depth_a", "model_b", "layer_b", "depth_b",
                "value", "control", "n_test"):
        assert col in df.columns
    assert set(df["method"]) == {"seg", "seg_kappa", "seg_kappa_max", "seg_obs_exp", "seg_pearson", "cls", "cls_partial",
                                 "cls_jaccard", "cka", "cka_debiased", "cka_grid4", "units_bb", "units_bb_corr"}
    assert (df["n_test"] == 40).all()
    diag = df[(df.model_a == df.model_b) & (df.layer_a == df.layer_b) & df.value.notna() & (df.method != "seg_obs_exp")]
    assert np.allclose(diag["value"], 1.0)
    n_layers = sum(len(v) for v in models.values())
    # every layer pair but a trained model's against the other architecture's twin (10 x 6 layers, twice)
    assert (df["method"] == "cka").sum() == n_layers * (n_layers + 1) // 2 - 2 * 10 * 6
    pairs = set(zip(df["model_a"], df["model_b"]))
    assert ("deep", "shallow") in pairs and ("deep:random", "shallow:random") in pairs and ("deep", "deep:random") in pairs
    assert not pairs & {("deep", "shallow:random"), ("shallow", "deep:random"), ("deep:random", "shallow")}
    assert df[df.method == "cka"]["concept"].isna().all()
    assert "deep:random" in set(df["model_a"])
    lay = pd.read_csv(paths["layer_similarity"])
    assert {"n_concepts", "value", "control"} <= set(lay.columns)
    assert lay[lay.method == "seg"]["n_concepts"].max() >= 1


def test_findings_known_answers(study):
    _, _, paths = study
    doc = json.loads(paths["findings"].read_text())
    assert doc["schema"] == 3 and doc["selected_on"] == "val" and doc["n_val"] == 20
    pairs = {(p["model_a"], p["model_b"]): p for p in doc["pairs"]}
    assert set(pairs) == {("deep", "shallow")}  # one entry per trained pair; the twins sit inside it
    trained = pairs[("deep", "shallow")]
    assert trained["twins_a"] == ["deep:random"] and trained["twins_b"] == ["shallow:random"]
    f1 = trained["finding1"]["seg"]
    assert f1["selected_on"] == "val" and f1["method"] == "seg_kappa"
    assert f1["n_learned"] == 3 and f1["test"]["n"] == 3
    # planted shared errors in the trained models only: trained agree beyond accuracy, twins do not
    assert f1["trained_mean"] > 0.12 and abs(f1["twin_mean"]) < 0.1
    t1 = f1["test"]
    # three concepts: a t interval with 2 degrees of freedom is wide; the effect is there, the verdict honest
    assert t1["effect"] > 0.1 and t1["p_value"] < 0.05 and t1["p_holm"] >= t1["p_value"]
    assert t1["verdict"] in ("supported", "inconclusive") and t1["ci_high"] > 0.05
    assert t1["family"] == "ds: deep vs shallow" and t1["family_size"] == trained["family_size"] and t1["mde"] > 0
    # the twins are read at the trained pair's layers (same names)
    sel = {r["concept"]: (r["layer_a"], r["layer_b"]) for r in f1["per_concept"]}
    assert sel["sky"] == ("deep/L1", "shallow/L0") and sel["red"][0] in ("deep/L7", "deep/L8")
    assert f1["depth_profile"]["trained"] and len(f1["depth_profile"]["bins"]) == 6
    f2 = trained["finding2"]["seg"]
    aligned = f2["aligned"]
    assert f2["error"] < f2["null_mean"] and aligned["p_value"] < 0.05 and aligned["effect"] > 0
    # one grid everywhere: the oracle matches every layer equally, so its error is far from the trained one
    assert f2["oracle_error"] > f2["error"] + 0.1 and f2["beyond_resolution"]["effect"] > 0.1
    assert f2["from_training"]["verdict"] == "not testable here"  # the twins represent nothing here
    assert f2["predictors"]["best"] == "relative_depth"
    testable = [t for t in [f["test"] for f in trained["finding1"].values()] +
                [f[c] for f in trained["finding2"].values() for c in ("aligned", "beyond_resolution", "from_training")]
                if t["verdict"] != "not testable here"]
    assert trained["family_size"] == len(testable)
    em = {(e["model"], e["concept"], e["method"]): e for e in doc["emergence"]}
    assert em[("deep", "sky", "seg")]["depth"] == pytest.approx(0.2)
    assert em[("deep", "sky", "seg")]["selected_on"] == "val"
    assert em[("shallow", "red", "seg")]["depth"] == pytest.approx(5 / 6)
    assert em[("deep:random", "sky", "seg")]["depth"] is None


def test_twins_as_good_as_trained_is_not_testable(tmp_path):
    root = tmp_path / "ds"
    spec = {"a": layers(3, (4, 4, 4)), "b": layers(3, (4, 4, 4))}
    spec.update({f"{m}:random": v for m, v in list(spec.items())})
    build_synthetic_study(root, spec, n_images=24, seed=1)  # the same signal everywhere, twins included
    paths = run_comparison_stage(root, tmp_path / "out", models=list(spec), permutations=100, bootstrap=50)
    f1 = json.loads(paths["findings"].read_text())["pairs"][0]["finding1"]["seg"]
    assert f1["test"]["verdict"] == "not testable here" and f1["n_learned"] == 0
    assert "learned-concept filter" in f1["test"]["reason"]
    assert not any(v["a"]["learned"] and v["b"]["learned"] for v in f1["learned"].values())


def test_reuse_only_with_the_same_concept_stages_and_parameters(tmp_path):
    from conceptsim.paths import concept_stage_json, model_dir_name

    root = tmp_path / "ds"
    spec = {"a": layers(2, (4, 4)), "b": layers(2, (4, 4))}
    build_synthetic_study(root, spec, n_images=24, seed=1)
    args = dict(models=list(spec), permutations=50, bootstrap=20)
    first = run_comparison_stage(root, tmp_path / "out", reuse=True, **args)
    stamp = first["findings"].stat().st_mtime_ns
    # without the concept stages' records there is nothing to be sure of: computed again
    assert run_comparison_stage(root, tmp_path / "out", reuse=True, **args)["findings"].stat().st_mtime_ns != stamp
    for m in spec:
        concept_stage_json(root / model_dir_name(m)).write_text(json.dumps({"identity": f"concepts-of-{m}"}))
    first = run_comparison_stage(root, tmp_path / "out", reuse=True, **args)
    stamp = {k: p.stat().st_mtime_ns for k, p in first.items()}
    again = run_comparison_stage(root, tmp_path / "out", reuse=True, **args)
    assert again == first and {k: p.stat().st_mtime_ns for k, p in again.items()} == stamp
    concept_stage_json(root / "b").write_text(json.dumps({"identity": "concepts-of-b, recomputed"}))
    assert run_comparison_stage(root, tmp_path / "out", reuse=True, **args)["findings"].stat().st_mtime_ns != stamp["findings"]
    stamp = first["findings"].stat().st_mtime_ns
    assert run_comparison_stage(root, tmp_path / "out", reuse=True, **{**args, "seed": 1})["findings"].stat().st_mtime_ns != stamp


def test_resolution_only_alignment_is_not_counted(tmp_path):
    """Flat concept signal, grids that shrink with depth: matches follow the grid, like the oracle's."""
    root = tmp_path / "ds"
    spec = {"a": layers(6, (16, 16, 8, 8, 4, 4)), "b": layers(4, (16, 8, 4, 4))}
    build_synthetic_study(root, spec, n_images=40, eval_grid=(16, 16), noise=0.8, seed=2)
    paths = run_comparison_stage(root, tmp_path / "out", models=list(spec), permutations=300, bootstrap=200)
    f2 = json.loads(paths["findings"].read_text())["pairs"][0]["finding2"]["seg"]
    assert f2["beyond_resolution"]["verdict"] != "supported"


def test_same_seed_same_files(study, tmp_path):
    root, models, paths = study
    again = run_comparison_stage(root, tmp_path, models=list(models), permutations=2000, bootstrap=300, seed=5,
                                 chunk_images=3)
    for key in paths:
        assert again[key].read_bytes() == paths[key].read_bytes(), key


def test_outputs_match_reference_geometry(study):
    root, models, _ = study
    so = StudyOutputs(root, ["deep"], cls=False)
    chunk = next(so.iter_chunks(2))
    li = 0
    acts = so.layer_activations(li, so.rows[chunk.rows])
    logits = so.seg_probes[li].maps(acts)
    boxes = torch.from_numpy(so.stores[0].content_boxes[so.rows[chunk.rows]])
    ref = input_to_image_grid(logits, boxes, so.stores[0].input_size, so.eval_grid)
    torch.testing.assert_close(chunk.seg[li].transpose(0, 1), ref, atol=1e-4, rtol=1e-4)


def test_chunk_oracles_equal_each_concepts_own_oracle(tmp_path):
    """The chunk's oracle masks (all concepts and images in one pooling) are each concept's own
    :func:`native_oracle` thresholded at 0.5, on grids coarser than, equal to and finer than the evaluation
    grid; :meth:`OutputChunk.oracle_map` writes their sign."""
    root = tmp_path / "ds"
    models = {"m": [("L0", 0.3, 8, 5), ("L1", 0.6, 3, 5), ("L2", 0.9, 2, 5)]}
    build_synthetic_study(root, models, n_images=30, signal=depth_signal, noise=0.5, seed=1)
    so = StudyOutputs(root, ["m"], cls=False, truth=True, oracles=True)
    assert len(so.oracles) >= 2
    chunk = next(so.iter_chunks(7))
    buf = torch.empty(len(chunk.rows) * so.eval_grid[0] * so.eval_grid[1])
    for oi, (_, _, cells) in enumerate(so.oracles):
        for k in range(len(so.concepts)):
            own = native_oracle(chunk.truth[k], cells)
            assert torch.equal(chunk.oracles[oi, k], own >= 0)
            assert chunk.oracle_map(oi, k, buf)
            assert torch.equal(buf >= 0, (own >= 0).reshape(-1))
    assert chunk.oracles.any() and not chunk.oracles.all()
    # more cells than the grid: the truth itself
    assert torch.equal(oracle_masks(chunk.truth, (99, 99)), chunk.truth.bool())


def test_resampling_matrices_letterbox_boxes():
    boxes = torch.tensor([[4.0, 0.0, 28.0, 32.0], [0.0, 6.0, 32.0, 26.0]])
    x = torch.randn(2, 3, 5, 6)
    ry, rx = resampling_matrices(boxes, (32, 32), (5, 6), (9, 11))
    fast = torch.einsum("nip,nkpq,njq->nkij", ry, x, rx)
    torch.testing.assert_close(fast, input_to_image_grid(x, boxes, (32, 32), (9, 11)), atol=1e-5, rtol=1e-5)


def test_mismatched_test_images_are_refused(tmp_path):
    spec = {"a": layers(3)}
    build_synthetic_study(tmp_path / "ds", spec, n_images=10, seed=0)
    build_synthetic_study(tmp_path / "other", {"b": layers(3)}, n_images=10, seed=0, image_ids=np.arange(10) + 100)
    (tmp_path / "other" / "b").rename(tmp_path / "ds" / "b")
    with pytest.raises(ComparisonError, match="do not share the same test images"):
        StudyOutputs(tmp_path / "ds", ["a", "b"])


def test_missing_inputs_are_clear(tmp_path):
    build_synthetic_study(tmp_path / "ds", {"a": layers(2)}, n_images=10, seed=0)
    with pytest.raises(ComparisonError, match="does not exist"):
        StudyOutputs(tmp_path / "ds", ["a", "nope"])
    (tmp_path / "ds" / "a" / "vectors" / "cls_L1.npz").unlink()
    with pytest.raises(ComparisonError, match="run the concept stage"):
        StudyOutputs(tmp_path / "ds", ["a"])


def test_positive_control_recovers_shared_blocks(tmp_path):
    """Models named like the registry's shared-backbone pair: matches of corresponding blocks are counted."""
    root = tmp_path / "ds"
    spec = {"ssd_mobilenet_v2_coco": [("blocks.0", 0.15, 4, 5), ("blocks.5", 0.5, 4, 5), ("blocks.12", 0.85, 4, 5)],
            "mobilenet_v2_imagenet": [("features.1", 0.2, 4, 5), ("features.6", 0.5, 4, 5), ("features.13", 0.8, 4, 5)]}
    build_synthetic_study(root, spec, n_images=40, signal=lambda m, i, d, c: 1.0, noise=0.5, seed=4,
                          shared=lambda m, i, d, c: float(np.exp(-(((d - PEAKS[c]) / 0.12) ** 2))))
    paths = run_comparison_stage(root, tmp_path / "out", models=list(spec), permutations=100, bootstrap=50)
    doc = json.loads(paths["findings"].read_text())
    ctl = {c["method"]: c for c in doc["positive_control"]}
    seg = ctl["seg_kappa"]
    assert seg["corresponding"] == {"blocks.0": "features.1", "blocks.5": "features.6", "blocks.12": "features.13"}
    assert seg["selected_on"] == "val" and seg["n"] == 18 and seg["chance"] == pytest.approx(1 / 3)
    # hit rates per source layer, in both directions, each named with its corresponding block
    assert set(seg["per_layer"]) == {"blocks.0 ~ features.1", "blocks.5 ~ features.6", "blocks.12 ~ features.13",
                                     "features.1 ~ blocks.0", "features.6 ~ blocks.5", "features.13 ~ blocks.12"}
    assert seg["rate"] > 0.6 and seg["p_value"] is not None
    # three corresponding blocks are too few for the control to answer
    assert seg["passed"] is None and "at least 5" in seg["reason"]
    # no twins in this study: finding 1 cannot be tested, and says so
    assert doc["pairs"][0]["finding1"]["seg"]["test"]["verdict"] == "not testable here"


def test_a_model_without_weights_is_left_out_of_the_findings_with_its_reason(tmp_path):
    root = tmp_path / "study" / "ds"
    spec = {"a": layers(2, (4, 4)), "b": layers(2, (4, 4))}
    build_synthetic_study(root, spec, n_images=24, seed=1)
    (root.parent / "models.json").write_text(json.dumps({"models": {
        "a": {"in_finding1": True}, "b": {"in_finding1": False, "label": "random init (no weights)",
                                          "exclusion_reason": "declared without weights: a random network"}}}))
    paths = run_comparison_stage(root, tmp_path / "out", models=list(spec), permutations=50, bootstrap=20)
    doc = json.loads(paths["findings"].read_text())
    assert doc["pairs"] == [] and doc["excluded_from_findings"] == {"b": "declared without weights: a random network"}


def test_excluded_models_read_the_study_listing(tmp_path):
    """models.json beside the dataset folder: models not in finding 1, with their reason (else their label);
    no listing: none excluded; a file that is no listing: an error naming it."""
    from conceptsim.comparison.stage import excluded_models

    dataset_dir = tmp_path / "study" / "ds"
    dataset_dir.mkdir(parents=True)
    assert excluded_models(dataset_dir) == {}
    listing = tmp_path / "study" / "models.json"
    listing.write_text(json.dumps({"schema": 1, "models": {
        "mine": {"in_finding1": False, "exclusion_reason": "declared without weights", "label": "random init (no weights)"},
        "theirs": {"in_finding1": False, "label": "random init (no weights)"},
        "trained": {"in_finding1": True, "exclusion_reason": None}, "old": {}}}))
    assert excluded_models(dataset_dir) == {"mine": "declared without weights", "theirs": "random init (no weights)"}
    listing.write_text(json.dumps({"models_of": {}}))
    with pytest.raises(ComparisonError, match=r"models.json is not a model listing"):
        excluded_models(dataset_dir)


def test_label_free_pass_started_early_gives_the_same_matrices(study):
    """The stage starts the grid-4 pass (grid-4 CKA, unit matching) before the other passes; handed to
    compute_similarities it gives the matrices of the pass compute_similarities starts itself."""
    from concurrent.futures import ThreadPoolExecutor

    from conceptsim.comparison.stage import compute_similarities, start_label_free
    from conceptsim.comparison.units import UNIT_MATRICES

    root, models, _ = study
    so = StudyOutputs(root, list(models), truth=True, oracles=True)
    own = compute_similarities(so, seed=5)
    with ThreadPoolExecutor(1) as pool:
        early = start_label_free(pool, so, seed=5)
        joined = compute_similarities(so, seed=5, grid4=False, label_free=early)
    without = compute_similarities(so, seed=5, grid4=False)
    assert "cka_grid4" not in without and "units_bb" not in without
    for key in ("cka_grid4", "cka", "seg", "cls", *UNIT_MATRICES):
        np.testing.assert_array_equal(joined[key], own[key], err_msg=key)
    assert np.isfinite(own["units_bb"]).any()
