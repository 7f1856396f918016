"""The extraction stage: one forward pass per batch records every probed layer into a Zarr store.

Stored grid cap: a layer whose output grid exceeds ``grid_cap`` on a side is average-pooled to at most
``grid_cap x grid_cap`` (aspect kept), and the Net2Vec targets are the masks area-averaged onto the same
grid. A 1x1 probe is linear, so pooling its input equals pooling its logits: the cap lowers resolution
without changing what a probe can express. The cap is a parameter and is recorded in the metadata.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from conceptsim.atomic import atomic_path, sha256_json
from conceptsim.data.geometry import area_pool
from conceptsim.extraction.hooks import record_activations
from conceptsim.extraction.store import ActivationStore, LayerInfo, StoreError, StoreWriter
from conceptsim.models.depth import trace_depth
from conceptsim.models.registry import LoadedModel


def capped_grid(grid: Sequence[int], cap: int) -> tuple[int, int]:
    """The stored grid of a layer: its own grid scaled so that no side exceeds ``cap``."""
    h, w = int(grid[0]), int(grid[1])
    if max(h, w) <= cap:
        return (h, w)
    r = cap / max(h, w)
    return (max(1, math.floor(h * r)), max(1, math.floor(w * r)))


def pool_to(fmap: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    if tuple(fmap.shape[-2:]) == tuple(grid):
        return fmap
    return F.adaptive_avg_pool2d(fmap, tuple(grid))


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
    path: Path
    reused: bool
    n_images: int
    seconds: float
    images_per_second: float


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
    force: bool = False,
    progress: bool = True,
) -> ExtractionResult:
    """Run ``model`` over every image of ``dataset`` and write the activation store at ``out_path``.

    ``dataset`` is a :class:`conceptsim.data.coco.ConceptDataset` built with this model's preprocessing.
    A complete store with the same key (model, weights, layers, preprocessing, dataset hash, images,
    cap, dtype, extra ``metadata``) is reused; any other store at that path is recomputed.
    """
    from conceptsim.data.coco import make_loader

    ds_prep = getattr(dataset, "preprocessing", None)
    if ds_prep is not None and ds_prep != model.preprocessing:
        raise ValueError(
            f"dataset pre-processing {ds_prep} does not match {model.name}'s {model.preprocessing}; "
            "build the dataset with the model's preprocessing so masks stay aligned"
        )
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
    infos, total_convs = probe_layers(model, layers, grid_cap)
    concepts = [{"name": c.name, "category": c.category} for c in dataset.concepts]
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
    )
    key = store_key({**meta, "concepts": concepts, "layers": [i.to_dict() for i in infos]})
    meta["key"] = key
    out_path = Path(out_path)
    t0 = time.perf_counter()
    if not force and out_path.exists():
        try:
            store = ActivationStore(out_path, expected_key=key)
            return ExtractionResult(out_path, True, len(store.image_ids), 0.0, float("nan"))
        except StoreError:
            pass  # stale or broken: recompute below
    n = len(dataset)
    grids = {i.name: i.grid for i in infos}
    torch_dtype = torch.float16 if dtype == "float16" else torch.float32
    loader = make_loader(dataset, batch_size=batch_size, num_workers=num_workers)
    device = next(model.module.parameters()).device
    bar = _progress(n, model.name, progress)
    with atomic_path(out_path) as tmp:
        # chunks hold whole batches, so every chunk is compressed once (no read-modify-write)
        writer = StoreWriter(tmp, n_images=n, layers=infos, concepts=concepts, eval_grid=dataset.eval_grid,
                             metadata=meta, dtype=dtype, images_per_chunk=batch_size)

        def pool_hook(name: str, fmap: torch.Tensor) -> torch.Tensor:
            # pool inside the hook: the full-resolution map is freed at once (memory bounded by batch)
            return pool_to(fmap.float(), grids[name]).to(torch_dtype).cpu()

        with record_activations(model.module, [i.name for i in infos], pool_hook, model.name) as rec, torch.no_grad():
            for batch in loader:
                images = batch["image"].to(device, non_blocking=True)
                model.features(images)
                masks_in = batch["masks_input"]
                # layers share grids: pool the masks once per distinct grid
                targets = {g: area_pool(masks_in, g).half().numpy() for g in set(grids.values())}
                writer.write_batch(
                    image_ids=batch["image_id"].numpy(),
                    splits=list(batch["split"]),
                    labels=batch["labels"].numpy(),
                    content_boxes=batch["content_box"].numpy(),
                    masks=batch["masks_eval"].numpy(),
                    activations={name: rec[name].numpy() for name in grids},
                    targets={name: targets[g] for name, g in grids.items()},
                )
                rec.clear()
                bar.update(len(images))
        writer.finish()
    bar.close()
    seconds = time.perf_counter() - t0
    return ExtractionResult(out_path, False, n, seconds, n / seconds if seconds else float("nan"))


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"extract {desc}", unit="img", disable=not enabled, mininterval=2.0)


def bare_forward_seconds(model: LoadedModel, dataset: Any, batch_size: int = 8) -> float:
    """Wall time of the bare forward pass over ``dataset`` (the baseline of the overhead benchmark)."""
    from conceptsim.data.coco import make_loader

    loader = make_loader(dataset, batch_size=batch_size, num_workers=0)
    batches = [b["image"] for b in loader]
    device = next(model.module.parameters()).device
    t0 = time.perf_counter()
    with torch.no_grad():
        for x in batches:
            model.features(x.to(device))
    return time.perf_counter() - t0
