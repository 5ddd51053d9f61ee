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

import numpy as np
import torch
from torch import Tensor

from fields.numba_jit import match_torch_threads, njit, numba, prange


if numba is not None:
    @njit(cache=True, inline="always")
    def _corner_row(cx: int, cy: int, cz: int, mx: int, my: int, mz: int, dense: bool, mask: int, off: int) -> int:
        """Row of corner (cx, cy, cz) in the flattened [L*T] table (the rule of hash_grid_indices_weights)."""
        tx = (cx * mx) & mask
        ty = (cy * my) & mask
        tz = (cz * mz) & mask
        if dense:
            return off + tx + ty + tz
        return off + (tx ^ ty ^ tz)

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
    def _corner(c: int, i0: int, i1: int, i2: int, f0, f1, f2, mx: int, my: int, mz: int, dense: bool, mask: int,
                off: int):
        """(trilinear weight, table row) of corner c = 4 cz + 2 cy + cx of the cell; the weight multiplied
        (z * y) * x as the torch backend does, so the sums agree to the bit."""
        bx, by, bz = c & 1, (c >> 1) & 1, (c >> 2) & 1
        w = ((f2 if bz else np.float32(1.0) - f2) * (f1 if by else np.float32(1.0) - f1)
             * (f0 if bx else np.float32(1.0) - f0))
        return w, _corner_row(i0 + bx, i1 + by, i2 + bz, mx, my, mz, dense, mask, off)

    @njit(parallel=True, cache=True, fastmath=False)
    def _forward(x: np.ndarray, table: np.ndarray, res: np.ndarray, mult: np.ndarray, dense: np.ndarray,
                 table_size: int, out: np.ndarray) -> None:
        """x [N, 3] float32 in any range (clamped to [0, 1]); table [L*T, F]; out [L, N, F] (written). One level
        per thread: a thread reads one level's table (cache-friendly) and writes its own output block (no
        false sharing of cache lines between threads)."""
        n_pts = x.shape[0]
        n_levels = res.shape[0]
        n_feat = table.shape[1]
        mask = table_size - 1
        for lv in prange(n_levels):
            r = res[lv]
            off = lv * table_size
            for n in range(n_pts):
                i0, i1, i2, f0, f1, f2 = _cell(x, n, r)
                for f in range(n_feat):
                    out[lv, n, f] = np.float32(0.0)
                for c in range(8):
                    w, row = _corner(c, i0, i1, i2, f0, f1, f2, mult[lv, 0], mult[lv, 1], mult[lv, 2], dense[lv],
                                     mask, off)
                    for f in range(n_feat):
                        out[lv, n, f] += w * table[row, f]

    @njit(parallel=True, cache=True, fastmath=False)
    def _backward(x: np.ndarray, grad_out: np.ndarray, res: np.ndarray, mult: np.ndarray, dense: np.ndarray,
                  table_size: int, grad_table: np.ndarray) -> None:
        """grad_table [L*T, F] += sum over points and corners of w * grad_out[level, n]; grad_out [L, N, F] (level
        major: each thread reads its level's block contiguously); one level per thread (its rows only)."""
        n_pts = x.shape[0]
        n_levels = res.shape[0]
        n_feat = grad_table.shape[1]
        mask = table_size - 1
        for lv in prange(n_levels):
            r = res[lv]
            off = lv * table_size
            for n in range(n_pts):
                i0, i1, i2, f0, f1, f2 = _cell(x, n, r)
                for c in range(8):
                    w, row = _corner(c, i0, i1, i2, f0, f1, f2, mult[lv, 0], mult[lv, 1], mult[lv, 2], dense[lv],
                                     mask, off)
                    for f in range(n_feat):
                        grad_table[row, f] += w * grad_out[lv, n, f]


class _Encode(torch.autograd.Function):
    """x01 [N, 3] (no gradient), table [L*T, F] -> [N, L*F]; backward gives the table gradient."""

    @staticmethod
    def forward(ctx, x01: Tensor, table: Tensor, res: np.ndarray, mult: np.ndarray, dense: np.ndarray,
                table_size: int) -> Tensor:
        x = x01.detach().float().contiguous().numpy()
        tab = table.detach().contiguous().numpy()
        out = np.empty((res.shape[0], x.shape[0], tab.shape[1]), np.float32)              # [L, N, F]
        match_torch_threads()
        _forward(x, tab, res, mult, dense, table_size, out)
        ctx.save_for_backward(x01.detach().float())
        ctx.consts = (res, mult, dense, table_size, tuple(table.shape))
        return torch.from_numpy(out).permute(1, 0, 2).reshape(x.shape[0], out.shape[0] * out.shape[2])  # [N, L*F]

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (x01,) = ctx.saved_tensors
        res, mult, dense, table_size, shape = ctx.consts
        grad_table = np.zeros(shape, np.float32)
        match_torch_threads()
        n_pts, n_levels = x01.shape[0], res.shape[0]
        g = grad_out.detach().float().reshape(n_pts, n_levels, shape[1]).permute(1, 0, 2).contiguous()  # [L, N, F]
        _backward(x01.contiguous().numpy(), g.numpy(), res, mult, dense, table_size, grad_table)
        return None, torch.from_numpy(grad_table), None, None, None, None


def encode_numba(x01: Tensor, table: Tensor, res: np.ndarray, mult: np.ndarray, dense: np.ndarray,
                 table_size: int) -> Tensor:
    """x01 [N, 3] (no gradient needed), table [L*T, F] (the flattened parameters) -> [N, L*F], differentiable
    w.r.t. the table. res [L] float32 cells per axis, mult [L, 3] int64 axis multipliers (reduced mod T),
    dense [L] bool, table_size T (a power of two): the buffers of fields.hashgrid.HashGridEncoding."""
    assert x01.dim() == 2 and x01.shape[1] == 3, f"x01 must be [N, 3], got {tuple(x01.shape)}"
    assert table.dim() == 2 and table.shape[0] == res.shape[0] * table_size, (tuple(table.shape), table_size)
    return _Encode.apply(x01, table, res, mult, dense, table_size)
