"""Small datasets in the real on-disk formats, written by test code into temporary folders.

- :func:`write_coco`: ``annotations/instances_val2017.json`` in COCO's schema (info, licenses, images with
  their URLs and dates, polygon annotations and ``iscrowd: 1`` annotations with uncompressed RLE counts, as
  COCO stores crowds; COCO's own category ids) and ``val2017/*.jpg``.
- :func:`write_voc`: a ``VOCdevkit/VOC2012`` tree with ``JPEGImages``, ``SegmentationObject`` and
  ``SegmentationClass`` palette PNGs (index 255 = the void border), ``Annotations`` XML and
  ``ImageSets/Segmentation/{train,val}.txt``.

And the user's own models: :data:`TINY_YOLO` (an ultralytics model yaml) and :func:`write_python_model`
(a package with a builder function); :class:`Toy`, a three-convolution module with a block and a layer that
returns a tuple (hooks and relative depth).

Each image shows two of a person, a car and a dog (sizes vary with the image), so each concept has
images with and without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from torch import nn

#: (COCO id, name, supercategory): COCO's real ids for the categories the fixtures use
COCO_CATEGORIES = ((1, "person", "person"), (3, "car", "vehicle"), (6, "bus", "vehicle"), (18, "dog", "animal"),
                   (17, "cat", "animal"))
COLOURS = {"person": (200, 60, 60), "car": (40, 90, 210), "bus": (230, 200, 30), "dog": (90, 170, 70),
           "cat": (160, 80, 200)}


def all_coco_categories() -> list[dict]:
    """COCO's 80 categories with their ids (as instances_val2017.json lists them)."""
    from conceptsim.data.fetch import COCO_ANIMALS, COCO_VEHICLES
    from conceptsim.models.ssd_mobilenet_v2 import COCO_LABELS

    def sup(name: str) -> str:
        return "vehicle" if name in COCO_VEHICLES else "animal" if name in COCO_ANIMALS else (
            "person" if name == "person" else "object")

    return [{"supercategory": sup(name), "id": cid, "name": name} for cid, name in sorted(COCO_LABELS.items())]


def _ranks(ids: list[int], seed: int, fractions) -> dict[int, int]:
    """Each image's position within its split (the suite's deterministic split of these ids)."""
    from conceptsim.data.coco import split_assignment

    split = split_assignment(ids, seed, fractions)
    seen: dict[str, int] = {}
    out = {}
    for iid in sorted(ids):
        out[iid] = seen.get(split[iid], 0)
        seen[split[iid]] = out[iid] + 1
    return out


def _objects(rank: int, i: int, w: int, h: int) -> list[tuple[str, list[float]]]:
    """(category name, polygon) of one image. Within each split, images alternate between a person with a
    car (and every other time a bus) and a dog (and every other time a cat), so every concept has images
    with and without it in every split of two images or more; sizes vary with the image."""
    s = 0.25 + 0.1 * (i % 4)
    small = [w * 0.3, h * 0.3, w * 0.45, h * 0.3, w * 0.45, h * 0.5, w * 0.3, h * 0.5]
    if rank % 2 == 0:
        out = [("person", [2, 2, 2 + s * w, 2, 2 + s * w, h - 3, 2, h - 3]),  # a tall box at the left
               ("car", [w * 0.45, h * 0.55, w - 3, h * 0.55, w - 3, min(h - 3, h * (0.4 + s)), w * 0.45,
                        min(h - 3, h * (0.4 + s))])]
        return out + ([("bus", small)] if rank % 4 == 2 else [])
    out = [("dog", [w * 0.5, 3, w * 0.5 + s * w * 0.8, 3, w * 0.5 + s * w * 0.4, h * 0.45])]  # a triangle
    return out + ([("cat", small)] if rank % 4 == 3 else [])


def _draw(w: int, h: int, objects, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(90, 140, size=(h, w, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(im)
    for name, poly in objects:
        draw.polygon(list(zip(poly[0::2], poly[1::2])), fill=COLOURS[name])
    return im


def _polygon_mask(poly: list[float], h: int, w: int) -> np.ndarray:
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([poly], h, w)))


def coco_document(n: int, size: tuple[int, int] = (64, 48), split_seed: int = 0,
                  fractions=(0.6, 0.2, 0.2)) -> tuple[dict, dict[str, Image.Image]]:
    """A COCO instances document with ``n`` images and the images themselves (file name -> image)."""
    w, h = size
    ranks = _ranks([100 + 7 * i for i in range(n)], split_seed, fractions)
    cats = {name: cid for cid, name, _ in COCO_CATEGORIES}
    doc = {
        "info": {"description": "conceptsim test fixture", "version": "1.0", "year": 2017,
                 "contributor": "conceptsim tests", "date_created": "2017/09/01"},
        "licenses": [{"url": "http://creativecommons.org/licenses/by/2.0/", "id": 4, "name": "Attribution License"}],
        "images": [], "annotations": [],
        "categories": all_coco_categories(),
    }
    images = {}
    aid = 1
    for i in range(n):
        iid = 100 + 7 * i  # COCO ids are sparse
        fname = f"{iid:012d}.jpg"
        objects = _objects(ranks[iid], i, w, h)
        images[fname] = _draw(w, h, objects, i)
        doc["images"].append({"license": 4, "file_name": fname, "coco_url": f"http://images.cocodataset.org/val2017/{fname}",
                              "height": h, "width": w, "date_captured": "2013-11-14 17:02:52",
                              "flickr_url": "http://farm7.staticflickr.com/fixture.jpg", "id": iid})
        for name, poly in objects:
            m = _polygon_mask(poly, h, w)
            ys, xs = np.nonzero(m)
            bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
            ann = {"segmentation": [[round(v, 2) for v in poly]], "area": float(m.sum()), "iscrowd": 0,
                   "image_id": iid, "bbox": bbox, "category_id": cats[name], "id": aid}
            if name == "person" and i % 3 == 0:  # a crowd: uncompressed RLE, column-major counts
                flat = m.flatten(order="F")
                change = np.flatnonzero(np.diff(flat)) + 1
                runs = np.diff(np.concatenate([[0], change, [flat.size]]))
                counts = ([0] if flat[0] else []) + runs.tolist()
                ann.update(segmentation={"counts": [int(c) for c in counts], "size": [h, w]}, iscrowd=1)
            doc["annotations"].append(ann)
            aid += 1
    return doc, images


def write_coco(root: Path, n: int = 10, size: tuple[int, int] = (64, 48), ann_name: str = "instances_val2017.json",
               image_dir: str = "val2017", split_seed: int = 0, fractions=(0.6, 0.2, 0.2)) -> Path:
    """COCO val2017's layout under ``root`` (concepts varied within each split of ``split_seed`` and
    ``fractions``); returns ``root``."""
    doc, images = coco_document(n, size, split_seed, fractions)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / ann_name).write_text(json.dumps(doc))
    for fname, im in images.items():
        im.save(root / image_dir / fname, quality=95)
    return root


def voc_palette() -> list[int]:
    """VOC's colour map (the bit-interleaved palette of the devkit), 256 RGB entries flattened."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


VOC_IDS = {"person": 15, "car": 7, "bus": 6, "dog": 12, "cat": 8}


def write_voc(root: Path, n: int = 10, size: tuple[int, int] = (64, 48), split_seed: int = 0,
              fractions=(0.6, 0.2, 0.2)) -> Path:
    """A ``VOCdevkit/VOC2012`` tree under ``root``; returns the ``VOC2012`` folder."""
    from scipy import ndimage

    w, h = size
    ranks = _ranks(list(range(1, n + 1)), split_seed, fractions)  # the converter numbers images 1..n in id order
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationObject", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(n):
        vid = f"2008_{i:06d}"
        ids.append(vid)
        objects = _objects(ranks[i + 1], i, w, h)
        _draw(w, h, objects, 1000 + i).save(voc / "JPEGImages" / f"{vid}.jpg", quality=95)
        obj = np.zeros((h, w), np.uint8)
        cls = np.zeros((h, w), np.uint8)
        xml = [f"<annotation><folder>VOC2012</folder><filename>{vid}.jpg</filename>",
               f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size><segmented>1</segmented>"]
        for k, (name, poly) in enumerate(objects, start=1):
            m = _polygon_mask(poly, h, w).astype(bool)
            obj[m], cls[m] = k, VOC_IDS[name]
            ys, xs = np.nonzero(m)
            xml.append(f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                       f"<difficult>0</difficult><bndbox><xmin>{xs.min() + 1}</xmin><ymin>{ys.min() + 1}</ymin>"
                       f"<xmax>{xs.max() + 1}</xmax><ymax>{ys.max() + 1}</ymax></bndbox></object>")
        edge = ndimage.binary_dilation(obj > 0) & ~ndimage.binary_erosion(obj > 0)  # VOC's void outline
        obj[edge], cls[edge] = 255, 255
        for arr, sub in ((obj, "SegmentationObject"), (cls, "SegmentationClass")):
            png = Image.fromarray(arr, mode="P")
            png.putpalette(voc_palette())
            png.save(voc / sub / f"{vid}.png")
        (voc / "Annotations" / f"{vid}.xml").write_text("".join(xml) + "</annotation>\n")
    cut = max(1, n // 2)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids[:cut]) + "\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids[cut:]) + "\n")
    return voc


# ----------------------------------------------------------------------------------------- models
TINY_YOLO = """\
# a tiny YOLO detection model: two classes, stride-8/16 heads
nc: 2
backbone:
  - [-1, 1, Conv, [8, 3, 2]]    # 0 P1/2
  - [-1, 1, Conv, [16, 3, 2]]   # 1 P2/4
  - [-1, 1, C2f, [16, True]]    # 2
  - [-1, 1, Conv, [16, 3, 2]]   # 3 P3/8
  - [-1, 1, C2f, [16, True]]    # 4
  - [-1, 1, Conv, [32, 3, 2]]   # 5 P4/16
  - [-1, 1, C2f, [32, True]]    # 6
head:
  - [[4, 6], 1, Detect, [nc]]   # 7
"""

TINY_NET = '''\
"""A user's own model package (written by the test)."""
import torch
from torch import nn


def build():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(12, 16, 3, stride=2, padding=1), nn.ReLU()),
        nn.Conv2d(16, 16, 3, padding=1),
    )
    net.preprocessing = {"size": [40, 40], "resize": "letterbox", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    return net


def not_a_module():
    return 3
'''


def write_python_model(tmp_path):
    pkg = tmp_path / "mynets"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "tiny.py").write_text(TINY_NET)
    return tmp_path


class Toy(nn.Module):
    """Convolutions ``a``, ``block.0`` and ``b`` (stride 2); ``pair`` returns a tuple."""

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
