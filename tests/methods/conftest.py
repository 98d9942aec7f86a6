"""Run the method tests on one intra-op thread (restored afterwards).

The tiny models are far too small to gain from threads; on a shared 2-core machine OpenMP
spinning costs several times the work itself."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
