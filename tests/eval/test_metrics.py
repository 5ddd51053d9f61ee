"""Unit tests for eval.metrics and eval.mesh_utils against hand-computed cases."""
import numpy as np
import pytest
import trimesh

from eval import mesh_utils
from eval.metrics import (GEOMETRY_KEYS, confusion_matrix, face_areas, geometry_metrics, mesh_geometry_metrics,
                          project_points, sample_mesh_points, semantic_metrics, visible_face_mask)

# ------------------------------------------------------------------ sampling


def _two_triangles():
    # T0: legs 1 and 2 -> area 1.  T1: legs 3 and 2 -> area 3.  Ratio 1:3.
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 2, 0],
                         [2, 0, 0], [5, 0, 0], [2, 2, 0]], dtype=np.float64)
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    return vertices, faces


def test_face_areas_hand():
    vertices, faces = _two_triangles()
    np.testing.assert_allclose(face_areas(vertices, faces), [1.0, 3.0])


def test_sample_mesh_points_area_uniform():
    vertices, faces = _two_triangles()
    n = 40_000
    points, face_idx = sample_mesh_points(vertices, faces, n, seed=3, return_face_index=True)
    assert points.shape == (n, 3) and face_idx.shape == (n,)
    # Expected share of T1 = 3 / 4; binomial std = sqrt(0.75 * 0.25 / n) = 0.0022 -> 4 sigma = 0.009.
    assert abs(np.mean(face_idx == 1) - 0.75) < 0.009
    # Every sample lies in its triangle: T0 is x >= 0, y >= 0, x + y/2 <= 1; T1 is x >= 2, y >= 0, (x-2)/3 + y/2 <= 1.
    p0, p1 = points[face_idx == 0], points[face_idx == 1]
    eps = 1e-12
    assert np.all(p0[:, 0] >= -eps) and np.all(p0[:, 1] >= -eps) and np.all(p0[:, 0] + p0[:, 1] / 2 <= 1 + eps)
    assert np.all(p1[:, 0] >= 2 - eps) and np.all(p1[:, 1] >= -eps)
    assert np.all((p1[:, 0] - 2) / 3 + p1[:, 1] / 2 <= 1 + eps)
    assert np.all(points[:, 2] == 0)
    # Uniform inside T0: mean = centroid (1/3, 2/3); the corner triangle cut at the edge midpoints
    # (x + y/2 <= 1/2) holds a quarter of the area -> ~25% of the samples.
    np.testing.assert_allclose(p0[:, :2].mean(axis=0), [1 / 3, 2 / 3], atol=0.015)
    assert abs(np.mean(p0[:, 0] + p0[:, 1] / 2 <= 0.5) - 0.25) < 0.02
    # Deterministic for a seed, different for another.
    np.testing.assert_array_equal(points, sample_mesh_points(vertices, faces, n, seed=3))
    assert not np.array_equal(points, sample_mesh_points(vertices, faces, n, seed=4))


def test_sample_mesh_points_zero_area_raises():
    with pytest.raises(ValueError):
        sample_mesh_points(np.zeros((3, 3)), np.array([[0, 1, 2]]), 10, seed=0)


# ------------------------------------------------------------------ geometry


def _plane_grid(z_m: float, spacing_m: float = 0.01, n: int = 50) -> np.ndarray:
    xs = np.arange(n) * spacing_m
    xx, yy = np.meshgrid(xs, xs, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel(), np.full(xx.size, z_m)], axis=1)  # [n*n, 3]


def test_geometry_metrics_plane_shifted_3cm():
    # Same 1 cm grid, shifted 3 cm along the normal: every nearest neighbour is the point straight
    # above/below (3 cm; the next one is sqrt(3^2 + 1^2) = 3.16 cm), so acc = comp = 3 cm.
    pred, gt = _plane_grid(0.0), _plane_grid(0.03)
    m = geometry_metrics(pred, gt, threshold_m=0.05)
    assert set(m) == set(GEOMETRY_KEYS)
    assert m["acc_cm"] == pytest.approx(3.0) and m["comp_cm"] == pytest.approx(3.0)
    assert m["chamfer_l1_cm"] == pytest.approx(3.0)
    assert m["precision"] == 100.0 and m["recall"] == 100.0 and m["f1"] == 100.0
    m2 = geometry_metrics(pred, gt, threshold_m=0.02)
    assert m2["precision"] == 0.0 and m2["recall"] == 0.0 and m2["f1"] == 0.0


def test_geometry_metrics_asymmetric_hand():
    # pred = {origin, 10 cm along x}, gt = {origin}.
    # acc = (0 + 10) / 2 = 5 cm; comp = 0; C-L1 = 2.5 cm; precision = 1/2 = 50 %, recall = 100 %,
    # F1 = 2 * 50 * 100 / 150 = 66.67 %.
    m = geometry_metrics(np.array([[0, 0, 0], [0.1, 0, 0]]), np.array([[0, 0, 0.0]]), threshold_m=0.05)
    assert m["acc_cm"] == pytest.approx(5.0) and m["comp_cm"] == pytest.approx(0.0)
    assert m["chamfer_l1_cm"] == pytest.approx(2.5)
    assert m["precision"] == pytest.approx(50.0) and m["recall"] == pytest.approx(100.0)
    assert m["f1"] == pytest.approx(200.0 / 3.0)


def test_geometry_metrics_empty_prediction():
    m = geometry_metrics(np.zeros((0, 3)), np.zeros((1, 3)))
    assert m["acc_cm"] == np.inf and m["f1"] == 0.0 and m["recall"] == 0.0


def test_mesh_geometry_metrics_shifted_square():
    square_v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=np.float64)
    square_f = np.array([[0, 1, 2], [0, 2, 3]])
    shifted_v = square_v + [0, 0, 0.03]
    m = mesh_geometry_metrics(square_v, square_f, shifted_v, square_f, n_points=20_000, seed=0)
    # Random samples: nearest neighbour is 3 cm along the normal plus a few mm in-plane.
    assert 3.0 <= m["acc_cm"] < 3.1 and 3.0 <= m["comp_cm"] < 3.1
    assert m["f1"] == 100.0
    # GT face mask keeping only GT triangle 0 (the half x >= y): every GT point still has a prediction
    # 3 cm away (recall 100). A prediction point (x, y, 0.03) with t = y - x > 0 lies t / sqrt(2) in-plane
    # from the kept half, so sqrt(0.03^2 + t^2 / 2) from it: within 5 cm iff t < sqrt(2 (0.05^2 - 0.03^2))
    # = 0.0566. The strip 0 < t < 0.0566 holds 1/2 - (1 - 0.0566)^2 / 2 = 0.0550 of the square, so
    # precision = 50 + 5.50 = 55.50 % (the GT is itself sampled, ~5 mm apart: a little less, 55.0 measured).
    # acc: 3 cm on the kept half; on the other, the mean of sqrt(0.03^2 + t^2 / 2) over the triangle
    # (density of t: 2 (1 - t)) = 24.0 cm (about (1/3) / sqrt(2) = 23.6 cm without the 3 cm offset);
    # acc = (3 + 24.0) / 2 = 13.50 cm.
    m_half = mesh_geometry_metrics(square_v, square_f, shifted_v, square_f, n_points=20_000, seed=0,
                                   gt_face_mask=np.array([True, False]))
    t_cut = np.sqrt(2 * (0.05**2 - 0.03**2))
    assert m_half["recall"] == 100.0
    assert m_half["precision"] == pytest.approx(100 * (0.5 + 0.5 - (1 - t_cut) ** 2 / 2), abs=1.0)
    t = (np.arange(100_000) + 0.5) / 100_000                                         # midpoint rule on [0, 1]
    far_half_cm = 100 * np.mean(np.sqrt(0.03**2 + t**2 / 2) * 2 * (1 - t))
    assert far_half_cm == pytest.approx(24.0, abs=0.01)
    assert m_half["acc_cm"] == pytest.approx((3.0 + far_half_cm) / 2, abs=0.1)
    # Empty prediction.
    m_empty = mesh_geometry_metrics(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64), shifted_v, square_f,
                                    n_points=100)
    assert m_empty["f1"] == 0.0


# ------------------------------------------------------------------ semantics


def test_confusion_and_semantic_metrics_hand():
    gt = np.array([1, 1, 1, 2, 2, 3, 0, 0, 2])
    pred = np.array([1, 1, 2, 2, 2, 1, 3, 1, 4])
    conf = confusion_matrix(pred, gt, n_classes=5, ignore_gt=0)
    # gt 0 elements (two) are skipped. Rows gt, cols pred:
    #   gt 1: pred 1 x2, pred 2 x1
    #   gt 2: pred 2 x2, pred 4 x1
    #   gt 3: pred 1 x1
    expected = np.zeros((5, 5), dtype=np.int64)
    expected[1, 1], expected[1, 2] = 2, 1
    expected[2, 2], expected[2, 4] = 2, 1
    expected[3, 1] = 1
    np.testing.assert_array_equal(conf, expected)
    m = semantic_metrics(conf)
    # IoU = TP / (row + col - TP):
    #   class 1: 2 / (3 + 3 - 2) = 50 %;  class 2: 2 / (3 + 3 - 2) = 50 %;  class 3: 0 / (1 + 0 - 0) = 0 %.
    # Class 4 is absent from GT (only predicted) -> not averaged, not reported.
    # mIoU = (50 + 50 + 0) / 3 = 33.33;  Acc = TP / row: 2/3, 2/3, 0 -> mAcc = 44.44.
    assert m["per_class_iou"] == pytest.approx({1: 50.0, 2: 50.0, 3: 0.0})
    assert m["miou"] == pytest.approx(100.0 / 3.0)
    assert m["macc"] == pytest.approx(100.0 * (4.0 / 3.0) / 3.0)
    assert set(m["per_class_acc"]) == {1, 2, 3}


def test_confusion_matrix_no_ignore_and_range_check():
    conf = confusion_matrix(np.array([0, 1]), np.array([0, 0]), n_classes=2, ignore_gt=None)
    np.testing.assert_array_equal(conf, [[1, 1], [0, 0]])
    with pytest.raises(ValueError):
        confusion_matrix(np.array([2]), np.array([1]), n_classes=2)


# ------------------------------------------------------------------ rays / ray casting


def test_pixel_rays_hand():
    # 2x2 image, f = 2, principal point (0.5, 0.5): pixel (u=0, v=0) ray = (-0.25, -0.25, 1).
    K = np.array([[2.0, 0, 0.5], [0, 2.0, 0.5], [0, 0, 1]])
    c2w = np.eye(4)
    c2w[:3, 3] = [1, 2, 3]
    origins, dirs, z_comp = mesh_utils.pixel_rays(K, c2w, width=2, height=2)
    assert origins.shape == (4, 3) and dirs.shape == (4, 3) and z_comp.shape == (4,)
    np.testing.assert_allclose(origins, np.tile([1, 2, 3], (4, 1)))
    norm = np.sqrt(0.25 ** 2 * 2 + 1)
    np.testing.assert_allclose(dirs[0], np.array([-0.25, -0.25, 1]) / norm)
    np.testing.assert_allclose(dirs[1], np.array([0.25, -0.25, 1]) / norm)  # index 1 = (u=1, v=0): row-major
    np.testing.assert_allclose(z_comp, 1 / norm)
    # A camera turned 180 deg about y (looks along -z, x flipped): world dir = R @ cam dir.
    c2w_rot = np.diag([-1.0, 1.0, -1.0, 1.0])
    _, dirs_rot, _ = mesh_utils.pixel_rays(K, c2w_rot, width=2, height=2)
    np.testing.assert_allclose(dirs_rot[0], np.array([0.25, -0.25, -1]) / norm)


def _square(z_m: float, half_m: float):
    v = np.array([[-half_m, -half_m, z_m], [half_m, -half_m, z_m], [half_m, half_m, z_m], [-half_m, half_m, z_m]])
    return v, np.array([[0, 1, 2], [0, 2, 3]])


def test_raycast_depth_is_z_depth_and_labels():
    K = np.array([[20.0, 0, 15.5], [0, 20.0, 11.5], [0, 0, 1]])  # 32 x 24, wide field of view
    W, H = 32, 24
    v, f = _square(2.0, 100.0)  # huge plane z = 2 in front of an identity camera
    depth = mesh_utils.raycast_depth(v, f, K, np.eye(4), W, H)
    assert depth.shape == (H, W) and depth.dtype == np.float32
    np.testing.assert_allclose(depth, 2.0, rtol=1e-5)  # z-depth, not ray length (which grows off-axis)
    # A small square (x, y in [-0.5, 0.5] at z = 2): pixel u hits iff |u - 15.5| / 20 * 2 <= 0.5.
    v_small, f_small = _square(2.0, 0.5)
    labels = mesh_utils.raycast_labels(v_small, f_small, K, np.eye(4), W, H)
    depth_small = mesh_utils.raycast_depth(v_small, f_small, K, np.eye(4), W, H)
    assert labels.shape == (H, W)
    u = np.arange(W)
    inside_u = np.abs(u - 15.5) / 20 * 2 < 0.5 - 1e-6
    assert np.all(labels[11, inside_u] >= 0) and np.all(labels[11, ~inside_u] == -1)
    assert set(np.unique(labels)) == {-1, 0, 1}
    np.testing.assert_array_equal(depth_small == 0, labels == -1)
    # Camera moved back 1 m (c2w translation z = -1): depth 3.
    c2w = np.eye(4)
    c2w[2, 3] = -1.0
    np.testing.assert_allclose(mesh_utils.raycast_depth(v, f, K, c2w, W, H), 3.0, rtol=1e-5)


def test_project_points_hand():
    K = np.array([[100.0, 0, 50], [0, 100.0, 40], [0, 0, 1]])
    c2w = np.eye(4)
    c2w[:3, 3] = [0, 0, -1]  # camera 1 m behind the origin
    u, v, z = project_points(np.array([[0.1, -0.2, 1.0]]), K, c2w)
    # camera coords (0.1, -0.2, 2) -> u = 100 * 0.05 + 50 = 55, v = 100 * -0.1 + 40 = 30
    np.testing.assert_allclose([u[0], v[0], z[0]], [55, 30, 2])


# ------------------------------------------------------------------ visibility


def _box_and_camera():
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    box.apply_translation([0, 0, 3.0])  # box spans z in [2.5, 3.5], camera at origin looking +z
    K = np.array([[60.0, 0, 31.5], [0, 60.0, 23.5], [0, 0, 1]])
    return np.asarray(box.vertices), np.asarray(box.faces), np.asarray(box.face_normals), K, 64, 48


def test_visible_face_mask_box_seen_from_one_side():
    vertices, faces, normals, K, W, H = _box_and_camera()
    near = normals[:, 2] < -0.9  # the two triangles of the face z = 2.5 that faces the camera
    assert near.sum() == 2
    mask = visible_face_mask(vertices, faces, K, np.eye(4)[None], W, H)
    assert mask.shape == (faces.shape[0],)
    # Far face (z = 3.5) is occluded; side faces are hidden behind the near face too (a side point
    # (0.5, y, z) projects at x/z = 0.5/z < 0.5/2.5, i.e. inside the near face's silhouette).
    np.testing.assert_array_equal(mask, near)
    # Same answer from observed depth (rendered exactly) instead of ray casting.
    depth = mesh_utils.raycast_depth(vertices, faces, K, np.eye(4), W, H)
    mask_depth = visible_face_mask(vertices, faces, K, np.eye(4)[None], W, H, depths_m=[depth])
    np.testing.assert_array_equal(mask_depth, near)
    # A camera looking away (+z turned to -z by a 180 deg turn about y) sees nothing.
    away = np.diag([-1.0, 1.0, -1.0, 1.0])
    assert not visible_face_mask(vertices, faces, K, away[None], W, H).any()
    # Two cameras: the second one at z = 6 looking back (-z) adds the far face.
    back = np.diag([-1.0, 1.0, -1.0, 1.0])
    back[2, 3] = 6.0
    far = normals[:, 2] > 0.9
    both = visible_face_mask(vertices, faces, K, np.stack([np.eye(4), back]), W, H)
    np.testing.assert_array_equal(both, near | far)
    # Depth limit: the box is > 2.5 m away.
    assert not visible_face_mask(vertices, faces, K, np.eye(4)[None], W, H, max_depth_m=2.0).any()
