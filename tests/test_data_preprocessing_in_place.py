"""The forward loop's image path: ``Preprocessing.apply_image`` in place (``out=``) gives exactly the values of the
plain definition (resize, letterbox, clip, ``(x * scale - mean) / std``, channel-first)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conceptsim.data.geometry import Preprocessing, _resize


def plain_apply_image(pp: Preprocessing, image: np.ndarray) -> torch.Tensor:
    """The definition as first written: new arrays at every step."""
    top, left, nh, nw = pp._resized_hw(image.shape[:2])
    x = _resize(image.astype(np.float32), nh, nw, smooth=True)
    if pp.resize == "letterbox":
        canvas = np.full((*pp.size, 3), float(pp.pad_value), dtype=np.float32)
        canvas[top : top + nh, left : left + nw] = x
        x = canvas
    x = np.clip(x, 0, 255)
    if pp.channels == "BGR":
        x = x[..., ::-1]
    x = (x * pp.scale - np.asarray(pp.mean, np.float32)) / np.asarray(pp.std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32))


PREPROCESSINGS = [
    Preprocessing(size=(512, 512), resize="stretch", scale=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),  # CenterNet
    Preprocessing(size=(300, 300), resize="stretch", scale=2 / 255, mean=(1.0, 1.0, 1.0), std=(1.0, 1.0, 1.0)),  # SSD
    Preprocessing(size=(224, 224), resize="stretch", scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    Preprocessing(size=(64, 96), resize="letterbox", scale=1 / 255, mean=(0.5, 0.0, 0.2), std=(0.3, 1.0, 0.7), channels="BGR"),
    Preprocessing(size=(30, 20), resize="letterbox", scale=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), pad_value=114.0),
]


@pytest.mark.parametrize("pp", PREPROCESSINGS, ids=lambda p: f"{p.size}-{p.resize}-{p.channels}")
@pytest.mark.parametrize("hw", [(40, 60), (320, 320), (700, 300)])
def test_apply_image_equals_plain_definition_bit_for_bit(pp, hw):
    image = np.random.default_rng(hw[0]).integers(0, 256, (*hw, 3), dtype=np.uint8)
    ref = plain_apply_image(pp, image)
    got = pp.apply_image(image)
    assert got.dtype == torch.float32 and got.shape == ref.shape and got.is_contiguous()
    assert got.numpy().tobytes() == ref.numpy().tobytes()
    row = torch.full((2, 3, *pp.size), float("nan"))[1]  # a batch row with garbage in it
    assert pp.apply_image(image, out=row) is row
    assert row.numpy().tobytes() == ref.numpy().tobytes()


def test_apply_image_rejects_a_wrong_out_tensor():
    pp = PREPROCESSINGS[3]
    image = np.zeros((10, 10, 3), np.uint8)
    for bad in (torch.empty(3, 96, 64), torch.empty(3, 64, 96, dtype=torch.float16), torch.empty(3, 96, 64).transpose(1, 2)):
        with pytest.raises(ValueError, match=r"out must be a contiguous float32 tensor of shape \(3, 64, 96\)"):
            pp.apply_image(image, out=bad)
