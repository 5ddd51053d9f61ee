"""3D Gaussians of the appearance branch (method Sec. 6, Eqs. 16-17) and their pure-PyTorch rasteriser.

A Gaussian i has a mean mu_i [3] (metres, world), a rotation (quaternion q_i, w x y z, unnormalised), a
scale s_i [3] (stored as log), an opacity o_i (stored as a logit) and spherical-harmonic colour
coefficients (3DGS's convention: rgb = 0.5 + SH(d) . c, d the unit direction from the camera centre).
Its covariance is Sigma = R S S^T R^T. Projected with the EWA Jacobian J of the pinhole camera it is
Sigma' = J W Sigma W^T J^T (+ eps2d I, a 0.3 px^2 low-pass as in 3DGS and gsplat), and pixels are
alpha-blended front to back: C = sum_i c_i a_i prod_{j<i} (1 - a_j), a_i = min(0.99, o_i exp(-d^T Sigma'^-1 d / 2)),
contributions with a_i < 1/255 skipped.

Why our own rasteriser: gsplat, the maintained one, runs on CUDA only (its `_torch_impl` projects but does
not rasterise). This is the CPU path and the reference the gsplat backend (fields/raster_gsplat.py) is
tested against. It is differentiable end to end with autograd: means, scales, rotations, opacities and
SH coefficients all get gradients.

Camera convention everywhere: OpenCV (x right, y down, z forward), K in pixels with pixel (u, v) at the
pixel centre, i.e. pixel index u sits at image coordinate u (recon/model/sampling.camera_dirs).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)

ALPHA_MAX = 0.99          # 3DGS / gsplat clamp of a Gaussian's alpha
ALPHA_MIN = 1.0 / 255.0   # contributions below this are skipped
EPS2D = 0.3               # px^2 added to the projected covariance (gsplat's eps2d default)
NEAR_M = 0.01             # Gaussians closer than this to the camera plane are culled


def rgb_to_sh_dc(rgb: Tensor) -> Tensor:
    """Colour in [0, 1] -> the degree-0 SH coefficient giving that colour from every direction."""
    return (rgb - 0.5) / SH_C0


def sh_basis_count(degree: int) -> int:
    return (degree + 1) ** 2


def eval_sh(sh: Tensor, dirs: Tensor, degree: int) -> Tensor:
    """Colour [N, 3] of SH coefficients sh [N, K, 3] (K >= (degree+1)^2) seen along unit dirs [N, 3]
    (camera -> Gaussian), 3DGS's real SH basis up to degree 3; rgb = max(0, 0.5 + sum)."""
    assert sh.ndim == 3 and sh.shape[-1] == 3 and dirs.shape == (sh.shape[0], 3)
    assert 0 <= degree <= 3 and sh.shape[1] >= sh_basis_count(degree)
    out = SH_C0 * sh[:, 0]
    if degree > 0:
        x, y, z = dirs[:, 0:1], dirs[:, 1:2], dirs[:, 2:3]
        out = out - SH_C1 * y * sh[:, 1] + SH_C1 * z * sh[:, 2] - SH_C1 * x * sh[:, 3]
        if degree > 1:
            xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
            out = (out + SH_C2[0] * xy * sh[:, 4] + SH_C2[1] * yz * sh[:, 5]
                   + SH_C2[2] * (2 * zz - xx - yy) * sh[:, 6] + SH_C2[3] * xz * sh[:, 7]
                   + SH_C2[4] * (xx - yy) * sh[:, 8])
            if degree > 2:
                out = (out + SH_C3[0] * y * (3 * xx - yy) * sh[:, 9] + SH_C3[1] * xy * z * sh[:, 10]
                       + SH_C3[2] * y * (4 * zz - xx - yy) * sh[:, 11]
                       + SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh[:, 12]
                       + SH_C3[4] * x * (4 * zz - xx - yy) * sh[:, 13] + SH_C3[5] * z * (xx - yy) * sh[:, 14]
                       + SH_C3[6] * x * (xx - 3 * yy) * sh[:, 15])
    return (out + 0.5).clamp_min(0.0)


def quat_to_rotmat(q: Tensor) -> Tensor:
    """Rotation matrices [N, 3, 3] of quaternions q [N, 4] (w, x, y, z; normalised here)."""
    assert q.ndim == 2 and q.shape[1] == 4
    w, x, y, z = (q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)).unbind(1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], dim=1).reshape(-1, 3, 3)


def rotmat_to_quat(R: Tensor) -> Tensor:
    """Quaternions [N, 4] (w, x, y, z, w >= 0) of rotation matrices R [N, 3, 3] (Shepperd's method)."""
    assert R.ndim == 3 and R.shape[1:] == (3, 3)
    m = R
    tr = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    cand = torch.stack([
        torch.stack([1 + tr, m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], 1),
        torch.stack([m[:, 2, 1] - m[:, 1, 2], 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2], m[:, 0, 1] + m[:, 1, 0],
                     m[:, 0, 2] + m[:, 2, 0]], 1),
        torch.stack([m[:, 0, 2] - m[:, 2, 0], m[:, 0, 1] + m[:, 1, 0], 1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2],
                     m[:, 1, 2] + m[:, 2, 1]], 1),
        torch.stack([m[:, 1, 0] - m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1],
                     1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], 1)], 1)             # [N, 4 candidates, 4]
    diag = torch.stack([tr, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], 1)
    best = diag.argmax(1)
    q = cand[torch.arange(len(R)), best]
    q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return torch.where(q[:, :1] < 0, -q, q)


class GaussianModel(nn.Module):
    """N Gaussians with learnable parameters; N changes under densification (fields/densify.py)."""

    def __init__(self, means: Tensor, quats: Tensor, log_scales: Tensor, opacity_logits: Tensor,
                 sh_dc: Tensor, sh_rest: Tensor | None = None, sh_degree: int = 3):
        super().__init__()
        n = means.shape[0]
        assert means.shape == (n, 3) and quats.shape == (n, 4) and log_scales.shape == (n, 3)
        assert opacity_logits.shape == (n,) and sh_dc.shape == (n, 3)
        assert 0 <= sh_degree <= 3
        k = sh_basis_count(sh_degree) - 1
        if sh_rest is None:
            sh_rest = torch.zeros(n, k, 3, dtype=means.dtype, device=means.device)
        assert sh_rest.shape == (n, k, 3)
        self.sh_degree = sh_degree
        self.means = nn.Parameter(means.float().contiguous())                   # [N, 3] metres
        self.quats = nn.Parameter(quats.float().contiguous())                   # [N, 4] w x y z
        self.log_scales = nn.Parameter(log_scales.float().contiguous())         # [N, 3] log metres
        self.opacity_logits = nn.Parameter(opacity_logits.float().contiguous())  # [N]
        self.sh_dc = nn.Parameter(sh_dc.float().contiguous())                   # [N, 3]
        self.sh_rest = nn.Parameter(sh_rest.float().contiguous())               # [N, K-1, 3]
        self.register_buffer("active_degree", torch.zeros((), dtype=torch.long))  # raised during training

    PARAMS = ("means", "quats", "log_scales", "opacity_logits", "sh_dc", "sh_rest")

    @property
    def n(self) -> int:
        return int(self.means.shape[0])

    def scales(self) -> Tensor:
        return self.log_scales.exp()

    def opacities(self) -> Tensor:
        return torch.sigmoid(self.opacity_logits)

    def sh(self) -> Tensor:
        return torch.cat([self.sh_dc[:, None, :], self.sh_rest], dim=1)            # [N, K, 3]

    def colors(self, cam_center: Tensor, idx: Tensor | None = None) -> Tensor:
        """Colour [N or len(idx), 3] seen from the camera centre [3] at the active SH degree."""
        means = self.means if idx is None else self.means[idx]
        sh = self.sh() if idx is None else torch.cat([self.sh_dc[idx, None, :], self.sh_rest[idx]], dim=1)
        dirs = means - cam_center[None, :]
        dirs = dirs / dirs.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return eval_sh(sh, dirs, int(self.active_degree))

    def replace(self, **params: Tensor) -> None:
        """Swap parameter tensors (new N) in place, keeping the module; the optimiser is updated by the caller."""
        for name, value in params.items():
            assert name in self.PARAMS
            setattr(self, name, nn.Parameter(value.detach().contiguous()))

    @classmethod
    def from_state_dict(cls, state: dict, sh_degree: int) -> "GaussianModel":
        """A model sized from a saved state dict (N is whatever the checkpoint had)."""
        g = cls(state["means"], state["quats"], state["log_scales"], state["opacity_logits"], state["sh_dc"],
                state["sh_rest"], sh_degree=sh_degree)
        g.load_state_dict(state)
        return g


# ----------------------------------------------------------------------------- projection (EWA)


def project_gaussians(means: Tensor, quats: Tensor, scales: Tensor, K: Tensor, w2c: Tensor, width: int,
                      height: int, eps2d: float = EPS2D, near_m: float = NEAR_M):
    """EWA projection of 3D Gaussians into a pinhole camera.

    means [N, 3], quats [N, 4], scales [N, 3] (metres), K [3, 3], w2c [4, 4] (OpenCV).
    Returns (uv [N, 2] pixel coordinates of the means, conic [N, 3] = (a, b, c) of the inverse 2D covariance
    [[a, b], [b, c]], z [N] camera depth in metres, radius [N] pixels (3 sigma of the major axis, 0 = culled),
    cov2d [N, 2, 2]).
    """
    n = means.shape[0]
    assert means.shape == (n, 3) and quats.shape == (n, 4) and scales.shape == (n, 3)
    assert K.shape == (3, 3) and w2c.shape == (4, 4)
    Rcw, tcw = w2c[:3, :3], w2c[:3, 3]
    p = means @ Rcw.T + tcw                                                        # [N, 3] camera frame
    z = p[:, 2]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    zs = z.clamp_min(near_m)
    # the Jacobian is evaluated at x/z, y/z clamped to the image's extent plus 30 % of the half field of
    # view on each side (gsplat's rule), so that Gaussians far outside the image do not blow up
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    tx = (p[:, 0] / zs).clamp(-(cx / fx + 0.3 * tan_x), (width - cx) / fx + 0.3 * tan_x) * zs
    ty = (p[:, 1] / zs).clamp(-(cy / fy + 0.3 * tan_y), (height - cy) / fy + 0.3 * tan_y) * zs
    zero = torch.zeros_like(zs)
    J = torch.stack([fx / zs, zero, -fx * tx / (zs * zs),
                     zero, fy / zs, -fy * ty / (zs * zs)], dim=1).reshape(n, 2, 3)  # [N, 2, 3]
    R = quat_to_rotmat(quats)                                                      # [N, 3, 3]
    M = R * scales[:, None, :]                                                     # R S
    cov3 = M @ M.transpose(1, 2)                                                   # [N, 3, 3] world
    T = J @ Rcw[None]                                                              # [N, 2, 3]
    cov2 = T @ cov3 @ T.transpose(1, 2)                                            # [N, 2, 2]
    cov2 = cov2 + eps2d * torch.eye(2, dtype=cov2.dtype, device=cov2.device)
    a, b, c = cov2[:, 0, 0], cov2[:, 0, 1], cov2[:, 1, 1]
    det = (a * c - b * b).clamp_min(1e-12)
    conic = torch.stack([c / det, -b / det, a / det], dim=1)                       # [N, 3]
    uv = torch.stack([fx * p[:, 0] / zs + cx, fy * p[:, 1] / zs + cy], dim=1)      # [N, 2]
    mid = 0.5 * (a + c)
    lam = mid + (mid * mid - det).clamp_min(0.1).sqrt()
    radius = torch.ceil(3.0 * lam.sqrt()).detach()
    on_screen = ((uv[:, 0] + radius >= 0) & (uv[:, 0] - radius <= width - 1)
                 & (uv[:, 1] + radius >= 0) & (uv[:, 1] - radius <= height - 1))
    keep = (z > near_m) & on_screen.detach()
    radius = torch.where(keep, radius, torch.zeros_like(radius))
    return uv, conic, z, radius, cov2


# ----------------------------------------------------------------------------- tile rasteriser


def _tile_pairs(uv: Tensor, z: Tensor, radius: Tensor, width: int, height: int, tile: int):
    """(g [P] Gaussian of each pair, tid [P] its tile) sorted by tile, then front to back; n_tiles, ntx, nty."""
    dev = uv.device
    ntx, nty = (width + tile - 1) // tile, (height + tile - 1) // tile
    r2 = radius if radius.ndim > 1 else radius[:, None]                             # [N, 1 or 2]
    vis = torch.nonzero(r2.amin(1) > 0).squeeze(1)
    vis = vis[torch.argsort(z.detach()[vis])]                                       # front to back
    u, v = uv[vis, 0].detach(), uv[vis, 1].detach()
    rx, ry = (radius[vis], radius[vis]) if radius.ndim == 1 else (radius[vis, 0], radius[vis, 1])
    tx0 = ((u - rx).clamp(0, width - 1) / tile).floor().long()
    tx1 = ((u + rx).clamp(0, width - 1) / tile).floor().long()
    ty0 = ((v - ry).clamp(0, height - 1) / tile).floor().long()
    ty1 = ((v + ry).clamp(0, height - 1) / tile).floor().long()
    nx, ny = tx1 - tx0 + 1, ty1 - ty0 + 1
    counts = nx * ny                                                                # tiles per Gaussian
    g = torch.repeat_interleave(torch.arange(len(vis), device=dev), counts)        # [P] depth-ordered
    first = torch.cumsum(counts, 0) - counts
    k = torch.arange(len(g), device=dev) - first[g]
    tid = (ty0[g] + k // nx[g]) * ntx + (tx0[g] + k % nx[g])                       # [P] tile id
    tid, order = torch.sort(tid, stable=True)                                       # by tile, depth kept
    return vis[g[order]], tid, ntx * nty, ntx, nty


def _pair_alpha(uv: Tensor, conic: Tensor, opacity: Tensor, g: Tensor, tid: Tensor, ntx: int, tile: int):
    """Per pair and tile pixel: (alpha [P, Q], power [P, Q], free [P, Q] bool: alpha neither clamped nor
    skipped, dx, dy [P, Q] pixel minus projected mean), Q = tile^2."""
    dev, dt = uv.device, uv.dtype
    ly, lx = torch.meshgrid(torch.arange(tile, device=dev, dtype=dt), torch.arange(tile, device=dev, dtype=dt),
                            indexing="ij")
    ox = ((tid % ntx) * tile).to(dt) - uv[g, 0]                                    # [P] tile origin - mean
    oy = ((tid // ntx) * tile).to(dt) - uv[g, 1]
    dx = ox[:, None] + lx.reshape(1, -1)                                            # [P, Q]
    dy = oy[:, None] + ly.reshape(1, -1)
    a, b, c = conic[g, 0:1], conic[g, 1:2], conic[g, 2:3]
    power = -0.5 * (dx * (a * dx + 2.0 * b * dy) + c * dy * dy)                   # [P, Q]
    raw = opacity[g, None] * torch.exp(power.clamp_max(0.0))
    active = (power <= 0) & (raw >= ALPHA_MIN)
    alpha = torch.where(active, raw.clamp_max(ALPHA_MAX), torch.zeros_like(raw))
    return alpha, power, active & (raw < ALPHA_MAX), dx, dy


def _segment_exclusive(x: Tensor, tid: Tensor, n_tiles: int) -> tuple[Tensor, Tensor]:
    """Per pair (rows sorted by tile): (sum of x over the earlier pairs of its tile [P, Q] float64,
    sum over all pairs of its tile [n_tiles, Q] float64). float64: the running sum spans every tile."""
    cum = torch.cumsum(x.double(), dim=0)                                           # [P, Q] inclusive
    count = torch.bincount(tid, minlength=n_tiles)
    end = torch.cumsum(count, 0)                                                    # one past each tile's last pair
    start = end - count
    zero = torch.zeros_like(cum[:1])
    base = torch.where((start > 0)[:, None], cum[(start - 1).clamp_min(0)], zero)   # [n_tiles, Q]
    total = torch.where((count > 0)[:, None], cum[(end - 1).clamp_min(0)], zero) - base
    return cum - x.double() - base[tid], total


class _Blend(torch.autograd.Function):
    """Front-to-back blending of the pairs with a hand-written backward (3DGS's gradient, vectorised):
    with w_i = alpha_i T_i and G_i = dL/dw_i,  dL/dalpha_i = T_i G_i - (sum_{j>i} w_j G_j) / (1 - alpha_i),
    then alpha = o exp(power) gives dL/do, and power(dx, dy, conic) gives dL/duv and dL/dconic per pair,
    summed per Gaussian. Autograd through the same maths (rasterize_reference) is 3-4x slower on CPU."""

    @staticmethod
    def forward(ctx, uv, conic, opacity, features, g, tid, n_tiles, ntx, tile):
        alpha, power, free, dx, dy = _pair_alpha(uv, conic, opacity, g, tid, ntx, tile)
        log_t = torch.log1p(-alpha)
        trans = torch.exp(_segment_exclusive(log_t, tid, n_tiles)[0]).to(alpha.dtype)   # T before each pair
        w = alpha * trans                                                            # [P, Q]
        feat = features[g]                                                          # [P, C]
        C = features.shape[1]
        out = torch.stack([torch.zeros(n_tiles, tile * tile, dtype=w.dtype, device=w.device).index_add_(
            0, tid, w * feat[:, ci:ci + 1]) for ci in range(C)], dim=-1)           # [n_tiles, Q, C]
        acc = torch.zeros(n_tiles, tile * tile, dtype=w.dtype, device=w.device).index_add_(0, tid, w)
        ctx.save_for_backward(uv, conic, opacity, features, g, tid, alpha, trans, power, free, dx, dy)
        ctx.n_tiles = n_tiles
        return out, acc

    @staticmethod
    def backward(ctx, g_out, g_acc):
        uv, conic, opacity, features, g, tid, alpha, trans, power, free, dx, dy = ctx.saved_tensors
        feat = features[g]                                                          # [P, C]
        w = alpha * trans
        go = g_out[tid]                                                             # [P, Q, C]
        G = (go * feat[:, None, :]).sum(-1) + g_acc[tid]                            # [P, Q] dL/dw
        d_feat = torch.einsum("pq,pqc->pc", w, go)                                 # [P, C]
        excl, total = _segment_exclusive(w * G, tid, ctx.n_tiles)
        after = (total[tid] - excl - (w * G).double()).to(w.dtype)                  # sum over later pairs
        d_alpha = trans * G - after / (1.0 - alpha)
        d_raw = torch.where(free, d_alpha, torch.zeros_like(d_alpha))               # clamped / skipped: 0
        d_power = d_raw * alpha                                                     # d alpha / d power = alpha
        d_op = (d_raw * torch.exp(power.clamp_max(0.0))).sum(1)                     # [P]
        a, b, c = conic[g, 0:1], conic[g, 1:2], conic[g, 2:3]
        d_u = (d_power * (a * dx + b * dy)).sum(1)
        d_v = (d_power * (c * dy + b * dx)).sum(1)
        d_a = (d_power * (-0.5 * dx * dx)).sum(1)
        d_b = (d_power * (-dx * dy)).sum(1)
        d_c = (d_power * (-0.5 * dy * dy)).sum(1)
        n = uv.shape[0]
        grad_uv = torch.zeros_like(uv).index_add_(0, g, torch.stack([d_u, d_v], 1))
        grad_conic = torch.zeros_like(conic).index_add_(0, g, torch.stack([d_a, d_b, d_c], 1))
        grad_op = torch.zeros(n, dtype=opacity.dtype, device=opacity.device).index_add_(0, g, d_op)
        grad_feat = torch.zeros_like(features).index_add_(0, g, d_feat)
        return grad_uv, grad_conic, grad_op, grad_feat, None, None, None, None, None


def _untile(out: Tensor, acc: Tensor, ntx: int, nty: int, tile: int, width: int, height: int):
    C = out.shape[-1]
    img = out.reshape(nty, ntx, tile, tile, C).permute(0, 2, 1, 3, 4).reshape(nty * tile, ntx * tile, C)
    alpha_img = acc.reshape(nty, ntx, tile, tile).permute(0, 2, 1, 3).reshape(nty * tile, ntx * tile)
    return img[:height, :width], alpha_img[:height, :width]


def rasterize(uv: Tensor, conic: Tensor, z: Tensor, radius: Tensor, features: Tensor, opacity: Tensor,
              width: int, height: int, tile: int = 8, blend: str = "torch") -> tuple[Tensor, Tensor]:
    """Front-to-back alpha blending of projected Gaussians; returns (features [H, W, C], alpha [H, W]).

    uv [N, 2], conic [N, 3], z [N] (sort key), radius [N] or [N, 2] (x, y half extents in pixels; 0 = skip),
    features [N, C], opacity [N]. Each Gaussian is paired with the tiles (tile x tile pixels) its box touches; pairs are sorted
    by tile, then depth; every pair evaluates its alpha at all pixels of its tile ([P, tile^2]); the
    transmittance before each pair is a cumulative sum of log(1 - alpha) over the pairs of its tile
    (float64, per pixel). The output is not normalised by alpha (blend the background outside).
    Differentiable in uv, conic, opacity and features (hand-written backward, _Blend).
    blend: "torch" (_Blend, this module) or "numba" (fields/raster_numba.py: the same blending as compiled
    per-pixel loops that stop at transmittance 1e-4; CPU tensors only).
    """
    n, C = features.shape
    assert uv.shape == (n, 2) and conic.shape == (n, 3) and z.shape == (n,) and radius.shape in ((n,), (n, 2))
    assert opacity.shape == (n,)
    g, tid, n_tiles, ntx, nty = _tile_pairs(uv, z, radius, width, height, tile)
    if len(g) == 0:
        zeros = torch.zeros(n_tiles, tile * tile, dtype=features.dtype, device=uv.device)
        out = torch.stack([zeros] * C, -1) + 0 * features.sum() + 0 * uv.sum() + 0 * conic.sum() + 0 * opacity.sum()
        return _untile(out, zeros, ntx, nty, tile, width, height)
    if blend == "numba":
        from fields.raster_numba import BlendNumba
        out, acc = BlendNumba.apply(uv, conic, opacity, features, g, tid, n_tiles, ntx, tile)
    else:
        out, acc = _Blend.apply(uv, conic, opacity, features, g, tid, n_tiles, ntx, tile)
    return _untile(out, acc, ntx, nty, tile, width, height)


def rasterize_reference(uv: Tensor, conic: Tensor, z: Tensor, radius: Tensor, features: Tensor, opacity: Tensor,
                        width: int, height: int, tile: int = 8) -> tuple[Tensor, Tensor]:
    """The same blending written with autograd only: the reference the hand-written backward is tested
    against (tests/fields/test_gaussians.py)."""
    C = features.shape[1]
    g, tid, n_tiles, ntx, nty = _tile_pairs(uv, z, radius, width, height, tile)
    alpha, _, _, _, _ = _pair_alpha(uv, conic, opacity, g, tid, ntx, tile)
    log_t = torch.log1p(-alpha)
    cum = torch.cumsum(log_t.double(), dim=0)
    count = torch.bincount(tid, minlength=n_tiles)
    start = torch.cumsum(count, 0) - count
    base = torch.where((start > 0)[:, None], cum[(start - 1).clamp_min(0)], torch.zeros_like(cum[:1]))
    trans = torch.exp(cum - log_t.double() - base[tid]).to(alpha.dtype)
    w = alpha * trans
    acc = torch.zeros(n_tiles, tile * tile, dtype=w.dtype).index_add(0, tid, w)
    out = torch.stack([torch.zeros(n_tiles, tile * tile, dtype=w.dtype).index_add(0, tid, w * features[g, ci:ci + 1])
                       for ci in range(C)], dim=-1)
    return _untile(out, acc, ntx, nty, tile, width, height)


def pick_tile(width: int, height: int) -> int:
    """Tile edge in pixels. Small tiles waste fewer evaluations on pixels outside a Gaussian's box; measured
    on the room's Gaussians (2 CPU threads, PyTorch blending): 4 px gave 4.2 frames/s at 160x120 (8 px: 1.9)
    and 0.57 at 640x480 (8 px: 0.45; 16 px slower still). The numba blending renders 10.9 / 2.2 at 4 px."""
    return 4


def render_gaussians(g: GaussianModel, K: Tensor, c2w: Tensor, width: int, height: int,
                     background: Tensor | None = None, backend: str = "torch", tile: int | None = None,
                     min_alpha_depth: float = 0.5) -> dict[str, Tensor]:
    """Render the Gaussians from one camera.

    K [3, 3] pixels, c2w [4, 4] OpenCV camera-to-world. Returns rgb [H, W, 3] in [0, 1] (over `background`
    [3], default black), depth_m [H, W] (alpha-normalised expected z-depth, 0 where alpha < min_alpha_depth),
    depth_raw [H, W] (sum of weight * z, not normalised: the depth loss uses it), alpha [H, W], and for
    densification index [M] (the Gaussians that were projected: frustum_candidates), uv [M, 2] (their
    projected means; call .retain_grad() before backward) and visible [M] bool (touching the image).
    backend: "torch" (this module), "numba" (this module's projection, blending compiled for the CPU:
    fields/raster_numba.py) or "gsplat" (CUDA, fields/raster_gsplat.py); see resolve_backend for "auto".
    """
    assert K.shape == (3, 3) and c2w.shape == (4, 4)
    dev = g.means.device
    K, c2w = K.to(dev, torch.float32), c2w.to(dev, torch.float32)
    if background is None:
        background = torch.zeros(3, device=dev)
    if backend == "gsplat":
        from fields.raster_gsplat import render_gsplat                              # CUDA only; lazy
        return render_gsplat(g.means, g.quats, g.log_scales, g.opacity_logits, g.sh(), int(g.active_degree),
                             K, c2w, width, height, background, min_alpha_depth=min_alpha_depth)
    if backend not in ("torch", "numba"):
        raise ValueError(f"unknown rasteriser backend {backend!r} (torch | numba | gsplat)")
    w2c = torch.linalg.inv(c2w)
    idx = frustum_candidates(g, K, w2c, width, height)                              # [M] worth projecting
    uv, conic, z, radius, cov2 = project_gaussians(g.means[idx], g.quats[idx], g.log_scales[idx].exp(), K, w2c,
                                                   width, height)
    opacity = torch.sigmoid(g.opacity_logits[idx])
    extent = pixel_extent(cov2.detach(), opacity.detach()) * (radius > 0)[:, None]  # [M, 2]
    vis = extent.amin(1) > 0
    cam = c2w[:3, 3]
    feats = torch.zeros(len(idx), 4, device=dev)
    sub = torch.nonzero(vis).squeeze(1)
    feats = feats.index_put((sub,), torch.cat([g.colors(cam, idx[sub]), z[sub, None]], dim=1))
    img, alpha = rasterize(uv, conic, z, extent, feats, opacity, width, height, tile=tile or pick_tile(width, height),
                           blend=backend)
    rgb = img[..., :3] + (1.0 - alpha)[..., None] * background
    depth_raw = img[..., 3]
    depth = torch.where(alpha >= min_alpha_depth, depth_raw / alpha.clamp_min(1e-6), torch.zeros_like(depth_raw))
    return {"rgb": rgb, "depth_m": depth, "depth_raw": depth_raw, "alpha": alpha, "uv": uv, "index": idx,
            "visible": vis}


def resolve_backend(name: str, device: torch.device | str = "cpu") -> str:
    """The rasteriser a setting names: "auto" is gsplat for CUDA tensors where gsplat works, else numba
    where Numba imports (CPU), else torch; a named backend that cannot run here raises ValueError."""
    cuda = torch.device(device).type == "cuda"
    if name == "auto":
        if cuda:
            from fields.raster_gsplat import gsplat_available
            return "gsplat" if gsplat_available()[0] else "torch"
        from fields.numba_jit import numba_available
        return "numba" if numba_available()[0] else "torch"
    if name == "numba":
        from fields.numba_jit import numba_available
        ok, why = numba_available()
        if not ok:
            raise ValueError(f"appearance.backend=numba: {why}")
        if cuda:
            raise ValueError("appearance.backend=numba runs on the CPU; the Gaussians are on CUDA (use gsplat or torch)")
    elif name not in ("torch", "gsplat"):
        raise ValueError(f"unknown rasteriser backend {name!r} (auto | torch | numba | gsplat)")
    return name


def pixel_extent(cov2: Tensor, opacity: Tensor) -> Tensor:
    """Half extents [N, 2] (x, y, whole pixels) of the box outside which a Gaussian's alpha is below 1/255:
    e sqrt(Sigma'_xx), e sqrt(Sigma'_yy) with e = min(3.33, sqrt(2 ln(255 o))) (gsplat's rule); 0 when the
    opacity itself is below 1/255."""
    e = torch.sqrt(2.0 * torch.log((255.0 * opacity).clamp_min(1.0))).clamp_max(3.33)    # [N]
    ext = torch.ceil(e[:, None] * torch.stack([cov2[:, 0, 0], cov2[:, 1, 1]], 1).clamp_min(0).sqrt())
    return torch.where((opacity >= ALPHA_MIN)[:, None], ext, torch.zeros_like(ext))


@torch.no_grad()
def frustum_candidates(g: GaussianModel, K: Tensor, w2c: Tensor, width: int, height: int) -> Tensor:
    """Indices [M] of the Gaussians that may touch the image: in front of the near plane and with the
    mean within a conservative 3-sigma (largest scale) + 2 px of the image. A cheap test on all N, so
    that the differentiable projection runs on these alone (a training window sees a small share)."""
    p = g.means @ w2c[:3, :3].T + w2c[:3, 3]                                       # [N, 3]
    z = p[:, 2].clamp_min(NEAR_M)
    r = 3.0 * g.log_scales.max(dim=1).values.exp() * torch.maximum(K[0, 0], K[1, 1]) / z + 2.0
    u = K[0, 0] * p[:, 0] / z + K[0, 2]
    v = K[1, 1] * p[:, 1] / z + K[1, 2]
    keep = (p[:, 2] > NEAR_M) & (u + r >= 0) & (u - r <= width - 1) & (v + r >= 0) & (v - r <= height - 1)
    return torch.nonzero(keep).squeeze(1)


def patch_camera(K: Tensor, x0: int, y0: int) -> Tensor:
    """Intrinsics of the window of an image starting at pixel (x0, y0): the principal point moves."""
    Kp = K.clone()
    Kp[0, 2] -= x0
    Kp[1, 2] -= y0
    return Kp


def normal_rotation(normals: Tensor) -> Tensor:
    """Quaternions [N, 4] of rotations taking the local z axis to the unit normals [N, 3]
    (a disc-shaped Gaussian with its thin axis z lies in the surface)."""
    n = normals / normals.norm(dim=1, keepdim=True).clamp_min(1e-12)
    ref = torch.where((n[:, 0].abs() < 0.9)[:, None], torch.tensor([1.0, 0, 0]).to(n), torch.tensor([0, 1.0, 0]).to(n))
    t1 = torch.linalg.cross(ref, n)
    t1 = t1 / t1.norm(dim=1, keepdim=True).clamp_min(1e-12)
    t2 = torch.linalg.cross(n, t1)
    R = torch.stack([t1, t2, n], dim=2)                                            # columns: x, y, z axes
    return rotmat_to_quat(R)
