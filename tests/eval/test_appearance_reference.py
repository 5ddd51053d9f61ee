"""eval/appearance_reference.py: reprojection of training frames into a held-out view, by hand."""
from types import SimpleNamespace

import numpy as np

from eval.appearance_reference import appearance_reference, reproject_view

W, H, F = 40, 30, 20.0
K = np.array([[F, 0, (W - 1) / 2], [0, F, (H - 1) / 2], [0, 0, 1]])


def wall_scene(xs: list[float]) -> SimpleNamespace:
    """Cameras at x = xs (z = 0, looking down +z) in front of a wall at z = 2 whose colour is linear in
    the world x and y, so that bilinear sampling reproduces it exactly."""
    c2w = np.stack([np.eye(4)] * len(xs))
    c2w[:, 0, 3] = xs
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))

    def colour(i: int) -> np.ndarray:
        x = (u - K[0, 2]) / F * 2.0 + xs[i]                        # world x, y on the wall
        y = (v - K[1, 2]) / F * 2.0
        img = np.stack([0.5 + 0.1 * x, 0.5 + 0.1 * y, np.full_like(x, 0.25)], -1)
        return img * 255.0                                         # a float "image" in 0..255

    return SimpleNamespace(width=W, height=H, K=K, c2w=c2w, load_depth_m=lambda i: np.full((H, W), 2.0),
                           load_color=colour)


def test_reprojection_of_a_shifted_camera_is_exact_where_seen():
    scene = wall_scene([0.0, 0.3, -0.3])
    pred, seen = reproject_view(scene, 0, [1, 2])
    gt = scene.load_color(0) / 255.0
    assert seen.all()                                             # the two shifted views cover every pixel
    np.testing.assert_allclose(pred, gt, atol=1e-9)
    # one view shifted by +0.3 m = 3 px at this depth: target column u is its column u - 3, so the first
    # 3 columns are outside it and stay unseen
    pred1, seen1 = reproject_view(scene, 0, [1])
    assert (~seen1).sum() == 3 * H and not seen1[:, :3].any() and seen1[:, 3:].all()


def test_occluded_pixels_are_not_taken():
    scene = wall_scene([0.0, 0.3])
    depth_src = np.full((H, W), 2.0)
    depth_src[:, :10] = 1.0                                       # something in front in the source view
    scene.load_depth_m = lambda i: depth_src if i == 1 else np.full((H, W), 2.0)
    _, seen = reproject_view(scene, 0, [1])
    # target columns 3..12 land on the source's columns 0..9 and fail the depth test; 0..2 are outside
    assert not seen[:, :13].any() and seen[:, 13:].all()


def test_reference_block():
    scene = wall_scene([0.0, 0.3, -0.3, 0.6])
    ref = appearance_reference(scene, heldout=[0], train=[1, 2, 3], n_views=2)
    assert ref["n_views"] == 2 and ref["n_frames"] == 1
    assert ref["seen"] == 100.0 and ref["psnr"] > 80             # exact up to rounding (capped at 100)
