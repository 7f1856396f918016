"""Paper dataset fetchers: offline failure, local copies (tiny fakes), VOC conversion, resumable download."""

from __future__ import annotations

import hashlib
import io
import socket
import time

import numpy as np
import pytest
from PIL import Image

from conceptsim.data import fetch
from conceptsim.data.coco import ConceptDataset, DatasetError
from conceptsim.data.fetch import DatasetUnavailable, Remote, convert_voc, download, fetch_coco2017_val, fetch_voc2012
from test_data_coco import write_fake_coco


@pytest.fixture
def offline(monkeypatch, tmp_path):
    def refuse(*a, **k):
        raise OSError("network cut by test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("CONCEPTSIM_DATA", str(tmp_path / "cache"))


@pytest.mark.parametrize("name, fn, files", [
    ("coco2017-val", fetch_coco2017_val, ["val2017.zip", "annotations_trainval2017.zip", "instances_val2017.json"]),
    ("voc2012", fetch_voc2012, ["VOCtrainval_11-May-2012.tar", "VOC2012"]),
])
def test_offline_fails_at_once_naming_files(offline, tmp_path, name, fn, files):
    t = time.monotonic()
    with pytest.raises(DatasetUnavailable) as e:
        fn()
    assert time.monotonic() - t < 2.0
    msg = str(e.value)
    assert all(f in msg for f in files) and str(tmp_path / "cache" / name) in msg and "--root" in msg


def test_coco_local_root(offline, tmp_path):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    ann = write_fake_coco(root, image_dir="val2017", ann_name="annotations/instances_val2017.json")
    src = fetch_coco2017_val(root)
    assert src.annotation_file == ann and src.image_dir == root / "val2017" and len(src.sha256) == 64
    ds = ConceptDataset(src, concepts=["box"], fractions=(1.0, 0.0, 0.0))
    assert len(ds) == 10 and ds.concepts[0].category == "shape"
    with pytest.raises(DatasetError, match="not a COCO val2017 copy"):
        fetch_coco2017_val(tmp_path / "nothing")


def _palette_png(arr, path):
    im = Image.new("P", (arr.shape[1], arr.shape[0]))
    im.putdata(arr.ravel().tolist())
    im.putpalette([v for i in range(256) for v in (i, i, i)])
    im.save(path)


def write_fake_voc(root):
    """Two 20 x 30 images: a person (class 15) with a void border, and a car (7) next to a dog (12)."""
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationObject", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    obj, cls = np.zeros((2, 20, 30), np.uint8), np.zeros((2, 20, 30), np.uint8)
    obj[0, 2:10, 2:8], cls[0, 2:10, 2:8] = 1, 15
    obj[0, 1, 1:9], cls[0, 1, 1:9] = 255, 255  # void border row: no mask's pixel
    obj[1, 5:15, 0:10], cls[1, 5:15, 0:10] = 1, 7
    obj[1, 0:4, 20:30], cls[1, 0:4, 20:30] = 2, 12
    for k, vid in enumerate(["2007_000001", "2007_000002"]):
        Image.new("RGB", (30, 20), (90, 90, 90)).save(voc / "JPEGImages" / f"{vid}.jpg")
        _palette_png(obj[k], voc / "SegmentationObject" / f"{vid}.png")
        _palette_png(cls[k], voc / "SegmentationClass" / f"{vid}.png")
    (voc / "ImageSets/Segmentation/train.txt").write_text("2007_000001\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text("2007_000002\n")
    return voc


def test_voc_conversion_and_local_root(offline, tmp_path):
    voc = write_fake_voc(tmp_path / "voc")
    src = fetch_voc2012(tmp_path / "voc")
    assert src.image_dir == voc / "JPEGImages"
    ds = ConceptDataset(src, concepts=["person", "car", "dog", "vehicle"], fractions=(1.0, 0.0, 0.0))
    m1, m2 = ds.masks(1), ds.masks(2)
    assert m1[0].sum() == 48 and m1[1:].sum() == 0
    assert m2[1].sum() == 100 and m2[2].sum() == 40 and np.array_equal(m2[3], m2[1])
    assert {c.name: c.category for c in ds.concepts}["vehicle"] == "object"
    # idempotent: the cached conversion is reused
    assert fetch_voc2012(voc).annotation_file == src.annotation_file


def test_voc_bad_input(tmp_path):
    voc = write_fake_voc(tmp_path / "voc")
    (voc / "JPEGImages" / "2007_000002.jpg").unlink()
    with pytest.raises(DatasetError, match="2007_000002.jpg: image 2007_000002 listed in ImageSets/Segmentation is missing"):
        convert_voc(voc, tmp_path / "out.json")
    with pytest.raises(DatasetError, match="not a VOC 2012 copy"):
        fetch_voc2012(tmp_path / "nothing")


class _FakeHTTP:
    """Serves ``payload`` honouring a ``Range: bytes=N-`` header (206), like a range-capable server."""

    def __init__(self, payload, fail_after=None):
        self.payload, self.fail_after, self.ranges = payload, fail_after, []

    def __call__(self, req, timeout=None):
        rng = req.get_header("Range")
        self.ranges.append(rng)
        start = int(rng.split("=")[1].rstrip("-")) if rng else 0
        body = self.payload[start:]
        resp = io.BytesIO(body[: self.fail_after] if self.fail_after else body)
        resp.status = 206 if rng else 200
        if self.fail_after:
            real_read = resp.read

            def read(n=-1):
                data = real_read(n)
                if not data:
                    raise OSError("connection reset")
                return data

            resp.read = read
        return resp


def test_resumable_download_and_checksum(tmp_path):
    payload = bytes(range(256)) * 100
    remote = Remote("http://example.invalid/file.bin", hashlib.md5(payload).hexdigest())
    dest = tmp_path / "file.bin"
    with pytest.raises(DatasetUnavailable, match="rerun to resume"):
        download(remote, dest, opener=_FakeHTTP(payload, fail_after=10000))
    assert (tmp_path / "file.bin.part").stat().st_size == 10000 and not dest.exists()
    server = _FakeHTTP(payload)
    assert download(remote, dest, opener=server).read_bytes() == payload
    assert server.ranges == ["bytes=10000-"]
    assert download(remote, dest, opener=None) == dest  # complete file reused, no request
    bad = Remote(remote.url, "0" * 32)
    with pytest.raises(DatasetError, match="pinned 0000"):
        download(bad, tmp_path / "other.bin", opener=_FakeHTTP(payload))
    assert not (tmp_path / "other.bin.part").exists()


def test_pinned_sources():
    assert fetch.COCO_IMAGES.file_name == "val2017.zip" and len(fetch.COCO_ANNOTATIONS.md5) == 32
    assert fetch.VOC_TAR.file_name == "VOCtrainval_11-May-2012.tar"
    assert {"person", "vehicle", "animal"} <= set(fetch.COCO_CONCEPTS)


def test_fetch_root_rejects_a_broken_annotation_file(offline, tmp_path, capsys):
    from conceptsim.cli import main

    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    ann = write_fake_coco(root, image_dir="val2017", ann_name="annotations/instances_val2017.json")
    assert main(["data", "fetch", "coco2017-val", "--root", str(root)]) == 0
    ann.write_text(ann.read_text()[:-40])  # truncated
    assert main(["data", "fetch", "coco2017-val", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert f"{ann}: malformed JSON" in err and "Traceback" not in err


def test_unavailable_reason_without_downloading(offline, tmp_path):
    from conceptsim.data.fetch import unavailable_reason

    assert "instances_val2017.json" in unavailable_reason("coco2017-val", tmp_path / "nothing")
    assert "VOCtrainval_11-May-2012.tar" in unavailable_reason("voc2012")
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    write_fake_coco(root, image_dir="val2017", ann_name="annotations/instances_val2017.json")
    assert unavailable_reason("coco2017-val", root) is None
