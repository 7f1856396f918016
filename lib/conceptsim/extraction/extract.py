"""The extraction stage: one forward pass per batch records every probed layer into a Zarr store.

The pass ends at the deepest probed layer (:class:`conceptsim.extraction.hooks.Recording`): a detector's
heads and box decoding after it change no record (SSD-MobileNetV2 with extras.1 probed: about 30 % of its
extraction's CPU time).

Stored grid cap: a layer whose output grid exceeds ``grid_cap`` on a side is average-pooled to at most
``grid_cap x grid_cap`` (aspect kept), and the Net2Vec targets are the masks area-averaged onto the same
grid. A 1x1 probe is linear, so pooling its input equals pooling its logits: the cap lowers resolution
without changing what a probe can express. The cap is a parameter and is recorded in the metadata.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from conceptsim.atomic import atomic_path, sha256_json
from conceptsim.data.geometry import capped_grid
from conceptsim.extraction.depth import trace_depth
from conceptsim.extraction.hooks import record_activations
from conceptsim.extraction.store import (
    COMPRESSORS,
    STORE_DTYPES,
    ActivationStore,
    LayerInfo,
    StoreError,
    StoreWriter,
    refuse_foreign_files,
)
from conceptsim.models.registry import LoadedModel
from conceptsim.runtime import configure_process
from conceptsim.runtime.background import BackgroundCalls, helper_libraries_single_threaded, prefetched

__all__ = ["ExtractionResult", "bare_forward_seconds", "capped_grid", "extract", "pool_to", "probe_layers", "store_key"]


def pool_to(fmap: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Average-pool ``fmap`` onto ``grid`` (``adaptive_avg_pool2d`` bins; plain ``avg_pool2d`` when they tile)."""
    (h, w), (gh, gw) = fmap.shape[-2:], (int(grid[0]), int(grid[1]))
    if (h, w) == (gh, gw):
        return fmap
    if h % gh == 0 and w % gw == 0:  # same bins, a faster kernel
        return F.avg_pool2d(fmap, (h // gh, w // gw))
    return F.adaptive_avg_pool2d(fmap, (gh, gw))


def probe_layers(model: LoadedModel, layers: Sequence[str] | None, grid_cap: int) -> tuple[list[LayerInfo], int]:
    """Trace the model once at its input size and describe the probed layers."""
    layers = list(layers or model.spec.default_layers)
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers for {model.name} contain duplicates: {layers}")
    h, w = model.preprocessing.size
    device = next(model.module.parameters()).device
    example = torch.zeros(1, 3, h, w, device=device)
    traced, total = trace_depth(model.module, layers, example, forward=model.spec.full_forward, model_name=model.name)
    infos = [
        LayerInfo(t.name, t.module_type, t.shape[0], capped_grid(t.shape[1:], grid_cap), tuple(t.shape[1:]),
                  t.conv_position, t.relative_depth, t.probe_rank)
        for t in traced
    ]
    return infos, total


@dataclass
class ExtractionResult:
    """What :func:`extract` did.

    ``seconds`` is the whole call; ``mask_seconds`` the part spent building the shared mask store (0 when
    it was reused) and ``activation_seconds`` the forward passes with recording and writing.
    """

    path: Path
    reused: bool
    n_images: int
    seconds: float
    images_per_second: float
    mask_store: Path | None = None
    masks_reused: bool = True
    mask_seconds: float = 0.0
    activation_seconds: float = 0.0


def store_key(metadata: dict[str, Any]) -> str:
    return sha256_json({k: v for k, v in metadata.items() if k not in ("key", "complete", "timings")})


def extract(
    model: LoadedModel,
    dataset: Any,
    out_path: str | Path,
    *,
    layers: Sequence[str] | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
    grid_cap: int = 40,
    dtype: str = "float16",
    metadata: dict[str, Any] | None = None,
    masks_dir: str | Path | None = None,
    images_per_chunk: int = 32,
    compression: str = "none",
    force: bool = False,
    progress: bool = True,
) -> ExtractionResult:
    """Run ``model`` over every image of ``dataset`` and write the activation store at ``out_path``.

    ``dataset`` is a :class:`conceptsim.data.coco.ConceptDataset` built with this model's preprocessing.
    A complete store with the same key (model, weights, layers, preprocessing, dataset hash, images,
    cap, dtype, extra ``metadata``) is reused; any other store at that path is recomputed.

    The concept masks and soft targets go to a shared mask store in ``masks_dir`` (default: a
    ``_masks`` folder beside ``out_path``), built first unless one with the same key is there already
    (:func:`conceptsim.extraction.maskstore.ensure_mask_store`); ``force`` rebuilds the activations, and the
    mask store too when its data no longer match the hash recorded when it was built (a forced extraction is
    how the runner repairs a changed store; a valid one is shared by the dataset's other models and kept).
    The forward loop then reads images only: the next batch is decoded in a prefetch thread and the
    previous one written (``images_per_chunk`` images per Zarr chunk; ``compression`` ``"none"`` or
    ``"zstd"``, see :data:`conceptsim.extraction.store.COMPRESSORS`) in a writer thread while the model runs.
    """
    from conceptsim.extraction.maskstore import ensure_mask_store

    configure_process()
    ds_prep = getattr(dataset, "preprocessing", None)
    if ds_prep is not None and ds_prep != model.preprocessing:
        raise ValueError(
            f"dataset pre-processing {ds_prep} does not match {model.name}'s {model.preprocessing}; "
            "build the dataset with the model's preprocessing so masks stay aligned"
        )
    if dtype not in STORE_DTYPES:
        raise ValueError(f"dtype must be one of {list(STORE_DTYPES)}, got {dtype!r}")
    if compression not in COMPRESSORS:
        raise ValueError(f"compression must be one of {sorted(COMPRESSORS)}, got {compression!r}")
    if images_per_chunk < 1:
        raise ValueError(f"images_per_chunk must be >= 1, got {images_per_chunk}")
    infos, total_convs = probe_layers(model, layers, grid_cap)
    concepts = [{"name": c.name, "category": c.category} for c in dataset.concepts]
    out_path = Path(out_path)
    t0 = time.perf_counter()
    masks, masks_reused = ensure_mask_store(
        dataset, [i.grid for i in infos], Path(masks_dir) if masks_dir else out_path.parent / "_masks",
        dataset_sha256=(metadata or {}).get("dataset_sha256"), batch_size=batch_size, num_workers=num_workers,
        progress=progress, verify=force)
    mask_seconds = time.perf_counter() - t0
    meta = dict(metadata or {})
    meta.update(
        model=model.name,
        weights_sha256=model.weights_sha256,
        preprocessing=model.preprocessing.to_dict(),
        grid_cap=int(grid_cap),
        dtype=dtype,
        n_convs=total_convs,
        image_ids=[int(i) for i in dataset.image_ids],
        layers_requested=[i.name for i in infos],
        mask_store_key=masks.attrs["key"],
        compression=compression,
    )
    key = store_key({**meta, "concepts": concepts, "layers": [i.to_dict() for i in infos]})
    meta["key"] = key
    if not force and out_path.exists():
        try:
            store = ActivationStore(out_path, expected_key=key)
            return ExtractionResult(out_path, True, len(store.image_ids), time.perf_counter() - t0, float("nan"),
                                    masks.path, masks_reused, mask_seconds, 0.0)
        except StoreError:
            pass  # stale or broken: recompute below
    n = len(dataset)
    grids = {i.name: i.grid for i in infos}
    torch_dtype = torch.float16 if dtype == "float16" else torch.float32
    device = next(model.module.parameters()).device
    ids = np.asarray(dataset.image_ids, dtype=np.int64)
    splits = [dataset.split_of(i) for i in ids]
    labels = np.stack([dataset.labels_of(i) for i in ids]) if n else np.zeros((0, len(concepts)), np.uint8)
    boxes = np.array([dataset.content_box_of(i) for i in ids], dtype=np.float32).reshape(n, 4)
    bar = _progress(n, model.name, progress)
    t1 = time.perf_counter()
    refuse_foreign_files(out_path)  # the store is replaced below: never with the user's files in it
    with atomic_path(out_path) as tmp:
        writer: StoreWriter | None = None

        def create() -> None:
            nonlocal writer
            writer = StoreWriter(tmp, n_images=n, layers=infos, concepts=concepts, eval_grid=dataset.eval_grid,
                                 metadata=meta, dtype=dtype, images_per_chunk=images_per_chunk, mask_store=masks,
                                 final_path=out_path, compression=compression)

        def pool_hook(name: str, fmap: torch.Tensor) -> torch.Tensor:
            # pool inside the hook: the full-resolution map is freed at once (memory bounded by batch)
            out = pool_to(fmap.float(), grids[name]).to(torch_dtype)
            # never keep the model's own tensor: a later in-place op (e.g. ReLU) would change the record
            return (out.clone() if out.data_ptr() == fmap.data_ptr() else out).cpu()

        def write(s: slice, activations: dict) -> None:
            writer.write_batch(image_ids=ids[s], splits=splits[s], labels=labels[s], content_boxes=boxes[s],
                               activations=activations)

        # one image per item, stacked by the loader: filling batch rows in place (an earlier image_batches) made
        # the peak RSS grow with the images (memory_scaling/extraction 1.04 -> 1.16)
        loader = DataLoader(dataset.images_only(), batch_size=batch_size, shuffle=False, num_workers=num_workers)
        done = 0
        with record_activations(model.module, [i.name for i in infos], pool_hook, model.name, stop_early=True) as rec, \
                helper_libraries_single_threaded(), prefetched(loader) as images, \
                BackgroundCalls(write) as writes, torch.no_grad():
            # three stages overlap: the next batch is decoded and the previous one written during a forward pass
            # (the store itself is created in the writer thread while the first batch is decoded)
            writes.submit_call(create)
            for x in images:
                rec.forward(model.features, x.to(device, non_blocking=True))  # ends after the deepest probed layer
                writes.submit(slice(done, done + len(x)), {name: rec[name].numpy() for name in grids})
                rec.clear()
                done += len(x)
                bar.update(len(x))
        writer.finish()
    bar.close()
    end = time.perf_counter()
    return ExtractionResult(out_path, False, n, end - t0, n / (end - t0) if end > t0 else float("nan"),
                            masks.path, masks_reused, mask_seconds, end - t1)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"extract {desc}", unit="img", disable=not enabled, mininterval=2.0)


def bare_forward_seconds(model: LoadedModel, dataset: Any, batch_size: int = 8, *, preloaded: bool = False) -> float:
    """Wall time of the bare forward pass over ``dataset``'s images (the overhead benchmark's baseline).

    By default the images are read and pre-processed as part of the pass, by the dataset's own image
    path in a prefetch thread, as any inference loop over images on disk does; no masks, hooks or
    writes. With ``preloaded=True`` every batch is read into memory first and only the forward passes
    are timed (the stricter baseline, which charges image decoding to the extraction).
    """
    configure_process()
    device = next(model.module.parameters()).device
    loader = DataLoader(dataset.images_only(), batch_size=batch_size, shuffle=False, num_workers=0)
    with helper_libraries_single_threaded(), torch.no_grad():
        if preloaded:
            batches = list(loader)
            t0 = time.perf_counter()
            for x in batches:
                model.features(x.to(device))
            return time.perf_counter() - t0
        t0 = time.perf_counter()
        with prefetched(loader) as images:
            for x in images:
                model.features(x.to(device, non_blocking=True))
        return time.perf_counter() - t0
