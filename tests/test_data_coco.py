"""The COCO-format concept reader: masks, labels, splits, geometry alignment, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from conceptsim.data.coco import (
    ConceptDataset,
    DatasetError,
    DatasetSource,
    encode_mask,
    make_loader,
    split_assignment,
)
from conceptsim.data.geometry import Preprocessing

RED = (255, 0, 0)


def write_fake_coco(root, n_images=10, h=40, w=60, ann_name="instances.json", image_dir="images"):
    """A hand-computable COCO dataset: every image grey with a red 10 x 20 rectangle ("box", polygon) at
    rows 5-14, cols 10-29, and on even ids a blue 4 x 4 square ("dot", RLE) at rows 30-33, cols 40-43.
    Categories: box (supercategory shape), dot (shape), car and bus (vehicle; car shares the box's area
    on id 1 only). Returns the annotation path."""
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for iid in range(1, n_images + 1):
        img = np.full((h, w, 3), 128, np.uint8)
        img[5:15, 10:30] = RED
        dot = np.zeros((h, w), np.uint8)
        if iid % 2 == 0:
            dot[30:34, 40:44] = 1
            img[30:34, 40:44] = (0, 0, 255)
        Image.fromarray(img).save(root / image_dir / f"{iid:04d}.png")
        images.append({"id": iid, "file_name": f"{iid:04d}.png", "height": h, "width": w})
        anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": 1, "iscrowd": 0,
                     "segmentation": [[10, 5, 30, 5, 30, 15, 10, 15]]})
        if dot.any():
            anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": 2, "iscrowd": 0,
                         "segmentation": encode_mask(dot)})
        if iid == 1:
            anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": 3, "iscrowd": 0,
                         "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]})
    cats = [{"id": 1, "name": "box", "supercategory": "shape"}, {"id": 2, "name": "dot", "supercategory": "shape"},
            {"id": 3, "name": "car", "supercategory": "vehicle"}, {"id": 4, "name": "bus", "supercategory": "vehicle"}]
    path = root / ann_name
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


@pytest.fixture
def fake(tmp_path):
    return write_fake_coco(tmp_path)


def test_masks_labels_and_eval_grid(fake):
    pp = Preprocessing(size=(40, 60))
    ds = ConceptDataset(fake, concepts=["box", "dot"], preprocessing=pp, eval_grid=(4, 6), min_area=0.005)
    assert [c.name for c in ds.concepts] == ["box", "dot"] and ds.concepts[0].category == "shape"
    it = ds[ds.image_ids.index(2)]
    m = ds.masks(2)
    assert m.shape == (2, 40, 60) and m[0].sum() == 200 and m[1].sum() == 16
    assert m[0, 5:15, 10:30].all()
    assert it["labels"].tolist() == [1, 1]  # 16 / 2400 = 0.67 % >= 0.5 %
    # eval cells are 10 x 10; the box covers rows 5-14 -> each of cells (0..1, 1..2) half covered -> 1
    ev = it["masks_eval"][0]
    assert ev.dtype == torch.uint8 and ev[0:2, 1:3].all() and ev.sum() == 4
    assert it["masks_eval"][1].sum() == 0  # the 4 x 4 dot never fills half a 10 x 10 cell
    ds_hi = ConceptDataset(fake, concepts=["box", "dot"], preprocessing=pp, min_area=0.01)
    # at 1 % the dot is present nowhere, so it is excluded (and reported), not served as all-zero labels
    assert [c.name for c in ds_hi.concepts] == ["box"] and ds_hi.labels_of(2).tolist() == [1]
    assert {e["concept"] for e in ds_hi.excluded_concepts} == {"dot"}


def test_groups_supercategory_and_category_override(fake):
    ds = ConceptDataset(fake, concepts=["vehicle", "box"], fractions=(1.0, 0.0, 0.0))
    assert ds.concepts[0].category_ids == (3, 4) and ds.concepts[0].category == "object"
    ds = ConceptDataset(fake, concepts={"thing": {"categories": ["box", "dot"], "category": "part"}})
    assert ds.concepts[0].category == "part"
    assert ds.masks(2)[0].sum() == 216  # union of box and dot
    src = DatasetSource("fake", fake, fake.parent / "images", "0", {"box": "texture"}, ["box"])
    ds = ConceptDataset(src)
    assert [(c.name, c.category) for c in ds.concepts] == [("box", "texture")]
    with pytest.raises(DatasetError, match="neither a category"):
        ConceptDataset(fake, concepts=["nope"])


def test_empty_concept_in_split_is_reported_not_silent(fake):
    ds = ConceptDataset(fake, split="test")
    names = [c.name for c in ds.concepts]
    assert "bus" not in names and "car" not in names  # bus never, car only on image 1
    reasons = {(e["concept"], e["split"]) for e in ds.excluded_concepts}
    assert ("bus", "train") in reasons and ("bus", "test") in reasons
    assert all("no positive image" in e["reason"] for e in ds.excluded_concepts)


def test_split_deterministic_disjoint_and_validated():
    ids = list(range(100, 200))
    a, b = split_assignment(ids, 3), split_assignment(list(reversed(ids)), 3)
    assert a == b and split_assignment(ids, 4) != a
    counts = {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 60, "val": 20, "test": 20}
    for bad in [(0.5, 0.5), (0.7, 0.2, 0.2), (1.2, -0.1, -0.1)]:
        with pytest.raises(ValueError, match="fractions"):
            split_assignment(ids, 0, bad)


def test_split_datasets_partition_images(fake):
    parts = [ConceptDataset(fake, split=s, concepts=["box"]) for s in ("train", "val", "test")]
    all_ids = [i for p in parts for i in p.image_ids]
    assert sorted(all_ids) == list(range(1, 11)) and len(set(all_ids)) == 10
    assert all(p.split_of(i) == p.split for p in parts for i in p.image_ids)
    assert len(ConceptDataset(fake, split="train", concepts=["box"], max_images=2)) == 2


@pytest.mark.parametrize("pp", [Preprocessing(size=(64, 64), resize="letterbox"), Preprocessing(size=(30, 90))])
def test_mask_lands_on_same_image_content(fake, pp):
    ds = ConceptDataset(fake, concepts=["box"], preprocessing=pp)
    it = ds[0]
    img, m = it["image"], it["masks_input"][0].bool()
    redness = img[0] - img[1]  # 1 on the red box, 0 on the grey background, between on blurred edges
    assert m.any()
    assert (redness[m] > 0.2).all()  # every mask pixel shows (at least partly) box content
    assert m[redness > 0.9].all()  # every pure box pixel is in the mask
    ys, xs = torch.nonzero(m, as_tuple=True)
    w = redness.clamp(min=0)
    yy, xx = torch.meshgrid(torch.arange(img.shape[1]), torch.arange(img.shape[2]), indexing="ij")
    # centroids of the mask and of the red content agree to a fraction of a pixel
    assert abs(ys.float().mean() - (w * yy).sum() / w.sum()) < 0.5
    assert abs(xs.float().mean() - (w * xx).sum() / w.sum()) < 0.5
    top, left, bottom, right = it["content_box"].tolist()
    assert not it["masks_input"][:, : int(top)].any() and not it["masks_input"][:, int(bottom):].any()


def test_loader_and_collate(fake):
    ds = ConceptDataset(fake, concepts=["box", "dot"], preprocessing=Preprocessing(size=(32, 32)), eval_grid=(8, 8))
    batches = list(make_loader(ds, batch_size=4, num_workers=1))
    b = batches[0]
    assert b["image"].shape == (4, 3, 32, 32) and b["masks_input"].shape == (4, 2, 32, 32)
    assert b["masks_eval"].shape == (4, 2, 8, 8) and b["labels"].shape == (4, 2)
    assert b["image_id"].dtype == torch.int64 and len(b["split"]) == 4
    assert torch.cat([x["image_id"] for x in batches]).tolist() == ds.image_ids


def test_round_trip_through_pycocotools(fake):
    from pycocotools.coco import COCO

    coco = COCO(str(fake))
    ds = ConceptDataset(fake, concepts=["dot"])
    ann = coco.loadAnns(coco.getAnnIds(imgIds=[2], catIds=[2]))[0]
    assert np.array_equal(coco.annToMask(ann), ds.masks(2)[0])
    assert mask_utils.area(mask_utils.frPyObjects(ann["segmentation"], 40, 60) if isinstance(ann["segmentation"], list) else
                           {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}) == 16


# ---------------------------------------------------------------------------------------------- bad input
def _edit(path, fn):
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def test_malformed_json(fake):
    fake.write_text("{not json")
    with pytest.raises(DatasetError, match=r"instances.json: malformed JSON"):
        ConceptDataset(fake)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d["annotations"][0].update(image_id=999), r"annotation 1 names unknown image id 999"),
        (lambda d: d["annotations"][0].update(category_id=77), r"annotation 1 names unknown category id 77"),
        (lambda d: d["annotations"][0].update(segmentation=[[10, 5, 80, 5, 80, 15]]), r"annotation 1 has a polygon outside image 1"),
        (lambda d: d["annotations"][1].update(segmentation={"size": [5, 5], "counts": "0"}), r"annotation 2 has an RLE of size"),
        (lambda d: d["annotations"][0].update(segmentation=[]), r"annotation 1 has an empty polygon"),
        (lambda d: d.pop("categories"), r"missing or non-list key 'categories'"),
        (lambda d: d["images"].append(dict(d["images"][0])), r"duplicate image id 1"),
    ],
)
def test_bad_annotations_name_file_and_item(fake, edit, match):
    _edit(fake, edit)
    with pytest.raises(DatasetError, match=match) as e:
        ConceptDataset(fake)
    assert str(fake) in str(e.value)


def test_missing_image_file(fake):
    (fake.parent / "images" / "0003.png").unlink()
    with pytest.raises(DatasetError, match=r"image 3 file .*0003.png not found"):
        ConceptDataset(fake)


def test_corrupt_and_wrongly_sized_images(fake):
    ds = ConceptDataset(fake, concepts=["box"])
    (fake.parent / "images" / "0004.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DatasetError, match=r"image 4 file .*0004.png is unreadable or corrupt"):
        ds[ds.image_ids.index(4)]
    Image.new("RGB", (10, 10)).save(fake.parent / "images" / "0005.png")
    with pytest.raises(DatasetError, match=r"image 5 file .*0005.png is 10x10, annotation says 60x40"):
        ds[ds.image_ids.index(5)]


def test_area_fraction_grid_is_exact():
    from conceptsim.data.coco import area_fraction_grid
    from conceptsim.data.geometry import area_pool

    m = (np.random.default_rng(0).random((3, 30, 40)) > 0.6).astype(np.uint8)
    # where the grid divides the image, it is plain block averaging
    assert torch.allclose(torch.from_numpy(area_fraction_grid(m, (10, 8))), area_pool(torch.from_numpy(m), (10, 8)), atol=1e-6)
    # a 3 x 3 mask on a 2 x 2 grid: each cell holds 2.25 pixels; a single centre pixel puts 0.25 in each
    one = np.zeros((1, 3, 3), np.uint8)
    one[0, 1, 1] = 1
    assert np.allclose(area_fraction_grid(one, (2, 2)), 0.25 / 2.25)


@pytest.mark.parametrize("size,resize,image_hw,grid", [
    ((224, 224), "stretch", (320, 320), (28, 28)),  # down-scaling, grid divides the input
    ((300, 300), "stretch", (320, 240), (19, 19)),  # adaptive bins that overlap
    ((512, 512), "letterbox", (320, 400), (32, 32)),  # up-scaling with padding
    ((224, 224), "letterbox", (100, 333), (7, 7)),
])
def test_mask_targets_equal_resample_then_pool(size, resize, image_hw, grid):
    from conceptsim.data.geometry import Preprocessing, area_pool

    pp = Preprocessing(size, resize=resize)
    rng = np.random.default_rng(1)
    m = (rng.random((4, *image_hw)) > 0.7).astype(np.uint8)
    m[1] = 0  # an absent concept stays all-zero
    two_step = area_pool(pp.apply_mask(m), grid).numpy()
    direct = pp.mask_targets(m, grid)
    assert direct.shape == (4, *grid) and not direct[1].any()
    np.testing.assert_allclose(direct, two_step, atol=1e-6)


def test_with_targets_serves_pooled_masks_without_images(fake):
    from conceptsim.data.coco import make_loader
    from conceptsim.data.geometry import area_pool

    ds = ConceptDataset(fake, eval_grid=(8, 8))
    b = next(iter(make_loader(ds.with_targets([(4, 4), (7, 7)]), batch_size=2)))
    ref = next(iter(make_loader(ds, batch_size=2)))
    assert "image" not in b and "masks_input" not in b and ds.target_grids == ()
    for t, g in zip(b["targets"], [(4, 4), (7, 7)]):
        assert t.dtype == torch.float16 and t.shape == (2, len(ds.concepts), *g)
        np.testing.assert_allclose(t.float().numpy(), area_pool(ref["masks_input"], g).numpy(), atol=1e-3)
    assert torch.equal(b["masks_eval"], ref["masks_eval"])
    img = ds.images_only()[0]
    assert torch.equal(img, ref["image"][0])


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d["images"][1].update(file_name=d["images"][0]["file_name"]),
         r"file '0001.png' is listed under two image ids, 1 and 2"),
        (lambda d: d["categories"][3].update(name="car"), r"category name 'car' is used by two categories, ids 3 and 4"),
        (lambda d: d["annotations"][3]["segmentation"].update(counts="1111"),
         r"annotation 4 \(image 2, 0002.png\) has a corrupt RLE: its runs cover 5 pixels, the image has 2400"),
        (lambda d: d["annotations"][3]["segmentation"].update(counts="PPPP"),
         r"annotation 4 \(image 2, 0002.png\) has a corrupt RLE: the string ends inside a run length"),
        (lambda d: d["annotations"][3]["segmentation"].update(counts="0\x7f"),
         r"annotation 4 \(image 2, 0002.png\) has a corrupt RLE: character"),
        (lambda d: d["annotations"][3]["segmentation"].update(counts=[10, -5, 2395]),
         r"annotation 4 .* corrupt RLE: a negative run length"),
        (lambda d: d["annotations"][3]["segmentation"].update(counts=[10, 20]),
         r"annotation 4 .* corrupt RLE: its runs cover 30 pixels, the image has 2400"),
    ],
)
def test_inconsistent_datasets_are_rejected_naming_file_and_record(fake, edit, match):
    _edit(fake, edit)
    with pytest.raises(DatasetError, match=match) as e:
        ConceptDataset(fake)
    assert str(fake) in str(e.value)


def test_rle_check_agrees_with_pycocotools():
    from conceptsim.data.coco import rle_problem

    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = (int(x) for x in rng.integers(1, 40, 2))
        rle = mask_utils.encode(np.asfortranarray((rng.random((h, w)) < rng.random()).astype(np.uint8)))
        assert rle_problem(rle["counts"].decode(), h * w) is None
        assert rle_problem(rle["counts"].decode(), h * w + 1) is not None


def test_batched_rle_check_agrees_with_the_one_by_one_check():
    """load_annotations checks every compressed RLE of a file in one numpy pass; it must pass exactly those
    that rle_problem passes (valid RLEs of several sizes, and the same with a character changed, cut or
    replaced by one outside the encoding, a wrong size or a negative run)."""
    from conceptsim.data.coco import _rles_cover_images, rle_problem

    rng = np.random.default_rng(1)
    images = {i: {"height": int(h), "width": int(w)} for i, (h, w) in enumerate(rng.integers(1, 30, (6, 2)))}
    anns = []
    for _ in range(600):
        iid = int(rng.integers(len(images)))
        h, w = images[iid]["height"], images[iid]["width"]
        counts = mask_utils.encode(np.asfortranarray((rng.random((h, w)) < rng.random()).astype(np.uint8)))["counts"].decode()
        edit = int(rng.integers(6))
        if edit == 1:  # a changed character (may stay valid)
            i = int(rng.integers(len(counts)))
            counts = counts[:i] + chr(int(rng.integers(48, 112))) + counts[i + 1:]
        elif edit == 2:
            counts = counts[: int(rng.integers(len(counts) + 1))]
        elif edit == 3:
            counts = counts + "~" if rng.random() < 0.5 else "é" + counts
        elif edit == 4:
            counts = counts + "P"  # a run with the continuation bit at the end of the string
        elif edit == 5:
            counts = "00" + counts[2:] if len(counts) > 2 else "0"
        anns.append({"image_id": iid, "segmentation": {"size": [h, w], "counts": counts}})
    anns.append({"image_id": 0, "segmentation": {"size": [1, 1], "counts": "1"}})  # size not the image's
    anns.append({"image_id": [0], "segmentation": {"size": [1, 1], "counts": "1"}})  # unhashable image id
    anns.append({"image_id": 0, "segmentation": {"size": [images[0]["height"], images[0]["width"]], "counts": "o" * 13}})
    ok = _rles_cover_images(anns, images)
    expected = []
    for a in anns:
        im = images.get(a["image_id"]) if isinstance(a["image_id"], int) else None
        seg = a["segmentation"]
        expected.append(im is not None and seg["size"] == [im["height"], im["width"]]
                        and rle_problem(seg["counts"], im["height"] * im["width"]) is None)
    assert ok.tolist() == expected
    assert 50 < sum(expected) < len(anns) - 50  # both kinds are well represented


def test_all_splits_are_served_split_major(tmp_path):
    """Without ``split`` the images come train, val, test (each sorted): one contiguous run per split in a store."""
    from conceptsim.data.shapes import build_shapes

    ann = build_shapes(tmp_path / "s", n=30, size=64, seed=0)
    ds = ConceptDataset(ann, min_area=0.0)
    order = [ds.split_of(i) for i in ds.image_ids]
    codes = [("train", "val", "test").index(s) for s in order]
    assert codes == sorted(codes) and len(set(order)) == 3
    for s in ("train", "val", "test"):
        part = [i for i in ds.image_ids if ds.split_of(i) == s]
        assert part == sorted(part) == ConceptDataset(ann, split=s, min_area=0.0).image_ids


def test_every_object_mask_unites_object_categories_only(fake):
    """The every-object control: instances of object categories (car, bus: supercategory vehicle) whatever the
    concepts served; shape categories (box, dot) are no objects; a dataset serving only shapes has no control."""
    shapes_only = ConceptDataset(fake, concepts=["box", "dot"], min_area=0.0)
    assert not shapes_only.has_objects
    with pytest.raises(ValueError, match="not objects"):
        shapes_only.object_label(1)
    ds = ConceptDataset(fake, concepts={"box": {"categories": ["box"], "category": "object"}}, eval_grid=(4, 6))
    assert ds.has_objects
    car = np.zeros((40, 60), np.uint8)
    car[0:4, 0:4] = 1  # the car polygon of image 1 (16 px = 0.67 % of the image)
    for iid in ds.image_ids:
        want = car if iid == 1 else np.zeros_like(car)
        assert np.array_equal(ds.object_mask(iid), want)
        assert ds.object_label(iid) == int(iid == 1)
        row = ds.image_ids.index(iid)
        assert ds[row]["objects_eval"].shape == (4, 6) and int(ds[row]["objects_eval"].sum()) == 0  # 4 x 4 px < half a 10 x 10 cell
    batch = next(iter(make_loader(ds, batch_size=3)))
    assert batch["objects_eval"].shape == (3, 4, 6) and batch["object_label"].shape == (3,)
