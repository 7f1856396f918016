"""Concept masks in a model's input geometry, computed once and shared by every model with that geometry.

The masks an activation store needs do not depend on the model's weights: binary masks on the
evaluation grid (image frame) and Net2Vec's soft targets on each activation grid (input frame). One
mask store per (dataset images, concepts, pre-processing, evaluation grid, activation grids) holds them;
a model and its random-init twin share it, and a re-extraction reuses it. An activation store records
the mask store's relative path and key, and :class:`~conceptsim.extraction.store.ActivationStore`
serves its ``masks`` and ``targets`` from there, so readers see one store.

Layout (Zarr v3)::

    <key>.zarr/
      zarr.json                   attributes: schema, key, complete, concepts, eval_grid, grids, preprocessing,
                                  objects (whether the two every-object arrays below are there)
      image_id   (N,)             int64   dataset image ids, in the activation stores' row order
      masks      (N, K, gh, gw)   uint8   binary masks on the evaluation grid (cell >= half covered)
      targets/<h>x<w> (N, K, h, w) float16 masks area-averaged onto an activation grid (input frame)
      objects    (N, gh, gw)      uint8   object datasets only: the every-object mask (the union of all
                                          instances of every object category, whatever the concepts) on
                                          the evaluation grid, by the same cell rule as ``masks``
      object_labels (N,)          uint8   object datasets only: "some object present" (every-object mask
                                          area >= min_area, as the concepts' presence labels)

The every-object arrays are the control of methods.md "Controls" (a probe that only finds objects scores
at their level) and the third stratum of agreement on object concepts (image x truth x any object); see
:attr:`MaskStore.objects`. Datasets without object concepts (``shapes``, ``photo-colors``) have neither.

Built under a temporary name; a complete store of the same key made meanwhile by another process (two
extractions running in parallel) is kept, never replaced under a reader; parallel builders of one store
wait for each other (:func:`conceptsim.atomic.exclusive`), so it is built once.

Content. A store records ``content_sha256``, the hash of its files other than its own ``zarr.json``
(:func:`content_digest`), when it is built. Opening it checks the attributes only; :meth:`MaskStore.damaged`
re-reads the data and compares. A forced extraction rebuilds a damaged store (:func:`ensure_mask_store`
with ``verify``), the concept stage refuses one before computing, and its identity covers the recorded hash.
A rebuilt store is byte for byte the one it replaces (no build time among its attributes), so the runner's
records of the other models that use it stay valid.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import zarr

from conceptsim.atomic import exclusive, folder_digest, settle_zarr_writes, sha256_json
from conceptsim.extraction.zarrio import ArrayHandles, ChunkedRows, StoreError, open_checked
from conceptsim.runtime.background import BackgroundCalls, helper_libraries_single_threaded, prefetched

log = logging.getLogger("conceptsim.extraction.maskstore")

MASK_SCHEMA = 2  # 2: the every-object arrays (objects, object_labels)
ROWS_PER_CHUNK = 64


def grid_name(grid: Sequence[int]) -> str:
    return f"{int(grid[0])}x{int(grid[1])}"


def dataset_identity(dataset: Any, dataset_sha256: str | None = None) -> dict:
    """What identifies the dataset's content: its hash when known, else the annotation file's path, size and mtime."""
    ann = Path(dataset.annotation_file)
    ident: dict[str, Any] = {"annotation_file": str(ann.resolve()), "image_dir": str(Path(dataset.image_dir).resolve())}
    if dataset_sha256:
        ident["dataset_sha256"] = dataset_sha256
    else:
        st = ann.stat()
        ident["annotation_stat"] = [st.st_size, st.st_mtime_ns]
    return ident


def mask_store_key(dataset: Any, grids: Sequence[Sequence[int]], dataset_sha256: str | None = None) -> str:
    return sha256_json({
        "schema": MASK_SCHEMA,
        "dataset": dataset_identity(dataset, dataset_sha256),
        "image_ids": [int(i) for i in dataset.image_ids],
        "concepts": [c.name for c in dataset.concepts],
        "objects": bool(getattr(dataset, "has_objects", False)),
        "preprocessing": dataset.preprocessing.to_dict(),
        "eval_grid": list(dataset.eval_grid),
        "grids": sorted(grid_name(g) for g in grids),
    })


def content_digest(path: str | Path) -> str:
    """sha256 of a store's files (relative names and contents) other than its root ``zarr.json``, which holds
    the digest; temporaries of this package are left out."""
    path = Path(path)
    return folder_digest(path, skip=[path / "zarr.json"])


class MaskStore:
    """Read access to a complete mask store (see the module docstring)."""

    def __init__(self, path: str | Path, expected_key: str | None = None) -> None:
        self.path = Path(path)
        self.group, attrs = open_checked(self.path, "mask store", MASK_SCHEMA, expected_key,
                                         "run the extraction stage again to rebuild it")
        self.attrs = attrs
        try:
            self.image_ids = np.asarray(self.group["image_id"][:])
        except Exception as exc:
            raise StoreError(f"mask store {self.path} is corrupt ({exc}); delete it to recompute") from exc
        self._array = ArrayHandles(self.group)

    @property
    def masks(self) -> zarr.Array:
        return self._array("masks")

    @property
    def has_objects(self) -> bool:
        """Whether the store holds the every-object control (its dataset's concepts are objects)."""
        return bool(self.attrs.get("objects", False))

    @property
    def objects(self) -> zarr.Array | None:
        """The every-object masks ``N x gh x gw`` uint8 on the evaluation grid (rows as :attr:`masks`); None
        for a dataset without object concepts."""
        return self._array("objects") if self.has_objects else None

    @property
    def object_labels(self) -> np.ndarray | None:
        """Per image, "some object present" (uint8 0/1, rows as :attr:`masks`); None without object concepts."""
        return np.asarray(self._array("object_labels")[:]) if self.has_objects else None

    @property
    def content_sha256(self) -> str | None:
        """The hash of the store's data recorded when it was built (None for a store built before it was)."""
        return self.attrs.get("content_sha256")

    def damaged(self) -> str | None:
        """Why the store's data no longer match the hash recorded when it was built (a chunk removed, truncated
        or edited), or None when they match or no hash was recorded. Reads every file of the store."""
        if self.content_sha256 is None:
            return None
        if content_digest(self.path) != self.content_sha256:
            return (f"mask store {self.path} no longer holds the data it was built with (a file was removed or "
                    "changed since); run the extraction stage again, forced, to rebuild it")
        return None

    def targets(self, grid: Sequence[int]) -> zarr.Array:
        name = grid_name(grid)
        if name not in self.attrs["grids"]:
            raise StoreError(f"mask store {self.path} has no targets on grid {name}; it has {self.attrs['grids']}")
        return self._array("targets", name)


def ensure_mask_store(
    dataset: Any, grids: Sequence[Sequence[int]], folder: str | Path, *, dataset_sha256: str | None = None,
    batch_size: int = 16, num_workers: int = 0, progress: bool = True, verify: bool = False,
) -> tuple[MaskStore, bool]:
    """The mask store of ``dataset`` (a :class:`~conceptsim.data.coco.ConceptDataset`) and ``grids`` in ``folder``.

    Reused when a complete store with the same key exists there, else built. With ``verify`` (a forced
    extraction) a store whose data no longer match its recorded hash, or that recorded none, is rebuilt and
    replaced (:meth:`MaskStore.damaged`). Returns ``(store, reused)``.
    """
    grids = sorted({(int(g[0]), int(g[1])) for g in grids})
    key = mask_store_key(dataset, grids, dataset_sha256)
    path = Path(folder) / f"{key[:20]}.zarr"
    with exclusive(path):  # parallel extractions of one dataset build (or rebuild) the store once
        try:
            store = MaskStore(path, expected_key=key)
            if not verify or (store.content_sha256 is not None and store.damaged() is None):
                return store, True
        except StoreError:
            pass
        return _build(dataset, grids, key, path, batch_size, num_workers, progress, verify), False


def _build(dataset: Any, grids: list, key: str, path: Path, batch_size: int, num_workers: int, progress: bool,
           replace: bool) -> MaskStore:
    """Build the store at ``path`` under a temporary name (see :func:`ensure_mask_store`); ``replace``: a
    store of the same key already there is replaced rather than kept."""
    from conceptsim.data.coco import make_loader

    n, k = len(dataset), len(dataset.concepts)
    gh, gw = dataset.eval_grid
    objects = bool(getattr(dataset, "has_objects", False))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        g = zarr.open_group(str(tmp), mode="w")
        g.attrs.update(schema=MASK_SCHEMA, key=key, complete=False, concepts=[c.name for c in dataset.concepts],
                       eval_grid=[gh, gw], grids=[grid_name(x) for x in grids],
                       preprocessing=dataset.preprocessing.to_dict(), objects=objects)
        c = max(1, min(n, ROWS_PER_CHUNK))
        g.create_array("image_id", shape=(n,), chunks=(n or 1,), dtype="int64")[:] = np.asarray(dataset.image_ids, np.int64)
        arrays = {"masks": g.create_array("masks", shape=(n, k, gh, gw), chunks=(c, k or 1, gh, gw), dtype="uint8")}
        if objects:
            arrays["objects"] = g.create_array("objects", shape=(n, gh, gw), chunks=(c, gh, gw), dtype="uint8")
            arrays["object_labels"] = g.create_array("object_labels", shape=(n,), chunks=(c,), dtype="uint8")
        tg = g.create_group("targets")
        for x in grids:
            arrays[grid_name(x)] = tg.create_array(grid_name(x), shape=(n, k, *x), chunks=(c, k or 1, *x), dtype="float16")
        rows = ChunkedRows(arrays, n, c)
        loader = make_loader(dataset.with_targets(grids), batch_size=batch_size, num_workers=num_workers)
        bar = _progress(n, progress)
        with helper_libraries_single_threaded(), prefetched(loader) as batches, BackgroundCalls(rows.append) as writes:
            for batch in batches:
                parts = {grid_name(x): t.numpy() for x, t in zip(grids, batch["targets"])}
                every = {"objects": batch["objects_eval"].numpy(), "object_labels": batch["object_label"].numpy()} if objects else {}
                writes.submit({"masks": batch["masks_eval"].numpy(), **parts, **every})
                bar.update(len(batch["image_id"]))
        rows.finish()
        bar.close()
        # the data's hash, then complete; no build time (a rebuilt store is byte for byte the one it replaces)
        g.attrs.update(content_sha256=content_digest(tmp), complete=True)
        log.info("mask store %s built in %.1f s", path.name, time.perf_counter() - t0)
        try:
            os.rename(tmp, path)
        except OSError:  # there already: keep a valid one (made meanwhile by a parallel run), replace a broken one
            try:
                store = MaskStore(path, expected_key=key)
                if replace:
                    raise StoreError(f"mask store {path} is being rebuilt")
                shutil.rmtree(tmp, ignore_errors=True)
                return store
            except StoreError:
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                os.rename(path, old)
                os.rename(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        settle_zarr_writes()  # chunk writes still under way would re-create the folder after its removal
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return MaskStore(path, expected_key=key)


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="concept masks", unit="img", disable=not enabled, mininterval=2.0)
