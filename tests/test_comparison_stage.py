"""The comparison stage end to end on tiny synthetic studies with planted concepts."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conceptsim.comparison.outputs import ComparisonError, StudyOutputs
from conceptsim.comparison.stage import run_comparison_stage
from conceptsim.comparison.synthetic import build_synthetic_study
from conceptsim.data.geometry import input_to_image_grid, resampling_matrices

PEAKS = (0.2, 0.5, 0.85)  # depth at which each planted concept is strongest


def depth_signal(model, i, depth, c):
    if model.endswith(":random"):
        return 0.1
    return float(np.exp(-(((depth - PEAKS[c]) / 0.12) ** 2)))


def layers(n):
    grids = (8, 8, 4, 4, 4, 2, 2, 2, 2, 2, 2, 2)
    return [(f"L{i}", (i + 1) / n, grids[i], 5) for i in range(n)]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "ds"
    models = {"deep": layers(10), "shallow": layers(6)}
    models.update({f"{m}:random": v for m, v in list(models.items())})
    build_synthetic_study(root, models, n_images=60, signal=depth_signal, noise=0.5, seed=3)
    out = root / "out"
    paths = run_comparison_stage(root, out, models=list(models), permutations=2000, bootstrap=300, seed=5)
    return root, models, paths


def test_similarity_schema_and_identities(study):
    root, models, paths = study
    df = pd.read_csv(paths["similarity"], keep_default_na=False, na_values=[""])
    for col in ("concept", "category", "method", "model_a", "layer_a", "depth_a", "model_b", "layer_b", "depth_b",
                "value", "control", "n_test"):
        assert col in df.columns
    assert set(df["method"]) == {"seg", "seg_pearson", "cls", "cls_jaccard", "cka", "cka_debiased", "cka_grid4"}
    assert (df["n_test"] == 30).all()
    diag = df[(df.model_a == df.model_b) & (df.layer_a == df.layer_b) & df.value.notna()]
    assert np.allclose(diag["value"], 1.0)
    n_layers = sum(len(v) for v in models.values())
    assert (df["method"] == "cka").sum() == n_layers * (n_layers + 1) // 2
    assert df[df.method == "cka"]["concept"].isna().all()
    assert "deep:random" in set(df["model_a"])
    lay = pd.read_csv(paths["layer_similarity"])
    assert {"n_concepts", "value", "control"} <= set(lay.columns)
    assert lay[lay.method == "seg"]["n_concepts"].max() >= 1


def test_findings_known_answers(study):
    _, _, paths = study
    doc = json.loads(paths["findings"].read_text())
    pairs = {(p["model_a"], p["model_b"]): p for p in doc["pairs"]}
    assert set(pairs) == {("deep", "shallow"), ("deep:random", "shallow:random")}
    trained = pairs[("deep", "shallow")]
    assert trained["kind"] == "trained"
    f1 = trained["finding1"]["seg"]
    assert f1["trained"]["n"] == 3 and f1["twins_available"]
    assert f1["trained"]["mean"] > f1["random_twin"]["mean"] and f1["trained"]["mean"] > f1["control"]["mean"]
    assert f1["holds"] is True
    f2 = trained["finding2"]["seg"]["a_to_b"]
    assert f2["error"] < f2["null_mean"] and f2["p_value"] < 0.05
    assert pairs[("deep:random", "shallow:random")]["finding2"]["seg"]["a_to_b"]["n_matches"] == 0
    em = {(e["model"], e["concept"], e["method"]): e["depth"] for e in doc["emergence"]}
    assert em[("deep", "sky", "seg")] == pytest.approx(0.2)
    assert em[("shallow", "red", "seg")] == pytest.approx(5 / 6)
    assert em[("deep:random", "sky", "seg")] is None


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
