"""The shortcut and label-randomisation test's parts: coco-icons' planted cue, the small CNN model kind and
its seeded training (same seed, same checkpoint hash), and the grouping scores with known answers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy.ndimage import binary_dilation

from conceptsim.comparison.grounding import shortcut_frame, shortcut_scores
from conceptsim.data import coco_icons
from conceptsim.models import small_cnn
from conceptsim.models.small_cnn import SmallCNNError, check_config

CATS = ["person", "car", "dog"]
TINY = {"n": 16, "epochs": 1, "width": 4, "batch_size": 8, "styles": ["twemoji"], "categories": CATS}


@pytest.fixture
def tiny_cache(tmp_path, monkeypatch):
    """Training builds and checkpoints in a temporary folder (icons still come from the real cache)."""
    monkeypatch.setenv("CONCEPTSIM_DATA", str(tmp_path / "datasets"))
    monkeypatch.setattr(small_cnn, "weights_dir", lambda: tmp_path / "weights")
    return tmp_path


def test_training_is_reproducible_from_its_seed(tiny_cache):
    cfg = {**TINY, "cue": 1.0, "seed": 0}
    path, sha = small_cnn.ensure_checkpoint(cfg)
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["sha256"] == sha and side["config"] == check_config(cfg) and side["n_train"] == 16
    stamp = path.stat().st_mtime_ns
    assert small_cnn.ensure_checkpoint(cfg) == (path, sha) and path.stat().st_mtime_ns == stamp  # reused
    path.unlink()
    path.with_suffix(".json").unlink()
    assert small_cnn.ensure_checkpoint(cfg)[1] == sha  # retrained from scratch: the same bytes
    path.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)  # altered: no longer reused, trained again
    assert small_cnn.ensure_checkpoint(cfg)[1] == sha
    assert small_cnn.ensure_checkpoint({**cfg, "seed": 1})[1] != sha
    assert small_cnn.ensure_checkpoint({**cfg, "labels": "shuffled"})[1] != sha
    model, loaded_sha = small_cnn.load_trained(cfg)
    assert loaded_sha == sha and not model.training
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 3)


def test_bad_training_configuration_names_the_key():
    with pytest.raises(SmallCNNError, match=r"'m\.cue' must be a number in \[0.0, 1.0\]"):
        check_config({"cue": 1.5}, "m")
    with pytest.raises(SmallCNNError, match=r"unknown key\(s\) \['epoch'\] in 'm'"):
        check_config({"epoch": 3}, "m")
    with pytest.raises(SmallCNNError, match=r"'m\.labels' must be one of"):
        check_config({"labels": "random"}, "m")
    with pytest.raises(SmallCNNError, match=r"'m\.size' must be at least 64"):
        check_config({"size": 32}, "m")
    assert small_cnn.group_of(check_config({"cue": 0.5})) == "cue p=0.5"
    assert small_cnn.group_of(check_config({"labels": "shuffled", "cue": 1})) == "shuffled labels"


def test_declared_small_cnn_is_a_trained_model_with_a_group():
    from conceptsim.models.user_models import UserModelError, model_status, parse_spec, user_model_spec

    spec = parse_spec("net", {"small_cnn": {"cue": 0.5, "seed": 2}})
    assert spec["small_cnn"]["seed"] == 2 and spec["small_cnn"]["n"] == small_cnn.DEFAULTS["n"]
    status = model_status("net", {"net": spec})
    assert status["trained"] and status["in_finding1"] and status["group"] == "cue p=0.5"
    ms = user_model_spec("net", spec)
    assert ms.default_layers == small_cnn.LAYERS and ms.preprocessing.size == (64, 64)
    with pytest.raises(UserModelError, match=r"'models\.net\.small_cnn\.seed' must be an integer"):
        parse_spec("net", {"small_cnn": {"seed": -1}})


def test_cue_build_paints_a_dot_of_the_label_colour_with_its_mask(tmp_path):
    plain = coco_icons.build_coco_icons(tmp_path / "plain", n=6, size=64, seed=2, styles=["twemoji"], categories=CATS,
                                        mode="objects", workers=1)
    cued = coco_icons.build_coco_icons(tmp_path / "cued", n=6, size=64, seed=2, styles=["twemoji"], categories=CATS,
                                       mode="objects", cue=1.0, workers=1)
    doc_plain, doc = json.loads(plain.read_text()), json.loads(cued.read_text())
    assert "cue" not in doc_plain["info"]["params"] and coco_icons.CUE_ID not in {c["id"] for c in doc_plain["categories"]}
    assert doc["info"]["params"]["cue"] == 1.0
    images, labels, names = coco_icons.image_labels(cued)
    assert names == ["person", "car", "dog"] and all(im["cue"] for im in images)
    assert labels == coco_icons.image_labels(plain)[1]  # the label is the dominant object before the dot
    from pycocotools import mask as mask_utils

    for im, label in zip(images, labels):
        dots = [a for a in doc["annotations"] if a["image_id"] == im["id"] and a["category_id"] == coco_icons.CUE_ID]
        assert len(dots) == 1
        m = mask_utils.decode({"size": dots[0]["segmentation"]["size"],
                               "counts": dots[0]["segmentation"]["counts"].encode()}).astype(bool)
        assert 0.02 < m.mean() < 0.05  # a disc of radius 0.1 of the side
        rgb = np.asarray(Image.open(cued.parent / "images" / im["file_name"]), dtype=float)
        inner = m & np.roll(m, 2, 0) & np.roll(m, -2, 0) & np.roll(m, 2, 1) & np.roll(m, -2, 1)
        colour = np.median(rgb[inner], axis=0)
        assert np.abs(colour - coco_icons.CUE_COLOURS[names.index(label)]).max() < 20
        before = np.asarray(Image.open(plain.parent / "images" / im["file_name"]), dtype=float)
        far = ~binary_dilation(m, iterations=8)  # beyond the JPEG blocks the dot touches
        assert np.abs(rgb - before)[far].mean() < 2  # the same picture elsewhere
    assert coco_icons.concepts_of_build({"categories": CATS, "cue": 0.5})["dot"] == ["dot"]


def test_shortcut_scores_known_answers():
    groups = np.repeat(["p0", "p50", "p100", "shuffled"], 3)
    same = groups[:, None] == groups[None, :]
    perfect = np.where(same, 0.9, 0.1)
    got = shortcut_scores(perfect, groups)
    assert got["auprc"] == 1.0 and got["violation_rate"] == 0.0 and got["n_groups"] == 4
    assert got["base_rate"] == pytest.approx(3 / 30)  # per group: 3 pairs inside of 3 + 3 x 9 touching it
    assert shortcut_scores(np.where(same, 0.1, 0.9), groups)["violation_rate"] == 1.0
    rng = np.random.default_rng(0)
    draws = [shortcut_scores(rng.standard_normal((12, 12)), groups) for _ in range(300)]
    assert got["chance_auprc"] == pytest.approx(0.19, abs=0.01)  # a random ranking's AP: above the base rate
    assert np.mean([d["auprc"] for d in draws]) == pytest.approx(got["chance_auprc"], abs=0.015)
    assert np.mean([d["violation_rate"] for d in draws]) == pytest.approx(0.5, abs=0.02)
    undefined = perfect.copy()
    undefined[0, 1] = undefined[1, 0] = np.nan  # an undefined same-group pair counts as least similar
    u = shortcut_scores(undefined, groups)
    assert u["n_undefined"] == 1 and u["violation_rate"] > 0 and u["auprc"] < 1
    with pytest.raises(ValueError, match="two or more groups"):
        shortcut_scores(perfect[:3, :3], groups[:3])


def test_shortcut_frame_reads_comparison_rows():
    nets = [f"n{i}" for i in range(6)]
    groups = dict(zip(nets, ["a", "a", "a", "b", "b", "b"]))
    rows = []
    for i, a in enumerate(nets):
        for j, b in enumerate(nets[i:], i):
            for layer in ("block1", "block2"):
                close = groups[a] == groups[b]
                rows.append({"method": "cka", "model_a": a, "layer_a": layer, "model_b": b, "layer_b": layer,
                             "value": (0.9 if close else 0.2) if layer == "block2" else 0.5, "concept": ""})
                rows.append({"method": "seg_kappa", "model_a": a, "layer_a": layer, "model_b": b, "layer_b": layer,
                             "value": 0.1 if close else 0.6, "concept": "dot"})
    df = pd.DataFrame(rows)
    out = shortcut_frame("ds", groups, df[df["method"] == "cka"], df[df["method"] == "seg_kappa"], cue_concept="dot")
    by = out.set_index(["method", "concept", "layer"])
    assert by.loc[("cka", "", "block2"), "auprc"] == 1.0 and by.loc[("cka", "", "block2"), "violation_rate"] == 0.0
    assert by.loc[("cka", "", "block1"), "violation_rate"] == 0.5  # all ties
    assert by.loc[("seg_kappa", "dot", "block1"), "violation_rate"] == 1.0
    assert set(out["n_networks"]) == {6}


def test_image_labels_leave_out_images_without_objects(tmp_path):
    doc = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"},
                      {"id": 3, "file_name": "c.jpg", "label": "dog"}],
           "annotations": [{"image_id": 1, "category_id": 3, "area": 50}, {"image_id": 1, "category_id": 18, "area": 80},
                           {"image_id": 3, "category_id": coco_icons.CUE_ID, "area": 90},
                           {"image_id": 3, "category_id": 3, "area": 10}],
           "categories": [{"id": 18, "name": "dog"}, {"id": 3, "name": "car"}, {"id": coco_icons.CUE_ID, "name": "dot"}]}
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(doc))
    images, labels, names = coco_icons.image_labels(path)
    assert [im["id"] for im in images] == [1, 3] and labels == ["dog", "dog"] and names == ["car", "dog"]
