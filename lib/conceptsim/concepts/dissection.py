"""Network Dissection baseline: single units as concept detectors (Bau et al., as fixed in methods.md).

Threshold. ``T_k`` is the top-0.5 % quantile (``q = 0.995``) of unit ``k``'s activation over all positions
of all images in the store (no labels are involved, so using every split leaks nothing). The quantile is
the order statistic of 0-based rank ``r = ceil(q (M - 1))`` among the ``M`` values (numpy's
``method="higher"``).

* Exact path: when ``M x C`` values fit in ``exact_max_values`` they are gathered and ``kthvalue`` gives
  the exact order statistic.
* Streaming path (three passes, memory ``O(C x bins)``): (1) per-unit min and max; (2) a ``bins``-bin
  histogram per unit locates the bin holding rank ``r``; (3) a second ``bins``-bin histogram *inside that
  bin* locates the sub-bin holding ``r``; ``T_k`` is that sub-bin's midpoint. Bin membership is decided
  by the same formula in every pass, so the rank is located exactly; the value error is at most half a
  sub-bin, ``(max_k - min_k) / (2 bins^2)`` -- below 5e-7 of the unit's range with 1,024 bins, finer than
  float16 storage resolution. The bound is returned per unit (``threshold_error``, 0 on the exact path).

IoU. The unit's activation is resampled bilinearly onto the evaluation grid over the image, thresholded
``> T_k``, and its set IoU with each concept mask is summed over images. The resampling uses the
separable matrices of :class:`conceptsim.data.geometry.Resampler`, and the ``units x concepts``
intersections of a batch are one batched matrix product of the binarised unit maps and the masks. A unit detects a concept when
IoU > 0.04. Unit labels (best concept per unit) use test IoU as Network Dissection does; the *best single
unit per concept*, set beside the Net2Vec vector, is selected on val and reported on test.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import zarr

from conceptsim.concepts.layerdata import rows_per_read
from conceptsim.concepts.net2vec import EvalSet
from conceptsim.extraction.store import read_rows

QUANTILE = 0.995
DETECTOR_IOU = 0.04
UPSAMPLED_FLOATS = 2 << 20  # bound on the upsampled batch (floats) in the IoU pass

Batches = Callable[[], Iterable[tuple[np.ndarray, torch.Tensor]]]


def raw_batches(array: zarr.Array, rows: np.ndarray, batch: int | None = None) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """``(positions, float32 B x C x h x w)`` of the given store rows, streamed."""
    pos = 0
    for _, block in read_rows(array, np.asarray(rows), batch=batch or rows_per_read(array)):
        yield np.arange(pos, pos + len(block)), torch.from_numpy(block.astype(np.float32, copy=False))
        pos += len(block)


def _units_by_values(x: torch.Tensor) -> torch.Tensor:
    """``B x C x ...`` -> ``C x (B * ...)``."""
    return x.transpose(0, 1).reshape(x.shape[1], -1)


def _bucket(v: torch.Tensor, lo: torch.Tensor, width: torch.Tensor, bins: int) -> torch.Tensor:
    idx = torch.floor((v - lo[:, None]) / width[:, None] * bins)
    return idx.clamp_(0, bins - 1).long()


def _histogram(batches: Batches, lo, width, bins, within=None) -> tuple[torch.Tensor, int]:
    """Per-unit counts ``C x bins``; ``within=(lo0, width0, bin0, bins)`` restricts to one coarse bin."""
    c = lo.shape[0]
    counts = torch.zeros(c * bins, dtype=torch.long)
    offset = (torch.arange(c) * bins)[:, None]
    m = 0
    for _, x in batches():
        v = _units_by_values(x).double()
        m += v.shape[1]
        keep = None
        if within is not None:
            keep = _bucket(v, within[0], within[1], within[3]) == within[2][:, None]
        flat = (_bucket(v, lo, width, bins) + offset)
        flat = flat[keep] if keep is not None else flat.reshape(-1)
        counts += torch.bincount(flat, minlength=c * bins)
    return counts.view(c, bins), m


def _locate(counts: torch.Tensor, rank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin holding 0-based ``rank`` per unit, and the rank within that bin."""
    cum = counts.cumsum(1)
    b = (cum <= rank[:, None]).sum(1).clamp_(max=counts.shape[1] - 1)
    before = torch.where(b > 0, cum.gather(1, (b - 1).clamp(min=0)[:, None])[:, 0], torch.zeros_like(b))
    return b, rank - before


def unit_thresholds(
    batches: Batches, channels: int, *, q: float = QUANTILE, bins: int = 1024, exact_max_values: int = 20_000_000
) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit top-``(1 - q)`` thresholds and their error bounds (see the module docstring).

    Parameters
    ----------
    batches : a callable returning a fresh iterable of ``(positions, B x C x h x w)`` raw activations.
    channels : number of units C.

    Returns
    -------
    thresholds, errors : float64 arrays ``C``.
    """
    lo = torch.full((channels,), math.inf, dtype=torch.float64)
    hi = torch.full((channels,), -math.inf, dtype=torch.float64)
    gathered, m = [], 0
    for _, x in batches():
        v = _units_by_values(x).double()
        lo, hi = torch.minimum(lo, v.min(1).values), torch.maximum(hi, v.max(1).values)
        m += v.shape[1]
        if m * channels <= exact_max_values:
            gathered.append(v)
    rank = math.ceil(q * (m - 1))
    if m * channels <= exact_max_values:
        t = torch.cat(gathered, 1).kthvalue(rank + 1, dim=1).values
        return t.numpy(), np.zeros(channels)
    width = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    r = torch.full((channels,), rank, dtype=torch.long)
    coarse, _ = _histogram(batches, lo, width, bins)
    b0, r0 = _locate(coarse, r)
    lo1, width1 = lo + b0 * width / bins, width / bins
    fine, _ = _histogram(batches, lo1, width1, bins, within=(lo, width, b0, bins))
    b1, _ = _locate(fine, r0)
    t = lo1 + (b1 + 0.5) * width1 / bins
    err = width1 / bins / 2
    const = hi <= lo
    return torch.where(const, lo, t).numpy(), torch.where(const, 0.0, err).numpy()


@torch.no_grad()
def unit_iou_counts(
    batches: Iterable[tuple[np.ndarray, torch.Tensor]], thresholds: np.ndarray, ev: EvalSet
) -> tuple[np.ndarray, np.ndarray]:
    """Set-IoU numerators and denominators ``C x K`` of thresholded units vs concept masks, summed over images.

    ``batches`` yields ``(positions in ev, B x C x h x w)``; the thresholds are in the same units as the
    activations.
    """
    thr = torch.as_tensor(thresholds, dtype=torch.float32).view(1, -1, 1)
    inter = union_u = 0
    union_c = ev.areas.sum(0).double()
    p_grid = int(np.prod(ev.grid))
    for pos, x in batches:
        resample = ev.resampler(x.shape[2:], x.device)
        step = max(1, UPSAMPLED_FLOATS // (x.shape[1] * p_grid))  # bounds memory; small chunks stay in cache
        for s in range(0, len(pos), step):
            p = pos[s : s + step]
            units = (resample(x[s : s + step], p).flatten(2) > thr).float()  # B x C x P
            masks = ev.masks[p].flatten(2).float()  # B x K x P
            inter = inter + torch.bmm(units, masks.transpose(1, 2)).double().sum(0)
            union_u = union_u + units.sum((0, 2)).double()
    inter = torch.as_tensor(inter).numpy()
    union = torch.as_tensor(union_u).numpy()[:, None] + union_c.numpy()[None, :] - inter
    return inter, union
