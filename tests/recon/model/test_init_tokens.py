"""`recon.model.instance_branch.init_tokens_from_bank` on a hand-made two-frame bank.

Guards the token initialisation rule (METHOD.md section 4): thing masks are back-projected with depth
(camera pose applied), a mask needs 3 valid-depth pixels to give a point set but counts towards "the most
thing masks in one frame" anyway, stuff masks are ignored; the count (tokens.n_init = 0: max(2 x most masks
in a frame, ceil(1.5 x same-class 3D clusters of radius = scale)), capped at adjust_rules.max_tokens); the
means (farthest-point order over the mask centroids, extra tokens on mask points); the isotropic scale
(tokens.init_scale_m, or 0 = the median over masks of half the 5-95 percentile extent, clipped to [0.05, 1] m).

The bank: 12 pixels (4 x 3), both cameras at (0, 0, -5); frame 0 with identity rotation, frame 1 rotated by
90 degrees about z, same depths, so a world point P of frame 0 is seen at Rz(P) = (-y, x, z) in frame 1.
Pixel regions: A = pixels 0-3, B = 4-7, C = 8-11, whose frame-0 points are
  A: (0,0,0) (1,1,0) (1,0,1) (0,1,1)       centroid (0.5, 0.5, 0.5), two 0s and two 1s per axis
  B: (2,0,0) (2.4,.4,0) (2.4,0,.4) (2,.4,.4) centroid (2.2, 0.2, 0.2), two 2s/0s and two 2.4s/0.4s per axis
  C: (0,3,0) (0,3,.5) (.5,3,0) (.5,3,.5)    (only pixels 8, 9 have depth in frame 0)
Masks (class ids: 1 wall = stuff, 2 chair, 3 table = things):
  frame 0: A = mask 1 chair (pixel 3 labelled wall: the mode is still chair), B = mask 2 table,
           C = mask 3 chair with 2 valid pixels (counted, no point set)   -> 3 thing masks
  frame 1: A = mask 4 chair (points Rz(A): centroid (-0.5, 0.5, 0.5)), B = mask 2 wall (stuff), C none
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recon.core.config import load_config
from recon.core.settings import FitSettings
from recon.model.instance_branch import init_tokens_from_bank
from recon.model.sampling import FrameBank, thing_lut

THINGS = [2, 3]
POINTS = np.array([[0, 0, 0], [1, 1, 0], [1, 0, 1], [0, 1, 1],
                   [2, 0, 0], [2.4, 0.4, 0], [2.4, 0, 0.4], [2, 0.4, 0.4],
                   [0, 3, 0], [0, 3, 0.5], [0.5, 3, 0], [0.5, 3, 0.5]], dtype=np.float64)
CAM = np.array([0.0, 0.0, -5.0])
CENTROID_A = [0.5, 0.5, 0.5]        # (0 + 1 + 1 + 0) / 4 on every axis
CENTROID_B = [2.2, 0.2, 0.2]        # (2 + 2.4 + 2.4 + 2) / 4, (0 + 0.4 + 0 + 0.4) / 4, ...
CENTROID_A1 = [-0.5, 0.5, 0.5]      # Rz(0.5, 0.5, 0.5) = (-0.5, 0.5, 0.5)
HALF_A = math.sqrt(3) / 2           # 0.5 * |(1, 1, 1)|: with values {0, 0, 1, 1} the 5th percentile is 0, the 95th 1
HALF_B = 0.2 * math.sqrt(3)         # 0.5 * |(0.4, 0.4, 0.4)|


def _bank(size: float = 1.0, with_small_mask: bool = True) -> FrameBank:
    """The bank of the module docstring; `size` scales every world point about the origin."""
    pts = POINTS * size
    rel = pts - CAM                                                   # camera-frame offsets (frame 0: R = I)
    dist = np.linalg.norm(rel, axis=1)                                # along-ray depth of each pixel
    dirs = rel / dist[:, None]
    c2w = np.tile(np.eye(4), (2, 1, 1))
    c2w[:, :3, 3] = CAM
    c2w[1, :3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]               # Rz(90 deg): (x, y, z) -> (-y, x, z)
    depth = np.tile(dist, (2, 1))
    depth[0, 10:12] = 0.0                                             # region C: 2 valid pixels in frame 0
    sem = np.zeros((2, 12), np.int16)
    inst = np.zeros((2, 12), np.int16)
    sem[0, 0:4], inst[0, 0:4] = 2, 1
    sem[0, 3] = 1                                                     # mode of [2, 2, 2, 1] = chair
    sem[0, 4:8], inst[0, 4:8] = 3, 2
    if with_small_mask:
        sem[0, 8:12], inst[0, 8:12] = 2, 3
    sem[1, 0:4], inst[1, 0:4] = 2, 4
    sem[1, 4:8], inst[1, 4:8] = 1, 2                                  # a stuff "mask": not a token seed
    return FrameBank(K=np.eye(3), width=4, height=3, frame_index=[0, 1], c2w=torch.from_numpy(c2w).float(),
                     dirs_cam_unit=torch.from_numpy(dirs).float(), ray_scale=torch.ones(12),
                     depth_ray_m=torch.from_numpy(depth).float(), rgb=torch.zeros(2, 12, 3, dtype=torch.uint8),
                     semantic=torch.from_numpy(sem), instance=torch.from_numpy(inst), thing_class=thing_lut(THINGS, 4))


def _tok_settings(*overrides: str):
    return load_config(FitSettings, None, ["tokens.feat_dim=5", "tokens.class_dim=7", *overrides]).tokens


def _init(bank, *overrides: str, seed: int = 0):
    return init_tokens_from_bank(bank, THINGS, _tok_settings(*overrides), torch.Generator().manual_seed(seed))


def _as_set(rows) -> list[tuple[float, ...]]:
    return sorted(tuple(round(float(v), 4) for v in r) for r in rows)


def test_means_at_mask_centroids_with_fixed_count_and_scale():
    for seed in (0, 1, 2):
        tok = _init(_bank(), "tokens.n_init=3", "tokens.init_scale_m=0.3", seed=seed)
        assert tok.n == 3
        # one token per point set: A, B (frame 0) and A' (frame 1); the small mask C and the wall give none
        assert _as_set(tok.means.detach()) == _as_set([CENTROID_A, CENTROID_B, CENTROID_A1])
        # farthest-point order: |A - B| = sqrt(1.7^2 + 0.3^2 + 0.3^2) = 1.752, |A - A'| = 1, |B - A'| = sqrt(2.7^2 +
        # 0.18) = 2.733: whatever the start, the second mean is the centroid farthest from the first
        m = tok.means.detach()
        d01, d02 = float((m[1] - m[0]).norm()), float((m[2] - m[0]).norm())
        assert d01 > d02
        torch.testing.assert_close(tok.scales().detach(), torch.full((3, 3), 0.3), atol=1e-6, rtol=0)
        torch.testing.assert_close(tok.quats.detach(), torch.tensor([[1.0, 0, 0, 0]] * 3), atol=0, rtol=0)
        assert tok.features.shape == (3, 5) and tok.class_features.shape == (3, 7)
    torch.testing.assert_close(tok.means.detach()[torch.argsort(tok.means.detach()[:, 0])],
                               torch.tensor([CENTROID_A1, CENTROID_A, CENTROID_B]), atol=2e-6, rtol=0)


def test_automatic_count_and_scale():
    tok = _init(_bank())
    # scale: median of the half extents [HALF_A, HALF_B, HALF_A] = sqrt(3)/2 = 0.866 (inside [0.05, 1])
    torch.testing.assert_close(tok.scales().detach(), torch.full((tok.n, 3), HALF_A), atol=1e-5, rtol=0)
    # count: most thing masks in one frame = 3 (frame 0: masks 1, 2 and the small mask 3);
    # clusters of radius 0.866: A and A' are 1.0 apart (same class) -> separate; B is a table -> 3 clusters;
    # n = max(2 * 3, ceil(1.5 * 3) = 5) = 6
    assert tok.n == 6
    m = tok.means.detach()
    # the first 3 means: the centroids (farthest-point order covers all 3 masks), then 3 single mask points
    assert _as_set(m[:3]) == _as_set([CENTROID_A, CENTROID_B, CENTROID_A1])
    world = set(_as_set(POINTS[:8])) | set(_as_set([[-y, x, z] for x, y, z in POINTS[:4]]))   # A, B and Rz(A)
    assert set(_as_set(m[3:])) <= world
    assert tok.features.shape == (6, 5) and tok.class_features.shape == (6, 7)


def test_cluster_rule_and_cap():
    bank = _bank(with_small_mask=False)
    # most = 2 (frame 0: masks 1, 2); radius sqrt(3)/2: 3 clusters -> n = max(2 * 2, ceil(1.5 * 3) = 5) = 5
    assert _init(bank).n == 5
    # radius = init_scale_m = 1.5: A and A' (1.0 apart, both chairs) merge -> 2 clusters -> max(4, 3) = 4
    tok = _init(bank, "tokens.init_scale_m=1.5")
    assert tok.n == 4
    torch.testing.assert_close(tok.scales().detach(), torch.full((4, 3), 1.5), atol=1e-6, rtol=0)
    # capped at adjust_rules.max_tokens
    assert _init(_bank(), "tokens.adjust_rules.max_tokens=4").n == 4
    # an explicit n_init wins over the rule (and is capped too)
    assert _init(_bank(), "tokens.n_init=2").n == 2
    assert _init(_bank(), "tokens.n_init=9", "tokens.adjust_rules.max_tokens=7").n == 7


def test_scale_is_clipped():
    # everything 100x smaller: half extents sqrt(3)/200 = 0.0087 -> clipped up to 0.05
    small = _init(_bank(size=0.01), "tokens.n_init=3")
    torch.testing.assert_close(small.scales().detach(), torch.full((3, 3), 0.05), atol=1e-7, rtol=0)
    # 4x larger: median half extent 4 * 0.866 = 3.46 -> clipped down to 1.0 m
    big = _init(_bank(size=4.0), "tokens.n_init=3")
    torch.testing.assert_close(big.scales().detach(), torch.full((3, 3), 1.0), atol=1e-7, rtol=0)
    # centroids scale with the scene: 4 * (0.5, 0.5, 0.5) etc.
    assert _as_set(big.means.detach()) == _as_set(4 * np.array([CENTROID_A, CENTROID_B, CENTROID_A1]))


def test_only_frames_picked_by_init_frames():
    # init_frames = 1: evenly spaced rows over 2 frames -> row 0 only: sets A and B, most = 3,
    # scale median(HALF_A, HALF_B) = (0.866 + 0.346) / 2 = 0.606, clusters 2 -> n = max(6, 3) = 6
    tok = _init(_bank(), "tokens.init_frames=1")
    assert tok.n == 6
    assert _as_set(tok.means.detach()[:2]) == _as_set([CENTROID_A, CENTROID_B])
    torch.testing.assert_close(tok.scales().detach(), torch.full((6, 3), (HALF_A + HALF_B) / 2), atol=1e-5, rtol=0)


def test_no_thing_mask_with_depth_refuses():
    bank = _bank()
    bank.depth_ray_m[:, :8] = 0.0          # A and B lose their depth; C keeps 2 pixels (< 3)
    with pytest.raises(ValueError, match="no thing mask has valid depth"):
        _init(bank)
