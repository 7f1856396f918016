"""The TF graph op modules of :mod:`conceptsim.models.tfjs` against their plain definitions."""

import pytest
import torch

from conceptsim.models.tfjs import TFResizeBilinear


def legacy_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TF's legacy ResizeBilinear written with advanced indexing: source position i * in / out, x then y."""
    def taps(n_in, n_out):
        src = torch.arange(n_out, dtype=torch.float32) * (n_in / n_out)
        lo = src.floor()
        return lo.long().clamp(max=n_in - 1), (lo.long() + 1).clamp(max=n_in - 1), src - lo

    y0, y1, fy = taps(x.shape[-2], size[0])
    x0, x1, fx = taps(x.shape[-1], size[1])
    top, bottom = x[..., y0, :], x[..., y1, :]
    top = top[..., x0] + (top[..., x1] - top[..., x0]) * fx
    bottom = bottom[..., x0] + (bottom[..., x1] - bottom[..., x0]) * fx
    return top + (bottom - top) * fy[:, None]


@pytest.mark.parametrize("src, size", [((8, 8), (16, 16)), ((5, 4), (15, 12)), ((7, 5), (16, 11)), ((16, 16), (8, 8)), ((1, 3), (4, 4))])
def test_resize_bilinear_equals_the_legacy_definition_bit_for_bit(src, size):
    x = torch.randn(2, 3, *src, generator=torch.Generator().manual_seed(0))
    x[0, 0, 0] = -0.0  # signed zeros keep their sign as in the plain definition
    out = TFResizeBilinear(size, align_corners=False, half_pixel_centers=False)(x)
    assert out.shape == (2, 3, *size)
    plain = legacy_resize(x, size)
    assert torch.equal(out, plain) and torch.equal(out.signbit(), plain.signbit())


def test_resize_bilinear_samples_without_half_pixel_shift():
    x = torch.arange(4.0).reshape(1, 1, 1, 4)
    out = TFResizeBilinear((1, 8), align_corners=False, half_pixel_centers=False)(x)
    assert out.flatten().tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.0]  # the last tap clamps at the edge
