"""Shared test set-up: repository root on sys.path, few threads, the location of the real sample data.

RECON_SAMPLE_DATA: a folder holding the small real RGB-D samples (replica_room0_20f/, a Replica
sequence in the NICE-SLAM layout, and 7scenes_redkitchen_100/, a 7-Scenes sequence). Tests that need
them skip, saying so, when the variable is unset or the sample is missing.
"""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("OMP_NUM_THREADS", "2")

SAMPLE_DATA = Path(os.environ["RECON_SAMPLE_DATA"]) if os.environ.get("RECON_SAMPLE_DATA") else None

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
