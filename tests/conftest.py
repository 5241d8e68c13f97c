"""Shared test fixtures. Each section names its owner module; keep sections small."""

from __future__ import annotations

import pytest
import torch

# ---- model / diffusion / checkpoints / train tests --------------------------------------------------------


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for the module: on a shared 2-core machine, two OpenMP threads make small ops
    (test-sized models) several times slower, and results do not depend on the thread count here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
