"""Named datasets, ensure_dataset caching, open_source, the summary CSV and figure, the ``data`` CLI."""

from __future__ import annotations

import argparse
import csv
import os
import socket

import pytest

from conceptsim.data import cli, registry
from conceptsim.data.coco import ConceptDataset
from conceptsim.data.summary import COLUMNS, write_summary


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("CONCEPTSIM_DATA", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_open_source_serves_registry_and_declared_datasets(cache, tmp_path):
    """One way to a dataset: a study's options with ``build`` (or ``root``) reach ensure_dataset, options with
    ``coco`` name the user's own folder; the other keys are the ConceptDataset's."""
    from formats import write_coco

    built = registry.open_source("shapes", {"build": {"n": 6, "size": 48}, "concepts": ["red"], "max_images": 2})
    assert built == registry.ensure_dataset("shapes", n=6, size=48)
    write_coco(tmp_path / "d", n=3, ann_name="a.json", image_dir="im")
    coco = {"images": str(tmp_path / "d" / "im"), "annotations": str(tmp_path / "d" / "annotations" / "a.json")}
    own = registry.open_source("mine", {"coco": coco, "concept_categories": {"person": "object"}})
    assert (own.name, own.annotation_file, own.image_dir) == ("mine", tmp_path / "d" / "annotations" / "a.json",
                                                              tmp_path / "d" / "im")
    assert own.concept_categories == {"person": "object"} and own.params == {"origin": coco["images"]}
    with pytest.raises(ValueError, match="takes no build parameters"):
        registry.open_source("coco2017-val", {"build": {"n": 3}})


def test_registry_names():
    assert set(registry.DATASETS) == {"shapes", "photo-colors", "coco-icons", "coco2017-val", "voc2012"}


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


def _open_shapes_and_report(results):
    results.put(registry.ensure_dataset("shapes", n=6, size=48).sha256)


def test_parallel_runs_build_a_dataset_once(cache, monkeypatch, tmp_path):
    """Two processes opening an unbuilt dataset at once: one builds it, the other waits and reuses it."""
    import multiprocessing
    import time

    log = tmp_path / "builds.txt"
    real_build = registry._build

    def slow_counted_build(*args, **kwargs):
        with open(log, "a") as f:
            f.write("build\n")
        time.sleep(1.0)  # long enough for the second process to arrive while the first builds
        return real_build(*args, **kwargs)

    monkeypatch.setattr(registry, "_build", slow_counted_build)
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_open_shapes_and_report, args=(results,)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    hashes = {results.get(timeout=5) for _ in procs}
    assert log.read_text().splitlines() == ["build"] and len(hashes) == 1
    assert hashes == {registry.ensure_dataset("shapes", n=6, size=48).sha256}


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
    import matplotlib
    import matplotlib.pyplot as plt

    src = registry.ensure_dataset("shapes", n=10, size=48)
    previous = matplotlib.get_backend()
    plt.switch_backend("svg")  # stands in for a notebook's inline backend
    figures_before = plt.get_fignums()  # other tests may have left pyplot figures open
    try:
        rows = write_summary(src, tmp_path / "s.csv", tmp_path / "s.png", examples=2, max_concepts=3)
        # the caller's backend and pyplot figures are left alone (notebook 01 shows figures after it)
        assert matplotlib.get_backend() == "svg" and plt.get_fignums() == figures_before
    finally:
        plt.switch_backend(previous)
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


def test_build_writes_a_manifest_checked_when_opened(cache):
    from conceptsim.data.coco import DatasetError

    a = registry.ensure_dataset("shapes", n=4, size=48)
    meta = registry.read_marker(a.annotation_file.parent)
    assert set(meta["files"]) == {"annotations.json", *(f"images/{i:06d}.jpg" for i in range(4))}
    jpg = a.image_dir / "000002.jpg"
    data = bytearray(jpg.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte in the middle: still decodes, to other pixels
    jpg.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"000002.jpg \(image id 3\): sha256 \w+ differs from the build manifest"):
        registry.ensure_dataset("shapes", n=4, size=48)
    jpg.unlink()
    with pytest.raises(DatasetError, match=r"000002.jpg: listed in the build manifest .* but missing"):
        registry.ensure_dataset("shapes", n=4, size=48)


def test_build_into_never_deletes_foreign_files(tmp_path):
    from conceptsim.data.coco import DatasetError

    out = tmp_path / "mine"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("keep me")
    (out / "sub" / "data.csv").write_text("1,2")
    params = {"n": 3, "size": 48, "seed": 0}
    with pytest.raises(DatasetError, match=r"mine is not empty and is not a previous shapes build \(2 other entries: "
                                           r"notes.txt, sub/\).*--overwrite"):
        registry.build_into("shapes", out, params)
    assert (out / "notes.txt").read_text() == "keep me" and (out / "sub" / "data.csv").exists()
    told = []
    registry.build_into("shapes", out, params, overwrite=True, report=told.append)
    assert told == [f"--overwrite: removing 2 entries from {out}: notes.txt, sub/"]
    assert not (out / "notes.txt").exists() and registry.read_marker(out)["name"] == "shapes"
    # a previous build of the same dataset (and nothing else) is replaced without asking
    registry.build_into("shapes", out, {**params, "n": 2})
    assert registry.read_marker(out)["params"]["n"] == 2 and not (out / "images" / "000002.jpg").exists()
    # ... but not when something foreign was added to it, nor by a different dataset
    (out / "images" / "extra.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"1 other entries: images/extra.txt"):
        registry.build_into("shapes", out, params)
    (out / "images" / "extra.txt").unlink()
    with pytest.raises(DatasetError, match="not a previous photo-colors build"):
        registry.build_into("photo-colors", out, {"n": 2, "size": 32, "seed": 0})
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="exists and is not a folder"):
        registry.build_into("shapes", tmp_path / "file", params)


def test_a_killed_build_leaves_no_debris_for_ever(cache):
    from test_run_orchestrate import dead_pid

    params = registry.build_params("shapes", False, n=6, size=48)
    out = registry.dataset_dir("shapes", params)
    out.parent.mkdir(parents=True, exist_ok=True)
    dead, alive = dead_pid(), os.getppid()  # the parent: alive, and not this build's own temporary name
    killed = out.parent / f".{out.name}.tmp-{dead}.tmp-{dead}"  # what a build killed mid-way leaves
    (killed / "images").mkdir(parents=True)
    (killed / "images" / "0001.png").write_bytes(b"x")
    running = out.parent / f".{out.name}.tmp-{alive}"  # a live build's temporary
    running.mkdir()
    mine = out.parent / f".{out.name}.notes"  # not one of the suite's temporary names
    mine.write_text("the user's")
    registry.ensure_dataset("shapes", n=6, size=48)
    assert not killed.exists() and running.is_dir() and mine.read_text() == "the user's"
