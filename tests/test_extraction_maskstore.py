"""The shared mask store: what its key depends on, and clear errors for a missing or stale store."""

from types import SimpleNamespace

import numpy as np
import pytest
import zarr

from conceptsim.data.geometry import Preprocessing
from conceptsim.extraction.maskstore import MASK_SCHEMA, MaskStore, grid_name, mask_store_key
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
