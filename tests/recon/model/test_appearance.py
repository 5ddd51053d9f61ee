"""recon/model/appearance.py: initialisation from depth, SSIM, the Eq. 34 loss, the Gaussian PLY."""
import math

import numpy as np
import pytest
import torch

from fields.gaussians import SH_C0, GaussianModel, quat_to_rotmat, render_gaussians
from recon.model.appearance import (appearance_loss, init_gaussians, load_gaussians_ply, save_gaussians_ply, ssim)
from recon.model.sampling import FrameBank, camera_dirs


def wall_bank(depth_m: float = 2.0, size=(32, 24), colour=(200, 100, 50)) -> FrameBank:
    """One frame of an identity camera looking at a fronto-parallel wall at z = depth_m, one colour."""
    W, H = size
    K = np.array([[20.0, 0, (W - 1) / 2], [0, 20.0, (H - 1) / 2], [0, 0, 1]])
    dirs = camera_dirs(K, W, H)
    scale = np.linalg.norm(dirs, axis=1)
    P = W * H
    return FrameBank(K=K, width=W, height=H, frame_index=[0], c2w=torch.eye(4)[None],
                     dirs_cam_unit=torch.from_numpy(dirs / scale[:, None]).float(),
                     ray_scale=torch.from_numpy(scale).float(),
                     depth_ray_m=torch.from_numpy(depth_m * scale).float()[None],
                     rgb=torch.tensor(colour, dtype=torch.uint8).repeat(1, P, 1), semantic=None, instance=None)


def test_init_puts_discs_on_the_wall_with_its_colour():
    bank = wall_bank()
    g = init_gaussians(bank, voxel_m=0.05, sh_degree=1, footprint_factor=1.0)
    assert g.n > 10
    assert torch.allclose(g.means[:, 2], torch.full((g.n,), 2.0), atol=1e-4)        # on the plane
    rgb = 0.5 + SH_C0 * g.sh_dc
    assert torch.allclose(rgb, torch.tensor([200, 100, 50]) / 255.0, atol=1e-5)
    # the thin axis is the wall normal (+-z), the scale along it 10 % of the others
    R = quat_to_rotmat(g.quats)
    assert torch.allclose(R[:, :, 2].abs()[:, 2], torch.ones(g.n), atol=1e-4)
    s = g.scales()
    assert torch.allclose(s[:, 2], 0.1 * s[:, 0], rtol=1e-4)
    # pixel footprint at 2 m with fx = 20: 0.1 m -> voxel 0.05 * 2^1 = 0.1 m, sigma 0.05
    assert torch.allclose(s[:, 0], torch.full((g.n,), 0.05), rtol=1e-4)
    # the initial Gaussians render the wall's colour where they cover it
    out = render_gaussians(g, torch.from_numpy(bank.K).float(), torch.eye(4), bank.width, bank.height)
    centre = out["rgb"][8:16, 10:22]
    assert torch.allclose(centre / out["alpha"][8:16, 10:22, None], torch.tensor([200, 100, 50]) / 255.0, atol=0.02)


def test_ssim_by_hand():
    img = torch.rand(20, 20, 3, generator=torch.Generator().manual_seed(0))
    assert float(ssim(img, img)) == pytest.approx(1.0, abs=1e-6)
    # two constant images a, b: SSIM = (2ab + C1) / (a^2 + b^2 + C1) (no variance)
    a, b = torch.full((16, 16, 3), 0.2, dtype=torch.float64), torch.full((16, 16, 3), 0.6, dtype=torch.float64)
    c1 = 0.01 ** 2
    assert float(ssim(a, b)) == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.04 + 0.36 + c1), rel=1e-9)


def test_loss_terms_by_hand():
    f64 = {"dtype": torch.float64}
    out = {"rgb": torch.full((12, 12, 3), 0.5, **f64), "depth_raw": torch.full((12, 12), 1.5, **f64),
           "alpha": torch.ones(12, 12, **f64)}
    depth = torch.full((12, 12), 2.0, **f64)
    depth[0, 0] = 0                                    # missing depth is excluded from L_d
    terms = appearance_loss(out, torch.full((12, 12, 3), 0.7, **f64), depth, lambda_ssim=0.2, lambda_depth=0.1)
    assert float(terms["gs_l1"]) == pytest.approx(0.2)
    assert float(terms["gs_depth"]) == pytest.approx(0.5)
    ssim_ab = (2 * 0.5 * 0.7 + 1e-4) / (0.25 + 0.49 + 1e-4)
    assert float(terms["gs_ssim"]) == pytest.approx(1 - ssim_ab, abs=1e-9)
    assert float(terms["gs_total"]) == pytest.approx(0.8 * 0.2 + 0.2 * (1 - ssim_ab) + 0.1 * 0.5, abs=1e-9)


def test_gaussian_ply_round_trip(tmp_path):
    gen = torch.Generator().manual_seed(1)
    n = 7
    g = GaussianModel(torch.randn(n, 3, generator=gen), torch.randn(n, 4, generator=gen),
                      torch.randn(n, 3, generator=gen), torch.randn(n, generator=gen), torch.randn(n, 3, generator=gen),
                      torch.randn(n, 15, 3, generator=gen), sh_degree=3)
    save_gaussians_ply(g, tmp_path / "g.ply")
    h = load_gaussians_ply(tmp_path / "g.ply")
    assert h.sh_degree == 3 and int(h.active_degree) == 3
    for name in GaussianModel.PARAMS:
        assert torch.equal(getattr(g, name).detach(), getattr(h, name).detach()), name
    # the 3DGS layout: f_rest channel-major (all red coefficients first)
    from plyfile import PlyData
    v = PlyData.read(str(tmp_path / "g.ply"))["vertex"].data
    assert math.isclose(float(v["f_rest_15"][2]), float(g.sh_rest.detach()[2, 0, 1]), rel_tol=1e-6)
    assert math.isclose(float(v["rot_0"][4]), float(g.quats.detach()[4, 0]), rel_tol=1e-6)


def test_not_a_gaussian_ply_is_named(tmp_path):
    from recon.data.ply import write_ply
    write_ply(tmp_path / "mesh.ply", np.zeros((3, 3)), np.array([[0, 1, 2]]))
    with pytest.raises(ValueError, match="mesh.ply is not a 3D Gaussian PLY"):
        load_gaussians_ply(tmp_path / "mesh.ply")
