"""The public API refuses wrong input with an error that names the parameter, what it got and what it expects
(ValueError for bad values and shapes, TypeError for wrong types), instead of a raw numpy / torch error, an
AttributeError deep inside, or a silently wrong number."""

import numpy as np
import pytest
import torch

import conceptsim
from conceptsim.comparison.similarity import SegAccumulator
from conceptsim.concepts.layerdata import Standardiser
from scenes import object_scene


# ----------------------------------------------------------------------------- results: names must be str
@pytest.fixture
def results(tmp_path):
    (tmp_path / "s" / "shapes" / "m").mkdir(parents=True)
    return conceptsim.open_results("s", root=tmp_path)


def test_study_dataset_and_model_must_be_names(results, tmp_path):
    with pytest.raises(TypeError, match="study must be a str.*got int 3"):
        conceptsim.open_results(3, root=tmp_path)
    with pytest.raises(TypeError, match="dataset must be a str.*got int 1"):
        results.similarity(1)
    with pytest.raises(TypeError, match="model must be a str.*got NoneType None"):
        results.concept_quality("shapes", None)
    with pytest.raises(TypeError, match="root must be a str or pathlib.Path.*got int 3"):
        conceptsim.open_results("s", root=3)


# ----------------------------------------------------------------------------- CKA
def test_cka_needs_two_feature_matrices_of_the_same_images():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((10, 4)), rng.standard_normal((10, 3))
    for cka in (conceptsim.linear_cka, conceptsim.debiased_cka):
        with pytest.raises(ValueError, match="same images.*got 10 and 9 rows"):
            cka(x, y[:9])
        with pytest.raises(ValueError, match=r"y must be 2-D features \(n images x features\), got shape \(10, 3, 1\)"):
            cka(x, y[:, :, None])
        with pytest.raises(ValueError, match=r"x must be 2-D.*got shape \(10,\)"):
            cka(x[:, 0], y)
    with pytest.raises(ValueError, match="at least 4 images"):  # the unbiased HSIC's minimum
        conceptsim.debiased_cka(x[:3], y[:3])


# ----------------------------------------------------------------------------- similarity and agreement
def test_cls_methods_take_image_logits_not_maps():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((6, 4, 4)), rng.standard_normal((6, 4, 4))
    for method in ("cls", "cls_jaccard"):
        with pytest.raises(ValueError, match=rf"'{method}' takes the N image logits.*\(1-D\), got.*\(6, 4, 4\)"):
            conceptsim.concept_similarity(a, b, method)
    with pytest.raises(ValueError, match=r"'cls_partial' takes the N image logits.*got shape \(6, 4, 4\)"):
        conceptsim.concept_agreement(a, b, a > 0, "cls_partial")


def test_seg_agreement_takes_per_image_maps():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal(20), rng.standard_normal(20)
    with pytest.raises(ValueError, match=r"'seg_kappa' takes per-pixel logits.*got shape \(20,\)"):
        conceptsim.concept_agreement(a, b, a > 0)


def test_agreement_truth_must_be_zero_one():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((5, 6, 6)), rng.standard_normal((5, 6, 6))
    soft = rng.random((5, 6, 6))
    with pytest.raises(ValueError, match="truth must be 0/1 or boolean, got values of dtype float64"):
        conceptsim.concept_agreement(a, b, soft)
    with pytest.raises(ValueError, match="truth must be 0/1 or boolean"):
        conceptsim.concept_agreement(a[:, 0, 0], b[:, 0, 0], np.arange(5) % 3, "cls_partial")  # labels 0, 1, 2
    # 0/1 in any numeric dtype is the boolean truth
    hard = soft > 0.5
    assert conceptsim.concept_agreement(a, b, hard.astype(np.float32)) == conceptsim.concept_agreement(a, b, hard)


def test_agreement_with_objects_uses_the_stages_object_strata():
    truth, objects, (a, b) = object_scene()
    plain = conceptsim.concept_agreement(a, b, truth)
    strata = conceptsim.concept_agreement(a, b, truth, objects=objects)
    # known answers: with (image, truth) strata the shared object hits count as agreement; with the any-object
    # stratum the two object finders agree at about chance
    assert plain > 0.3
    assert abs(strata) < 0.05
    # the comparison stage's accumulator with the concept marked as an object concept: the same numbers
    n, g = truth.shape[0], truth.shape[1:]
    logits = torch.from_numpy(np.stack([a, b, np.where(truth, 5.0, -5.0)]).astype(np.float32))[:, None]
    stage = SegAccumulator(3, 1, g, truth_row=2, object_concepts=np.array([True]))
    stage.update_streamed(n, lambda li, k, buf: logits[li, k].reshape(-1), objects=torch.from_numpy(objects.astype(np.uint8)))
    got = stage.results()
    for method in ("seg_kappa", "seg_kappa_max", "seg_obs_exp"):
        assert conceptsim.concept_agreement(a, b, truth, method, objects=objects.astype(np.uint8)) == pytest.approx(
            float(got[method][0, 0, 1]), rel=1e-9)


def test_agreement_objects_are_checked():
    truth, objects, (a, b) = object_scene(n=4)
    with pytest.raises(ValueError, match=r"objects must have the shape of truth \(4, 12, 12\), got \(4, 144\)"):
        conceptsim.concept_agreement(a, b, truth, objects=objects.reshape(4, -1))
    with pytest.raises(ValueError, match="objects must be 0/1 or boolean"):
        conceptsim.concept_agreement(a, b, truth, objects=objects * 2.5)
    with pytest.raises(ValueError, match="objects .* go with the seg methods"):
        conceptsim.concept_agreement(a[:, 0, 0], b[:, 0, 0], truth[:, 0, 0], "cls_partial", objects=objects[:, 0, 0])


# ----------------------------------------------------------------------------- classification probes
@pytest.fixture
def cls_data():
    rng = np.random.default_rng(4)
    z = rng.standard_normal((30, 5))
    y = np.zeros((30, 2), np.uint8)
    y[::2, 0] = 1
    y[:10, 1] = 1
    return z, y


def test_classification_probe_shapes(cls_data):
    z, y = cls_data
    with pytest.raises(ValueError, match="z_train and y_train must hold the same images, got 30 and 29 rows"):
        conceptsim.train_classification_probes(z, y[:29], z, y)
    with pytest.raises(ValueError, match=r"y_train must be 2-D labels n x K.*got shape \(30,\)"):
        conceptsim.train_classification_probes(z, y[:, 0], z, y[:, 0])
    with pytest.raises(ValueError, match="z_val and y_val must hold the same images, got 30 and 20 rows"):
        conceptsim.train_classification_probes(z, y, z, y[:20])
    with pytest.raises(ValueError, match=r"z_val must have the channels of z_train \(5\), got 4"):
        conceptsim.train_classification_probes(z, y, z[:, :4], y)
    with pytest.raises(ValueError, match=r"y_val must have the concepts \(columns\) of y_train \(2\), got 1"):
        conceptsim.train_classification_probes(z, y, z, y[:, :1], solver="reference")


def test_classification_labels_are_zero_one_with_both_classes(cls_data):
    z, y = cls_data
    with pytest.raises(ValueError, match="y_train must be 0/1 or boolean labels"):
        conceptsim.train_classification_probes(z, y * 3, z, y)  # labels 0 and 3: coefficients near 1e100 before
    with pytest.raises(ValueError, match="y_val must be 0/1 or boolean labels"):
        conceptsim.train_classification_probes(z, y, z, y - 0.5)
    one = y.copy()
    one[:, 1] = 0
    for solver in ("lbfgs", "reference"):
        with pytest.raises(ValueError, match="both classes in y_train: column 1 has only negatives among its 30 images"):
            conceptsim.train_classification_probes(z, one, z, y, solver=solver)
    probes = conceptsim.train_classification_probes(z, y.astype(bool), z, y.astype(bool))  # booleans are labels
    assert probes.coef.shape == (2, 5)


def test_probe_decision_needs_the_probes_channels(cls_data):
    z, y = cls_data
    probes = conceptsim.train_classification_probes(z, y, z, y)
    with pytest.raises(ValueError, match=r"z must be standardised features n x 5.*got shape \(30, 4\)"):
        probes.decision(z[:, :4])
    with pytest.raises(ValueError, match=r"z must be standardised features n x 5.*got shape \(5,\)"):
        probes.decision(z[0])


# ----------------------------------------------------------------------------- segmentation probes, standardiser
def test_segmentation_probes_need_split_data():
    with pytest.raises(TypeError, match="train must be a SplitData .* got ndarray"):
        conceptsim.train_segmentation_probes(np.zeros((4, 3, 2, 2)), torch.zeros(4, 1, 2, 2), None, None)


def test_standardiser_checks_type_and_channels():
    x = np.random.default_rng(5).standard_normal((20, 3))
    st = Standardiser.fit(x)
    with pytest.raises(TypeError, match="x must be a torch.Tensor .* got ndarray"):
        st.apply(x)
    with pytest.raises(ValueError, match=r"x must be B x 3 .* got shape \(4, 5\)"):
        st.apply(torch.zeros(4, 5))
    with pytest.raises(ValueError, match=r"x must be B x 3 .* got shape \(3,\)"):
        st.apply(torch.zeros(3))
    with pytest.raises(ValueError, match=r"x must be features n x C .* got shape \(20,\)"):
        Standardiser.fit(x[:, 0])
    assert st.apply(torch.zeros(4, 3, 2, 2)).shape == (4, 3, 2, 2)  # trailing spatial axes still broadcast


def test_an_empty_result_table_is_named(tmp_path):
    # pandas' EmptyDataError ("No columns to parse from file") names no file
    from conceptsim import read_table

    empty = tmp_path / "concept_quality.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="concept_quality.csv is empty"):
        read_table(empty)
