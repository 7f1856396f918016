"""One traced forward pass: where each module's output falls in the order of executed convolutions.

The position of a module's output is the number of ``Conv2d`` modules that had executed (first execution,
counted from 1) when the output was produced; a ``Conv2d``'s own output takes its own position. Relative
depth (:mod:`conceptsim.extraction.depth`) and the automatic choice of layers of a user's model
(:func:`conceptsim.models.user_models.layer_candidates`) both read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn


@dataclass(frozen=True)
class ModuleCall:
    """What one traced module did: how often it ran, and its first output's position and summary."""

    calls: int
    position: int
    summary: Any


def trace_conv_positions(
    model: nn.Module, modules: Mapping[str, nn.Module], example: torch.Tensor,
    summarise: Callable[[str, Any], Any] = lambda _name, _output: None,
    forward: Callable[[nn.Module, torch.Tensor], object] | None = None,
) -> tuple[dict[str, ModuleCall], int]:
    """Run ``forward(model, example)`` (default ``model(example)``) once without gradients.

    Returns ``({name: ModuleCall}, executed Conv2d count)`` for the ``modules`` that ran (a module that did
    not run is absent). ``summarise(name, output)`` reduces a module's first output to what the caller keeps
    (a shape, say), so no output is held after its hook.
    """
    order: dict[nn.Module, int] = {}
    first: dict[str, tuple[int, Any]] = {}
    calls: dict[str, int] = {}
    handles = []

    def count_conv(module, _i, _o):
        order.setdefault(module, len(order) + 1)

    def record(name):
        def hook(module, _i, output):
            calls[name] = calls.get(name, 0) + 1
            if name not in first:
                if isinstance(module, nn.Conv2d):  # its own counting hook may run after this one
                    order.setdefault(module, len(order) + 1)
                    position = order[module]
                else:
                    position = len(order)
                first[name] = (position, summarise(name, output))
            return None

        return hook

    try:
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                handles.append(m.register_forward_hook(count_conv))
        for name, m in modules.items():
            handles.append(m.register_forward_hook(record(name)))
        with torch.no_grad():
            (forward or (lambda mod, x: mod(x)))(model, example)
    finally:
        for h in handles:
            h.remove()
    return {n: ModuleCall(calls[n], *first[n]) for n in first}, len(order)
