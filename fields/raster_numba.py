"""CPU rasteriser backend of the appearance Gaussians, compiled with Numba: the blending step of
fields/gaussians.py (`_Blend`) as per-pixel loops, forward and backward.

Why: the pure-PyTorch rasteriser has to evaluate every (Gaussian, tile) pair at every pixel of its tile
and turn the front-to-back product into a float64 cumulative sum over all pairs, because PyTorch has no
segmented loop. On 2 CPU cores that is about 3 frames/s at 160x120. A loop per pixel instead multiplies
the transmittance in place, stops once it is below T_STOP (as 3DGS and gsplat do) and skips the
arithmetic of pixels a Gaussian does not reach. Numba (a maintained JIT compiler) compiles those loops
at first use (cached in __pycache__), with no C compiler; `prange` spreads the tiles over the cores.

Everything around the blending is shared with the PyTorch backend: the projection, the pixel boxes and
the (tile, depth) ordering of the pairs (fields/gaussians.py `_tile_pairs`). The PyTorch backend is the
reference this one is tested against (tests/fields/test_raster_numba.py): images within T_STOP x the
largest feature, gradients within float32 rounding.

The backward is 3DGS's: each pixel walks its pairs back to front from the last one it blended, recovers
T_i = T_{i+1} / (1 - alpha_i), and with w_i = alpha_i T_i, G_i = dL/dw_i,
dL/dalpha_i = T_i G_i - (sum_{j>i} w_j G_j) / (1 - alpha_i). Gradients are written per pair (a pair
belongs to one tile, a tile to one thread: no races, deterministic) and summed per Gaussian with
index_add outside the kernel.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from fields.numba_jit import match_torch_threads, njit, numba, prange

ALPHA_MAX = 0.99          # as fields/gaussians.py
ALPHA_MIN = 1.0 / 255.0
T_STOP = 1e-4             # a pixel stops blending once its transmittance is below this (3DGS, gsplat)


if numba is not None:
    @njit(parallel=True, cache=True, fastmath=False)
    def _forward_kernel(uv, conic, opac, feat, pair_g, tile_start, ntx, tile, t_stop, out, acc, t_end, n_done):
        """out [n_tiles, Q, C], acc [n_tiles, Q]: blended features and alpha; t_end [n_tiles, Q] the
        transmittance after the last blended pair; n_done [n_tiles, Q] one past that pair (index into pairs)."""
        n_tiles = tile_start.shape[0] - 1
        C = feat.shape[1]
        Q = tile * tile
        for t in prange(n_tiles):
            s = tile_start[t]
            e = tile_start[t + 1]
            x0 = (t % ntx) * tile
            y0 = (t // ntx) * tile
            for q in range(Q):
                px = x0 + q % tile
                py = y0 + q // tile
                T = 1.0
                last = s
                for p in range(s, e):
                    gi = pair_g[p]
                    dx = px - uv[gi, 0]
                    dy = py - uv[gi, 1]
                    power = -0.5 * (dx * (conic[gi, 0] * dx + 2.0 * conic[gi, 1] * dy) + conic[gi, 2] * dy * dy)
                    if power > 0.0:
                        continue
                    raw = opac[gi] * math.exp(power)
                    if raw < ALPHA_MIN:
                        continue
                    alpha = min(raw, ALPHA_MAX)
                    w = alpha * T
                    for c in range(C):
                        out[t, q, c] += w * feat[gi, c]
                    acc[t, q] += w
                    T *= 1.0 - alpha
                    last = p + 1
                    if T < t_stop:
                        break
                t_end[t, q] = T
                n_done[t, q] = last

    @njit(parallel=True, cache=True, fastmath=False)
    def _backward_kernel(uv, conic, opac, feat, pair_g, tile_start, ntx, tile, t_end, n_done, g_out, g_acc,
                         d_uv, d_conic, d_op, d_feat):
        """Per-pair gradients d_uv [P, 2], d_conic [P, 3], d_op [P], d_feat [P, C] (zero-initialised)."""
        n_tiles = tile_start.shape[0] - 1
        C = feat.shape[1]
        Q = tile * tile
        for t in prange(n_tiles):
            s = tile_start[t]
            x0 = (t % ntx) * tile
            y0 = (t // ntx) * tile
            for q in range(Q):
                px = x0 + q % tile
                py = y0 + q // tile
                T = np.float64(t_end[t, q])
                after = 0.0
                ga = g_acc[t, q]
                for p in range(n_done[t, q] - 1, s - 1, -1):
                    gi = pair_g[p]
                    dx = px - uv[gi, 0]
                    dy = py - uv[gi, 1]
                    a = conic[gi, 0]
                    b = conic[gi, 1]
                    cc = conic[gi, 2]
                    power = -0.5 * (dx * (a * dx + 2.0 * b * dy) + cc * dy * dy)
                    if power > 0.0:
                        continue
                    ex = math.exp(power)
                    raw = opac[gi] * ex
                    if raw < ALPHA_MIN:
                        continue
                    alpha = min(raw, ALPHA_MAX)
                    T = T / (1.0 - alpha)                      # transmittance before this pair
                    w = alpha * T
                    G = ga
                    for c in range(C):
                        G += g_out[t, q, c] * feat[gi, c]
                        d_feat[p, c] += w * g_out[t, q, c]
                    d_alpha = T * G - after / (1.0 - alpha)
                    after += w * G
                    if raw < ALPHA_MAX:                        # clamped alphas pass no gradient
                        d_power = d_alpha * alpha
                        d_op[p] += d_alpha * ex
                        d_uv[p, 0] += d_power * (a * dx + b * dy)
                        d_uv[p, 1] += d_power * (cc * dy + b * dx)
                        d_conic[p, 0] += d_power * (-0.5 * dx * dx)
                        d_conic[p, 1] += d_power * (-dx * dy)
                        d_conic[p, 2] += d_power * (-0.5 * dy * dy)


def _np(x: Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().cpu().numpy())


class BlendNumba(torch.autograd.Function):
    """The contract of fields/gaussians.py `_Blend`: (out [n_tiles, Q, C], acc [n_tiles, Q]) from the pairs
    g [P] (Gaussian per pair) and tid [P] (tile per pair), sorted by tile, then front to back."""

    @staticmethod
    def forward(ctx, uv, conic, opacity, features, g, tid, n_tiles, ntx, tile):
        dt = features.dtype
        q = tile * tile
        count = torch.bincount(tid, minlength=n_tiles)
        tile_start = torch.zeros(n_tiles + 1, dtype=torch.int64)
        tile_start[1:] = torch.cumsum(count.cpu(), 0)
        arrays = (_np(uv.to(dt)), _np(conic.to(dt)), _np(opacity.to(dt)), _np(features), _np(g.to(torch.int64)),
                  tile_start.numpy())
        npdt = arrays[3].dtype
        out = np.zeros((n_tiles, q, features.shape[1]), npdt)
        acc = np.zeros((n_tiles, q), npdt)
        t_end = np.zeros((n_tiles, q), np.float64)
        n_done = np.zeros((n_tiles, q), np.int64)
        match_torch_threads()
        _forward_kernel(*arrays, ntx, tile, T_STOP, out, acc, t_end, n_done)   # module value read per call (tests set 0)
        ctx.arrays, ctx.t_end, ctx.n_done, ctx.ntx, ctx.tile = arrays, t_end, n_done, ntx, tile
        ctx.save_for_backward(g)
        ctx.shapes = (uv.shape, conic.shape, opacity.shape, features.shape, uv.dtype, conic.dtype, opacity.dtype)
        dev = features.device
        return torch.from_numpy(out).to(dev), torch.from_numpy(acc).to(dev)

    @staticmethod
    def backward(ctx, g_out, g_acc):
        (g,) = ctx.saved_tensors
        uv, conic, opac, feat, pair_g, tile_start = ctx.arrays
        P, C = len(pair_g), feat.shape[1]
        npdt = feat.dtype
        d_uv, d_conic = np.zeros((P, 2), npdt), np.zeros((P, 3), npdt)
        d_op, d_feat = np.zeros(P, npdt), np.zeros((P, C), npdt)
        match_torch_threads()
        _backward_kernel(uv, conic, opac, feat, pair_g, tile_start, ctx.ntx, ctx.tile, ctx.t_end, ctx.n_done,
                         _np(g_out.to(_torch_dtype(npdt))), _np(g_acc.to(_torch_dtype(npdt))), d_uv, d_conic, d_op, d_feat)
        uv_shape, conic_shape, op_shape, feat_shape, uv_dt, conic_dt, op_dt = ctx.shapes
        dev = g_out.device
        gi = g.to(dev)

        def gather(shape, dtype, per_pair):
            return torch.zeros(shape, dtype=dtype, device=dev).index_add_(0, gi, torch.from_numpy(per_pair).to(dev, dtype))
        return (gather(uv_shape, uv_dt, d_uv), gather(conic_shape, conic_dt, d_conic), gather(op_shape, op_dt, d_op),
                gather(feat_shape, g_out.dtype, d_feat), None, None, None, None, None)


def _torch_dtype(npdt) -> torch.dtype:
    return torch.float64 if npdt == np.float64 else torch.float32
