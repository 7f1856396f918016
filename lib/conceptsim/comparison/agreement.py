"""Agreement beyond accuracy: how much two layers' concept outputs agree *beyond what the truth explains*.

Raw S_seg and S_cls are bounded by probe accuracy: two probes that both match the ground truth agree
through it alone (methods.md, "Agreement beyond accuracy"). The statistics here condition on the truth, in
the spirit of error consistency (Cohen's kappa of trial-by-trial errors beyond what two accuracies imply):

- ``seg_kappa`` (third version, per-image strata): the test pixels on the common evaluation grid fall into
  strata ``s = (image, truth value)`` -- and for object concepts ``(image, truth, any-object mask)``, so
  that the image's other objects form their own stratum. In stratum ``s`` with ``n_s`` pixels, ``a_s`` and
  ``b_s`` pixels are marked by layers A and B and ``o_s`` by both; probes that err independently given the
  truth *within that image* overlap by ``e_s = a_s b_s / n_s``. With ``O, E, A, B`` the sums over strata,
  ``seg_kappa = 2 (O - E) / (A + B - 2 E)``: Cohen's kappa of the two decisions within strata. It is 1 only
  for identical masks, about 0 for probes independent given the truth and the image (however accurate),
  and negative when their errors avoid each other. ``seg_kappa_max = (O - E) / (sum_s min(a_s, b_s) - E)``
  normalises by the overlap the margins allow (any mask contained in the other scores 1) and is reported
  beside it; ``seg_obs_exp`` is ``O / E``. (The second version pooled all images into two strata, so probes
  that fired on the same *images* counted as agreeing.)
- ``cls_partial``: the partial correlation of two layers' concept logits given the binary label, i.e. the
  Pearson correlation of the logits after subtracting each class's mean (the pooled within-class
  correlation).

All strata sums are additive over images, so the streamed pass accumulates them per chunk (the expectation
``E`` is a weighted Gram product of per-image stratum counts, :func:`stratum_sums`), and per-image values of
a few selected layer pairs serve the image bootstrap of finding 1 (:func:`kappa_from_strata`).
"""

from __future__ import annotations

import numpy as np
import torch


def kappa_from_strata(inter: np.ndarray, size_a: np.ndarray, size_b: np.ndarray, expected: np.ndarray,
                      min_sum: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``seg_kappa``, ``seg_kappa_max`` and ``seg_obs_exp`` from strata sums (broadcasting arrays).

    Parameters
    ----------
    inter : ``O = |B_A and B_B|``; size_a, size_b : ``A = |B_A|``, ``B = |B_B|``; expected : ``E``, the sum
        over strata of ``a_s b_s / n_s``; min_sum : sum over strata of ``min(a_s, b_s)`` (``None``: no
        ``seg_kappa_max``, NaN).

    Returns
    -------
    ``(kappa, kappa_max, obs_exp)``; NaN where undefined: no disagreement possible beyond chance (e.g. two
    perfect or two empty probes) or no expected overlap.
    """
    o, a, b, e = (np.asarray(x, dtype=np.float64) for x in (inter, size_a, size_b, expected))
    scale = np.maximum(np.maximum(a, b), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        den = a + b - 2.0 * e
        ok = den > 1e-9 * scale
        kappa = np.where(ok, 2.0 * (o - e) / np.where(ok, den, 1.0), np.nan)
        if min_sum is None:
            kmax = np.full(np.broadcast(o, e).shape, np.nan)
        else:
            room = np.asarray(min_sum, np.float64) - e
            okm = room > 1e-9 * scale
            kmax = np.where(okm, (o - e) / np.where(okm, room, 1.0), np.nan)
        obs_exp = np.where(e > 0, o / np.where(e > 0, e, 1.0), np.nan)
    return kappa, kmax, obs_exp


def stratum_counts(masks: torch.Tensor, strata: list[torch.Tensor], native_int8: bool = False) -> torch.Tensor:
    """Per row, image and stratum the marked pixels: ``S x R x n`` float64.

    Parameters
    ----------
    masks : ``R x n x P`` 0/1 masks (rows = layers, truth, oracles) of ``n`` images, int8 or float32 (the
        stage passes the float32 copy it already made for the Gram products).
    strata : ``S`` masks ``n x P`` (0/1 int8) that partition every image's pixels.
    native_int8 : int8 ``masks`` on a CPU with int8 dot products (see
        :func:`conceptsim.comparison.similarity.int8_dot_products`): one ``torch._int_mm`` of the masks with a
        block-diagonal selector (image i's strata in rows ``i P .. (i + 1) P``), exact int32 sums, several
        times faster than the batched float32 products; the same counts.
    """
    r, n, p = masks.shape
    if native_int8 and masks.dtype == torch.int8 and p < 2**31 // 2:
        k = len(strata)
        select = torch.zeros((k, n, n, p), dtype=torch.int8)  # stratum, image (column), image (rows), pixel
        img = torch.arange(n)
        for j, st in enumerate(strata[:-1]):
            select[j, img, img] = st.to(torch.int8)
        select[k - 1, img, img] = 1  # totals: the last stratum is what the others leave
        c = torch._int_mm(masks.reshape(r, n * p), select.view(k * n, n * p).T)  # R x (S n)
        c = c.view(r, k, n).permute(1, 0, 2).double()
        c[-1] -= c[:-1].sum(dim=0)  # the strata partition the pixels
        return c
    if p >= 2**24:  # a float32 product would no longer count exactly
        total = masks.sum(dim=2, dtype=torch.int64)
        parts = [(masks * s[None]).sum(dim=2, dtype=torch.int64) for s in strata[:-1]]
        return torch.stack(parts + [total - sum(parts)]).double()  # the strata partition the pixels
    # one batched product per image of the 0/1 masks with the strata (and a column of ones for the totals):
    # exact integer sums in float32 (at most ``p < 2**24`` per sum), far faster than int8 -> int64 reductions
    mf = masks if masks.dtype == torch.float32 else masks.float()
    cols = torch.empty((n, p, len(strata)), dtype=torch.float32)
    for j, s in enumerate(strata[:-1]):
        cols[:, :, j].copy_(s)
    cols[:, :, -1] = 1.0
    c = torch.bmm(mf.transpose(0, 1), cols)  # n x R x S: the parts, then the totals
    c[:, :, -1] -= c[:, :, :-1].sum(dim=2)  # the strata partition the pixels
    return c.permute(2, 1, 0).double()


def stratum_sums(counts: torch.Tensor, strata_sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``E`` (``R x R``: sum over strata of ``a_s b_s / n_s``) and the min-sum (``R x R``) of one chunk.

    Parameters
    ----------
    counts : ``S x R x n`` from :func:`stratum_counts`.
    strata_sizes : ``S x n`` pixels per stratum and image.
    """
    inv = torch.where(strata_sizes > 0, 1.0 / strata_sizes.clamp(min=1), torch.zeros_like(strata_sizes))
    e = torch.einsum("srn,sn,stn->rt", counts, inv, counts)
    # strata and images side by side (R x S*n, contiguous): the pairwise minima reduce over the last axis,
    # 10x faster than reducing a 4-d broadcast over its first and last axes; integer sums, the same values
    flat = counts.permute(1, 0, 2).reshape(counts.shape[1], -1)
    mn = torch.minimum(flat[:, None, :], flat[None, :, :]).sum(dim=2)
    return e, mn


def seg_kappa_matrices(inter: np.ndarray, expected: np.ndarray, min_sum: np.ndarray) -> tuple[np.ndarray, ...]:
    """``seg_kappa``, ``seg_kappa_max`` and ``seg_obs_exp`` of every pair of rows (``K x R x R`` each) from the
    accumulated intersections ``O`` (whose diagonal holds the sizes), ``E`` and min-sums."""
    inter = np.asarray(inter, dtype=np.float64)
    size = np.diagonal(inter, axis1=1, axis2=2)  # K x R
    return kappa_from_strata(inter, size[:, :, None], size[:, None, :], expected, min_sum)


def within_class_centered(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Logits minus the mean of their class.

    Parameters
    ----------
    logits : ``K x L x N`` concept logits of every layer on N images.
    labels : ``N x K`` binary presence labels.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=bool).T[:, None, :]  # K x 1 x N
    out = z.copy()
    for cls_value in (True, False):
        sel = y == cls_value
        cnt = sel.sum(axis=2, keepdims=True)
        mean = np.where(sel, z, 0.0).sum(axis=2, keepdims=True) / np.maximum(cnt, 1)
        out -= np.where(sel, mean, 0.0)
    return out


def partial_correlation(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``cls_partial``: ``K x L x L`` pooled within-class correlations of the logits given the label.

    NaN where a layer's logits are constant within both classes (or a concept has no images).
    """
    zc = within_class_centered(logits, labels)
    ss = (zc**2).sum(axis=2)  # K x L
    gram = zc @ zc.transpose(0, 2, 1)
    scale = np.sqrt(ss[:, :, None] * ss[:, None, :])
    tiny = 1e-12 * np.maximum((np.asarray(logits, dtype=np.float64) ** 2).sum(axis=2), 1e-300)
    ok = (ss > tiny)[:, :, None] & (ss > tiny)[:, None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(ok, gram / np.where(ok, scale, 1.0), np.nan)
    return np.clip(r, -1.0, 1.0)


AGREEMENT_METHODS = ("seg_kappa", "seg_kappa_max", "seg_obs_exp", "cls_partial")


def concept_agreement(outputs_a, outputs_b, truth, method: str = "seg_kappa", objects=None) -> float:
    """Agreement beyond accuracy of one concept between two layers, from their outputs and the truth.

    The per-pair front door of this module's statistics (plain numpy, one call per layer pair and concept);
    the comparison stage computes the same numbers for all pairs at once from the streamed sums.

    Parameters
    ----------
    outputs_a, outputs_b : array_like
        The concept's logits of layers A and B on the same images: ``N x gh x gw`` on the evaluation grid
        (or ``N x pixels``) for ``seg_kappa``, ``seg_kappa_max`` and ``seg_obs_exp`` (a pixel is marked
        where ``logit >= 0``; the strata are each image's truth-on and truth-off pixels), ``N`` image logits
        (1-D) for ``cls_partial``.
    truth : array_like
        The true masks (``N x gh x gw``, for the ``seg`` methods) or the presence labels (``N``, for
        ``cls_partial``), 0/1 or boolean (other values are refused).
    method : {"seg_kappa", "seg_kappa_max", "seg_obs_exp", "cls_partial"}
        ``seg_kappa``: ``2 (O - E) / (A + B - 2 E)`` with ``O`` the observed overlap of the two masks,
        ``A``, ``B`` their sizes and ``E`` the overlap of probes erring independently given the truth within
        each image; ``seg_kappa_max``: ``(O - E) / (sum of per-stratum minima - E)``; ``seg_obs_exp``:
        ``O / E``; ``cls_partial``: the Pearson correlation of the logits after subtracting each class's
        mean.
    objects : array_like, optional
        For the ``seg`` methods on object datasets: the every-object mask (any object of any class) of each
        image, the shape of ``truth``, 0/1 or boolean. The strata then become (image, truth, any object),
        as the comparison stage builds them for object concepts: the truth-off pixels on the image's other
        objects form their own stratum, so two probes that merely both fire on objects agree at about
        chance. Without it (default) the strata are (image, truth), as for the stage's other concepts.

    Returns
    -------
    float
        The agreement; NaN when it is undefined (no room above chance, e.g. a perfect or an empty probe;
        logits constant within both classes).
    """
    if method not in AGREEMENT_METHODS:
        raise ValueError(f"method must be one of {AGREEMENT_METHODS}, got {method!r}")
    a = np.asarray(outputs_a, dtype=np.float64)
    b = np.asarray(outputs_b, dtype=np.float64)
    t = np.asarray(truth)
    if a.shape != b.shape or a.shape != t.shape:
        raise ValueError(f"outputs and truth must have the same shape, got {a.shape}, {b.shape} and truth {t.shape}")
    if method == "cls_partial" and a.ndim != 1:
        raise ValueError(f"method 'cls_partial' takes the N image logits of each layer and N labels (1-D), got "
                         f"shape {a.shape} (per-pixel outputs go with a seg method)")
    if method != "cls_partial" and a.ndim < 2:
        raise ValueError(f"method {method!r} takes per-pixel logits and masks N x gh x gw (or N x pixels), got "
                         f"shape {a.shape} (image logits go with cls_partial)")

    def binary(x: np.ndarray, name: str) -> np.ndarray:
        # one pass, like the cast to bool it replaces: anything but 0/1 would be silently read as True
        if x.dtype != bool and not (np.issubdtype(x.dtype, np.number) and ((x == 0) | (x == 1)).all()):
            raise ValueError(f"{name} must be 0/1 or boolean, got values of dtype {x.dtype} that are not all 0 or 1")
        return x.astype(bool)

    t = binary(t, "truth")
    if method == "cls_partial":
        if objects is not None:
            raise ValueError("objects (the every-object masks) go with the seg methods, not with 'cls_partial'")
        return float(partial_correlation(np.stack([a.ravel(), b.ravel()])[None], t.reshape(-1, 1))[0, 0, 1])
    n = t.shape[0]
    ma, mb, t = (x.reshape(n, -1) for x in (a >= 0, b >= 0, t))
    strata = [t, ~t]
    if objects is not None:
        obj = np.asarray(objects)
        if obj.shape != a.shape:
            raise ValueError(f"objects must have the shape of truth {a.shape}, got {obj.shape}")
        other = ~t & binary(obj, "objects").reshape(n, -1)  # the image's other objects: their own stratum
        strata = [t, other, ~t & ~other]
    counts = stratum_counts(torch.from_numpy(np.stack([ma, mb]).astype(np.int8)),
                            [torch.from_numpy(s.astype(np.int8)) for s in strata])
    sizes = torch.from_numpy(np.stack([s.sum(1) for s in strata]).astype(np.float64))
    e, mn = stratum_sums(counts, sizes)
    kappa, kmax, obs_exp = kappa_from_strata((ma & mb).sum(), ma.sum(), mb.sum(), float(e[0, 1]), float(mn[0, 1]))
    return float({"seg_kappa": kappa, "seg_kappa_max": kmax, "seg_obs_exp": obs_exp}[method])
