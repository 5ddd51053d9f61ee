"""CPU hash-grid backend compiled with Numba: the multiresolution hash encoding of fields/hashgrid.py as
loops, forward and the table gradient, with the corner rows and weights computed on the fly.

Why: the profile of a quick fit (`run.py profile`) puts the PyTorch hash grid at about 43 % of the
training time, most of it the backward's scatter into the table. The vectorised backend has to build
[8, L, N] index and weight tensors, gather [8 L N, F] features and scatter-add them back; a loop per
point computes each corner's row and weight in registers and touches the table once per corner. The
backward runs one level per thread (`prange` over levels), so every thread writes only its own slice of
the table gradient: no races, no atomics, and the same sums in the same order on every run.

Scope: the table gradient only. Where the input points need a gradient (the eikonal term's
`sdf_and_gradient`, which also differentiates that gradient again) the module falls back to the PyTorch
backend, which autograd differentiates to any order. The PyTorch backend is the reference this one is
tested against (tests/fields/test_hashgrid_numba.py): outputs and table gradients equal to float32
rounding on dense and hashed levels.
"""
from __future__ import annotations

import sys

import numpy as np
import torch
from torch import Tensor

from fields.numba_jit import match_torch_threads, njit, numba, prange


if numba is not None:
    @njit(cache=True, inline="always")
    def _level_order(k: int, n_levels: int) -> int:
        """The k-th level a parallel loop visits: 0, L-1, 1, L-2, ... Loop iterations are split into
        contiguous blocks per thread, and the fine (hashed, cache-missing) levels cost about twice the
        coarse (dense, cache-resident) ones; interleaving gives each thread a similar mix."""
        return k // 2 if k % 2 == 0 else n_levels - 1 - k // 2

    @njit(cache=True, inline="always")
    def _cell(x: np.ndarray, n: int, r: np.float32):
        """Point n's cell (i0, i1, i2) and fractions (f0, f1, f2) on a level of r cells per axis: the point
        clamped to [0, 1], the cell index to r - 1 (as hash_grid_indices_weights)."""
        p0 = min(max(x[n, 0], np.float32(0.0)), np.float32(1.0))
        p1 = min(max(x[n, 1], np.float32(0.0)), np.float32(1.0))
        p2 = min(max(x[n, 2], np.float32(0.0)), np.float32(1.0))
        q0, q1, q2 = p0 * r, p1 * r, p2 * r
        c0 = min(np.floor(q0), r - np.float32(1.0))
        c1 = min(np.floor(q1), r - np.float32(1.0))
        c2 = min(np.floor(q2), r - np.float32(1.0))
        return int(c0), int(c1), int(c2), q0 - c0, q1 - c1, q2 - c2

    @njit(cache=True, inline="always")
    def _corners(i0: int, i1: int, i2: int, f0, f1, f2, mx: int, my: int, mz: int, dense: bool, mask: int,
                 off: int, rows: np.ndarray, ws: np.ndarray) -> None:
        """rows[c], ws[c] = table row and trilinear weight of corner c = 4 cz + 2 cy + cx of the cell. The
        per-axis row terms and weights are computed once (6 products, not 24); each weight is multiplied
        (z * y) * x as the torch backend does, so the sums agree to the bit."""
        tx0, tx1 = (i0 * mx) & mask, ((i0 + 1) * mx) & mask
        ty0, ty1 = (i1 * my) & mask, ((i1 + 1) * my) & mask
        tz0, tz1 = (i2 * mz) & mask, ((i2 + 1) * mz) & mask
        one = np.float32(1.0)
        wx0, wy0, wz0 = one - f0, one - f1, one - f2
        w00, w01, w10, w11 = wz0 * wy0, wz0 * f1, f2 * wy0, f2 * f1          # (z, y) pairs
        ws[0], ws[1], ws[2], ws[3] = w00 * wx0, w00 * f0, w01 * wx0, w01 * f0
        ws[4], ws[5], ws[6], ws[7] = w10 * wx0, w10 * f0, w11 * wx0, w11 * f0
        if dense:
            a00, a01, a10, a11 = off + ty0 + tz0, off + ty1 + tz0, off + ty0 + tz1, off + ty1 + tz1
            rows[0], rows[1], rows[2], rows[3] = a00 + tx0, a00 + tx1, a01 + tx0, a01 + tx1
            rows[4], rows[5], rows[6], rows[7] = a10 + tx0, a10 + tx1, a11 + tx0, a11 + tx1
        else:
            b00, b01, b10, b11 = ty0 ^ tz0, ty1 ^ tz0, ty0 ^ tz1, ty1 ^ tz1
            rows[0], rows[1], rows[2], rows[3] = off + (b00 ^ tx0), off + (b00 ^ tx1), off + (b01 ^ tx0), off + (b01 ^ tx1)
            rows[4], rows[5], rows[6], rows[7] = off + (b10 ^ tx0), off + (b10 ^ tx1), off + (b11 ^ tx0), off + (b11 ^ tx1)

    @njit(parallel=True, cache=True, fastmath=False)
    def _forward(x: np.ndarray, table: np.ndarray, res: np.ndarray, mult: np.ndarray, dense: np.ndarray,
                 table_size: int, block: int, out: np.ndarray) -> None:
        """x [N, 3] float32 in any range (clamped to [0, 1]); table [L*T, F]; out [N, L*F] (written, level-major
        columns). One block of ``block`` points per parallel iteration, all levels in turn: each thread writes
        only its own rows of the output, in the layout the caller needs (no transpose), and a block's points
        of one level meet that level's table while it is still cached. Measured at 65k uniform points, 16
        levels of 2^19 rows, 2 threads, after a backward (as in training): median 27.8 ms for blocks of
        16384 against 30.4 ms for one level per thread plus the transpose."""
        n_pts = x.shape[0]
        n_levels = res.shape[0]
        n_feat = table.shape[1]
        mask = table_size - 1
        n_blocks = (n_pts + block - 1) // block
        for b in prange(n_blocks):
            rows = np.empty(8, np.int64)
            ws = np.empty(8, np.float32)
            lo = b * block
            hi = min(n_pts, lo + block)
            for lv in range(n_levels):
                r = res[lv]
                off = lv * table_size
                mx, my, mz, dn = mult[lv, 0], mult[lv, 1], mult[lv, 2], dense[lv]
                for n in range(lo, hi):
                    i0, i1, i2, f0, f1, f2 = _cell(x, n, r)
                    _corners(i0, i1, i2, f0, f1, f2, mx, my, mz, dn, mask, off, rows, ws)
                    for f in range(n_feat):
                        acc = np.float32(0.0)
                        for c in range(8):
                            acc += ws[c] * table[rows[c], f]
                        out[n, lv * n_feat + f] = acc

    @njit(parallel=True, cache=True, fastmath=False)
    def _backward(x: np.ndarray, grad_out: np.ndarray, res: np.ndarray, mult: np.ndarray, dense: np.ndarray,
                  table_size: int, grad_table: np.ndarray) -> None:
        """grad_table [L*T, F] = sum over points and corners of w * grad_out[n, level] (written, not added: each
        thread first zeroes its level's rows, so the buffer may come from np.empty); grad_out [N, L*F] as the
        forward's output (read in place, each level its own columns); one level per thread (its rows only,
        so no races and the same sums in the same order on every run).

        Zeroing here rather than with np.zeros matters: np.zeros maps fresh pages lazily, and the first write
        to each page then faults inside the scattered accumulation (measured 130 ms against 43 ms for 65k
        points on 16 levels of 2^19 rows, 2 threads). GradBufferPool avoids fresh pages altogether."""
        n_pts = x.shape[0]
        n_levels = res.shape[0]
        n_feat = grad_table.shape[1]
        mask = table_size - 1
        for k in prange(n_levels):
            lv = _level_order(k, n_levels)
            rows = np.empty(8, np.int64)
            ws = np.empty(8, np.float32)
            r = res[lv]
            off = lv * table_size
            grad_table[off:off + table_size, :] = np.float32(0.0)
            mx, my, mz, dn = mult[lv, 0], mult[lv, 1], mult[lv, 2], dense[lv]
            for n in range(n_pts):
                i0, i1, i2, f0, f1, f2 = _cell(x, n, r)
                _corners(i0, i1, i2, f0, f1, f2, mx, my, mz, dn, mask, off, rows, ws)
                for c in range(8):
                    row = rows[c]
                    w = ws[c]
                    for f in range(n_feat):
                        grad_table[row, f] += w * grad_out[n, lv * n_feat + f]


def _block(n_pts: int) -> int:
    """Points per parallel iteration of _forward: about 2 blocks per thread, at most 16384 (at 65k points and
    2 threads, blocks of 1024 / 4096 / 16384 took 33 / 31 / 28 ms), at least 256."""
    return int(min(16384, max(256, -(-n_pts // (2 * numba.get_num_threads())))))


class GradBufferPool:
    """Table-gradient buffers [L*T, F] reused across backward passes.

    A fresh 64 MB gradient (16 levels of 2^19 rows, 2 features) costs page faults on every backward: ~14 ms
    with torch.empty, ~80 ms with numpy's huge-page allocations, against a ~35 ms kernel. A buffer handed out
    is wrapped with torch.from_numpy, whose storage holds a reference to the ndarray until the last tensor
    on it (the parameter's .grad, any view or copy that shares storage) is freed. So a buffer whose only
    reference is this pool is provably unused, and is reused; otherwise a new one is allocated (at most
    ``max_buffers`` are kept). In a training step that sets .grad to None before the next backward
    (``zero_grad(set_to_none=True)``), one buffer serves every step. Copies and pickles of a model start
    with an empty pool (the buffers are scratch memory, not state)."""

    def __init__(self, max_buffers: int = 2):
        self.max_buffers = max_buffers
        self._buffers: list[np.ndarray] = []

    def take(self, shape: tuple[int, int]) -> np.ndarray:
        """A float32 buffer of ``shape`` that nothing else references (contents undefined)."""
        for i in range(len(self._buffers)):
            # references: the list's and getrefcount's argument -> 2 when no tensor holds the buffer
            if self._buffers[i].shape == shape and sys.getrefcount(self._buffers[i]) == 2:
                return self._buffers[i]
        buf = np.empty(shape, np.float32)
        if len(self._buffers) < self.max_buffers:
            self._buffers.append(buf)
        return buf

    def __deepcopy__(self, memo):
        return GradBufferPool(self.max_buffers)

    def __getstate__(self):
        return {"max_buffers": self.max_buffers, "_buffers": []}


class _Encode(torch.autograd.Function):
    """x01 [N, 3] (no gradient), table [L*T, F] -> [N, L*F]; backward gives the table gradient."""

    @staticmethod
    def forward(ctx, x01: Tensor, table: Tensor, res: np.ndarray, mult: np.ndarray, dense: np.ndarray,
                table_size: int, pool: GradBufferPool | None) -> Tensor:
        x = x01.detach().float().contiguous().numpy()
        tab = table.detach().contiguous().numpy()
        out = np.empty((x.shape[0], res.shape[0] * tab.shape[1]), np.float32)            # [N, L*F]
        match_torch_threads()
        _forward(x, tab, res, mult, dense, table_size, _block(x.shape[0]), out)
        ctx.save_for_backward(x01.detach().float())
        ctx.consts = (res, mult, dense, table_size, tuple(table.shape), pool)
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (x01,) = ctx.saved_tensors
        res, mult, dense, table_size, shape, pool = ctx.consts
        grad_table = pool.take(shape) if pool is not None else np.empty(shape, np.float32)  # zeroed by _backward
        match_torch_threads()
        g = grad_out.detach().float().contiguous()                                        # [N, L*F]
        _backward(x01.contiguous().numpy(), g.numpy(), res, mult, dense, table_size, grad_table)
        return None, torch.from_numpy(grad_table), None, None, None, None, None


def encode_numba(x01: Tensor, table: Tensor, res: np.ndarray, mult: np.ndarray, dense: np.ndarray,
                 table_size: int, pool: GradBufferPool | None = None) -> Tensor:
    """x01 [N, 3] (no gradient needed), table [L*T, F] (the flattened parameters) -> [N, L*F], differentiable
    w.r.t. the table. res [L] float32 cells per axis, mult [L, 3] int64 axis multipliers (reduced mod T),
    dense [L] bool, table_size T (a power of two): the buffers of fields.hashgrid.HashGridEncoding. pool: where
    the table gradient's memory comes from (GradBufferPool; None: a new buffer per backward)."""
    assert x01.dim() == 2 and x01.shape[1] == 3, f"x01 must be [N, 3], got {tuple(x01.shape)}"
    assert table.dim() == 2 and table.shape[0] == res.shape[0] * table_size, (tuple(table.shape), table_size)
    return _Encode.apply(x01, table, res, mult, dense, table_size, pool)
