"""Multiresolution hash encoding (instant-NGP), one interface, two backends.

Coordinate convention (torch backend and the loop reference, identical)
-----------------------------------------------------------------------
Input ``x01`` [N, 3] is the position in the normalised scene box, each axis in
[0, 1] (values outside are clamped to [0, 1]; the clamp has zero gradient, so keep
query points inside the box).

Level ``l`` (0 .. L-1) has ``N_l = floor(base * b**l)`` cells per axis, with the
growth factor ``b = exp((ln finest - ln base) / (L - 1))`` (b = 1 when L == 1).
Grid vertices sit at the integer coordinates 0 .. N_l (``N_l + 1`` per axis), so
the scaled position is simply ``pos = x01 * N_l`` (no half-cell offset):

    cell = min(floor(pos), N_l - 1)       (so x01 == 1 lands in the last cell)
    frac = pos - cell                     in [0, 1]
    out  = sum over the 8 corners c in {0,1}^3 of
           prod_d (frac_d if c_d else 1 - frac_d) * table[l, index_l(cell + c)]

Vertex index (i, j, k) -> table row:
  * dense level, ``(N_l + 1)**3 <= T``:  i + j * (N_l + 1) + k * (N_l + 1)**2 (1:1,
    only the first (N_l + 1)**3 rows of that level are used);
  * hashed level: ``(i * 1 XOR j * 2654435761 XOR k * 805459861) mod T`` with
    T = 2**log2_hashmap_size (the mod is a bit mask; only the low log2(T) bits of
    each product matter, which lets the products be masked before the XOR).

Parameters: one tensor ``params`` [L, T, F] float32, uniform in
[-init_scale, init_scale]. Output: [N, L * F] float32, level-major
(``out[:, l * F:(l + 1) * F]`` is level l).

The tiny-cuda-nn backend ("HashGrid", per_level_scale = b) is a thin wrapper. It
is NOT bit-compatible with the torch backend: tcnn uses ``pos = x * (base * b**l
- 1) + 0.5`` (half-cell offset, non-integer scales), per-level table sizes
min(res**3, T) and (by default) half-precision parameters. Same config, same
interface, same kind of function, but checkpoints do not transfer between
backends.

Speed notes (torch backend, CPU; no Python loop over levels)
  1. Per-axis corner terms [3, 2, L, N] (cell * (1, N+1, (N+1)^2) or * primes reduced mod T), masked
     to log2(T) bits; the level offset l*T is folded into the x term (its bits are >= log2 T, so
     '+' and XOR agree). All in int32 when (N_l + 1) * T < 2^31, else int64.
  2. The 8 corner rows of all levels, idx [8, L, N], by broadcasting over the *leading* dims ('+'
     for the dense prefix of levels, XOR for the hashed rest); trilinear weights w [8, L, N] the
     same way (an outer product of per-axis weights; its autograd is cheap, which matters for the
     eikonal double backward). Broadcasting over tiny inner dims (an [N, L, 8] layout) was ~3x slower.
  3. idx and w transposed to corner-innermost [L*N, 8]; one index_select on the flattened table
     viewed as complex64 (F = 2 floats = one 8-byte element per corner; ~2.5x faster than gathering
     float rows, also in the backward index_add); weighted sum as one bmm [L*N,1,8] @ [L*N,8,F].
  Measured forward+backward on uniform random points, N = 65536, 2 threads (shared machine, best of
  4): 16 levels / 2^19 ~1.4e5 points/s, 12 levels / 2^17 ~2.0e5 points/s (first naive version
  6e4 / 9e4). torch.compile (``compile=True``) measured 2.7e4 / 3.2e4 and cannot double-backward,
  so it is off. ``benchmark_hash_grid`` re-measures (``python run.py grid-speed``). The Numba backend
  (NumbaHashGridEncoding, fields/hashgrid_numba.py) is 0.87-1.06 M points/s on the same grid (2026-12-06).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor, nn

from fields.stages import stage

PRIME_Y = 2654435761
PRIME_Z = 805459861


@dataclass
class HashGridConfig:
    n_levels: int = 16
    n_features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    finest_resolution: int = 512  # set by the caller from scene size / target cell size
    init_scale: float = 1e-4
    backend: str = "auto"  # "auto" | "torch" | "tcnn"
    use_complex_gather: bool = True  # torch backend: gather F=2 features as one complex64 (faster)
    corner_inner: bool = True  # torch backend: corners innermost ([L*N, 8]) for gather + bmm (measured faster)
    int32_indices: bool = True  # torch backend: int32 indices when L*T and (N_l+1)*T < 2**31 (faster)
    compile: bool = False  # torch backend: torch.compile the encoder (slower on the 2-core CPU; no double backward)


def growth_factor(cfg: HashGridConfig) -> float:
    """Per-level scale b = exp((ln finest - ln base) / (L - 1))."""
    if cfg.n_levels <= 1:
        return 1.0
    return math.exp((math.log(cfg.finest_resolution) - math.log(cfg.base_resolution)) / (cfg.n_levels - 1))


def level_resolutions(cfg: HashGridConfig) -> list[int]:
    """N_l = floor(base * b**l) cells per axis for each level l."""
    b = growth_factor(cfg)
    # tiny epsilon so that e.g. 16 * 2**1 computed as 31.9999999 floors to 32
    return [int(math.floor(cfg.base_resolution * b**level + 1e-6)) for level in range(cfg.n_levels)]


def level_is_dense(resolution: int, table_size: int) -> bool:
    return (resolution + 1) ** 3 <= table_size


def resolution_for_cell_size(scene_extent_m: float, cell_size_m: float) -> int:
    """Finest resolution giving cells of about ``cell_size_m`` over ``scene_extent_m`` (box side)."""
    return max(1, int(math.ceil(scene_extent_m / cell_size_m)))


# ----------------------------------------------------------------------------------------------
# Reference (loop based, clarity over speed)
# ----------------------------------------------------------------------------------------------
def encode_level_reference(params_level: Tensor, x01: Tensor, resolution: int, dense: bool) -> Tensor:
    """One level, computed point by point and corner by corner (for tests).

    params_level [T, F], x01 [N, 3] in [0, 1] -> [N, F]. Same convention as the module docstring.
    """
    assert params_level.dim() == 2 and x01.dim() == 2 and x01.shape[1] == 3
    table_size, n_feat = params_level.shape
    if dense:
        assert (resolution + 1) ** 3 <= table_size
    out = torch.zeros(x01.shape[0], n_feat, dtype=params_level.dtype)
    for n in range(x01.shape[0]):
        pos = [min(max(float(x01[n, d]), 0.0), 1.0) * resolution for d in range(3)]
        cell = [min(int(math.floor(p)), resolution - 1) for p in pos]
        frac = [pos[d] - cell[d] for d in range(3)]
        for cz in (0, 1):
            for cy in (0, 1):
                for cx in (0, 1):
                    i, j, k = cell[0] + cx, cell[1] + cy, cell[2] + cz
                    if dense:
                        row = i + j * (resolution + 1) + k * (resolution + 1) ** 2
                    else:
                        row = (i * 1 ^ j * PRIME_Y ^ k * PRIME_Z) % table_size
                    weight = (
                        (frac[0] if cx else 1 - frac[0])
                        * (frac[1] if cy else 1 - frac[1])
                        * (frac[2] if cz else 1 - frac[2])
                    )
                    out[n] += weight * params_level[row]
    return out


# ----------------------------------------------------------------------------------------------
# Vectorised torch backend
# ----------------------------------------------------------------------------------------------
def hash_grid_indices_weights(
    x01: Tensor,
    res: Tensor,
    axis_mult: Tensor,
    level_offset: Tensor,
    n_dense: int,
    table_size: int,
    index_dtype: torch.dtype = torch.int32,
) -> tuple[Tensor, Tensor]:
    """All levels' corner rows (into the flattened [L*T] table) and trilinear weights, corner-major.

    x01 [N, 3]; res [L] float32 (N_l); axis_mult [L, 3] ((1, N+1, (N+1)^2) dense or (1, P_y, P_z),
    optionally already reduced mod T, in ``index_dtype``); level_offset [L] (l * T).
    Returns idx [8, L, N] (index_dtype) and w [8, L, N] float32; corner c = 4 * cz + 2 * cy + cx.

    int32 is exact when every product (N_l + 1) * (mult mod T) < 2**31 (checked by the caller): only
    the low log2(T) bits of a hashed product matter, so the primes may be reduced mod T first.
    Corner- and level-major layout keeps every elementwise op contiguous along N (broadcasting over
    tiny inner dims was ~3x slower on CPU).
    """
    n_pts = x01.shape[0]
    n_levels = res.shape[0]
    pos = x01.clamp(0.0, 1.0).t()[:, None, :] * res[None, :, None]  # [3, L, N] in grid units
    cell = torch.minimum(pos.detach().floor(), (res - 1.0)[None, :, None])  # [3, L, N]
    frac = pos - cell  # [3, L, N], differentiable w.r.t. x01
    mult = axis_mult.t()[:, :, None].to(index_dtype)  # [3, L, 1]
    corner = torch.empty(3, 2, n_levels, n_pts, dtype=index_dtype, device=x01.device)  # per-axis terms
    torch.mul(cell.to(index_dtype), mult, out=corner[:, 0])  # corner bit 0
    torch.add(corner[:, 0], mult, out=corner[:, 1])  # corner bit 1
    # Only the low log2(T) bits of hashed terms matter; dense terms are < (N+1)^3 <= T, so the mask is a
    # no-op for them. The level offset l*T has only bits >= log2(T): adding it to the x term is the same
    # as XOR-ing it, so it is folded in before the combination for both kinds of level.
    corner &= table_size - 1
    corner[0] += level_offset.to(index_dtype)[None, :, None]
    cx, cy, cz = corner[0], corner[1], corner[2]  # [2, L, N] each
    idx = torch.empty(2, 2, 2, n_levels, n_pts, dtype=index_dtype, device=x01.device)
    if n_dense > 0:
        d = slice(0, n_dense)
        torch.add(cz[:, None, None, d] + cy[None, :, None, d], cx[None, None, :, d], out=idx[:, :, :, d])
    if n_dense < n_levels:
        h = slice(n_dense, n_levels)
        torch.bitwise_xor(cz[:, None, None, h] ^ cy[None, :, None, h], cx[None, None, :, h], out=idx[:, :, :, h])
    wa = torch.stack((1.0 - frac, frac), dim=1)  # [3, 2, L, N] per-axis weights of corner bit 0 / 1
    # outer product over the three axes by broadcasting over leading dims (cheap forward and backward)
    w = (wa[2][:, None, None] * wa[1][None, :, None]) * wa[0][None, None, :]  # [2, 2, 2, L, N]
    return idx.view(8, n_levels, n_pts), w.view(8, n_levels, n_pts)


def interpolate_table(
    table_flat: Tensor, idx: Tensor, w: Tensor, use_complex: bool, corner_inner: bool = False
) -> Tensor:
    """table_flat [L*T, F], idx [8, L, N], w [8, L, N] -> [N, L, F] (sum_c w_c * table[idx_c]).

    The weighted sum over corners is one batched matmul [L*N, 1, 8] @ [L*N, 8, F] (torch uses a
    plain strided loop for such tiny matrices, so corner-major strided operands need no copy); the
    gather's backward is a single index_add into the table gradient. ``corner_inner`` transposes
    idx and w to [L*N, 8] first (contiguous bmm operands; measured faster on this CPU).
    """
    _, n_levels, n_pts = idx.shape
    n_feat = table_flat.shape[1]
    m = n_levels * n_pts
    if corner_inner:
        flat_idx = idx.reshape(8, m).t().reshape(-1)  # [L*N*8], corner innermost
        w_m = w.reshape(8, m).t().reshape(m, 1, 8)  # [L*N, 1, 8]
    else:
        flat_idx = idx.reshape(-1)  # [8*L*N], corner outermost
        w_m = w.reshape(8, m).t()[:, None, :]  # [L*N, 1, 8] strided view
    if use_complex and n_feat % 2 == 0:
        # F float32 features = F/2 complex64 numbers: one 8-byte element per corner and feature pair
        tab_c = torch.view_as_complex(table_flat.view(table_flat.shape[0], n_feat // 2, 2))  # [L*T, F/2]
        if n_feat == 2:
            feats = torch.view_as_real(tab_c.view(-1).index_select(0, flat_idx))  # [8*L*N, 2]
        else:
            feats = torch.view_as_real(tab_c.index_select(0, flat_idx)).reshape(-1, n_feat)
    else:
        feats = table_flat.index_select(0, flat_idx)  # [8*L*N, F]
    if corner_inner:
        feats_m = feats.view(m, 8, n_feat)
    else:
        feats_m = feats.view(8, m, n_feat).permute(1, 0, 2)  # [L*N, 8, F] strided view
    out = torch.bmm(w_m, feats_m)  # [L*N, 1, F]
    return out.view(n_levels, n_pts, n_feat).permute(1, 0, 2)  # [N, L, F]


class HashGridEncoding(nn.Module):
    """Pure-PyTorch multiresolution hash encoding. x01 [N, 3] -> [N, L * F] float32."""

    def __init__(self, cfg: HashGridConfig, n_input_dims: int = 3):
        super().__init__()
        assert n_input_dims == 3, "only 3-D inputs are supported"
        assert cfg.finest_resolution >= cfg.base_resolution >= 1
        self.cfg = cfg
        self.n_levels = cfg.n_levels
        self.n_features = cfg.n_features_per_level
        self.table_size = 2**cfg.log2_hashmap_size
        self.out_dim = cfg.n_levels * cfg.n_features_per_level
        resolutions = level_resolutions(cfg)
        dense = [level_is_dense(r, self.table_size) for r in resolutions]
        # resolutions are non-decreasing, so the dense levels form a prefix
        self.n_dense = sum(dense)
        assert all(dense[: self.n_dense]) and not any(dense[self.n_dense :])
        self.resolutions = resolutions
        self.register_buffer("res", torch.tensor(resolutions, dtype=torch.float32), persistent=False)
        mult = [[1, r + 1, (r + 1) ** 2] if d else [1, PRIME_Y, PRIME_Z] for r, d in zip(resolutions, dense)]
        mult = [[m % self.table_size for m in row] for row in mult]  # exact: only the low log2(T) bits matter
        self.register_buffer("axis_mult", torch.tensor(mult, dtype=torch.int64), persistent=False)
        self.register_buffer(
            "level_offset", torch.arange(cfg.n_levels, dtype=torch.int64) * self.table_size, persistent=False
        )
        # int32 corner indices are faster to build; only possible when every row id fits
        # (the hashed primes are reduced mod T; every (N_l + 1) * mult and every row id must fit)
        self.index_dtype = torch.int64
        if cfg.int32_indices and cfg.n_levels * self.table_size < 2**31:
            if (max(resolutions) + 1) * self.table_size < 2**31:
                self.index_dtype = torch.int32
        self.params = nn.Parameter(
            torch.empty(cfg.n_levels, self.table_size, cfg.n_features_per_level).uniform_(
                -cfg.init_scale, cfg.init_scale
            )
        )
        # inductor cannot generate code for complex ops: the compiled path gathers float rows
        self.use_complex = cfg.use_complex_gather and not cfg.compile
        self._encode = self._encode_eager
        if cfg.compile:
            self._encode = torch.compile(self._encode_eager, dynamic=True)

    def _encode_eager(self, x01: Tensor) -> Tensor:
        idx, w = hash_grid_indices_weights(
            x01, self.res, self.axis_mult, self.level_offset, self.n_dense, self.table_size, self.index_dtype
        )
        table_flat = self.params.view(-1, self.n_features)  # [L*T, F]
        out = interpolate_table(table_flat, idx, w, self.use_complex, self.cfg.corner_inner)
        return out.reshape(x01.shape[0], self.out_dim)

    def forward(self, x01: Tensor) -> Tensor:
        assert x01.dim() == 2 and x01.shape[1] == 3, f"x01 must be [N, 3], got {tuple(x01.shape)}"
        with stage("hash grid"):
            out = self._encode(x01.float())
        assert out.shape == (x01.shape[0], self.out_dim)
        return out


class NumbaHashGridEncoding(HashGridEncoding):
    """The hash encoding with the Numba CPU kernels of fields/hashgrid_numba.py: same parameters, buffers and
    state dict as HashGridEncoding (checkpoints move between the two) and the same numbers (tested to the
    bit). Points that need a gradient (the eikonal term differentiates through them, twice) and tensors on
    a GPU take HashGridEncoding's path."""

    def __init__(self, cfg: HashGridConfig, n_input_dims: int = 3):
        from fields.numba_jit import numba_available
        ok, why = numba_available()
        if not ok:
            raise RuntimeError(f"hash grid backend 'numba' requested but {why}")
        super().__init__(cfg, n_input_dims)
        self._np = (np.asarray(self.resolutions, np.float32),                              # [L] cells per axis
                    self.axis_mult.numpy().astype(np.int64).copy(),                        # [L, 3]
                    np.array([lv < self.n_dense for lv in range(self.n_levels)]))          # [L] dense levels
        from fields.hashgrid_numba import GradBufferPool
        self._grad_pool = GradBufferPool()                                                 # scratch, not state

    def forward(self, x01: Tensor) -> Tensor:
        assert x01.dim() == 2 and x01.shape[1] == 3, f"x01 must be [N, 3], got {tuple(x01.shape)}"
        if x01.requires_grad or x01.device.type != "cpu" or self.params.device.type != "cpu":
            return super().forward(x01)
        from fields.hashgrid_numba import encode_numba
        with stage("hash grid"):
            out = encode_numba(x01, self.params.view(-1, self.n_features), *self._np, self.table_size,
                               self._grad_pool)
        assert out.shape == (x01.shape[0], self.out_dim)
        return out


class TcnnHashGridEncoding(nn.Module):
    """tiny-cuda-nn "HashGrid" with the same config; CUDA only. Output cast to float32."""

    def __init__(self, cfg: HashGridConfig, n_input_dims: int = 3):
        super().__init__()
        import tinycudann as tcnn  # lazy: only where installed

        self.cfg = cfg
        self.out_dim = cfg.n_levels * cfg.n_features_per_level
        self.encoding = tcnn.Encoding(
            n_input_dims=n_input_dims,
            encoding_config={
                "otype": "HashGrid",
                "n_levels": cfg.n_levels,
                "n_features_per_level": cfg.n_features_per_level,
                "log2_hashmap_size": cfg.log2_hashmap_size,
                "base_resolution": cfg.base_resolution,
                "per_level_scale": growth_factor(cfg),
                "interpolation": "Linear",
            },
        )

    def forward(self, x01: Tensor) -> Tensor:
        assert x01.dim() == 2 and x01.shape[1] == 3, f"x01 must be [N, 3], got {tuple(x01.shape)}"
        with stage("hash grid"):
            return self.encoding(x01.clamp(0.0, 1.0)).float()


def tcnn_available() -> tuple[bool, str]:
    """(available, reason) for the tiny-cuda-nn backend."""
    if not torch.cuda.is_available():
        return False, "CUDA is not available"
    try:
        import tinycudann  # noqa: F401
    except Exception as exc:  # ImportError or a broken build
        return False, f"tinycudann cannot be imported ({type(exc).__name__}: {exc})"
    return True, "ok"


def make_hash_grid(cfg: HashGridConfig, n_input_dims: int = 3) -> nn.Module:
    """The backend cfg.backend names (an error if it cannot run); "auto": tcnn where it imports and CUDA runs,
    else numba where it imports (its kernels run on the CPU; on a GPU it takes the torch path), else torch."""
    if cfg.backend == "torch":
        return HashGridEncoding(cfg, n_input_dims)
    if cfg.backend == "tcnn":
        ok, why = tcnn_available()
        if not ok:
            raise RuntimeError(f"hash grid backend 'tcnn' requested but {why}")
        return TcnnHashGridEncoding(cfg, n_input_dims)
    if cfg.backend == "numba":
        return NumbaHashGridEncoding(cfg, n_input_dims)
    if cfg.backend == "auto":
        if tcnn_available()[0]:
            return TcnnHashGridEncoding(cfg, n_input_dims)
        from fields.numba_jit import numba_available
        return NumbaHashGridEncoding(cfg, n_input_dims) if numba_available()[0] else HashGridEncoding(cfg, n_input_dims)
    raise ValueError(f"unknown hash grid backend {cfg.backend!r}")


def estimate_hash_grid_bytes(cfg: HashGridConfig) -> int:
    """Bytes of parameters + gradient + Adam state (exp_avg, exp_avg_sq): 4 float32 copies of [L, T, F].

    An upper bound for both backends (tcnn allocates less for dense coarse levels).
    """
    n_params = cfg.n_levels * (2**cfg.log2_hashmap_size) * cfg.n_features_per_level
    return 4 * n_params * 4


def estimate_hash_grid_activation_bytes(cfg: HashGridConfig, n_points: int) -> int:
    """Rough bytes kept for backward per forward of ``n_points`` (torch backend): corner indices
    (int64), weights and gathered features, for [N, L, 8] corners."""
    per_corner = 8 + 4 + 4 * cfg.n_features_per_level * 2
    return n_points * cfg.n_levels * 8 * per_corner


def benchmark_hash_grid(
    cfg: HashGridConfig, n_points: int = 65536, reps: int = 5, x_requires_grad: bool = False, seed: int = 0,
    backend: str = "torch",
) -> dict[str, float]:
    """Forward+backward throughput of one CPU backend (``backend``: "torch" or "numba") on uniform random
    points in the unit cube: the worst case for the caches (a fit's samples lie along rays, near each other).

    Best of ``reps`` after one warm-up call (which also compiles). ``points_per_s`` uses wall time;
    ``points_per_cpu_s`` uses process CPU time (all threads), which is less disturbed by other tenants of a
    shared machine. The gradient is set to None before every pass, as a training step does.
    """
    if backend not in ("torch", "numba"):
        raise ValueError(f"benchmark_hash_grid measures the CPU backends 'torch' and 'numba', not {backend!r}")
    gen = torch.Generator().manual_seed(seed)
    enc = HashGridEncoding(cfg) if backend == "torch" else make_hash_grid(replace(cfg, backend=backend))
    x = torch.rand(n_points, 3, generator=gen).requires_grad_(x_requires_grad)
    grad_out = torch.randn(n_points, enc.out_dim, generator=gen)
    wall, cpu = [], []
    for i in range(reps + 1):
        enc.params.grad = None
        t0, c0 = time.perf_counter(), time.process_time()
        enc(x).backward(grad_out)
        if i > 0:  # first call warms up (and compiles, if enabled)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return {
        "points_per_s": n_points / min(wall),
        "points_per_cpu_s": n_points / min(cpu),
        "seconds_best": min(wall),
        "seconds_median": sorted(wall)[len(wall) // 2],
    }
