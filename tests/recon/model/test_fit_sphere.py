"""Integration: fit a small SDFField to a sphere from depth along rays, render, mesh, measure.

Synthetic set-up (metres): a sphere of radius 0.5 at the origin inside the 2 m box [-1, 1]^3.
Rays start on a sphere of radius 0.95 and aim near the centre; the observed along-ray depth D is the
analytic first hit. Samples: stratified over [0.02, D + 0.15] plus a band around D (Co-SLAM style).
Losses: sdf_loss (Eq. 24) + eikonal + depth rendered with the S-density weights (Eq. 10-11).
"""
import time

import numpy as np
import torch

from fields.hashgrid import HashGridConfig
from fields.networks import SDFField
from recon.model.losses import depth_loss, eikonal_loss, sdf_loss
from recon.postfit.meshing import extract_mesh
from recon.model.volume_rendering import render_depth, sdf_to_alpha, transmittance_weights




R_SPHERE = 0.5
HALF = 1.0  # box half-extent (m)


def make_rays(gen: torch.Generator, n_rays: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Origins [R, 3] on radius 0.95, unit directions [R, 3], along-ray hit depth [R]."""
    o = torch.randn(n_rays, 3, generator=gen)
    o = 0.95 * o / o.norm(dim=1, keepdim=True)
    t = torch.randn(n_rays, 3, generator=gen)
    target = 0.4 * t / t.norm(dim=1, keepdim=True) * torch.rand(n_rays, 1, generator=gen) ** (1 / 3)  # ball r=0.4
    d = target - o
    d = d / d.norm(dim=1, keepdim=True)
    # |o + t d|^2 = r^2: t = -o.d - sqrt((o.d)^2 - |o|^2 + r^2); all rays hit (closest approach < 0.5 m)
    od = (o * d).sum(1)
    disc = od**2 - (o * o).sum(1) + R_SPHERE**2
    assert torch.all(disc > 0)
    depth = -od - disc.sqrt()
    return o, d, depth


def sample_along(gen: torch.Generator, depth: torch.Tensor, n_strat: int, n_band: int, band: float) -> torch.Tensor:
    """Sorted sample distances [R, n_strat + n_band]."""
    n_rays = depth.shape[0]
    near, far = 0.02, depth + 0.15
    u = (torch.arange(n_strat) + torch.rand(n_rays, n_strat, generator=gen)) / n_strat
    z_strat = near + u * (far - near)[:, None]
    z_band = depth[:, None] + band * (2 * torch.rand(n_rays, n_band, generator=gen) - 1)
    return torch.sort(torch.cat([z_strat, z_band], 1), dim=1).values


def test_fit_sphere_and_mesh():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    grid = HashGridConfig(n_levels=8, log2_hashmap_size=14, base_resolution=8, finest_resolution=64, backend="torch")
    field = SDFField(grid, hidden=32, n_layers=2, geo_feat_dim=4, sphere_init_radius_m=0.3, box_half_extent_m=HALF)
    opt = torch.optim.Adam(
        [
            {"params": field.grid.parameters(), "lr": 1e-2},
            {"params": field.mlp.parameters(), "lr": 2e-3},
        ],
        betas=(0.9, 0.99),
    )
    n_iters, n_rays, trunc, xi = 300, 128, 0.1, 60.0  # xi in 1/m
    t0 = time.perf_counter()
    for it in range(n_iters):
        o, d, depth = make_rays(gen, n_rays)
        z = sample_along(gen, depth, n_strat=12, n_band=12, band=trunc)  # [R, S]
        pts = o[:, None, :] + z[..., None] * d[:, None, :]  # [R, S, 3] world
        x01 = ((pts + HALF) / (2 * HALF)).reshape(-1, 3)
        sdf, _, grad = field.sdf_and_gradient(x01)
        sdf = sdf.view(n_rays, -1)  # [R, S] metres
        valid = torch.ones(n_rays, dtype=torch.bool)
        l_trunc, l_free = sdf_loss(sdf, z, depth, trunc_m=trunc, beta=5.0, valid=valid)
        w = transmittance_weights(sdf_to_alpha(sdf, xi))
        l_depth = depth_loss(render_depth(w, z), depth, valid)
        loss = 10.0 * l_trunc + 1.0 * l_free + 0.1 * eikonal_loss(grad) + 0.1 * l_depth
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    train_s = time.perf_counter() - t0

    def sdf_np(p: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x01 = (torch.from_numpy(p).float() + HALF) / (2 * HALF)
            return field.sdf(x01).double().numpy()

    verts, faces = extract_mesh(sdf_np, -0.65 * np.ones(3), 0.65 * np.ones(3), 0.02, chunk_voxels=32)
    dist = np.abs(np.linalg.norm(verts, axis=1) - R_SPHERE)
    print(f"train {train_s:.1f} s, {len(verts)} vertices, mean {dist.mean() * 100:.2f} cm, max {dist.max() * 100:.2f} cm")
    assert len(faces) > 1000
    assert dist.mean() < 0.01 and dist.max() < 0.03
