"""The public API: a tiny study run from Python and read back through ``conceptsim`` only, and the
measures on arrays a user brings (known answers)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import conceptsim
from formats import write_coco

STUDY = """\
name: tiny-api
datasets:
  my_data:
    coco: {images: data/images, annotations: data/annotations/instances.json}
    concepts: {person: [person], wheeled: [car, bus], pet: [dog, cat]}
    concept_categories: {person: object, wheeled: object, pet: object}
models:
  - net: {torchvision: resnet18, input_size: 32, weights: net.pth}
  - net:random
layers: {net: [layer1, layer3], "net:random": [layer1, layer3]}
device: cpu
split: {fractions: [0.5, 0.25, 0.25], seed: 0, min_area: 0.005}
extraction: {batch_size: 4, grid_cap: 8, eval_grid: 16, max_layers: 2}
concepts: {epochs: 2, patience: 1, bootstrap: 20, dissection: true}
comparison: {permutations: 20, bootstrap: 20}
"""


# ----------------------------------------------------------------------------- measures on user arrays
def test_concept_agreement_known_answers():
    truth = np.zeros(10, bool)
    truth[:4] = True
    a = np.where(np.isin(np.arange(10), [0, 1, 2, 5, 6]), 1.0, -1.0)  # 3 true positives, 2 false positives
    b = np.where(np.isin(np.arange(10), [0, 1, 3, 5, 7]), 1.0, -1.0)
    truth, a, b = truth[None], a[None], b[None]  # one image of 10 pixels
    expected = 3 * 3 / 4 + 2 * 2 / 6  # overlap of probes erring independently given the truth
    assert conceptsim.concept_agreement(a, b, truth) == pytest.approx(2 * (3 - expected) / (10 - 2 * expected))
    assert conceptsim.concept_agreement(a, b, truth, "seg_kappa_max") == pytest.approx((3 - expected) / (3 + 2 - expected))
    assert conceptsim.concept_agreement(a, b, truth, "seg_obs_exp") == pytest.approx(3 / expected)
    assert conceptsim.concept_agreement(a, a, truth) == pytest.approx(1.0)
    perfect = truth * 2.0 - 1
    assert conceptsim.concept_agreement(perfect, b, truth) == pytest.approx(0.0)  # B's errors: none shared with A
    assert np.isnan(conceptsim.concept_agreement(perfect, perfect, truth))  # two perfect probes: no error to agree on
    with pytest.raises(ValueError, match="method must be one of"):
        conceptsim.concept_agreement(a, b, truth, "kappa")
    with pytest.raises(ValueError, match="same shape"):
        conceptsim.concept_agreement(a, b[:, :5], truth)


def test_cls_partial_is_the_correlation_of_within_class_residuals():
    rng = np.random.default_rng(0)
    labels = rng.random(40) < 0.4
    za = 2.0 * labels + rng.standard_normal(40)
    zb = -1.0 * labels + 0.5 * za + rng.standard_normal(40)

    def residual(z):
        return z - np.where(labels, z[labels].mean(), z[~labels].mean())

    expected = np.corrcoef(residual(za), residual(zb))[0, 1]
    assert conceptsim.concept_agreement(za, zb, labels, "cls_partial") == pytest.approx(expected)
    # the raw correlation is inflated by the shared label; the partial one is not
    assert conceptsim.concept_similarity(za, zb, "cls") != pytest.approx(expected)


def test_measures_are_the_library_functions():
    from conceptsim.comparison import cka, similarity
    from conceptsim.concepts import net2vec, tcav

    assert conceptsim.linear_cka is cka.linear_cka and conceptsim.concept_similarity is similarity.concept_similarity
    assert conceptsim.train_segmentation_probes is net2vec.train_segmentation_probes
    assert conceptsim.train_classification_probes is tcav.train_classification_probes
    x = np.random.default_rng(1).standard_normal((20, 5))
    assert conceptsim.linear_cka(x, 3 * x @ np.linalg.qr(np.random.default_rng(2).standard_normal((5, 5)))[0]) == pytest.approx(1.0)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        conceptsim.nothing  # noqa: B018


def test_missing_results_name_the_folder(project):
    with pytest.raises(FileNotFoundError, match="no results for study 'absent'"):
        conceptsim.open_results("absent")


# ----------------------------------------------------------------------------- a study's results
@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    """A two-model study (a user's torchvision model and its random-init twin on a user dataset) run through
    ``conceptsim.run_study`` in a temporary project."""
    from conftest import make_project

    root = make_project(tmp_path_factory.mktemp("api") / "project")
    write_coco(root / "data", n=12, ann_name="instances.json", image_dir="images", fractions=(0.5, 0.25, 0.25))
    (root / "tiny.yml").write_text(STUDY)
    import torch
    import torchvision

    torch.manual_seed(0)  # a model "with weights" (a twin needs one): resnet18's own initialisation, saved
    torch.save(torchvision.models.resnet18().state_dict(), root / "net.pth")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONCEPTSIM_ROOT", str(root))
        mp.setenv("CONCEPTSIM_RESULTS", str(root / "results"))
        mp.chdir(root)
        results = conceptsim.run_study(root / "tiny.yml", progress=False)
        yield results, root


@pytest.mark.slow
def test_every_kind_of_result_reads_through_the_public_api(tiny_results):
    results, root = tiny_results
    results = conceptsim.open_results("tiny-api", root=root / "results")  # as a user would, from another folder
    assert results.datasets() == ["my_data"]
    assert results.models("my_data") == ["net", "net:random"]

    sim = results.similarity("my_data")
    assert {"seg", "seg_kappa", "cls", "cls_partial", "cka"} <= set(sim["method"])
    assert set(sim["concept"].dropna()) <= {"person", "wheeled", "pet"}
    assert sim["value"].dtype == float
    layer_sim = results.layer_similarity("my_data")
    assert {"seg", "cka"} <= set(layer_sim["method"]) and "n_concepts" in layer_sim
    cka = results.cka("my_data")
    assert set(cka["method"]) == {"cka", "cka_debiased", "cka_grid4"} and "concept" not in cka
    assert len(cka) == (sim["method"] == "cka").sum() * 3

    findings = results.findings("my_data")
    assert isinstance(findings, dict) and findings["schema"] == 3
    for rec in results.finding_records("my_data"):  # one model pair or none (one trained model here)
        assert all(f.test.verdict for f in rec["finding1"].values())

    quality = results.concept_quality("my_data", "net")
    assert {"seg", "cls"} <= set(quality["method"]) and set(quality["model"]) == {"net"}
    assert quality["random_init_value"].notna().any()  # joined from the twin
    for table in ("dissection", "dissection_summary", "dissection_best_unit"):
        assert isinstance(results.dissection("my_data", "net:random", table), pd.DataFrame)
    assert not results.dissection("my_data", "net").empty
    summary = results.dataset_summary("my_data")
    assert not summary.empty

    store = results.activations("my_data", "net")
    layer = store.layer_names[0]
    acts = np.asarray(store.activations(layer))
    assert acts.shape[0] == len(store.image_ids) == 12 and store.concept_names == ["person", "wheeled", "pet"]
    with pytest.raises(Exception):  # read-only
        store.activations(layer)[0] = 0

    with pytest.raises(KeyError, match="has no results for model 'other'"):
        results.concept_quality("my_data", "other")
    with pytest.raises(KeyError, match=r"it has \['my_data'\]"):
        results.similarity("elsewhere")
    with pytest.raises(ValueError, match="table must be one of"):
        results.dissection("my_data", "net", "units")
