"""Evaluation metrics (METHOD.md section 9): geometry, semantic confusion / mIoU, GT-mesh visibility.

Units: positions in metres; geometry distances are reported in centimetres
(`*_cm`); precision / recall / F1 / IoU / accuracy in percent [0, 100].

Everything here is numpy / scipy, except `visible_face_mask`, which ray casts with
Open3D through eval.mesh_utils (imported lazily).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.spatial import cKDTree

# ----------------------------------------------------------------------------------------------
# Mesh sampling
# ----------------------------------------------------------------------------------------------


def _check_mesh(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces)
    assert vertices.ndim == 2 and vertices.shape[1] == 3, f"vertices must be [V,3], got {vertices.shape}"
    assert faces.ndim == 2 and faces.shape[1] == 3, f"faces must be [F,3], got {faces.shape}"
    assert np.issubdtype(faces.dtype, np.integer), f"faces must be integer, got {faces.dtype}"
    if faces.shape[0] > 0:
        assert faces.min() >= 0 and faces.max() < vertices.shape[0], "face index out of range"
    return vertices, faces.astype(np.int64)


def face_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Triangle areas [F] in m^2."""
    vertices, faces = _check_mesh(vertices, faces)
    tri = vertices[faces]  # [F, 3 corners, 3]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # [F, 3]
    return 0.5 * np.linalg.norm(cross, axis=1)


def sample_mesh_points(vertices: np.ndarray, faces: np.ndarray, n_points: int, seed: int = 0,
                       return_face_index: bool = False):
    """Area-uniform random points on a triangle mesh.

    Triangles are drawn with probability proportional to area, then a point uniform
    inside the triangle via the square-root barycentric map
    (a, b, c) = (1 - sqrt(r1), sqrt(r1) (1 - r2), sqrt(r1) r2).
    Deterministic for a given seed.

    Returns points [n_points, 3] float64, plus face_index [n_points] int64 if asked.
    """
    vertices, faces = _check_mesh(vertices, faces)
    n_points = int(n_points)
    assert n_points >= 0
    areas = face_areas(vertices, faces)  # [F]
    total_area = float(areas.sum())
    if faces.shape[0] == 0 or not total_area > 0.0:
        raise ValueError("cannot sample points on a mesh with zero total area")
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(areas) / total_area  # [F]
    face_index = np.searchsorted(cdf, rng.random(n_points) * cdf[-1], side="right")  # [n]
    face_index = np.minimum(face_index, faces.shape[0] - 1).astype(np.int64)
    r1 = np.sqrt(rng.random(n_points))  # [n]
    r2 = rng.random(n_points)  # [n]
    bary = np.stack([1.0 - r1, r1 * (1.0 - r2), r1 * r2], axis=1)  # [n, 3]
    tri = vertices[faces[face_index]]  # [n, 3 corners, 3]
    points = np.einsum("nc,ncd->nd", bary, tri)  # [n, 3]
    if return_face_index:
        return points, face_index
    return points


# ----------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------

GEOMETRY_KEYS = ("acc_cm", "comp_cm", "chamfer_l1_cm", "precision", "recall", "f1")


NEAR_M = 0.25  # beyond this, distances come from the reference mesh surface when it is given


def _nn_distance(query: np.ndarray, reference: np.ndarray,
                 reference_mesh: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Distance [N] from each query point to its nearest reference point (metres).

    A k-d tree query far from a near-planar point set can take minutes (the search cannot
    prune), so the tree is queried up to NEAR_M only. Points farther than that get the exact
    distance to the reference *mesh* surface (Open3D BVH) when `reference_mesh` (vertices,
    faces) is given: there it differs from the point distance by at most s^2 / (8 d) for
    sample spacing s (under 0.3 mm for s = 2 cm at d = 25 cm). Without a mesh the far points
    are queried exactly (possibly slowly).
    """
    tree = cKDTree(reference)
    dist, _ = tree.query(query, k=1, workers=1, distance_upper_bound=NEAR_M)
    dist = np.asarray(dist, dtype=np.float64)
    far = ~np.isfinite(dist)
    if far.any():
        if reference_mesh is not None:
            from eval.mesh_utils import make_raycasting_scene
            import open3d as o3d
            scene = make_raycasting_scene(*reference_mesh)
            dist[far] = scene.compute_distance(o3d.core.Tensor(query[far].astype(np.float32))).numpy()
        else:
            dist[far], _ = tree.query(query[far], k=1, workers=1)
    return dist


def geometry_metrics(pred_points: np.ndarray, gt_points: np.ndarray, threshold_m: float = 0.05,
                     pred_mesh: tuple[np.ndarray, np.ndarray] | None = None,
                     gt_mesh: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Accuracy / completeness / Chamfer-L1 (cm) and precision / recall / F1 (%) between point sets.

    acc_cm        mean distance pred -> nearest gt, in cm
    comp_cm       mean distance gt -> nearest pred, in cm
    chamfer_l1_cm (acc_cm + comp_cm) / 2
    precision     % of pred points with distance to gt < threshold_m
    recall        % of gt points with distance to pred < threshold_m
    f1            harmonic mean of precision and recall, 0 if both are 0
    An empty prediction gives acc = comp = chamfer = inf and precision = recall = f1 = 0.
    pred_mesh / gt_mesh (vertices, faces), when given, answer distances beyond NEAR_M
    exactly and fast (see _nn_distance).
    """
    pred_points = np.asarray(pred_points, dtype=np.float64).reshape(-1, 3)  # [N, 3]
    gt_points = np.asarray(gt_points, dtype=np.float64)  # [M, 3]
    assert gt_points.ndim == 2 and gt_points.shape[1] == 3, f"gt_points must be [M,3], got {gt_points.shape}"
    if gt_points.shape[0] == 0:
        raise ValueError("geometry_metrics: empty ground-truth point set")
    assert threshold_m > 0
    if pred_points.shape[0] == 0:
        return {"acc_cm": float("inf"), "comp_cm": float("inf"), "chamfer_l1_cm": float("inf"),
                "precision": 0.0, "recall": 0.0, "f1": 0.0}
    dist_pred_to_gt_m = _nn_distance(pred_points, gt_points, gt_mesh)  # [N]
    dist_gt_to_pred_m = _nn_distance(gt_points, pred_points, pred_mesh)  # [M]
    acc_cm = 100.0 * float(dist_pred_to_gt_m.mean())
    comp_cm = 100.0 * float(dist_gt_to_pred_m.mean())
    precision = 100.0 * float((dist_pred_to_gt_m < threshold_m).mean())
    recall = 100.0 * float((dist_gt_to_pred_m < threshold_m).mean())
    f1 = 0.0 if precision + recall == 0.0 else 2.0 * precision * recall / (precision + recall)
    return {"acc_cm": acc_cm, "comp_cm": comp_cm, "chamfer_l1_cm": 0.5 * (acc_cm + comp_cm),
            "precision": precision, "recall": recall, "f1": f1}


def mesh_geometry_metrics(pred_v: np.ndarray, pred_f: np.ndarray, gt_v: np.ndarray, gt_f: np.ndarray,
                          n_points: int = 200_000, threshold_m: float = 0.05, seed: int = 0,
                          gt_face_mask: np.ndarray | None = None) -> dict:
    """geometry_metrics on n_points area-uniform samples of each mesh.

    gt_face_mask [F_gt] bool (optional, e.g. from visible_face_mask) keeps only those GT
    faces. The prediction is sampled with `seed`, the GT with `seed + 1`.
    An empty / zero-area prediction gives the empty-prediction result of geometry_metrics.
    """
    gt_v, gt_f = _check_mesh(gt_v, gt_f)
    if gt_face_mask is not None:
        gt_face_mask = np.asarray(gt_face_mask, dtype=bool)
        assert gt_face_mask.shape == (gt_f.shape[0],), f"gt_face_mask must be [{gt_f.shape[0]}]"
        gt_f = gt_f[gt_face_mask]
    gt_points = sample_mesh_points(gt_v, gt_f, n_points, seed=seed + 1)  # [n, 3]
    pred_v, pred_f = _check_mesh(pred_v, pred_f)
    if pred_f.shape[0] == 0 or not face_areas(pred_v, pred_f).sum() > 0.0:
        pred_points = np.zeros((0, 3))
    else:
        pred_points = sample_mesh_points(pred_v, pred_f, n_points, seed=seed)  # [n, 3]
    return geometry_metrics(pred_points, gt_points, threshold_m=threshold_m, pred_mesh=(pred_v, pred_f),
                            gt_mesh=(gt_v, gt_f))


# ----------------------------------------------------------------------------------------------
# Semantics
# ----------------------------------------------------------------------------------------------


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, n_classes: int, ignore_gt: int | None = 0) -> np.ndarray:
    """Confusion matrix [n_classes, n_classes] int64; rows = GT class, cols = predicted class.

    Elements whose GT equals `ignore_gt` are skipped (None: skip nothing). Class ids must
    lie in [0, n_classes); a predicted 0 ("unlabelled") is an ordinary column, i.e. a miss
    for the GT class of that element.
    """
    pred = np.asarray(pred).reshape(-1)
    gt = np.asarray(gt).reshape(-1)
    assert pred.shape == gt.shape, f"pred {pred.shape} and gt {gt.shape} differ"
    assert np.issubdtype(pred.dtype, np.integer) and np.issubdtype(gt.dtype, np.integer), "labels must be integer"
    n_classes = int(n_classes)
    if ignore_gt is not None:
        keep = gt != ignore_gt
        pred, gt = pred[keep], gt[keep]
    pred = pred.astype(np.int64)
    gt = gt.astype(np.int64)
    if pred.size:
        if pred.min() < 0 or pred.max() >= n_classes:
            raise ValueError(f"predicted class ids must lie in [0, {n_classes}), got [{pred.min()}, {pred.max()}]")
        if gt.min() < 0 or gt.max() >= n_classes:
            raise ValueError(f"GT class ids must lie in [0, {n_classes}), got [{gt.min()}, {gt.max()}]")
    flat = np.bincount(gt * n_classes + pred, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes).astype(np.int64)


def semantic_metrics(conf: np.ndarray) -> dict:
    """mIoU and mAcc (percent) from a confusion matrix (rows GT, cols pred).

    IoU_c = TP_c / (TP_c + FP_c + FN_c),  Acc_c = TP_c / (TP_c + FN_c).
    Averages run over the classes PRESENT IN THE GT (row sum > 0). A class absent from the
    GT is left out of the means and of the per-class dicts; predicting it still costs the
    GT classes whose elements it took (they count as misses there). NaN if no GT class.

    Returns {"miou", "macc", "per_class_iou": {class_id: %}, "per_class_acc": {class_id: %}}.
    """
    conf = np.asarray(conf, dtype=np.float64)
    assert conf.ndim == 2 and conf.shape[0] == conf.shape[1], f"conf must be square, got {conf.shape}"
    tp = np.diag(conf)  # [C]
    gt_count = conf.sum(axis=1)  # [C] TP + FN
    pred_count = conf.sum(axis=0)  # [C] TP + FP
    present = np.flatnonzero(gt_count > 0)
    iou = 100.0 * tp[present] / (gt_count[present] + pred_count[present] - tp[present])
    acc = 100.0 * tp[present] / gt_count[present]
    return {
        "miou": float(iou.mean()) if present.size else float("nan"),
        "macc": float(acc.mean()) if present.size else float("nan"),
        "per_class_iou": {int(c): float(x) for c, x in zip(present, iou)},
        "per_class_acc": {int(c): float(x) for c, x in zip(present, acc)},
    }


# ----------------------------------------------------------------------------------------------
# Visibility culling of the GT mesh
# ----------------------------------------------------------------------------------------------


def face_sample_barycentrics(n_samples_per_face: int) -> np.ndarray:
    """Fixed barycentric coordinates [S, 3] of the test points used on every face.

    Order: centroid, the 3 points (2/3, 1/6, 1/6) toward each corner, the 3 points
    (5/12, 5/12, 1/6) toward each edge, then seeded random interior points.
    """
    n = int(n_samples_per_face)
    assert n >= 1
    fixed = [(1 / 3, 1 / 3, 1 / 3),
             (2 / 3, 1 / 6, 1 / 6), (1 / 6, 2 / 3, 1 / 6), (1 / 6, 1 / 6, 2 / 3),
             (5 / 12, 5 / 12, 1 / 6), (1 / 6, 5 / 12, 5 / 12), (5 / 12, 1 / 6, 5 / 12)]
    bary = np.array(fixed[:n], dtype=np.float64)
    if n > len(fixed):
        rng = np.random.default_rng(0)
        r1 = np.sqrt(rng.random(n - len(fixed)))
        r2 = rng.random(n - len(fixed))
        extra = np.stack([1.0 - r1, r1 * (1.0 - r2), r1 * r2], axis=1)
        bary = np.concatenate([bary, extra], axis=0)
    return bary  # [S, 3]


def project_points(points_w: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World points [N,3] -> pixel coordinates u [N], v [N] (OpenCV, pixel centres integer) and z-depth [N] (m)."""
    K = np.asarray(K, dtype=np.float64)
    c2w = np.asarray(c2w, dtype=np.float64)
    assert K.shape == (3, 3) and c2w.shape == (4, 4)
    R_c2w, t_c2w = c2w[:3, :3], c2w[:3, 3]
    points_c = (points_w - t_c2w) @ R_c2w  # [N, 3] = R^T (p - t), row form
    z_m = points_c[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = K[0, 0] * points_c[:, 0] / z_m + K[0, 2]
        v = K[1, 1] * points_c[:, 1] / z_m + K[1, 2]
    return u, v, z_m


def visible_face_mask(vertices: np.ndarray, faces: np.ndarray, K: np.ndarray,
                      c2ws: np.ndarray | Sequence[np.ndarray], width: int, height: int,
                      depths_m: Sequence[np.ndarray] | None = None, n_samples_per_face: int = 4,
                      occlusion_tol_m: float = 0.002, depth_tol_m: float = 0.05,
                      max_depth_m: float | None = None, min_depth_m: float = 1e-3) -> np.ndarray:
    """Which GT triangles [F] bool are observed by at least one camera.

    A face is observed when one of its `n_samples_per_face` fixed interior test points
    (face_sample_barycentrics) in one camera:
      - is in front of it: min_depth_m < z (and z <= max_depth_m if given),
      - projects inside the image: -0.5 <= u < width - 0.5 and -0.5 <= v < height - 0.5
        (pixel (u, v) is the centre of the unit square around it),
      - is not occluded:
          depths_m is None: the first hit of the ray from the camera centre toward the
            point (Open3D RaycastingScene on this same mesh) is not more than
            occlusion_tol_m closer than the point itself;
          depths_m given ([H, W] metres per camera, 0 = invalid): the observed depth at
            the nearest pixel is valid and |z - depth| <= depth_tol_m.
    No back-face test: a one-sided surface seen from behind counts as observed.

    Cost: each camera only tests the faces not yet found visible, so later frames are cheap.
    """
    from . import mesh_utils

    vertices, faces = _check_mesh(vertices, faces)
    c2ws = np.asarray(c2ws, dtype=np.float64).reshape(-1, 4, 4)  # [n_frames, 4, 4]
    K = np.asarray(K, dtype=np.float64)
    assert K.shape == (3, 3), f"K must be [3,3], got {K.shape}"
    width, height = int(width), int(height)
    if depths_m is not None:
        assert len(depths_m) == c2ws.shape[0], f"{len(depths_m)} depth maps for {c2ws.shape[0]} cameras"
    n_faces = faces.shape[0]
    visible = np.zeros(n_faces, dtype=bool)  # [F]
    if n_faces == 0:
        return visible
    bary = face_sample_barycentrics(n_samples_per_face)  # [S, 3]
    n_samples = bary.shape[0]
    points_w = np.einsum("sc,fcd->fsd", bary, vertices[faces]).reshape(-1, 3)  # [F*S, 3]
    point_face = np.repeat(np.arange(n_faces), n_samples)  # [F*S]
    scene = mesh_utils.make_raycasting_scene(vertices, faces) if depths_m is None else None

    for frame, c2w in enumerate(c2ws):
        todo = np.flatnonzero(~visible[point_face])  # sample ids of faces not yet visible
        if todo.size == 0:
            break
        u, v, z_m = project_points(points_w[todo], K, c2w)  # [T] each
        ok = z_m > min_depth_m
        if max_depth_m is not None:
            ok &= z_m <= max_depth_m
        ok &= (u >= -0.5) & (u < width - 0.5) & (v >= -0.5) & (v < height - 0.5)
        cand = todo[ok]
        if cand.size == 0:
            continue
        if depths_m is None:
            origin_w = c2w[:3, 3]
            delta = points_w[cand] - origin_w  # [C, 3]
            dist_m = np.linalg.norm(delta, axis=1)  # [C]
            dirs_w = delta / dist_m[:, None]
            t_hit, _ = mesh_utils.cast_rays(scene, np.broadcast_to(origin_w, delta.shape), dirs_w)
            seen = t_hit >= dist_m - occlusion_tol_m
        else:
            depth_m = np.asarray(depths_m[frame], dtype=np.float64)
            assert depth_m.shape == (height, width), f"depth {frame} is {depth_m.shape}, expected {(height, width)}"
            u_px = np.clip(np.floor(u[ok] + 0.5).astype(np.int64), 0, width - 1)
            v_px = np.clip(np.floor(v[ok] + 0.5).astype(np.int64), 0, height - 1)
            observed_m = depth_m[v_px, u_px]  # [C]
            seen = (observed_m > 0) & np.isfinite(observed_m) & (np.abs(z_m[ok] - observed_m) <= depth_tol_m)
        visible[point_face[cand[seen]]] = True
    return visible
