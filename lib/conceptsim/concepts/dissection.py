"""Network Dissection baseline: single units as concept detectors (Bau et al., as fixed in methods.md).

Threshold. ``T_k`` is the top-0.5 % quantile (``q = 0.995``) of unit ``k``'s activation over all positions
of all images in the store (no labels are involved, so using every split leaks nothing). The quantile is
the order statistic of 0-based rank ``r = ceil(q (M - 1))`` among the ``M`` values (numpy's
``method="higher"``).

* One-pass path (the concept stage's): with ``M`` known, each unit's ``M - r`` largest values are kept
  while streaming (a running ``topk``; once they are held, only a batch's values above the smallest held
  one are merged); their minimum is the exact order statistic. Used while ``C x (M - r)`` values fit
  ``top_max_values``.
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
separable matrices of :class:`conceptsim.data.geometry.Resampler`, only for the (image, unit) maps whose
values bound their resampled values above ``T_k``'s neighbourhood (nonnegative weights: a resampled value
is at most the map's maximum times the weight sum, plus a rounding slack; the others have no pixel above
``T_k``). The ``units x concepts`` intersections are integer counts of the masks at the pixels where a unit
is above its threshold (few: about 0.5 % of them), so no dense product of the binarised maps is formed.
Resampling a subset of maps gives each map the same float32 values as resampling all (per-map products over
the same ``h`` and ``w`` terms; checked on 44 layers of the default study). A unit detects a concept when
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
from conceptsim.data.coco import SPLITS
from conceptsim.extraction.store import LayerInfo, read_rows

QUANTILE = 0.995
DETECTOR_IOU = 0.04
UPSAMPLED_FLOATS = 2 << 20  # bound on the upsampled batch (floats) in the IoU pass
#: bound on the float32 rounding of a resampled value, relative to max|map| x total weight (for h + w <= 64; scaled above)
ROUNDING_SLACK = 1e-4
#: values per unit in a batch of the one-pass threshold (at least twice the kept top values): bounds the
#: batches by the layer's size, not the number of images; batch sizes change no number (exact top values,
#: integer counts)
BATCH_VALUES_PER_UNIT = 1 << 15  # 32 images of a 32 x 32 grid; smaller batches make the running topk slower

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


def _memory_order(x: torch.Tensor) -> tuple[np.ndarray, int, int]:
    """``x`` (``B x C x ...``) as a flat numpy array in memory order, with the unit axis' stride and length there.

    Channels-last batches (the held splits' views) are read as they lie, without a transposing copy.
    """
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).numpy().reshape(-1), 1, x.shape[1]
    x = x.contiguous()
    return x.numpy().reshape(-1), int(np.prod(x.shape[2:], dtype=np.int64)), x.shape[1]


def _above(x: torch.Tensor, floor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each unit's values of ``B x C x ...`` not ``<= floor`` (NaN included), grouped by unit, and their counts ``C``."""
    flat, stride, c = _memory_order(x)
    shape = [1] * x.dim()
    shape[1] = c
    floor = floor.numpy().reshape(shape)
    if stride == 1:
        floor = np.moveaxis(floor, 1, -1)
    hit = np.less_equal(flat.reshape(-1, c) if stride == 1 else flat.reshape(x.shape), floor)
    idx = np.flatnonzero(np.logical_not(hit, out=hit))
    unit = torch.from_numpy(idx // stride % c)
    order = torch.argsort(unit, stable=True)
    return torch.from_numpy(flat[idx])[order], torch.bincount(unit, minlength=c)


def _padded(values: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Ragged per-unit values (grouped by unit, ``counts`` each) as ``C x max(counts)``, padded with ``-inf``."""
    c = counts.shape[0]
    out = torch.full((c, int(counts.max()) if c else 0), -math.inf, dtype=values.dtype)
    if len(values):
        row = torch.repeat_interleave(torch.arange(c), counts)
        start = counts.cumsum(0) - counts
        out[row, torch.arange(len(values)) - start[row]] = values
    return out


def streamed_top(batches: Batches, channels: int, keep: int) -> tuple[torch.Tensor, int]:
    """Each unit's ``keep`` largest values over all batches, in one pass (memory ``C x (keep + batch)``).

    Once ``keep`` values per unit are held, a batch's values ``<=`` the unit's smallest held value cannot
    change the unit's ``keep`` largest values (as a multiset), so only the others are merged: a comparison
    per value instead of a ``topk`` over the batch, and the same values as merging everything.
    """
    top, m = torch.empty(channels, 0), 0
    for _, x in batches():
        m += x.numel() // max(channels, 1)
        if top.shape[1] < keep:  # filling: merge everything
            both = torch.cat([top, _units_by_values(x).float()], 1)
        else:
            values, counts = _above(x.float(), top.min(1).values)
            if not len(values):
                continue
            both = torch.cat([top, _padded(values, counts)], 1)  # -inf pads never displace a held value
        top = both.topk(min(keep, both.shape[1]), dim=1, sorted=False).values
    return top, m


def unit_thresholds(
    batches: Batches, channels: int, *, q: float = QUANTILE, bins: int = 1024, exact_max_values: int = 20_000_000,
    values_per_unit: int | None = None, top_max_values: int = 20_000_000,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit top-``(1 - q)`` thresholds and their error bounds (see the module docstring).

    Parameters
    ----------
    batches : a callable returning a fresh iterable of ``(positions, B x C x h x w)`` raw activations.
    channels : number of units C.
    values_per_unit : M, when the caller knows it (images x positions): then, while ``C x (M - r)`` values
        fit ``top_max_values``, the threshold is the exact order statistic from one streamed pass that keeps
        each unit's ``M - r`` largest values (:func:`streamed_top`; error 0).

    Returns
    -------
    thresholds, errors : float64 arrays ``C``.
    """
    if values_per_unit is not None:
        keep = top_kept(values_per_unit, q)
        if keep * channels <= top_max_values:
            top, m = streamed_top(batches, channels, keep)
            if m != values_per_unit:
                raise ValueError(f"dissection batches gave {m} values per unit, expected values_per_unit={values_per_unit}")
            return top.min(1).values.double().numpy(), np.zeros(channels)
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


def _weight_sums(resample) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per content-box group, the smallest and largest total weight of an output pixel (float64), or ``None``
    when some resampling weight is negative (then no map is skipped)."""
    if (resample.ry < 0).any() or (resample.rxt < 0).any():
        return None
    total = resample.ry.double().sum(2)[:, :, None] * resample.rxt.double().sum(1)[:, None, :]  # groups x gh x gw
    return total.flatten(1).min(1).values, total.flatten(1).max(1).values


def _may_exceed(x: torch.Tensor, groups: np.ndarray, sums, thr: torch.Tensor) -> torch.Tensor:
    """``B x C`` bool: which unit maps of ``x`` (``B x C x h x w``) can have a resampled value ``> thr``.

    A resampled value is a combination of the map's values with nonnegative weights summing to ``S`` (between
    the group's extreme sums), so it is at most ``max(max_map * S_min, max_map * S_max)`` plus float32
    rounding, bounded by :data:`ROUNDING_SLACK` ``x S_max x max|map|`` (two products of at most ``h`` and
    ``w`` terms round by under ``(h + w) 2^-24`` of that). Maps that cannot exceed their unit's threshold
    are not resampled: they add nothing to any count.
    """
    if sums is None:
        return torch.ones(x.shape[:2], dtype=torch.bool)
    hi, lo = x.amax((2, 3)).double(), x.amin((2, 3)).double()
    big = torch.maximum(hi.abs(), lo.abs())
    g = torch.from_numpy(groups)
    smin, smax = sums[0][g][:, None], sums[1][g][:, None]
    slack = ROUNDING_SLACK * max(1.0, (x.shape[2] + x.shape[3]) / 64)
    bound = torch.maximum(hi * smin, hi * smax) + slack * smax * big
    return ~(bound < thr.double()[None, :])  # NaN bounds count as "may exceed"


@torch.no_grad()
def unit_iou_counts(
    batches: Iterable[tuple[np.ndarray, torch.Tensor]], thresholds: np.ndarray, ev: EvalSet
) -> tuple[np.ndarray, np.ndarray]:
    """Set-IoU numerators and denominators ``C x K`` of thresholded units vs concept masks, summed over images.

    ``batches`` yields ``(positions in ev, B x C x h x w)``; the thresholds are in the same units as the
    activations. Only the (image, unit) maps that can exceed the unit's threshold are resampled
    (:func:`_may_exceed`); the others have no pixel above it.
    """
    thr = torch.as_tensor(np.asarray(thresholds, dtype=np.float32))
    c, k = thr.shape[0], ev.masks.shape[1]
    inter, union_u = torch.zeros(c, k, dtype=torch.int64), torch.zeros(c, dtype=torch.int64)
    union_c = ev.areas.sum(0).double()
    p_grid = int(np.prod(ev.grid))
    sums = {}
    for pos, x in batches:
        resample = ev.resampler(x.shape[2:], x.device)
        if id(resample) not in sums:
            sums[id(resample)] = _weight_sums(resample)
        step = max(1, UPSAMPLED_FLOATS // (x.shape[1] * p_grid))  # bounds memory; small chunks stay in cache
        for s in range(0, len(pos), step):
            p, xs = pos[s : s + step], x[s : s + step]
            groups = resample.group[np.asarray(p)]
            image, unit = _may_exceed(xs, groups, sums[id(resample)], thr).nonzero(as_tuple=True)
            map_groups = groups[image.numpy()]  # each kept map's content-box group
            masks = ev.masks[p].flatten(2)  # B x K x P
            for g in np.unique(map_groups):
                sel = torch.from_numpy(map_groups == g)
                im, un = image[sel], unit[sel]
                maps = resample.maps(xs[im, un][None], int(g))[0].flatten(1).cpu().numpy()  # maps x P
                # a unit's map is above its top-0.5 % threshold on few pixels: count the masks there (integers)
                pair, pixel = np.divmod(np.flatnonzero(np.greater(maps, thr.numpy()[un.numpy()][:, None])), p_grid)
                pair = torch.from_numpy(pair)
                inter.index_add_(0, un[pair], masks[im[pair], :, torch.from_numpy(pixel)].to(torch.int64))
                union_u += torch.bincount(un[pair], minlength=c)
    inter = inter.double().numpy()
    union = union_u.double().numpy()[:, None] + union_c.numpy()[None, :] - inter
    return inter, union


# ----------------------------------------------------------------------------- one layer of the concept stage
def top_kept(values_per_unit: int, q: float = QUANTILE) -> int:
    """How many of a unit's largest values the one-pass threshold keeps (``M - r``)."""
    return values_per_unit - math.ceil(q * (values_per_unit - 1))


def batch_rows(array: zarr.Array, values_per_unit: int) -> int:
    """Images per dissection batch: about ``max(BATCH_VALUES_PER_UNIT, 2 x kept)`` values per unit, within a read."""
    spatial = max(1, int(np.prod(array.shape[2:])))
    want = max(BATCH_VALUES_PER_UNIT, 2 * top_kept(values_per_unit))
    return max(1, min(rows_per_read(array), math.ceil(want / spatial)))


def dissection_batches(inp, info: LayerInfo, data: dict | None):
    """Activation batches for dissection, their units, and the map back to raw units.

    When the layer's splits are in memory and together cover every image of the store, dissection works
    on them in the standardised space (no second read of the store): ``(x - mean) / std`` is increasing
    per unit (``std > 0``) and commutes with bilinear resampling (its weights sum to 1), so thresholds and
    IoUs are those of the raw activations up to float rounding; thresholds and their error bounds are
    mapped back with ``t * std + mean`` and ``err * std``. Otherwise the raw store is streamed.

    Returns
    -------
    all_batches : callable giving a fresh iterable over all images; split_batches : split -> iterable;
    to_raw : ``(thresholds, errors) -> (thresholds, errors)`` in raw activation units.
    """
    act = inp.store.activations(info.name)
    bs = batch_rows(act, int(act.shape[0]) * int(np.prod(info.grid)))
    covered = data is not None and all(d.mode != "stream" for d in data.values()) and np.array_equal(
        np.sort(np.concatenate([inp.rows[s] for s in SPLITS])), np.arange(act.shape[0]))
    if not covered:
        return (lambda: raw_batches(act, np.arange(act.shape[0]), bs),
                lambda split: raw_batches(act, inp.rows[split], bs), lambda t, e: (t, e))
    st = data["train"].standardiser
    mean, std = st.mean.astype(np.float64), st.std.astype(np.float64)
    return (lambda: (b for s in SPLITS for b in data[s].batches(bs)), lambda split: data[split].batches(bs),
            lambda t, e: (t * std + mean, e * std))


def run_dissection(inp, info: LayerInfo, seg_iou: dict, data: dict | None = None) -> tuple[list, dict, list]:
    """Network Dissection on one layer: unit rows, the layer summary, best unit per concept.

    ``inp`` is the concept stage's prepared inputs (:class:`conceptsim.concepts.stage.Inputs`).

    ``data`` (the layer's standardised splits, optional) avoids re-reading the store; see
    :func:`dissection_batches`.
    """
    all_batches, split_batches, to_raw = dissection_batches(inp, info, data)
    n_values = int(inp.store.activations(info.name).shape[0]) * int(np.prod(info.grid))
    thr_std, err_std = unit_thresholds(all_batches, info.channels, values_per_unit=n_values)
    thr, err = to_raw(thr_std, err_std)
    sel = np.flatnonzero(inp.include["seg"])
    base = {"model": inp.store.model, "layer": info.name, "relative_depth": info.relative_depth,
            "probe_rank": info.probe_rank}
    iou = {}
    for split in ("val", "test"):
        inter, union = unit_iou_counts(split_batches(split), thr_std, inp.eval_sets[split].subset(sel))
        iou[split] = np.where(union > 0, inter / np.maximum(union, 1), 0.0)  # C x K_sel
    units = []
    for u in range(info.channels):
        best = int(np.argmax(iou["test"][u])) if len(sel) else -1
        value = float(iou["test"][u, best]) if len(sel) else np.nan
        units.append({**base, "unit": u, "threshold": float(thr[u]), "threshold_error": float(err[u]),
                      "concept": inp.names[sel[best]] if len(sel) else "",
                      "category": inp.categories[sel[best]] if len(sel) else "", "iou": value,
                      "is_detector": bool(value > DETECTOR_IOU)})
    det = [r for r in units if r["is_detector"]]
    summary = {**base, "n_units": info.channels, "detector_units": len(det),
               "unique_concepts": len({r["concept"] for r in det})}
    best_units = []
    for i, j in enumerate(sel):
        u = int(np.argmax(iou["val"][:, i]))
        best_units.append({**base, "concept": inp.names[j], "category": inp.categories[j], "unit": u,
                           "val_iou": float(iou["val"][u, i]), "iou": float(iou["test"][u, i]),
                           "is_detector": bool(iou["test"][u, i] > DETECTOR_IOU),
                           "net2vec_iou": seg_iou.get(inp.names[j], np.nan)})
    return units, summary, best_units
