"""The activation store: corrupt or incomplete stores are detected, the every-object control is served, and a
store reopens the dataset it was written from."""

import numpy as np
import pytest

from conceptsim.extraction.extract import extract
from conceptsim.extraction.store import ActivationStore, StoreError


def test_corrupt_or_incomplete_store_is_detected(small_dataset_and_model, tmp_path):
    loaded, ds = small_dataset_and_model
    path = tmp_path / "s.zarr"
    extract(loaded, ds, path, layers=["features.2"], batch_size=8, grid_cap=6, progress=False)
    (path / "zarr.json").write_text("{not json")
    with pytest.raises(StoreError, match="delete it to recompute"):
        ActivationStore(path)
    # extraction recomputes a broken store instead of reusing it
    assert not extract(loaded, ds, path, layers=["features.2"], batch_size=8, grid_cap=6, progress=False).reused
    ActivationStore(path)


def test_activation_store_serves_the_every_object_control(small_dataset_and_model, tmp_path):
    from conceptsim.data import coco_icons
    from conceptsim.data.coco import ConceptDataset

    loaded, shapes_ds = small_dataset_and_model
    ann = coco_icons.build_coco_icons(tmp_path / "icons", n=8, size=96, seed=1, styles=["noto", "twemoji"],
                                      categories=["car", "dog"], mode="objects", workers=1)
    ds = ConceptDataset(ann, concepts=["dog"], split_by="random", min_area=0.0, preprocessing=loaded.preprocessing,
                        eval_grid=(10, 10))
    extract(loaded, ds, tmp_path / "icons.zarr", layers=["features.2"], batch_size=4, grid_cap=6, progress=False)
    store = ActivationStore(tmp_path / "icons.zarr")
    assert store.has_objects and store.object_masks.shape == (len(ds), 10, 10)
    for row in range(len(ds)):
        item = ds[row]
        assert np.array_equal(np.asarray(store.object_masks[row]), item["objects_eval"].numpy())
    assert store.object_labels.tolist() == [1] * len(ds)
    extract(loaded, shapes_ds, tmp_path / "shapes.zarr", layers=["features.2"], batch_size=8, grid_cap=6, progress=False)
    plain = ActivationStore(tmp_path / "shapes.zarr")
    assert not plain.has_objects and plain.object_masks is None and plain.object_labels is None


def test_a_store_reopens_the_dataset_it_was_written_from(small_dataset_and_model, tmp_path):
    """open_dataset reads the files and the concept groups the store records (source_attrs and
    concept_definition_attrs); a store that records no files says so."""
    from conceptsim.data.coco import DatasetSource
    from conceptsim.extraction.store import concept_definition_attrs, source_attrs

    loaded, ds = small_dataset_and_model
    source = DatasetSource("shapes", ds.annotation_file, ds.image_dir, "sha", {"warm": "colour"})
    groups = {"warm": ["red", "yellow"], "cool": ["blue"]}
    meta = {**source_attrs(source), **concept_definition_attrs(source, groups)}
    assert concept_definition_attrs(source, ["red", "blue"]) == {}  # a list of categories needs no definition
    extract(loaded, ds, tmp_path / "a.zarr", layers=["features.2"], batch_size=8, grid_cap=4, metadata=meta, progress=False)
    store = ActivationStore(tmp_path / "a.zarr")
    reopened = store.open_dataset()
    for row in (0, len(ds) - 1):
        image_id = int(store.image_ids[row])
        assert np.array_equal(reopened.read_image(image_id), ds.read_image(image_id))
    grouped = store.open_dataset(concepts=["warm"], min_area=0.0)
    assert [c.name for c in grouped.concepts] == ["warm"] and grouped.concepts[0].category == "colour"
    extract(loaded, ds, tmp_path / "bare.zarr", layers=["features.2"], batch_size=8, grid_cap=4, progress=False)
    with pytest.raises(StoreError, match=r"bare.zarr does not record its dataset's annotation_file and image_dir"):
        ActivationStore(tmp_path / "bare.zarr").open_dataset()
