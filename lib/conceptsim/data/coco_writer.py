"""The small COCO *writer* that the embedded dataset builders share: images and RLE instances in, a
deterministic COCO instances JSON out (:class:`CocoWriter`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from pycocotools import mask as mask_utils

from conceptsim.atomic import write_text


def encode_mask(mask: np.ndarray) -> dict:
    """A binary ``H x W`` mask as a JSON-ready compressed COCO RLE."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


class CocoWriter:
    """Collects images and RLE instances, then writes a deterministic COCO instances JSON.

    Parameters
    ----------
    categories : ``(name, supercategory)`` pairs; ids are assigned 1, 2, ... in this order.
    info : free metadata stored under ``info`` (no timestamps, so the same inputs give the same bytes).
    """

    def __init__(self, categories: Sequence[tuple[str, str]], info: dict | None = None) -> None:
        self.categories = [{"id": k + 1, "name": n, "supercategory": s} for k, (n, s) in enumerate(categories)]
        self.cat_id = {c["name"]: c["id"] for c in self.categories}
        self.info = dict(info or {})
        self.images: list[dict] = []
        self.annotations: list[dict] = []

    def add_image(self, file_name: str, height: int, width: int) -> int:
        iid = len(self.images) + 1
        self.images.append({"id": iid, "file_name": file_name, "height": int(height), "width": int(width)})
        return iid

    def add_mask(self, image_id: int, category: str, mask: np.ndarray) -> None:
        """Add an instance from an exact binary mask (skipped when empty: nothing to annotate)."""
        if mask.any():
            self.add_rle(image_id, category, encode_mask(mask))

    def add_rle(self, image_id: int, category: str, rle: dict) -> None:
        """Add an instance from a JSON-ready compressed RLE (see :func:`encode_mask`)."""
        binary = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
        self.annotations.append(
            {
                "id": len(self.annotations) + 1, "image_id": image_id, "category_id": self.cat_id[category],
                "segmentation": rle, "area": int(mask_utils.area(binary)),
                "bbox": [int(b) for b in mask_utils.toBbox(binary)], "iscrowd": 0,
            }
        )

    def write(self, path: str | os.PathLike) -> Path:
        doc = {"info": self.info, "images": self.images, "annotations": self.annotations, "categories": self.categories}
        write_text(path, json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n")
        return Path(path)
