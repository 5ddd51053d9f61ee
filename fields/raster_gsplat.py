"""The gsplat rasteriser backend for the appearance Gaussians (CUDA only).

gsplat (PyPI `gsplat`, pinned in requirements-gsplat.txt) compiles its CUDA kernels the first time
they are used, with nvcc, into ~/.cache/torch_extensions (a few minutes, once). It is never imported
when this module is imported: CPU machines never pay for it, and `gsplat_available()` says whether it
can run here (CUDA, the package, a working compile) and why not.

`render_gsplat` has the contract of the pure-PyTorch backend (fields/gaussians.py `render_gaussians`):

  means [N, 3] world metres; quats [N, 4] wxyz, not necessarily normalised; log_scales [N, 3]
  (scale = exp); opacity_logits [N] (opacity = sigmoid); sh [N, K, 3] with K >= (sh_degree + 1)^2,
  3DGS convention: colour = max(0, 0.5 + sum_k SH_k(d) sh_k) per Gaussian, d = the unit direction
  from the camera centre to the Gaussian's mean; K [3, 3] OpenCV pixel units, pixel (u, v) centred at
  integer (u, v) (the scene's intrinsics.txt and recon.model.sampling.camera_dirs); c2w [4, 4] OpenCV
  camera-to-world (x right, y down, z forward).
  Returns {"rgb": [H, W, 3] (over the background), "depth_m": [H, W] alpha-normalised expected
  z-depth, 0 where alpha < min_alpha_depth (0.5), "depth_raw": [H, W] sum_i w_i z_i, "alpha": [H, W]};
  differentiable in every Gaussian parameter (not in K or c2w).

gsplat 1.5.3's rules, which the PyTorch backend must follow to agree with it (read from its
rendering.py, cuda/csrc/ProjectionEWA3DGSFused.cu, RasterizeToPixels3DGSFwd.cu, include/Utils.cuh,
include/Common.h):

  * pixel centres: gsplat samples pixel (j, i) at (j + 0.5, i + 0.5); this wrapper adds 0.5 to cx
    and cy so that pixel (u, v) is sampled at the project's integer centres.
  * near_plane 0.01 m, far_plane 1e10: a Gaussian whose mean has camera z outside is dropped.
  * EWA projection: Sigma2d = J W Sigma W^T J^T with J at the mean, where x/z is clamped to
    [-(cx/fx + 0.3 * 0.5 W/fx), (W - cx)/fx + 0.3 * 0.5 W/fx] (y likewise with H, fy, cy) before J is
    formed (cx, cy as passed to gsplat, i.e. the project's + 0.5).
  * eps2d = 0.3: 0.3 px^2 is added to both diagonal entries of Sigma2d ("classic" mode: opacity is
    NOT rescaled by the determinant ratio); a Gaussian whose blurred determinant <= 0 is dropped.
  * a Gaussian with opacity < 1/255 is dropped; its footprint is the box of half-size
    ceil(e sqrt(Sigma2d_xx)) by ceil(e sqrt(Sigma2d_yy)) px, e = min(3.33, sqrt(2 ln(255 opacity)))
    (outside it alpha < 1/255); a Gaussian whose box misses the image is dropped.
  * order: front to back by the camera z of the mean, per 16 x 16 tile.
  * per pixel: s = 0.5 d^T Sigma2d^-1 d (d = mean2d - pixel); skip if s < 0;
    alpha = min(0.999, opacity exp(-s)) (gsplat clamps at 0.999, Inria's 3DGS at 0.99); skip if
    alpha < 1/255; if T (1 - alpha) <= 1e-4 the pixel stops BEFORE this Gaussian is added;
    else C += alpha T c, T *= 1 - alpha (T starts at 1).
  * colour: 3DGS's real SH basis (C0 = 0.28209479177387814, C1 = 0.4886025119029199, ..., degree <= 4)
    at d = normalise(mean - camera centre), then max(0, 0.5 + .) with no upper clamp.
  * rgb = C + T * background (None = black); alpha = 1 - T; "RGB+D": the depth channel is
    sum_i alpha_i T_i z_i with z_i the camera z of mean i (background 0); this wrapper divides by
    max(alpha, 1e-6) where alpha >= min_alpha_depth and writes 0 elsewhere.
  * radius_clip 0, tile_size 16, packed=False, rasterize_mode "classic", camera_model "pinhole".

`render_gsplat_rules_dense` is these rules in plain PyTorch (every Gaussian at every pixel, any device):
tests/fields/test_raster_gsplat.py checks the PyTorch tile rasteriser against it on the CPU, and gsplat
against it on a GPU.
"""
from __future__ import annotations

import functools
import importlib.util
from typing import Any

import numpy as np
import torch

GSPLAT_VERSION = "1.5.3"          # the version this wrapper was written against (requirements-gsplat.txt)
NEAR_PLANE_M = 0.01               # gsplat's default near plane
FAR_PLANE_M = 1e10                # gsplat's default far plane
EPS2D_PX2 = 0.3                   # gsplat's default low-pass dilation of the 2D covariance
DEPTH_MIN_ALPHA = 0.5             # depth_m is 0 where the accumulated alpha is below this
ALPHA_MAX = 0.999                 # gsplat's clamp of one Gaussian's alpha (hard-coded in its CUDA kernels)
ALPHA_MIN = 1.0 / 255.0           # gsplat's ALPHA_THRESHOLD: smaller contributions are skipped
T_STOP = 1e-4                     # a pixel stops before the Gaussian that would bring T to <= this
EXTEND_MAX = 3.33                 # gsplat's footprint cap in standard deviations


@functools.lru_cache(maxsize=1)
def gsplat_available() -> tuple[bool, str]:
    """(True, "gsplat X on GPU") when gsplat can render here: torch sees CUDA, gsplat imports, its
    CUDA extension compiles (or is already compiled) and a one-Gaussian render runs; else (False, the
    reason). The first call on a new machine can take minutes (gsplat's JIT compile); it is cached."""
    if not torch.cuda.is_available():
        return False, (f"CUDA is not available to torch {torch.__version__} "
                       "(no NVIDIA GPU/driver here, or a CPU-only torch build)")
    if importlib.util.find_spec("gsplat") is None:
        return False, ("gsplat is not installed (pip install -r requirements-gsplat.txt, or "
                       "RECON_WITH_GSPLAT=1 bash scripts/setup.sh)")
    try:
        import gsplat  # noqa: F401  (lazy: only here and in render_gsplat)
        from gsplat.cuda._backend import _C  # the JIT compile happens at this import
    except Exception as exc:  # noqa: BLE001 - any failure of the import or the compile is "unavailable"
        return False, f"gsplat failed to import or compile its CUDA extension: {type(exc).__name__}: {exc}"
    if _C is None:
        return False, "gsplat found no CUDA toolkit (nvcc) to compile its kernels with; set CUDA_HOME"
    try:
        dev = torch.device("cuda")
        out = render_gsplat(torch.zeros(1, 3, device=dev) + torch.tensor([0.0, 0.0, 1.0], device=dev),
                            torch.tensor([[1.0, 0.0, 0.0, 0.0]], device=dev), torch.full((1, 3), -3.0, device=dev),
                            torch.full((1,), 2.0, device=dev), torch.zeros(1, 1, 3, device=dev), 0,
                            torch.tensor([[10.0, 0, 4], [0, 10.0, 4], [0, 0, 1]]), torch.eye(4), 8, 8)
        torch.cuda.synchronize()
        if not float(out["alpha"].max()) > 0.5:
            return False, "gsplat's test render of one Gaussian came out empty"
    except Exception as exc:  # noqa: BLE001
        return False, f"gsplat failed on a one-Gaussian test render: {type(exc).__name__}: {exc}"
    return True, f"gsplat {gsplat.__version__} on {torch.cuda.get_device_name()}"


def _as_tensor(x: Any, device: torch.device, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).to(device=device, dtype=torch.float32)
    if tuple(t.shape) != shape:
        raise ValueError(f"render_gsplat: {name} has shape {tuple(t.shape)}, expected {shape}")
    return t


def gsplat_camera(K: Any, c2w: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(viewmat [4, 4] world-to-camera, Ks [3, 3]) for gsplat from the project's K [3, 3] (pixel centres
    at integer coordinates) and c2w [4, 4] (OpenCV): gsplat samples pixel j at j + 0.5, so cx, cy + 0.5."""
    K_t = _as_tensor(K, device, "K", (3, 3)).clone()
    c2w_t = torch.as_tensor(np.asarray(c2w) if not torch.is_tensor(c2w) else c2w).to(device, torch.float64)
    if tuple(c2w_t.shape) != (4, 4):
        raise ValueError(f"render_gsplat: c2w has shape {tuple(c2w_t.shape)}, expected (4, 4)")
    viewmat = torch.linalg.inv(c2w_t).float()                                           # [4, 4]
    K_t[0, 2] += 0.5
    K_t[1, 2] += 0.5
    return viewmat, K_t


def render_gsplat(means: torch.Tensor, quats: torch.Tensor, log_scales: torch.Tensor,
                  opacity_logits: torch.Tensor, sh: torch.Tensor, sh_degree: int, K: Any, c2w: Any,
                  width: int, height: int, background: Any = None, min_alpha_depth: float = DEPTH_MIN_ALPHA
                  ) -> dict[str, torch.Tensor]:
    """Rasterise N Gaussians with gsplat (CUDA tensors). Contract and gsplat's rules: module docstring.

    means [N, 3] m; quats [N, 4] wxyz; log_scales [N, 3]; opacity_logits [N]; sh [N, K, 3] with
    K >= (sh_degree + 1)^2 (only the first (sh_degree + 1)^2 are used); K [3, 3]; c2w [4, 4];
    background None (black) or [3] 0..1.
    -> {"rgb": [H, W, 3], "depth_m": [H, W] (0 where alpha < min_alpha_depth), "depth_raw": [H, W]
    (sum_i w_i z_i, not normalised), "alpha": [H, W]} float32 on the Gaussians' device."""
    from gsplat import rasterization  # lazy: CUDA machines only

    N = means.shape[0]
    if means.shape != (N, 3) or quats.shape != (N, 4) or log_scales.shape != (N, 3) or opacity_logits.shape != (N,):
        raise ValueError(f"render_gsplat: shapes means {tuple(means.shape)}, quats {tuple(quats.shape)}, "
                         f"log_scales {tuple(log_scales.shape)}, opacity_logits {tuple(opacity_logits.shape)}; "
                         f"expected [N, 3], [N, 4], [N, 3], [N]")
    n_coef = (int(sh_degree) + 1) ** 2
    if sh.ndim != 3 or sh.shape[0] != N or sh.shape[2] != 3 or sh.shape[1] < n_coef:
        raise ValueError(f"render_gsplat: sh has shape {tuple(sh.shape)}, expected [{N}, >={n_coef}, 3] "
                         f"for sh_degree {sh_degree}")
    if means.device.type != "cuda":
        raise ValueError(f"render_gsplat: gsplat needs CUDA tensors, the Gaussians are on {means.device}")
    dev = means.device
    viewmat, Ks = gsplat_camera(K, c2w, dev)
    bg = None
    if background is not None:
        bg = _as_tensor(background, dev, "background", (3,))[None]                      # [1, 3]
    out, alphas, _ = rasterization(
        means.contiguous(), quats.contiguous(), torch.exp(log_scales).contiguous(),
        torch.sigmoid(opacity_logits).contiguous(), sh[:, :n_coef].contiguous(), viewmat[None], Ks[None],
        int(width), int(height), near_plane=NEAR_PLANE_M, far_plane=FAR_PLANE_M, eps2d=EPS2D_PX2,
        sh_degree=int(sh_degree), packed=False, backgrounds=bg, render_mode="RGB+D", rasterize_mode="classic")
    rgb = out[0, ..., :3]                                                                # [H, W, 3]
    depth_raw = out[0, ..., 3]                                                           # [H, W] sum w_i z_i
    alpha = alphas[0, ..., 0]                                                            # [H, W]
    depth_m = torch.where(alpha >= min_alpha_depth, depth_raw / alpha.clamp_min(1e-6), torch.zeros_like(depth_raw))
    return {"rgb": rgb, "depth_m": depth_m, "depth_raw": depth_raw, "alpha": alpha}


def _rotation(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [N, 3, 3] of quaternions [N, 4] (w, x, y, z; normalised here, as gsplat does)."""
    w, x, y, z = torch.nn.functional.normalize(q, dim=1).unbind(1)
    return torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], 1).reshape(-1, 3, 3)


def _sh_colour(sh: torch.Tensor, d: torch.Tensor, degree: int) -> torch.Tensor:
    """max(0, 0.5 + sum_k B_k(d) sh_k) [N, 3] for sh [N, K, 3] and unit d [N, 3], degree <= 3, with gsplat's
    basis B (cuda/_torch_impl.py _eval_sh_bases_fast, Sloan's form; the same real SH as 3DGS)."""
    assert 0 <= degree <= 3 and sh.shape[1] >= (degree + 1) ** 2, (degree, tuple(sh.shape))
    x, y, z = d.unbind(1)
    basis = [torch.full_like(x, 0.2820947917738781)]
    if degree >= 1:
        basis += [-0.48860251190292 * y, 0.48860251190292 * z, -0.48860251190292 * x]
    if degree >= 2:
        c1, s1 = x * x - y * y, 2 * x * y
        basis += [0.5462742152960395 * s1, -1.092548430592079 * z * y, 0.9461746957575601 * z * z - 0.3153915652525201,
                  -1.092548430592079 * z * x, 0.5462742152960395 * c1]
    if degree >= 3:
        c2, s2 = x * c1 - y * s1, x * s1 + y * c1
        tc = -2.285228997322329 * z * z + 0.4570457994644658
        basis += [-0.5900435899266435 * s2, 1.445305721320277 * z * s1, tc * y,
                  z * (1.865881662950577 * z * z - 1.119528997770346), tc * x, 1.445305721320277 * z * c1,
                  -0.5900435899266435 * c2]
    B = torch.stack(basis, 1)                                                            # [N, (deg+1)^2]
    return ((B[:, :, None] * sh[:, :B.shape[1]]).sum(1) + 0.5).clamp_min(0.0)


@torch.no_grad()
def render_gsplat_rules_dense(means: torch.Tensor, quats: torch.Tensor, log_scales: torch.Tensor,
                              opacity_logits: torch.Tensor, sh: torch.Tensor, sh_degree: int, K: Any, c2w: Any,
                              width: int, height: int, background: Any = None,
                              min_alpha_depth: float = DEPTH_MIN_ALPHA, chunk_px: int = 4096
                              ) -> dict[str, torch.Tensor]:
    """gsplat's forward rules (module docstring) evaluated densely, every Gaussian at every pixel, in
    plain PyTorch on any device: the executable form of those rules, for tests and
    scripts/gpu_appearance_check.py (it checks this against gsplat itself on a GPU, and the PyTorch
    tile rasteriser against this on the CPU). Same arguments and outputs as `render_gsplat`; no
    gradients; memory N x chunk_px, so for small N only (a few thousand Gaussians)."""
    dev = means.device
    viewmat, Ks = gsplat_camera(K, c2w, dev)
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    p = means.float() @ R.T + t                                                          # [N, 3] camera
    z = p[:, 2]
    fx, fy, cx, cy = Ks[0, 0], Ks[1, 1], Ks[0, 2], Ks[1, 2]                              # gsplat's cx, cy
    zs = torch.where(z > 0, z, torch.ones_like(z))
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    tx = zs * (p[:, 0] / zs).clamp(-(cx / fx + 0.3 * tan_x), (width - cx) / fx + 0.3 * tan_x)
    ty = zs * (p[:, 1] / zs).clamp(-(cy / fy + 0.3 * tan_y), (height - cy) / fy + 0.3 * tan_y)
    zero = torch.zeros_like(zs)
    J = torch.stack([fx / zs, zero, -fx * tx / zs ** 2, zero, fy / zs, -fy * ty / zs ** 2], 1).reshape(-1, 2, 3)
    M = _rotation(quats.float()) * torch.exp(log_scales.float())[:, None, :]            # R S  [N, 3, 3]
    JW = J @ R[None]                                                                     # [N, 2, 3]
    cov2 = JW @ (M @ M.transpose(1, 2)) @ JW.transpose(1, 2) + EPS2D_PX2 * torch.eye(2, device=dev)
    a, b, c = cov2[:, 0, 0], cov2[:, 0, 1], cov2[:, 1, 1]
    det = a * c - b * b
    mx, my = fx * p[:, 0] / zs + cx, fy * p[:, 1] / zs + cy                              # [N] gsplat pixels
    opac = torch.sigmoid(opacity_logits.float())
    ext = torch.sqrt(2.0 * torch.log(opac.clamp_min(ALPHA_MIN) / ALPHA_MIN)).clamp_max(EXTEND_MAX)
    rx, ry = torch.ceil(ext * a.clamp_min(0).sqrt()), torch.ceil(ext * c.clamp_min(0).sqrt())
    keep = (z >= NEAR_PLANE_M) & (z <= FAR_PLANE_M) & (det > 0) & (opac >= ALPHA_MIN)
    keep &= ~((mx + rx <= 0) | (mx - rx >= width) | (my + ry <= 0) | (my - ry >= height))
    idx = torch.nonzero(keep).squeeze(1)
    idx = idx[torch.argsort(z[idx], stable=True)]                                        # front to back
    cam = torch.linalg.inv(viewmat.double())[:3, 3].float()
    dirs = means[idx].float() - cam
    colour = _sh_colour(sh[idx].float(), dirs / dirs.norm(dim=1, keepdim=True).clamp_min(1e-12), int(sh_degree))
    ci, bi, ai = (c / det)[idx, None], (-b / det)[idx, None], (a / det)[idx, None]       # conic
    py, px = torch.meshgrid(torch.arange(height, device=dev) + 0.5, torch.arange(width, device=dev) + 0.5,
                            indexing="ij")
    px, py = px.reshape(-1), py.reshape(-1)
    rgb, alpha, depth_raw = [], [], []
    for s in range(0, len(px), chunk_px):
        dx = mx[idx, None] - px[None, s:s + chunk_px]                                    # [n, P]
        dy = my[idx, None] - py[None, s:s + chunk_px]
        sig = 0.5 * (ci * dx * dx + ai * dy * dy) + bi * dx * dy
        al = (opac[idx, None] * torch.exp(-sig)).clamp_max(ALPHA_MAX)
        al = torch.where((sig >= 0) & (al >= ALPHA_MIN), al, torch.zeros_like(al)).double()
        t_after = torch.cumprod(1.0 - al, 0)                                             # [n, P]
        stopped = torch.cummax((t_after <= T_STOP).int(), 0).values.bool()
        t_before = torch.cat([torch.ones_like(t_after[:1]), t_after[:-1]])
        w = (al * t_before).masked_fill(stopped, 0.0).float()                            # [n, P]
        rgb.append(w.T @ colour)
        alpha.append(w.sum(0))
        depth_raw.append(w.T @ z[idx])
    rgb, alpha, depth_raw = torch.cat(rgb), torch.cat(alpha), torch.cat(depth_raw)
    if background is not None:
        rgb = rgb + (1.0 - alpha)[:, None] * _as_tensor(background, dev, "background", (3,))[None]
    rgb, alpha, depth_raw = rgb.reshape(height, width, 3), alpha.reshape(height, width), depth_raw.reshape(height, width)
    depth_m = torch.where(alpha >= min_alpha_depth, depth_raw / alpha.clamp_min(1e-6), torch.zeros_like(depth_raw))
    return {"rgb": rgb, "depth_m": depth_m, "depth_raw": depth_raw, "alpha": alpha}
