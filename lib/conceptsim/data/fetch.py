"""The paper study's datasets: COCO val2017 and Pascal VOC 2012 segmentation (converted to COCO format).

Each comes either from a local copy (``root``) or from a pinned download (URL + MD5, resumable through a
``.part`` file and HTTP ranges). Offline, a download fails at once with a message that says which files
to place where; nothing is retried silently.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from conceptsim.atomic import atomic_path, sha256_file, sha256_json
from conceptsim.data.coco import DatasetError, DatasetSource
from conceptsim.data.coco_writer import CocoWriter
from conceptsim.paths import datasets_dir


class DatasetUnavailable(DatasetError):
    """A dataset is neither present locally nor downloadable (e.g. no network)."""


@dataclass(frozen=True)
class Remote:
    """A pinned download: URL, MD5 of the archive (as published by the data set's hosts) and size."""

    url: str
    md5: str
    size: int | None = None

    @property
    def file_name(self) -> str:
        return Path(urllib.parse.urlparse(self.url).path).name


COCO_IMAGES = Remote("http://images.cocodataset.org/zips/val2017.zip", "442b8da7639aecaf257c1dceb8ba8c80", 815585330)
COCO_ANNOTATIONS = Remote(
    "http://images.cocodataset.org/annotations/annotations_trainval2017.zip", "f4bbac642086de4f52a3fdda2de5fa2c", 252907541
)
VOC_TAR = Remote("http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar", "6cd6e144f989b92b3379bac3b3de84fd")

COCO_VEHICLES = ["bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat"]
COCO_ANIMALS = ["bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe"]
#: Default concepts on COCO (methods.md: person, vehicles, animals): the groups and their members.
COCO_CONCEPTS = {"person": ["person"], "vehicle": COCO_VEHICLES, "animal": COCO_ANIMALS} | {
    n: [n] for n in COCO_VEHICLES + COCO_ANIMALS
}

#: VOC's 20 classes in label order (1..20) with a supercategory each.
VOC_CLASSES = (
    ("aeroplane", "vehicle"), ("bicycle", "vehicle"), ("bird", "animal"), ("boat", "vehicle"), ("bottle", "indoor"),
    ("bus", "vehicle"), ("car", "vehicle"), ("cat", "animal"), ("chair", "indoor"), ("cow", "animal"),
    ("diningtable", "indoor"), ("dog", "animal"), ("horse", "animal"), ("motorbike", "vehicle"), ("person", "person"),
    ("pottedplant", "indoor"), ("sheep", "animal"), ("sofa", "indoor"), ("train", "vehicle"), ("tvmonitor", "indoor"),
)
VOC_CONCEPTS = {
    "person": ["person"],
    "vehicle": [n for n, s in VOC_CLASSES if s == "vehicle"],
    "animal": [n for n, s in VOC_CLASSES if s == "animal"],
} | {n: [n] for n, s in VOC_CLASSES if s in ("vehicle", "animal")}
VOC_CONVERTER_VERSION = 1


def object_categories(concepts: dict) -> dict:
    return {name: "object" for name in concepts}


# ---------------------------------------------------------------------------------------------- download
def check_online(url: str, timeout: float = 3.0) -> None:
    """Raise :class:`DatasetUnavailable` at once when the host of ``url`` cannot be reached."""
    parsed = urllib.parse.urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError as e:
        raise DatasetUnavailable(f"cannot reach {parsed.hostname} ({e})") from e


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def download(remote: Remote, dest: Path, opener: Callable = urllib.request.urlopen) -> Path:
    """Download ``remote`` to ``dest`` (resuming ``dest.part`` with an HTTP range), verify its MD5.

    A finished ``dest`` with the right MD5 is reused; a wrong one is an error naming the file.
    """
    dest = Path(dest)
    if dest.exists():
        if _md5(dest) == remote.md5:
            return dest
        raise DatasetError(f"{dest}: MD5 differs from the pinned {remote.md5}; delete it to download again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with opener(urllib.request.Request(remote.url, headers=headers), timeout=60) as resp:
            status = getattr(resp, "status", None) or resp.getcode()
            if have and status != 206:  # the server ignored the range: start over
                have = 0
            with open(part, "ab" if have else "wb") as f:
                shutil.copyfileobj(resp, f, 1 << 20)
    except (urllib.error.URLError, OSError) as e:
        raise DatasetUnavailable(f"download of {remote.url} to {part} failed ({e}); rerun to resume") from e
    got = _md5(part)
    if got != remote.md5:
        part.unlink()
        raise DatasetError(f"{remote.url}: downloaded file has MD5 {got}, pinned {remote.md5}; removed, rerun")
    os.replace(part, dest)
    return dest


def _unpack(base: Path, unpack: Callable[[Path], None], subdirs: tuple[str, ...]) -> None:
    """Unpack archives into a temporary folder, then move ``subdirs`` into ``base`` (no half-unpacked state)."""
    with atomic_path(base / "unpacked") as tmp:
        unpack(tmp)
    for sub in subdirs:
        os.replace(base / "unpacked" / sub, base / sub)
    shutil.rmtree(base / "unpacked")


def _offline_message(name: str, remotes: list[Remote], base: Path, layout: str) -> str:
    files = "\n".join(f"  {r.url}  (md5 {r.md5})" for r in remotes)
    return (
        f"{name} is not available locally and cannot be downloaded.\n"
        f"Get these files on a machine with internet:\n{files}\n"
        f"then either place them unpacked so that {layout} exist under {base}, "
        f"or put them in {base / 'downloads'} (as downloaded), "
        f"or pass --root DIR (root=DIR) for a copy with that layout."
    )


# ---------------------------------------------------------------------------------------------- COCO
COCO_LAYOUT = "annotations/instances_val2017.json and val2017/*.jpg"


def _coco_layout(root: Path) -> tuple[Path, Path] | None:
    ann, images = root / "annotations" / "instances_val2017.json", root / "val2017"
    return (ann, images) if ann.is_file() and images.is_dir() else None


def _fetched_source(name: str, ann: Path, image_dir: Path, concepts: dict, origin: str) -> DatasetSource:
    params = {"origin": origin}
    return DatasetSource(
        name=name, annotation_file=ann, image_dir=image_dir,
        sha256=sha256_json({"annotations": sha256_file(ann), "params": {}}),
        concept_categories=object_categories(concepts), concepts=concepts, params=params,
    )


def fetch_coco2017_val(root: str | os.PathLike | None = None, opener: Callable = urllib.request.urlopen) -> DatasetSource:
    """COCO val2017 (5,000 images, instance masks) from ``root`` or ``datasets_dir()/coco2017-val``.

    ``root`` must hold ``annotations/instances_val2017.json`` and ``val2017/*.jpg`` (the layout of the
    unpacked official archives). Without ``root`` the archives are downloaded (pinned MD5) and unpacked.
    """
    layout = COCO_LAYOUT
    if root is not None:
        found = _coco_layout(Path(root))
        if not found:
            raise DatasetError(f"{root}: not a COCO val2017 copy; expected {layout}")
        return _fetched_source("coco2017-val", *found, COCO_CONCEPTS, str(Path(root).resolve()))
    base = datasets_dir() / "coco2017-val"
    found = _coco_layout(base)
    if not found:
        remotes = [COCO_ANNOTATIONS, COCO_IMAGES]
        downloads = base / "downloads"
        if not all((downloads / r.file_name).is_file() for r in remotes):
            try:
                check_online(COCO_IMAGES.url)
            except DatasetUnavailable as e:
                raise DatasetUnavailable(_offline_message("coco2017-val", remotes, base, layout) + f"\n({e})") from e
        archives = [download(r, downloads / r.file_name, opener) for r in remotes]

        def unpack(tmp: Path) -> None:
            with zipfile.ZipFile(archives[0]) as z:
                z.extract("annotations/instances_val2017.json", tmp)
            with zipfile.ZipFile(archives[1]) as z:
                z.extractall(tmp)

        _unpack(base, unpack, ("annotations", "val2017"))
        found = _coco_layout(base)
    return _fetched_source("coco2017-val", *found, COCO_CONCEPTS, "download")


# ---------------------------------------------------------------------------------------------- VOC
VOC_PARTS = ("JPEGImages", "SegmentationObject", "SegmentationClass", "ImageSets/Segmentation")
VOC_LAYOUT = "VOCdevkit/VOC2012/{" + ",".join(VOC_PARTS) + "}"


def find_voc_dir(root: Path) -> Path | None:
    """The ``VOC2012`` folder under ``root`` (``root`` itself, ``root/VOC2012`` or ``root/VOCdevkit/VOC2012``)."""
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if all((cand / p).is_dir() for p in VOC_PARTS):
            return cand
    return None


def _read_png_indices(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise DatasetError(f"{path}: expected a palette (index) PNG, got mode {im.mode}")
            return np.array(im)
    except (OSError, SyntaxError) as e:
        raise DatasetError(f"{path}: unreadable segmentation PNG ({e})") from e


def convert_voc(voc_dir: str | os.PathLike, out_json: str | os.PathLike) -> Path:
    """Convert VOC 2012 segmentation (train + val lists) into a COCO instances JSON.

    Instances come from ``SegmentationObject`` (one index per object); each instance's class is the
    majority ``SegmentationClass`` label under it. Index 255 (VOC's "void" border) belongs to no mask.
    Image ``file_name`` is ``<voc id>.jpg``, relative to ``JPEGImages``.
    """
    voc = Path(voc_dir)
    ids: set[str] = set()
    for lst in ("train.txt", "val.txt"):
        f = voc / "ImageSets" / "Segmentation" / lst
        if f.is_file():
            ids |= {line.strip() for line in f.read_text().splitlines() if line.strip()}
    if not ids:
        raise DatasetError(f"{voc / 'ImageSets/Segmentation'}: no train.txt / val.txt image list")
    writer = CocoWriter(list(VOC_CLASSES), {"generator": "conceptsim.data.fetch.convert_voc", "version": VOC_CONVERTER_VERSION})
    for vid in sorted(ids):
        jpg = voc / "JPEGImages" / f"{vid}.jpg"
        try:
            with Image.open(jpg) as im:
                w, h = im.size
        except FileNotFoundError as e:
            raise DatasetError(f"{jpg}: image {vid} listed in ImageSets/Segmentation is missing") from e
        except (OSError, SyntaxError) as e:
            raise DatasetError(f"{jpg}: image {vid} is unreadable ({e})") from e
        obj = _read_png_indices(voc / "SegmentationObject" / f"{vid}.png")
        cls = _read_png_indices(voc / "SegmentationClass" / f"{vid}.png")
        if obj.shape != (h, w) or cls.shape != (h, w):
            raise DatasetError(f"{voc}: image {vid}: masks {obj.shape}/{cls.shape} do not match image {(h, w)}")
        iid = writer.add_image(f"{vid}.jpg", h, w)
        writer.images[-1]["voc_id"] = vid
        for inst in np.unique(obj):
            if inst in (0, 255):
                continue
            m = obj == inst
            labels = cls[m]
            labels = labels[(labels > 0) & (labels <= len(VOC_CLASSES))]
            if labels.size == 0:
                raise DatasetError(f"{voc / 'SegmentationObject' / (vid + '.png')}: instance {inst} has no class label")
            writer.add_mask(iid, VOC_CLASSES[int(np.bincount(labels).argmax()) - 1][0], m)
    return writer.write(out_json)


def fetch_voc2012(root: str | os.PathLike | None = None, opener: Callable = urllib.request.urlopen) -> DatasetSource:
    """Pascal VOC 2012 segmentation, converted to COCO format (cached under ``datasets_dir()``).

    ``root`` may be the ``VOC2012`` folder, its parent, or the folder holding ``VOCdevkit``. Without it
    the official tar is downloaded (pinned MD5) into ``datasets_dir()/voc2012``.
    """
    layout = VOC_LAYOUT
    if root is not None:
        voc = find_voc_dir(Path(root))
        if voc is None:
            raise DatasetError(f"{root}: not a VOC 2012 copy; expected {layout}")
    else:
        base = datasets_dir() / "voc2012"
        voc = find_voc_dir(base)
        if voc is None:
            tar_path = base / "downloads" / VOC_TAR.file_name
            if not tar_path.is_file():
                try:
                    check_online(VOC_TAR.url)
                except DatasetUnavailable as e:
                    raise DatasetUnavailable(_offline_message("voc2012", [VOC_TAR], base, layout) + f"\n({e})") from e
            download(VOC_TAR, tar_path, opener)

            def unpack(tmp: Path) -> None:
                with tarfile.open(tar_path) as tar:
                    wanted = [m for m in tar.getmembers() if any(f"VOC2012/{p}/" in m.name for p in VOC_PARTS)]
                    tar.extractall(tmp, members=wanted, filter="data")

            _unpack(base, unpack, ("VOCdevkit",))
            voc = find_voc_dir(base)
    key = sha256_json({"voc_dir": str(voc.resolve()), "version": VOC_CONVERTER_VERSION})[:12]
    out = datasets_dir() / f"voc2012-{key}" / "annotations.json"
    if not out.is_file():
        convert_voc(voc, out)
    src = _fetched_source("voc2012", out, voc / "JPEGImages", VOC_CONCEPTS, str(voc.resolve()))
    return src


# ---------------------------------------------------------------------------------------------- availability
def unavailable_reason(name: str, root: str | os.PathLike | None = None) -> str | None:
    """Why ``name`` (coco2017-val, voc2012) cannot be had here, without downloading anything; None if it can.

    A ``root`` must have the dataset's layout; without one the cache (unpacked, or the archives in
    ``downloads/``) or a reachable download host will do.
    """
    if name == "coco2017-val":
        remotes, layout, present = [COCO_ANNOTATIONS, COCO_IMAGES], COCO_LAYOUT, lambda d: _coco_layout(d) is not None
    elif name == "voc2012":
        remotes, layout, present = [VOC_TAR], VOC_LAYOUT, lambda d: find_voc_dir(d) is not None
    else:
        raise KeyError(f"{name!r} is not a fetched dataset")
    if root is not None:
        return None if present(Path(root)) else f"{root}: not a {name} copy; expected {layout} (root:)"
    base = datasets_dir() / name
    if present(base) or all((base / "downloads" / r.file_name).is_file() for r in remotes):
        return None
    try:
        check_online(remotes[-1].url)
    except DatasetUnavailable as e:
        return _offline_message(name, remotes, base, layout) + f" ({e})"
    return None
