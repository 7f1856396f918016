"""Named datasets, ensure_dataset caching, the summary CSV and figure, the ``data`` CLI."""

from __future__ import annotations

import argparse
import csv
import socket

import pytest

from conceptsim.data import cli, registry
from conceptsim.data.coco import ConceptDataset
from conceptsim.data.summary import COLUMNS, write_summary


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("CONCEPTSIM_DATA", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_registry_names():
    assert set(registry.DATASETS) == {"shapes", "photo-colors", "coco2017-val", "voc2012"}


def test_ensure_dataset_builds_once_keyed_by_params(cache):
    a = registry.ensure_dataset("shapes", n=6, size=48)
    assert a.annotation_file.is_file() and a.image_dir.is_dir() and a.annotation_file.parent.parent == cache
    assert a.annotation_file.parent.name.startswith("shapes-") and a.params == {"n": 6, "size": 48, "seed": 0}
    stamp = a.annotation_file.stat().st_mtime_ns
    again = registry.ensure_dataset("shapes", n=6, size=48)
    assert again == a and a.annotation_file.stat().st_mtime_ns == stamp  # complete build reused, same hash
    b = registry.ensure_dataset("shapes", n=6, size=48, seed=1)
    assert b.annotation_file.parent != a.annotation_file.parent and b.sha256 != a.sha256
    assert a.concept_categories["star"] == "shape" and a.concept_categories["brick"] == "texture"


def test_incomplete_build_is_rebuilt(cache):
    a = registry.ensure_dataset("photo-colors", n=3, size=32)
    (a.annotation_file.parent / "build.json").unlink()
    (a.annotation_file.parent / "images" / "000000.png").unlink()
    b = registry.ensure_dataset("photo-colors", n=3, size=32)
    assert b.sha256 == a.sha256 and (b.image_dir / "000000.png").is_file()


def test_smoke_parameters_and_bad_arguments(cache):
    assert registry.build_params("shapes", smoke=True) == {"n": 60, "size": 128, "seed": 0}
    assert registry.build_params("photo-colors", smoke=True)["size"] == 96
    with pytest.raises(ValueError, match="no build parameters"):
        registry.ensure_dataset("shapes", colour="red")
    with pytest.raises(ValueError, match="root= does not apply"):
        registry.ensure_dataset("shapes", root="/x")
    with pytest.raises(KeyError, match="unknown dataset"):
        registry.ensure_dataset("imagenet")


def test_summary_csv_and_figure(cache, tmp_path):
    src = registry.ensure_dataset("shapes", n=10, size=48)
    rows = write_summary(src, tmp_path / "s.csv", tmp_path / "s.png", examples=2, max_concepts=3)
    with open(tmp_path / "s.csv") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == COLUMNS and len(table) == len(rows)
    ds = ConceptDataset(src)
    for c in ds.concepts:
        per = {r["split"]: r for r in table if r["concept"] == c.name}
        assert int(per["all"]["images_in_split"]) == 10
        assert sum(int(per[s]["images_with_concept"]) for s in ("train", "val", "test")) == int(per["all"]["images_with_concept"])
    assert sum(1 for r in table if r["excluded"]) == len(ds.excluded_concepts)
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def _cli(argv):
    parser = argparse.ArgumentParser(prog="conceptsim")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli(cache, tmp_path, monkeypatch, capsys):
    assert _cli(["data", "build", "shapes", "--out", str(tmp_path / "sh"), "--n", "4", "--size", "40", "--seed", "2"]) == 0
    assert (tmp_path / "sh" / "annotations.json").is_file()
    assert _cli(["data", "summary", str(tmp_path / "sh" / "annotations.json"), "--out", str(tmp_path / "x.csv")]) == 0
    assert (tmp_path / "x.csv").is_file()
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(OSError("cut")))
    assert _cli(["data", "fetch", "voc2012"]) == 2
    assert "VOCtrainval_11-May-2012.tar" in capsys.readouterr().err
