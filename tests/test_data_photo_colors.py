"""The ``photo-colors`` builder: the colour-naming rule, the drop rule, determinism, exact masks."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

from conceptsim.data.photo_colors import COLOUR_NAMES, build_photo_colors, colour_masks, name_colours, source_photos


def _name(rgb):
    return COLOUR_NAMES[name_colours(np.array([[rgb]], np.uint8))[0, 0]]


def test_naming_rule_table():
    cases = {
        (0, 0, 0): "black", (255, 255, 255): "white", (128, 128, 128): "grey", (255, 0, 0): "red",
        (120, 30, 20): "brown", (255, 128, 0): "orange", (255, 255, 0): "yellow", (0, 200, 0): "green",
        (0, 255, 255): "blue", (0, 0, 255): "blue", (128, 0, 255): "purple", (255, 0, 150): "pink",
        (255, 180, 190): "pink",
    }
    assert {rgb: _name(rgb) for rgb in cases} == cases
    assert len(COLOUR_NAMES) == 11


def test_every_pixel_gets_one_name():
    rgb = np.random.default_rng(0).integers(0, 256, (50, 50, 3), dtype=np.uint8)
    assert (name_colours(rgb) >= 0).all()


def test_min_region_drop_rule():
    rgb = np.full((100, 100, 3), 128, np.uint8)  # grey
    rgb[10:30, 10:30] = (255, 0, 0)  # 400 px red region: kept at 1 %  (100 px)
    rgb[60:65, 60:65] = (0, 0, 255)  # 25 px blue region: dropped
    masks = colour_masks(rgb, min_region=0.01)
    assert masks["red"].sum() == 400 and "blue" not in masks
    assert masks["grey"].sum() == 10000 - 400 - 25  # the dropped pixels carry no colour concept


def test_sources_ship_with_packages():
    assert all(p.is_file() for p in source_photos()) and len(source_photos()) >= 6


def test_build_deterministic_and_masks_match_stored_pixels(tmp_path):
    a = build_photo_colors(tmp_path / "a", n=4, size=48, seed=1)
    b = build_photo_colors(tmp_path / "b", n=4, size=48, seed=1)
    assert a.read_bytes() == b.read_bytes()
    for f in sorted((a.parent / "images").iterdir()):
        assert f.read_bytes() == (b.parent / "images" / f.name).read_bytes()
    coco = COCO(str(a))
    d = json.loads(a.read_text())
    assert [c["name"] for c in d["categories"]] == list(COLOUR_NAMES)
    im = coco.imgs[2]
    rgb = np.asarray(Image.open(a.parent / "images" / im["file_name"]).convert("RGB"))
    want = colour_masks(rgb)
    got = {coco.cats[x["category_id"]]["name"]: coco.annToMask(x) for x in coco.loadAnns(coco.getAnnIds(imgIds=[2]))}
    assert set(got) == set(want)
    assert all(np.array_equal(got[n], want[n].astype(np.uint8)) for n in want)


def test_default_split_holds_four_photos_in_val_and_test_and_keeps_ten_colours(tmp_path, monkeypatch):
    """The registry's split by source photo: 6 / 4 / 4 photos (a photo bootstrap of val or test has enough
    units), every listed photo exists, and every colour but purple (one photo only) is served by all splits."""
    monkeypatch.setenv("CONCEPTSIM_DATA", str(tmp_path))
    from conceptsim.data.coco import ConceptDataset
    from conceptsim.data.registry import DATASETS, ensure_dataset

    rule = DATASETS["photo-colors"].split
    names = {p.name for p in source_photos()}
    assert len(names) == len(source_photos()) == 14
    assert set(rule["test"]) <= names and set(rule["val"]) <= names
    assert len(set(rule["test"])) >= 4 and len(set(rule["val"])) >= 4
    assert len(names - set(rule["test"]) - set(rule["val"])) >= 6
    src = ensure_dataset("photo-colors", n=160, size=48, seed=0)
    ds = ConceptDataset(src)
    d = json.loads(src.annotation_file.read_text())
    photo = {im["id"]: im["source"] for im in d["images"]}
    by_split = {s: {photo[i] for i in photo if ds.split_of(i) == s} for s in ("train", "val", "test")}
    assert by_split["test"] == set(rule["test"]) and by_split["val"] == set(rule["val"])
    assert {c.name for c in ds.concepts} == set(COLOUR_NAMES) - {"purple"}
