"""fields/gaussians.py: projection, compositing and gradients against hand-computed cases."""
import math

import pytest
import torch

from fields.gaussians import (EPS2D, SH_C0, SH_C1, GaussianModel, eval_sh, normal_rotation, patch_camera,
                              project_gaussians, quat_to_rotmat, rasterize, render_gaussians, rotmat_to_quat,
                              rgb_to_sh_dc)

from fields.numba_jit import numba_available

# both CPU blending backends must pass the hand-computed cases (numba: fields/raster_numba.py)
BLENDS = ["torch", pytest.param("numba", marks=pytest.mark.skipif(not numba_available()[0],
                                                                  reason=numba_available()[1]))]

K100 = torch.tensor([[100.0, 0, 50], [0, 100.0, 50], [0, 0, 1]])
EYE = torch.eye(4)
IDQ = torch.tensor([[1.0, 0, 0, 0]])


def test_projection_matches_hand_ewa_covariance():
    # mean (0.2, 0, 2) in an identity camera, scales (0.1, 0.2, 0.05), no rotation, fx = fy = 100:
    # J = [[fx/z, 0, -fx x/z^2], [0, fy/z, 0]] = [[50, 0, -5], [0, 50, 0]]
    # Sigma' = J diag(0.01, 0.04, 0.0025) J^T + 0.3 I = [[25 + 0.0625 + 0.3, 0], [0, 100 + 0.3]]
    uv, conic, z, radius, cov2 = project_gaussians(torch.tensor([[0.2, 0.0, 2.0]]), IDQ,
                                                   torch.tensor([[0.1, 0.2, 0.05]]), K100, EYE, 100, 100)
    assert torch.allclose(uv, torch.tensor([[60.0, 50.0]]))
    assert torch.allclose(cov2[0], torch.tensor([[25.0625 + EPS2D, 0.0], [0.0, 100.0 + EPS2D]]), atol=1e-4)
    assert torch.allclose(conic[0], torch.tensor([1 / (25.0625 + EPS2D), 0.0, 1 / (100.0 + EPS2D)]), atol=1e-6)
    assert float(z[0]) == pytest.approx(2.0)
    assert float(radius[0]) == math.ceil(3 * math.sqrt(100.0 + EPS2D))


def test_projection_rotated_gaussian_and_culling():
    # rotating by 90 degrees about the camera's z axis swaps the x / y variances
    q = torch.tensor([[math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)]])
    _, _, _, _, cov2 = project_gaussians(torch.tensor([[0.0, 0.0, 2.0]]), q, torch.tensor([[0.1, 0.2, 0.05]]),
                                         K100, EYE, 100, 100)
    assert torch.allclose(cov2[0], torch.tensor([[100.0 + EPS2D, 0.0], [0.0, 25.0 + EPS2D]]), atol=1e-3)
    # behind the camera and far off screen: radius 0 (culled)
    _, _, _, radius, _ = project_gaussians(torch.tensor([[0.0, 0.0, -1.0], [50.0, 0.0, 1.0]]), IDQ.repeat(2, 1),
                                           torch.full((2, 3), 0.01), K100, EYE, 100, 100)
    assert radius.tolist() == [0.0, 0.0]


def two_gaussians(front_first: bool):
    # two tiny Gaussians on the pixel centre (20, 20) of a 40x40 image: front red opacity 0.5 at z = 1,
    # back green opacity 0.5 at z = 2. At that pixel each alpha is exactly its opacity.
    uv = torch.tensor([[20.0, 20.0], [20.0, 20.0]])
    conic = torch.tensor([[4.0, 0.0, 4.0], [4.0, 0.0, 4.0]])
    z = torch.tensor([1.0, 2.0])
    feats = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    op = torch.tensor([0.5, 0.5])
    r = torch.tensor([2.0, 2.0])
    order = [0, 1] if front_first else [1, 0]
    return uv[order], conic[order], z[order], r[order], feats[order], op[order]


@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize("front_first", [True, False])
@pytest.mark.parametrize("tile", [4, 8, 16])
def test_alpha_compositing_order_and_transmittance(front_first, tile, blend):
    img, alpha = rasterize(*two_gaussians(front_first), width=40, height=40, tile=tile, blend=blend)
    # C = a1 c1 + (1 - a1) a2 c2 = 0.5 red + 0.25 green; alpha = 1 - (1 - 0.5)(1 - 0.5) = 0.75
    assert torch.allclose(img[20, 20], torch.tensor([0.5, 0.25, 0.0]), atol=1e-6)
    assert float(alpha[20, 20]) == pytest.approx(0.75, abs=1e-6)
    # one pixel off the centre: alpha_i = 0.5 exp(-0.5 * 4) for both
    a = 0.5 * math.exp(-2.0)
    assert torch.allclose(img[20, 21], torch.tensor([a, (1 - a) * a, 0.0]), atol=1e-6)
    # far away: nothing
    assert float(alpha[0, 0]) == 0.0 and float(img[5, 35].abs().sum()) == 0.0


@pytest.mark.parametrize("blend", BLENDS)
def test_alpha_is_clamped_and_tiny_contributions_skipped(blend):
    uv = torch.tensor([[2.0, 2.0]])
    img, alpha = rasterize(uv, torch.tensor([[1.0, 0.0, 1.0]]), torch.tensor([1.0]), torch.tensor([3.0]),
                           torch.ones(1, 1), torch.tensor([1.0]), width=5, height=5, tile=4, blend=blend)
    assert float(alpha[2, 2]) == pytest.approx(0.99)
    # 1 * exp(-0.5 * (4 + 4)) = 0.018 >= 1/255 at (0, 0); exp(-0.5 * 13) = 0.0015 < 1/255 at (4, 5)...
    assert float(alpha[0, 0]) == pytest.approx(math.exp(-4.0), rel=1e-5)
    img2, alpha2 = rasterize(uv, torch.tensor([[1.0, 0.0, 1.0]]), torch.tensor([1.0]), torch.tensor([3.0]),
                             torch.ones(1, 1), torch.tensor([0.01]), width=5, height=5, tile=4, blend=blend)
    assert float(alpha2[2, 2]) == pytest.approx(0.01)
    assert float(alpha2[2, 4]) == 0.0          # 0.01 exp(-2) < 1/255


def test_sh_evaluation_by_hand():
    dc = torch.tensor([[1.0, -1.0, 0.0]])
    sh = torch.zeros(1, 4, 3)
    sh[0, 0] = dc
    sh[0, 2] = torch.tensor([0.5, 0.0, 0.0])        # the z band of degree 1
    d = torch.tensor([[0.0, 0.0, 1.0]])
    assert torch.allclose(eval_sh(sh, d, 0), torch.tensor([[0.5 + SH_C0, max(0.0, 0.5 - SH_C0), 0.5]]))
    assert torch.allclose(eval_sh(sh, d, 1), torch.tensor([[0.5 + SH_C0 + 0.5 * SH_C1, 0.5 - SH_C0, 0.5]]))
    assert torch.allclose(eval_sh(sh, -d, 1)[0, 0], torch.tensor(0.5 + SH_C0 - 0.5 * SH_C1))
    rgb = torch.tensor([[0.2, 0.5, 0.9]])
    sh0 = rgb_to_sh_dc(rgb)[:, None, :]
    assert torch.allclose(eval_sh(sh0, d, 0), rgb, atol=1e-6)


def test_rotations_round_trip_and_normal_alignment():
    q = torch.nn.functional.normalize(torch.randn(50, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    q = torch.where(q[:, :1] < 0, -q, q)
    R = quat_to_rotmat(q)
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3).expand(50, 3, 3), atol=1e-5)
    assert torch.allclose(rotmat_to_quat(R), q, atol=1e-5)
    n = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.6, 0.0, 0.8]])
    Rn = quat_to_rotmat(normal_rotation(n))
    assert torch.allclose(Rn[:, :, 2], n, atol=1e-5)


def wall_and_floater(floater: bool = True) -> GaussianModel:
    """A wall of discs on the plane z = 2 in front of an identity camera, optionally a floater at z = 1."""
    xs = torch.linspace(-0.5, 0.5, 21)
    gx, gy = torch.meshgrid(xs, xs, indexing="ij")
    means = torch.stack([gx.reshape(-1), gy.reshape(-1), torch.full((21 * 21,), 2.0)], 1)
    if floater:
        means = torch.cat([means, torch.tensor([[0.0, 0.0, 1.0]])])
    n = len(means)
    log_scales = torch.log(torch.tensor([0.04, 0.04, 0.004])).repeat(n, 1)
    if floater:
        log_scales[-1] = math.log(0.05)
    rgb = torch.full((n, 3), 0.5)
    return GaussianModel(means, IDQ.repeat(n, 1), log_scales, torch.full((n,), 3.0), rgb_to_sh_dc(rgb),
                         sh_degree=1)


@pytest.mark.parametrize("blend", BLENDS)
def test_gradients_reach_every_parameter(blend):
    g = wall_and_floater()
    g.active_degree.fill_(1)
    with torch.no_grad():
        g.sh_rest.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
        g.quats.add_(0.1 * torch.randn(g.n, 4, generator=torch.Generator().manual_seed(2)))
    out = render_gaussians(g, torch.tensor([[60.0, 0, 20], [0, 60.0, 20], [0, 0, 1]]), EYE, 40, 40, backend=blend)
    target = torch.rand(40, 40, 3, generator=torch.Generator().manual_seed(3))
    ((out["rgb"] - target).abs().mean() + out["depth_raw"].mean()).backward()
    for name in GaussianModel.PARAMS:
        grad = getattr(g, name).grad
        assert grad is not None and float(grad.abs().sum()) > 0, name


@pytest.mark.parametrize("blend", BLENDS)
def test_depth_term_pulls_a_floater_back_onto_the_surface(blend):
    g = wall_and_floater()
    K = torch.tensor([[60.0, 0, 20], [0, 60.0, 20], [0, 0, 1]])
    opt = torch.optim.Adam([g.means, g.opacity_logits, g.log_scales], lr=2e-2)
    before = render_gaussians(g, K, EYE, 40, 40, backend=blend)["depth_m"].detach()
    assert float(before[20, 20]) < 1.6                      # the floater shows in the depth
    for _ in range(150):
        out = render_gaussians(g, K, EYE, 40, 40, backend=blend)
        loss = (out["depth_raw"] - 2.0).abs().mean()
        opt.zero_grad()
        loss.backward()
        g.means.grad[:-1] = 0                               # only the floater may move
        g.opacity_logits.grad[:-1] = 0
        g.log_scales.grad[:-1] = 0
        opt.step()
    after = render_gaussians(g, K, EYE, 40, 40, backend=blend)["depth_m"].detach()
    assert abs(float(after[20, 20]) - 2.0) < 0.05


def test_patch_camera_renders_the_same_pixels():
    g = wall_and_floater()
    K = torch.tensor([[60.0, 0, 20], [0, 60.0, 20], [0, 0, 1]])
    with torch.no_grad():
        full = render_gaussians(g, K, EYE, 40, 40)["rgb"]
        part = render_gaussians(g, patch_camera(K, 8, 12), EYE, 16, 12)["rgb"]
    assert torch.allclose(part, full[12:24, 8:24], atol=1e-5)


@pytest.mark.parametrize("blend", BLENDS)
def test_render_is_deterministic_and_tile_independent(blend):
    g = wall_and_floater()
    K = torch.tensor([[60.0, 0, 20], [0, 60.0, 20], [0, 0, 1]])
    with torch.no_grad():
        a = render_gaussians(g, K, EYE, 40, 40, tile=4, backend=blend)
        b = render_gaussians(g, K, EYE, 40, 40, tile=4, backend=blend)
        c = render_gaussians(g, K, EYE, 40, 40, tile=16, backend=blend)
    assert torch.equal(a["rgb"], b["rgb"])
    assert torch.allclose(a["rgb"], c["rgb"], atol=1e-5) and torch.allclose(a["depth_m"], c["depth_m"], atol=1e-4)


def test_hand_written_backward_matches_autograd():
    from fields.gaussians import rasterize_reference
    gen = torch.Generator().manual_seed(5)
    n = 60
    means = torch.cat([torch.rand(n, 2, generator=gen) - 0.5, 1.5 + torch.rand(n, 1, generator=gen)], 1)
    quats = torch.randn(n, 4, generator=gen)
    scales = 0.02 + 0.05 * torch.rand(n, 3, generator=gen)
    uv, conic, z, radius, _ = project_gaussians(means, quats, scales, K100 * 0.4 + torch.diag(torch.tensor([0, 0, 0.6])),
                                                EYE, 40, 30)
    feats = torch.rand(n, 4, generator=gen)
    op = 0.2 + 0.79 * torch.rand(n, generator=gen)
    target = torch.rand(30, 40, 4, generator=gen)
    grads = []
    for fn in (rasterize, rasterize_reference):
        leaves = [t.detach().clone().double().requires_grad_(True) for t in (uv, conic, feats, op)]
        img, alpha = fn(leaves[0], leaves[1], z.double(), radius, leaves[2], leaves[3], 40, 30, tile=8)
        ((img - target.double()) ** 2).sum().add((alpha * target[..., 0].double()).sum()).backward()
        grads.append([leaf.grad for leaf in leaves] + [img.detach()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-8, rtol=1e-6)


def test_pixel_extent_by_hand():
    from fields.gaussians import pixel_extent
    cov2 = torch.tensor([[[4.0, 0.0], [0.0, 1.0]], [[4.0, 0.0], [0.0, 1.0]], [[4.0, 0.0], [0.0, 1.0]]])
    # opacity 1: e = min(3.33, sqrt(2 ln 255) = 3.33) -> ceil(3.33 * 2) = 7, ceil(3.33) = 4
    # opacity 0.1: e = sqrt(2 ln 25.5) = 2.545 -> ceil(5.09) = 6, ceil(2.545) = 3; opacity 0.001: culled
    ext = pixel_extent(cov2, torch.tensor([1.0, 0.1, 0.001]))
    assert ext.tolist() == [[7.0, 4.0], [6.0, 3.0], [0.0, 0.0]]


@pytest.mark.parametrize("blend", BLENDS)
def test_no_gaussian_in_view_renders_background(blend):
    """An empty set of projected Gaussians (a camera looking away) renders nothing, without an error."""
    img, alpha = rasterize(torch.zeros(0, 2), torch.zeros(0, 3), torch.zeros(0), torch.zeros(0), torch.zeros(0, 3),
                           torch.zeros(0), width=8, height=6, tile=4, blend=blend)
    assert img.shape == (6, 8, 3) and float(img.abs().sum()) == 0.0 and float(alpha.sum()) == 0.0
