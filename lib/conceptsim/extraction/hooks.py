"""Forward hooks that record layer outputs, registered and removed by a context manager.

Rule for outputs that are not a single tensor: a layer must return one 4-D tensor (N x C x H x W); a
tuple or list of exactly one such tensor is unwrapped; anything else (dicts such as an FPN's ordered
dict, several tensors, non-spatial outputs) is rejected with :class:`LayerOutputError` naming the layer
and what it returned, so that a probed layer always means one feature map.
"""

from __future__ import annotations

import contextlib
import difflib
from typing import Callable, Iterator, Sequence

import torch
from torch import nn


class LayerOutputError(TypeError):
    """A probed layer's output is not a single 4-D feature map."""


class UnknownLayerError(KeyError):
    """A requested layer name is not a module path of the model."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


def resolve_layers(model: nn.Module, names: Sequence[str], model_name: str = "model") -> dict[str, nn.Module]:
    """Map dotted module paths to modules; unknown names raise with the closest valid names."""
    modules = dict(model.named_modules())
    out = {}
    for name in names:
        if name not in modules or name == "":
            close = difflib.get_close_matches(name, [m for m in modules if m], n=5, cutoff=0.5)
            hint = f"; closest valid names: {close}" if close else ""
            raise UnknownLayerError(f"layer {name!r} is not a module of {model_name}{hint}")
        out[name] = modules[name]
    return out


def as_feature_map(name: str, output: object) -> torch.Tensor:
    """Apply the single-tensor rule (see module docstring)."""
    if isinstance(output, (tuple, list)) and len(output) == 1:
        output = output[0]
    if not isinstance(output, torch.Tensor) or output.dim() != 4:
        what = type(output).__name__
        if isinstance(output, torch.Tensor):
            what = f"a {output.dim()}-D tensor of shape {tuple(output.shape)}"
        elif isinstance(output, (tuple, list)):
            what = f"a {what} of {len(output)} items"
        raise LayerOutputError(
            f"layer {name!r} returned {what}; a probed layer must output one N x C x H x W tensor "
            "(choose one of its sub-modules instead)"
        )
    return output


class AllLayersRecorded(Exception):
    """Raised by the last probed layer's hook to end a forward pass whose remaining modules nobody reads."""


class Recording(dict):
    """The recorded outputs by layer name (the latest pass), and :meth:`forward`, which runs a pass.

    With ``stop_early`` a pass ends as soon as every probed layer has recorded its output: what a model
    computes after its deepest probed layer (a detector's heads, box decoding) changes no record. The first
    pass always runs whole and counts how often each probed layer runs; only when each runs exactly once
    per pass (so the record is each layer's one output, not an earlier call's) do later passes stop early.
    """

    def __init__(self, n_layers: int, stop_early: bool):
        super().__init__()
        self.n_layers = n_layers
        self.stop_early = stop_early
        self.stopping = False  # decided after the first pass
        self.calls: dict[str, int] = {}
        self.passes = 0

    def forward(self, fn: Callable[[torch.Tensor], object], x: torch.Tensor) -> None:
        """``fn(x)`` with the hooks recording (its output is not kept)."""
        self.calls = {}
        try:
            fn(x)
        except AllLayersRecorded:
            pass
        self.passes += 1
        if self.passes == 1 and self.stop_early:
            self.stopping = len(self.calls) == self.n_layers and all(c == 1 for c in self.calls.values())

    def _recorded(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.stopping and len(self.calls) == self.n_layers:
            raise AllLayersRecorded(name)


@contextlib.contextmanager
def record_activations(
    model: nn.Module,
    layers: Sequence[str],
    transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
    model_name: str = "model",
    stop_early: bool = False,
) -> Iterator[Recording]:
    """Record the outputs of ``layers`` during forward passes inside the ``with`` block.

    The yielded :class:`Recording` maps layer name -> the latest output (detached, after ``transform``).
    Hooks return ``None``, so they never change the model's outputs, and are removed on exit, also on
    error. With ``stop_early``, passes run through :meth:`Recording.forward` end after the deepest probed
    layer (see :class:`Recording`); a pass that calls the model directly runs whole.
    """
    modules = resolve_layers(model, layers, model_name)
    records = Recording(len(modules), stop_early)
    handles = []

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            fmap = as_feature_map(name, output).detach()
            records[name] = transform(name, fmap) if transform else fmap
            records._recorded(name)
            return None

        return hook

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make_hook(name)))
        yield records
    finally:
        for h in handles:
            h.remove()
