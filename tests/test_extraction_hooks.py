"""Forward hooks that record layer outputs: outputs unchanged, hooks removed on error, non-tensor outputs refused."""

import pytest
import torch

from conceptsim.extraction.hooks import LayerOutputError, record_activations
from formats import Toy


def test_hooks_do_not_change_outputs_and_are_removed_on_error():
    model = Toy().eval()
    x = torch.randn(2, 3, 8, 8)
    ref = model(x)[0]
    with record_activations(model, ["a", "b"]) as rec:
        out = model(x)[0]
    assert torch.equal(ref, out) and rec["a"].shape == (2, 4, 8, 8)
    with pytest.raises(RuntimeError, match="boom"):
        with record_activations(model, ["a"]):
            raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in model.modules())


def test_non_tensor_output_is_rejected_by_rule():
    model = Toy()
    with pytest.raises(LayerOutputError, match="'pair' returned a tuple of 2 items"):
        with record_activations(model, ["pair"]):
            model(torch.zeros(1, 3, 8, 8))
