"""Chunked marching cubes on an SDF, face culling, and binary PLY I/O (METHOD.md Sec. 8).

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

import os
import tempfile
from collections.abc import Callable

import mcubes
import numpy as np

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
) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes of ``sdf_fn`` over the box. Returns (vertices [V, 3] float64 world, faces [F, 3] int64).

    sdf_fn: world points [M, 3] float64 (M <= (chunk_voxels + 1)^3) -> sdf [M] (any float dtype).
    keep_fn: optional world points [K, 3] -> bool [K]; a face is kept if all (``keep_mode="all"``) or any
    (``"any"``) of its vertices pass; unreferenced vertices are then dropped (called in batches of
    ``keep_batch`` points).
    """
    assert keep_mode in ("all", "any")
    assert chunk_voxels >= 1
    bbox_min = np.asarray(bbox_min, np.float64).reshape(3)
    n_cells = grid_shape(bbox_min, bbox_max, voxel_size_m)  # [3]
    dims1 = n_cells + 1
    all_keys, all_pos, all_faces = [], [], []
    n_verts_so_far = 0
    for i0 in range(0, int(n_cells[0]), chunk_voxels):
        for j0 in range(0, int(n_cells[1]), chunk_voxels):
            for k0 in range(0, int(n_cells[2]), chunk_voxels):
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


# ----------------------------------------------------------------------------------------------
# PLY
# ----------------------------------------------------------------------------------------------
_PLY_OK = {np.dtype(t) for t in ("i1", "u1", "i2", "u2", "i4", "u4", "f4", "f8")}


def _ply_dtype(arr: np.ndarray) -> np.dtype:
    """A PLY-representable dtype for a vertex property (int64 -> int32 if it fits, bool -> uint8)."""
    dt = arr.dtype
    if dt == np.bool_:
        return np.dtype("u1")
    if dt in _PLY_OK:
        return dt
    if np.issubdtype(dt, np.integer):
        if arr.size == 0 or (arr.min() >= np.iinfo(np.int32).min and arr.max() <= np.iinfo(np.int32).max):
            return np.dtype("i4")
        raise ValueError(f"integer property out of int32 range ({dt})")
    if np.issubdtype(dt, np.floating):
        return np.dtype("f4") if dt.itemsize <= 4 else np.dtype("f8")
    raise TypeError(f"unsupported vertex property dtype {dt}")


def write_ply(
    path: str | os.PathLike,
    vertices: np.ndarray,
    faces: np.ndarray,
    vertex_props: dict[str, np.ndarray] | None = None,
    colors: np.ndarray | None = None,
) -> None:
    """Binary little-endian PLY, written atomically (temp file in the same folder, then os.replace).

    vertices [V, 3] (stored float32), faces [F, 3] (stored int32 list 'vertex_indices'), colors [V, 3]
    uint8 as red/green/blue, vertex_props: name -> [V] arrays (integers as their type, int64 -> int32).
    """
    from plyfile import PlyData, PlyElement

    vertices = np.asarray(vertices)
    faces = np.asarray(faces)
    assert vertices.ndim == 2 and vertices.shape[1] == 3, vertices.shape
    assert faces.ndim == 2 and faces.shape[1] == 3, faces.shape
    n_v = len(vertices)
    vertex_props = dict(vertex_props or {})
    fields = [("x", "f4"), ("y", "f4"), ("z", "f4")]
    if colors is not None:
        colors = np.asarray(colors)
        assert colors.shape == (n_v, 3) and colors.dtype == np.uint8, "colors must be [V, 3] uint8"
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    reserved = {"x", "y", "z", "red", "green", "blue"}
    for name, arr in vertex_props.items():
        arr = np.asarray(arr)
        assert name not in reserved, f"vertex property name {name!r} is reserved"
        assert arr.shape == (n_v,), f"property {name!r} must be [V], got {arr.shape}"
        fields.append((name, _ply_dtype(arr)))
    vert = np.empty(n_v, dtype=fields)
    vert["x"], vert["y"], vert["z"] = vertices[:, 0], vertices[:, 1], vertices[:, 2]
    if colors is not None:
        vert["red"], vert["green"], vert["blue"] = colors[:, 0], colors[:, 1], colors[:, 2]
    for name, arr in vertex_props.items():
        vert[name] = np.asarray(arr).astype(vert.dtype[name])
    face = np.empty(len(faces), dtype=[("vertex_indices", "i4", (3,))])
    if len(faces):
        assert faces.min() >= 0 and faces.max() < n_v, "face index out of range"
    face["vertex_indices"] = faces
    ply = PlyData(
        [
            PlyElement.describe(vert, "vertex"),
            PlyElement.describe(face, "face", len_types={"vertex_indices": "u1"}, val_types={"vertex_indices": "i4"}),
        ],
        text=False,
        byte_order="<",
    )
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            ply.write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_ply(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
    """(vertices [V, 3] float64, faces [F, 3] int64 (polygons fan-triangulated; [0, 3] if none),
    colors [V, 3] uint8 or None, props: every other vertex property by name)."""
    from plyfile import PlyData

    path = os.fspath(path)
    try:
        ply = PlyData.read(path, known_list_len={"face": {"vertex_indices": 3}})
    except Exception:  # other list name, non-triangles, ...: generic (slower) read
        ply = PlyData.read(path)
    v = ply["vertex"].data
    names = v.dtype.names
    vertices = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float64)
    colors = None
    if all(c in names for c in ("red", "green", "blue")):
        colors = np.stack([v["red"], v["green"], v["blue"]], axis=1).astype(np.uint8)
    props = {n: np.asarray(v[n]) for n in names if n not in ("x", "y", "z", "red", "green", "blue")}
    faces = np.zeros((0, 3), np.int64)
    if "face" in ply:
        fdata = ply["face"].data
        fname = "vertex_indices" if "vertex_indices" in fdata.dtype.names else fdata.dtype.names[0]
        col = fdata[fname]
        if col.dtype != object and col.ndim == 2:
            faces = col.astype(np.int64).reshape(-1, 3)
        else:
            tris = []
            for poly in col:
                poly = np.asarray(poly, np.int64)
                for k in range(1, len(poly) - 1):
                    tris.append((poly[0], poly[k], poly[k + 1]))
            faces = np.asarray(tris, np.int64).reshape(-1, 3)
    return vertices, faces, colors, props
