"""Ray casting helpers for evaluation: pixel rays, depth / triangle-id rendering of a mesh.

Conventions (see docs/scene_format.md):
- OpenCV pinhole camera: x right, y down, z forward; integer pixel (u, v) is the
  pixel centre and its camera-frame ray is ((u - cx) / fx, (v - cy) / fy, 1).
- `c2w` [4, 4] maps camera coordinates to world coordinates (metres).
- Depth is z-depth along the camera axis (not distance along the ray), 0 = no hit.
- Flattened per-pixel arrays are row-major: index = v * width + u.

Open3D is imported lazily so that importing this module (and eval.metrics, which
uses it) stays cheap.
"""
from __future__ import annotations

import os

import numpy as np

INVALID_TRIANGLE_ID = -1


def _n_threads() -> int:
    """Threads for Open3D ray casting: OMP_NUM_THREADS if set (shared machines), else 0 (= all)."""
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "0")))
    except ValueError:
        return 0


def _check_camera(K: np.ndarray, c2w: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    K = np.asarray(K, dtype=np.float64)
    c2w = np.asarray(c2w, dtype=np.float64)
    assert K.shape == (3, 3), f"K must be [3,3], got {K.shape}"
    assert c2w.shape == (4, 4), f"c2w must be [4,4], got {c2w.shape}"
    assert int(width) > 0 and int(height) > 0, f"bad image size {width}x{height}"
    assert np.all(np.isfinite(c2w)), "c2w has non-finite entries"
    return K, c2w


def pixel_rays(K: np.ndarray, c2w: np.ndarray, width: int, height: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World-space rays through every pixel centre.

    Returns
      origins_w [H*W, 3] float64: camera centre in world (same for every pixel)
      dirs_w    [H*W, 3] float64: unit ray directions in world
      z_comp    [H*W]    float64: z component of the unit camera-frame direction, so
                                  z-depth = t_hit * z_comp for a hit at distance t_hit.
    Row-major pixel order: index = v * width + u.
    """
    K, c2w = _check_camera(K, c2w, width, height)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    v_px, u_px = np.meshgrid(np.arange(height, dtype=np.float64),
                             np.arange(width, dtype=np.float64), indexing="ij")  # [H, W] each
    dirs_cam = np.stack([(u_px - cx) / fx, (v_px - cy) / fy, np.ones_like(u_px)], axis=-1)  # [H, W, 3]
    dirs_cam = dirs_cam.reshape(-1, 3)  # [H*W, 3]
    dirs_cam /= np.linalg.norm(dirs_cam, axis=1, keepdims=True)
    z_comp = dirs_cam[:, 2].copy()  # [H*W]
    dirs_w = dirs_cam @ c2w[:3, :3].T  # [H*W, 3]
    origins_w = np.broadcast_to(c2w[:3, 3], dirs_w.shape).copy()  # [H*W, 3]
    return origins_w, dirs_w, z_comp


def make_raycasting_scene(vertices: np.ndarray, faces: np.ndarray):
    """Open3D RaycastingScene holding one triangle mesh (geometry id 0)."""
    import open3d as o3d

    vertices = np.asarray(vertices)
    faces = np.asarray(faces)
    assert vertices.ndim == 2 and vertices.shape[1] == 3, f"vertices must be [V,3], got {vertices.shape}"
    assert faces.ndim == 2 and faces.shape[1] == 3, f"faces must be [F,3], got {faces.shape}"
    assert faces.shape[0] > 0, "mesh has no faces"
    assert faces.min() >= 0 and faces.max() < vertices.shape[0], "face index out of range"
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(np.ascontiguousarray(vertices, dtype=np.float32)),
                        o3d.core.Tensor(np.ascontiguousarray(faces, dtype=np.uint32)))
    return scene


def cast_rays(scene, origins_w: np.ndarray, dirs_w: np.ndarray, return_uvs: bool = False):
    """Cast rays [N,3]+[N,3] into a RaycastingScene.

    Returns t_hit [N] float64 (distance in units of |dir|, inf = miss) and
    triangle_id [N] int64 (-1 = miss); with return_uvs also uv [N, 2] float64, Open3D's barycentric
    weights of the hit triangle's vertices 1 and 2 (vertex 0 has 1 - u - v).
    """
    import open3d as o3d

    assert origins_w.shape == dirs_w.shape and origins_w.ndim == 2 and origins_w.shape[1] == 3
    rays = np.concatenate([origins_w, dirs_w], axis=1).astype(np.float32)  # [N, 6]
    out = scene.cast_rays(o3d.core.Tensor(rays), nthreads=_n_threads())
    t_hit = out["t_hit"].numpy().astype(np.float64)  # [N]
    prim = out["primitive_ids"].numpy().astype(np.int64)  # [N], INVALID_ID = 2**32 - 1
    hit = np.isfinite(t_hit)
    triangle_id = np.where(hit, prim, INVALID_TRIANGLE_ID)
    t_hit = np.where(hit, t_hit, np.inf)
    if return_uvs:
        return t_hit, triangle_id, out["primitive_uvs"].numpy().astype(np.float64)
    return t_hit, triangle_id


def raycast_depth_and_labels(vertices: np.ndarray, faces: np.ndarray, K: np.ndarray, c2w: np.ndarray,
                             width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Render z-depth [H,W] float32 (0 = no hit) and hit triangle id [H,W] int64 (-1 = none)."""
    origins_w, dirs_w, z_comp = pixel_rays(K, c2w, width, height)
    scene = make_raycasting_scene(vertices, faces)
    t_hit, triangle_id = cast_rays(scene, origins_w, dirs_w)
    hit = triangle_id >= 0
    depth_m = np.where(hit, t_hit * z_comp, 0.0).astype(np.float32).reshape(height, width)  # [H, W]
    return depth_m, triangle_id.reshape(height, width)


def raycast_depth(vertices: np.ndarray, faces: np.ndarray, K: np.ndarray, c2w: np.ndarray,
                  width: int, height: int) -> np.ndarray:
    """z-depth in metres [H, W] float32 of the mesh seen from c2w; 0 where no triangle is hit."""
    return raycast_depth_and_labels(vertices, faces, K, c2w, width, height)[0]


def raycast_labels(vertices: np.ndarray, faces: np.ndarray, K: np.ndarray, c2w: np.ndarray,
                   width: int, height: int) -> np.ndarray:
    """Id of the first triangle hit per pixel [H, W] int64; -1 where nothing is hit.

    Map to per-face labels with `np.where(ids >= 0, face_labels[ids], 0)`.
    """
    return raycast_depth_and_labels(vertices, faces, K, c2w, width, height)[1]
