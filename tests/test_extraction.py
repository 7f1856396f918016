"""Hooks, relative depth and the extraction stage on a real (small) model and dataset."""

import numpy as np
import pytest
import torch
from torch import nn

from conceptsim.extraction.depth import trace_depth
from conceptsim.extraction.extract import capped_grid, extract
from conceptsim.extraction.hooks import LayerOutputError, record_activations
from conceptsim.extraction.store import ActivationStore, StoreError
from conceptsim.models.registry import build_model
from conceptsim.models.twins import TWIN_INIT_VERSION


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU())
        self.b = nn.Conv2d(4, 2, 3, stride=2, padding=1)
        self.pair = Pair()

    def forward(self, x):
        x = self.b(self.block(self.a(x)))
        return self.pair(x)


class Pair(nn.Module):
    def forward(self, x):
        return x, x


def test_relative_depth_counts_executed_convs():
    traced, total = trace_depth(Toy(), ["a", "block", "block.1", "b"], torch.zeros(1, 3, 8, 8))
    assert total == 3
    d = {t.name: (t.conv_position, t.relative_depth) for t in traced}
    assert d["a"] == (1, 1 / 3)
    assert d["block"] == (2, 2 / 3)  # a block takes the last conv that ran before its output
    assert d["block.1"] == (2, 2 / 3)
    assert d["b"] == (3, 1.0)


def test_hooks_do_not_change_outputs_and_are_removed_on_error():
    model = Toy().eval()
    x = torch.randn(2, 3, 8, 8)
    ref = model(x)[0]
    with record_activations(model, ["a", "b"]) as rec:
        out = model(x)[0]
    assert torch.equal(ref, out) and rec["a"].shape == (2, 4, 8, 8)
    with pytest.raises(RuntimeError, match="boom"):
        with record_activations(model, ["a"]):
            raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in model.modules())


def test_non_tensor_output_is_rejected_by_rule():
    model = Toy()
    with pytest.raises(LayerOutputError, match="'pair' returned a tuple of 2 items"):
        with record_activations(model, ["pair"]):
            model(torch.zeros(1, 3, 8, 8))


def test_capped_grid():
    assert capped_grid((160, 160), 40) == (40, 40)
    assert capped_grid((20, 20), 40) == (20, 20)
    assert capped_grid((100, 50), 40) == (40, 20)


@pytest.fixture(scope="module")
def small_dataset_and_model():
    from conceptsim import pipeline

    loaded = build_model("mobilenet_v2_imagenet:random")
    ds, source = pipeline.open_dataset("shapes", {"build": {"n": 24, "size": 96, "seed": 3}},
                                       {"fractions": [0.6, 0.2, 0.2], "seed": 0, "min_area": 0.005},
                                       loaded.preprocessing, 16)
    return loaded, ds


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


def test_preprocessing_mismatch_is_an_error(small_dataset_and_model, tmp_path):
    _, ds = small_dataset_and_model
    other = build_model("yolov8n:random")
    with pytest.raises(ValueError, match="does not match"):
        extract(other, ds, tmp_path / "x.zarr", layers=["model.0"], progress=False)


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


def test_background_threads_keep_order_and_raise_errors():
    from conceptsim.runtime.background import BackgroundCalls, prefetched

    with prefetched(range(20), lambda i: i * i, depth=2) as it:
        assert list(it) == [i * i for i in range(20)]

    def boom(i):
        if i == 3:
            raise ValueError("item 3 is bad")
        return i

    with pytest.raises(ValueError, match="item 3"), prefetched(range(10), boom) as it:
        list(it)
    with prefetched(range(1000)) as it:  # leaving early does not hang the producer
        next(it)

    seen = []
    with BackgroundCalls(seen.append, depth=1) as calls:
        calls.submit_call(seen.append, "opened")  # another callable, in the same order
        for i in range(50):
            calls.submit(i)
    assert seen == ["opened", *range(50)]

    def fail(i):
        raise OSError(f"disk full at {i}")

    with pytest.raises(OSError, match="disk full at 0"), BackgroundCalls(fail) as calls:
        calls.submit(0)


def test_chunked_rows(tmp_path):
    import zarr

    from conceptsim.extraction.store import ChunkedRows, write_together

    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    arr = g.create_array("x", shape=(10, 2), chunks=(4, 2), dtype="int64")
    ids = g.create_array("ids", shape=(10,), chunks=(10,), dtype="int64")
    rows = ChunkedRows({"x": arr}, 10, 4)
    data = np.arange(20).reshape(10, 2)
    for s in (slice(0, 3), slice(3, 6), slice(6, 10)):
        rows.append({"x": data[s]})
    rows.finish(also=[(ids, slice(None), np.arange(10) * 7)])  # written in the same round as the last rows
    assert np.array_equal(arr[:], data)
    assert np.array_equal(ids[:], np.arange(10) * 7)
    zero = g.create_array("z", shape=(4, 2), chunks=(2, 2), dtype="float16")
    write_together([(zero, slice(None), np.zeros((4, 2), np.float16))])  # fill-value chunks are still written
    assert sorted(p.name for p in (tmp_path / "g.zarr" / "z" / "c").iterdir()) == ["0", "1"]
    with pytest.raises(StoreError, match="rows given"):
        ChunkedRows({"x": arr}, 10, 4).append({"x": np.zeros((11, 2))})
    short = ChunkedRows({"x": arr}, 10, 4)
    short.append({"x": data[:3]})
    with pytest.raises(StoreError, match="3 of 10 rows"):
        short.finish()


def test_pool_to_matches_adaptive_pooling():
    from conceptsim.extraction.extract import pool_to

    x = torch.randn(2, 3, 32, 24)
    for grid in [(8, 6), (7, 5), (32, 24), (16, 8)]:
        assert torch.allclose(pool_to(x, grid), torch.nn.functional.adaptive_avg_pool2d(x, grid), atol=1e-6)


def test_keep_freed_memory_is_idempotent_and_can_be_switched_off(monkeypatch):
    import conceptsim.allocator as alloc

    monkeypatch.setattr(alloc, "_applied", None)
    monkeypatch.setenv("CONCEPTSIM_KEEP_FREED_MEMORY", "0")
    assert alloc.keep_freed_memory() is False
    monkeypatch.setattr(alloc, "_applied", None)
    monkeypatch.delenv("CONCEPTSIM_KEEP_FREED_MEMORY")
    first = alloc.keep_freed_memory()
    assert alloc.keep_freed_memory() == first  # applied once
    x = torch.ones(8, 64, 128, 128)  # a 33 MB tensor still allocates and computes correctly
    assert float(x.sum()) == x.numel()


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
def test_a_forced_extraction_refuses_a_store_holding_the_users_files(small_dataset_and_model, tmp_path):
    from conceptsim.extraction.store import StoreError, foreign_files

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
