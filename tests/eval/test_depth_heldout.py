"""Novel-view depth: the SDF surface search and the depth metrics on hand-made cases."""
from __future__ import annotations

import math

import numpy as np
import torch

from eval.evaluate import depth_errors
from recon.model.inference import sdf_surface_depth


class _Plane:
    """SDF of the free space in front of the plane z = 2 m: positive for z < 2."""

    def sdf(self, x: torch.Tensor):
        return 2.0 - x[:, 2], None


def test_sdf_surface_depth_on_a_plane():
    o = torch.zeros(3, 3)
    d = torch.tensor([[0.0, 0.0, 1.0], [0.6, 0.0, 0.8], [0.0, 0.0, -1.0]])     # last ray looks away
    t = sdf_surface_depth(_Plane(), o, d, near_m=0.1, far_m=5.0, n_coarse=16)
    assert math.isclose(float(t[0]), 2.0, abs_tol=1e-4)
    assert math.isclose(float(t[1]), 2.0 / 0.8, abs_tol=1e-4)                   # along the ray
    assert float(t[2]) == 0.0


def test_depth_errors_hand_case():
    gt = np.array([[1.0, 2.0], [4.0, 0.0]])
    pred = np.array([[1.1, 2.0], [0.0, 3.0]])                                   # one miss, one gt-invalid
    m = depth_errors(pred, gt, np.ones_like(gt, bool))
    assert m["n_pixels"] == 3
    assert math.isclose(m["absrel"], (0.1 / 1.0 + 0.0) / 2, rel_tol=1e-9)
    assert math.isclose(m["within_5cm"], 1 / 3)                                 # only the exact pixel
    assert math.isclose(m["coverage"], 2 / 3)
