"""Mesh vertex colours from the training images.

Each vertex is projected into the training frames. A frame sees the vertex where the vertex lies in
front of the camera, inside the image, its normal faces the camera (cos >= min_cos) and the observed
depth at the projected pixel agrees with the vertex's camera z within `depth_tol_m` (the depth test
that rejects frames where something occludes the vertex). The colour a frame gives is bilinear over
the four pixels around the projection, using only the pixels whose own depth passes the test (so a
vertex on an object's rim does not take the colour of the background behind it). The vertex colour
is the weighted mean of the frames that see it, weight = cos(normal, view) / z^2 (frontal and near
views count more: it is proportional to the number of pixels a unit of surface covers) times the
share of bilinear weight that passed the depth test. Vertices no frame sees keep `fallback_rgb`.

Colours are averaged in the images' own (sRGB) values.
"""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from recon.data.scene import Scene

DEFAULT_MIN_COS = 0.1        # normals more than ~84 degrees away from the view direction are not trusted
DEFAULT_NEAR_M = 0.05        # vertices closer to the camera than this are ignored
FALLBACK_GREY = 128


def view_samples(verts: np.ndarray, normals: np.ndarray | None, K: np.ndarray, c2w: np.ndarray,
                 colour: np.ndarray, depth_z_m: np.ndarray, depth_tol_m: float,
                 min_cos: float = DEFAULT_MIN_COS, near_m: float = DEFAULT_NEAR_M
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What one frame says about the vertices it sees.

    verts [V, 3] world m; normals [V, 3] unit (pointing out of the surface, towards free space) or None
    (no facing test, cos taken as 1); K [3, 3] pixel centres at integer coordinates; c2w [4, 4] OpenCV;
    colour [H, W, 3] uint8; depth_z_m [H, W] z-depth in metres (0 = invalid).
    -> (idx [M] int64 indices of the vertices this frame sees, rgb [M, 3] float32 0..255,
        weight [M] float32 > 0)."""
    assert verts.ndim == 2 and verts.shape[1] == 3, verts.shape
    assert normals is None or normals.shape == verts.shape, (None if normals is None else normals.shape)
    H, W = depth_z_m.shape
    assert colour.shape == (H, W, 3), (colour.shape, depth_z_m.shape)
    w2c = np.linalg.inv(np.asarray(c2w, np.float64))
    R, t = w2c[:3, :3].astype(np.float32), w2c[:3, 3].astype(np.float32)
    pc = verts.astype(np.float32, copy=False) @ R.T + t                                 # [V, 3] camera frame
    z = pc[:, 2]
    idx = np.nonzero(z > near_m)[0]
    pc, z = pc[idx], z[idx]
    u = pc[:, 0] * (K[0, 0] / z) + K[0, 2]                                               # [M] pixel x
    v = pc[:, 1] * (K[1, 1] / z) + K[1, 2]                                               # [M] pixel y
    keep = (u >= -0.5) & (u <= W - 0.5) & (v >= -0.5) & (v <= H - 0.5)
    idx, u, v, z = idx[keep], u[keep], v[keep], z[keep]
    if normals is not None and len(idx):
        to_cam = c2w[:3, 3].astype(np.float32)[None] - verts[idx].astype(np.float32)    # [M, 3]
        cos = np.einsum("ij,ij->i", normals[idx].astype(np.float32), to_cam)
        cos /= np.maximum(np.sqrt(np.einsum("ij,ij->i", to_cam, to_cam)), 1e-9)
        keep = cos >= min_cos
        idx, u, v, z, cos = idx[keep], u[keep], v[keep], z[keep], cos[keep]
    else:
        cos = np.ones(len(idx), np.float32)
    # images padded by one edge pixel on every side: the four neighbours of u in [-0.5, W - 0.5] are
    # padded columns floor(u) + 1 and floor(u) + 2, always inside [0, W + 1]
    dpad = np.pad(depth_z_m.astype(np.float32, copy=False), 1, mode="edge").reshape(-1)  # [(H+2)(W+2)]
    cpad = np.pad(colour, ((1, 1), (1, 1), (0, 0)), mode="edge").reshape(-1, 3).astype(np.float32)
    u0f, v0f = np.floor(u), np.floor(v)
    fu, fv = u - u0f, v - v0f                                                            # bilinear fractions
    base = (v0f.astype(np.int64) + 1) * (W + 2) + (u0f.astype(np.int64) + 1)            # [M] top-left, padded
    rgb_sum = np.zeros((len(idx), 3), np.float32)
    w_sum = np.zeros(len(idx), np.float32)
    for off, wb in ((0, (1 - fu) * (1 - fv)), (1, fu * (1 - fv)), (W + 2, (1 - fu) * fv), (W + 3, fu * fv)):
        lin = base + off
        d = dpad[lin]
        wk = wb * ((d > 0) & (np.abs(d - z) <= depth_tol_m))
        rgb_sum += wk[:, None] * cpad[lin]
        w_sum += wk
    seen = w_sum > 1e-6
    rgb = rgb_sum[seen] / w_sum[seen, None]
    weight = (cos[seen] / np.maximum(z[seen], near_m) ** 2 * w_sum[seen]).astype(np.float32)
    return idx[seen], rgb, weight


def colour_vertices_from_images(verts: np.ndarray, normals: np.ndarray | None, scene: Scene,
                                frame_indices: list[int] | np.ndarray, depth_tol_m: float,
                                fallback_rgb: np.ndarray | None = None, min_cos: float = DEFAULT_MIN_COS,
                                chunk: int = 1 << 15, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Vertex colours [V, 3] uint8 and seen [V] bool from the scene's frames `frame_indices` (module
    docstring). Unseen vertices take fallback_rgb [V, 3] uint8 (mid-grey when None)."""
    verts = np.asarray(verts)
    if verts.ndim != 2 or verts.shape[1] != 3:
        raise ValueError(f"colour_vertices_from_images: verts has shape {verts.shape}, expected [V, 3]")
    V = len(verts)
    if normals is not None and np.asarray(normals).shape != (V, 3):
        raise ValueError(f"colour_vertices_from_images: normals has shape {np.asarray(normals).shape}, "
                         f"expected ({V}, 3)")
    if fallback_rgb is not None and np.asarray(fallback_rgb).shape != (V, 3):
        raise ValueError(f"colour_vertices_from_images: fallback_rgb has shape {np.asarray(fallback_rgb).shape}, "
                         f"expected ({V}, 3)")
    if not depth_tol_m > 0:
        raise ValueError(f"colour_vertices_from_images: depth_tol_m must be > 0, got {depth_tol_m}")
    frames = [int(i) for i in frame_indices]
    bad = [i for i in frames if not 0 <= i < len(scene)]
    if bad:
        raise ValueError(f"colour_vertices_from_images: frame indices {bad[:5]} are outside scene "
                         f"{scene.root} ({len(scene)} frames)")
    rgb_acc = np.zeros((V, 3), np.float64)
    w_acc = np.zeros(V, np.float64)
    for i in tqdm(frames, desc="mesh colours", unit="frame", disable=not progress or not frames):
        colour = scene.load_color(i)
        depth = scene.load_depth_m(i)
        for s in range(0, V, chunk):
            idx, rgb, w = view_samples(verts[s:s + chunk], None if normals is None else normals[s:s + chunk],
                                       scene.K, scene.c2w[i], colour, depth, depth_tol_m, min_cos)
            rgb_acc[s + idx] += w[:, None] * rgb
            w_acc[s + idx] += w
    seen = w_acc > 0
    out = (np.full((V, 3), FALLBACK_GREY, np.uint8) if fallback_rgb is None
           else np.asarray(fallback_rgb, np.uint8).copy())
    out[seen] = np.clip(np.round(rgb_acc[seen] / w_acc[seen, None]), 0, 255).astype(np.uint8)
    return out, seen
