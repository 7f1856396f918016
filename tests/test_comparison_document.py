"""findings.json's content, module by module: the model groups, the layer bookkeeping, the learned-concept
filter and val-selected layer pairs (plan_findings) and the document (findings_document), on a tiny synthetic
study whose concepts are planted at known layers; rounding. Known answers come from what was planted."""

from types import SimpleNamespace

import numpy as np
import pytest

from conceptsim.comparison.document import (
    FINDINGS_SCHEMA,
    PRIMARY,
    bootstrap_groups,
    findings_document,
    layers_by_model,
    model_groups,
    plan_findings,
    rounded,
    same_layers,
)
from conceptsim.comparison.outputs import StudyOutputs
from conceptsim.comparison.stage import compute_similarities, read_quality
from conceptsim.comparison.synthetic import build_synthetic_study

# concept k is planted in layer PEAK_A[k] of model a and PEAK_B[k] of model b (layers L0, L1, L2); b lacks "red"
PEAK_A, PEAK_B = (0, 2, 1), (1, 0, None)
CONCEPTS = ("sky", "dog", "red")
MODELS = ["a", "b", "a:random", "b:random"]


def planted(model, i, depth, c):
    peak = (PEAK_A if model.startswith("a") else PEAK_B)[c]
    if ":random" in model or peak is None:
        return 0.0
    return 2.0 if i == peak else 0.0


def shared(model, i, depth, c):
    """The trained models share part of their errors where the concept is planted (agreement beyond accuracy)."""
    return 0.6 * planted(model, i, depth, c) / 2.0


def layer_list(n=3):
    return [(f"L{i}", (i + 1) / n, 4, 5) for i in range(n)]


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    root = tmp_path_factory.mktemp("document") / "ds"
    build_synthetic_study(root, {m: layer_list() for m in MODELS}, n_images=64, signal=planted, shared=shared,
                          noise=0.4, seed=5, concepts=tuple((c, "object" if c == "dog" else "scene") for c in CONCEPTS))
    so = StudyOutputs(root, MODELS, truth=True, oracles=True)
    so_val = StudyOutputs(root, MODELS, split="val", truth=True, oracles=True)
    select = compute_similarities(so_val, seed=0, grid4=False, cka=False, image_quality=True)
    quality = read_quality(so)
    plans, track = plan_findings(so, quality, select, so_val, seed=0)
    return SimpleNamespace(root=root, so=so, so_val=so_val, select=select, quality=quality, plans=plans, track=track)


def index_of(so, model, layer):
    return next(pl.index for pl in so.layers if pl.model == model and pl.layer == layer)


# ----------------------------------------------------------------------------------------------- bookkeeping
def test_model_groups_put_twins_under_their_architecture_and_leave_out_the_pixels_floor():
    groups = model_groups(["a", "a:random", "a:random@7", "b:random", "pixels"])
    assert groups == {"a": {"trained": "a", "twins": {0: "a:random", 7: "a:random@7"}},
                      "b": {"trained": None, "twins": {0: "b:random"}}}


def test_layer_bookkeeping_by_model_and_by_name():
    layers = [SimpleNamespace(model=m, layer=name, index=i) for i, (m, name) in
              enumerate([("a", "x"), ("a", "y"), ("a:random", "y"), ("a:random", "x"), ("b", "x")])]
    so = SimpleNamespace(layers=layers, models=["a", "a:random", "b"])
    assert {m: v.tolist() for m, v in layers_by_model(so).items()} == {"a": [0, 1], "a:random": [2, 3], "b": [4]}
    assert same_layers(so, "a", "a:random").tolist() == [3, 2]  # the twin's x, then its y: a's order
    with pytest.raises(ValueError, match=r"'b' does not probe the layers of 'a' \('y' missing\)"):
        same_layers(so, "a", "b")


def test_bootstrap_groups_follow_the_store_and_default_to_one_group_per_image():
    store = SimpleNamespace(attrs={"bootstrap_groups": {"1": "photo-7", "2": "photo-7"}})
    so = SimpleNamespace(stores=[store], image_ids=np.array([1, 2, 3]))
    assert bootstrap_groups(so).tolist() == ["photo-7", "photo-7", "image-3"]
    assert bootstrap_groups(SimpleNamespace(stores=[SimpleNamespace(attrs={})], image_ids=np.array([1]))) is None


def test_rounded_rounds_floats_at_any_depth_and_leaves_the_rest():
    doc = {"a": [0.1 + 0.2, 2, "x", None, True], "b": {"c": 1.23456789012345, "d": (0.1 + 0.2,)}}
    assert rounded(doc) == {"a": [0.3, 2, "x", None, True], "b": {"c": 1.2345678901, "d": (0.1 + 0.2,)}}
    assert rounded(2 / 3, 3) == 0.667


# ----------------------------------------------------------------------------------------------- plan_findings
def test_plan_picks_the_planted_layer_pair_and_reads_the_twins_there(planned):
    so, plans, track = planned.so, planned.plans, planned.track
    assert [(p.model_a, p.model_b, p.method, p.seeds) for p in plans] == [("a", "b", "seg", [0]), ("a", "b", "cls", [0])]
    seg = plans[0]
    assert seg.concepts == [0, 1]  # red is not planted in b: it fails the learned-concept filter there
    assert seg.learned[CONCEPTS[2]]["a"].learned and not seg.learned[CONCEPTS[2]]["b"].learned
    for k in seg.concepts:
        a, b = f"L{PEAK_A[k]}", f"L{PEAK_B[k]}"
        assert tuple(seg.trained[k]) == (index_of(so, "a", a), index_of(so, "b", b))
        assert seg.twins[k] == [(index_of(so, "a:random", a), index_of(so, "b:random", b))]
        # the test pass follows the trained pair and the twins' pair per image
        assert [tuple(p) for p in track[k]] == [tuple(seg.trained[k]), seg.twins[k][0]]
    assert sorted(track) == seg.concepts


def test_an_excluded_model_enters_no_plan(planned):
    plans, track = plan_findings(planned.so, planned.quality, dict(planned.select), planned.so_val, seed=0,
                                 excluded={"b": "declared without weights"})
    assert plans == [] and track == {}


# ----------------------------------------------------------------------------------------------- findings_document
def document(planned, excluded=None):
    so = planned.so
    plans, track = (planned.plans, planned.track) if excluded is None else plan_findings(
        so, planned.quality, dict(planned.select), planned.so_val, seed=0, excluded=excluded)
    sims = compute_similarities(so, seed=0, grid4=False, track=track)
    sims["seg_track"] = track
    return findings_document(so, sims, planned.select, planned.quality, plans, seed=0, permutations=200, bootstrap=200,
                             n_val=len(planned.so_val.image_ids), excluded=excluded)


def test_document_structure_families_and_emergence(planned):
    so = planned.so
    doc = document(planned)
    assert doc["schema"] == FINDINGS_SCHEMA and doc["dataset"] == "ds" and doc["models"] == MODELS
    assert doc["pixels"] is None and doc["excluded_from_findings"] == {} and doc["primary"] == PRIMARY
    assert doc["concepts"] == list(CONCEPTS) and doc["n_test"] == len(so.image_ids) == so.n_test
    assert doc["n_val"] == len(planned.so_val.image_ids) and doc["selected_on"] == "val"
    (pair,) = doc["pairs"]
    assert (pair["model_a"], pair["model_b"], pair["twins_a"], pair["twins_b"]) == ("a", "b", ["a:random"], ["b:random"])
    assert pair["family"] == "ds: a vs b" and set(pair["finding1"]) == set(pair["finding2"]) == {"seg", "cls"}
    # Holm over the pair's testable primary tests: finding 1 and the three finding-2 components, both methods
    tests = [pair["finding1"][m]["test"] for m in ("seg", "cls")]
    tests += [pair["finding2"][m][part] for m in ("seg", "cls") for part in ("aligned", "beyond_resolution", "from_training")]
    testable = [t for t in tests if t["verdict"] != "not testable here"]
    assert pair["family_size"] == doc["family_size"] == len(testable) and all(t["family_size"] == len(testable) for t in tests)
    assert all(t["p_holm"] >= t["p_value"] for t in testable)
    # fewer than 3 concepts pass the filter: finding 1 is not testable, and says why
    assert pair["finding1"]["seg"]["test"]["verdict"] == "not testable here"
    # image-level outputs have no resolution: the oracle test is not testable for cls
    assert pair["finding2"]["cls"]["beyond_resolution"]["verdict"] == "not testable here"
    # emergence: one row per model, method and concept; a planted concept emerges at its layer's depth
    assert len(doc["emergence"]) == len(MODELS) * 2 * len(CONCEPTS)
    em = {(r["model"], r["concept"], r["method"]): r for r in doc["emergence"]}
    for k, c in enumerate(CONCEPTS):
        assert em[("a", c, "seg")]["layer"] == f"L{PEAK_A[k]}" and em[("a", c, "seg")]["depth"] == pytest.approx((PEAK_A[k] + 1) / 3)
    assert em[("b", "red", "seg")]["represented_any"] is False and em[("b", "red", "seg")]["depth"] is None


def test_document_is_the_same_for_the_same_seed_and_leaves_excluded_models_out(planned):
    assert document(planned) == document(planned)
    doc = document(planned, excluded={"b": "declared without weights"})
    assert doc["pairs"] == [] and doc["family_size"] == 0
    assert doc["excluded_from_findings"] == {"b": "declared without weights"}
    assert len(doc["emergence"]) == len(MODELS) * 2 * len(CONCEPTS)  # emergence still describes every model
