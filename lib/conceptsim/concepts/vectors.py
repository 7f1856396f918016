"""Concept vectors on disk: one ``.npz`` per (method, layer), readable with plain numpy.

``vectors/seg_<layer>.npz`` (Method A, Net2Vec)::

    weight (K, C) float32   probe weights in the standardised space
    bias (K,) float32
    mean (C,), std (C,) float32   train standardisation; logits = weight @ ((x - mean) / std) + bias
    concepts (K,) str       concept names, row order of weight
    categories (K,) str
    layer () str, relative_depth () float64, probe_rank () float64
    best_epoch (K,) int64, val_iou (K,) float64, n_constant_channels () int64

``vectors/cls_<layer>.npz`` (Method B, TCAV-style, on global-average-pooled activations)::

    coef (K, C) float64, intercept (K,) float64, chosen_c (K,) float64, val_ap (K,) float64
    mean (C,), std (C,) float32   standardisation of the pooled features
    concepts, categories, layer, relative_depth, probe_rank, n_constant_channels   as above
    The CAV is coef / |coef|.

Only concepts that were trained (not excluded) appear. Strings are numpy unicode arrays, so
``np.load(path)`` works without ``allow_pickle``. Layer names are made file-safe by replacing characters
outside ``[A-Za-z0-9._-]`` with ``_``; the exact name is inside the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from conceptsim.atomic import atomic_path

SEG_KEYS = ("weight", "bias", "mean", "std", "concepts")
CLS_KEYS = ("coef", "intercept", "mean", "std", "concepts")


class VectorFileError(RuntimeError):
    """A concept-vector file is missing, unreadable, lacks a key, or its shapes disagree."""


def vector_path(directory: str | Path, method: str, layer: str) -> Path:
    """``<directory>/<method>_<safe layer>.npz``."""
    return Path(directory) / f"{method}_{re.sub(r'[^A-Za-z0-9._-]', '_', layer)}.npz"


def save_npz(path: str | Path, **arrays) -> Path:
    """Write arrays atomically (an open handle stops numpy appending a second ``.npz``)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
    return Path(path)


@dataclass
class ConceptVectors:
    """A loaded vector file (either method); ``arrays`` holds every field of the file."""

    arrays: dict

    @classmethod
    def load(cls, path: str | Path) -> "ConceptVectors":
        with np.load(path, allow_pickle=False) as f:
            return cls({k: f[k] for k in f.files})

    def __getitem__(self, key: str):
        return self.arrays[key]

    @property
    def method(self) -> str:
        return "seg" if "weight" in self.arrays else "cls"

    @property
    def concepts(self) -> list[str]:
        return [str(c) for c in self.arrays["concepts"]]

    @property
    def layer(self) -> str:
        return str(self.arrays["layer"])

    def standardise(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` on ``N x C (x h x w)`` raw activations."""
        x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean, std = (torch.from_numpy(np.asarray(self[k], dtype=np.float32)).view(shape) for k in ("mean", "std"))
        return (x - mean) / std  # float32 whatever the file stores (synthetic vectors are float64)

    def seg_logits(self, activations) -> torch.Tensor:
        """Method A logits ``N x K x h x w`` of raw activations ``N x C x h x w`` (activation grid)."""
        z = self.standardise(activations)
        w = torch.from_numpy(self["weight"]).float()
        return (torch.matmul(w, z.flatten(2)) + torch.from_numpy(self["bias"]).float()[:, None]).view(
            z.shape[0], w.shape[0], *z.shape[2:])

    def cls_logits(self, pooled) -> np.ndarray:
        """Method B logits ``N x K`` of raw global-average-pooled activations ``N x C``."""
        z = self.standardise(pooled).double().numpy()
        return z @ self["coef"].T + self["intercept"]


def segment(vectors: ConceptVectors, activations, boxes, input_size, grid) -> torch.Tensor:
    """Method A probabilities ``N x K x gh x gw`` on the evaluation grid over each image.

    Logits are resampled bilinearly before the sigmoid, as in evaluation (threshold them at 0.5).
    """
    from conceptsim.data.geometry import input_to_image_grid  # local: keeps this module numpy-first

    logits = vectors.seg_logits(activations)
    return torch.sigmoid(input_to_image_grid(logits, torch.as_tensor(np.asarray(boxes, np.float32)), input_size, grid))


def load_layer_vectors(directory: str | Path, layer: str, kind: str) -> dict:
    """The arrays of one layer's ``kind`` (``"seg"`` or ``"cls"``) vector file in ``directory``, checked.

    Returns a dict of arrays with ``concepts`` as a list of str; raises :class:`VectorFileError` when the
    file is missing or unreadable, lacks one of :data:`SEG_KEYS` / :data:`CLS_KEYS`, or its shapes disagree.
    """
    if kind not in ("seg", "cls"):
        raise ValueError(f"kind must be 'seg' or 'cls', got {kind!r}")
    path = vector_path(directory, kind, layer)
    if not path.exists():
        raise VectorFileError(f"concept vectors {path} do not exist; run the concept stage first")
    try:
        out = dict(ConceptVectors.load(path).arrays)
    except Exception as exc:  # numpy raises several types for a damaged archive
        raise VectorFileError(f"concept vectors {path} are unreadable ({exc})") from exc
    missing = [k for k in (SEG_KEYS if kind == "seg" else CLS_KEYS) if k not in out]
    if missing:
        raise VectorFileError(f"concept vectors {path} lack keys {missing} (has {sorted(out)})")
    w = out["weight" if kind == "seg" else "coef"]
    b = out["bias" if kind == "seg" else "intercept"]
    names = [str(c) for c in out["concepts"]]
    k, c = w.shape if w.ndim == 2 else (-1, -1)
    if w.ndim != 2 or b.shape != (k,) or len(names) != k or out["mean"].shape != (c,) or out["std"].shape != (c,):
        raise VectorFileError(
            f"concept vectors {path} have inconsistent shapes: weights {w.shape}, bias {b.shape}, "
            f"{len(names)} concepts, mean {out['mean'].shape}, std {out['std'].shape}"
        )
    out["concepts"] = names
    return out
