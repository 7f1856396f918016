"""Forward hooks that record layer outputs: outputs unchanged, hooks removed on error, non-tensor outputs refused."""

import pytest
import torch
from torch import nn

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


class _Tail(nn.Module):
    """Two probed convolutions, then a head that nobody records (it counts its calls)."""

    def __init__(self, reuse: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 2, 1)
        self.reuse = reuse
        self.head_calls = 0

    def forward(self, x):
        y = self.b(self.a(x))
        if self.reuse:
            y = self.b(y)  # the probed layer runs twice: its record must be the second output
        self.head_calls += 1
        return self.head(y)


def test_stop_early_ends_passes_after_the_deepest_layer_with_the_same_records():
    x = torch.randn(2, 3, 8, 8)
    plain, early = _Tail(), _Tail()
    with record_activations(plain, ["a", "b"]) as want, record_activations(early, ["a", "b"], stop_early=True) as got, \
            torch.no_grad():
        for i in range(3):
            want.forward(plain, x + i)
            got.forward(early, x + i)
            assert all(torch.equal(want[k], got[k]) for k in ("a", "b"))
    assert plain.head_calls == 3
    assert early.head_calls == 1  # the first pass runs whole, the later ones stop after "b"


def test_stop_early_keeps_running_whole_passes_when_a_layer_runs_twice():
    x = torch.randn(2, 3, 8, 8)
    model = _Tail(reuse=True)
    with record_activations(model, ["a", "b"], stop_early=True) as rec, torch.no_grad():
        for i in range(2):
            rec.forward(model, x + i)
        with torch.no_grad():
            second = model.b(model.b(model.a(x + 1)))
    assert model.head_calls == 2
    assert torch.equal(rec["b"], second)
