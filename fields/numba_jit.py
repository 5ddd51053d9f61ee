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


def match_torch_threads() -> None:
    """Numba's threads follow torch's, within the pool Numba started with."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
