"""Gravity alignment of a run's world frame for simulators (Gazebo: +z up, metres).

export point = A @ scene point, with A = [R | t] (4x4, rigid):
- R: the smallest rotation taking the scene's up direction u to +z (headings kept as far as possible);
- t = (0, 0, -h): h is the floor height along u, so the floor lies at z = 0 after the transform.

How u and h are found (the first rule that applies; `UpFrame.source` says which):
1. scene.json declares "up_axis" ("+z", "-y", ...). The synthetic generator writes "+z" with the floor top
   at z = 0 (scene.json "generator": {"floor_z": 0.0}), so A is the identity for synthetic scenes.
   h: the declared floor_z, else the floor vertices' median height, else the lowest vertex.
2. the floor class (legend name "floor", "ground" or "floor-*") owns >= MIN_FLOOR_VERTICES vertices:
   u is the normal of a trimmed least-squares plane through them, signed so that the cameras (scene
   pose/ files) lie above it, or, without cameras, so that most of the mesh lies above it;
   h is the median height of the plane's inliers. This is the rule for Replica and other real scans,
   whose up axis is not declared: it is measured, never assumed.
3. cameras: u is orthogonal to the cameras' (level) x axes, signed like their mean up vector (-y of the
   OpenCV camera axes); the mean up vector itself when the headings are too alike (see camera_up);
   h = the lowest vertex. (Replica's NICE-SLAM trajectories are z-up this way: room0's 20 frames give +z.)
4. nothing to go on: u = +z is assumed (logged); h = the lowest vertex.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recon.data.axes import axis_vector, camera_up  # noqa: F401 (part of this module's interface)

MIN_FLOOR_VERTICES = 50
FLOOR_NAMES = ("floor", "ground")  # plus any name starting with "floor-" (COCO-stuff style)

# z-up (Gazebo, ROS) -> y-up (glTF 2.0): (x, y, z) -> (x, z, -y); a proper rotation
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


@dataclass(frozen=True)
class UpFrame:
    transform: np.ndarray   # [4, 4] scene -> export (z up, floor at z = 0), rigid
    up_scene: np.ndarray    # [3] unit up vector in the scene frame
    floor_height_m: float   # h: floor height along up_scene (scene frame)
    source: str             # which rule found it, for logs and export.json


def is_floor_name(name: str) -> bool:
    n = name.strip().lower()
    return n in FLOOR_NAMES or n.startswith("floor-")


def rotation_to_z(up: np.ndarray) -> np.ndarray:
    """The smallest rotation R [3, 3] with R @ up = +z (Rodrigues); up [3] need not be unit length.

    For up = -z (no unique smallest rotation) this is the half turn about x.
    """
    u = np.asarray(up, np.float64).reshape(3)
    norm = np.linalg.norm(u)
    assert norm > 0 and np.isfinite(norm), f"up vector must be finite and non-zero, got {u}"
    u = u / norm
    z = np.array([0.0, 0.0, 1.0])
    v = np.cross(u, z)  # rotation axis * sin(angle)
    s, c = np.linalg.norm(v), float(u @ z)
    if s < 1e-12:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    vx = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + vx + vx @ vx * ((1.0 - c) / (s * s))


def gravity_transform(up: np.ndarray, floor_height_m: float) -> np.ndarray:
    """[4, 4] A = [R | (0, 0, -h)] with R = rotation_to_z(up): maps the floor plane (up . p = h) to z = 0."""
    A = np.eye(4)
    A[:3, :3] = rotation_to_z(up)
    A[2, 3] = -float(floor_height_m)
    return A


def apply_transform(A: np.ndarray, points: np.ndarray) -> np.ndarray:
    """points [N, 3] -> A[:3, :3] p + A[:3, 3], [N, 3]."""
    points = np.asarray(points, np.float64)
    assert A.shape == (4, 4) and points.ndim == 2 and points.shape[1] == 3, (A.shape, points.shape)
    return points @ A[:3, :3].T + A[:3, 3]


def fit_plane(points: np.ndarray, iters: int = 4, min_tol_m: float = 0.005) -> tuple[np.ndarray, float, np.ndarray]:
    """Trimmed least-squares plane through points [N, 3] (N >= 3).

    Returns (unit normal n [3], offset d with n . p = d on the plane, inlier mask [N]). Each round fits the
    plane to the current inliers (SVD of the centred points: n = the direction of least spread), then keeps
    the points within max(min_tol_m, 3 * 1.4826 * MAD) of it. The sign of n is arbitrary (see orient_up).
    """
    p = np.asarray(points, np.float64)
    assert p.ndim == 2 and p.shape[1] == 3 and len(p) >= 3, p.shape
    keep = np.ones(len(p), bool)
    n, d = np.array([0.0, 0.0, 1.0]), 0.0
    for _ in range(iters):
        q = p[keep]
        centre = q.mean(axis=0)
        _, _, vt = np.linalg.svd(q - centre, full_matrices=False)
        n = vt[-1] / np.linalg.norm(vt[-1])
        d = float(n @ centre)
        r = np.abs(p @ n - d)  # [N] distance to the plane
        mad = float(np.median(np.abs(r[keep] - np.median(r[keep]))))
        new_keep = r <= max(min_tol_m, 3.0 * 1.4826 * mad)
        if new_keep.sum() < 3 or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return n, d, keep


def orient_up(normal: np.ndarray, offset: float, above: np.ndarray) -> np.ndarray:
    """Sign the plane normal so that the points `above` [M, 3] (cameras, or the mesh) lie on its positive side
    (median signed distance > 0)."""
    n = np.asarray(normal, np.float64).reshape(3)
    side = float(np.median(np.asarray(above, np.float64) @ n - offset))
    return n if side >= 0 else -n


def find_up_frame(vertices: np.ndarray, floor_mask: np.ndarray | None, cam_c2w: np.ndarray | None,
                  declared_up: str | None, declared_floor_z: float | None) -> UpFrame:
    """Apply the rules of the module docstring. vertices [V, 3] scene frame; floor_mask [V] bool or None;
    cam_c2w [N, 4, 4] or None; declared_up e.g. '+z' or None; declared_floor_z: floor height along the declared
    up axis, or None."""
    v = np.asarray(vertices, np.float64)
    assert v.ndim == 2 and v.shape[1] == 3 and len(v) > 0, v.shape
    n_floor = int(floor_mask.sum()) if floor_mask is not None else 0
    if declared_up is not None:
        up = axis_vector(declared_up)
        if declared_floor_z is not None:
            h, how = float(declared_floor_z), "declared floor height"
        elif n_floor >= MIN_FLOOR_VERTICES:
            h, how = float(np.median(v[floor_mask] @ up)), f"median of {n_floor} floor vertices"
        else:
            h, how = float((v @ up).min()), "lowest vertex"
        return UpFrame(gravity_transform(up, h), up, h, f"scene.json up_axis {declared_up}; floor: {how}")
    if n_floor >= MIN_FLOOR_VERTICES:
        n, d, inl = fit_plane(v[floor_mask])
        if cam_c2w is not None and len(cam_c2w):
            up, ref = orient_up(n, d, cam_c2w[:, :3, 3]), "cameras above it"
        else:
            up, ref = orient_up(n, d, v), "most of the mesh above it"
        h = float(np.median(v[floor_mask][inl] @ up))
        src = f"floor plane fit ({int(inl.sum())}/{n_floor} floor vertices inliers; {ref})"
        return UpFrame(gravity_transform(up, h), up, h, src)
    if cam_c2w is not None and len(cam_c2w):
        up = camera_up(cam_c2w)
        h = float((v @ up).min())
        return UpFrame(gravity_transform(up, h), up, h,
                       f"up of {len(cam_c2w)} cameras (no floor class); floor: lowest vertex")
    up = np.array([0.0, 0.0, 1.0])
    h = float(v[:, 2].min())
    return UpFrame(gravity_transform(up, h), up, h,
                   "ASSUMED +z (no up_axis in scene.json, no floor class, no cameras); floor: lowest vertex")
