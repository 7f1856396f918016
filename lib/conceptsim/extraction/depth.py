"""Relative depth of probed layers, from one traced forward pass (methods.md, "Relative depth").

depth(L) = position of L among the Conv2d modules the model executes (first execution order, from 1)
divided by the number of Conv2d modules executed. A probed layer that is not a Conv2d takes the position
of the last Conv2d that ran before its output was produced. A model of the input itself
(``input_level = True``, the ``pixels`` model) runs no Conv2d: its layers are at depth 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from conceptsim.extraction.hooks import as_feature_map, resolve_layers
from conceptsim.models.trace import trace_conv_positions


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
    traced, total = trace_conv_positions(model, probed, example,
                                         lambda name, output: tuple(as_feature_map(name, output).shape[1:]), forward)
    layer_pos = {n: t.position for n, t in traced.items()}
    shapes = {n: t.summary for n, t in traced.items()}
    missing = [n for n in layers if n not in layer_pos]
    if missing:
        raise RuntimeError(f"{model_name}: layers {missing} did not run in the forward pass")
    if total == 0 and not getattr(model, "input_level", False):
        raise RuntimeError(f"{model_name}: no Conv2d module ran in the forward pass")
    n = len(layers)
    out = [
        TracedLayer(
            name, type(probed[name]).__name__, shapes[name], layer_pos[name], layer_pos[name] / total if total else 0.0,
            (i + 1) / n,
        )
        for i, name in enumerate(layers)
    ]
    return out, total
