"""The ``pixels`` model: the image's own standardised RGB, average-pooled to fixed strides.

methods.md, "Controls": a probe on the image's pixels is the floor every layer is shown against -- what
colour and position alone give. It is a registry model like the others, so every study can list it as
``pixels`` and every stage runs on it unchanged: the input is the image stretched to 224 x 224 (the
MobileNetV2 classifier's geometry), the model standardises each RGB channel with the ImageNet mean and
standard deviation (its only parameters, never trained) and each "layer" ``strideS`` is that image
average-pooled over ``S x S`` pixels, for ``S`` in :data:`PIXEL_STRIDES`:

========  ======================  ==============================================
layer     native grid (224 px)    stored at ``grid_cap`` 32 (default study)
========  ======================  ==============================================
stride4   56 x 56                 32 x 32 (the cap)
stride8   28 x 28                 28 x 28
stride16  14 x 14                 14 x 14
stride32  7 x 7                   7 x 7
========  ======================  ==============================================

These strides span the stored grids of the registry models' probed layers (MobileNetV2 at 224 px: 112 to
7; SSD at 300 px: 150 to 3, capped at 32). No convolution runs, so every layer's relative depth is 0 (the
input itself, :data:`PixelGrids.input_level`). There are no weights and no random-init twin.
"""

from __future__ import annotations

import torch
from torch import nn

from conceptsim.data.geometry import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

#: average-pooling strides (input pixels per cell) of the layers, shallow to deep
PIXEL_STRIDES = (4, 8, 16, 32)
INPUT_SIZE = 224
#: bump when what the layers compute changes (the model's weight identity in store keys)
PIXELS_VERSION = 1
WEIGHTS_ID = f"pixels-v{PIXELS_VERSION} (no weights: ImageNet channel standardisation)"

# RGB scaled to [0, 1]; the model itself standardises (its mean and std are its parameters)
PREPROCESSING = Preprocessing(size=(INPUT_SIZE, INPUT_SIZE), resize="stretch", scale=1.0 / 255.0)
DEFAULT_LAYERS = tuple(f"stride{s}" for s in PIXEL_STRIDES)


class PixelGrids(nn.Module):
    """Standardised RGB pooled to each stride of :data:`PIXEL_STRIDES`; the layers are the pooling modules."""

    #: every layer is the input itself: relative depth 0 although no convolution runs
    input_level = True

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, strides=PIXEL_STRIDES):
        super().__init__()
        self.mean = nn.Parameter(torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), requires_grad=False)
        self.std = nn.Parameter(torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), requires_grad=False)
        self.strides = tuple(int(s) for s in strides)
        for s in self.strides:
            self.add_module(f"stride{s}", nn.AvgPool2d(s))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        z = (x - self.mean) / self.std
        return [getattr(self, f"stride{s}")(z) for s in self.strides]


def build_pixels(pretrained: bool) -> tuple[nn.Module, str]:
    """The registry builder: the same module with or without ``pretrained`` (there is nothing to train)."""
    return PixelGrids(), WEIGHTS_ID
