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


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def test_release_freed_memory_returns_the_kept_blocks():
    import sys

    import numpy as np
    import pytest

    import conceptsim.allocator as alloc

    if not sys.platform.startswith("linux") or not alloc.keep_freed_memory():
        pytest.skip("glibc's allocator setting is not in effect here")
    blocks = [np.ones(4 << 20) for _ in range(8)]  # 8 x 32 MiB, kept by the heap when freed
    del blocks
    before = _rss_mib()
    assert alloc.release_freed_memory() is True
    assert before - _rss_mib() > 128  # most of the 256 MiB went back to the OS
