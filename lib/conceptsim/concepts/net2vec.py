"""Method A: Net2Vec segmentation concept vectors, all concepts of a layer trained jointly.

The probe is a 1x1 convolution ``C -> K`` (written as a matrix product over positions) on standardised
activations. Joint training is exactly K independent probes because

* the loss is a *sum* over concepts of per-concept losses, so concept ``c``'s gradient depends only on
  its own row ``(w_c, b_c)``;
* Adam is element-wise, so each row's update depends only on its own gradient history;
* weights start at zero (the probe is convex in its parameters, so no random init is needed) and the
  batch order comes from a generator seeded by ``seed`` alone;
* early stopping is per concept: each concept keeps its best-val-IoU row and is *frozen* once its own
  patience runs out; training ends when every concept is frozen. A frozen concept drops out of the
  work: the forward pass, the loss and the validation counts run on the rows still training only
  (their gradients are unchanged; the frozen rows get zero gradient and are never read again).

:func:`train_segmentation_probes_sequential` runs the same function once per concept (the benchmark's
"one at a time" baseline); it shares all code with the joint path.

Evaluation follows methods.md: logits are resampled bilinearly from the activation grid (input frame)
onto the evaluation grid over the image (:func:`conceptsim.data.geometry.input_to_image_grid`), then
thresholded at 0.5 on the sigmoid (logit > 0), and the set IoU is summed over images.

Speed. The resampling is separable, so :class:`~conceptsim.data.geometry.Resampler` applies it as two small
matrix products with the matrices of :func:`conceptsim.data.geometry.resampling_matrices` (read off the reference function,
equal to it up to float rounding; one matrix pair per distinct content box, built once per eval set and
activation grid). Counting thresholds the logits at 0 (no sigmoid), and the union is
``|B| + |m| - |B and m|`` with the mask areas ``|m|`` computed once per eval set. The reference solver's
balanced-BCE batches take their gradient in closed form (:class:`BalancedBCEGradient`: PyTorch's own backward
factors, computed once per layer) instead of through autograd, and on layers whose image matrices are large
(:data:`IN_PLACE_IMAGE_BYTES`) read each image in place rather than gathering a batch; the results equal
the autograd path's to float32 rounding (on the default study's layers the test IoUs did not change).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from conceptsim.concepts.layerdata import SplitData
from conceptsim.concepts.metrics import set_iou_from_counts
from conceptsim.concepts.optimum import GTOL, SOLVERS, Adam, Solution, minimise
from conceptsim.data.geometry import Resampler

LOSSES = ("balanced_bce", "net2vec_soft", "dice")
EVAL_BATCH = 32
FIT_ROWS = 1 << 14  # positions per chunk of the full-batch objective (a contiguous slice of the split)


def image_permutation(order: np.ndarray, n: int, what: str) -> np.ndarray:
    """``order`` as int64 after checking it is a permutation of ``n`` ``what``."""
    order = np.asarray(order, dtype=np.int64)
    if sorted(order.tolist()) != list(range(n)):
        raise ValueError(f"order must be a permutation of the {n} {what}")
    return order


@dataclass
class EvalSet:
    """Binary masks of a split on the evaluation grid and what is needed to map logits onto it.

    Attributes
    ----------
    masks : bool ``n x K x gh x gw`` (image frame), positions aligned with the split's ``SplitData``.
    boxes : float32 ``n x 4`` content boxes in input-frame pixels.
    input_size : tuple of int
        (H, W) of the model input frame.
    control_order : with it, the set has ``2K`` concepts: ``masks``' own, then the shuffled-label
        control's, image ``i``'s being the masks of image ``control_order[i]`` (``with_control``); they
        are read block by block (``block``), never copied whole.
    concepts : the concepts kept of the set's (a ``subset`` of a set with a control), or None (all).
    """

    masks: torch.Tensor
    boxes: torch.Tensor
    input_size: tuple[int, int]
    control_order: np.ndarray | None = None
    concepts: torch.Tensor | None = None
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.masks.shape[-2:])

    @property
    def n_concepts(self) -> int:
        if self.concepts is not None:
            return len(self.concepts)
        return self.masks.shape[1] * (1 if self.control_order is None else 2)

    def block(self, images: slice | torch.Tensor) -> torch.Tensor:
        """The masks of ``images`` (a slice or positions), ``B x K x gh x gw``, with the control's and only the
        kept concepts."""
        m = self.masks[images]
        if self.control_order is not None:
            rows = self.control_order[images if isinstance(images, slice) else images.cpu().numpy()]
            m = torch.cat([m, self.masks[torch.from_numpy(rows)]], 1)
        return m if self.concepts is None else m[:, self.concepts]

    @property
    def areas(self) -> torch.Tensor:
        """Foreground pixel counts ``n x K`` (int64), computed once."""
        if "areas" not in self._cache:  # a block of images at a time: no int32 copy of all the masks
            step = max(1, COUNT_FLOATS // max(1, self.masks[0].numel()))
            parts = [self.masks[s : s + step].flatten(2).sum(2, dtype=torch.int32) for s in range(0, len(self.masks), step)]
            areas = torch.cat(parts) if parts else torch.zeros(self.masks.shape[:2], dtype=torch.int32)
            if self.control_order is not None:
                areas = torch.cat([areas, areas[torch.from_numpy(self.control_order)]], 1)
            self._cache["areas"] = areas if self.concepts is None else areas[:, self.concepts]
        return self._cache["areas"]

    def with_control(self, order: np.ndarray) -> "EvalSet":
        """These masks beside the shuffled-label control's (the masks of images ``order``): ``2K`` concepts,
        sharing the masks and the resampling matrices."""
        if self.control_order is not None or self.concepts is not None:
            raise ValueError("with_control needs a set of plain masks")
        order = image_permutation(order, len(self.masks), "images")
        return self._sharing_resamplers(EvalSet(self.masks, self.boxes, self.input_size, control_order=order))

    def _sharing_resamplers(self, out: "EvalSet") -> "EvalSet":
        """``out`` (the same images) with this set's cached resampling matrices (not its mask areas)."""
        out._cache.update({k: v for k, v in self._cache.items() if k != "areas"})
        return out

    def resampler(self, src_hw: Sequence[int], device: str | torch.device = "cpu") -> "Resampler":
        """The (cached) :class:`Resampler` from an ``src_hw`` activation grid onto this set's grid."""
        key = ("resampler", tuple(int(s) for s in src_hw), str(device))
        if key not in self._cache:
            self._cache[key] = Resampler(self.boxes, self.input_size, src_hw, self.grid, device)
        return self._cache[key]

    def with_masks(self, masks: torch.Tensor) -> "EvalSet":
        """The same images with other masks (``n x K' x gh x gw``, e.g. permuted across images or more
        concepts): the resampling matrices are shared, the mask areas are not."""
        if masks.shape[0] != self.masks.shape[0] or masks.shape[2:] != self.masks.shape[2:]:
            raise ValueError(f"masks of shape {tuple(masks.shape)} do not fit {len(self.masks)} images on the "
                             f"{self.grid} grid")
        return self._sharing_resamplers(EvalSet(masks, self.boxes, self.input_size))

    def subset(self, concepts: Sequence[int]) -> "EvalSet":
        """The same images restricted to some concepts (resampling matrices and mask areas are shared).

        Selecting every concept in order shares the masks too (no copy): masks are never written.
        """
        concepts = [int(j) for j in concepts]
        everything = concepts == list(range(self.n_concepts))
        if self.control_order is not None:  # the kept concepts are read block by block
            kept = None if everything else torch.tensor(concepts) if self.concepts is None else self.concepts[concepts]
            out = EvalSet(self.masks, self.boxes, self.input_size, control_order=self.control_order, concepts=kept)
        else:
            out = EvalSet(self.masks if everything else self.masks[:, concepts], self.boxes, self.input_size)
        self._sharing_resamplers(out)
        if "areas" in self._cache:
            out._cache["areas"] = self._cache["areas"] if everything else self._cache["areas"][:, concepts]
        return out


@dataclass
class SegProbes:
    """Trained probes of one layer, in the standardised activation space.

    Fields: ``weight`` (``K x C``) and ``bias`` (``K``); ``best_epoch`` (``K``: the 1-based epoch of the kept
    weights; for the fast solver, its iterations); ``val_iou`` (``K`` validation set IoUs, the best for the
    reference solver); ``epochs_run`` (the epochs, or fast-solver iterations, that ran); ``history`` (per
    epoch, the ``K`` validation set IoUs; NaN for concepts already frozen, empty for the fast solver);
    ``loss`` (the final training loss per concept, fast solver only) and ``grad_max`` (its largest absolute
    gradient entry).
    """

    weight: np.ndarray
    bias: np.ndarray
    best_epoch: np.ndarray
    val_iou: np.ndarray
    epochs_run: int
    history: list = field(default_factory=list)
    loss: np.ndarray | None = None
    grad_max: float = float("nan")

    def part(self, concepts: slice) -> "SegProbes":
        """The probes of ``concepts`` (a slice of the K), as a run of the reference solver on those concepts
        alone reports them: its epochs end with the last epoch in which one of them was still training."""
        history = [h[concepts] for h in self.history]
        ran = [i for i, h in enumerate(history) if np.isfinite(h).any()]
        epochs = ran[-1] + 1 if ran else self.epochs_run
        return SegProbes(self.weight[concepts], self.bias[concepts], self.best_epoch[concepts], self.val_iou[concepts],
                         epochs if self.history else self.epochs_run, history[:epochs],
                         None if self.loss is None else self.loss[concepts], self.grad_max)


@contextlib.contextmanager
def deterministic(seed: int, device: str | torch.device = "cpu") -> Iterator[torch.Generator]:
    """Seed torch and yield a seeded generator; on accelerators also force deterministic kernels.

    The CPU kernels used here are deterministic already, and switching the global flag costs a
    one-off import of over a second, so it is only flipped where it changes results.
    """
    switch = torch.device(device).type != "cpu"
    previous = torch.are_deterministic_algorithms_enabled()
    if switch:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(seed)
    try:
        yield torch.Generator().manual_seed(seed)
    finally:
        if switch:
            torch.use_deterministic_algorithms(previous)


def probe_logits(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """1x1 convolution: ``B x C x h x w`` -> ``B x K x h x w`` logits.

    Computed as one ``(B h w) x C`` by ``C x K`` matrix product. When ``x`` is stored channels-last (as
    :class:`~conceptsim.concepts.layerdata.SplitData` holds it) the ``(B h w) x C`` operand is a view, so
    neither the forward nor the weight gradient copies the activations.
    """
    b, c = x.shape[:2]
    z = torch.addmm(bias, x.flatten(2).transpose(1, 2).reshape(-1, c), weight.t())  # (B h w) x K
    return z.view(b, -1, weight.shape[0]).transpose(1, 2).view(b, weight.shape[0], *x.shape[2:])


def probe_loss(z: torch.Tensor, t: torch.Tensor, alpha: torch.Tensor, kind: str) -> torch.Tensor:
    """Sum over concepts of each concept's mean loss (the sum keeps concepts independent).

    Parameters
    ----------
    z, t : logits and soft targets ``B x K x ...``.
    alpha : ``K`` positive-class weights, ``1 - mean foreground fraction`` on train.
    kind : ``"balanced_bce"`` (default), ``"net2vec_soft"`` (Net2Vec's original alpha-weighted loss on
        probabilities, no log) or ``"dice"`` (soft Dice over the batch).
    """
    z, t = z.flatten(2), t.flatten(2).float()
    a = alpha.view(1, -1, 1)
    if kind == "balanced_bce":
        if bool((a < 1).all()):
            # one fused kernel: a t (-log s(z)) + (1-a)(1-t)(-log s(-z)) = (1-a) BCE(z, t; pos_weight a/(1-a))
            per_sum = F.binary_cross_entropy_with_logits(z, t, weight=1 - a, pos_weight=a / (1 - a), reduction="sum")
            return per_sum / (z.shape[0] * z.shape[2])
        per = -(a * t * F.logsigmoid(z) + (1 - a) * (1 - t) * F.logsigmoid(-z))
        return per.mean((0, 2)).sum()
    p = torch.sigmoid(z)
    if kind == "net2vec_soft":
        return -(a * t * p + (1 - a) * (1 - t) * (1 - p)).mean((0, 2)).sum()
    if kind == "dice":
        inter = (p * t).sum((0, 2))
        return (1 - (2 * inter + 1) / (p.sum((0, 2)) + t.sum((0, 2)) + 1)).sum()
    raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")


COUNT_FLOATS = 1 << 20  # upsampled floats per counting chunk: small enough to stay in cache


def threshold_counts(
    maps: torch.Tensor, thresholds: torch.Tensor | float, masks: torch.Tensor, areas: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image intersection and union counts ``B x K`` (int32) of ``maps > thresholds`` vs bool ``masks``.

    ``areas`` are the masks' pixel counts ``B x K``; the union is ``|pred| + |mask| - |pred and mask|``.
    Bool maps are summed as ``uint8`` into ``int32`` (no int64 copy of the maps).
    """
    pred = maps > thresholds
    inter = count_true(pred & masks)
    return inter, count_true(pred) + areas - inter


@functools.lru_cache(maxsize=64)
def _word_block(words: int) -> int:
    """The largest divisor of ``words`` that is at most 255 (words summed per packed byte lane)."""
    return max(d for d in range(1, min(words, 255) + 1) if words % d == 0)


def count_true(flags: torch.Tensor) -> torch.Tensor:
    """Exact counts ``B x K`` (int32) of the true entries of each map of a bool ``B x K x ...`` tensor.

    The flags are read eight at a time as int64 words: every byte is 0 or 1, so a sum of at most 255 words holds
    eight byte-lane counts that cannot carry into each other; those packed sums are then added byte by byte
    (about 6x faster than summing the flags one by one). Maps whose flags do not form whole, aligned words are
    summed byte by byte.
    """
    flat = flags.flatten(2)
    n = flat.shape[-1]
    if flat.numel() == 0 or n % 8 or not flat.is_contiguous() or flat.storage_offset() % 8:
        return flat.view(torch.uint8).sum(2, dtype=torch.int32)
    words = flat.view(torch.uint8).view(torch.int64)
    block = _word_block(n // 8)
    packed = words.view(*words.shape[:2], -1, block).sum(3)
    return packed.view(torch.uint8).flatten(2).sum(2, dtype=torch.int32)


def eval_logits(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The probe logits ``B x K x h x w`` of :func:`probe_logits`, stored contiguously: one batched product
    ``W (K x C) @ x_i (C x h w)`` per image, whose output is the layout the resampler reads without a copy
    (:func:`probe_logits` gives a ``(B h w) x K`` matrix, which the resampler would have to transpose)."""
    b = x.shape[0]
    z = torch.baddbmm(bias.view(1, -1, 1), weight.expand(b, -1, -1), x.flatten(2))
    return z.view(b, weight.shape[0], *x.shape[2:])


@torch.no_grad()
def split_counts(
    weight: torch.Tensor, bias: torch.Tensor, data: SplitData, ev: EvalSet, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image intersection and union counts (``n x K``, int64) of thresholded probe outputs vs masks.

    Logits are computed ``EVAL_BATCH`` images at a time (:func:`eval_logits`), then resampled and counted in
    chunks of about :data:`COUNT_FLOATS` upsampled values, so the large intermediates stay in cache.
    """
    resample = ev.resampler(data.spatial, device)
    areas = ev.areas.to(device)
    inter, union = [], []
    step = max(1, COUNT_FLOATS // (weight.shape[0] * int(np.prod(ev.grid))))
    for pos, x in data.batches(EVAL_BATCH, device=device):
        z = eval_logits(weight, bias, x)
        for s in range(0, len(pos), step):
            p = pos[s : s + step]
            # evaluation batches are consecutive images: slice (a view) instead of gathering a copy
            pt = slice(int(p[0]), int(p[-1]) + 1) if (np.diff(p) == 1).all() else torch.from_numpy(p).to(device)
            i, u = threshold_counts(resample(z[s : s + step], p), 0.0, ev.block(pt).to(device), areas[pt])
            inter.append(i.cpu())
            union.append(u.cpu())
    return torch.cat(inter).numpy().astype(np.int64), torch.cat(union).numpy().astype(np.int64)


def foreground_alpha(targets: torch.Tensor) -> torch.Tensor:
    """``alpha_c = 1 - mean foreground fraction`` of soft targets ``n x K x h x w``."""
    return 1.0 - targets.float().mean((0, 2, 3))


class BalancedBCE:
    """The full-batch balanced BCE of ``C -> K`` probes on a split, as ``theta -> (loss, gradient)`` (float64).

    ``theta`` is ``[W (K x C) row-major, b (K)]``; the loss is the sum over concepts of each concept's mean
    over all positions (the reference's loss on the whole split). Positions are visited as contiguous
    slices of about :data:`FIT_ROWS` (``(B h w) x C`` views of a channels-last split), the matrix products
    run in float32 and every sum over positions is accumulated in float64 in a fixed order, so the result
    does not depend on the thread count beyond float32 rounding of each slice.
    With per-element weights ``u = a t + (1-a)(1-t)`` and ``v = (1-a)(1-t)`` (fixed, computed once), the
    loss is ``u softplus(-z) + v z`` and its derivative in ``z`` is ``u sigmoid(z) - (u - v)``.
    """

    def __init__(self, train: SplitData, targets: torch.Tensor, alpha: torch.Tensor, device: str | torch.device = "cpu"):
        n, k = targets.shape[:2]
        if n != len(train) or tuple(targets.shape[2:]) != train.spatial:
            raise ValueError(f"targets {tuple(targets.shape)} do not match the split ({len(train)} images, grid {train.spatial})")
        self.train, self.k, self.c, self.device = train, k, train.c, device
        self.spatial = int(np.prod(train.spatial))
        self.images = max(1, FIT_ROWS // self.spatial)
        self.positions = n * self.spatial
        t = targets.to(device).float().permute(0, 2, 3, 1).reshape(-1, k)  # (n h w) x K, the split's order
        a = alpha.to(device).float().view(1, -1)
        self.v = ((1 - a) * (1 - t)).contiguous()
        self.u = (a * t).add_(self.v).contiguous()

    def __call__(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss, grad = self.evaluate(theta)
        return loss.sum(), grad

    def evaluate(self, theta: torch.Tensor, hessian: bool = False):
        """Per-concept mean losses ``K`` and the gradient of their sum (both float64, on the CPU).

        With ``hessian``, also each concept's Hessian ``K x (C+1) x (C+1)`` (weights then bias; float64),
        ``sum_p h_p [x_p, 1][x_p, 1]^T / N`` with ``h = u sigmoid(z) sigmoid(-z)``, one batched product per slice.
        """
        k, c = self.k, self.c
        w = theta[: k * c].view(k, c).to(self.device, torch.float32)
        b = theta[k * c :].to(self.device, torch.float32)
        loss = torch.zeros(k, dtype=torch.float64, device=self.device)
        gw = torch.zeros(k, c, dtype=torch.float64, device=self.device)
        gb = torch.zeros(k, dtype=torch.float64, device=self.device)
        hess = torch.zeros(k, c + 1, c + 1, dtype=torch.float64, device=self.device) if hessian else None
        for pos, x in self.train.batches(self.images, device=self.device):
            rows = slice(int(pos[0]) * self.spatial, (int(pos[-1]) + 1) * self.spatial)
            x = x.permute(0, 2, 3, 1).reshape(-1, c)  # a view when the split is channels-last
            z = torch.addmm(b, x, w.t())
            u, v = self.u[rows], self.v[rows]
            loss += (u * F.softplus(-z) + v * z).sum(0, dtype=torch.float64)
            sig = torch.sigmoid(z)
            if hessian:
                xa = torch.cat([x, torch.ones(len(x), 1, device=self.device)], 1)  # m x (C+1)
                h = (u * sig * (1 - sig)).t()  # K x m
                hess += torch.matmul(xa.t().unsqueeze(0) * h.unsqueeze(1), xa).double()
            r = sig.mul_(u).sub_(u).add_(v)
            gw += (r.t() @ x).double()
            gb += r.sum(0, dtype=torch.float64)
        scale = 1.0 / self.positions
        grad = torch.cat([gw.flatten(), gb]).mul_(scale).cpu()
        if hessian:
            return loss.cpu() * scale, grad, hess.cpu() * scale
        return loss.cpu() * scale, grad


#: Newton's method is used while a full Hessian pass (positions x (C+1)^2 x K multiply-adds) stays below this
NEWTON_FLOPS = 2e10
NEWTON_MAX_ITER = 50
#: ... and while there are at least this many train positions per parameter: with fewer, the positions are
#: often separable, the loss has no finite minimiser and Newton's steps only grow the weights
NEWTON_MIN_POSITIONS = 20
#: L-BFGS iterations of a Method A solve (layers with many channels): there the train positions are often
#: (nearly) separable, the loss has no finite minimiser and the gradient tolerance is not reached
LBFGS_MAX_ITER = 100


def newton(fun: BalancedBCE, gtol: float = GTOL, max_iter: int = NEWTON_MAX_ITER) -> Solution:
    """Each concept's damped Newton iterations from zero, with its own backtracking (Armijo) step.

    Concepts are independent, so each one stops when its own largest |gradient| entry is ``<= gtol`` (its
    row of the result is then frozen) and the line search halves the step of each concept separately.
    A concept whose loss no longer decreases at float64 resolution stops too.
    """
    k, c = fun.k, fun.c
    theta = torch.zeros(k, c + 1, dtype=torch.float64)  # per concept: weights then bias

    def flat(t):
        return torch.cat([t[:, :c].flatten(), t[:, c]])

    def rows(g):
        return torch.cat([g[: k * c].view(k, c), g[k * c :, None]], 1)

    f, g, h = fun.evaluate(flat(theta), hessian=True)
    g = rows(g)
    active = g.abs().amax(1) > gtol
    it = evals = 1
    while active.any() and it <= max_iter:
        eye = torch.eye(c + 1, dtype=torch.float64) * 1e-10 * h.diagonal(0, 1, 2).abs().amax(1).clamp_min(1e-12)[:, None, None]
        d = -torch.linalg.solve(h + eye, g.unsqueeze(2)).squeeze(2)
        d[~active] = 0
        slope = (g * d).sum(1)
        t = torch.ones(k, dtype=torch.float64)
        pending = active.clone()
        at_full_step = None
        for trial_no in range(30):
            trial = theta + t[:, None] * d
            if trial_no == 0:  # the full Newton step is usually accepted: evaluate its Hessian at once
                at_full_step = fun.evaluate(flat(trial), hessian=True)
                ft = at_full_step[0]
            else:
                ft, _ = fun.evaluate(flat(trial))
            evals += 1
            ok = pending & (ft <= f + 1e-4 * t * slope)
            theta[ok] = trial[ok]
            pending &= ~ok
            if not pending.any():
                break
            t[pending] *= 0.5
        active &= ~pending  # no decrease left for these concepts
        if trial_no == 0:
            f, g, h = at_full_step
        else:
            f, g, h = fun.evaluate(flat(theta), hessian=True)
            evals += 1
        g = rows(g)
        active &= g.abs().amax(1) > gtol
        it += 1
    return Solution(flat(theta), float(f.sum()), it - 1, evals, float(g.abs().max()), bool((g.abs().amax(1) <= gtol).all()))


def train_segmentation_probes(
    train: SplitData, targets: torch.Tensor, val: SplitData, val_eval: EvalSet, *,
    solver: str = "reference", loss: str = "balanced_bce", lr: float = 1e-2, epochs: int = 30, patience: int = 5,
    batch_size: int = 32, seed: int = 0, device: str | torch.device = "cpu", alpha: torch.Tensor | None = None,
    gtol: float = GTOL, max_iter: int | None = None,
) -> SegProbes:
    """Train K concept probes jointly (one ``C -> K`` convolution) with the chosen ``solver``.

    ``solver="reference"`` (default): ``train_segmentation_probes_reference`` (Adam, early stopping on
    val set IoU; ``gtol`` and ``max_iter`` are not used). ``solver="lbfgs"``: ``solve_segmentation_probes``,
    the optimum of the loss to ``gtol`` (``lr``, ``epochs``, ``patience``, ``batch_size`` are not used).
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    for name, split in (("train", train), ("val", val)):
        if not isinstance(split, SplitData):
            raise TypeError(f"{name} must be a SplitData (a layer's activations of one split, "
                            f"conceptsim.SplitData), got {type(split).__name__}")
    if solver == "lbfgs":
        return solve_segmentation_probes(train, targets, val, val_eval, loss=loss, device=device, alpha=alpha,
                                         gtol=gtol, max_iter=max_iter)
    return train_segmentation_probes_reference(train, targets, val, val_eval, loss=loss, lr=lr, epochs=epochs,
                                               patience=patience, batch_size=batch_size, seed=seed, device=device,
                                               alpha=alpha)


def train_probes_and_control(
    train: SplitData, targets: torch.Tensor, val: SplitData, val_eval: EvalSet, train_order: np.ndarray,
    val_order: np.ndarray, **kwargs,
) -> tuple[SegProbes, SegProbes]:
    """Method A's probes and their shuffled-label control: the same probes trained on the targets and
    judged on the val masks of other images (``train_order``, ``val_order``: permutations of the images).

    With the reference solver both are one run, one ``C -> 2K`` convolution: its mini-batches depend only on
    the seed, so each half sees the batches of its own run, and concepts share no parameters and stop each
    on its own val IoU, so the run is the two runs in one pass over the activations (products of ``2K``
    rows instead of two of ``K``; the weights equal the separate runs' up to the products' rounding). The
    fast solver solves them apart (its line search is shared by the concepts of a run).
    ``kwargs``: those of :func:`train_segmentation_probes` (without ``alpha``).
    """
    if "alpha" in kwargs:
        raise ValueError("train_probes_and_control weights each half by its own targets; do not pass alpha")
    if kwargs.get("solver", "reference") != "reference":
        shuffled_eval = val_eval.with_masks(val_eval.masks[torch.from_numpy(np.asarray(val_order))])
        return (train_segmentation_probes(train, targets, val, val_eval, **kwargs),
                train_segmentation_probes(train, targets[torch.from_numpy(np.asarray(train_order))], val,
                                          shuffled_eval, **kwargs))
    k = targets.shape[1]
    # each half's class weights from its own targets (the shuffled copy only for their sum, in its own order)
    alpha = torch.cat([foreground_alpha(targets), foreground_alpha(targets[torch.from_numpy(np.asarray(train_order))])])
    both = ControlTargets(targets, train_order)
    joint = train_segmentation_probes(train, both, val, val_eval.with_control(val_order), alpha=alpha, **kwargs)
    return joint.part(slice(0, k)), joint.part(slice(k, 2 * k))


def solve_segmentation_probes(
    train: SplitData, targets: torch.Tensor, val: SplitData, val_eval: EvalSet, *, loss: str = "balanced_bce",
    device: str | torch.device = "cpu", alpha: torch.Tensor | None = None, gtol: float = GTOL, max_iter: int | None = None,
) -> SegProbes:
    """The K probes at the optimum of the balanced BCE on the whole train split (:class:`BalancedBCE`).

    Solver: per-concept Newton (:func:`newton`) while a Hessian pass costs at most :data:`NEWTON_FLOPS` and
    there are :data:`NEWTON_MIN_POSITIONS` positions per parameter (layers with few channels, where the loss
    is ill-conditioned and first-order methods crawl); otherwise
    full-batch L-BFGS on all concepts at once (:func:`conceptsim.concepts.optimum.minimise`). Start:
    ``w = 0, b = 0``, already the optimum of the intercept-only probe (the balanced weights make
    ``sigmoid(b) = 1/2``). Stop: largest |gradient| entry ``<= gtol`` (per concept for Newton; of the summed
    per-concept mean losses for L-BFGS), or the iteration cap (``max_iter``; default :data:`NEWTON_MAX_ITER`
    for Newton, :data:`LBFGS_MAX_ITER` for L-BFGS). Where the train positions are (nearly) separable -- many
    channels, few positions -- the loss has no finite minimiser and the cap decides where the weights stop.
    The val set IoU is computed once, at the solution. Only the convex ``balanced_bce`` loss is solved this way.
    """
    if loss != "balanced_bce":
        raise ValueError(f"solver 'lbfgs' solves the convex balanced_bce loss; use solver='reference' for loss {loss!r}")
    k, c = targets.shape[1], train.c
    alpha = foreground_alpha(targets) if alpha is None else alpha
    fun = BalancedBCE(train, targets, alpha, device)
    if fun.positions * (c + 1) ** 2 * k <= NEWTON_FLOPS and fun.positions >= NEWTON_MIN_POSITIONS * (c + 1):
        sol = newton(fun, gtol=gtol, max_iter=NEWTON_MAX_ITER if max_iter is None else max_iter)
    else:
        sol = minimise(fun, torch.zeros(k * c + k, dtype=torch.float64), gtol=gtol,
                       max_iter=LBFGS_MAX_ITER if max_iter is None else max_iter)
    w = sol.theta[: k * c].view(k, c).float()
    b = sol.theta[k * c :].float()
    val_iou = np.nan_to_num(set_iou_from_counts(*split_counts(w.to(device), b.to(device), val, val_eval, device)), nan=0.0)
    return SegProbes(w.numpy(), b.numpy(), np.full(k, sol.iterations), val_iou, sol.iterations, [],
                     loss=fun.evaluate(sol.theta)[0].numpy(), grad_max=sol.grad_max)


class ControlTargets:
    """The soft targets of K concepts and of their shuffled-label control as ``n x 2K x h x w`` targets, held
    once: the control's targets of image ``i`` are the concepts' targets of image ``order[i]``.

    :class:`BalancedBCEGradient` reads them image by image (:meth:`image`) or builds its batch layout half
    by half (:meth:`channels_last`), so training the probes and their control in one run makes no joint
    copy of the targets; :meth:`materialise` makes the joint tensor for autograd's losses.
    """

    def __init__(self, targets: torch.Tensor, order: np.ndarray):
        order = image_permutation(order, len(targets), "train images")
        self.targets, self.order = targets, order
        self.k = targets.shape[1]
        self._flat, self._order = targets.reshape(len(targets), self.k, -1), order.tolist()  # per-step reads
        self.shape = (targets.shape[0], 2 * self.k, *targets.shape[2:])
        self.dtype = targets.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def halves(self, concepts: np.ndarray | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``concepts`` (increasing indices into the 2K; None: all) as the probes' and the control's rows of
        the targets (None: all of that half), for :meth:`image`."""
        if concepts is None:
            return None, None
        concepts = np.asarray(concepts)
        own, ctl = concepts[concepts < self.k], concepts[concepts >= self.k] - self.k
        return (None if len(own) == self.k else torch.from_numpy(own),
                None if len(ctl) == self.k else torch.from_numpy(ctl))

    def image(self, i: int, halves: tuple, out: torch.Tensor) -> torch.Tensor:
        """Image ``i``'s targets of the concepts of ``halves`` (:meth:`halves`) into ``out`` (``K' x (h w)``,
        converted to its dtype)."""
        own, ctl = self._flat[i], self._flat[self._order[i]]
        if halves[0] is not None:
            own = own[halves[0]]
        if halves[1] is not None:
            ctl = ctl[halves[1]]
        rows = own.shape[0]
        out[:rows].copy_(own)
        out[rows:].copy_(ctl)
        return out

    def channels_last(self, concepts: np.ndarray | None) -> torch.Tensor:
        """The targets of ``concepts`` (increasing indices into the 2K; None: all) as ``n x (h w) x K'``, made
        half by half (no joint copy on the way)."""
        n, hw = self.shape[0], int(np.prod(self.shape[2:]))
        idx = np.arange(2 * self.k) if concepts is None else np.asarray(concepts)
        own, ctl = torch.from_numpy(idx[idx < self.k]), torch.from_numpy(idx[idx >= self.k] - self.k)
        src = self.targets.reshape(n, self.k, hw)
        out = torch.empty((n, hw, len(idx)), dtype=self.dtype)
        out[:, :, : len(own)] = src[:, own].transpose(1, 2)
        out[:, :, len(own) :] = src[torch.from_numpy(self.order)[:, None], ctl[None, :]].transpose(1, 2)
        return out

    def materialise(self) -> torch.Tensor:
        """The joint ``n x 2K x h x w`` tensor."""
        return torch.cat([self.targets, self.targets[torch.from_numpy(self.order)]], dim=1)


class BalancedBCEGradient:
    """The balanced BCE's gradient in the logits, per position, for the reference solver's mini-batches.

    For soft targets ``t`` and weights ``a`` (positive) and ``1 - a`` (negative), the gradient of
    ``a t softplus(-z) + (1-a)(1-t) softplus(z)`` in ``z`` is ``A sigmoid(z) - P`` with the per-element
    coefficients ``A = (1-a) + (2a-1) t`` and ``P = a t`` (``a`` computed as PyTorch's backward does,
    ``(1-a) pw`` with ``pw = a / (1-a)``). For batches the targets are held once more, in their own precision
    (float16 from the store; from :class:`ControlTargets` half by half), for the concepts still training
    (:meth:`select` rebuilds them when concepts freeze), as ``n x (h w) x K`` (a batch's rows are a gather of
    whole images in the ``(B h w) x K`` order of its logits). When ``per_image`` (:meth:`step`'s per-image
    products) each image's rows of the concepts still training are read from the targets given (a tensor or
    :class:`ControlTargets`) at each step, which holds no copy. ``A`` and ``P`` are formed per batch or image,
    in float32.
    """

    def __init__(self, targets: torch.Tensor | ControlTargets, alpha: torch.Tensor, device: str | torch.device = "cpu",
                 per_image: bool = False):
        self.targets, self.alpha, self.device, self.per_image = targets, alpha, device, per_image
        self.select(np.arange(targets.shape[1]))

    def select(self, concepts: np.ndarray) -> None:
        """Keep the targets and weights of ``concepts`` only (in that order; per image: increasing order, read
        from the held targets at each step, so no copy of them is made)."""
        concepts = np.asarray(concepts)
        n, k = self.targets.shape[0], len(concepts)
        every = k == self.targets.shape[1] and bool((concepts == np.arange(k)).all())
        if self.per_image:
            self.rows = None if every else torch.from_numpy(concepts)
            if isinstance(self.targets, ControlTargets):
                self.halves = self.targets.halves(None if every else concepts)
        elif isinstance(self.targets, ControlTargets):
            self.t = self.targets.channels_last(None if every else concepts).to(self.device)
        else:
            t = (self.targets if every else self.targets[:, torch.from_numpy(concepts)]).to(self.device)
            self.t = t.permute(0, 2, 3, 1).reshape(n, -1, k).contiguous()
        a = self.alpha[torch.from_numpy(concepts).to(self.alpha.device)].to(self.device).float()
        a = a.view(-1, 1) if self.per_image else a.view(1, -1)
        wt = 1 - a
        self.pos_coef = wt * (a / wt)  # P = pos_coef t
        self.base, self.slope = wt, self.pos_coef - wt  # A = base + slope t

    def _coefficients(self, t: torch.Tensor, fresh: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``A`` and ``P`` of targets ``t``; ``fresh``: ``t`` is a float32 copy of its own, scaled in place."""
        if not fresh:
            t = t.to(torch.float32, copy=True)  # never a view of the held targets: it is scaled in place below
        return torch.addcmul(self.base, t, self.slope), t.mul_(self.pos_coef)

    def _image_coefficients(self, i: int, hw: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_coefficients` of image ``i``'s targets of the selected concepts (``K' x (h w)``)."""
        if isinstance(self.targets, ControlTargets):
            k = self.targets.shape[1] if self.rows is None else len(self.rows)
            return self._coefficients(self.targets.image(i, self.halves, torch.empty((k, hw), dtype=torch.float32)),
                                     fresh=True)
        own = self.targets[i].reshape(self.targets.shape[1], -1)
        return self._coefficients(own if self.rows is None else own[self.rows])

    def step(self, w: torch.Tensor, b: torch.Tensor, pos: np.ndarray, x: torch.Tensor | None = None,
             images: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients of the batch's mean loss (summed over concepts) in ``w`` (``K x C``) and ``b``.

        The batch is either ``x`` (``B x C x h x w`` for the positions ``pos``; channels-last makes its
        ``(B h w) x C`` matrix a view) or, when built ``per_image``, read in place image by image from
        ``images`` (the split's ``n x (h w) x C`` matrices, :meth:`SplitData.image_matrices`): each image's
        block is then read once from memory for the forward product and again from cache for the backward
        one, no batch is gathered, and the logits are computed as ``K x (h w)`` (the faster operand order
        for few concepts).
        """
        k = w.shape[0]
        if not self.per_image:
            xm = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
            idx = torch.from_numpy(np.asarray(pos)).to(self.device)
            coef, offset = self._coefficients(self.t[idx].view(-1, k))
            r = torch.sigmoid(torch.addmm(b, xm, w.t()))
            r.mul_(coef).sub_(offset)
            scale = 1.0 / r.shape[0]
            return r.t().mm(xm).mul_(scale), r.sum(0).mul_(scale)
        gw = torch.zeros_like(w)
        gb = torch.zeros_like(b)
        bc = b[:, None]
        for i in np.asarray(pos).tolist():
            xi = images[i]
            coef, offset = self._image_coefficients(i, xi.shape[0])
            r = torch.sigmoid(torch.addmm(bc, w, xi.t()))  # K x (h w)
            r.mul_(coef).sub_(offset)
            gw.addmm_(r, xi)
            gb.add_(r.sum(1))
        scale = 1.0 / (len(pos) * images.shape[1])
        return gw.mul_(scale), gb.mul_(scale)


#: an image's matrix (positions x channels, float32 bytes) from which the reference solver reads each image in
#: place rather than gathering batches: large enough that per-image products cost no more than one batched one
IN_PLACE_IMAGE_BYTES = 1 << 17


def train_segmentation_probes_reference(
    train: SplitData, targets: torch.Tensor, val: SplitData, val_eval: EvalSet, *,
    loss: str = "balanced_bce", lr: float = 1e-2, epochs: int = 30, patience: int = 5,
    batch_size: int = 32, seed: int = 0, device: str | torch.device = "cpu", alpha: torch.Tensor | None = None,
    analytic_gradient: bool = True,
) -> SegProbes:
    """Train K concept probes jointly (one ``C -> K`` convolution) with per-concept early stopping.

    Parameters
    ----------
    train, val : standardised activations of the train and validation splits.
    targets : soft targets ``n_train x K x h x w`` aligned with ``train`` (float16 is fine).
    val_eval : validation masks on the evaluation grid, for early stopping on val set IoU.
    loss : ``balanced_bce``, ``net2vec_soft`` or ``dice`` (``probe_loss`` of this module).
        alpha : override of the class weights (default from ``targets``).
    lr, epochs, patience, batch_size, seed, device : optimisation settings (methods.md defaults).
    analytic_gradient : for ``balanced_bce`` (with every ``alpha < 1``), compute each batch's gradient in
        closed form (:class:`BalancedBCEGradient`: one matrix product forward, one backward, three
        element-wise passes) instead of autograd through :func:`probe_loss`. The same gradient up to float32
        rounding; the other losses always use autograd.

    Returns
    -------
    SegProbes with each concept's best-val-IoU weights.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    k, c = targets.shape[1], train.c
    if isinstance(targets, ControlTargets) and alpha is None:
        raise ValueError("targets with their control (ControlTargets) need the class weights alpha")
    alpha = (foreground_alpha(targets) if alpha is None else alpha).to(device)
    analytic = analytic_gradient and loss == "balanced_bce" and bool((alpha < 1).all())
    images = train.image_matrices() if analytic and torch.device(device).type == "cpu" else None
    if images is not None and images.shape[1] * c * 4 < IN_PLACE_IMAGE_BYTES:
        images = None
    if isinstance(targets, ControlTargets) and not analytic:
        targets = targets.materialise()  # autograd's losses read the joint tensor
    grad = BalancedBCEGradient(targets, alpha, device, per_image=images is not None) if analytic else None
    with deterministic(seed, device) as gen:
        w = torch.zeros(k, c, device=device, requires_grad=not analytic)
        b = torch.zeros(k, device=device, requires_grad=not analytic)
        # on CPU the same update without torch.optim's import of torch._dynamo (optimum.Adam)
        opt = Adam([w, b], lr=lr) if torch.device(device).type == "cpu" else torch.optim.Adam([w, b], lr=lr)
        best_w, best_b = w.detach().clone(), b.detach().clone()
        best = np.full(k, -np.inf)
        best_epoch = np.zeros(k, dtype=int)
        active = np.ones(k, dtype=bool)
        history, epoch = [], 0
        n_active = -1
        while epoch < epochs and active.any():
            epoch += 1
            if active.sum() != n_active:  # compact onto the concepts still training
                n_active = int(active.sum())
                act = np.flatnonzero(active)
                rows = torch.from_numpy(act).to(device)
                everything = n_active == k
                if everything:
                    t_act, a_act, ev_act = targets, alpha, val_eval
                else:
                    a_act, ev_act = alpha[rows], val_eval.subset(act)
                    if grad is None:
                        t_act = targets[:, torch.from_numpy(act)]
                    else:
                        grad.select(act)
            batches = ((pos, None) for pos in train.batch_positions(batch_size, gen)) if images is not None else \
                train.batches(batch_size, gen, device)
            for pos, x in batches:
                if grad is not None:
                    gw, gb = grad.step(w if everything else w[rows], b if everything else b[rows], pos, x, images)
                    if not everything:  # frozen rows get zero gradient (they are never read again)
                        gw = torch.zeros_like(w).index_copy_(0, rows, gw)
                        gb = torch.zeros_like(b).index_copy_(0, rows, gb)
                    w.grad, b.grad = gw, gb
                    opt.step()
                    continue
                opt.zero_grad()
                wa, ba = (w, b) if everything else (w[rows], b[rows])
                probe_loss(probe_logits(wa, ba, x), t_act[pos].to(device), a_act, loss).backward()
                opt.step()
            wa, ba = (w.detach(), b.detach()) if everything else (w.detach()[rows], b.detach()[rows])
            iou = np.zeros(k)
            iou[act] = np.nan_to_num(set_iou_from_counts(*split_counts(wa, ba, val, ev_act, device)), nan=0.0)
            history.append(np.where(active, iou, np.nan))
            better = active & (iou > best)
            idx = torch.from_numpy(np.flatnonzero(better)).to(device)
            best_w[idx], best_b[idx] = w.detach()[idx], b.detach()[idx]
            best[better], best_epoch[better] = iou[better], epoch
            active &= (epoch - best_epoch) < patience
    return SegProbes(best_w.cpu().numpy(), best_b.cpu().numpy(), best_epoch, best, epoch, history)


def train_segmentation_probes_sequential(
    train: SplitData, targets: torch.Tensor, val: SplitData, val_eval: EvalSet, **kwargs
) -> SegProbes:
    """The same probes trained one concept at a time (benchmark baseline; same arguments and result)."""
    alpha = kwargs.pop("alpha", None)
    alpha = foreground_alpha(targets) if alpha is None else alpha
    parts = [
        train_segmentation_probes(train, targets[:, [j]], val, val_eval.subset([j]), alpha=alpha[[j]], **kwargs)
        for j in range(targets.shape[1])
    ]
    return SegProbes(
        weight=np.concatenate([p.weight for p in parts]),
        bias=np.concatenate([p.bias for p in parts]),
        best_epoch=np.concatenate([p.best_epoch for p in parts]),
        val_iou=np.concatenate([p.val_iou for p in parts]),
        epochs_run=max(p.epochs_run for p in parts),
        history=[p.history for p in parts],
    )
