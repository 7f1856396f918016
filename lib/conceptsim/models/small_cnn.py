"""Small CNNs trained here: the networks of the grounding study's shortcut and label-randomisation test.

A :class:`SmallCNN` is four conv blocks (3 x 3 conv, batch norm, ReLU, 2 x 2 max pool; widths ``w, 2w, 4w,
4w``), global average pooling and a linear classifier. It is trained on coco-icons' dominant-object label
(:func:`conceptsim.data.coco_icons.image_labels`) at low resolution, on a build whose planted cue -- a dot
whose colour gives the label -- is present with probability ``cue`` (0, 0.5, 1 in the study), or with the
labels shuffled (``labels: shuffled``, a permutation drawn from the network's seed).

Training is deterministic on the CPU: one torch thread, the initialisation and every epoch's data order
drawn from ``seed``, no augmentation, Adam. The checkpoint (a ``state_dict``) is written atomically to
``<weights dir>/small_cnn/<key>.pt`` beside ``<key>.json`` (the training configuration, the checkpoint's
sha256 and the final training accuracy); ``key`` hashes the configuration, :data:`TRAINING_VERSION` and the
coco-icons ``BUILDER_VERSION`` (a new builder draws other training images). A later build reuses a checkpoint
whose sidecar names the same configuration and versions and whose bytes still hash to the recorded sha256,
and retrains otherwise. Checkpoints are loaded with ``torch.load(weights_only=True)``.

In a study a network is a declared model (:mod:`conceptsim.models.user_models`)::

    models:
      - cue50_s1: {small_cnn: {cue: 0.5, seed: 1}}
      - shuffled_s0: {small_cnn: {labels: shuffled, seed: 0}}

the keys of :data:`DEFAULTS` overriding the defaults; the first extraction of a network trains it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from conceptsim.atomic import atomic_path, exclusive, sha256_file, sha256_json, write_json
from conceptsim.data.geometry import Preprocessing
from conceptsim.paths import weights_dir

TRAINING_VERSION = 1
#: the training configuration's keys and defaults: the network's own (cue, labels, seed), its training set
#: (a coco-icons build of the four styles the study holds out of its evaluation split), and the optimiser
DEFAULTS: dict[str, Any] = {
    "cue": 0.0, "labels": "true", "seed": 0,
    "n": 600, "size": 64, "data_seed": 0, "mode": "objects",
    "styles": ["fluent-modern", "fluent-flat", "openmoji", "openmoji-outline"],
    "categories": ["person", "car", "dog", "bird", "airplane"],
    "epochs": 15, "batch_size": 32, "lr": 0.003, "width": 16,
}
LABELS = ("true", "shuffled")
LAYERS = ("block1", "block2", "block3", "block4")
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


class SmallCNNError(ValueError):
    """A bad training configuration; the message names the key."""


def check_config(raw: Any, where: str = "small_cnn") -> dict[str, Any]:
    """The full training configuration (defaults, then ``raw``); a bad key or value names ``where.key``."""
    if not isinstance(raw, Mapping):
        raise SmallCNNError(f"'{where}' must be a mapping of training options {sorted(DEFAULTS)}, got {raw!r}")
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise SmallCNNError(f"unknown key(s) {unknown} in '{where}'; accepted: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **raw}
    positive = ("n", "size", "epochs", "batch_size", "width")
    for k in positive + ("seed", "data_seed"):
        v = cfg[k]
        if not isinstance(v, int) or isinstance(v, bool) or v < (1 if k in positive else 0):
            raise SmallCNNError(f"'{where}.{k}' must be an integer >= {1 if k in positive else 0}, got {v!r}")
    if cfg["size"] < 64:
        raise SmallCNNError(f"'{where}.size' must be at least 64 (coco-icons' smallest side), got {cfg['size']}")
    for k, low, high in (("cue", 0.0, 1.0), ("lr", 0.0, None)):
        v = cfg[k]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < low or (high is not None and v > high):
            raise SmallCNNError(f"'{where}.{k}' must be a number in [{low}, {high if high is not None else 'inf'}], got {v!r}")
        cfg[k] = float(v)
    if cfg["labels"] not in LABELS:
        raise SmallCNNError(f"'{where}.labels' must be one of {list(LABELS)}, got {cfg['labels']!r}")
    for k in ("styles", "categories"):
        v = cfg[k]
        if not isinstance(v, list) or len(v) < (2 if k == "categories" else 1) or not all(isinstance(x, str) for x in v):
            raise SmallCNNError(f"'{where}.{k}' must be a list of names (categories: at least two), got {v!r}")
    return cfg


def group_of(config: Mapping[str, Any]) -> str:
    """The network's group in the shortcut test: ``shuffled labels`` or ``cue p=<cue>``."""
    return "shuffled labels" if config["labels"] == "shuffled" else f"cue p={float(config['cue']):g}"


class SmallCNN(nn.Module):
    """Four conv blocks (``block1`` .. ``block4``), global average pooling, a linear classifier."""

    def __init__(self, n_classes: int, width: int = 16, size: int = 64):
        super().__init__()
        channels = (3, width, 2 * width, 4 * width, 4 * width)
        for i in range(4):
            self.add_module(f"block{i + 1}", nn.Sequential(
                nn.Conv2d(channels[i], channels[i + 1], 3, padding=1, bias=False), nn.BatchNorm2d(channels[i + 1]),
                nn.ReLU(), nn.MaxPool2d(2)))
        self.head = nn.Linear(channels[-1], n_classes)
        self.preprocessing = Preprocessing(size=(size, size), resize="stretch", scale=1 / 255.0, mean=MEAN, std=STD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in LAYERS:
            x = getattr(self, name)(x)
        return self.head(x.mean(dim=(2, 3)))


def network(config: Mapping[str, Any]) -> SmallCNN:
    """The untrained network of a configuration (initialised from the global torch stream)."""
    return SmallCNN(len(config["categories"]), config["width"], config["size"])


def training_set(config: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (``N x 3 x size x size``, normalised) and labels of the configuration's training build."""
    from PIL import Image

    from conceptsim.data.coco_icons import image_labels
    from conceptsim.data.registry import ensure_dataset

    build = {"n": config["n"], "size": config["size"], "seed": config["data_seed"], "styles": list(config["styles"]),
             "categories": list(config["categories"]), "mode": config["mode"]}
    if config["cue"] > 0:
        build["cue"] = config["cue"]
    source = ensure_dataset("coco-icons", **build)
    images, labels, names = image_labels(source.annotation_file)
    pixels = np.stack([np.asarray(Image.open(source.image_dir / im["file_name"]).convert("RGB")) for im in images])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    y = np.array([names.index(label) for label in labels], dtype=np.int64)
    if config["labels"] == "shuffled":
        y = np.random.default_rng([config["seed"], 1]).permutation(y)
    return x, torch.from_numpy(y)


def train(config: Mapping[str, Any]) -> tuple[SmallCNN, dict[str, float]]:
    """Train a network of ``config`` (see the module docstring); returns it (eval mode) and its training record."""
    x, y = training_set(config)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config["seed"])
            model = network(config)
            opt = torch.optim.Adam(model.parameters(), lr=config["lr"])
            order = torch.Generator().manual_seed(config["seed"])
            model.train()
            for _ in range(config["epochs"]):
                perm = torch.randperm(len(y), generator=order)
                for start in range(0, len(y), config["batch_size"]):
                    idx = perm[start : start + config["batch_size"]]
                    opt.zero_grad()
                    loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                    loss.backward()
                    opt.step()
            model.eval()
            with torch.no_grad():
                accuracy = float((model(x).argmax(1) == y).float().mean())
    finally:
        torch.set_num_threads(threads)
    return model, {"train_accuracy": accuracy, "seconds": time.perf_counter() - t0, "n_train": int(len(y))}


def data_version() -> int:
    """The coco-icons builder version of the training builds (part of the checkpoint key: a new builder draws
    other images, so a checkpoint trained on an older build is not reused)."""
    from conceptsim.data.coco_icons import BUILDER_VERSION

    return BUILDER_VERSION


def checkpoint_path(config: Mapping[str, Any]) -> Path:
    key = sha256_json({"version": TRAINING_VERSION, "data_version": data_version(), "config": dict(config)})[:16]
    return weights_dir() / "small_cnn" / f"{key}.pt"


def _reusable(path: Path, config: Mapping[str, Any]) -> str | None:
    """The checkpoint's sha256 when its sidecar names this configuration and its bytes match; else None."""
    side = path.with_suffix(".json")
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    if (meta.get("config") != dict(config) or meta.get("version") != TRAINING_VERSION
            or meta.get("data_version") != data_version() or not path.is_file()):
        return None
    return meta["sha256"] if sha256_file(path) == meta.get("sha256") else None


def ensure_checkpoint(config: Mapping[str, Any]) -> tuple[Path, str]:
    """The trained checkpoint of ``config`` and its sha256, trained (and written atomically) unless reusable."""
    config = check_config(dict(config))
    path = checkpoint_path(config)
    if (sha := _reusable(path, config)) is not None:
        return path, sha
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(path):  # parallel runs of a study: one trains, the others wait and reuse
        if (sha := _reusable(path, config)) is not None:
            return path, sha
        model, record = train(config)
        with atomic_path(path) as tmp:
            torch.save(model.state_dict(), tmp)
        sha = sha256_file(path)
        write_json(path.with_suffix(".json"), {"version": TRAINING_VERSION, "data_version": data_version(),
                                               "config": dict(config), "sha256": sha, **record})
    return path, sha


def load_trained(config: Mapping[str, Any]) -> tuple[SmallCNN, str]:
    """The trained network of ``config`` (training it first when no valid checkpoint exists) and its sha256."""
    config = check_config(dict(config))
    path, sha = ensure_checkpoint(config)
    model = network(config)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model.eval(), sha


def training_record(config: Mapping[str, Any]) -> dict | None:
    """The sidecar of a configuration's checkpoint (configuration, sha256, training accuracy), None before training."""
    side = checkpoint_path(check_config(dict(config))).with_suffix(".json")
    return json.loads(side.read_text()) if side.is_file() else None
