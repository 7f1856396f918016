"""Shared fixtures. Every test runs with the network cut: any connection to a non-loopback address fails."""

from __future__ import annotations

import os

import pytest

# set before conceptsim is imported anywhere, so papermill kernels started by tests are cut off too
os.environ["CONCEPTSIM_FORBID_NETWORK"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")

from conceptsim import netguard  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def network_cut():
    netguard.install()
    yield
    netguard.uninstall()


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests with one torch thread (tiny tensors: a second thread only adds sync cost)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
