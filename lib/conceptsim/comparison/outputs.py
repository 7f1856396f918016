"""Concept outputs of every probed layer of every model on the shared test images, streamed by chunks.

Layers are compared through what their concept vectors *output on the same test inputs*
(methods.md, "Comparing layers and models through concept outputs"):

- segmentation (Net2Vec) outputs: standardised activations ``(a - mean) / std`` through the 1x1
  convolution ``weight``/``bias`` give one logit map per concept on the activation grid; the logits are
  resampled bilinearly onto the common evaluation grid over the *image* frame
  (:func:`conceptsim.data.geometry.input_to_image_grid`) and thresholded at logit 0 (probability 0.5);
- classification (TCAV-style) outputs: ``coef . standardised GAP(a) + intercept``, one logit per image.

:class:`StudyOutputs` opens the stores of all models of one dataset, checks that they share images,
splits and evaluation grid, loads the vectors, and :meth:`StudyOutputs.iter_chunks` yields the outputs of
all layers for a few test images at a time, so memory is bounded by ``chunk_images`` and not by the test
set size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from conceptsim.concepts.vectors import VectorFileError, load_layer_vectors
from conceptsim.data.coco import is_object_category
from conceptsim.data.geometry import resampling_matrices
from conceptsim.extraction.store import ActivationStore, LayerInfo, StoreError
from conceptsim.models.names import PIXELS_MODEL, split_twin_name
from conceptsim.paths import activation_store, model_dir_name, vectors_dir


class ComparisonError(RuntimeError):
    """The inputs of the comparison stage are missing or inconsistent."""


def compared_models(model_a: str, model_b: str) -> bool:
    """Whether the comparison stage compares the layers of ``model_a`` with those of ``model_b``.

    Two models are compared when one of them is the pixels floor, when they are the same architecture (a
    model with itself, with its random-init twins, twins of different seeds with each other), or when they
    are of the same kind and seed (trained with trained, the twins of seed ``s`` of two architectures with
    each other). Left out: a trained model against another architecture's twin, and twins of two
    architectures with different seeds. The findings read none of those pairs, and they add nothing the
    kept pairs do not already show (two random-init networks of different architectures are independent
    draws whatever their seeds); in the default study (three architectures, three twin seeds each, the
    pixels floor) they are 36 of the 78 model pairs, and most of the label-free unit matching's cost.
    """
    if PIXELS_MODEL in (model_a, model_b):
        return True
    base_a, twin_a, seed_a = split_twin_name(model_a)
    base_b, twin_b, seed_b = split_twin_name(model_b)
    return base_a == base_b or (twin_a, seed_a if twin_a else None) == (twin_b, seed_b if twin_b else None)


def load_vectors(model_dir: str | Path, layer: str, kind: str) -> dict[str, np.ndarray]:
    """Load the concept vectors of one layer written by the concept stage.

    Parameters
    ----------
    model_dir : ``results/<study>/<dataset>/<model dir>``; files are read from its ``vectors/`` folder
        through :mod:`conceptsim.concepts.vectors` (which owns the file format and file-safe names).
    layer : probed layer name.
    kind : ``"seg"`` (``seg_<layer>.npz``: ``weight`` K x C, ``bias`` K, ``mean`` C, ``std`` C,
        ``concepts`` K) or ``"cls"`` (``cls_<layer>.npz``: ``coef`` K x C, ``intercept`` K, ``mean``,
        ``std``, ``concepts``).

    Returns
    -------
    dict of arrays, ``concepts`` as a list of str.

    Raises
    ------
    ComparisonError
        When the file is missing, lacks a key, or its shapes disagree (checked by
        :func:`conceptsim.concepts.vectors.load_layer_vectors`).
    """
    try:
        return load_layer_vectors(vectors_dir(model_dir), layer, kind)
    except VectorFileError as exc:
        raise ComparisonError(str(exc)) from exc


@dataclass(frozen=True)
class LinearProbe:
    """Concept probes of one layer with the standardisation folded into the weights.

    ``w . (a - mean) / std + b == (w / std) . a + (b - (w / std) . mean)``, so one matrix product of the raw
    activations serves all concepts.
    """

    weight: torch.Tensor  # K x C
    bias: torch.Tensor  # K
    concepts: tuple[str, ...]

    @classmethod
    def from_vectors(cls, vec: dict, kind: str) -> "LinearProbe":
        w = np.asarray(vec["weight" if kind == "seg" else "coef"], dtype=np.float64)
        b = np.asarray(vec["bias" if kind == "seg" else "intercept"], dtype=np.float64)
        # A channel constant on train has std 0; its standardised value is a constant the bias absorbs,
        # so any finite divisor gives the same outputs up to that constant -- use 1.
        std = np.asarray(vec["std"], dtype=np.float64)
        std = np.where(std > 0, std, 1.0)
        wf = w / std
        bf = b - wf @ np.asarray(vec["mean"], dtype=np.float64)
        return cls(torch.from_numpy(wf.astype(np.float32)), torch.from_numpy(bf.astype(np.float32)), tuple(vec["concepts"]))

    def maps(self, acts: torch.Tensor) -> torch.Tensor:
        """``n x C x h x w`` activations -> ``n x K x h x w`` logits (a 1x1 convolution)."""
        n, c, h, w = acts.shape
        out = torch.matmul(self.weight, acts.reshape(n, c, h * w)) + self.bias[:, None]
        return out.reshape(n, -1, h, w)

    def vectors(self, feats: torch.Tensor) -> torch.Tensor:
        """``n x C`` features -> ``n x K`` logits."""
        return feats @ self.weight.T + self.bias


@dataclass(frozen=True)
class ProbedLayer:
    """One probed layer of one model, as the comparison sees it."""

    model: str
    layer: str
    relative_depth: float
    index: int  # position in the study-wide layer order


@dataclass
class OutputChunk:
    """Outputs of all layers for ``rows`` (positions in the test split).

    Segmentation logits stay at each layer's own resolution until asked for: :meth:`seg_map` resamples one
    layer's map of one concept onto the evaluation grid (small enough to stay in cache while it is
    consumed), :attr:`seg` all of them at once.

    Attributes
    ----------
    rows : positions ``0..n_test-1`` of these images in the test split.
    low : per layer ``K' x n x h x w`` float32 segmentation logits on the layer's grid, concept-major
        (``K'`` the concepts the layer has vectors for), or ``None`` without segmentation outputs.
    cls : ``L x n x K`` float32 classification logits.
    gap : per layer ``n x C`` global-average-pooled activations (float32).
    oracles : ``O x K x n x gh x gw`` bool, where each resolution-only oracle marks each concept
        (:func:`oracle_masks`; with the truth and oracles only).
    """

    rows: np.ndarray
    low: list[torch.Tensor] | None
    cls: torch.Tensor | None
    gap: list[torch.Tensor]
    outputs: "StudyOutputs"
    truth: torch.Tensor | None = None  # K x n x gh x gw uint8 ground-truth masks on the evaluation grid
    objects: torch.Tensor | None = None  # n x gh x gw uint8 every-object masks (object datasets), else None
    # per oracle, K x n x gh x gw bool: where the resolution-only oracle marks the concept (oracle_masks)
    oracles: torch.Tensor | None = None
    # per (store, layer grid): the resampling matrices of these images (:meth:`StudyOutputs.resampler`)
    _resamplers: dict = field(default_factory=dict, repr=False)

    def truth_map(self, k: int, out: torch.Tensor) -> bool:
        """Write the ground-truth mask of concept ``k`` as surely positive / negative logits into ``out``."""
        t = self.truth[k].reshape(-1)
        torch.mul(t.float(), -2.0 * MISSING_LOGIT, out=out)
        out.add_(MISSING_LOGIT)
        return True

    def oracle_map(self, oi: int, k: int, out: torch.Tensor) -> bool:
        """Write the resolution-only oracle ``oi`` of concept ``k`` on the evaluation grid into ``out``.

        The oracle is the ground-truth mask area-pooled to the cells of a layer's *native* output stride over
        the image (not the stored grid, which is capped), brought back to the evaluation grid bilinearly
        and thresholded at 0.5: what a perfect probe limited to that stride would output
        (:func:`native_oracle`). It is written as surely positive / negative logits (``+-ORACLE_LOGIT``) from
        the chunk's :attr:`oracles` masks; the accumulator reads only their sign.
        """
        torch.mul(self.oracles[oi, k].reshape(-1), 2.0 * ORACLE_LOGIT, out=out)
        out.sub_(ORACLE_LOGIT)
        return True

    def seg_map(self, li: int, k: int, out: torch.Tensor) -> bool:
        """Write layer ``li``'s logits of study concept ``k`` on the evaluation grid into ``out``.

        ``out`` holds ``n * gh * gw`` float32 values (image-major). Returns ``False`` (and writes
        :data:`MISSING_LOGIT`) when the layer has no vector for the concept.
        """
        so = self.outputs
        pos = int(so.seg_position[li, k])
        n = len(self.rows)
        gh, gw = so.eval_grid
        if pos < 0:
            out.fill_(MISSING_LOGIT)
            return False
        z = self.low[li][pos : pos + 1].transpose(0, 1)  # n x 1 x h x w
        si, (h, w) = so._store_of[li], z.shape[2:]
        plan = self._resamplers.get((si, h, w))
        if plan is None:  # once per store and grid of the chunk (two workers may both make it: the same values)
            plan = self._resamplers[si, h, w] = so.resampler(si, so.rows[self.rows], h, w)
        resample(z, plan, out.view(1, n, gh, gw))
        return True

    @property
    def seg(self) -> torch.Tensor | None:
        """``L x K x n x gh x gw`` float32 segmentation logits on the evaluation grid (``MISSING_LOGIT``,
        i.e. surely negative, where a layer has no vector for a concept; see
        :attr:`StudyOutputs.seg_available`)."""
        if self.low is None:
            return None
        so = self.outputs
        out = torch.empty((len(so.layers), len(so.concepts), len(self.rows), *so.eval_grid))
        for li in range(out.shape[0]):
            for k in range(out.shape[1]):
                self.seg_map(li, k, out[li, k])
        return out


def native_oracle(truth: torch.Tensor, cells: tuple[int, int]) -> torch.Tensor:
    """Logits (+-10) of the truth pooled to ``cells`` over the image and resampled back (``n x gh x gw``).

    ``truth`` holds ``n x gh x gw`` 0/1 masks on the evaluation grid; ``cells`` is the number of a layer's
    output cells that cover the image (its native grid times the image's share of the input frame). With
    at least as many cells as the evaluation grid the oracle is the truth itself.
    """
    n, gh, gw = truth.shape
    ch, cw = min(int(cells[0]), gh), min(int(cells[1]), gw)
    t = truth.float()[:, None]
    if (ch, cw) != (gh, gw):
        pooled = F.adaptive_avg_pool2d(t, (max(ch, 1), max(cw, 1)))
        t = F.interpolate(pooled, size=(gh, gw), mode="bilinear", align_corners=False)
    return ((t[:, 0] - 0.5) * (2.0 * ORACLE_LOGIT)).contiguous()


def oracle_masks(truth: torch.Tensor, cells: tuple[int, int]) -> torch.Tensor:
    """Where :func:`native_oracle` of ``truth`` (any leading shape ``... x gh x gw``) is positive, as bool.

    All concepts and images go through one pooling and one resampling: each plane's arithmetic is that of
    its own call, so the masks equal the per-concept ones.
    """
    gh, gw = truth.shape[-2:]
    return (native_oracle(truth.reshape(-1, gh, gw), cells) >= 0).view(truth.shape)


def resample(logits: torch.Tensor, plan: tuple[torch.Tensor, torch.Tensor, bool], out: torch.Tensor) -> None:
    """Bilinear logits ``n x K' x h x w`` -> ``out`` (``K' x n x gh x gw``) with the matrices of ``plan``
    (:meth:`StudyOutputs.resampler`)."""
    ry, rx, shared = plan
    n, k, h, w = logits.shape
    gh, gw = out.shape[-2:]
    z = logits.transpose(0, 1)  # K' x n x h x w: the concept-major layout the Gram products need
    if shared:
        u = torch.matmul(z.reshape(k * n * h, w), rx.T).view(k * n, h, gw)
        torch.bmm(ry.expand(k * n, gh, h), u, out=out.view(k * n, gh, gw))
    else:  # letterboxed images of several shapes: one matrix pair per image
        out.copy_(torch.matmul(ry, torch.matmul(z, rx.transpose(1, 2))))


#: logit written for concepts a layer has no vector for: sigmoid(-30) ~ 1e-13, so outputs are empty.
MISSING_LOGIT = -30.0
#: the resolution-only oracle's logits: +- this value where it marks / does not mark a pixel
ORACLE_LOGIT = 10.0


class StudyOutputs:
    """All models of one dataset: stores, probed layers and concept vectors, checked for consistency.

    Parameters
    ----------
    dataset_dir : ``results/<study>/<dataset>``.
    models : model names (``NAME`` or ``NAME:random``); directories are :func:`model_dir_name`.
    split : the split compared (always ``"test"`` in the pipeline).
    seg, cls : load the segmentation / classification vectors.
    """

    def __init__(
        self, dataset_dir: str | Path, models: Sequence[str], *, split: str = "test", seg: bool = True, cls: bool = True,
        truth: bool = False, oracles: bool = False,
    ) -> None:
        self.dataset_dir = Path(dataset_dir)
        if not models:
            raise ComparisonError("no models to compare")
        self.stores: list[ActivationStore] = []
        for m in models:
            path = activation_store(self.dataset_dir / model_dir_name(m))
            try:
                self.stores.append(ActivationStore(path))
            except StoreError as exc:
                raise ComparisonError(str(exc)) from exc
        self.models = [s.model for s in self.stores]
        for m, s in zip(models, self.stores):
            if s.model != m:
                raise ComparisonError(f"store {s.path} is of model {s.model!r}, expected {m!r}")
        ref = self.stores[0]
        self.rows = ref.split_index(split)
        if len(self.rows) == 0:
            raise ComparisonError(f"store {ref.path} has no {split} images")
        self.image_ids = ref.image_ids[self.rows]
        for s in self.stores[1:]:
            rows = s.split_index(split)
            if len(rows) != len(self.rows) or not np.array_equal(s.image_ids[rows], self.image_ids):
                raise ComparisonError(
                    f"models {ref.model!r} and {s.model!r} do not share the same {split} images "
                    f"({len(self.rows)} vs {len(rows)} images); all models of a dataset must be extracted "
                    "from the same dataset build and split seed"
                )
            if not np.array_equal(s.image_ids, ref.image_ids) or not np.array_equal(s.splits, ref.splits):
                raise ComparisonError(f"models {ref.model!r} and {s.model!r} disagree on image order or splits")
            if s.eval_grid != ref.eval_grid:
                raise ComparisonError(f"models {ref.model!r} and {s.model!r} use eval grids {ref.eval_grid} / {s.eval_grid}")
            if s.concept_names != ref.concept_names:
                raise ComparisonError(f"models {ref.model!r} and {s.model!r} have different concept lists")
        self.n_test = len(self.rows)
        self.eval_grid = ref.eval_grid
        self.concepts = ref.concept_names
        self.categories = {c["name"]: c.get("category", "") for c in ref.concepts}
        self.layers: list[ProbedLayer] = []
        self._layer_info: list[LayerInfo] = []
        self._store_of: list[int] = []
        for si, s in enumerate(self.stores):
            for info in s.layers:
                self.layers.append(ProbedLayer(s.model, info.name, info.relative_depth, len(self.layers)))
                self._layer_info.append(info)
                self._store_of.append(si)
        k = len(self.concepts)
        self.seg_probes: list[LinearProbe | None] = []
        self.cls_probes: list[LinearProbe | None] = []
        # Concept positions of each probe's outputs in the study-wide concept list; a concept a layer has
        # no vector for is marked unavailable and its similarities are NaN.
        self.seg_available = np.zeros((len(self.layers), k), dtype=bool)
        self.cls_available = np.zeros((len(self.layers), k), dtype=bool)
        # val quality the concept stage stored with the vectors (seg: val set IoU, cls: val AP), NaN if absent
        self.val_quality = {kind: np.full((len(self.layers), k), np.nan) for kind in ("seg", "cls")}
        self._seg_cols: list[np.ndarray] = []
        self._cls_cols: list[np.ndarray] = []
        for li, pl in enumerate(self.layers):
            mdir = self.dataset_dir / model_dir_name(pl.model)
            for kind, wanted, probes, avail, cols in (
                ("seg", seg, self.seg_probes, self.seg_available, self._seg_cols),
                ("cls", cls, self.cls_probes, self.cls_available, self._cls_cols),
            ):
                if not wanted:
                    probes.append(None)
                    cols.append(np.zeros(0, dtype=np.int64))
                    continue
                vec = load_vectors(mdir, pl.layer, kind)
                probe = LinearProbe.from_vectors(vec, kind)
                channels = self._layer_info[li].channels
                if probe.weight.shape[1] != channels:
                    raise ComparisonError(
                        f"{kind} vectors of {pl.model}/{pl.layer} have {probe.weight.shape[1]} channels, "
                        f"the store has {channels}"
                    )
                unknown = [c for c in probe.concepts if c not in self.concepts]
                if unknown:
                    raise ComparisonError(f"{kind} vectors of {pl.model}/{pl.layer} name unknown concepts {unknown}")
                idx = np.array([self.concepts.index(c) for c in probe.concepts], dtype=np.int64)
                avail[li, idx] = True
                val_key = "val_iou" if kind == "seg" else "val_ap"
                if val_key in vec and np.shape(vec[val_key]) == (len(idx),):
                    self.val_quality[kind][li, idx] = np.asarray(vec[val_key], dtype=np.float64)
                probes.append(probe)
                cols.append(idx)
        self.use_seg, self.use_cls = seg, cls
        # seg_position[l, k]: row of study concept k in layer l's segmentation probe, -1 when it has none
        self.seg_position = np.full((len(self.layers), k), -1, dtype=np.int64)
        for li, cols in enumerate(self._seg_cols):
            self.seg_position[li, cols] = np.arange(len(cols))
        self._mat_cache: dict = {}
        self.split = split
        self.labels = ref.labels[self.rows]  # N x K presence labels of the compared images
        # object datasets: the every-object control (mask and "some object present") and which concepts are
        # objects; their agreement strata separate the image's other objects from its background
        self.has_objects = bool(getattr(ref, "has_objects", False))
        self.object_concepts = np.array([self.has_objects and is_object_category(self.categories[c])
                                         for c in self.concepts], dtype=bool)
        self.object_labels = np.asarray(ref.object_labels)[self.rows].astype(bool) if self.has_objects else None
        # ground truth and resolution-only oracles (one per store and distinct layer grid), read per block
        self.use_truth = bool(truth or oracles) and seg
        self.oracles: list[tuple[int, str, tuple[int, int]]] = []
        self.oracle_of = np.full(len(self.layers), -1, dtype=np.int64)
        if oracles and seg:
            # one oracle per number of native output cells over the image: a model and its twins share it,
            # and so do layers of different models with the same stride over the image
            seen: dict[tuple, int] = {}
            for li, info in enumerate(self._layer_info):
                st = self.stores[self._store_of[li]]
                cells = native_cells(info.native_grid, st.input_size, st.content_boxes)
                if cells not in seen:
                    seen[cells] = len(self.oracles)
                    self.oracles.append((self._store_of[li], info.name, cells))
                self.oracle_of[li] = seen[cells]

    @property
    def depths(self) -> np.ndarray:
        return np.array([pl.relative_depth for pl in self.layers])

    @property
    def compared_layers(self) -> np.ndarray:
        """``L x L`` bool: the layer pairs whose models the stage compares (:func:`compared_models`)."""
        models = list(dict.fromkeys(pl.model for pl in self.layers))
        pairs = np.array([[compared_models(a, b) for b in models] for a in models], dtype=bool)
        of = np.array([models.index(pl.model) for pl in self.layers], dtype=np.int64)
        return pairs[of[:, None], of[None, :]]

    def layer_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Row and column indices of the compared layer pairs ``a <= b`` (the diagonal included), in the order
        of ``np.triu_indices``: the rows of ``similarity.csv`` and ``layer_similarity.csv``."""
        ia, ib = np.triu_indices(len(self.layers))
        keep = self.compared_layers[ia, ib]
        return ia[keep], ib[keep]

    def layer_activations(self, li: int, rows: np.ndarray) -> torch.Tensor:
        """float32 activations ``n x C x h x w`` of study layer ``li`` for store rows ``rows``."""
        store = self.stores[self._store_of[li]]
        # torch converts float16 with the CPU's vector instructions, numpy element by element
        return torch.from_numpy(_read_block(store.activations(self.layers[li].layer), rows)).float()

    def truth_block(self, rows: np.ndarray) -> torch.Tensor:
        """``K x n x gh x gw`` uint8 ground-truth masks of store rows ``rows`` on the evaluation grid."""
        return torch.from_numpy(_read_block(self.stores[0].masks, rows)).transpose(0, 1).contiguous()

    def objects_block(self, rows: np.ndarray) -> torch.Tensor:
        """``n x gh x gw`` uint8 every-object masks of store rows ``rows`` (object datasets only)."""
        return torch.from_numpy(_read_block(self.stores[0].object_masks, rows))

    def resampler(self, si: int, rows: np.ndarray, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """``(ry, rx, shared)``: the bilinear matrices from store ``si``'s ``h x w`` grid of store rows ``rows`` to
        the evaluation grid (:func:`resample`); one pair for all images when they share their content box
        (``shared``), else one pair per image (letterboxed images of several shapes)."""
        boxes = self.stores[si].content_boxes[rows]
        if (boxes == boxes[0]).all():
            return (*self._matrices(si, boxes[0], h, w), True)
        pairs = [self._matrices(si, b, h, w) for b in boxes]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]), False

    def _matrices(self, si: int, box: np.ndarray, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = (si, tuple(float(b) for b in box), h, w)
        if key not in self._mat_cache:
            ry, rx = resampling_matrices(
                torch.from_numpy(np.asarray(box, dtype=np.float32)[None]), self.stores[si].input_size, (h, w), self.eval_grid
            )
            self._mat_cache[key] = (ry[0], rx[0])
        return self._mat_cache[key]

    @property
    def chunk_rows(self) -> int:
        """Images per stored chunk (of the first store's first probed layer; 1 for an empty store)."""
        st = self.stores[0]
        return int(st.activations(st.layers[0].name).chunks[0]) if st.layers else 1

    def read_blocks(self, read_images: int) -> list[np.ndarray]:
        """Positions of the compared images in blocks that cover whole stored chunks (:func:`chunk_blocks`)."""
        return chunk_blocks(self.rows, self.chunk_rows, read_images)

    def iter_chunks(self, chunk_images: int = 16, read_images: int = 16) -> Iterator[OutputChunk]:
        """Yield :class:`OutputChunk` for consecutive groups of at most ``chunk_images`` test images.

        Activations are read per layer in blocks of at least ``read_images`` images that cover whole store
        chunks (:meth:`read_blocks`: each chunk is decoded once per pass) and reduced to low-resolution logits
        and pooled features, so memory is about ``read_images`` images of one layer's activations plus the
        low-resolution logits of all layers for ``read_images`` images.
        """
        n_layers, k = len(self.layers), len(self.concepts)
        chunk_images = max(1, int(chunk_images))
        for bpos in self.read_blocks(max(chunk_images, int(read_images))):
            brows = self.rows[bpos]
            low: list[torch.Tensor] = []
            gaps: list[torch.Tensor] = []
            cls_block = torch.zeros((n_layers, len(bpos), k)) if self.use_cls else None
            for li in range(n_layers):
                acts = self.layer_activations(li, brows)
                g = acts.mean(dim=(2, 3))
                gaps.append(g)
                if cls_block is not None:
                    cls_block[li][:, self._cls_cols[li]] = self.cls_probes[li].vectors(g)
                if self.use_seg:  # concept-major: each concept's maps are one contiguous block
                    low.append(self.seg_probes[li].maps(acts).transpose(0, 1).contiguous())
                del acts
            truth = self.truth_block(brows) if self.use_truth else None
            objects = self.objects_block(brows) if (self.use_truth and self.has_objects) else None
            for cstart in range(0, len(bpos), chunk_images):
                sl = slice(cstart, min(len(bpos), cstart + chunk_images))
                t = truth[:, sl] if truth is not None else None
                # the oracles of all concepts at once, made here (in the thread that prepares the next chunk)
                oracles = (torch.stack([oracle_masks(t, cells) for _, _, cells in self.oracles])
                           if t is not None and self.oracles else None)
                yield OutputChunk(
                    bpos[sl], [z[:, sl] for z in low] if self.use_seg else None,
                    cls_block[:, sl] if cls_block is not None else None, [g[sl] for g in gaps], self,
                    t, objects[sl] if objects is not None else None, oracles,
                )


def native_cells(native_grid, input_size, content_boxes: np.ndarray) -> tuple[int, int]:
    """Output cells of a layer with ``native_grid`` over the image content (median content box)."""
    box = np.median(np.asarray(content_boxes, np.float64), axis=0)  # top, left, bottom, right
    fy = (box[2] - box[0]) / float(input_size[0])
    fx = (box[3] - box[1]) / float(input_size[1])
    return max(1, int(round(native_grid[0] * fy))), max(1, int(round(native_grid[1] * fx)))


def chunk_blocks(rows: np.ndarray, chunk_rows: int, read_images: int) -> list[np.ndarray]:
    """Positions ``0..len(rows)-1`` of sorted store ``rows``, in blocks that each cover whole stored chunks.

    A block holds the rows of one or more consecutive chunks of ``chunk_rows`` store rows (at least
    ``read_images`` positions when there are that many left), so a pass that reads block by block reads
    and decodes every chunk once, however the split's rows fall on the chunks (interleaved splits in
    stores written before split-major order, or a split starting mid-chunk).
    """
    rows = np.asarray(rows)
    if not len(rows):
        return []
    chunk_of = rows // max(1, int(chunk_rows))
    runs = np.split(np.arange(len(rows)), np.flatnonzero(np.diff(chunk_of)) + 1)
    blocks, current, size = [], [], 0
    for run in runs:
        current.append(run)
        size += len(run)
        if size >= read_images:
            blocks.append(np.concatenate(current))
            current, size = [], 0
    if current:
        blocks.append(np.concatenate(current))
    return blocks


def _read_block(arr, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (sorted) of a Zarr array: one slice when they are consecutive."""
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1:
        return np.ascontiguousarray(arr[int(rows[0]) : int(rows[-1]) + 1])
    return np.ascontiguousarray(arr.get_orthogonal_selection((rows,)))
