"""The Zarr activation store: one store per (study, dataset, model).

Layout (a Zarr v3 group, readable with plain ``zarr``, ``xarray`` or ``dask``)::

    activations.zarr/
      zarr.json                      group attributes = store metadata (see below)
      image_id       (N,)            int64   dataset image ids, in extraction order (split-major)
      split          (N,)            uint8   0 = train, 1 = val, 2 = test
      labels         (N, K)          uint8   image-level presence (mask area >= min_area)
      content_box    (N, 4)          float32 (top, left, bottom, right) of the image in the input frame
      activations/<layer>  (N, C, h, w)  float16  layer output, average-pooled to at most ``grid_cap``

The concept masks on the evaluation grid (image frame, uint8) and Net2Vec's soft targets (the masks
area-averaged onto each layer's grid, input frame, float16) do not depend on the model: they live in a
shared mask store (:mod:`conceptsim.extraction.maskstore`) whose relative path and key are the
attributes ``mask_store`` and ``mask_store_key``; :attr:`ActivationStore.masks` and
:meth:`ActivationStore.targets` read them from there, and so do :attr:`ActivationStore.object_masks` and
:attr:`ActivationStore.object_labels`, the every-object control of object datasets (None otherwise).
(A store written without a mask store, e.g. the synthetic test stores, holds ``masks`` and
``targets/<layer>`` arrays itself.)

All arrays are chunked by images; the pipeline's datasets serve their images split-major (train, val,
test), so each split is one contiguous run of rows and a pass over one split reads only its own chunks.
Metadata attributes: ``schema`` (version), ``model``, ``dataset``,
``study``, ``weights_sha256``, ``dataset_sha256``, ``preprocessing`` (dict), ``grid_cap``,
``eval_grid``, ``min_area``, ``seed``, ``dtype``, ``concepts`` (list of {name, category}), ``layers``
(list of {name, module_type, channels, grid, native_grid, conv_position, relative_depth, probe_rank}),
``key`` (hash of everything that determines the content) and ``complete`` (set last); the pipeline's
stores also hold ``annotation_file`` and ``image_dir`` (:func:`source_attrs`) and, for concepts defined as
named groups of categories, ``concept_definition`` (:func:`concept_definition_attrs`), from which
:meth:`ActivationStore.open_dataset` reopens the dataset the store was written from.

The store is written under a temporary name and renamed when complete, so a killed extraction leaves no
store that looks usable; a store whose ``key`` differs from the expected one is recomputed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from conceptsim.data.coco import ConceptDataset, DatasetSource, load_annotations, read_image
from conceptsim.extraction.maskstore import MaskStore
from conceptsim.extraction.zarrio import ArrayHandles, ChunkedRows, StoreError, open_checked, read_rows, write_together

# StoreError, read_rows, write_together and ChunkedRows live in zarrio; importable from here as before
__all__ = ["COMPRESSORS", "STORE_DTYPES", "ActivationStore", "ChunkedRows", "LayerInfo", "StoreError", "StoreWriter",
           "concept_definition_attrs", "read_rows", "source_attrs", "write_together"]

SCHEMA_VERSION = 2
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
SPLIT_NAMES = {v: k for k, v in SPLIT_CODES.items()}


# Activations: raw by default ("none"). "zstd" (level 1) stores real feature maps in 2/3 to 3/4 of their size,
# as small as the library's default level 3 for a third less CPU; but the forward pass already keeps 2 cores
# busy, so the encoding still adds a few per cent to the extraction's wall time (Performance page, "Design
# measurements").
COMPRESSORS = {"none": lambda: None, "zstd": lambda: [ZstdCodec(level=1)]}

#: the value types an activation store holds
STORE_DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class LayerInfo:
    """A probed layer as recorded in a store."""

    name: str
    module_type: str
    channels: int
    grid: tuple[int, int]  # stored grid (after the cap)
    native_grid: tuple[int, int]  # the layer's own output grid at the model's input size
    conv_position: int
    relative_depth: float
    probe_rank: float

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "module_type": self.module_type,
            "channels": int(self.channels),
            "grid": [int(g) for g in self.grid],
            "native_grid": [int(g) for g in self.native_grid],
            "conv_position": int(self.conv_position),
            "relative_depth": float(self.relative_depth),
            "probe_rank": float(self.probe_rank),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "LayerInfo":
        return cls(
            d["name"], d["module_type"], int(d["channels"]), tuple(d["grid"]), tuple(d["native_grid"]),
            int(d["conv_position"]), float(d["relative_depth"]), float(d["probe_rank"]),
        )


_ZARR_METADATA = {"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"}


def foreign_files(store_dir: str | os.PathLike) -> list[Path]:
    """Files in an activation store folder that a zarr store does not hold (metadata files, chunk keys made of
    numbers): something the user put there, which a recomputation must not delete."""
    import re

    store_dir = Path(store_dir)
    if not store_dir.is_dir():
        return []
    return sorted(p for p in store_dir.rglob("*") if not p.is_dir() and p.name not in _ZARR_METADATA
                  and re.fullmatch(r"\d+([./]\d+)*", p.name) is None)


def refuse_foreign_files(store_dir: str | os.PathLike) -> None:
    """:class:`StoreError` naming the folder and the files when ``store_dir`` holds files the suite did not write."""
    found = foreign_files(store_dir)
    if found:
        names = ", ".join(str(p.relative_to(store_dir)) for p in found[:5]) + (" ..." if len(found) > 5 else "")
        raise StoreError(f"{store_dir} holds files the suite did not write ({names}); recomputing the store would "
                         "delete them: move them out of the folder, then run again")


def source_attrs(source: DatasetSource) -> dict[str, str]:
    """The store attributes that say where a dataset's files lie (read back by :meth:`ActivationStore.open_dataset`)."""
    return {"annotation_file": str(source.annotation_file), "image_dir": str(source.image_dir)}


def concept_definition_attrs(source: DatasetSource, concepts: Any) -> dict[str, dict]:
    """``{"concept_definition": ...}`` when ``concepts`` are named groups of categories (a mapping), which
    :meth:`ActivationStore.open_dataset` needs to group them again; ``{}`` for a list or ``None``."""
    if not isinstance(concepts, dict):
        return {}
    return {"concept_definition": {"concepts": concepts, "concept_categories": dict(source.concept_categories)}}


def _chunk(n: int, per_chunk: int) -> int:
    return max(1, min(n, per_chunk))


class StoreWriter:
    """Creates the arrays of a new store and fills them batch by batch.

    With a ``mask_store`` (the extraction's path) the store holds activations only and records the mask
    store's path (relative to this store) and key; without one (synthetic stores) it holds ``masks`` and
    ``targets/<layer>`` itself and :meth:`write_batch` needs them.
    """

    def __init__(
        self,
        path: Path,
        *,
        n_images: int,
        layers: Sequence[LayerInfo],
        concepts: Sequence[dict],
        eval_grid: Sequence[int],
        metadata: dict[str, Any],
        dtype: str = "float16",
        images_per_chunk: int = 16,
        mask_store: Any = None,
        final_path: Path | None = None,
        compression: str = "none",
    ) -> None:
        if compression not in COMPRESSORS:
            raise ValueError(f"compression must be one of {sorted(COMPRESSORS)}, got {compression!r}")
        self.path = Path(path)
        self.n = int(n_images)
        self.layers = list(layers)
        k = len(concepts)
        c = _chunk(self.n, images_per_chunk)
        g = zarr.open_group(str(self.path), mode="w")
        attrs = dict(metadata)
        attrs.update(
            schema=SCHEMA_VERSION,
            concepts=[dict(x) for x in concepts],
            layers=[layer.to_dict() for layer in self.layers],
            eval_grid=[int(x) for x in eval_grid],
            dtype=dtype,
            compression=compression,
            complete=False,
        )
        if mask_store is not None:
            home = Path(final_path or self.path).resolve().parent
            attrs.update(mask_store=os.path.relpath(Path(mask_store.path).resolve(), home), mask_store_key=mask_store.attrs["key"])
        g.attrs.update(attrs)
        self.group = g
        # per-image scalars are tiny: buffered, and each array written once in finish()
        self._small = {
            name: g.create_array(name, shape=(self.n, *tail), chunks=(self.n or 1, *(t or 1 for t in tail)), dtype=dt)
            for name, tail, dt in (("image_id", (), "int64"), ("split", (), "uint8"), ("labels", (k,), "uint8"),
                                   ("content_box", (4,), "float32"))
        }
        self._small_parts: dict[str, list[np.ndarray]] = {name: [] for name in self._small}
        acts = g.create_group("activations")
        arrays = {}
        self.own_masks = mask_store is None
        if self.own_masks:
            gh, gw = (int(x) for x in eval_grid)
            arrays["masks"] = g.create_array("masks", shape=(self.n, k, gh, gw), chunks=(c, k or 1, gh, gw), dtype="uint8")
            tgts = g.create_group("targets")
        for layer in self.layers:
            h, w = layer.grid
            arrays[f"a/{layer.name}"] = acts.create_array(layer.name, shape=(self.n, layer.channels, h, w),
                                                          chunks=(c, layer.channels, h, w), dtype=dtype,
                                                          compressors=COMPRESSORS[compression]())
            if self.own_masks:
                arrays[f"t/{layer.name}"] = tgts.create_array(layer.name, shape=(self.n, k, h, w), chunks=(c, k or 1, h, w),
                                                              dtype="float16")
        self.rows = ChunkedRows(arrays, self.n, c)

    @property
    def cursor(self) -> int:
        return self.rows.count

    def write_batch(
        self,
        *,
        image_ids: np.ndarray,
        splits: Sequence[str],
        labels: np.ndarray,
        content_boxes: np.ndarray,
        activations: dict[str, np.ndarray],
        masks: np.ndarray | None = None,
        targets: dict[str, np.ndarray] | None = None,
    ) -> None:
        if self.cursor + len(image_ids) > self.n:
            raise StoreError(f"store {self.path}: batch overflows the {self.n} images it was created for")
        if self.own_masks and (masks is None or targets is None):
            raise StoreError(f"store {self.path} holds its own masks: write_batch needs masks and targets")
        self._small_parts["image_id"].append(np.asarray(image_ids, dtype=np.int64))
        self._small_parts["split"].append(np.array([SPLIT_CODES[x] for x in splits], dtype=np.uint8))
        self._small_parts["labels"].append(np.asarray(labels, dtype=np.uint8))
        self._small_parts["content_box"].append(np.asarray(content_boxes, dtype=np.float32))
        rows = {f"a/{layer.name}": activations[layer.name] for layer in self.layers}
        if self.own_masks:
            rows["masks"] = np.asarray(masks, dtype=np.uint8)
            rows.update({f"t/{layer.name}": targets[layer.name] for layer in self.layers})
        self.rows.append(rows)

    def finish(self) -> None:
        if self.cursor != self.n:
            raise StoreError(f"store {self.path}: {self.cursor} of {self.n} images written")
        # the last rows and the per-image arrays in one round of writes: this is the tail after the last batch
        self.rows.finish(also=[(self._small[name], slice(None), np.concatenate(parts))
                               for name, parts in self._small_parts.items() if parts])
        self.group.attrs["complete"] = True


class ActivationStore:
    """Read access to a complete store.

    Parameters
    ----------
    path : the store directory.
    expected_key : when given, the store's ``key`` attribute must equal it (else :class:`StoreError`).
    """

    def __init__(self, path: str | Path, expected_key: str | None = None) -> None:
        self.path = Path(path)
        self.group, attrs = open_checked(self.path, "activation store", SCHEMA_VERSION, expected_key,
                                         "run the extraction stage first")
        self.attrs = attrs
        self.layers = [LayerInfo.from_dict(d) for d in attrs["layers"]]
        self.concepts = [dict(c) for c in attrs["concepts"]]
        try:
            self.image_ids = np.asarray(self.group["image_id"][:])
            self.splits = np.asarray(self.group["split"][:])
            self.labels = np.asarray(self.group["labels"][:])
            self.content_boxes = np.asarray(self.group["content_box"][:])
        except Exception as exc:
            raise StoreError(f"activation store {self.path} is corrupt ({exc}); delete it to recompute") from exc
        self._array = ArrayHandles(self.group)
        self.mask_store = None
        if "mask_store" in attrs:
            try:
                self.mask_store = MaskStore(self.path.parent / attrs["mask_store"], expected_key=attrs["mask_store_key"])
            except StoreError as exc:
                raise StoreError(f"activation store {self.path}: its masks are missing or stale ({exc})") from exc
            if not np.array_equal(self.mask_store.image_ids, self.image_ids):
                raise StoreError(f"activation store {self.path}: mask store {self.mask_store.path} lists other images")

    # convenience ------------------------------------------------------------
    @property
    def model(self) -> str:
        return self.attrs["model"]

    @property
    def dataset(self) -> str:
        return self.attrs["dataset"]

    @property
    def concept_names(self) -> list[str]:
        return [c["name"] for c in self.concepts]

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.attrs["preprocessing"]["size"])

    @property
    def eval_grid(self) -> tuple[int, int]:
        return tuple(self.attrs["eval_grid"])

    def open_dataset(self, **kwargs: Any) -> ConceptDataset:
        """The dataset this store was extracted from (its files and concept groups as the store records them).

        ``kwargs`` go to :class:`conceptsim.data.coco.ConceptDataset` (split, seed, fractions, ...); with
        ``concepts`` (names of this store's concepts) and a store whose concepts are named groups of
        categories, the groups are taken from the store. Raises :class:`StoreError` for a store that does
        not record its dataset's files (a synthetic store).
        """
        annotation_file, image_dir = self._dataset_files()
        definition = self.attrs.get("concept_definition")
        if definition and "concepts" in kwargs:
            source = DatasetSource(self.attrs.get("dataset", ""), annotation_file, image_dir, "",
                                   definition["concept_categories"])
            kwargs["concepts"] = {c: definition["concepts"][c] for c in kwargs["concepts"]}
            return ConceptDataset(source, **kwargs)
        return ConceptDataset(annotation_file, image_dir, **kwargs)

    def read_images(self, rows: Sequence[int]) -> list[np.ndarray]:
        """The images of stored ``rows`` (uint8 RGB, as :meth:`ConceptDataset.read_image` reads them), from the
        dataset's files without building the dataset's masks (:meth:`open_dataset`)."""
        annotation_file, image_dir = self._dataset_files()
        images = {int(im["id"]): im for im in load_annotations(annotation_file)["images"]}
        return [read_image(annotation_file, image_dir, images[int(self.image_ids[r])]) for r in rows]

    def _dataset_files(self) -> tuple[Path, Path]:
        """``(annotation file, image folder)`` of the dataset this store was extracted from."""
        missing = [k for k in ("annotation_file", "image_dir") if k not in self.attrs]
        if missing:
            raise StoreError(f"activation store {self.path} does not record its dataset's {' and '.join(missing)}; "
                             "only stores written by the extraction stage can reopen their dataset")
        return Path(self.attrs["annotation_file"]), Path(self.attrs["image_dir"])

    def layer(self, name: str) -> LayerInfo:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"layer {name!r} is not in store {self.path}; it has {self.layer_names}")

    def split_index(self, split: str) -> np.ndarray:
        """Row indices of the images in ``split`` ("train", "val" or "test")."""
        if split not in SPLIT_CODES:
            raise ValueError(f"split must be one of {list(SPLIT_CODES)}, got {split!r}")
        return np.flatnonzero(self.splits == SPLIT_CODES[split])

    def activations(self, layer: str) -> zarr.Array:
        self.layer(layer)
        return self._array("activations", layer)

    def targets(self, layer: str) -> zarr.Array:
        info = self.layer(layer)
        if self.mask_store is not None:
            return self.mask_store.targets(info.grid)
        return self._array("targets", layer)

    @property
    def masks(self) -> zarr.Array:
        return self.mask_store.masks if self.mask_store is not None else self._array("masks")

    @property
    def has_objects(self) -> bool:
        """Whether the every-object control is there (a mask store of a dataset whose concepts are objects)."""
        return self.mask_store is not None and self.mask_store.has_objects

    @property
    def object_masks(self) -> zarr.Array | None:
        """The every-object masks ``N x gh x gw`` uint8 on the evaluation grid, rows as :attr:`masks`
        (:attr:`conceptsim.extraction.maskstore.MaskStore.objects`); None when :attr:`has_objects` is false."""
        return self.mask_store.objects if self.has_objects else None

    @property
    def object_labels(self) -> np.ndarray | None:
        """Per image "some object present" (uint8 0/1), rows as :attr:`labels`; None when :attr:`has_objects` is false."""
        return self.mask_store.object_labels if self.has_objects else None
