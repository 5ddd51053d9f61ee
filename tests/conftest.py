"""Shared test set-up: repository root on sys.path, few threads, shared data location."""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("OMP_NUM_THREADS", "2")

SHARED_DATA = ROOT.parent / "shared" / "data"

import pytest


@pytest.fixture(autouse=True)
def _single_thread():
    """One intra-op torch thread per test (restored afterwards): on a shared 2-core machine a second
    thread is many times slower whenever another process is busy, and only ~1.3x faster when idle."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
