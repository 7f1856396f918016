"""The ``coco-icons`` builder: the reviewed emoji table, exact visible masks, determinism, COCO validity,
grouped splits (by style, background, source photo), licences, and clear errors for bad inputs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from conceptsim.data import coco_icons, icon_sources
from conceptsim.data.coco import ConceptDataset, DatasetError
from conceptsim.data.icon_sources import CATEGORIES, PACKAGES, STYLES, IconSourceError
from conceptsim.data.splits import check_split, grouped_assignment

ROOT = Path(__file__).resolve().parents[1]
FEW_STYLES = ["twemoji", "openmoji-outline", "noto"]
FEW_CATS = ["person", "car", "dog", "cup", "clock"]


@pytest.fixture(scope="module")
def small_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("icons") / "a"
    return coco_icons.build_coco_icons(out, n=18, size=96, seed=3, styles=FEW_STYLES, categories=FEW_CATS, workers=1)


def test_mapping_table_is_coco():
    assert len(CATEGORIES) >= 30 and len(STYLES) >= 5
    ids = [c.id for c in CATEGORIES]
    assert len(set(ids)) == len(ids) and ids == sorted(ids)
    known = {"person": (1, "person"), "car": (3, "vehicle"), "dog": (18, "animal"), "cup": (47, "kitchen"),
             "pizza": (59, "food"), "tv": (72, "electronic"), "teddy bear": (88, "indoor")}
    by_name = {c.name: c for c in CATEGORIES}
    assert {n: (by_name[n].id, by_name[n].supercategory) for n in known} == known
    codes = [e.code for c in CATEGORIES for e in c.emoji]
    assert len(set(codes)) == len(codes), "an emoji depicts two categories"
    assert all(e.name and all(len(p) >= 4 for p in e.code.split("-")) for c in CATEGORIES for e in c.emoji)
    assert {e.name for e in by_name["car"].emoji} >= {"automobile", "taxi", "police car", "racing car"}


def test_every_style_draws_every_emoji():
    missing = [(s, e.name) for s in STYLES for c in CATEGORIES for e in c.emoji if icon_sources.svg_of(s, e) is None]
    assert not missing


def test_masks_are_the_visible_icon_pixels():
    styles, cats = coco_icons.check_selection(FEW_STYLES, FEW_CATS)
    bank = coco_icons.icon_bank(styles, cats, 48)
    groups = coco_icons.background_groups(styles)
    seen_occlusion = False
    for index in range(12):
        image, style, background, objects = coco_icons.render_image(5, index, 96, styles, cats, bank, groups)
        assert image.shape == (96, 96, 3) and style == styles[index % len(styles)]
        assert background in {p.name for p in groups[style]}
        # composite one indicator channel per object with the same alpha-over: its weight is what stays visible
        weight = np.zeros((len(objects), 96, 96))
        for k, o in enumerate(objects):
            weight *= 1.0 - o["alpha"][None]
            weight[k] += o["alpha"]
        for k, o in enumerate(objects):
            assert np.array_equal(o["mask"], weight[k] > 0.5)
            assert o["mask"].any() and not (o["mask"] & (o["alpha"] <= 0.5)).any()
            seen_occlusion |= bool(((o["alpha"] > 0.5) & ~o["mask"]).any())
        masks = np.stack([o["mask"] for o in objects])
        assert masks.sum(0).max() <= 1  # a pixel shows at most one object
    assert seen_occlusion


def test_build_is_deterministic_and_valid_coco(small_build, tmp_path):
    again = coco_icons.build_coco_icons(tmp_path / "b", n=18, size=96, seed=3, styles=FEW_STYLES,
                                        categories=FEW_CATS, workers=2)
    assert small_build.read_bytes() == again.read_bytes()
    files = sorted((small_build.parent / "images").iterdir())
    assert len(files) == 18
    assert all(f.read_bytes() == (again.parent / "images" / f.name).read_bytes() for f in files)
    coco = COCO(str(small_build))
    d = json.loads(small_build.read_text())
    assert [(c["id"], c["name"], c["supercategory"]) for c in d["categories"]] == [
        (1, "person", "person"), (3, "car", "vehicle"), (18, "dog", "animal"), (47, "cup", "kitchen"), (85, "clock", "indoor")]
    assert {im["style"] for im in d["images"]} == set(FEW_STYLES)
    assert all(im["background"] for im in d["images"])
    empty = 0
    for iid in coco.imgs:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[iid]))
        assert len(anns) <= 4
        empty += not anns
        for a in anns:
            assert coco.annToMask(a).sum() == a["area"] > 0 and a["emoji"]
    # rare, but allowed: an image whose every object is left out (here image 4's only object, an outline cup of
    # about 10 px, keeps no pixel above alpha 0.5)
    assert empty <= 1
    assert {p["package"] for p in d["info"]["icon_packages"]} == {"@twemoji/svg@15.0.0", "openmoji@17.0.0", "@svgmoji/noto@3.2.0"}


def test_split_by_style_holds_out_styles_and_backgrounds(small_build):
    rule = {"by": "style", "test": ["noto"], "val": ["twemoji"]}
    ds = ConceptDataset(small_build, split_by=rule, min_area=0.0)
    d = json.loads(small_build.read_text())
    images = {im["id"]: im for im in d["images"]}
    style_of = {s: {images[i]["style"] for i in images if ds.split_of(i) == s} for s in ("train", "val", "test")}
    assert style_of == {"train": {"openmoji-outline"}, "val": {"twemoji"}, "test": {"noto"}}
    bg = {s: {images[i]["background"] for i in images if ds.split_of(i) == s} for s in ("train", "val", "test")}
    assert not (bg["train"] & bg["test"]) and not (bg["train"] & bg["val"]) and not (bg["val"] & bg["test"])
    random_split = ConceptDataset(small_build, split_by="random", min_area=0.0)
    assert {images[i]["style"] for i in images if random_split.split_of(i) == "test"} != {"noto"}


def test_split_by_background_and_group_random_split(small_build):
    d = json.loads(small_build.read_text())
    images = {im["id"]: im for im in d["images"]}
    split = grouped_assignment(images, {"by": "background"}, seed=0)
    groups = {s: {images[i]["background"] for i in images if split[i] == s} for s in ("train", "val", "test")}
    assert all(groups.values()) and not (groups["train"] & groups["test"]) and not (groups["val"] & groups["test"])


def test_photo_colors_splits_by_source_photo(tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTSIM_DATA", str(tmp_path))
    from conceptsim.data.registry import ensure_dataset

    src = ensure_dataset("photo-colors", n=40, size=32, seed=0)
    assert src.split["by"] == "source"
    ds = ConceptDataset(src, min_area=0.0)
    d = json.loads(Path(src.annotation_file).read_text())
    photo = {im["id"]: im["source"] for im in d["images"]}
    by_split = {s: {photo[i] for i in photo if ds.split_of(i) == s} for s in ("train", "val", "test")}
    assert all(by_split.values())
    assert not (by_split["train"] & by_split["test"]) and not (by_split["train"] & by_split["val"])
    assert not (by_split["val"] & by_split["test"])


def test_bad_split_rules_are_named(small_build):
    with pytest.raises(DatasetError, match=r"blob.*no image has"):
        ConceptDataset(small_build, split_by={"by": "style", "test": ["blob"]})
    with pytest.raises(DatasetError, match="has no 'colour' field"):
        ConceptDataset(small_build, split_by={"by": "colour"})
    with pytest.raises(ValueError, match=r"\['noto'\] are in both test and val"):
        check_split({"by": "style", "test": ["noto"], "val": ["noto"]})
    with pytest.raises(ValueError, match="unknown key"):
        check_split({"by": "style", "train": ["noto"]})


def test_unknown_style_and_category_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown coco-icons style 'watercolour'"):
        coco_icons.build_coco_icons(tmp_path / "x", n=2, size=64, styles=["watercolour"])
    with pytest.raises(ValueError, match="unknown coco-icons category 'fire hydrant'"):
        coco_icons.build_coco_icons(tmp_path / "x", n=2, size=64, categories=["car", "fire hydrant"])
    assert not (tmp_path / "x").exists()


def test_missing_package_names_it_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTSIM_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(IconSourceError, match=r"@twemoji/svg@15\.0\.0 is missing.*conceptsim data fetch-icons"):
        coco_icons.build_coco_icons(tmp_path / "x", n=2, size=64, styles=["twemoji"])
    bad = tmp_path / "bad-cache" / "icons" / PACKAGES["twemoji-svg"].file_name
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not the pinned tarball")
    monkeypatch.setenv("CONCEPTSIM_CACHE", str(tmp_path / "bad-cache"))
    with pytest.raises(IconSourceError, match="expected the pinned"):
        coco_icons.build_coco_icons(tmp_path / "x", n=2, size=64, styles=["twemoji"])


def test_corrupt_svg_is_named():
    with pytest.raises(IconSourceError, match=r"noto emoji 1F697.*could not be rendered"):
        coco_icons.rasterise(b"<svg xmlns='http://www.w3.org/2000/svg'><path d=", 32, "noto emoji 1F697 (automobile)")
    with pytest.raises(IconSourceError, match="empty"):
        coco_icons.rasterise(b"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 8 8'/>", 32, "blank")


def test_licence_attributions_present():
    page = (ROOT / "book" / "datasets" / "coco-icons.md").read_text()
    for pkg in PACKAGES.values():
        assert pkg.licence and pkg.attribution
        assert pkg.spec in page and pkg.licence.replace("-", " ").split()[0] in page.replace("-", " ")
    for needle in ("OpenMoji", "CC BY-SA 4.0", "Twemoji", "CC BY 4.0", "Noto Emoji", "Apache", "Fluent Emoji", "MIT"):
        assert needle in page


def test_cli_errors_name_the_input(capsys):
    from conceptsim.data.cli import main

    assert main(["data", "build", "coco-icons", "--out", "/nonexistent/x", "--n", "2", "--styles", "noto,sketch"]) == 2
    assert "unknown coco-icons style 'sketch'" in capsys.readouterr().err


def test_fetch_icons_verifies_present_packages_without_downloading(monkeypatch):
    monkeypatch.setattr(icon_sources.shutil, "which", lambda name: None)  # npm would be needed to download
    paths = icon_sources.fetch_icon_packages(["twemoji-svg"])
    assert paths == [icon_sources.package_path("twemoji-svg")]
    with pytest.raises(KeyError, match="unknown icon package"):
        icon_sources.fetch_icon_packages(["blobmoji"])


def test_listed_values_a_small_build_lacks_are_skipped_but_an_empty_split_is_an_error():
    images = {i: {"file_name": f"{i}.jpg", "source": s} for i, s in enumerate(["a", "a", "b", "c", "d"])}
    split = grouped_assignment(images, {"by": "source", "test": ["b", "zz"], "val": ["c"]})
    assert split == {0: "train", 1: "train", 2: "test", 3: "val", 4: "train"}
    with pytest.raises(ValueError, match=r"\['zz'\] for test that no image has"):
        grouped_assignment(images, {"by": "source", "test": ["zz"], "val": ["c"]})
    with pytest.raises(ValueError, match="no value for train"):
        grouped_assignment(images, {"by": "source", "test": ["a", "b"], "val": ["c", "d"]})


def test_study_check_names_missing_icon_packages(tmp_path, monkeypatch):
    from conceptsim.data.registry import unavailable_reason

    assert unavailable_reason("coco-icons") is None
    monkeypatch.setenv("CONCEPTSIM_CACHE", str(tmp_path))
    reason = unavailable_reason("coco-icons")
    assert "fluentui-emoji@1.3.0 is missing" in reason and "conceptsim data fetch-icons" in reason


def test_concept_category_is_the_coco_supercategory(small_build):
    from conceptsim.data.coco import DatasetSource
    from conceptsim.data.registry import DATASETS

    src = DatasetSource("coco-icons", small_build, small_build.parent / "images", "test",
                        concept_categories=DATASETS["coco-icons"].concept_categories,
                        concepts=coco_icons.concepts_of_build({"categories": FEW_CATS}))
    ds = ConceptDataset(src, split_by="random", min_area=0.0)
    got = {c.name: c.category for c in ds.concepts}
    assert got["car"] == "vehicle" and got["dog"] == "animal" and got["cup"] == "kitchen"
    assert got["person"] == "person" and got["clock"] == "indoor"
    assert set(coco_icons.concept_categories()) >= {c.name for c in CATEGORIES} | {"vehicle", "animal", "food"}
    assert coco_icons.concept_categories()["vehicle"] == "vehicle"


def test_objects_mode_draws_one_or_two_large_mostly_visible_objects():
    styles, cats = coco_icons.check_selection(FEW_STYLES, FEW_CATS)
    bank = coco_icons.icon_bank(styles, cats, 48)
    groups = coco_icons.background_groups(styles)
    cover = {}
    for mode in ("scene", "objects", "single"):
        comp = coco_icons.MODES[mode]
        fractions, counts = [], []
        for index in range(16):
            _, _, _, objects = coco_icons.render_image(5, index, 96, styles, cats, bank, groups, mode)
            counts.append(len(objects))
            for o in objects:
                own = (o["alpha"] > 0.5).sum()
                assert o["mask"].sum() >= comp.min_visible * own  # occlusion rule of the mode
                fractions.append(own / 96**2)
        assert comp.objects[0] <= min(counts) and max(counts) <= comp.objects[1]
        cover[mode] = float(np.median(fractions))
    assert coco_icons.MODES["objects"].scale[0] >= 0.35 and coco_icons.MODES["objects"].objects == (1, 2)
    assert cover["objects"] > 2 * cover["scene"]  # object-centric: far larger objects than the scene mode (2.7x)
    assert coco_icons.MODES["single"].objects == (1, 1) and coco_icons.MODES["single"].scale[0] > coco_icons.MODES["objects"].scale[0]
    with pytest.raises(ValueError, match=r"unknown coco-icons mode 'huge'.*objects.*scene"):
        coco_icons.place_objects(5, 0, 96, styles, cats, bank, mode="huge")


def test_top_object_category_is_balanced_within_each_style():
    """Within each style the top (last-drawn) objects take the categories in turn (counts differ by at most
    one), in an order of the style's own, drawn afresh for every round and for every seed; the same seed and
    index give the same objects, and the other objects keep their uniform draws."""
    styles, cats = coco_icons.check_selection(None, FEW_CATS)  # six styles, five categories
    bank = coco_icons.icon_bank(styles, cats, 32)
    names, n_styles, per_style = [c.name for c in cats], len(styles), 28  # 5 full rounds and 3 of a sixth

    def objects(seed, index, mode="objects"):
        return coco_icons.place_objects(seed, index, 64, styles, cats, bank, mode)[2]

    firsts = [objects(3, i)[-1]["category"].name for i in range(n_styles * per_style)]
    for s in range(n_styles):
        mine = firsts[s::n_styles]
        counts = [mine.count(c) for c in names]
        assert max(counts) - min(counts) <= 1, (styles[s], counts)
        assert all(sorted(mine[r : r + 5]) == sorted(names) for r in range(0, 25, 5))  # each round: every category once
        assert len(set(mine[25:])) == 3
        assert len({tuple(mine[r : r + 5]) for r in range(0, 25, 5)}) > 1  # a new order every round
    assert len({tuple(firsts[s::n_styles][:5]) for s in range(n_styles)}) > 1  # each style its own order
    assert [objects(4, i)[-1]["category"].name for i in range(n_styles * per_style)] != firsts  # and each seed
    assert [objects(3, i, "scene")[-1]["category"].name for i in range(30)] == firsts[:30]  # whatever the mode
    for i in (0, 7, 101):
        a, b = objects(3, i, "scene"), objects(3, i, "scene")
        assert [(o["category"].name, o["emoji"]) for o in a] == [(o["category"].name, o["emoji"]) for o in b]
        assert all(np.array_equal(x["alpha"], y["alpha"]) and np.array_equal(x["rgb"], y["rgb"]) for x, y in zip(a, b))
    further = {o["category"].name for i in range(60) for o in objects(3, i, "scene")[:-1]}
    assert further == set(names)  # the other objects: uniform draws over every category


def test_mode_is_a_validated_build_parameter(tmp_path):
    from conceptsim.data.registry import build_params
    from conceptsim.run.validation import build_rules

    rule = build_rules("coco-icons")["mode"]
    assert rule.ok("objects") and rule.ok("scene") and not rule.ok("huge") and not rule.ok(3)
    assert "objects" in rule.accepted
    assert build_params("coco-icons", mode="objects")["mode"] == "objects"
    from conceptsim.run.study import parse_study

    with pytest.raises(Exception, match=r"'datasets.coco-icons.build.mode' is 'huge'; accepted: one of \['scene', 'objects', 'single'\]"):
        parse_study({"name": "t", "datasets": {"coco-icons": {"build": {"mode": "huge"}}}, "models": ["mobilenet_v2_imagenet:random"]})
    with pytest.raises(ValueError, match="unknown coco-icons mode 'huge'"):
        coco_icons.build_coco_icons(tmp_path / "x", n=2, size=64, styles=FEW_STYLES, mode="huge")
    assert not (tmp_path / "x").exists()


def test_default_study_composes_for_power():
    from conceptsim.run.study import load_study

    for smoke in (False, True):  # the smoke study inherits the mode
        study = load_study(ROOT / "studies" / "default.yml", smoke=smoke)
        assert study.datasets["coco-icons"]["build"]["mode"] == "objects"
    from conceptsim.book.coco_icons import DEFAULT_STUDY_CATEGORIES

    build = load_study(ROOT / "studies" / "default.yml").datasets["coco-icons"]["build"]
    assert tuple(build["categories"]) == DEFAULT_STUDY_CATEGORIES  # the power check probes the study's categories
    assert len(coco_icons.concepts_of_build(build)) >= 12  # room for the 12 learned object concepts


def _mark_later(args):
    folder, i = args
    time.sleep(0.5)
    (Path(folder) / f"ran-{i}").touch()


def test_an_interrupted_icon_bank_leaves_no_queued_work_running(tmp_path, monkeypatch):
    """The builder's pool workers ignore SIGINT (``runtime.fork_pool``), so the parent must end them itself: a
    Ctrl-C while the icons are rasterised stops the build without waiting for the queued rasterising, and
    leaves no build folder."""
    marks = tmp_path / "marks"
    marks.mkdir()

    def interrupted_bank(styles, cats, px, pool):
        assert pool is not None
        pool.map_async(_mark_later, [(str(marks), i) for i in range(8)], chunksize=1)
        raise KeyboardInterrupt

    monkeypatch.setattr(coco_icons, "icon_bank", interrupted_bank)
    with pytest.raises(KeyboardInterrupt):
        coco_icons.build_coco_icons(tmp_path / "b", n=4, size=64, styles=FEW_STYLES, categories=FEW_CATS, workers=2)
    time.sleep(1.0)  # long enough for a surviving worker to finish a task
    assert list(marks.iterdir()) == []
    assert not (tmp_path / "b").exists()
