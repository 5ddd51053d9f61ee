"""eval/baselines/mesh_render.py: the vertex-coloured mesh renderer of the TSDF novel-view baseline, by hand."""
import numpy as np

from eval.baselines.mesh_render import MeshColourRenderer


def test_one_triangle_by_hand():
    # the triangle A(-1,-1,2) red, B(1,-1,2) green, C(-1,1,2) blue faces an identity camera (fx = fy = 10,
    # principal point (2, 2), 5x5 pixels). Pixel (2, 2) looks along (0, 0, 1) and hits (0, 0, 2) = A + 0.5 (B - A)
    # + 0.5 (C - A): half green, half blue. Pixel (0, 0) hits (-0.4, -0.4, 2): weights 0.4, 0.3, 0.3.
    # Pixel (4, 4) would hit (0.4, 0.4, 2), outside the triangle: black, depth 0.
    v = np.array([[-1.0, -1, 2], [1, -1, 2], [-1, 1, 2]])
    colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    r = MeshColourRenderer(v, np.array([[0, 1, 2]]), colors)
    out = r.render(np.array([[10.0, 0, 2], [0, 10.0, 2], [0, 0, 1]]), np.eye(4), 5, 5)
    assert out["rgb"].shape == (5, 5, 3) and out["depth_m"].shape == (5, 5)
    np.testing.assert_allclose(out["rgb"][2, 2], [0.0, 0.5, 0.5], atol=1e-5)
    np.testing.assert_allclose(out["rgb"][0, 0], [0.4, 0.3, 0.3], atol=1e-5)
    assert abs(float(out["depth_m"][2, 2]) - 2.0) < 1e-6 and out["alpha"][2, 2] == 1.0
    assert out["rgb"][4, 4].tolist() == [0.0, 0.0, 0.0] and out["depth_m"][4, 4] == 0.0 and out["alpha"][4, 4] == 0.0


def test_empty_mesh_renders_nothing():
    r = MeshColourRenderer(np.zeros((0, 3)), np.zeros((0, 3), np.int64), np.zeros((0, 3), np.uint8))
    out = r.render(np.array([[10.0, 0, 2], [0, 10.0, 2], [0, 0, 1]]), np.eye(4), 5, 4)
    assert out["rgb"].shape == (4, 5, 3) and not out["alpha"].any()
