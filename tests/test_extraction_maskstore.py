"""The shared mask store: what its key depends on, and clear errors for a missing or stale store."""

from types import SimpleNamespace

import numpy as np
import pytest
import zarr

from conceptsim.data.geometry import Preprocessing
from conceptsim.extraction.extract import extract
from conceptsim.extraction.maskstore import MASK_SCHEMA, MaskStore, grid_name, mask_store_key
from conceptsim.extraction.store import ActivationStore
from conceptsim.extraction.zarrio import StoreError


def fake_dataset(tmp_path, concepts=("sky", "dog"), size=(64, 64)):
    ann = tmp_path / "annotations.json"
    ann.write_text("{}")
    return SimpleNamespace(annotation_file=ann, image_dir=tmp_path, image_ids=np.array([3, 1, 2]),
                           concepts=[SimpleNamespace(name=c) for c in concepts],
                           preprocessing=Preprocessing(size=size), eval_grid=(8, 8))


def test_key_ignores_grid_order_and_follows_what_changes_the_masks(tmp_path):
    ds = fake_dataset(tmp_path)
    key = mask_store_key(ds, [(4, 4), (2, 2)], "abc")
    assert key == mask_store_key(ds, [(2, 2), (4, 4)], "abc")
    assert key != mask_store_key(ds, [(4, 4)], "abc")
    assert key != mask_store_key(ds, [(4, 4), (2, 2)], "abd")
    assert key != mask_store_key(fake_dataset(tmp_path, size=(32, 32)), [(4, 4), (2, 2)], "abc")
    assert key != mask_store_key(fake_dataset(tmp_path, concepts=("dog", "sky")), [(4, 4), (2, 2)], "abc")
    assert grid_name((4, 2)) == "4x2"


def test_missing_incomplete_and_stale_stores_are_refused(tmp_path):
    path = tmp_path / "m.zarr"
    with pytest.raises(StoreError, match="does not exist"):
        MaskStore(path)
    g = zarr.open_group(str(path), mode="w")
    g.attrs.update(schema=MASK_SCHEMA, key="k1", complete=False, grids=["2x2"])
    g.create_array("image_id", shape=(2,), dtype="int64")[:] = [5, 6]
    with pytest.raises(StoreError, match="incomplete"):
        MaskStore(path)
    g.attrs["complete"] = True
    with pytest.raises(StoreError, match="other inputs"):
        MaskStore(path, expected_key="k2")
    store = MaskStore(path, expected_key="k1")
    assert store.image_ids.tolist() == [5, 6]
    with pytest.raises(StoreError, match="no targets on grid 4x4"):
        store.targets((4, 4))


def _union_of_all_instances(annotation_file, image_id):
    from pycocotools.coco import COCO

    coco = COCO(str(annotation_file))
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
    return np.any([coco.annToMask(a) for a in anns], axis=0).astype(np.uint8)


def test_every_object_mask_reaches_the_mask_store_whatever_the_concepts(tmp_path):
    """coco-icons served with one concept (car): the store's every-object masks still cover every instance of
    every category (cell rule of the concept masks), "some object present" is set, and the concept masks are
    unchanged; a dataset whose concepts are colours has no every-object arrays."""
    from conceptsim.data import coco_icons
    from conceptsim.data.coco import ConceptDataset
    from conceptsim.data.geometry import area_fraction_grid
    from conceptsim.data.photo_colors import build_photo_colors
    from conceptsim.extraction.maskstore import ensure_mask_store

    ann = coco_icons.build_coco_icons(tmp_path / "icons", n=10, size=96, seed=3, styles=["noto", "twemoji"],
                                      categories=["person", "car", "dog"], mode="scene", workers=1)
    pp = Preprocessing(size=(64, 64), resize="letterbox")
    ds = ConceptDataset(ann, concepts=["car"], split_by="random", min_area=0.0, preprocessing=pp, eval_grid=(12, 12))
    assert ds.has_objects and [c.name for c in ds.concepts] == ["car"]
    store, reused = ensure_mask_store(ds, [(4, 4)], tmp_path / "m", progress=False)
    assert not reused and store.has_objects and store.objects.shape == (len(ds), 12, 12)
    more_than_car = 0
    for row, iid in enumerate(ds.image_ids):
        every = _union_of_all_instances(ann, iid)
        assert np.array_equal(ds.object_mask(iid), every)
        want = (area_fraction_grid(every[None], (12, 12))[0] >= 0.5).astype(np.uint8)
        assert np.array_equal(np.asarray(store.objects[row]), want)
        assert np.array_equal(np.asarray(store.masks[row]), ds[row]["masks_eval"].numpy())
        assert (np.asarray(store.masks[row, 0]) <= want).all()  # a concept's mask lies inside the every-object mask
        more_than_car += int(want.sum() > np.asarray(store.masks[row, 0]).sum())
    assert more_than_car > 0  # other categories' objects are in it too
    assert store.object_labels.tolist() == [1] * len(ds)  # every coco-icons image shows an object
    # a colour dataset: no every-object control, and asking for it is a clear error
    pc = ConceptDataset(build_photo_colors(tmp_path / "pc", n=6, size=32), split_by="random", min_area=0.0,
                        preprocessing=pp, eval_grid=(8, 8))
    assert not pc.has_objects and "objects_eval" not in pc[0]
    with pytest.raises(ValueError, match="not objects"):
        pc.object_mask(pc.image_ids[0])
    plain, _ = ensure_mask_store(pc, [(4, 4)], tmp_path / "m", progress=False)
    assert not plain.has_objects and plain.objects is None and plain.object_labels is None


def test_mask_store_is_shared_rebuilt_when_missing_and_targets_are_pooled_masks(small_dataset_and_model, tmp_path):
    import shutil

    from conceptsim.data.geometry import area_pool

    loaded, ds = small_dataset_and_model
    kw = dict(layers=["features.2", "features.14"], batch_size=5, grid_cap=10, progress=False, masks_dir=tmp_path / "m")
    first = extract(loaded, ds, tmp_path / "a.zarr", **kw)
    assert not first.masks_reused and first.mask_seconds > 0 and first.mask_store.parent == tmp_path / "m"
    # another model with the same input geometry and grids (here: the same model, another study) reuses it
    second = extract(loaded, ds, tmp_path / "b.zarr", metadata={"study": "other"}, **kw)
    assert not second.reused and second.masks_reused and second.mask_store == first.mask_store
    store = ActivationStore(tmp_path / "a.zarr")
    assert "masks" not in store.group and "targets" not in store.group  # activations only
    item = ds[3]
    for layer in kw["layers"]:
        grid = store.layer(layer).grid
        want = area_pool(item["masks_input"], grid).numpy()
        np.testing.assert_allclose(np.asarray(store.targets(layer)[3], np.float32), want, atol=1e-3)
    assert np.array_equal(np.asarray(store.masks[3]), item["masks_eval"].numpy())
    # a deleted mask store makes the activation store unusable, and the next extraction rebuilds only the masks
    shutil.rmtree(first.mask_store)
    with pytest.raises(StoreError, match="masks are missing or stale"):
        ActivationStore(tmp_path / "a.zarr")
    again = extract(loaded, ds, tmp_path / "a.zarr", **kw)
    assert again.reused and not again.masks_reused
    ActivationStore(tmp_path / "a.zarr")
