"""The allocator setting that keeps freed memory for reuse."""

import torch


def test_keep_freed_memory_is_idempotent_and_can_be_switched_off(monkeypatch):
    import conceptsim.allocator as alloc

    monkeypatch.setattr(alloc, "_applied", None)
    monkeypatch.setenv("CONCEPTSIM_KEEP_FREED_MEMORY", "0")
    assert alloc.keep_freed_memory() is False
    monkeypatch.setattr(alloc, "_applied", None)
    monkeypatch.delenv("CONCEPTSIM_KEEP_FREED_MEMORY")
    first = alloc.keep_freed_memory()
    assert alloc.keep_freed_memory() == first  # applied once
    x = torch.ones(8, 64, 128, 128)  # a 33 MB tensor still allocates and computes correctly
    assert float(x.sum()) == x.numel()
