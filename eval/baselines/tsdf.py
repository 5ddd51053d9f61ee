"""TSDF-fusion peer baseline: Open3D tensor VoxelBlockGrid (CPU) + marching cubes.

Units: depth in metres (z-depth, 0 = invalid), poses camera-to-world in metres with
OpenCV camera axes (see docs/scene_format.md). The legacy
ScalableTSDFVolume is deliberately not used (it returned empty meshes on this
machine's CPU build).

Memory: each block holds block_resolution^3 voxels of tsdf + weight (+ rgb) float32,
i.e. 8^3 * 20 B = 10 KiB per block with colour. The hash map preallocates
block_count blocks, so by default block_count is estimated exactly from the frames
(union of the blocks every frame touches) instead of a large fixed number.
"""
from __future__ import annotations

import time

import numpy as np
from tqdm import tqdm


def _o3d():
    import open3d as o3d

    return o3d


def _depth_image(depth_m: np.ndarray):
    """float32 Open3D Image in metres (used with depth_scale 1.0); invalid (<=0, non-finite) -> 0."""
    o3d = _o3d()
    depth = np.asarray(depth_m, dtype=np.float32)
    depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)
    return o3d.t.geometry.Image(o3d.core.Tensor(np.ascontiguousarray(depth)))


def _color_image(color: np.ndarray):
    """float32 Open3D Image in [0, 1] (float depth requires float colour in Open3D's kernel)."""
    o3d = _o3d()
    color = np.asarray(color)
    assert color.ndim == 3 and color.shape[2] == 3, f"colour must be [H,W,3], got {color.shape}"
    if np.issubdtype(color.dtype, np.integer):
        color_f = color.astype(np.float32) / 255.0
    else:
        color_f = np.clip(color.astype(np.float32), 0.0, 1.0)  # float colour assumed in [0, 1]
    return o3d.t.geometry.Image(o3d.core.Tensor(np.ascontiguousarray(color_f)))


def _make_grid(voxel_size_m: float, block_resolution: int, block_count: int, with_color: bool):
    o3d = _o3d()
    o3c = o3d.core
    if with_color:
        names, dtypes, channels = ("tsdf", "weight", "color"), (o3c.float32,) * 3, (1, 1, 3)
    else:
        names, dtypes, channels = ("tsdf", "weight"), (o3c.float32,) * 2, (1, 1)
    return o3d.t.geometry.VoxelBlockGrid(names, dtypes, channels, float(voxel_size_m), int(block_resolution),
                                         int(block_count), o3c.Device("CPU:0"))


def _check_inputs(depths_m, colors, K, c2ws) -> tuple[np.ndarray, list[np.ndarray]]:
    K = np.asarray(K, dtype=np.float64)
    assert K.shape == (3, 3), f"K must be [3,3], got {K.shape}"
    assert len(depths_m) == len(c2ws), f"{len(depths_m)} depth maps but {len(c2ws)} poses"
    assert len(depths_m) > 0, "no frames"
    c2ws = [np.asarray(c, dtype=np.float64) for c in c2ws]
    for i, (d, c) in enumerate(zip(depths_m, c2ws)):
        assert np.asarray(d).ndim == 2, f"depth {i} must be [H,W], got {np.asarray(d).shape}"
        assert np.issubdtype(np.asarray(d).dtype, np.floating), \
            f"depth {i} must be float metres, got {np.asarray(d).dtype} (divide uint16 mm by 1000)"
        assert c.shape == (4, 4) and np.all(np.isfinite(c)), f"pose {i} must be a finite [4,4] c2w"
    if colors is not None:
        assert len(colors) == len(depths_m), f"{len(colors)} colour images for {len(depths_m)} depth maps"
        for i, (col, d) in enumerate(zip(colors, depths_m)):
            assert np.asarray(col).shape[:2] == np.asarray(d).shape, \
                f"colour {i} {np.asarray(col).shape[:2]} and depth {np.asarray(d).shape} sizes differ"
    return K, c2ws


def _open3d_intrinsics(K: np.ndarray) -> np.ndarray:
    """K [3,3] for Open3D's TSDF kernels, which read depth at pixel (int(u), int(v)) (truncation).

    With the OpenCV convention (integer pixel = pixel centre) the right pixel is round(u) =
    int(u + 0.5), so the principal point is shifted by +0.5 px. Measured on the analytic test
    room (2 cm voxels, exact depth): mean vertex error 1.5 mm with the shift, 6.4 mm without.
    """
    K_o3d = np.array(K, dtype=np.float64)
    K_o3d[0, 2] += 0.5
    K_o3d[1, 2] += 0.5
    return K_o3d


def _touched_blocks(grid, depth_m: np.ndarray, depth_img, K_t, w2c, depth_max_m: float, trunc_mult: float):
    """Block coordinates [M, 3] (Open3D int tensor) one frame touches, or None if it has no valid depth.

    depth_img is `_depth_image(depth_m)`, w2c the Open3D [4, 4] world-to-camera extrinsic.
    """
    depth = np.asarray(depth_m)
    if not np.any(np.isfinite(depth) & (depth > 0) & (depth <= depth_max_m)):
        return None
    try:
        coords = grid.compute_unique_block_coordinates(depth_img, K_t, w2c, 1.0, float(depth_max_m), trunc_mult)
    except RuntimeError as err:  # Open3D aborts when no valid pixel lands in a block
        if "No block is touched" in str(err):
            return None
        raise
    return coords if coords.shape[0] > 0 else None


def estimate_block_count(depths_m: list[np.ndarray], K: np.ndarray, c2ws: list[np.ndarray], voxel_size_m: float,
                         trunc_m: float | None = None, depth_max_m: float = 10.0, block_resolution: int = 8) -> int:
    """Number of distinct voxel blocks the frames touch (what `tsdf_fusion` needs allocated).

    Uses Open3D's compute_unique_block_coordinates per frame (same rule as integration)
    on a tiny scratch grid, and takes the union over frames.
    """
    o3d = _o3d()
    o3c = o3d.core
    K, c2ws = _check_inputs(depths_m, None, K, c2ws)
    trunc_mult = _trunc_multiplier(voxel_size_m, trunc_m)
    scratch = _make_grid(voxel_size_m, block_resolution, 1, with_color=False)
    K_t = o3c.Tensor(_open3d_intrinsics(K), o3c.float64)
    union = np.zeros((0, 3), dtype=np.int64)
    pending: list[np.ndarray] = []
    n_pending = 0
    for depth_m, c2w in zip(depths_m, c2ws):
        w2c = o3c.Tensor(np.linalg.inv(c2w), o3c.float64)  # extrinsic = world-to-camera
        coords = _touched_blocks(scratch, depth_m, _depth_image(depth_m), K_t, w2c, depth_max_m, trunc_mult)
        if coords is None:
            continue
        coords = coords.numpy().astype(np.int64)  # [M, 3]
        pending.append(coords)
        n_pending += coords.shape[0]
        if n_pending > 2_000_000:
            union = np.unique(np.concatenate([union] + pending, axis=0), axis=0)
            pending, n_pending = [], 0
    union = np.unique(np.concatenate([union] + pending, axis=0), axis=0)
    return int(union.shape[0])


def _trunc_multiplier(voxel_size_m: float, trunc_m: float | None) -> float:
    assert voxel_size_m > 0
    if trunc_m is None:
        return 4.0
    assert trunc_m > 0
    return float(trunc_m) / float(voxel_size_m)


def canonical_mesh_order(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same mesh in an order that depends only on its geometry: vertices sorted by (x, y, z), each face
    rotated to start at its smallest index (winding kept), faces sorted. Open3D's extraction walks its hash
    map in an order that changes with the thread count, and the evaluation samples points face by face, so
    without this the baseline's scores moved in the second decimal between a 1-thread and a 2-thread run.

    vertices [V, 3], faces [F, 3] -> (vertices [V, 3], faces [F, 3], order [V]: new vertex i is old order[i])."""
    assert vertices.ndim == 2 and vertices.shape[1] == 3, f"vertices must be [V, 3], got {vertices.shape}"
    assert faces.ndim == 2 and faces.shape[1] == 3, f"faces must be [F, 3], got {faces.shape}"
    order = np.lexsort((vertices[:, 2], vertices[:, 1], vertices[:, 0]))     # [V] x first, then y, then z
    new_index = np.empty_like(order)
    new_index[order] = np.arange(len(order))
    f = new_index[faces]                                                     # [F, 3]
    roll = np.argmin(f, axis=1)                                              # [F] where the smallest index sits
    f = np.take_along_axis(f, (roll[:, None] + np.arange(3)[None, :]) % 3, axis=1)
    f = f[np.lexsort((f[:, 2], f[:, 1], f[:, 0]))]
    return vertices[order], f, order


def tsdf_fusion(depths_m: list[np.ndarray], colors: list[np.ndarray] | None, K: np.ndarray, c2ws: list[np.ndarray],
                voxel_size_m: float, trunc_m: float | None = None, depth_max_m: float = 10.0,
                block_resolution: int = 8, block_count: int | None = None, min_weight: float = 1.0,
                progress: bool = False) -> dict:
    """Fuse depth (and optionally colour) frames into a TSDF and extract a triangle mesh.

    depths_m    list of [H, W] float z-depth in metres (0 / negative / non-finite = invalid)
    colors      list of [H, W, 3] uint8 RGB (or float in [0, 1]) of the same size, or None
    K           [3, 3] pinhole intrinsics shared by all frames
    c2ws        list of [4, 4] camera-to-world (OpenCV axes); integration uses inverse(c2w)
    trunc_m     truncation distance (m); default 4 * voxel_size_m
    depth_max_m depth beyond this is ignored
    block_count hash-map capacity in blocks; None = estimate_block_count(...) * 1.1 + 64.
                A given value is used as the initial capacity; after each frame the code
                checks every needed block is present and raises otherwise.
    min_weight  keep surface where voxels were observed by >= min_weight frames
                (Open3D's threshold is strict, so min_weight - 0.5 is passed).

    Returns {"vertices": [V, 3] float64 (m), "faces": [F, 3] int64, "colors": [V, 3] uint8 or None,
             "seconds": wall time of estimation + fusion + extraction, "n_blocks": active blocks}.
    """
    o3d = _o3d()
    o3c = o3d.core
    t0 = time.perf_counter()
    K, c2ws = _check_inputs(depths_m, colors, K, c2ws)
    trunc_mult = _trunc_multiplier(voxel_size_m, trunc_m)
    if block_count is None:
        n_needed = estimate_block_count(depths_m, K, c2ws, voxel_size_m, trunc_m, depth_max_m, block_resolution)
        block_count = int(np.ceil(1.1 * n_needed)) + 64
    assert block_count > 0
    with_color = colors is not None
    grid = _make_grid(voxel_size_m, block_resolution, block_count, with_color)
    K_t = o3c.Tensor(_open3d_intrinsics(K), o3c.float64)

    frames = enumerate(zip(depths_m, c2ws))
    for i, (depth_m, c2w) in tqdm(frames, total=len(depths_m), desc="tsdf", disable=not progress, dynamic_ncols=True,
                                  mininterval=1.0):
        depth_img = _depth_image(depth_m)
        w2c = o3c.Tensor(np.linalg.inv(c2w), o3c.float64)  # extrinsic = world-to-camera
        coords = _touched_blocks(grid, depth_m, depth_img, K_t, w2c, depth_max_m, trunc_mult)
        if coords is None:
            continue
        if with_color:
            grid.integrate(coords, depth_img, _color_image(colors[i]), K_t, w2c, 1.0, float(depth_max_m), trunc_mult)
        else:
            grid.integrate(coords, depth_img, K_t, w2c, 1.0, float(depth_max_m), trunc_mult)
        _, found = grid.hashmap().find(coords)
        if not bool(found.numpy().all()):
            raise RuntimeError(f"TSDF hash map lost blocks at frame {i} (capacity {grid.hashmap().capacity()}); "
                               f"raise block_count or leave it None to estimate it")

    n_blocks = int(grid.hashmap().size())
    vertices = np.zeros((0, 3), dtype=np.float64)
    faces = np.zeros((0, 3), dtype=np.int64)
    vertex_colors = np.zeros((0, 3), dtype=np.uint8) if with_color else None
    mesh = None
    if n_blocks > 0:
        try:
            mesh = grid.extract_triangle_mesh(float(min_weight) - 0.5)
        except RuntimeError as err:  # Open3D raises on an empty extraction (no surface above min_weight)
            if "shape {0}" not in str(err):
                raise
    if mesh is not None and mesh.vertex.positions.shape[0] > 0:
        vertices = mesh.vertex.positions.numpy().astype(np.float64)  # [V, 3]
        faces = mesh.triangle.indices.numpy().astype(np.int64)  # [F, 3]
        if with_color and "colors" in mesh.vertex:
            col = mesh.vertex.colors.numpy()  # [V, 3] float in [0, 1]
            vertex_colors = np.clip(np.round(col * 255.0), 0, 255).astype(np.uint8)
    assert vertices.ndim == 2 and vertices.shape[1] == 3 and faces.ndim == 2 and faces.shape[1] == 3
    vertices, faces, order = canonical_mesh_order(vertices, faces)
    if vertex_colors is not None and len(vertex_colors):
        vertex_colors = vertex_colors[order]
    return {"vertices": vertices, "faces": faces, "colors": vertex_colors,
            "seconds": time.perf_counter() - t0, "n_blocks": n_blocks}
