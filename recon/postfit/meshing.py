"""Chunked marching cubes on an SDF and face culling (docs/method.md, meshing).

Grid: samples at ``bbox_min + i * voxel_size_m`` for i = 0 .. n (per axis), with
``n = ceil((bbox_max - bbox_min) / voxel_size_m)`` cells, so the last sample may lie up to one voxel
beyond ``bbox_max``. The grid is processed in chunks of ``chunk_voxels`` cells per axis; neighbouring
chunks share one layer of samples, so every cube belongs to exactly one chunk and memory is bounded by
(chunk_voxels + 1)^3 samples regardless of the scene size.

Vertex identity: every marching-cubes vertex lies on a grid edge. It is keyed by the global index of
the edge (start sample + axis); vertices exactly on a sample (t within 1e-9 of 0 or 1) are keyed by that
sample. Positions are recomputed from the key and the two sample values,
``t = (level - s0) / (s1 - s0)``, in global index coordinates, so the same edge gives bit-identical
vertices whichever chunk produced it. Vertices are merged by key, sorted by key, and faces are put in a
canonical order (rotated so the smallest index comes first, rows sorted): a chunked extraction returns
exactly the same arrays as a single-chunk one (given an sdf_fn that is deterministic per point).

Orientation: faces are wound so that normals (right-hand rule) point towards increasing SDF, i.e. into
free space (outwards for an object, into the room for an inside-out room SDF).
Non-finite SDF values are treated as free space (+1e10).
"""
from __future__ import annotations

from collections.abc import Callable

import mcubes
import numpy as np
from tqdm import tqdm

_ON_SAMPLE_TOL = 1e-9  # index-space distance under which a vertex is taken to sit on a sample


def grid_shape(bbox_min: np.ndarray, bbox_max: np.ndarray, voxel_size_m: float) -> np.ndarray:
    """Number of cells per axis [3] (>= 1)."""
    ext = np.asarray(bbox_max, np.float64) - np.asarray(bbox_min, np.float64)
    assert ext.shape == (3,) and np.all(ext > 0) and voxel_size_m > 0
    return np.maximum(np.ceil(ext / voxel_size_m - 1e-9).astype(np.int64), 1)


def _edge_keys_positions(
    verts_local: np.ndarray, vol: np.ndarray, origin: np.ndarray, dims1: np.ndarray, level: float
) -> tuple[np.ndarray, np.ndarray]:
    """Chunk-local mcubes vertices [V, 3] -> (global int64 keys [V], global index coordinates [V, 3]).

    vol: the chunk's samples [a, b, c]; origin [3]: global index of vol[0, 0, 0]; dims1 [3]: global
    sample count per axis (n + 1).
    """
    rounded = np.rint(verts_local)
    dist = np.abs(verts_local - rounded)  # [V, 3]
    axis = np.argmax(dist, axis=1)  # [V] the edge direction
    on_sample = dist[np.arange(len(axis)), axis] <= _ON_SAMPLE_TOL
    start = rounded.astype(np.int64)  # [V, 3] local
    rows = np.nonzero(~on_sample)[0]
    start[rows, axis[rows]] = np.floor(verts_local[rows, axis[rows]]).astype(np.int64)
    axis = np.where(on_sample, 3, axis)
    # positions from the sample values of the edge (identical in every chunk that holds the edge);
    # the integer global start is converted first so that no chunk-dependent rounding enters
    g = start + origin[None, :]  # [V, 3] global start sample
    pos = g.astype(np.float64)  # [V, 3] global index coordinates
    if len(rows):
        s = start[rows]
        e = np.zeros_like(s)
        e[np.arange(len(rows)), axis[rows]] = 1
        end = np.minimum(s + e, np.array(vol.shape) - 1)
        v0 = vol[s[:, 0], s[:, 1], s[:, 2]]
        v1 = vol[end[:, 0], end[:, 1], end[:, 2]]
        denom = v1 - v0
        t = np.where(denom != 0, (level - v0) / np.where(denom != 0, denom, 1.0), 0.5)
        pos[rows, axis[rows]] += np.clip(t, 0.0, 1.0)
    keys = ((axis * dims1[0] + g[:, 0]) * dims1[1] + g[:, 1]) * dims1[2] + g[:, 2]
    return keys.astype(np.int64), pos


def _canonical_faces(faces: np.ndarray) -> np.ndarray:
    """Rotate each face so its smallest index is first (winding kept), then sort rows."""
    if len(faces) == 0:
        return faces.reshape(0, 3)
    shift = np.argmin(faces, axis=1)  # [F]
    cols = (shift[:, None] + np.arange(3)[None, :]) % 3
    rot = np.take_along_axis(faces, cols, axis=1)
    order = np.lexsort((rot[:, 2], rot[:, 1], rot[:, 0]))
    return rot[order]


def extract_mesh(
    sdf_fn: Callable[[np.ndarray], np.ndarray],
    bbox_min: np.ndarray,
    bbox_max: np.ndarray,
    voxel_size_m: float,
    chunk_voxels: int = 64,
    level: float = 0.0,
    keep_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    keep_mode: str = "all",
    keep_batch: int = 1 << 18,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes of ``sdf_fn`` over the box. Returns (vertices [V, 3] float64 world, faces [F, 3] int64).

    sdf_fn: world points [M, 3] float64 (M <= (chunk_voxels + 1)^3) -> sdf [M] (any float dtype).
    keep_fn: optional world points [K, 3] -> bool [K]; a face is kept if all (``keep_mode="all"``) or any
    (``"any"``) of its vertices pass; unreferenced vertices are then dropped (called in batches of
    ``keep_batch`` points). progress: a bar over the chunks (with ETA).
    """
    assert keep_mode in ("all", "any")
    assert chunk_voxels >= 1
    bbox_min = np.asarray(bbox_min, np.float64).reshape(3)
    n_cells = grid_shape(bbox_min, bbox_max, voxel_size_m)  # [3]
    dims1 = n_cells + 1
    all_keys, all_pos, all_faces = [], [], []
    n_verts_so_far = 0
    starts = [(i0, j0, k0) for i0 in range(0, int(n_cells[0]), chunk_voxels)
              for j0 in range(0, int(n_cells[1]), chunk_voxels) for k0 in range(0, int(n_cells[2]), chunk_voxels)]
    for i0, j0, k0 in tqdm(starts, desc="mesh", disable=not progress, dynamic_ncols=True, mininterval=1.0):
        origin = np.array([i0, j0, k0], np.int64)
        hi = np.minimum(origin + chunk_voxels, n_cells)  # last sample index, inclusive
        axes = [np.arange(origin[d], hi[d] + 1, dtype=np.float64) for d in range(3)]
        gi, gj, gk = np.meshgrid(*axes, indexing="ij")  # [a, b, c] global sample indices
        pts = bbox_min[None, :] + np.stack([gi, gj, gk], -1).reshape(-1, 3) * voxel_size_m
        vol = np.asarray(sdf_fn(pts), dtype=np.float64).reshape(gi.shape)
        del gi, gj, gk, pts
        vol = np.where(np.isfinite(vol), vol, 1e10)
        if not (vol.min() <= level <= vol.max()):
            continue
        verts, faces = mcubes.marching_cubes(vol, level)
        if len(faces) == 0:
            continue
        keys, pos = _edge_keys_positions(verts, vol, origin, dims1, level)
        all_keys.append(keys)
        all_pos.append(pos)
        all_faces.append(faces.astype(np.int64) + n_verts_so_far)
        n_verts_so_far += len(verts)
    if not all_keys:
        return np.zeros((0, 3), np.float64), np.zeros((0, 3), np.int64)
    keys = np.concatenate(all_keys)
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    pos = np.concatenate(all_pos)[first]  # [V, 3] global index coordinates, sorted by key
    faces = inverse.reshape(-1)[np.concatenate(all_faces)]  # [F, 3]
    faces = faces[:, [0, 2, 1]]  # PyMCubes winds towards negative SDF; flip so normals face free space
    good = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    faces = faces[good]  # drop faces degenerated by merging on-sample vertices
    verts = bbox_min[None, :] + pos * voxel_size_m
    if keep_fn is not None:
        verts, faces = cull_faces(verts, faces, keep_fn, keep_mode, keep_batch)
    else:
        verts, faces = remove_unreferenced(verts, faces)
    return verts, _canonical_faces(faces)


def remove_unreferenced(verts: np.ndarray, faces: np.ndarray, return_used: bool = False):
    """Drop vertices no face uses; keeps the relative vertex order. Returns (verts, faces), plus the
    kept-vertex mask [V_old] bool with return_used (to select per-vertex attributes alike)."""
    used = np.zeros(len(verts), bool)
    used[faces.reshape(-1)] = True
    remap = np.cumsum(used) - 1
    return (verts[used], remap[faces], used) if return_used else (verts[used], remap[faces])


def cull_faces(
    verts: np.ndarray,
    faces: np.ndarray,
    keep_fn: Callable[[np.ndarray], np.ndarray],
    keep_mode: str = "all",
    batch: int = 1 << 18,
    return_used: bool = False,
):
    """Keep faces whose vertices pass ``keep_fn`` (all or any of the 3), then drop unused vertices
    (remove_unreferenced; return_used adds the kept-vertex mask)."""
    keep_v = np.concatenate(
        [np.asarray(keep_fn(verts[s : s + batch]), bool).reshape(-1) for s in range(0, len(verts), batch)]
        or [np.zeros(0, bool)]
    )
    assert keep_v.shape == (len(verts),)
    per_face = keep_v[faces]  # [F, 3]
    keep_f = per_face.all(axis=1) if keep_mode == "all" else per_face.any(axis=1)
    return remove_unreferenced(verts, faces[keep_f], return_used)


def observed_mask(points: np.ndarray, K: np.ndarray, c2w: np.ndarray, depth_z: list[np.ndarray] | np.ndarray,
                  margin_m: float, front_margin_m: float | None = None) -> np.ndarray:
    """Which world points [N, 3] lie near an observed surface (or in observed space) of at least one view.

    A point is observed by a view if it projects inside the image in front of the camera
    onto a pixel with valid depth D and its own z-depth z satisfies
    D - front_margin_m <= z <= D + margin_m: it is near the surface the view saw (just in
    front of it, on it or just behind it). front_margin_m None drops the lower bound: every
    point of the view's observed free space counts too. c2w: [F, 4, 4]; depth_z: [F, H, W].
    """
    assert points.ndim == 2 and points.shape[1] == 3
    seen = np.zeros(len(points), bool)
    for f in range(len(c2w)):
        d = depth_z[f]
        H, W = d.shape
        w2c = np.linalg.inv(c2w[f])
        pc = points @ w2c[:3, :3].T + w2c[:3, 3]                                    # [N, 3]
        z = pc[:, 2]
        front = z > 1e-3
        u = np.full(len(points), -1, np.int64)
        v = np.full(len(points), -1, np.int64)
        u[front] = np.round(K[0, 0] * pc[front, 0] / z[front] + K[0, 2]).astype(np.int64)
        v[front] = np.round(K[1, 1] * pc[front, 1] / z[front] + K[1, 2]).astype(np.int64)
        inside = front & (u >= 0) & (u < W) & (v >= 0) & (v < H)
        idx = np.nonzero(inside & ~seen)[0]
        dz = d[v[idx], u[idx]]
        ok = (dz > 0) & (z[idx] <= dz + margin_m)
        if front_margin_m is not None:
            ok &= z[idx] >= dz - front_margin_m
        seen[idx[ok]] = True
    return seen
