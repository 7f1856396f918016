"""Relative depth of probed layers, from one traced forward pass (methods.md, "Relative depth").

depth(L) = position of L among the Conv2d modules the model executes (first execution order, from 1)
divided by the number of Conv2d modules executed. A probed layer that is not a Conv2d takes the position
of the last Conv2d that ran before its output was produced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from conceptsim.extraction.hooks import as_feature_map, resolve_layers


@dataclass(frozen=True)
class TracedLayer:
    name: str
    module_type: str
    shape: tuple[int, ...]  # output shape for one image (C, H, W)
    conv_position: int
    relative_depth: float
    probe_rank: float


def trace_depth(
    model: nn.Module,
    layers: Sequence[str],
    example: torch.Tensor,
    forward: Callable[[nn.Module, torch.Tensor], object] | None = None,
    model_name: str = "model",
) -> tuple[list[TracedLayer], int]:
    """Run one forward pass and return per-layer depth records and the number of executed Conv2d."""
    probed = resolve_layers(model, layers, model_name)
    order: dict[nn.Module, int] = {}
    layer_pos: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []

    def conv_hook(module, _i, _o):
        if module not in order:
            order[module] = len(order) + 1

    def layer_hook(name):
        def hook(module, _i, output):
            if name not in layer_pos:  # first execution defines the position
                # a Conv2d's own hook may run after this one (registration order); count it explicitly
                if isinstance(module, nn.Conv2d) and module not in order:
                    order[module] = len(order) + 1
                layer_pos[name] = order.get(module, len(order)) if isinstance(module, nn.Conv2d) else len(order)
                shapes[name] = tuple(as_feature_map(name, output).shape[1:])
            return None

        return hook

    try:
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                handles.append(m.register_forward_hook(conv_hook))
        for name, m in probed.items():
            handles.append(m.register_forward_hook(layer_hook(name)))
        with torch.no_grad():
            (forward or (lambda mod, x: mod(x)))(model, example)
    finally:
        for h in handles:
            h.remove()
    total = len(order)
    missing = [n for n in layers if n not in layer_pos]
    if missing:
        raise RuntimeError(f"{model_name}: layers {missing} did not run in the forward pass")
    if total == 0:
        raise RuntimeError(f"{model_name}: no Conv2d module ran in the forward pass")
    n = len(layers)
    out = [
        TracedLayer(
            name, type(probed[name]).__name__, shapes[name], layer_pos[name], layer_pos[name] / total, (i + 1) / n
        )
        for i, name in enumerate(layers)
    ]
    return out, total
