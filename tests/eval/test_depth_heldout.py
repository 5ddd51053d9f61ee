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


class _FakeScene:
    """The part of a Scene heldout_depth_metrics reads: one held-out frame 'h0' of 4x4 pixels, depth 2 m."""
    height, width = 4, 4

    def index(self, fid: str) -> int:
        assert fid == "h0"
        return 0

    def load_depth_m(self, i: int) -> np.ndarray:
        return np.full((4, 4), 2.0, np.float32)


def test_heldout_depth_is_scored_from_the_float_file_not_the_mm_png(tmp_path):
    from PIL import Image

    from eval.evaluate import heldout_depth_metrics
    from recon.data.run_files import depth_npz_bytes, png16_bytes, read_depth_npz
    d = tmp_path / "depth_heldout"
    d.mkdir()
    exact = np.full((4, 4), 2.0004)                       # 0.4 mm behind: the PNG rounds it to 2.000 m
    (d / "h0.npz").write_bytes(depth_npz_bytes(exact))
    (d / "h0.png").write_bytes(png16_bytes(np.round(exact * 1000).astype(np.int64)))
    assert np.allclose(read_depth_npz(d / "h0.npz"), exact, atol=1e-6)
    assert np.asarray(Image.open(d / "h0.png")).max() == 2000
    m = heldout_depth_metrics(tmp_path, _FakeScene(), stride=1)
    assert m["absrel"] == round(0.0004 / 2.0, 5) and m["within_5cm"] == 100.0 and m["coverage"] == 100.0
    (d / "h0.npz").unlink()                               # a run written before the float file: the PNG
    assert heldout_depth_metrics(tmp_path, _FakeScene(), stride=1)["absrel"] == 0.0


def test_read_depth_npz_names_the_file_when_the_array_is_missing(tmp_path):
    import pytest

    from recon.data.run_files import read_depth_npz
    p = tmp_path / "f.npz"
    np.savez(p, other=np.zeros(2))
    with pytest.raises(ValueError, match="f.npz: no 'depth_m'"):
        read_depth_npz(p)
