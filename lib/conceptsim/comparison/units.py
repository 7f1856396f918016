"""Label-free unit matching: "best buddies" of two layers' units (Rosetta Neurons, convergent learning).

Dravid et al. (ICCV 2023, "Rosetta Neurons") and Li et al. (ICLR 2016, "Convergent learning") compare two
networks without labels by matching *units*: every unit's activation map over the same test images is a
vector, two units are compared by the Pearson correlation of these vectors, and a pair of units that are
each other's most correlated unit (mutual nearest neighbours) is a pair of **best buddies**.

Spatial sample. Layers of different models have different grids (the default study stores 32 x 32 down to
7 x 7 or less); the maps of every layer are area-pooled to a common ``4 x 4`` grid (:data:`SPATIAL_GRID`),
the same pooled activations as the ``cka_grid4`` baseline. A 4 x 4 grid is reached by every probed layer
without upsampling (no unit's map is invented between cells), keeps where in the image a unit responds
(what distinguishes an "upper-left sky" unit from a "lower grass" unit), and makes the comparison of two
layers of C_A and C_B units a product of a ``C_A x S`` and an ``S x C_B`` matrix with S = 16 x images:
with the stage's activations already pooled for ``cka_grid4``, unit matching reads nothing more.

Image sample. At most :data:`MAX_IMAGES` = 64 test images, evenly spaced over the split, enter (S = 1024
samples per unit). The cost is two products per layer pair (the pair and its permuted-image control):
``4 S (sum of units)^2 / 2`` flops, about 5.6e11 for the default study's 100-104 layers of about 16,500
live units, some 7 s of CPU per dataset at about 100 GFLOP/s per core, i.e. float32 products at the
core's peak (two threads of :func:`batched_matches`, beside the stage's other passes from the moment the
grid-4 pass is done, see :func:`conceptsim.comparison.stage.start_label_free`); all test images (up to
120) would double that. The control's product is mostly replaced by an exact-integer int8 product with a
rigorous error bound (:func:`screened_share`, same shares as the float32 product), about a fifth less CPU
for unit matching on the default study. 64 images still
make a correlation of 0.38 significant at ``alpha = 1e-3``, well below the correlations of matched units.

Significance. With S samples two unrelated units still have a best partner; a best-buddy pair counts only
when its correlation exceeds :func:`significance_threshold` (one-sided Fisher z at ``alpha``, with the
number of *images* as the sample size, since the cells of one image are not independent).

Per layer pair the stage reports (``L x L`` matrices, rows like the CKA ones):

- ``units_bb``: the share of units in significant best-buddy pairs, ``n_bb / min(C_A, C_B)`` (1 for a
  layer with itself); its ``control`` is the same share with B's test images permuted (chance);
- ``units_bb_corr``: the mean correlation of those pairs (NaN without any).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from scipy.stats import norm

from conceptsim.comparison.similarity import int8_dot_products

SPATIAL_GRID = 4
#: at most this many test images enter unit matching, evenly spaced over the test split (cost: see module)
MAX_IMAGES = 64
ALPHA = 1e-3
UNIT_METHODS = ("units_bb", "units_bb_corr")


def significance_threshold(n_images: int, alpha: float = ALPHA) -> float:
    """Smallest correlation significant at one-sided level ``alpha`` for ``n_images`` samples (Fisher z)."""
    if n_images < 4:
        return float("inf")
    return float(np.tanh(norm.ppf(1.0 - alpha) / np.sqrt(n_images - 3)))


def unit_samples(pooled: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """Standardised unit maps: ``n x C x h x w`` (or ``n x C x P``) -> ``(n * P) x C`` float32 and live units.

    Every column has mean 0 and unit variance over all images and cells (``1 / S`` normalisation), so
    ``Z_A^T Z_B / S`` is the correlation of every unit pair. A unit that is constant over the sample
    (a dead unit) is a zero column and is marked not live.
    """
    x = torch.as_tensor(pooled).double()
    n, c = x.shape[:2]
    z = x.reshape(n, c, -1).transpose(1, 2).reshape(-1, c)
    z = z - z.mean(dim=0, keepdim=True)
    sd = z.pow(2).mean(dim=0).sqrt()
    live = sd > 1e-8 * max(float(x.abs().max()), 1e-30)
    z = torch.where(live, z / torch.where(live, sd, torch.ones_like(sd)), torch.zeros_like(z))
    return z.float(), live.numpy()


def unit_correlations(za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
    """``C_A x C_B`` float32 correlations of standardised unit samples (:func:`unit_samples`) over the same rows."""
    if za.shape[0] != zb.shape[0]:
        raise ValueError(f"unit samples must cover the same images and cells, got {za.shape[0]} and {zb.shape[0]} rows")
    return (za.T @ zb) / za.shape[0]


def best_buddies(corr: np.ndarray | torch.Tensor, min_corr: float = -np.inf, live_a: np.ndarray | None = None,
                 live_b: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mutual nearest neighbours of a ``C_A x C_B`` correlation matrix.

    Unit ``i`` of A and ``j`` of B are best buddies when ``j`` is ``i``'s most correlated unit of B and ``i``
    is ``j``'s most correlated unit of A (ties go to the lower index) and their correlation is at least
    ``min_corr``. Units not live (constant) take part in nothing.

    Returns
    -------
    ``(units of A, units of B)``, sorted by A's unit.
    """
    c = torch.as_tensor(corr).clone()
    if c.ndim != 2:
        raise ValueError(f"corr must be a C_A x C_B matrix, got shape {tuple(c.shape)}")
    if c.numel() == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    c[~torch.isfinite(c)] = -torch.inf
    if live_a is not None:
        c[torch.from_numpy(~np.asarray(live_a, dtype=bool))] = -torch.inf
    if live_b is not None:
        c[:, torch.from_numpy(~np.asarray(live_b, dtype=bool))] = -torch.inf
    best_b = c.argmax(dim=1)
    best_a = c.argmax(dim=0)
    ia = torch.arange(c.shape[0])
    value = c[ia, best_b]
    mutual = (best_a[best_b] == ia) & torch.isfinite(value) & (value >= min_corr)
    return ia[mutual].numpy(), best_b[mutual].numpy()


def match_summary(corr: np.ndarray | torch.Tensor, min_corr: float, live_a: np.ndarray,
                  live_b: np.ndarray) -> tuple[float, float, int]:
    """``(share, mean correlation, count)`` of the significant best buddies of one layer pair."""
    ia, ib = best_buddies(corr, min_corr, live_a, live_b)
    smaller = min(int(np.sum(live_a)), int(np.sum(live_b)))
    if smaller == 0:
        return float("nan"), float("nan"), 0
    mean = float(torch.as_tensor(corr)[ia, ib].double().mean()) if len(ia) else float("nan")
    return len(ia) / smaller, mean, len(ia)


class UnitMatcher:
    """Collects every layer's pooled unit maps on the same images, then matches every pair of layers.

    Parameters
    ----------
    n_layers : layers of the study (the order of :attr:`StudyOutputs.layers`).
    n_images : test images of the study; ``min(n_images, max_images)`` of them, evenly spaced, are used.
    seed : seeds the permutation of B's images behind the chance control.
    """

    def __init__(self, n_layers: int, n_images: int, *, max_images: int = MAX_IMAGES, seed: int = 0,
                 alpha: float = ALPHA) -> None:
        self.n_images = int(min(n_images, max_images))
        self.images = np.unique(np.linspace(0, n_images - 1, self.n_images).round().astype(np.int64))
        self.n_images = len(self.images)
        self.samples: list[torch.Tensor | None] = [None] * n_layers
        self.live: list[np.ndarray | None] = [None] * n_layers
        self.threshold = significance_threshold(self.n_images, alpha)
        self.perm = np.random.default_rng([int(seed), 25]).permutation(self.n_images)

    def add_layer(self, li: int, pooled: torch.Tensor) -> None:
        """Layer ``li``'s activations pooled to the common grid, ``n_test x C x g x g`` (or flattened
        ``n_test x (C * g * g)`` with ``g = SPATIAL_GRID``)."""
        x = torch.as_tensor(pooled)[torch.from_numpy(self.images)]
        if x.ndim == 2:
            x = x.reshape(len(x), -1, SPATIAL_GRID * SPATIAL_GRID)
        self.samples[li], self.live[li] = unit_samples(x)

    def results(self, workers: int = 1, keep: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """``L x L`` matrices ``units_bb``, ``units_bb_control``, ``units_bb_corr``, ``units_bb_count``: the
        same matches as :meth:`results_pairwise` with dead units dropped once (:func:`batched_matches`), the
        layers A shared by ``workers`` threads (the same values whatever their number). ``keep`` (``L x L``
        bool, symmetric): only those layer pairs are matched, the others stay NaN (default: all)."""
        self._check_complete()
        if not all(bool(torch.isfinite(z).all()) for z in self.samples):
            return self.results_pairwise(keep)  # non-finite samples: the per-pair path masks them
        return batched_matches(self.samples, self.live, self._permuted_rows(), self.threshold, workers=workers,
                               keep=keep)

    def results_pairwise(self, keep: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """:meth:`results` one layer pair at a time (two products and :func:`match_summary` per pair): the
        straightforward reference of the batched path."""
        self._check_complete()
        nl = len(self.samples)
        keep = _pair_keep(keep, nl)
        out = {k: np.full((nl, nl), np.nan) for k in UNIT_MATRICES}
        rows = self._permuted_rows()
        permuted = [z[rows] for z in self.samples]
        for a in range(nl):
            for b in range(a, nl):
                if not keep[a, b]:
                    continue
                corr = unit_correlations(self.samples[a], self.samples[b])
                share, mean, count = match_summary(corr, self.threshold, self.live[a], self.live[b])
                ctl = unit_correlations(self.samples[a], permuted[b])
                chance, _, _ = match_summary(ctl, self.threshold, self.live[a], self.live[b])
                for key, v in (("units_bb", share), ("units_bb_corr", mean), ("units_bb_count", count),
                               ("units_bb_control", chance)):
                    out[key][a, b] = out[key][b, a] = v
        return out

    def _permuted_rows(self) -> torch.Tensor:
        """Sample rows of B's images in the order of the chance control's image permutation (all grid cells
        of each image)."""
        cells = SPATIAL_GRID * SPATIAL_GRID
        return torch.from_numpy((self.perm[:, None] * cells + np.arange(cells)[None, :]).ravel())

    def _check_complete(self) -> None:
        missing = [li for li, s in enumerate(self.samples) if s is None]
        if missing:
            raise ValueError(f"unit maps of layers {missing} were never added")


#: the matrices of :meth:`UnitMatcher.results`
UNIT_MATRICES = ("units_bb", "units_bb_control", "units_bb_corr", "units_bb_count")


def _pair_keep(keep: np.ndarray | None, nl: int) -> np.ndarray:
    """The ``nl x nl`` bool matrix of matched layer pairs (all without ``keep``); it must be symmetric."""
    if keep is None:
        return np.ones((nl, nl), dtype=bool)
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != (nl, nl) or not np.array_equal(keep, keep.T):
        raise ValueError(f"keep must be a symmetric {nl} x {nl} bool matrix of layer pairs, got shape {keep.shape}")
    return keep


def batched_matches(samples: list[torch.Tensor], live: list[np.ndarray], permuted_rows: torch.Tensor,
                    threshold: float, *, workers: int = 1, screen: bool = True,
                    keep: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Significant best buddies of every pair of layers ``a <= b`` (see :meth:`UnitMatcher.results`).

    Dead units take part in nothing, so they are dropped once, before the products (order kept: ties still
    go to the lower index), which leaves no masking, copying or finiteness check per pair: per pair two
    products (the pair and its permuted-image control) of contiguous live-unit samples, two ``argmax`` and
    one comparison. (One product of A with all layers ``b >= a`` at once was measured slower: the products
    are compute-bound either way, and the wide blocks add memory traffic.)

    With ``screen`` the permuted-image control is decided by :func:`screened_share` (the same values as
    the float32 products, which it falls back to where its bound cannot decide).

    ``workers`` Python threads share the layers A, costliest first (torch releases the GIL in the products;
    each thread uses the caller's torch thread count). Every pair is computed by the same operations
    whichever thread takes it, and each writes only its own cells: the result does not depend on ``workers``.

    ``keep`` (``L x L`` bool, symmetric): only those pairs are matched; the others stay NaN (default: all).
    """
    nl = len(samples)
    keep = _pair_keep(keep, nl)
    out = {k: np.full((nl, nl), np.nan) for k in UNIT_MATRICES}
    z = [s[:, torch.from_numpy(np.asarray(lv, dtype=bool))].contiguous() for s, lv in zip(samples, live)]
    zt = [t.T.contiguous() for t in z]  # C x S: A's side of the products
    n_rows = samples[0].shape[0] if nl else 0
    # the chance control reports only a share, and few of its units can reach the threshold: an int8 screen
    # with a rigorous error bound decides it (:func:`screened_share`), the float32 product only where it cannot
    # (only where this CPU has int8 dot-product instructions: elsewhere torch._int_mm is slower than float32)
    codes = [int8_codes(t) for t in z] if screen and n_rows <= INT8_MAX_ROWS and int8_dot_products() else None
    # B's permuted samples: with the screen as C x S rows (it gathers units), the S x C copy of the float32
    # product (the same bytes as ``z[b][permuted_rows]``) made only for a pair that needs it
    permuted_t = [t[:, permuted_rows].contiguous() for t in zt] if codes else None
    permuted = None if codes else [t[permuted_rows] for t in z]
    codes_t = [UnitCodes(c.q.T.contiguous(), c.scale, c.residual, c.norm) for c in codes] if codes else None
    codes_p = [UnitCodes(c.q[permuted_rows], c.scale, c.residual, c.norm) for c in codes] if codes else None
    width = np.array([t.shape[1] for t in z], dtype=np.float64)
    cost = width * (np.triu(keep) @ width)  # products of layer A with every kept B >= A

    def layer_a(a: int, threads: int | None = None) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        for b in (b for b in range(a, nl) if keep[a, b]):
            for key, v in zip(("units_bb", "units_bb_corr", "units_bb_count"), _mutual(zt[a], z[b], n_rows, threshold)):
                out[key][a, b] = out[key][b, a] = v
            chance = (screened_share(zt[a], permuted_t[b], codes_t[a], codes_p[b], n_rows, threshold)
                      if codes and width[a] * width[b] >= SCREEN_MIN_PAIRS else None)
            if chance is None:  # no screen, or one it could not decide: the float32 product
                zb = permuted[b] if permuted is not None else permuted_t[b].T.contiguous()
                chance = _mutual(zt[a], zb, n_rows, threshold)[0]
            out["units_bb_control"][a, b] = out["units_bb_control"][b, a] = chance

    order = [int(a) for a in np.argsort(-cost, kind="stable")]
    if workers <= 1 or nl < 2:
        for a in order:
            layer_a(a)
        return out
    from concurrent.futures import ThreadPoolExecutor

    threads = torch.get_num_threads()
    with ThreadPoolExecutor(int(workers)) as pool:
        for job in [pool.submit(layer_a, a, threads) for a in order]:
            job.result()
    return out


def _mutual(za_t: torch.Tensor, zb: torch.Tensor, n_rows: int, threshold: float) -> tuple[float, float, int]:
    """``(share, mean correlation, count)`` of the significant best buddies of live units ``za_t`` (``C_A x S``)
    and ``zb`` (``S x C_B``), as :func:`match_summary`."""
    if za_t.shape[0] == 0 or zb.shape[1] == 0:
        return float("nan"), float("nan"), 0
    c = (za_t @ zb) / n_rows
    best_b, best_a = c.argmax(dim=1), c.argmax(dim=0)
    ia = torch.arange(c.shape[0])
    value = c[ia, best_b]
    mutual = (best_a[best_b] == ia) & (value >= threshold)
    count = int(mutual.sum())
    mean = float(value[mutual].double().mean()) if count else float("nan")
    return count / min(c.shape), mean, count


#: unit pairs from which the screen is cheaper than the float32 product (below, its fixed cost dominates)
SCREEN_MIN_PAIRS = 5_000
#: sample rows up to which int8 codes (|q| <= 127) give integer products exact in float32 (< 2**24)
INT8_MAX_ROWS = (2**24 - 1) // (127 * 127)


class UnitCodes(NamedTuple):
    """int8 codes of standardised unit samples (:func:`int8_codes`): ``q`` (``S x C``, or ``C x S``),
    per unit the ``scale`` (float32-representable, float64), the ``residual`` norm ``|z - scale q|`` and the
    ``norm`` ``|z|`` (float64, over the S rows)."""

    q: torch.Tensor
    scale: torch.Tensor
    residual: torch.Tensor
    norm: torch.Tensor


def int8_codes(z: torch.Tensor) -> UnitCodes:
    """Per-unit symmetric int8 codes of ``S x C`` samples: ``z ~ scale * q`` with ``scale = max|z| / 127``."""
    zd = z.double()
    peak = zd.abs().amax(dim=0) if zd.shape[0] else torch.zeros(zd.shape[1], dtype=torch.float64)
    scale = torch.where(peak > 0, peak / 127, torch.ones_like(peak)).float().double()
    q = torch.round(zd / scale).clamp_(-127, 127)
    return UnitCodes(q.to(torch.int8), scale, (zd - q * scale).norm(dim=0), zd.norm(dim=0))


def screened_share(za_t: torch.Tensor, zb_t: torch.Tensor, code_a: UnitCodes, code_b: UnitCodes, n_rows: int,
                   threshold: float) -> float | None:
    """``_mutual(za_t, zb_t.T, n_rows, threshold)[0]`` (the share of significant best buddies) from int8
    products, or None where the screen cannot decide it.

    ``za_t`` and ``zb_t`` are ``C x S`` samples, ``code_a`` holds A's codes transposed (``q``: ``C_A x S``),
    ``code_b`` B's (``S x C_B``). Let
    ``c`` be the exact correlations of the float32 samples, ``c'`` the float32 products :func:`_mutual`
    decides on, and ``ĉ`` the int8 estimate. Rigorous bounds:

    - ``|ĉ_ij - c_ij| <= (e_i |b_j| + |â_i| e_j) / S`` (Cauchy-Schwarz on the code residuals ``e``), plus the
      float32 scaling of the exact integer products (relative 1e-6 at most);
    - ``|c'_ij - c_ij| <= (gamma_S + 2u) |a_i| |b_j| / S`` (any order of float32 sums, u = 2**-24).

    A row whose upper bound stays below the threshold holds no significant pair. For every other row the
    candidates of its maximum (upper bound at least the row's lower bound) are recomputed in float64, and
    likewise the candidates of the chosen column's maximum. Every decision (which unit is the maximum,
    whether it reaches the threshold) must hold by more than the bounds; when one does not (a near tie),
    the function returns None and the caller computes the float32 product, so the share is always the
    float32 path's, ties to the lower index included.
    """
    ca, cb = za_t.shape[0], zb_t.shape[0]
    if ca == 0 or cb == 0:
        return float("nan")
    n = float(n_rows)
    na, nb = float(code_a.norm.max()), float(code_b.norm.max())
    u = 2.0**-24
    gamma = n * u / (1 - n * u)
    delta = (gamma + 2 * u) * na * nb / n  # |c' - c|, also |float64 recomputation - c| (far smaller)
    slack = 1e-5 * (1 + (na + float(code_a.residual.max())) * (nb + float(code_b.residual.max())) / n)
    rho = code_a.residual * nb / n  # row part of |ĉ - c|
    kappa = code_b.residual * (na + float(code_a.residual.max())) / n  # column part
    margin = delta + slack
    # ĉ = (scale_i / S) * x with x_ij = q_i . q_j * scale_j: one pass over the products (the row scales are
    # positive, so they are applied to row maxima and to the few rows and columns read later)
    x = torch.mul(torch._int_mm(code_a.q, code_b.q), code_b.scale.float()[None, :])
    row_scale = code_a.scale / n
    row_max = x.amax(dim=1).double() * row_scale
    rows = torch.nonzero(row_max + rho + float(kappa.max()) + margin >= threshold).flatten()
    if len(rows) == 0:
        return 0.0
    # candidates of each remaining row's maximum, and their float64 correlations
    sub = x[rows].double() * row_scale[rows, None]
    lower = (sub - kappa[None, :]).amax(dim=1) - rho[rows] - margin
    ci, cj = torch.nonzero(sub + kappa[None, :] + (rho[rows] + margin)[:, None] >= lower[:, None], as_tuple=True)
    ri = rows[ci]
    exact = _pair_correlations(za_t, zb_t, ri, cj, n)
    err = delta + 1e-12  # |c' - float64 value|
    best = torch.full((len(rows),), -torch.inf, dtype=torch.float64).scatter_reduce(0, ci, exact, "amax")
    at_best = exact == best[ci]
    second = torch.full((len(rows),), -torch.inf, dtype=torch.float64).scatter_reduce(
        0, ci[~at_best], exact[~at_best], "amax")
    ties = torch.bincount(ci[at_best], minlength=len(rows)) > 1
    relevant = best > threshold - err  # rows whose maximum may reach the threshold in float32
    if bool((relevant & (ties | (best - second <= 2 * err) | (best - threshold <= err))).any()):
        return None  # a tie or near tie at a row's maximum, or a maximum too close to the threshold
    keep = at_best & relevant[ci]
    rows_s, cols_s, value_s = ri[keep], cj[keep], exact[keep]
    if len(rows_s) == 0:
        return 0.0
    # is each significant row the maximum of its column?
    col = x[:, cols_s].double() * row_scale[:, None]  # C_A x P
    col_lower = torch.maximum((col - rho[:, None]).amax(dim=0) - kappa[cols_s] - margin, value_s - delta - 1e-12)
    cand = col + rho[:, None] + (kappa[cols_s] + margin)[None, :] >= col_lower[None, :]
    cand[rows_s, torch.arange(len(rows_s))] = False
    oi, op = torch.nonzero(cand, as_tuple=True)
    other = _pair_correlations(za_t, zb_t, oi, cols_s[op], n)
    gap = value_s[op] - other
    if bool((gap.abs() <= 2 * err).any()):
        return None
    beaten = torch.zeros(len(rows_s), dtype=torch.bool)
    beaten[op[gap < 0]] = True
    return int((~beaten).sum()) / min(ca, cb)


def _pair_correlations(za_t: torch.Tensor, zb_t: torch.Tensor, ia: torch.Tensor, ib: torch.Tensor, n: float) -> torch.Tensor:
    """float64 correlations of the unit pairs ``(ia[p], ib[p])`` of ``C x S`` samples."""
    return (za_t[ia].double() * zb_t[ib].double()).sum(dim=1) / n


def depth_alignment(corr_pairs: dict[tuple[int, int], float], depths: np.ndarray, layers_a: np.ndarray,
                    layers_b: np.ndarray) -> dict[str, float]:
    """Relative-depth alignment of unit matching between two models (finding 2 without labels).

    For every layer of A, the layer of B with the largest ``units_bb`` share; the alignment error is the
    mean ``|depth(A layer) - depth(best B layer)|``, beside the same error when B's depths are assigned to
    its layers in every other order (the exact mean over all permutations is the mean absolute difference
    between A's depths and B's depths).

    Parameters
    ----------
    corr_pairs : ``{(study layer of A, study layer of B): units_bb}``.
    depths : relative depths of all study layers; layers_a, layers_b : the two models' study layers.
    """
    la, lb = np.asarray(layers_a), np.asarray(layers_b)
    errors = []
    for a in la:
        vals = np.array([corr_pairs.get((int(a), int(b)), np.nan) for b in lb], dtype=float)
        if not np.isfinite(vals).any():
            continue
        errors.append(abs(depths[a] - depths[lb[int(np.nanargmax(vals))]]))
    null = float(np.abs(depths[la][:, None] - depths[lb][None, :]).mean()) if len(la) and len(lb) else float("nan")
    return {"alignment_error": float(np.mean(errors)) if errors else float("nan"), "null_mean": null,
            "n_layers": len(errors)}
