"""Mesh vertex colours from the training images (recon/postfit/mesh_colour.py), checked by hand."""
import numpy as np
import pytest

from recon.data.scene import FrameRecord, load_scene, write_scene
from recon.postfit.mesh_colour import colour_vertices_from_images, view_samples

K = np.array([[10.0, 0, 4.5], [0, 10.0, 4.5], [0, 0, 1]])      # 10 x 10 images, principal point between pixels


def pose(z: float) -> np.ndarray:
    """A camera at (0, 0, z) looking along +z (OpenCV axes)."""
    c2w = np.eye(4)
    c2w[2, 3] = z
    return c2w


def make_scene(tmp_path, frames: list[tuple[np.ndarray, np.ndarray, np.ndarray]]):
    recs = [FrameRecord(color=c, c2w=p, depth_m=d) for c, d, p in frames]
    return load_scene(write_scene(tmp_path / "scene", K=K, frames=recs,
                                  classes=[{"id": 1, "name": "wall", "thing": False}]))


def world_at(u: float, v: float, z: float) -> list[float]:
    """The world point (camera at the origin) that projects to pixel (u, v) at depth z."""
    return [(u - 4.5) * z / 10.0, (v - 4.5) * z / 10.0, z]


def gradient_image() -> np.ndarray:
    u, v = np.meshgrid(np.arange(10), np.arange(10))
    return np.stack([u * 20, v * 20, np.full_like(u, 100)], -1).astype(np.uint8)        # [10, 10, 3]


def test_flat_quad_takes_the_image_colours_bilinearly(tmp_path):
    scene = make_scene(tmp_path, [(gradient_image(), np.full((10, 10), 2.0, np.float32), pose(0.0))])
    verts = np.array([world_at(3, 5, 2.0), world_at(3.5, 5.25, 2.0), world_at(0, 9, 2.0)])
    normals = np.tile([0.0, 0.0, -1.0], (3, 1))                       # facing the camera
    rgb, seen = colour_vertices_from_images(verts, normals, scene, [0], depth_tol_m=0.05)
    assert seen.tolist() == [True, True, True]
    # pixel (3, 5): (60, 100, 100); halfway to u=4 and a quarter to v=6: (70, 105, 100)
    assert rgb.tolist() == [[60, 100, 100], [70, 105, 100], [0, 180, 100]]


def test_occluded_frame_gives_no_colour(tmp_path):
    red, blue = np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10, 3), np.uint8)
    red[..., 0], blue[..., 2] = 200, 200
    wall = np.full((10, 10), 2.0, np.float32)
    occluded = wall.copy()
    occluded[3:7, 3:7] = 1.0                                            # something 1 m in front of the wall
    scene = make_scene(tmp_path, [(red, wall, pose(0.0)), (blue, occluded, pose(0.0))])
    verts = np.array([world_at(4.5, 4.5, 2.0)])
    normals = np.array([[0.0, 0.0, -1.0]])
    fallback = np.array([[1, 2, 3]], np.uint8)
    rgb, seen = colour_vertices_from_images(verts, normals, scene, [0, 1], 0.05, fallback_rgb=fallback)
    assert seen.tolist() == [True] and rgb.tolist() == [[200, 0, 0]]
    # without a depth test (huge tolerance) the occluder's colour would have been mixed in
    rgb_loose, _ = colour_vertices_from_images(verts, normals, scene, [0, 1], 10.0, fallback_rgb=fallback)
    assert rgb_loose.tolist() == [[100, 0, 100]]
    # only the occluded frame: not seen, the fallback stays
    rgb1, seen1 = colour_vertices_from_images(verts, normals, scene, [1], 0.05, fallback_rgb=fallback)
    assert seen1.tolist() == [False] and rgb1.tolist() == [[1, 2, 3]]


def test_rim_vertex_ignores_background_pixels(tmp_path):
    """Bilinear sampling uses only the neighbouring pixels whose depth agrees with the vertex."""
    img = np.zeros((10, 10, 3), np.uint8)
    img[:, :5] = (200, 0, 0)                                            # object on the left half, 2 m
    img[:, 5:] = (0, 0, 200)                                            # background on the right, 5 m
    depth = np.where(np.arange(10)[None] < 5, 2.0, 5.0).astype(np.float32).repeat(10, 0)
    scene = make_scene(tmp_path, [(img, depth, pose(0.0))])
    rgb, seen = colour_vertices_from_images(np.array([world_at(4.5, 4.0, 2.0)]), None, scene, [0], 0.05)
    assert seen.tolist() == [True] and rgb.tolist() == [[200, 0, 0]]


def test_unseen_and_back_facing_vertices_keep_the_fallback(tmp_path):
    img = np.full((10, 10, 3), 90, np.uint8)
    scene = make_scene(tmp_path, [(img, np.full((10, 10), 2.0, np.float32), pose(0.0))])
    verts = np.array([world_at(5, 5, 2.0),          # seen
                      [0.0, 0.0, -2.0],             # behind the camera
                      world_at(30, 5, 2.0),         # outside the image
                      world_at(5, 5, 2.0),          # facing away
                      world_at(5, 5, 2.0)])         # grazing: cos = 0.05 < min_cos
    normals = np.array([[0, 0, -1.0], [0, 0, 1.0], [0, 0, -1.0], [0, 0, 1.0], [0, 0.99875, -0.05]])
    fallback = np.arange(15, dtype=np.uint8).reshape(5, 3)
    rgb, seen = colour_vertices_from_images(verts, normals, scene, [0], 0.05, fallback_rgb=fallback)
    assert seen.tolist() == [True, False, False, False, False]
    assert rgb[0].tolist() == [90, 90, 90] and rgb[1:].tolist() == fallback[1:].tolist()
    grey, _ = colour_vertices_from_images(verts, normals, scene, [0], 0.05)
    assert grey[1].tolist() == [128, 128, 128]


def test_near_views_weigh_more(tmp_path):
    """Two frontal views at 1 m (red) and 3 m (blue): weights 1/1 and 1/9 -> 0.9 red + 0.1 blue."""
    red, blue = np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10, 3), np.uint8)
    red[..., 0], blue[..., 2] = 200, 100
    scene = make_scene(tmp_path, [(red, np.full((10, 10), 1.0, np.float32), pose(0.0)),
                                  (blue, np.full((10, 10), 3.0, np.float32), pose(-2.0))])
    rgb, seen = colour_vertices_from_images(np.array([[0.0, 0.0, 1.0]]), np.array([[0, 0, -1.0]]), scene, [0, 1], 0.05)
    assert rgb.tolist() == [[180, 0, 10]]


def test_view_samples_hand_case():
    """One frame, one vertex at pixel (2, 7) and 2 m, i.e. at (-0.5, 0.5, 2): its normal (0, 0, -1) makes
    cos = 2 / |(0.5, -0.5, -2)| = 2 / sqrt(4.5) with the direction to the camera; weight cos / z^2."""
    img = np.zeros((10, 10, 3), np.uint8)
    img[7, 2] = (10, 20, 30)
    idx, rgb, w = view_samples(np.array([world_at(2, 7, 2.0)]), np.array([[0, 0, -1.0]]), K, pose(0.0), img,
                               np.full((10, 10), 2.0, np.float32), 0.05)
    assert idx.tolist() == [0]
    np.testing.assert_allclose(rgb, [[10, 20, 30]], atol=1e-4)
    np.testing.assert_allclose(w, [2 / np.sqrt(4.5) / 4], rtol=1e-6)


def test_bad_input_is_refused_by_name(tmp_path):
    scene = make_scene(tmp_path, [(gradient_image(), np.full((10, 10), 2.0, np.float32), pose(0.0))])
    with pytest.raises(ValueError, match="fallback_rgb"):
        colour_vertices_from_images(np.zeros((2, 3)), None, scene, [0], 0.05, fallback_rgb=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="outside scene"):
        colour_vertices_from_images(np.zeros((2, 3)), None, scene, [3], 0.05)
    with pytest.raises(ValueError, match="depth_tol_m"):
        colour_vertices_from_images(np.zeros((2, 3)), None, scene, [0], 0.0)
