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
120) would double that. 64 images still
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

import numpy as np
import torch
from scipy.stats import norm

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

    def results(self, workers: int = 1) -> dict[str, np.ndarray]:
        """``L x L`` matrices ``units_bb``, ``units_bb_control``, ``units_bb_corr``, ``units_bb_count``: the
        same matches as :meth:`results_pairwise` with dead units dropped once (:func:`batched_matches`), the
        layers A shared by ``workers`` threads (the same values whatever their number)."""
        self._check_complete()
        if not all(bool(torch.isfinite(z).all()) for z in self.samples):
            return self.results_pairwise()  # non-finite samples: the per-pair path masks them
        return batched_matches(self.samples, self.live, self._permuted_rows(), self.threshold, workers=workers)

    def results_pairwise(self) -> dict[str, np.ndarray]:
        """:meth:`results` one layer pair at a time (two products and :func:`match_summary` per pair): the
        straightforward reference of the batched path."""
        self._check_complete()
        nl = len(self.samples)
        out = {k: np.full((nl, nl), np.nan) for k in UNIT_MATRICES}
        rows = self._permuted_rows()
        permuted = [z[rows] for z in self.samples]
        for a in range(nl):
            for b in range(a, nl):
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


def batched_matches(samples: list[torch.Tensor], live: list[np.ndarray], permuted_rows: torch.Tensor,
                    threshold: float, *, workers: int = 1) -> dict[str, np.ndarray]:
    """Significant best buddies of every pair of layers ``a <= b`` (see :meth:`UnitMatcher.results`).

    Dead units take part in nothing, so they are dropped once, before the products (order kept: ties still
    go to the lower index), which leaves no masking, copying or finiteness check per pair: per pair two
    products (the pair and its permuted-image control) of contiguous live-unit samples, two ``argmax`` and
    one comparison. (One product of A with all layers ``b >= a`` at once was measured slower: the products
    are compute-bound either way, and the wide blocks add memory traffic.)

    ``workers`` Python threads share the layers A, costliest first (torch releases the GIL in the products;
    each thread uses the caller's torch thread count). Every pair is computed by the same operations
    whichever thread takes it, and each writes only its own cells: the result does not depend on ``workers``.
    """
    nl = len(samples)
    out = {k: np.full((nl, nl), np.nan) for k in UNIT_MATRICES}
    z = [s[:, torch.from_numpy(np.asarray(lv, dtype=bool))].contiguous() for s, lv in zip(samples, live)]
    zt = [t.T.contiguous() for t in z]  # C x S: A's side of the products
    permuted = [t[permuted_rows] for t in z]
    n_rows = samples[0].shape[0] if nl else 0
    width = np.array([t.shape[1] for t in z], dtype=np.float64)
    cost = width * np.cumsum(width[::-1])[::-1]  # products of layer A with every B >= A

    def layer_a(a: int, threads: int | None = None) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        for b in range(a, nl):
            for key, v in zip(("units_bb", "units_bb_corr", "units_bb_count"), _mutual(zt[a], z[b], n_rows, threshold)):
                out[key][a, b] = out[key][b, a] = v
            out["units_bb_control"][a, b] = out["units_bb_control"][b, a] = _mutual(zt[a], permuted[b], n_rows, threshold)[0]

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
