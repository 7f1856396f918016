"""Random-init twins that carry signal in every layer: variance-preserving initialisation.

A twin ``NAME:random`` or ``NAME:random@SEED`` (names: :mod:`conceptsim.models.names`) is the registry model's
architecture with fresh weights (methods.md, "Random-init twins"). PyTorch's default initialisation shrinks
the signal's variance at every layer; with batch norm in eval mode at its identity statistics nothing
restores it, and deep layers of a MobileNet end up below float16's normal range and the standardisation
floor (constant channels). A twin here is therefore built as a freshly initialised network *as it computes
at the first training step*:

1. convolution weights: He/Kaiming normal, fan-in, ReLU gain (:func:`kaiming_fan_in`), or the
   architecture's reference initialisation where the builder provides one (torchvision's MobileNetV2);
   biases zero, batch-norm affine parameters identity;
2. per-channel normalisation at initialisation (:func:`calibrate`): one forward pass over a seeded batch of
   synthetic, image-like inputs (colour noise with the 1/f spectrum of photographs, :func:`calibration_images`)
   sets every batch norm's statistics to that batch's (what training mode computes at step 0); in a graph
   whose batch norms were folded into the convolutions (CenterNet), each convolution's output is
   standardised on the same batch and the scale and shift are folded into its weights and bias, in
   execution order within the one pass.

Seeds: twin ``SEED`` of architecture ``NAME`` is built and initialised under :func:`twin_init_seed`
(``SEED``, ``NAME``), on a forked random stream, so each twin is deterministic and twins of architectures
that share blocks never share random weights.

After step 2 the weight scale of step 1 no longer matters for the output of a normalised layer (batch norm
is invariant to it), so every twin has unit-scale pre-activations in every convolution, whatever its
architecture: the twins are comparable, and no layer is empty. No real image is used.
"""

from __future__ import annotations

import os
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from conceptsim.atomic import atomic_path, sha256_json
from conceptsim.paths import cache_dir

#: bump when the twin construction changes (it is part of the twins' weight identity and store keys)
TWIN_INIT_VERSION = 4


def twin_init_seed(architecture: str, seed: int) -> int:
    """The seed that initialises twin ``seed`` of ``architecture``: derived from both (methods.md, "Controls").

    Two architectures that share blocks (SSD-MobileNetV2 and MobileNetV2) must never share random weights,
    whatever their constructors do with the random stream: the twin seed is mixed with the CRC-32 of the
    architecture name through numpy's ``SeedSequence``. Deterministic across processes and platforms.
    """
    if int(seed) < 0:
        raise ValueError(f"twin seed must be a non-negative integer, got {seed!r}")
    entropy = [int(seed), zlib.crc32(str(architecture).encode("utf-8"))]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint32)[0])


@torch.no_grad()
def kaiming_fan_in(module: nn.Module) -> None:
    """He/Kaiming-normal (fan-in, ReLU gain) convolution weights, zero biases, identity batch norms."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_parameters()


def calibration_images(size: tuple[int, int], n: int, seed: int) -> np.ndarray:
    """``n`` seeded uint8 RGB images ``H x W x 3`` with the spectrum of natural images.

    Each colour channel is noise with a ``1 / f`` amplitude spectrum (the power law of photographs: large
    smooth regions, edges at every scale), channels partly correlated like the colours of photographs,
    then mapped to the 0-255 range with a random brightness and contrast. Only their rough statistics
    matter (see the module doc); no real image is used.
    """
    rng = np.random.default_rng([int(seed), 0x7714])
    h, w = (int(s) for s in size)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    amp = 1.0 / np.maximum(np.sqrt(fy**2 + fx**2), 1.0 / max(h, w))
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        spec = amp * (rng.standard_normal((3, h, w // 2 + 1)) + 1j * rng.standard_normal((3, h, w // 2 + 1)))
        planes = np.fft.irfft2(spec, s=(h, w))
        planes /= planes.std(axis=(1, 2), keepdims=True)
        mix = 0.6 * planes.mean(axis=0, keepdims=True) + 0.4 * planes  # shared luminance, some colour
        img = rng.uniform(80, 170) + rng.uniform(30, 60) * mix.transpose(1, 2, 0)
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


@torch.no_grad()
def calibrate(module: nn.Module, batch: torch.Tensor, forward=None) -> None:
    """Normalise every layer at initialisation on ``batch`` in one forward pass (see module doc, step 2).

    Modules with batch norm get that batch's statistics; convolutions with a bias that no batch norm
    follows -- the graphs with folded batch norm -- get their output standardised per channel, folded into
    weight and bias, except convolutions that read pooled ``1 x 1`` maps (squeeze-excitation), which no batch
    norm ever followed: standardising their few values per channel would saturate the gates on real images.
    A convolution that *reduces* a larger map to ``1 x 1`` (SSD300's last extra layer) is standardised like
    any other: left at step 1, a share of its ReLU units is negative on every image (constant channels).
    ``forward(module, x)`` runs the model (default ``module(x)``).
    """
    forward = forward or (lambda m, x: m(x))
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    handles = []
    if not bns:
        def fold(conv: nn.Conv2d, inputs, output: torch.Tensor) -> torch.Tensor | None:
            if inputs[0].shape[-2:] == (1, 1):
                return None  # squeeze-excitation on pooled features: never batch-normalised, keeps step 1
            mean = output.mean(dim=(0, 2, 3))
            std = output.std(dim=(0, 2, 3)).clamp_min(1e-6)
            conv.weight.div_(std.view(-1, 1, 1, 1))
            conv.bias.sub_(mean).div_(std)
            return (output - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)

        for m in module.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                handles.append(m.register_forward_hook(fold))
    modes = {m: m.training for m in module.modules()}
    saved = {}
    for bn in bns:
        bn.reset_running_stats()
        saved[bn] = bn.momentum
        bn.momentum = None  # cumulative average: after one pass, exactly the batch's statistics
    try:
        module.eval()  # inference behaviour everywhere (detector heads need no targets) ...
        for bn in bns:
            bn.train()  # ... except the batch norms, which compute the batch's statistics
        forward(module, batch)
    finally:
        for h in handles:
            h.remove()
        for bn, mom in saved.items():
            bn.momentum = mom
        for m, mode in modes.items():
            m.train(mode)


def initialise_twin(module: nn.Module, preprocessing, seed: int, *, reference_init: bool = False, forward=None,
                    n_images: int = 16) -> nn.Module:
    """Make ``module`` a healthy twin in place: step 1 (unless ``reference_init``) and step 2, seeded.

    Parameters
    ----------
    preprocessing : the model's :class:`~conceptsim.data.geometry.Preprocessing` (input size and scaling of
        the calibration images).
    seed : seeds the weights and the calibration images.
    reference_init : keep the builder's own initialisation (the architecture's reference) for step 1.
    forward : how to run the model on a batch (default ``module(x)``).
    n_images : calibration images at 300 x 300 input; larger inputs get proportionally fewer (at least 4).
    """
    if not reference_init:
        with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
            torch.manual_seed(int(seed))
            kaiming_fan_in(module)
    h, w = preprocessing.size
    # a pixel budget: large inputs (detectors at 640-800 px) calibrate on fewer images, at least 4
    n_images = max(4, min(int(n_images), int(n_images * 300 * 300 / (h * w))))
    images = calibration_images(preprocessing.size, n_images, seed)
    batch = torch.stack([preprocessing.apply_image(im) for im in images])
    calibrate(module, batch, forward)
    return module


# ----------------------------------------------------------------------------- the twin cache
#: ``CONCEPTSIM_TWIN_CACHE=0`` turns the twin cache off (every twin is constructed afresh)
TWIN_CACHE_ENV = "CONCEPTSIM_TWIN_CACHE"


def twin_cache_enabled() -> bool:
    return os.environ.get(TWIN_CACHE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def twin_cache_key(architecture: str, seed: int, init_seed: int, code: str, **extra: Any) -> str:
    """sha256 of what a twin's weights depend on: architecture, twin seed, derived init seed, torch version,
    :data:`TWIN_INIT_VERSION` and ``code`` (a hash of the sources that build, initialise and calibrate it)."""
    return sha256_json({"architecture": architecture, "seed": int(seed), "init_seed": int(init_seed),
                        "torch": torch.__version__, "init_version": TWIN_INIT_VERSION, "code": code, **extra})


def twin_cache_path(architecture: str, seed: int, init_seed: int, key: str) -> Path:
    """``<cache>/twins/<architecture>-seed<SEED>-init<INIT_SEED>-<key[:16]>.pt``."""
    return cache_dir() / "twins" / f"{architecture}-seed{int(seed)}-init{int(init_seed)}-{key[:16]}.pt"


def save_twin_state(module: nn.Module, path: Path, key: str) -> None:
    """Write ``module``'s parameters and buffers (its state dict) and ``key`` to ``path``, atomically."""
    state = {k: v.detach().to("cpu").clone() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"key": key, "state": state}, tmp)


def load_twin_state(module: nn.Module, path: Path, key: str) -> bool:
    """Load a cached twin state into ``module``; False (with a warning) when the file is missing its key,
    unreadable, for another key, or lacks or adds a tensor -- the caller then constructs the twin afresh."""
    if not path.is_file():
        return False
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or saved.get("key") != key:
            raise ValueError(f"its key is not {key[:16]}...")
        state = saved["state"]
        expected = module.state_dict()
        if set(state) != set(expected):
            raise ValueError(f"tensors differ from the architecture's: missing {sorted(set(expected) - set(state))[:3]}, "
                             f"extra {sorted(set(state) - set(expected))[:3]}")
        for k, v in expected.items():
            if state[k].shape != v.shape or state[k].dtype != v.dtype:
                raise ValueError(f"tensor {k!r} is {tuple(state[k].shape)} {state[k].dtype}, expected {tuple(v.shape)} {v.dtype}")
        module.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable cache file is rebuilt, never trusted
        warnings.warn(f"twin cache file {path} is unusable ({type(exc).__name__}: {exc}); constructing the twin afresh",
                      RuntimeWarning, stacklevel=3)
        return False
    return True
