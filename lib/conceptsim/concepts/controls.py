"""Controls: shuffled-label permutations, bootstrap intervals over test images, the ``represented`` rule.

* Shuffled labels (:func:`shuffle_permutation`): masks, soft targets and labels are permuted *across
  images* within a split with a seeded permutation, and the identical probe pipeline runs on them; its
  test quality (against the true test masks) is the chance level for that concept and layer.
* Bootstrap (:func:`bootstrap_indices`): ``B`` resamples of the test images with replacement, seeded; the
  same resamples are used for a probe and its control (a *paired* bootstrap). When the test images come in
  groups (crops of one source photo), a two-stage cluster bootstrap: the groups are resampled with
  replacement, then the ``n`` images are drawn from the drawn groups' images, so the interval carries the
  variation between groups and not only between images.
* Represented (:func:`summarise`): the 95 % percentile interval of ``quality - control`` over the paired
  resamples lies entirely above zero.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from conceptsim.concepts.metrics import (
    average_precision,
    balanced_accuracy,
    multiplicities,
    resampled_average_precision,
    resampled_balanced_accuracy,
    set_iou_from_counts,
)

CONTROL_SEED_OFFSET = 7919  # keeps the shuffle's random stream apart from the probes' own seed
BOOTSTRAP_SEED_OFFSET = 104729
#: values (resamples x images x concepts) per bootstrap chunk: bounds the intervals' memory (2 MiB as float64)
BOOTSTRAP_CHUNK_VALUES = 1 << 18


def shuffle_permutation(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of ``n`` images that moves every image when ``n > 1`` (a derangement).

    A plain permutation leaves about one image paired with its own mask, which leaks a little signal
    into the control; a random cyclic shift of a random order never does.
    """
    rng = np.random.default_rng(seed + CONTROL_SEED_OFFSET)
    if n < 2:
        return np.arange(n)
    order = rng.permutation(n)
    shift = int(rng.integers(1, n))
    perm = np.empty(n, dtype=np.int64)
    perm[order] = order[(np.arange(n) + shift) % n]
    return perm


def bootstrap_indices(n: int, resamples: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """``resamples x n`` image indices drawn with replacement (seeded).

    ``groups`` (``n`` labels): per resample, draw as many groups as there are, with replacement, and then
    ``n`` images with replacement from the images of the drawn groups (a group drawn twice counts twice).
    """
    rng = np.random.default_rng(seed + BOOTSTRAP_SEED_OFFSET)
    if groups is None:
        return rng.integers(0, n, size=(resamples, n))
    groups = np.asarray(groups)
    if len(groups) != n:
        raise ValueError(f"bootstrap groups must label the {n} test images, got {len(groups)} labels")
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    out = np.empty((resamples, n), dtype=np.int64)
    for b in range(resamples):
        pool = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        out[b] = pool[rng.integers(0, len(pool), n)]
    return out


@dataclass
class Interval:
    """Point value, its 95 % bootstrap interval, the control's value and the paired-difference interval."""

    value: float
    ci_low: float
    ci_high: float
    control_value: float
    diff_low: float
    diff_high: float

    @property
    def represented(self) -> bool:
        return bool(np.isfinite(self.diff_low) and self.diff_low > 0)


def _ci(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """95 % percentile interval over resamples (axis 0), ignoring undefined resamples (no positive drawn)."""
    if not samples.size:
        return np.nan, np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN, which is the answer
        lo, hi = np.nanpercentile(samples, [2.5, 97.5], axis=0)
    return lo, hi


def summarise(value, control, boot, boot_control) -> list[Interval]:
    """Intervals per concept from point values ``K`` and paired resample values ``B x K``."""
    lo, hi = _ci(boot)
    dlo, dhi = _ci(boot - boot_control)
    return [Interval(*map(float, t)) for t in zip(value, lo, hi, control, dlo, dhi)]


def resample_chunks(idx: np.ndarray, values_per_resample: int) -> list[np.ndarray]:
    """The rows of ``idx`` (resamples x n) in consecutive chunks of about :data:`BOOTSTRAP_CHUNK_VALUES` values.

    A resample's statistic depends on its own row only, so chunking changes no number; it keeps the
    ``chunk x n x K`` intermediates of the bootstrap at a fixed size whatever the number of test images.
    """
    step = max(1, BOOTSTRAP_CHUNK_VALUES // max(1, values_per_resample))
    return [idx[s : s + step] for s in range(0, len(idx), step)]


def _stack(parts: list[np.ndarray], k: int) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, k))


def seg_intervals(counts, control_counts, idx: np.ndarray) -> list[Interval]:
    """Set-IoU intervals from per-image ``(inter, union)`` counts ``n x K`` of probe and control."""
    k = np.shape(counts[0])[1]

    def boot(c):  # B x K, computed a chunk of resamples at a time
        return _stack([set_iou_from_counts(c[0][ch], c[1][ch], axis=1) for ch in resample_chunks(idx, idx.shape[1] * k)], k)
    return summarise(set_iou_from_counts(*counts), set_iou_from_counts(*control_counts), boot(counts), boot(control_counts))


def cls_intervals(y: np.ndarray, score: np.ndarray, control_score: np.ndarray, idx: np.ndarray) -> dict[str, list[Interval]]:
    """AP and balanced-accuracy intervals from labels and logits ``n x K`` of probe and control."""
    yt, s, sc = y.T, score.T, control_score.T  # K x n
    k, n = yt.shape
    parts = {"ap": ([], []), "ba": ([], [])}
    for ch in resample_chunks(idx, idx.shape[1] * k):
        m = multiplicities(ch, n)  # chunk x n: each resample as item counts, no resampled copies to sort
        parts["ap"][0].append(resampled_average_precision(yt, s, m).T)
        parts["ap"][1].append(resampled_average_precision(yt, sc, m).T)
        parts["ba"][0].append(resampled_balanced_accuracy(yt, s > 0, m).T)
        parts["ba"][1].append(resampled_balanced_accuracy(yt, sc > 0, m).T)
    ap = summarise(average_precision(yt, s), average_precision(yt, sc), *(_stack(p, k) for p in parts["ap"]))
    ba = summarise(balanced_accuracy(yt, s > 0), balanced_accuracy(yt, sc > 0), *(_stack(p, k) for p in parts["ba"]))
    return {"ap": ap, "balanced_accuracy": ba}
