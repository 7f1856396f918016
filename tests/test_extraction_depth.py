"""Relative depth: the position of a layer among the convolutions a forward pass executes."""

import torch

from conceptsim.extraction.depth import trace_depth
from formats import Toy


def test_relative_depth_counts_executed_convs():
    traced, total = trace_depth(Toy(), ["a", "block", "block.1", "b"], torch.zeros(1, 3, 8, 8))
    assert total == 3
    d = {t.name: (t.conv_position, t.relative_depth) for t in traced}
    assert d["a"] == (1, 1 / 3)
    assert d["block"] == (2, 2 / 3)  # a block takes the last conv that ran before its output
    assert d["block.1"] == (2, 2 / 3)
    assert d["b"] == (3, 1.0)
