"""A TFJS graph model read and run as PyTorch modules: the graph file reader and one ``nn.Module`` per TF op.

:func:`load_tfjs_graph` reads a TFJS *graph model* (``model.json`` with ``modelTopology`` and
``weightsManifest``, plus its weight shard); :func:`schedule` orders the graph's nodes for execution;
the op modules (:class:`TFConv2d`, :class:`TFBinary`, :class:`TFUnary`, :class:`TFMean`,
:class:`TFResizeBilinear`, :class:`TFConcat`) run single TF ops in NCHW. A model built from a graph
(:mod:`conceptsim.models.centernet_mobilenet_v3`) wires them together.
"""

from __future__ import annotations

import base64
import heapq
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# TF stores activations NHWC; the module runs NCHW, so axis attributes are remapped.
NHWC_TO_NCHW = {0: 0, 1: 2, 2: 3, 3: 1}


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


def tf_attr(node: dict, key: str, default: Any = None) -> Any:
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


def source_node(name: str) -> str:
    """Producer node of an input reference (``name:0`` -> ``name``)."""
    return name.split(":")[0]


def schedule(names: list[str], by_name: dict[str, dict], given: set[str]) -> list[str]:
    """Execution order of the op nodes ``names``: topological, longest remaining path first.

    TF's node list runs each lateral branch of the neck as soon as its backbone input exists, so the
    neck's convolutions would interleave with the backbone's. Relative depth counts executed
    ``nn.Conv2d`` modules in order, so the order matters: taking, among the ready nodes, the one with the
    longest path still to go to an output runs the backbone first and each lateral branch just before
    the neck stage that consumes it. Ties keep the file's order.
    """
    ins = {n: [source_node(i) for i in by_name[n].get("input", []) if not i.startswith("^")] for n in names}
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
        # TF interpolates along x first (top and bottom rows), then along y; interpolating every row along x
        # and then picking the top and bottom rows gives the same values
        return _lerp_taps(_lerp_taps(x, -1, x0, x1, fx.to(x.dtype)), -2, y0, y1, fy.to(x.dtype))

    def extra_repr(self) -> str:
        return f"size={self.size}, legacy (no half-pixel centres)"


def _lerp_taps(x: torch.Tensor, dim: int, lo: torch.Tensor, hi: torch.Tensor, frac: torch.Tensor) -> torch.Tensor:
    """``x[lo] + (x[hi] - x[lo]) * frac`` along ``dim``, element for element the same float operations.

    For an integer upsampling factor ``r`` (``lo = i // r``, ``hi = lo + 1`` clamped at the edge and ``frac``
    repeating with period ``r``: TF's legacy taps at 2x) every output phase ``j`` is ``x + (x_next - x) *
    frac[j]`` on the whole input, so no gather is needed (a gather along the last axis is slow on CPU); any
    other taps are gathered with ``index_select``.
    """
    dim = dim % x.dim()
    n, n_out = x.shape[dim], lo.numel()
    r = n_out // n
    idx = torch.arange(n_out, device=lo.device)
    if r >= 1 and r * n == n_out and torch.equal(lo, idx // r) and torch.equal(hi, (lo + 1).clamp(max=n - 1)) \
            and torch.equal(frac, frac[:r].repeat(n)):
        nxt = torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim)
        step = nxt - x
        return torch.stack([x + step * f for f in frac[:r]], dim + 1).flatten(dim, dim + 1)
    a = x.index_select(dim, lo)
    shape = [1] * x.dim()
    shape[dim] = n_out
    return a + (x.index_select(dim, hi) - a) * frac.reshape(shape)


class TFConcat(nn.Module):
    """``ConcatV2`` along one NCHW axis."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Scope(nn.Module):
    """A TF name scope: holds the op modules (and sub-scopes) under it; never called itself."""
