"""Concept-output similarity of layer pairs: S_seg, S_cls and their secondary variants, streamed.

For a concept c and layers A, B on the shared test images (methods.md):

- ``seg``: S_seg = sum_x |B_A(x) and B_B(x)| / sum_x |B_A(x) or B_B(x)| (set IoU of binarised masks on the
  common evaluation grid, pooled over all test images);
- ``seg_pearson``: Pearson correlation of the soft masks sigmoid(logit) over all test pixels;
- ``cls``: Pearson correlation over test images of the two layers' concept logits;
- ``cls_jaccard``: Jaccard index of the sets of test images each layer predicts positive (logit > 0).

Streaming: for each concept the binarised masks of *all* layers for an image chunk form one
``L x (n * gh * gw)`` 0/1 matrix ``M`` (a pixel is positive where sigmoid(logit) >= 0.5, i.e. logit >= 0);
one product ``M M^T`` adds the intersections of every layer pair (exact integer sums computed in floating
point, :func:`int8_gram`, accumulated in int64), and ``|A or B| = |A| + |B| - |A and B|``. The
soft-mask Pearson statistics are accumulated the same way from soft masks quantised to 1/127 steps (see
:class:`SegAccumulator` for the bound on the effect), with a row of ones that yields the sums.

Chance control (the "shuffled" value reported beside S): the similarity of A's outputs with B's outputs
on *permuted test images*. For S_seg it is the exact expectation over uniformly random permutations of the
intersection, ``E|A and pi(B)| = <c_A, c_B> / N`` with ``c_L`` the per-pixel count of test images that layer
L marks positive, put into the IoU formula (ratio of expectations; N is in the hundreds). For S_cls it is
the Pearson correlation with B's test logits permuted by one seeded permutation, symmetrised over the two
orientations. Both are the overlap two predictors with the layers' own marginals reach by chance.

Undefined values are NaN: an IoU whose union is empty (both layers predict nothing on all test images), a
correlation with a constant input, and any pair involving a layer without a vector for the concept.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch

from conceptsim.comparison.agreement import seg_kappa_matrices, stratum_counts, stratum_sums


def set_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Set IoU of two binary arrays of the same shape (all test images and pixels together)."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else float("nan")


def iou_from_counts(inter: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """``inter[..., i, j] / (sizes[..., i] + sizes[..., j] - inter[..., i, j])``, NaN for empty unions."""
    union = sizes[..., :, None] + sizes[..., None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), np.nan)


def pearson_from_moments(n: float, sums: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """Correlation matrix from ``n``, per-variable sums ``(..., L)`` and cross-products ``(..., L, L)``."""
    mean = sums / n
    cov = gram / n - mean[..., :, None] * mean[..., None, :]
    var = np.clip(np.diagonal(cov, axis1=-2, axis2=-1), 0.0, None)
    scale = np.sqrt(var[..., :, None] * var[..., None, :])
    # A variance that is zero up to rounding means a constant output: its correlation is undefined.
    tiny = 1e-12 * np.maximum(np.abs(np.diagonal(gram, axis1=-2, axis2=-1)) / n, 1e-300)
    ok = (var[..., :, None] > tiny[..., :, None]) & (var[..., None, :] > tiny[..., None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(ok, cov / np.where(ok, scale, 1.0), np.nan)
    return np.clip(r, -1.0, 1.0)


@functools.lru_cache(maxsize=1)
def int8_dot_products() -> bool:
    """Whether this CPU multiplies int8 matrices with dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX),
    where ``torch._int_mm`` (exact int32 sums) is 5-18x faster than the float32 product of the same 0/1 or
    quantised masks (Performance page). Without them it is 10-20x slower, and :func:`int8_gram` multiplies in
    floating point. ``CONCEPTSIM_INT8_MM=0`` / ``1`` overrides the detection. Either path gives the same
    integers."""
    forced = os.environ.get("CONCEPTSIM_INT8_MM", "").strip()
    if forced in ("0", "1"):
        return forced == "1" and hasattr(torch, "_int_mm")
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return hasattr(torch, "_int_mm") and bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags))


def int8_gram(a: torch.Tensor, b: torch.Tensor | None = None, *, out: torch.Tensor | None = None,
              max_cols: int = 1 << 17, min_float32_cols: int = 512, native: bool | None = None,
              bound: int | None = None) -> torch.Tensor:
    """Exact ``a @ b.T`` of int8 matrices, added into the integer tensor ``out`` (new int64 when ``None``).

    With int8 dot-product instructions (``native``, default :func:`int8_dot_products`) the product is
    ``torch._int_mm`` over column blocks short enough that no int32 sum can overflow. Otherwise it runs in
    floating point, which is exact for integers as long as no partial sum leaves the significand's range:
    float32 (24 bits) over column blocks short enough that ``bound * columns < 2**24`` (0/1 masks: any width
    up to ``max_cols``; soft masks up to 127: blocks of 1,040 columns, about 5x faster than one float64
    product of all columns), float64 when such blocks would be narrower than ``min_float32_cols``. Every
    partial sum is an integer within the accumulator's exact range, so the result does not depend on the
    path, the order of summation or the block width. Columns are taken at most ``max_cols`` at a time
    (memory of the float copies).

    ``bound`` is a bound of ``|a_ij| * |b_kj|`` the caller knows (0/1 masks: 1; quantised soft masks: 127^2),
    which spares the two passes over the inputs that find it; it only chooses the blocks, so any true bound
    gives the same integers.
    """
    same = b is None or b is a
    b = a if b is None else b
    if out is None:
        out = torch.zeros((a.shape[0], b.shape[0]), dtype=torch.int64)
    if a.numel() == 0 or b.numel() == 0:
        return out
    if bound is None:
        bound_a = max(abs(int(a.min())), abs(int(a.max())))
        bound = bound_a * (bound_a if same else max(abs(int(b.min())), abs(int(b.max()))))
    if int8_dot_products() if native is None else native:
        step = min(max_cols, (2**31 - 1) // max(bound, 1))  # int32 sums: at most bound per column
        for start in range(0, a.shape[1], step):
            x, y = a[:, start : start + step], b[:, start : start + step]
            out += torch._int_mm(x, y.T)  # the transposed view: oneDNN reads it as is (a copy is 2x slower)
        return out
    exact32 = (2**24 - 1) // max(bound, 1)  # columns whose float32 partial sums stay exact integers
    dtype, step = (torch.float32, min(max_cols, exact32)) if exact32 >= min_float32_cols else (torch.float64, max_cols)
    for start in range(0, a.shape[1], step):
        x, y = a[:, start : start + step], b[:, start : start + step]
        xf = x.to(dtype)
        yf = xf if same else y.to(dtype)
        out += torch.matmul(xf, yf.T).to(out.dtype)
    return out


def _mask_gram(m: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Add the intersections ``m @ m.T`` of 0/1 rows to the int64 ``out``: ``m`` float32 with fewer than
    ``2**24`` columns (one exact float32 product, the conversion already made) or int8 (:func:`int8_gram`)."""
    if m.dtype == torch.float32:
        out += torch.matmul(m, m.T).to(out.dtype)
        return out
    return int8_gram(m, out=out, bound=1)


#: soft masks are quantised to ``round(QUANT * sigmoid(logit))`` for the exact int8 products
QUANT = 127


class SegAccumulator:
    """Accumulates S_seg, its permuted-image control and the soft-mask Pearson over image chunks.

    All products are exact integer arithmetic: binarised masks are 0/1 int8, and soft masks are quantised
    to ``q = round(127 * sigmoid(logit))``. The quantisation adds independent rounding noise of variance
    1/12 to ``127 * p``, which lowers a correlation by the relative amount ``1 / (12 * 127^2 * var(p))``,
    i.e. by less than 1e-3 whenever the soft masks have a standard deviation above 0.02.

    Parameters
    ----------
    n_layers, n_concepts : sizes of the study-wide layer and concept lists.
    grid : the evaluation grid ``(gh, gw)``.
    workers : Python threads that share the concepts of a chunk (each with its own buffers; torch releases
        the GIL, so two workers keep two cores busy without OpenMP teams of the many small products waiting
        for each other). The results do not depend on it.
    track : per concept index, ``P x 2`` row pairs whose *per-image* strata sums ``[O, A, B, E, min-sum]`` are
        also kept (for the image bootstrap of agreement beyond accuracy); needs ``truth_row``.
    truth_row : the row that carries the ground-truth mask (see :mod:`conceptsim.comparison.agreement`).
    moment_rows : the leading rows that also enter the permuted-image control and the soft-mask Pearson
        (default all; the truth and oracle rows after the layers need only intersections); 0 skips both
        (the val pass, which only selects layers).
    oracle_rows : the last rows (after the truth row, which must come right before them) are compared only
        with each other and with the truth row: their intersections with the other rows are not computed
        and stay 0 (the resolution-only oracles, a third of the rows of the default study's Gram products).
    """

    def __init__(self, n_layers: int, n_concepts: int, grid: tuple[int, int], workers: int = 1, *,
                 track: dict[int, np.ndarray] | None = None, truth_row: int | None = None,
                 moment_rows: int | None = None, oracle_rows: int = 0, image_quality: bool = False,
                 object_concepts: np.ndarray | None = None) -> None:
        L, K = n_layers, n_concepts
        self.oracle_rows = int(oracle_rows)
        if self.oracle_rows and truth_row != L - self.oracle_rows - 1:
            raise ValueError(f"oracle_rows={oracle_rows} needs the truth row right before them (row {L - oracle_rows - 1}), "
                             f"got truth_row={truth_row}")
        self.n_layers = L
        self.moment_rows = Lm = L if moment_rows is None else max(0, min(int(moment_rows), L))
        self.pixels = int(grid[0]) * int(grid[1])
        self.inter = torch.zeros((K, L, L), dtype=torch.int64)
        # counts of images per pixel never exceed the test set size: int32 halves the accumulation traffic
        self.count_map = torch.zeros((K, Lm, self.pixels), dtype=torch.int32)
        self.soft_gram = torch.zeros((K, Lm + 1, Lm + 1), dtype=torch.int64)
        # per-image strata sums of agreement beyond accuracy (with a truth row): E and sum of min(a_s, b_s)
        self.expected = torch.zeros((K, L, L), dtype=torch.float64) if truth_row is not None else None
        self.min_sum = torch.zeros((K, L, L), dtype=torch.float64) if truth_row is not None else None
        self.n_images = 0
        self._buffers: dict[tuple[int, int], tuple] = {}
        self.workers = max(1, min(int(workers), K))
        if track and truth_row is None:
            raise ValueError("per-image tracking of layer pairs needs the truth row (truth_row)")
        self.truth_row = truth_row
        self.track = {int(k): np.asarray(p, dtype=np.int64).reshape(-1, 2) for k, p in (track or {}).items()}
        self._per_image: dict[int, list] = {k: [] for k, p in self.track.items() if len(p)}
        if image_quality and truth_row is None:
            raise ValueError("per-image quality needs the truth row (truth_row)")
        # per concept, chunks of per-image [true positives, marked pixels] of every row (image_quality)
        self._quality: dict[int, list] | None = {k: [] for k in range(K)} if image_quality else None
        # concepts whose strata also split the truth-negative pixels by the every-object mask
        self.object_concepts = np.zeros(K, bool) if object_concepts is None else np.asarray(object_concepts, bool)
        self._objects: torch.Tensor | None = None
        self._object_quality: dict[int, list] = {k: [] for k in range(K)}

    def _buffers_for(self, n: int, worker: int = 0) -> tuple:
        if (n, worker) not in self._buffers:
            L, Lm, m = self.n_layers, self.moment_rows, n * self.pixels
            # one extra row of ones makes the product also yield every layer's sum and the pixel count
            q = torch.empty((Lm + 1, m), dtype=torch.int8)
            q[Lm] = 1
            if any(key[0] != n for key in self._buffers):  # a new chunk size (the last chunk): drop the old
                self._buffers = {}
            # the 0/1 masks once more as float32: every integer sum of them below is an exact float32 product
            self._buffers[n, worker] = (torch.empty(m), torch.empty((L, m), dtype=torch.int8), q,
                                        torch.empty((L, m), dtype=torch.float32))
        return self._buffers[n, worker]

    def update(self, seg: torch.Tensor) -> None:
        """Add one chunk of logits ``L x K x n x gh x gw`` (all layers, the same ``n`` images)."""

        def fill(li: int, k: int, buf: torch.Tensor) -> torch.Tensor:
            return seg[li, k].reshape(-1)

        self.update_streamed(seg.shape[2], fill)

    def update_streamed(self, n: int, fill, objects: torch.Tensor | None = None) -> None:
        """Add one chunk of ``n`` images whose logits are produced one layer and concept at a time.

        Parameters
        ----------
        n : images in the chunk.
        fill : ``fill(li, k, buf)`` returns the ``n * gh * gw`` logits of layer ``li`` and concept ``k``
            (image-major, the same pixel order for every layer), either ``buf`` (a float32 scratch vector
            of that size it may write into, and which is then overwritten here) or another tensor, or
            ``None`` when the layer has no vector for the concept (an empty mask: all quantised values 0).

        objects : ``n x gh x gw`` every-object masks of the chunk (object datasets): the strata of object
            concepts become (image, truth, any object), and with ``image_quality`` the every-object control's
            per-image counts are kept.

        Each layer's map is quantised while it is in cache (sigmoid, scale and rounding on a vector of
        ``n * gh * gw`` floats), so the float logits of all layers never make a round trip through memory;
        only the int8 matrices of one concept are.
        """
        K = self.inter.shape[0]
        self._objects = None if objects is None else objects.reshape(n, self.pixels).to(torch.int8)
        buffers = [self._buffers_for(n, w) for w in range(self.workers)]
        if self.workers == 1:
            self._update_concepts(n, fill, range(K), buffers[0])
        else:
            from concurrent.futures import ThreadPoolExecutor

            threads = torch.get_num_threads()
            with ThreadPoolExecutor(self.workers) as pool:
                jobs = [pool.submit(self._update_concepts, n, fill, range(w, K, self.workers), buffers[w], threads)
                        for w in range(self.workers)]
                for job in jobs:
                    job.result()
        self.n_images += n

    def _update_concepts(self, n: int, fill, concepts, buffers: tuple, threads: int | None = None) -> None:
        """The work of :meth:`update_streamed` for ``concepts``, in one worker's ``buffers``."""
        if threads is not None:
            torch.set_num_threads(threads)
        L, Lm = self.n_layers, self.moment_rows
        f, b, q, bf = buffers
        exact = b.shape[1] < 2**24  # 0/1 products and sums of float32 are exact integers below 2**24
        qm = q[: Lm + 1]  # the moment rows and the row of ones
        half = torch.tensor(0.5)
        for k in concepts:
            for li in range(L):
                x = fill(li, k, f)
                if li >= Lm:  # no soft moments for this row: only its 0/1 mask (logit >= 0), no sigmoid
                    if x is None:
                        b[li].zero_()
                    else:
                        torch.ge(x, 0.0, out=b[li].view(torch.bool))
                    continue
                qrow = q[li]
                if x is None:
                    qrow.zero_()  # round(127 * sigmoid(logit)) of a surely negative logit
                    b[li].zero_()
                    continue
                torch.sigmoid(x, out=f)
                torch.add(half, f, alpha=QUANT, out=f)  # + 0.5 then truncation = rounding (values are >= 0)
                qrow.copy_(f)
                # q >= 64 <=> sigmoid >= 0.5 <=> logit >= 0, and for 0 <= q <= 127 that is bit 6: q >> 6 is
                # the 0/1 mask, computed in int8 (no bool pass) while the row is in cache
                torch.bitwise_right_shift(qrow, 6, out=b[li])
            if exact:
                bf.copy_(b)  # one conversion serves the Gram products, the strata and the count map
            m01 = bf if exact else b
            gram01 = b if int8_dot_products() else m01  # the exact product of the faster kind (same integers)
            if self.oracle_rows:  # two diagonal blocks that share the truth row, counted once
                t = self.truth_row
                _mask_gram(gram01[: t + 1], self.inter[k][: t + 1, : t + 1])
                g = _mask_gram(gram01[t:], torch.zeros((L - t, L - t), dtype=torch.int64))
                g[0, 0] = 0
                self.inter[k][t:, t:] += g
            else:
                _mask_gram(gram01, self.inter[k])
            strata = None
            if self.truth_row is not None:
                bv = b.view(L, n, self.pixels)
                strata = self._strata(gram01.view(L, n, self.pixels), k)  # int8 where the CPU has int8 products
                e, mn = stratum_sums(*strata)
                self.expected[k] += e
                self.min_sum[k] += mn
                if self._quality is not None:
                    counts = strata[0]
                    self._quality[k].append(torch.stack([counts[0], counts.sum(0)]).numpy())
                    if self._objects is not None:
                        t = bv[self.truth_row]
                        self._object_quality[k].append(torch.stack([(self._objects * t).sum(1, dtype=torch.int64),
                                                                    self._objects.sum(1, dtype=torch.int64)]).numpy())
            if k in self._per_image:
                self._per_image[k].append(self._image_counts(m01.view(L, n, self.pixels), self.track[k], strata))
            if Lm:
                if exact:  # counts of images per pixel: at most n, exact in float32
                    self.count_map[k] += bf[:Lm].view(Lm, n, self.pixels).sum(dim=1).to(torch.int32)
                else:
                    self.count_map[k] += b[:Lm].view(Lm, n, self.pixels).sum(dim=1, dtype=torch.int32)
                int8_gram(qm, out=self.soft_gram[k], bound=QUANT * QUANT)  # 0 <= q <= QUANT, the row of ones 1

    def _strata(self, bv: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image stratum counts ``S x R x n`` of every row and stratum sizes ``S x n`` (strata: truth on /
        off in each image, and for object concepts truth off split by the every-object mask; see
        :mod:`conceptsim.comparison.agreement`)."""
        t = bv[self.truth_row]
        if t.dtype != torch.int8:  # the float32 copy of the masks: the strata themselves stay 0/1 int8
            t = t.to(torch.int8)
        strata = [t, 1 - t]
        if self._objects is not None and self.object_concepts[k]:
            other = (1 - t) * self._objects  # the image's other objects: their own stratum
            strata = [t, other, 1 - t - other]
        sizes = torch.stack([s.sum(dim=1, dtype=torch.int64) for s in strata]).double()
        return stratum_counts(bv, strata, native_int8=bv.dtype == torch.int8 and int8_dot_products()), sizes

    def _image_counts(self, b: torch.Tensor, pairs: np.ndarray, strata: tuple) -> np.ndarray:
        """Per-image ``[O, A, B, E, min-sum]`` of ``pairs`` (see :func:`~conceptsim.comparison.agreement.
        kappa_from_strata`): ``n x P x 5`` float64."""
        counts, sizes = strata
        inv = torch.where(sizes > 0, 1.0 / sizes.clamp(min=1), torch.zeros_like(sizes))
        out = torch.empty((b.shape[1], len(pairs), 5), dtype=torch.float64)
        for j, (ra, rb) in enumerate(pairs):
            ca, cb = counts[:, int(ra)], counts[:, int(rb)]  # S x n
            out[:, j, 0] = (b[ra] * b[rb]).sum(dim=1, dtype=torch.float64 if b.dtype.is_floating_point else torch.int64).double()
            out[:, j, 1], out[:, j, 2] = ca.sum(0), cb.sum(0)
            out[:, j, 3] = (ca * cb * inv).sum(0)
            out[:, j, 4] = torch.minimum(ca, cb).sum(0)
        return out.numpy()

    def image_quality(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per concept, row and image the true positives and marked pixels (``K x R x N`` each) and the truth
        mask's pixels (``K x N``): the per-image sufficient statistics of every row's set IoU, for paired
        bootstraps of probe quality (``image_quality=True``)."""
        if self._quality is None:
            raise ValueError("the accumulator was made without image_quality=True")
        q = np.stack([np.concatenate(self._quality[k], axis=2) for k in sorted(self._quality)])  # K x 2 x R x N
        return q[:, 0], q[:, 1], q[:, 0, self.truth_row]

    def object_quality(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Per concept and image the every-object mask's true positives and pixels (``K x N`` each), the
        control a probe that only finds objects scores at; None without objects."""
        if not any(self._object_quality.values()):
            return None
        q = np.stack([np.concatenate(self._object_quality[k], axis=1) for k in sorted(self._object_quality)])
        return q[:, 0], q[:, 1]

    def per_image(self) -> dict[int, np.ndarray]:
        """Per tracked concept, ``N x P x 6`` per-image counts of its tracked pairs (see ``track``)."""
        return {k: np.concatenate(v, axis=0) for k, v in self._per_image.items() if v}

    def results(self) -> dict[str, np.ndarray]:
        """``seg`` (``K x L x L``, all rows), ``seg_control`` and ``seg_pearson`` (``K x Lm x Lm``, the moment
        rows; absent without them), and with a truth row ``seg_kappa``, ``seg_kappa_max`` and ``seg_obs_exp``
        (per-image strata, :func:`seg_kappa_matrices`, all rows)."""
        inter = self.inter.double().numpy()
        sizes = np.diagonal(inter, axis1=1, axis2=2).copy()
        seg = iou_from_counts(inter, sizes)
        out = {"seg": seg}
        Lm = self.moment_rows
        if Lm:
            c = self.count_map.double()
            expected = torch.bmm(c, c.transpose(1, 2)).numpy() / max(self.n_images, 1)
            out["seg_control"] = iou_from_counts(expected, sizes[:, :Lm])
            g = self.soft_gram.double().numpy()
            out["seg_pearson"] = pearson_from_moments(g[0, Lm, Lm], g[:, Lm, :Lm], g[:, :Lm, :Lm])
        if self.truth_row is not None:
            out["seg_kappa"], out["seg_kappa_max"], out["seg_obs_exp"] = seg_kappa_matrices(
                inter, self.expected.numpy(), self.min_sum.numpy())
        return out


def cls_similarity(logits: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """S_cls, its permuted-image control and the Jaccard variant.

    Parameters
    ----------
    logits : ``L x N x K`` classification logits of every layer on the test images.
    rng : draws the one permutation of the test images used by the control.

    Returns
    -------
    ``cls``, ``cls_control``, ``cls_jaccard`` as ``K x L x L`` arrays.
    """
    z = np.asarray(logits, dtype=np.float64).transpose(2, 0, 1)  # K x L x N
    n = z.shape[2]
    zc = z - z.mean(axis=2, keepdims=True)
    cls = pearson_from_moments(n, np.zeros(z.shape[:2]), zc @ zc.transpose(0, 2, 1))
    perm = rng.permutation(n)
    zp = zc[:, :, perm]
    norm = np.sqrt((zc**2).sum(axis=2))
    with np.errstate(invalid="ignore", divide="ignore"):
        cross = (zc @ zp.transpose(0, 2, 1)) / (norm[:, :, None] * norm[:, None, :])
    control = 0.5 * (cross + cross.transpose(0, 2, 1))
    pos = (z > 0).astype(np.float64)
    jac = iou_from_counts(pos @ pos.transpose(0, 2, 1), pos.sum(axis=2))
    return {"cls": cls, "cls_control": control, "cls_jaccard": jac}


def concept_vs_cka(similarity, method: str = "seg", cka: str = "cka"):
    """Agreement of concept similarity and CKA over the distinct layer pairs of each model pair.

    Parameters
    ----------
    similarity : rows of ``similarity.csv`` (a pandas DataFrame).
    method : the concept method whose concept mean is compared (``seg``, ``seg_kappa``, ``cls``,
        ``cls_partial`` ...); the mean is over the concepts represented in both layers where the rows carry
        the ``represented`` column (:func:`conceptsim.comparison.figures.represented_rows`), over all
        concepts for results written before it.
    cka : the CKA variant.

    Returns
    -------
    DataFrame with one row per (model_a, model_b): ``n_pairs``, ``spearman`` (rank correlation of the
    concept-mean similarity and CKA over layer pairs; NaN with fewer than 3 pairs), ``mean_concept``,
    ``mean_cka`` and ``largest_gap`` (the layer pair where CKA exceeds the concept similarity the most,
    or the reverse, as ``layer_a ~ layer_b (cka - concept)``).
    """
    import pandas as pd

    from conceptsim.comparison.figures import represented_rows

    keys = ["model_a", "layer_a", "model_b", "layer_b"]
    off = similarity[~((similarity["model_a"] == similarity["model_b"]) & (similarity["layer_a"] == similarity["layer_b"]))]
    concept = off[off["method"] == method]
    represented = represented_rows(concept)
    if represented is not None:  # layer-level similarity: the concepts represented in both layers (methods.md)
        concept = concept[represented]
    concept = concept.groupby(keys)["value"].mean().rename("concept")
    rep = off[off["method"] == cka].set_index(keys)["value"].rename("cka")
    both = pd.concat([concept, rep], axis=1).dropna().reset_index()
    rows = []
    for (ma, mb), g in both.groupby(["model_a", "model_b"], sort=True):
        gap = (g["cka"] - g["concept"]).to_numpy()
        i = int(np.argmax(np.abs(gap))) if len(g) else 0
        rho = g["concept"].rank().corr(g["cka"].rank()) if len(g) >= 3 else float("nan")
        rows.append({
            "model_a": ma, "model_b": mb, "n_pairs": len(g), "spearman": rho,
            "mean_concept": g["concept"].mean(), "mean_cka": g["cka"].mean(),
            "largest_gap": f"{g['layer_a'].iloc[i]} ~ {g['layer_b'].iloc[i]} ({gap[i]:+.2f})" if len(g) else "",
        })
    return pd.DataFrame(rows)


SIMILARITY_METHODS = ("seg", "seg_pearson", "cls", "cls_jaccard")



def concept_similarity(outputs_a, outputs_b, method: str = "seg") -> float:
    """S(c; A, B) of one concept between two layers, from their outputs on the same test images.

    The metric's front door and slow reference (plain numpy, one call per layer pair and concept); the
    comparison stage computes the same numbers for all pairs at once with ``SegAccumulator`` and
    ``cls_similarity`` of this module.

    Parameters
    ----------
    outputs_a, outputs_b : the concept's logits of layers A and B on the same images: ``N x gh x gw`` on
        the evaluation grid for ``seg`` and ``seg_pearson`` (pooled over all pixels, so any shape is read as
        pixels), ``N`` image logits (1-D; other shapes are a ValueError) for ``cls`` and ``cls_jaccard``.
    method : ``seg`` (set IoU of the masks ``logit >= 0`` pooled over all images and pixels),
        ``seg_pearson`` (Pearson of ``sigmoid(logit)`` over all pixels), ``cls`` (Pearson of the image
        logits) or ``cls_jaccard`` (Jaccard index of the images with ``logit > 0``).

    Returns
    -------
    The similarity; NaN when it is undefined (empty union, constant input).
    """
    if method not in SIMILARITY_METHODS:
        raise ValueError(f"method must be one of {SIMILARITY_METHODS}, got {method!r}")
    a = np.asarray(outputs_a, dtype=np.float64)
    b = np.asarray(outputs_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"outputs of the two layers must have the same shape, got {a.shape} and {b.shape}")
    if method.startswith("cls") and a.ndim != 1:
        raise ValueError(f"method {method!r} takes the N image logits of each layer (1-D), got outputs of shape "
                         f"{a.shape} (per-pixel outputs go with a seg method)")
    if method == "seg":
        return set_iou(a >= 0, b >= 0)
    if method == "cls_jaccard":
        return set_iou(a > 0, b > 0)
    if method == "seg_pearson":
        a, b = 1.0 / (1.0 + np.exp(-a)), 1.0 / (1.0 + np.exp(-b))
    a, b = a.ravel(), b.ravel()
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])
