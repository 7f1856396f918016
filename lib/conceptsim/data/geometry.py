"""Model-input geometry: one transform applied to images *and* masks so they stay aligned.

A :class:`Preprocessing` maps an image of any size onto a model's input frame (stretch resize or
letterbox), and normalises pixel values. The same geometry is applied to concept masks (nearest
neighbour for binary masks at input resolution, area averaging for soft targets on an activation grid),
and :meth:`Preprocessing.content_box` says where the image content lies inside the input frame, so that
outputs on the input frame can be mapped back onto a grid over the *image* frame (the common grid that
layers of different models are compared on).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

ResizeMode = Literal["stretch", "letterbox"]

#: the ImageNet channel statistics that torchvision classifiers (and the pixels floor) normalise with
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """Input geometry and normalisation of a model.

    Parameters
    ----------
    size : (height, width) of the model input.
    resize : ``"stretch"`` resizes to ``size`` ignoring aspect ratio; ``"letterbox"`` keeps the aspect
        ratio, scales the longer side to fit and pads the rest (centred) with ``pad_value``.
    scale, mean, std : pixel normalisation ``((rgb_uint8 * scale) - mean) / std`` per channel.
    channels : ``"RGB"`` or ``"BGR"`` channel order of the input tensor.
    pad_value : padding pixel value on the 0-255 scale (before normalisation).
    """

    size: tuple[int, int]
    resize: ResizeMode = "stretch"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channels: Literal["RGB", "BGR"] = "RGB"
    pad_value: float = 114.0

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) <= 0:
            raise ValueError(f"Preprocessing.size must be (height, width) > 0, got {self.size!r}")
        if self.resize not in ("stretch", "letterbox"):
            raise ValueError(f"Preprocessing.resize must be 'stretch' or 'letterbox', got {self.resize!r}")
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    # ------------------------------------------------------------------ geometry
    def content_box(self, image_hw: Sequence[int]) -> tuple[float, float, float, float]:
        """``(top, left, bottom, right)`` of the image content in input-frame pixels (floats)."""
        h, w = int(image_hw[0]), int(image_hw[1])
        H, W = self.size
        if self.resize == "stretch":
            return (0.0, 0.0, float(H), float(W))
        r = min(H / h, W / w)
        nh, nw = round(h * r), round(w * r)
        top, left = (H - nh) // 2, (W - nw) // 2
        return (float(top), float(left), float(top + nh), float(left + nw))

    def _resized_hw(self, image_hw: Sequence[int]) -> tuple[int, int, int, int]:
        t, l, b, r = self.content_box(image_hw)
        return int(t), int(l), int(b - t), int(r - l)

    def apply_image(self, image: np.ndarray, out: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 ``H x W x 3`` RGB array -> normalised float tensor ``3 x size``.

        Downscaling averages over each output pixel's area (anti-aliased), upscaling is bilinear; both
        use pixel-centre alignment, the same convention as :meth:`apply_mask` and
        :func:`input_to_image_grid`.

        ``out``: a contiguous float32 ``3 x size`` tensor to write into (e.g. one image of a batch) instead
        of a new one. The values are the same either way: the pixels are moved to channel-first order
        first and clipped, scaled, shifted and divided there in place (the same float32 operations, one
        copy and no temporaries); a scale of 1, mean 0 or std 1 is skipped (exact identities).
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 HxWx3 RGB image, got shape {image.shape} dtype {image.dtype}")
        if out is None:
            out = torch.empty((3, *self.size), dtype=torch.float32)
        elif out.shape != (3, *self.size) or out.dtype != torch.float32 or not out.is_contiguous():
            raise ValueError(f"out must be a contiguous float32 tensor of shape {(3, *self.size)}, "
                             f"got {tuple(out.shape)} {out.dtype}")
        top, left, nh, nw = self._resized_hw(image.shape[:2])
        x = _resize(image.astype(np.float32), nh, nw, smooth=True)
        if self.channels == "BGR":
            x = x[..., ::-1]
        chw = out.numpy()
        if self.resize == "letterbox":
            chw[...] = float(self.pad_value)
        chw[:, top : top + nh, left : left + nw] = x.transpose(2, 0, 1)
        np.clip(chw, 0, 255, out=chw)
        if self.scale != 1:
            chw *= np.float32(self.scale)
        mean, std = np.asarray(self.mean, np.float32)[:, None, None], np.asarray(self.std, np.float32)[:, None, None]
        if np.any(mean != 0):
            chw -= mean
        if np.any(std != 1):
            chw /= std
        return out

    def apply_mask(self, masks: np.ndarray) -> torch.Tensor:
        """Binary masks ``K x H x W`` -> uint8 {0, 1} masks ``K x size`` in the input frame.

        Nearest-neighbour at pixel centres; 0 in letterbox padding. Only the planes that hold any pixel
        are resampled (an image shows few of a dataset's concepts).
        """
        if masks.ndim != 3:
            raise ValueError(f"expected masks of shape K x H x W, got {masks.shape}")
        top, left, nh, nw = self._resized_hw(masks.shape[1:])
        k = masks.shape[0]
        out = np.zeros((k, *self.size), dtype=np.uint8)
        present = np.flatnonzero(masks.reshape(k, -1).any(axis=1)) if k else np.zeros(0, int)
        if present.size:
            planes = np.ascontiguousarray(masks[present].transpose(1, 2, 0)).astype(np.uint8)
            m = _resize(planes, nh, nw, smooth=False).reshape(nh, nw, present.size)
            out[present, top : top + nh, left : left + nw] = m.transpose(2, 0, 1)
        return torch.from_numpy(out)

    def mask_targets(self, masks: np.ndarray, grid: Sequence[int]) -> np.ndarray:
        """Soft targets ``K x grid`` float32: ``area_pool(apply_mask(masks), grid)``, without the input-size masks.

        Both steps are linear in the masks and separable, so the result is ``Ay @ M @ Ax.T`` with
        matrices from the image size to the grid (see :meth:`target_matrices`); only planes that hold
        any pixel are computed. Equal to the two-step form up to float rounding (tested).
        """
        grid = (int(grid[0]), int(grid[1]))
        return separable_planes(masks, [(self.target_matrices(masks.shape[1:], grid), np.float32)])[0]

    def target_matrices(self, image_hw: Sequence[int], grid: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """``Ay`` (``gh x H``) and ``Ax.T`` (``W x gw``): nearest resampling into the input frame (as
        :meth:`apply_mask`, zero in padding) followed by ``adaptive_avg_pool2d`` binning (as :func:`area_pool`)."""
        return _target_matrices(self, (int(image_hw[0]), int(image_hw[1])), (int(grid[0]), int(grid[1])))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"] = list(self.size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(**{**d, "size": tuple(d["size"]), "mean": tuple(d["mean"]), "std": tuple(d["std"])})


def _resize(a: np.ndarray, h: int, w: int, smooth: bool) -> np.ndarray:
    """Resize ``H x W (x C)`` with OpenCV: area averaging down / bilinear up, or nearest (pixel centres)."""
    import cv2

    if a.shape[:2] == (h, w):
        return a.astype(np.float32) if smooth else a
    if smooth:
        down = h <= a.shape[0] and w <= a.shape[1]
        interp = cv2.INTER_AREA if down else cv2.INTER_LINEAR
    else:
        interp = cv2.INTER_NEAREST_EXACT
    # cv2 handles at most 512 channels per call; split wider stacks
    if a.ndim == 3 and a.shape[2] > 512:
        return np.concatenate([_resize(a[..., i : i + 512], h, w, smooth) for i in range(0, a.shape[2], 512)], axis=2)
    out = cv2.resize(a, (w, h), interpolation=interp)
    return out.reshape(h, w, -1) if a.ndim == 3 else out


def separable_planes(masks: np.ndarray, products: Sequence[tuple[tuple[np.ndarray, np.ndarray], type]]) -> list[np.ndarray]:
    """``Ay @ M @ AxT`` for every ``((Ay, AxT), dtype)`` in ``products``, over ``K x H x W`` masks ``M``.

    Each result is float32 ``K x gh x gw``; the products run in ``dtype`` on the planes that hold any
    pixel only (an image shows few of a dataset's concepts), which are found and converted once for all.
    """
    if masks.ndim != 3:
        raise ValueError(f"expected masks of shape K x H x W, got {masks.shape}")
    k = masks.shape[0]
    present = np.flatnonzero(masks.reshape(k, -1).any(axis=1)) if k else np.zeros(0, int)
    planes: dict[type, np.ndarray] = {}
    out = []
    for (ay, axt), dtype in products:
        res = np.zeros((k, ay.shape[0], axt.shape[1]), dtype=np.float32)
        if present.size:
            if dtype not in planes:
                planes[dtype] = masks[present].astype(dtype)
            res[present] = np.matmul(np.matmul(ay, planes[dtype]), axt)
        out.append(res)
    return out


@functools.lru_cache(maxsize=64)
def _target_matrices(pp: Preprocessing, image_hw: tuple[int, int], grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    top, left, nh, nw = pp._resized_hw(image_hw)

    def axis(n_image: int, n_content: int, offset: int, n_input: int, cells: int) -> np.ndarray:
        # which image pixel each input pixel takes (the very resize apply_mask uses), as a one-hot matrix
        src = _resize(np.arange(n_image, dtype=np.float32).reshape(n_image, 1), n_content, 1, smooth=False)
        nearest = np.zeros((n_input, n_image), dtype=np.float32)
        nearest[offset + np.arange(n_content), src.reshape(-1).astype(np.int64)] = 1.0
        pool = F.adaptive_avg_pool1d(torch.eye(n_input)[None], cells)[0].T.numpy()  # cells x n_input
        return pool @ nearest

    H, W = pp.size
    return axis(image_hw[0], nh, top, H, grid[0]), np.ascontiguousarray(axis(image_hw[1], nw, left, W, grid[1]).T)


def area_pool(masks: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Area-average ``(..., H, W)`` masks onto ``grid`` (soft targets in [0, 1]).

    Uses the same binning as the activations' pooling (``adaptive_avg_pool2d``), so targets and pooled
    activations cover the same input pixels. All-zero planes are skipped (they pool to zero).
    """
    lead = masks.shape[:-2]
    x = masks.reshape(-1, *masks.shape[-2:])
    grid = tuple(int(g) for g in grid)
    out = torch.zeros((x.shape[0], *grid), dtype=torch.float32)
    present = torch.nonzero(x.flatten(1).any(1)).flatten()
    if present.numel():
        out[present] = F.adaptive_avg_pool2d(x[present].float()[:, None], grid)[:, 0]
    return out.reshape(*lead, *grid)


def input_to_image_grid(
    maps: torch.Tensor, content_boxes: torch.Tensor, input_size: Sequence[int], grid: Sequence[int]
) -> torch.Tensor:
    """Resample maps on the input frame onto a ``grid`` over each image's content (bilinear).

    Parameters
    ----------
    maps : ``N x K x h x w`` maps covering the whole input frame (any resolution, e.g. probe logits on an
        activation grid).
    content_boxes : ``N x 4`` (top, left, bottom, right) in input-frame pixels, from
        :meth:`Preprocessing.content_box`.
    input_size : (H, W) of the input frame.
    grid : (gh, gw) of the output grid over the image frame.

    Logits are resampled *before* any threshold, as methods.md requires.
    """
    n = maps.shape[0]
    H, W = float(input_size[0]), float(input_size[1])
    boxes = content_boxes.to(maps.dtype if maps.is_floating_point() else torch.float32)
    top, left, bottom, right = boxes.unbind(1)
    # affine theta maps output normalised coords [-1, 1] to input normalised coords (align_corners=False)
    sy = (bottom - top) / H
    sx = (right - left) / W
    ty = (top + bottom) / H - 1.0
    tx = (left + right) / W - 1.0
    theta = torch.zeros(n, 2, 3, dtype=boxes.dtype)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = ty
    gh, gw = int(grid[0]), int(grid[1])
    coords = F.affine_grid(theta, [n, maps.shape[1], gh, gw], align_corners=False)
    return F.grid_sample(maps.float(), coords.to(maps.device), mode="bilinear", padding_mode="border", align_corners=False)


def resampling_matrices(
    content_boxes: torch.Tensor, input_size: Sequence[int], src_hw: Sequence[int], grid: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column matrices of :func:`input_to_image_grid` for maps of size ``src_hw``.

    The resampling is bilinear along an axis-aligned box, hence separable:
    ``out[i, j] = sum_pq Ry[i, p] X[p, q] Rx[j, q]``. Two small matrix products are much faster than
    ``grid_sample`` when dozens of layers and concepts go through the same geometry. The matrices are read
    off the reference function itself (applied to one-hot columns / rows of width 1, where the other axis
    is constant; the other output axis then needs one sample only), so the geometry is defined in one
    place and the two agree to rounding.

    Returns
    -------
    Ry : ``n x gh x h``; Rx : ``n x gw x w``.
    """
    h, w = (int(s) for s in src_hw)
    gh, gw = (int(g) for g in grid)
    n = content_boxes.shape[0]
    # Rows depend only on the output rows (an output grid of width 1 suffices) and vice versa.
    eye_h = torch.eye(h).reshape(1, h, h, 1).expand(n, h, h, 1).contiguous()
    eye_w = torch.eye(w).reshape(1, w, 1, w).expand(n, w, 1, w).contiguous()
    ry = input_to_image_grid(eye_h, content_boxes, input_size, (gh, 1))[:, :, :, 0]  # n x h x gh
    rx = input_to_image_grid(eye_w, content_boxes, input_size, (1, gw))[:, :, 0, :]  # n x w x gw
    return ry.transpose(1, 2).contiguous(), rx.transpose(1, 2).contiguous()


class Resampler:
    """Bilinear resampling of activation-grid maps onto an evaluation grid, as separable matrix products.

    Equals :func:`conceptsim.data.geometry.input_to_image_grid` up to float rounding. Images are grouped by content box; each distinct box
    has one pair of matrices ``Ry`` (``gh x h``) and ``Rx`` (``gw x w``).

    Parameters
    ----------
    boxes : ``n x 4`` content boxes of the images (positions as in the split).
    input_size : (H, W) of the model input frame.
    src_hw : (h, w) of the maps to resample. grid : (gh, gw) of the output.
    device : where the matrices live (the maps' device).
    """

    def __init__(self, boxes: torch.Tensor, input_size: Sequence[int], src_hw: Sequence[int], grid: Sequence[int],
                 device: str | torch.device = "cpu"):
        uniq, inverse = np.unique(boxes.cpu().numpy(), axis=0, return_inverse=True)
        ry, rx = resampling_matrices(torch.from_numpy(uniq), input_size, src_hw, grid)
        self.ry, self.rxt = ry.to(device), rx.transpose(1, 2).contiguous().to(device)
        self.group = inverse.reshape(-1)
        self.grid = tuple(int(g) for g in grid)

    def _one(self, z: torch.Tensor, g: int) -> torch.Tensor:
        b, k, h, w = z.shape
        u = torch.matmul(z.reshape(b * k * h, w), self.rxt[g]).view(b * k, h, -1)
        return torch.matmul(self.ry[g], u).view(b, k, *self.grid)

    def maps(self, z: torch.Tensor, group: int) -> torch.Tensor:
        """Resample ``B x K x h x w`` maps of images that all have content-box group ``group`` (see ``self.group``)."""
        return self._one(z.float(), int(group))

    def __call__(self, z: torch.Tensor, pos: np.ndarray) -> torch.Tensor:
        """Resample ``B x K x h x w`` maps of the images at split positions ``pos`` -> ``B x K x gh x gw``."""
        groups = self.group[np.asarray(pos)]
        first = int(groups[0]) if len(groups) else 0
        if (groups == first).all():
            return self._one(z.float(), first)
        out = torch.empty((z.shape[0], z.shape[1], *self.grid), device=z.device)
        for g in np.unique(groups):
            sel = torch.from_numpy(np.flatnonzero(groups == g)).to(z.device)
            out[sel] = self._one(z[sel].float(), int(g))
        return out


def overlap_matrix(n: int, cells: int) -> np.ndarray:
    """``cells x n`` matrix: the fraction of cell ``i`` (edges ``i * n / cells``) that pixel ``j`` covers.

    Rows sum to 1. A pixel cut by a cell edge counts with the part of it inside the cell.
    """
    edges = np.arange(cells + 1) * (n / cells)
    lo, hi = edges[:-1, None], edges[1:, None]
    px = np.arange(n)[None, :]
    inside = np.clip(np.minimum(hi, px + 1) - np.maximum(lo, px), 0.0, None)
    return inside / (n / cells)


def eval_matrices(image_hw: Sequence[int], grid: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``Ay`` and ``Ax.T`` of :func:`area_fraction_grid` for an image size and grid (cached)."""
    return _overlaps(int(image_hw[0]), int(image_hw[1]), int(grid[0]), int(grid[1]))


@functools.lru_cache(maxsize=16)
def _overlaps(h: int, w: int, gh: int, gw: int) -> tuple[np.ndarray, np.ndarray]:
    return overlap_matrix(h, gh), np.ascontiguousarray(overlap_matrix(w, gw).T)


def area_fraction_grid(masks: np.ndarray, grid: Sequence[int]) -> np.ndarray:
    """Exact area fraction of each cell of a ``grid`` laid over the image that ``K x H x W`` masks cover.

    Cell edges may cut pixels; a cut pixel counts with the part of it inside the cell. A mask is
    constant on pixels, so the fractions are ``Ay @ M @ Ax.T`` with the pixel/cell overlap matrices of
    :func:`overlap_matrix` (float64): exact up to rounding, and much cheaper than adaptive pooling onto
    a grid that does not divide the image (whose bins also overlap). Only masks with pixels are computed.
    """
    return separable_planes(masks, [(eval_matrices(masks.shape[1:], grid), np.float64)])[0]


def capped_grid(grid: Sequence[int], cap: int) -> tuple[int, int]:
    """The stored grid of a layer: its own grid scaled so that no side exceeds ``cap``."""
    h, w = int(grid[0]), int(grid[1])
    if max(h, w) <= cap:
        return (h, w)
    r = cap / max(h, w)
    return (max(1, math.floor(h * r)), max(1, math.floor(w * r)))
