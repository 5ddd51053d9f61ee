"""The appearance branch's glue: Gaussians initialised from the training frames, and its loss (Eq. 34).

fields/gaussians.py holds the Gaussians and the rasteriser; fields/densify.py the densification
strategy. Here: back-projected depth -> surface-aligned disc Gaussians, patch sampling, and
L_rgb = (1 - lambda1) L1 + lambda1 (1 - SSIM) + lambda2 L_d, with L_d tying the splatted depth to the
observed depth, plus the tie of the Gaussians' means to the SDF surface (|sdf(mu)|, the SDF detached).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fields.gaussians import GaussianModel, normal_rotation, patch_camera, render_gaussians, rgb_to_sh_dc
from recon.model.sampling import FrameBank


def frame_points(bank: FrameBank, row: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """World points [H, W, 3], normals [H, W, 3] (towards the camera), colours [H, W, 3] in [0, 1] and a
    validity mask [H, W] of bank row `row` (valid: observed depth and a normal from all four neighbours
    without a depth jump of more than 5 % of the depth)."""
    H, W = bank.height, bank.width
    d = bank.depth_ray_m[row].reshape(H, W)                                          # along-ray metres
    p_cam = bank.dirs_cam_unit.reshape(H, W, 3) * d[..., None]                     # [H, W, 3]
    c2w = bank.c2w[row]
    p = p_cam @ c2w[:3, :3].T + c2w[:3, 3]                                           # [H, W, 3] world
    valid = d > 0
    dx = torch.zeros_like(p)
    dy = torch.zeros_like(p)
    dx[:, 1:-1] = p[:, 2:] - p[:, :-2]
    dy[1:-1] = p[2:] - p[:-2]
    n = torch.linalg.cross(dx, dy)
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    to_cam = c2w[:3, 3] - p
    n = torch.where(((n * to_cam).sum(-1) < 0)[..., None], -n, n)
    ok = valid.clone()
    ok[:, 0] = ok[:, -1] = False
    ok[0, :] = ok[-1, :] = False
    zc = d
    jump = torch.zeros_like(valid)
    jump[:, 1:-1] |= ((zc[:, 2:] - zc[:, :-2]).abs() > 0.05 * zc[:, 1:-1]) | (zc[:, 2:] <= 0) | (zc[:, :-2] <= 0)
    jump[1:-1] |= ((zc[2:] - zc[:-2]).abs() > 0.05 * zc[1:-1]) | (zc[2:] <= 0) | (zc[:-2] <= 0)
    ok &= ~jump
    rgb = bank.rgb[row].reshape(H, W, 3).float() / 255.0
    return p, n, rgb, ok


def init_gaussians(bank: FrameBank, voxel_m: float, sh_degree: int, opacity: float = 0.7,
                   thin_ratio: float = 0.1, footprint_factor: float = 1.0, max_gaussians: int = 0,
                   gen: torch.Generator | None = None) -> GaussianModel:
    """Disc Gaussians from the back-projected depth of every bank frame.

    The surface is cut into voxels whose edge follows what the images resolve: a pixel seen at z-depth z
    covers z / fx metres, so a surface point gets the voxel edge voxel_m * 2^L, the smallest such edge at
    least footprint_factor x its finest footprint over the frames that see it (L >= 0; the finest footprint
    is taken per voxel_m cell, so one surface patch gets one size). One Gaussian per occupied voxel: mean
    position, colour and normal of its pixels, tangential sigma = edge / 2, normal sigma = thin_ratio x
    that, rotated so that its thin axis is the normal. `max_gaussians` > 0 keeps a random subset."""
    pts, nrm, col, foot = [], [], [], []
    fx = float(bank.K[0, 0])
    for row in range(bank.n_frames):
        p, n, c, ok = frame_points(bank, row)
        pts.append(p[ok])
        nrm.append(n[ok])
        col.append(c[ok])
        z = (bank.depth_ray_m[row] / bank.ray_scale).reshape(bank.height, bank.width)
        foot.append(z[ok] / fx)
    P, N, Cc, Fp = torch.cat(pts), torch.cat(nrm), torch.cat(col), torch.cat(foot)   # [M, 3] ... [M]
    if len(P) == 0:
        raise ValueError("no pixel with observed depth to initialise the Gaussians from")

    def cells(edge: Tensor) -> tuple[Tensor, Tensor]:
        """(unique cell ids, inverse [M]) of the points for per-point cell edges [M]."""
        key = torch.floor(P / edge[:, None]).long()
        key = key - key.min(0).values
        dims = key.max(0).values + 1
        lin = (key[:, 0] * dims[1] + key[:, 1]) * dims[2] + key[:, 2]
        return torch.unique(lin, return_inverse=True)

    uniq, inv = cells(torch.full((len(P),), voxel_m))
    finest = torch.full((len(uniq),), float("inf")).scatter_reduce(0, inv, Fp, reduce="amin")
    level = torch.ceil(torch.log2((footprint_factor * finest[inv] / voxel_m).clamp_min(1.0))).clamp(0, 8)
    edge = voxel_m * torch.pow(2.0, level)                                           # [M]
    key_level = level.long()
    uniq, inv = cells(edge)
    # cells of different levels must not merge: fold the level into the cell id
    uniq, inv = torch.unique(uniq[inv] * 16 + key_level, return_inverse=True)
    cnt = torch.bincount(inv, minlength=len(uniq)).float()[:, None]

    def mean(x: Tensor) -> Tensor:
        return torch.zeros(len(uniq), x.shape[1]).index_add_(0, inv, x) / cnt

    means, normals, colours = mean(P), mean(N), mean(Cc).clamp(0.0, 1.0)
    edges = mean(edge[:, None])[:, 0]
    if max_gaussians and len(means) > max_gaussians:
        keep = torch.randperm(len(means), generator=gen)[:max_gaussians]
        means, normals, colours, edges = means[keep], normals[keep], colours[keep], edges[keep]
    sigma = 0.5 * edges
    log_scales = torch.stack([sigma.log(), sigma.log(), (sigma * thin_ratio).log()], dim=1)
    quats = normal_rotation(normals)
    logit = math.log(opacity / (1.0 - opacity))
    return GaussianModel(means, quats, log_scales, torch.full((len(means),), logit), rgb_to_sh_dc(colours),
                         sh_degree=sh_degree)


def random_patch(bank: FrameBank, patch: int, gen: torch.Generator) -> tuple[int, int, int, int, int]:
    """(row, x0, y0, w, h): a random training frame and a window of at most patch x patch pixels."""
    row = int(torch.randint(bank.n_frames, (1,), generator=gen))
    w, h = min(patch, bank.width), min(patch, bank.height)
    x0 = int(torch.randint(bank.width - w + 1, (1,), generator=gen))
    y0 = int(torch.randint(bank.height - h + 1, (1,), generator=gen))
    return row, x0, y0, w, h


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float32) -> Tensor:
    x = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-x * x / (2 * sigma * sigma))
    g = g / g.sum()
    return g[:, None] * g[None, :]                                                   # [size, size]


def ssim(img_a: Tensor, img_b: Tensor, window: int = 11, sigma: float = 1.5, c1: float = 0.01 ** 2,
         c2: float = 0.03 ** 2) -> Tensor:
    """Mean SSIM of two images [H, W, 3] in [0, 1] (Wang et al. 2004: Gaussian 11x11 window, sigma 1.5,
    'valid' border as in the reference; differentiable). Own few lines: the training loss needs it on
    every step without torchmetrics' per-call argument checking."""
    assert img_a.shape == img_b.shape and img_a.ndim == 3 and img_a.shape[-1] == 3
    a = img_a.permute(2, 0, 1)[None]
    b = img_b.permute(2, 0, 1)[None]
    k = gaussian_window(window, sigma, a.dtype).to(a.device)[None, None].repeat(3, 1, 1, 1)          # [3, 1, w, w]

    def filt(x: Tensor) -> Tensor:
        return F.conv2d(x, k, groups=3)

    mu_a, mu_b = filt(a), filt(b)
    s_aa = filt(a * a) - mu_a * mu_a
    s_bb = filt(b * b) - mu_b * mu_b
    s_ab = filt(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * s_ab + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (s_aa + s_bb + c2)
    return (num / den).mean()


def appearance_loss(out: dict[str, Tensor], rgb_obs: Tensor, depth_obs_m: Tensor, lambda_ssim: float,
                    lambda_depth: float) -> dict[str, Tensor]:
    """Eq. 34 on one rendered window: out from render_gaussians; rgb_obs [h, w, 3] in [0, 1];
    depth_obs_m [h, w] z-depth (0 = missing, excluded from L_d). Returns the terms and their sum."""
    assert rgb_obs.shape == out["rgb"].shape and depth_obs_m.shape == out["alpha"].shape
    l1 = (out["rgb"] - rgb_obs).abs().mean()
    l_ssim = 1.0 - ssim(out["rgb"], rgb_obs) if min(rgb_obs.shape[:2]) >= 11 else torch.zeros_like(l1)
    valid = depth_obs_m > 0
    l_d = ((out["depth_raw"] - depth_obs_m).abs()[valid].mean() if bool(valid.any())
           else torch.zeros_like(l1))
    total = (1 - lambda_ssim) * l1 + lambda_ssim * l_ssim + lambda_depth * l_d
    return {"gs_l1": l1, "gs_ssim": l_ssim, "gs_depth": l_d, "gs_total": total}


def render_patch(g: GaussianModel, bank: FrameBank, row: int, x0: int, y0: int, w: int, h: int,
                 tile: int | None = None, backend: str = "torch") -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Render a window of bank row `row`: (render output, observed rgb [h, w, 3] in [0, 1], observed
    z-depth [h, w]). backend: "torch" or "numba" (the two that return what densification needs)."""
    K = patch_camera(torch.from_numpy(np.asarray(bank.K)).float(), x0, y0)
    out = render_gaussians(g, K, bank.c2w[row], w, h, tile=tile, backend=backend)
    H, W = bank.height, bank.width
    rgb = bank.rgb[row].reshape(H, W, 3)[y0:y0 + h, x0:x0 + w].float().to(g.means.device) / 255.0
    z = (bank.depth_ray_m[row] / bank.ray_scale).reshape(H, W)[y0:y0 + h, x0:x0 + w].to(g.means.device)
    return out, rgb, z


def save_gaussians_ply(g: GaussianModel, path) -> None:
    """RUN/gaussians.ply: the Gaussians in the 3DGS reference layout (splat viewers open it)."""
    from recon.data.ply import write_gaussians_ply
    write_gaussians_ply(path, {k: getattr(g, k).detach().cpu().numpy() for k in GaussianModel.PARAMS})


def load_gaussians_ply(path, device="cpu") -> GaussianModel:
    """A GaussianModel (eval mode, every SH degree the file has active) from a Gaussian PLY."""
    from recon.data.ply import read_gaussians_ply
    p = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in read_gaussians_ply(path).items()}
    degree = int(round(math.sqrt(p["sh_rest"].shape[1] + 1))) - 1
    if (degree + 1) ** 2 != p["sh_rest"].shape[1] + 1 or degree > 3:
        raise ValueError(f"{path}: {p['sh_rest'].shape[1]} SH coefficients per channel besides the DC term "
                         "is not a full degree 1-3 set")
    g = GaussianModel(p["means"], p["quats"], p["log_scales"], p["opacity_logits"], p["sh_dc"], p["sh_rest"],
                      sh_degree=degree)
    g.active_degree.fill_(degree)
    return g.to(device).eval()
