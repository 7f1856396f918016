"""A layer's activations for one split, held in memory when that fits, otherwise streamed.

Memory rule (documented in concept_stage.json per layer): a split is held as a float32 tensor when
``n x C x h x w x 4`` bytes fit in ``budget_bytes``; else as float16 (the store's own precision, so
nothing is lost) when half of that fits, converted to float32 one batch at a time; else it is streamed
from the Zarr store for every pass. The default study's largest layer (700 train images, 1,000 channels,
40 x 40) needs 4.5 GB as float32 and 2.2 GB as float16, so with the stage's default 4 GB budget (70 % for
train) it is kept as float16; a 256-channel 20 x 20 layer (0.29 GB) is kept as float32 and standardised
once, in place. Held splits are stored channels-last (``torch.channels_last``), so that a batch is a
``(B h w) x C`` matrix view for the probes' matrix products; batches keep that layout.

Standardisation uses train-set channel statistics over all positions. Zero-variance rule: a channel whose
train std is below ``1e-6`` (or not finite) gets std := 1, so after mean subtraction it is identically
zero and contributes nothing to any probe; the number of such channels is reported, never a NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import zarr

from conceptsim.extraction.store import read_rows

STD_FLOOR = 1e-6
READ_BYTES = 64 << 20  # bytes of float32 per read from the store: bounds the streaming footprint


@dataclass(frozen=True)
class Standardiser:
    """Per-channel ``(x - mean) / std`` with the zero-variance rule of this module."""

    mean: np.ndarray
    std: np.ndarray
    n_constant: int

    @classmethod
    def from_moments(cls, total: np.ndarray, total_sq: np.ndarray, count: int) -> "Standardiser":
        """Build from sums of ``x`` and ``x**2`` (float64, already shifted as the caller chose)."""
        mean = total / count
        var = np.maximum(total_sq / count - mean**2, 0.0)
        std = np.sqrt(var)
        const = ~np.isfinite(std) | (std < STD_FLOOR)
        std = np.where(const, 1.0, std)
        return cls(mean.astype(np.float32), std.astype(np.float32), int(const.sum()))

    @classmethod
    def fit(cls, x: np.ndarray) -> "Standardiser":
        """Fit on rows of features ``n x C`` (e.g. pooled activations; at least one row, a ValueError otherwise)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or not len(x):
            raise ValueError(f"x must be features n x C (rows of channels, n >= 1), got shape {x.shape}")
        shift = x.mean(0)
        d = x - shift
        s = cls.from_moments(d.sum(0), (d**2).sum(0), len(x))
        return cls((s.mean + shift).astype(np.float32), s.std, s.n_constant)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Standardise a tensor ``B x C (x ...)``; trailing spatial axes are broadcast.

        A TypeError unless ``x`` is a ``torch.Tensor``, a ValueError unless its axis 1 holds the ``C`` channels
        the standardiser was fitted on.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor B x C (x ...), got {type(x).__name__} "
                            f"(torch.from_numpy converts an array)")
        channels = int(np.size(self.mean))
        if x.dim() < 2 or x.shape[1] != channels:
            raise ValueError(f"x must be B x {channels} (x ...), the {channels} channels the standardiser was "
                             f"fitted on, got shape {tuple(x.shape)}")
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean = torch.as_tensor(self.mean, device=x.device).view(shape)
        std = torch.as_tensor(self.std, device=x.device).view(shape)
        return (x - mean) / std


def rows_per_read(array: zarr.Array) -> int:
    """Images per read so that one float32 batch stays near :data:`READ_BYTES`."""
    per_image = int(np.prod(array.shape[1:])) * 4
    return max(1, READ_BYTES // max(per_image, 1))


class SplitData:
    """Activations of one split of one layer (see the module docstring for the memory rule).

    Parameters
    ----------
    array : the store's ``N x C x h x w`` activation array.
    rows : store row indices of the split, in the order used everywhere (position ``i`` = ``rows[i]``).
    budget_bytes : memory allowed for holding the split.
    with_moments : accumulate per-channel sums of ``x`` and ``x**2`` over all positions (train split).

    Attributes
    ----------
    gap : ``n x C`` float32 global-average-pooled raw activations (Method B features).
    mode : ``"float32"``, ``"float16"`` or ``"stream"``.
    """

    def __init__(self, array: zarr.Array, rows: np.ndarray, *, budget_bytes: float, with_moments: bool = False):
        self.array, self.rows = array, np.asarray(rows)
        n, self.c = len(self.rows), int(array.shape[1])
        self.spatial = tuple(int(s) for s in array.shape[2:])
        f32 = n * self.c * int(np.prod(self.spatial)) * 4
        self.mode = "float32" if f32 <= budget_bytes else ("float16" if f32 / 2 <= budget_bytes else "stream")
        self.bytes_held = {"float32": f32, "float16": f32 // 2, "stream": 0}[self.mode]
        self.data = None
        if self.mode != "stream":
            dtype = torch.float32 if self.mode == "float32" else torch.float16
            # channels-last: a batch is then a (B h w) x C matrix view for the probe's matrix product
            fmt = torch.channels_last if len(self.spatial) == 2 else torch.contiguous_format
            self.data = torch.empty((n, self.c, *self.spatial), dtype=dtype, memory_format=fmt)
        self.standardiser: Standardiser | None = None
        self._standardised_in_place = False
        self._load(with_moments)

    def __len__(self) -> int:
        return len(self.rows)

    def _load(self, with_moments: bool) -> None:
        """One pass over the store: fill memory, pool, and (optionally) accumulate channel moments."""
        self.gap = np.empty((len(self.rows), self.c), dtype=np.float32)
        total = np.zeros(self.c)
        total_sq = np.zeros(self.c)
        shift = None
        pos = 0
        for _, block in read_rows(self.array, self.rows, batch=rows_per_read(self.array)):
            x = torch.from_numpy(block.astype(np.float32, copy=False))
            b = len(x)
            if self.data is not None:  # from the store's values: a float16 block is half the bytes to re-lay out
                self.data[pos : pos + b] = torch.from_numpy(block) if block.dtype.isnative else x
            flat = x.flatten(2)
            self.gap[pos : pos + b] = flat.mean(2).numpy()
            if with_moments:
                # shift by the first batch's channel means so float64 sums do not cancel catastrophically;
                # one float64 copy of the batch, shifted and squared in place (the same values as out of place)
                d = flat.double()
                shift = d.mean((0, 2)) if shift is None else shift
                d.sub_(shift.view(1, -1, 1))
                total += d.sum((0, 2)).numpy()
                total_sq += d.mul_(d).sum((0, 2)).numpy()
                del d
            pos += b
        self.count = len(self.rows) * int(np.prod(self.spatial))
        if with_moments and len(self.rows):
            s = Standardiser.from_moments(total, total_sq, self.count)
            self.moments = Standardiser((s.mean + shift.numpy()).astype(np.float32), s.std, s.n_constant)

    def set_standardiser(self, standardiser: Standardiser) -> None:
        """Standardise every batch from now on (in place, once, when the split is held as float32)."""
        self.standardiser = standardiser
        if self.mode == "float32" and not self._standardised_in_place:
            # in place, without temporaries: the same float32 operations as :meth:`Standardiser.apply`
            shape = (1, -1) + (1,) * (self.data.dim() - 2)
            self.data.sub_(torch.as_tensor(standardiser.mean).view(shape)).div_(torch.as_tensor(standardiser.std).view(shape))
            self._standardised_in_place = True

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu"
    ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Yield ``(positions, x)`` with ``x`` float32 ``B x C x h x w`` (standardised if set) on ``device``.

        With a ``generator`` the order is shuffled: image by image when in memory, block by block (blocks
        of ``batch_size`` consecutive images) when streamed, so that reads stay chunk-friendly.
        """
        for pos in self.batch_positions(batch_size, generator):
            yield pos, self._batch(pos).to(device)

    def batch_positions(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[np.ndarray]:
        """The positions of each batch of :meth:`batches` (the same order and generator draws), without the data."""
        n = len(self.rows)
        order = np.arange(n)
        starts = np.arange(0, n, batch_size)
        if generator is not None:
            if self.mode == "stream":
                starts = starts[torch.randperm(len(starts), generator=generator).numpy()]
            else:
                order = torch.randperm(n, generator=generator).numpy()
        for s in starts:
            yield order[s : s + batch_size]

    def image_matrices(self) -> torch.Tensor | None:
        """The held, standardised float32 split as ``n x (h w) x C`` (image ``i``'s positions by channels), a view.

        ``None`` unless the split is held as float32, standardised in place and channels-last (then each
        image's matrix is one contiguous block: the probes can read it in place instead of gathering a batch).
        """
        if self.mode != "float32" or not self._standardised_in_place or len(self.spatial) != 2:
            return None
        return self.data.permute(0, 2, 3, 1).view(len(self.rows), -1, self.c)

    def _batch(self, pos: np.ndarray) -> torch.Tensor:
        if self.data is not None and self._standardised_in_place and len(pos) and (np.diff(pos) == 1).all():
            return self.data[int(pos[0]) : int(pos[-1]) + 1]  # consecutive images: a view, no copy
        images = self.image_matrices() if self.data is not None else None
        if images is not None:  # whole rows: one block copy per image, the same values and channels-last layout
            return torch.index_select(images, 0, torch.from_numpy(np.asarray(pos))).view(len(pos), *self.spatial, self.c) \
                .permute(0, 3, 1, 2)
        if self.data is not None:
            x = self.data[torch.from_numpy(pos)].float()
        else:
            x = torch.from_numpy(np.asarray(self.array.get_orthogonal_selection((self.rows[pos],)), dtype=np.float32))
        if self.standardiser is not None and not self._standardised_in_place:
            x = self.standardiser.apply(x)
        return x
