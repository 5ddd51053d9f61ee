"""Real-sensor depth options (configs/real.yaml) on hand-computed cases: the range-dependent weight of the
surface terms, the surface-less rays of sdf_loss, flying pixels at depth edges, the held-out surface search
that skips thin negative shells, and configs/real.yaml itself."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from recon.core.config import load_config
from recon.core.settings import FitSettings, LossSettings, RenderSettings
from recon.model.inference import sdf_surface_depth
from recon.model.losses import depth_loss, depth_noise_weight, sdf_loss
from recon.model.sampling import depth_edge_rays
from recon.postfit.heldout_depth import observed_points, solid_crossings, surface_depth

REAL_YAML = Path(__file__).resolve().parents[3] / "configs" / "real.yaml"


def test_depth_noise_weight_hand_case():
    d = torch.tensor([0.5, 1.0, 2.0, 4.0, 0.0, float("nan")])
    w = depth_noise_weight(d, ref_m=1.0, power=2.0)
    # (1 / D)^2 capped at 1: 1, 1, 1/4, 1/16; no depth: 1
    assert torch.allclose(w, torch.tensor([1.0, 1.0, 0.25, 0.0625, 1.0, 1.0]))
    assert torch.equal(depth_noise_weight(d, 1.0, 0.0), torch.ones(6))            # off
    assert torch.allclose(depth_noise_weight(torch.tensor([3.0]), 1.5, 1.0), torch.tensor([0.5]))


def test_sdf_loss_ray_weight_and_surface_ok():
    # two rays, one sample each in the band (trunc 0.25): ray 0 D = 2, rho = 1.9 -> b = 0.1, s = 0.2 -> |s - b| = 0.1
    #                                                    ray 1 D = 3, rho = 3.0 -> b = 0.0, s = 0.4 -> 0.4
    # plain mean (0.1 + 0.4) / 2 = 0.25; weights (1, 0.25): (0.1 + 0.1) / 1.25 = 0.16
    sdf = torch.tensor([[0.2], [0.4]])
    z = torch.tensor([[1.9], [3.0]])
    d = torch.tensor([2.0, 3.0])
    valid = torch.tensor([True, True])
    lt, lf = sdf_loss(sdf, z, d, 0.25, 5.0, valid)
    assert lt.item() == pytest.approx(0.25) and lf.item() == 0.0
    lt_w, _ = sdf_loss(sdf, z, d, 0.25, 5.0, valid, ray_weight=torch.tensor([1.0, 0.25]))
    assert lt_w.item() == pytest.approx(0.16)
    # surface_ok: ray 1 keeps no band term -> 0.1; its free space (none here) would stay
    lt_s, _ = sdf_loss(sdf, z, d, 0.25, 5.0, valid, surface_ok=torch.tensor([True, False]))
    assert lt_s.item() == pytest.approx(0.1)
    # a surface-less ray still has its free-space term: D = 3, rho = 1, b = 2 > tau, s = -0.2:
    # max(0, e^(5 * 0.2) - 1, -2.2) = e - 1
    _, lf_s = sdf_loss(torch.tensor([[-0.2]]), torch.tensor([[1.0]]), torch.tensor([3.0]), 0.25, 5.0,
                       torch.tensor([True]), surface_ok=torch.tensor([False]))
    assert lf_s.item() == pytest.approx(math.e - 1)


def test_depth_loss_weighted():
    pred = torch.tensor([1.2, 3.0, 5.0])
    obs = torch.tensor([1.0, 2.0, 0.0])
    valid = torch.tensor([True, True, False])
    assert depth_loss(pred, obs, valid).item() == pytest.approx(0.6)             # (0.2 + 1.0) / 2
    # weights (1, 0.25): (0.2 + 0.25) / 1.25 = 0.36
    assert depth_loss(pred, obs, valid, ray_weight=torch.tensor([1.0, 0.25, 1.0])).item() == pytest.approx(0.36)


def test_depth_edge_rays_hand_case():
    # a 3 x 2 depth image (row-major):   1.0  1.0  2.0
    #                                    1.0  0.0  2.0      (0 = no depth)
    depth = torch.tensor([[1.0, 1.0, 2.0, 1.0, 0.0, 2.0]])
    frame = torch.zeros(6, dtype=torch.long)
    pixel = torch.arange(6)
    d, ok = depth_edge_rays(depth, 3, 2, frame, pixel, rel_jump=0.1)
    # pixel 1 (1.0) has the neighbour 2.0: |1| > 0.1 -> edge, nearest depth 1.0 (itself)
    # pixel 2 (2.0) has the neighbour 1.0: |1| > 0.2 -> edge, nearest depth 1.0
    # pixel 4 has no depth: not compared; pixel 5 (2.0): neighbours 2.0 and (no depth) -> no edge
    assert torch.equal(ok, torch.tensor([True, False, False, True, True, True]))
    assert torch.allclose(d, torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 2.0]))
    d0, ok0 = depth_edge_rays(depth, 3, 2, frame, pixel, rel_jump=0.0)             # off
    assert torch.equal(d0, depth[0]) and bool(ok0.all())
    d2, ok2 = depth_edge_rays(depth, 3, 2, frame, pixel, rel_jump=2.0)             # jumps below 2 x depth
    assert bool(ok2.all()) and torch.equal(d2, depth[0])


def test_solid_crossings_hand_case():
    sdf = torch.tensor([[1.0, -1.0, 1.0, -1.0, -1.0, -1.0],
                        [1.0, 1.0, 1.0, 1.0, 1.0, -1.0]])
    # row 0: crossings at j = 0 and j = 2; with 2 solid samples j = 0 fails (sample 2 is positive)
    # row 1: the crossing at j = 4 has only one sample behind it before the ray ends: it counts
    every = solid_crossings(sdf, 1)
    assert every.tolist() == [[True, False, True, False, False], [False, False, False, False, True]]
    two = solid_crossings(sdf, 2)
    assert two.tolist() == [[False, False, True, False, False], [False, False, False, False, True]]


def _plane_and_shell(x: torch.Tensor) -> torch.Tensor:
    """The wall z = 2 m seen from z < 2, and a 4 cm thin negative shell z in [0.80, 0.84] in front of it."""
    plane = 2.0 - x[:, 2]
    shell = (x[:, 2] - 0.82).abs() - 0.02
    return torch.minimum(plane, shell)


def test_solid_surface_depth_skips_a_thin_shell():
    o = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, -0.95]])
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [0.0, 0.0, 1.0]])
    # first crossing: the shell at 0.80 m; ray 1 looks away (no crossing); ray 2 starts at z = -0.95: shell at 1.75
    t0 = surface_depth(_plane_and_shell, o, d, near_m=0.1, far_m=3.0, step_m=0.01, min_solid_m=0.0)
    assert t0.tolist() == pytest.approx([0.80, 0.0, 1.75], abs=1e-4)
    # 10 cm solid behind a crossing: the 4 cm shell is skipped; the wall at z = 2 (ray 2: 2.95 m, 5 cm before
    # far = 3 m, counts though fewer than 10 cm of the ray are left behind it)
    t1 = surface_depth(_plane_and_shell, o, d, near_m=0.1, far_m=3.0, step_m=0.01, min_solid_m=0.10)
    assert t1.tolist() == pytest.approx([2.0, 0.0, 2.95], abs=1e-4)


class _Plane:
    def sdf(self, x: torch.Tensor):
        return 2.0 - x[:, 2], None


def test_solid_surface_depth_default_is_todays_search():
    o = torch.zeros(2, 3)
    d = torch.tensor([[0.0, 0.0, 1.0], [0.6, 0.0, 0.8]])
    ref = sdf_surface_depth(_Plane(), o, d, 0.1, 5.0)
    got = surface_depth(lambda x: _Plane().sdf(x)[0], o, d, 0.1, 5.0, step_m=0.0, min_solid_m=0.0)
    assert torch.allclose(ref, got)


def test_defaults_are_off():
    ls, rs = LossSettings(), RenderSettings()
    assert ls.noise_power == 0.0 and ls.edge_rel_jump == 0.0
    assert rs.surface_step_m == 0.0 and rs.surface_min_solid_m == 0.0
    assert rs.surface_observed_m == 0.0 and rs.surface_free_ratio == 0.0


def test_real_yaml_loads_and_validates():
    s = load_config(FitSettings, REAL_YAML)
    assert s.render.surface_observed_m > 0 and s.render.surface_free_ratio > 0 and s.loss.w_free > LossSettings().w_free
    # an override on top of it is validated as usual
    s2 = load_config(FitSettings, REAL_YAML, ["train.iters=10"])
    assert s2.train.iters == 10


def test_observed_points_hand_case():
    # one frame at the origin looking down +z (identity pose), K: f = 10, c = (2, 2), a 5 x 5 image seeing a wall
    # at z = 2 m, except pixel (u 4, v 2) without depth
    K = torch.tensor([[10.0, 0.0, 2.0], [0.0, 10.0, 2.0], [0.0, 0.0, 1.0]])
    depth = torch.full((1, 5, 5), 2.0)
    depth[0, 2, 4] = 0.0
    w2c = torch.eye(4)[None]
    pts = torch.tensor([[0.0, 0.0, 2.03],     # on the wall (3 cm behind): seen
                        [0.0, 0.0, 1.5],      # 50 cm in front of it: free space, not seen as surface
                        [0.0, 0.0, -2.0],     # behind the camera
                        [1.0, 0.0, 2.0],      # projects to u = 7: off the image
                        [0.4, 0.0, 2.0]])     # u = 10 * 0.4 / 2 + 2 = 4, v = 2: no depth there
    assert observed_points(pts, depth, K, w2c, margin_m=0.05).tolist() == [True, False, False, False, False]
    assert observed_points(pts, depth, K, w2c, margin_m=0.6).tolist() == [True, True, False, False, False]


def test_observed_points_free_space_vote():
    # three frames at the origin looking down +z (f = 10, c = (2, 2), 5 x 5): two see the wall at 2 m, the
    # third sees through to 4 m. The point (0, 0, 2): 2 surface views, 1 see-through view.
    K = torch.tensor([[10.0, 0.0, 2.0], [0.0, 10.0, 2.0], [0.0, 0.0, 1.0]])
    depth = torch.stack([torch.full((5, 5), 2.0), torch.full((5, 5), 2.0), torch.full((5, 5), 4.0)])
    w2c = torch.eye(4)[None].repeat(3, 1, 1)
    p = torch.tensor([[0.0, 0.0, 2.0]])
    assert observed_points(p, depth, K, w2c, 0.05).tolist() == [True]                    # no vote
    assert observed_points(p, depth, K, w2c, 0.05, free_ratio=0.5).tolist() == [True]    # 1 <= 0.5 x 2
    assert observed_points(p, depth, K, w2c, 0.05, free_ratio=0.4).tolist() == [False]   # 1 > 0.4 x 2
    depth[1] = 4.0                                                                        # 1 surface, 2 through
    assert observed_points(p, depth, K, w2c, 0.05, free_ratio=1.0).tolist() == [False]
    assert observed_points(p, depth, K, w2c, 0.05, free_ratio=2.0).tolist() == [True]


def test_surface_depth_skips_crossings_not_accepted():
    # the shell at 0.80 m is a solid crossing too with min_solid 0; accept() takes only points beyond z = 1 m:
    # the ray goes on to the wall at 2 m. A ray whose only crossing is rejected sees no surface (0).
    o = torch.zeros(2, 3)
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    t = surface_depth(_plane_and_shell, o, d, 0.1, 3.0, step_m=0.01, accept=lambda p: p[:, 2] > 1.0)
    assert t.tolist() == pytest.approx([2.0, 2.0], abs=1e-4)
    t_none = surface_depth(_plane_and_shell, o[:1], d[:1], 0.1, 3.0, step_m=0.01, accept=lambda p: p[:, 2] > 5.0)
    assert t_none.tolist() == [0.0]

