"""The extraction stage on a real (small) model and dataset: store round trip, reuse and staleness, grid cap,
chunking and compression, the pixels floor, a forced extraction beside the user's files."""

import numpy as np
import pytest
import torch

from conceptsim.extraction.extract import capped_grid, extract
from conceptsim.extraction.hooks import record_activations
from conceptsim.extraction.store import ActivationStore, StoreError
from conceptsim.models.registry import build_model
from conceptsim.models.twins import TWIN_INIT_VERSION


def test_capped_grid():
    assert capped_grid((160, 160), 40) == (40, 40)
    assert capped_grid((20, 20), 40) == (20, 20)
    assert capped_grid((100, 50), 40) == (40, 20)


def test_extraction_store_roundtrip_reuse_and_staleness(small_dataset_and_model, tmp_path):
    loaded, ds = small_dataset_and_model
    layers = ["features.2", "features.14"]
    path = tmp_path / "activations.zarr"
    res = extract(loaded, ds, path, layers=layers, batch_size=5, grid_cap=10, progress=False)
    assert not res.reused and res.n_images == len(ds)
    store = ActivationStore(path)
    a = store.activations("features.2")
    assert a.shape == (len(ds), 24, 10, 10) and a.dtype == np.float16
    assert store.activations("features.14").shape[-2:] == (7, 7)  # below the cap: native grid
    assert store.masks.shape == (len(ds), len(ds.concepts), 16, 16)
    assert store.attrs["weights_sha256"] == f"random-init-v{TWIN_INIT_VERSION}-seed-0"
    # stored activations equal a direct forward pass, pooled to the cap
    item = ds[0]
    with record_activations(loaded.module, ["features.2"]) as rec, torch.no_grad():
        loaded.module(item["image"][None])
    direct = torch.nn.functional.adaptive_avg_pool2d(rec["features.2"], (10, 10))[0].numpy()
    np.testing.assert_allclose(np.asarray(a[0], dtype=np.float32), direct, rtol=2e-3, atol=2e-3)
    # targets are the masks area-averaged onto the stored grid
    t = np.asarray(store.targets("features.2")[0], dtype=np.float32)
    assert t.min() >= 0 and t.max() <= 1
    # reuse when unchanged; recompute when an input changes (grid cap)
    assert extract(loaded, ds, path, layers=layers, batch_size=5, grid_cap=10, progress=False).reused
    res2 = extract(loaded, ds, path, layers=layers, batch_size=5, grid_cap=8, progress=False)
    assert not res2.reused and ActivationStore(path).activations("features.2").shape[-1] == 8


def test_preprocessing_mismatch_is_an_error(small_dataset_and_model, tmp_path):
    _, ds = small_dataset_and_model
    other = build_model("yolov8n:random")
    with pytest.raises(ValueError, match="does not match"):
        extract(other, ds, tmp_path / "x.zarr", layers=["model.0"], progress=False)


def test_extraction_chunking_and_compression_do_not_change_the_store(small_dataset_and_model, tmp_path):
    loaded, ds = small_dataset_and_model
    kw = dict(layers=["features.4"], batch_size=3, grid_cap=6, progress=False, masks_dir=tmp_path / "m")
    extract(loaded, ds, tmp_path / "a.zarr", images_per_chunk=4, **kw)  # chunks cut across batches
    extract(loaded, ds, tmp_path / "b.zarr", images_per_chunk=100, compression="zstd", **kw)
    a, b = ActivationStore(tmp_path / "a.zarr"), ActivationStore(tmp_path / "b.zarr")
    assert a.activations("features.4").chunks[0] == 4
    assert a.attrs["compression"] == "none" and not a.activations("features.4").compressors
    assert b.attrs["compression"] == "zstd" and type(b.activations("features.4").compressors[0]).__name__ == "ZstdCodec"
    assert a.attrs["key"] != b.attrs["key"]  # another setting, another store
    assert np.array_equal(a.activations("features.4")[:], b.activations("features.4")[:])
    assert np.array_equal(a.image_ids, ds.image_ids) and np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.content_boxes, b.content_boxes)


def test_bare_forward_seconds_both_baselines(small_dataset_and_model):
    from conceptsim.extraction.extract import bare_forward_seconds

    loaded, ds = small_dataset_and_model
    assert bare_forward_seconds(loaded, ds, 8) > 0
    assert bare_forward_seconds(loaded, ds, 8, preloaded=True) > 0


def test_pool_to_matches_adaptive_pooling():
    from conceptsim.extraction.extract import pool_to

    x = torch.randn(2, 3, 32, 24)
    for grid in [(8, 6), (7, 5), (32, 24), (16, 8)]:
        assert torch.allclose(pool_to(x, grid), torch.nn.functional.adaptive_avg_pool2d(x, grid), atol=1e-6)


def test_pixels_model_stores_the_standardised_image_pooled_at_each_stride(tmp_path):
    """The pixels floor through the extraction stage: each layer is the image's RGB, standardised per
    channel, averaged over stride x stride pixel blocks (capped like any layer), at relative depth 0."""
    from conceptsim import pipeline
    from conceptsim.models.names import PIXELS_MODEL
    from conceptsim.models.registry import IMAGENET_MEAN, IMAGENET_STD

    loaded = build_model(PIXELS_MODEL)
    assert not loaded.random_init and loaded.preprocessing.size == (224, 224)
    ds, _ = pipeline.open_dataset("shapes", {"build": {"n": 10, "size": 64, "seed": 5}},
                                  {"fractions": [0.6, 0.2, 0.2], "seed": 0, "min_area": 0.005},
                                  loaded.preprocessing, 16)
    path = tmp_path / "pixels.zarr"
    extract(loaded, ds, path, batch_size=4, grid_cap=20, dtype="float32", progress=False)
    store = ActivationStore(path)
    assert store.layer_names == ["stride4", "stride8", "stride16", "stride32"]
    assert store.attrs["n_convs"] == 0
    info = {n: store.layer(n) for n in store.layer_names}
    assert all(i.relative_depth == 0.0 and i.channels == 3 for i in info.values())
    assert [info[n].native_grid for n in store.layer_names] == [(56, 56), (28, 28), (14, 14), (7, 7)]
    assert [info[n].grid for n in store.layer_names] == [(20, 20), (20, 20), (14, 14), (7, 7)]
    mean, std = np.array(IMAGENET_MEAN)[:, None, None], np.array(IMAGENET_STD)[:, None, None]
    for row in (0, len(ds) - 1):
        rgb = ds.read_image(int(store.image_ids[row])).astype(np.float64)  # H x W x 3 uint8, before preprocessing
        image = np.asarray(loaded.preprocessing.apply_image(rgb.astype(np.uint8)), np.float64)
        np.testing.assert_allclose(image.mean(), rgb.mean() / 255.0, atol=0.02)  # a stretched copy of the photo
        z = (image - mean) / std
        for stride in (16, 32):
            g = 224 // stride
            expected = z.reshape(3, g, stride, g, stride).mean(axis=(2, 4))
            np.testing.assert_allclose(store.activations(f"stride{stride}")[row], expected, atol=1e-4)
        # stride 4 (56 x 56) capped at 20: average pooling of the pooled map (adaptive bins)
        capped = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(z.reshape(3, 56, 4, 56, 4).mean(axis=(2, 4)))[None],
                                                         (20, 20))[0].numpy()
        np.testing.assert_allclose(store.activations("stride4")[row], capped, atol=1e-4)


def test_a_forced_extraction_refuses_a_store_holding_the_users_files(small_dataset_and_model, tmp_path):
    from conceptsim.extraction.store import foreign_files

    loaded, ds = small_dataset_and_model
    path = tmp_path / "activations.zarr"
    extract(loaded, ds, path, layers=["features.2"], batch_size=8, grid_cap=4, progress=False)
    assert foreign_files(path) == []  # everything the suite writes is recognised as the store's
    notes = path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(StoreError, match=r"activations.zarr holds files the suite did not write \(notes.txt\)"):
        extract(loaded, ds, path, layers=["features.2"], batch_size=8, grid_cap=4, progress=False, force=True)
    assert notes.read_text() == "mine"
    notes.unlink()
    assert not extract(loaded, ds, path, layers=["features.2"], batch_size=8, grid_cap=4, progress=False, force=True).reused
