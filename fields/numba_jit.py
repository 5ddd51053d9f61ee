"""The optional Numba import shared by the compiled CPU kernels (raster_numba.py, hashgrid_numba.py).

`numba` is None where it does not import (the PyTorch backends run without it); `numba_available()` says
why. The threading layer prefers OpenMP, then Numba's own work queue, and tries TBB last: an older TBB that
other wheels bring along (usd-core) would only be rejected with a warning. `match_torch_threads()` gives
Numba's parallel loops the thread count torch uses (train.threads), within the pool Numba started with.
"""
from __future__ import annotations

import torch

try:                                                # optional: the PyTorch backends run without it
    import numba
    from numba import njit, prange
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]
    _IMPORT_ERROR = None
except (ImportError, OSError) as exc:               # pragma: no cover - depends on the environment
    numba = None
    njit = prange = None
    _IMPORT_ERROR = exc

__all__ = ["match_torch_threads", "njit", "numba", "numba_available", "prange"]


def numba_available() -> tuple[bool, str]:
    """(True, version) where Numba imports, else (False, why)."""
    if numba is None:
        return False, f"numba does not import ({_IMPORT_ERROR!r}); 'pip install numba' (requirements.txt pins it)"
    return True, numba.__version__


_POOL_STARTED = False


def match_torch_threads() -> None:
    """Numba's threads follow torch's, within the pool Numba started with.

    Starting Numba's OpenMP pool (its first parallel call, or get/set_num_threads) sets the process's OpenMP
    thread count to the pool size, and torch reads its intra-op thread count from OpenMP: a fit with
    train.threads=1 went back to 2 torch threads at its first Numba kernel (measured: torch.get_num_threads()
    1 -> 2). So the pool is started first, and torch's count put back."""
    global _POOL_STARTED
    if not _POOL_STARTED:
        want = torch.get_num_threads()
        numba.get_num_threads()                          # starts the pool (resets OpenMP's thread count)
        if torch.get_num_threads() != want:
            torch.set_num_threads(want)
        _POOL_STARTED = True
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
