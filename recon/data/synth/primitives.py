"""Analytic primitives (yawed boxes, vertical frusta) and their triangle meshes.

All geometry is in metres, world frame z up. A primitive mesh never shares
vertices with another primitive; face winding is counter-clockwise seen from
outside, so triangle normals point outwards.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BOX_FACES = ("+x", "-x", "+y", "-y", "+z", "-z")

# Mesh resolution. The scene mesh is also the ground truth whose *vertices* carry the labels that
# semantic_3d / instance_3d are scored at (METHOD.md section 9), so vertices must sample surfaces
# about uniformly, as in a scanned mesh: box faces are grids of cells <= CELL_M, frustum sides have
# rings every <= CELL_M and about CELL_M between segments (at least MIN_SEG of them, for round
# silhouettes), and frustum caps are concentric rings <= CELL_M apart. (A coarser 0.15 m grid with
# 64 segments on every frustum put 11 % of a room's vertices on a 0.7 m^2 lamp.)
CELL_M = 0.05
MIN_SEG, MAX_SEG = 12, 96


@dataclass(frozen=True)
class Box:
    """Box with centre `center` [3], half sizes `half` [3], rotated by `yaw` (rad) about z."""

    center: tuple[float, float, float]
    half: tuple[float, float, float]
    yaw: float = 0.0
    skip: tuple[str, ...] = ()      # faces never visible (e.g. "-z" resting on the floor)
    material: int = 0               # index into the object's material list


@dataclass(frozen=True)
class Frustum:
    """Vertical truncated cone (cylinder when r0 == r1) around axis (x, y), z in [z0, z1]."""

    x: float
    y: float
    z0: float
    z1: float
    r0: float                       # radius at z0
    r1: float                       # radius at z1
    skip: tuple[str, ...] = ()      # "-z" / "+z" caps to drop
    material: int = 0


Prim = Box | Frustum


@dataclass
class PrimMesh:
    vertices: np.ndarray            # [V, 3] float64
    faces: np.ndarray               # [F, 3] int64, local vertex indices
    normals: np.ndarray             # [V, 3] float64 unit shading normals
    extra: dict = field(default_factory=dict)


def _rot_z(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _grid_face(origin: np.ndarray, eb: np.ndarray, ec: np.ndarray, nb: int, nc: int):
    """Planar grid of (nb x nc) cells spanning origin + [0,1]*eb + [0,1]*ec, CCW around eb x ec."""
    ub = np.linspace(0.0, 1.0, nb + 1)
    uc = np.linspace(0.0, 1.0, nc + 1)
    gb, gc = np.meshgrid(ub, uc, indexing="ij")                      # [nb+1, nc+1]
    verts = origin[None] + gb.reshape(-1, 1) * eb[None] + gc.reshape(-1, 1) * ec[None]
    idx = np.arange((nb + 1) * (nc + 1)).reshape(nb + 1, nc + 1)
    v00, v10 = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel()
    v11, v01 = idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    faces = np.concatenate([np.stack([v00, v10, v11], 1), np.stack([v00, v11, v01], 1)], 0)
    return verts, faces


def box_mesh(box: Box, cell_m: float = CELL_M) -> PrimMesh:
    """Triangle mesh of a box, each face a grid of cells no larger than `cell_m`."""
    half = np.asarray(box.half, dtype=np.float64)
    assert half.shape == (3,) and np.all(half > 0), half
    eye = np.eye(3)
    all_v, all_f, all_n = [], [], []
    n_off = 0
    for a in range(3):
        for sgn, tag in ((1.0, "+"), (-1.0, "-")):
            name = tag + "xyz"[a]
            if name in box.skip:
                continue
            b, c = (a + 1) % 3, (a + 2) % 3
            if sgn < 0:
                b, c = c, b                                           # keep eb x ec = sgn * ea
            eb, ec = 2.0 * half[b] * eye[b], 2.0 * half[c] * eye[c]
            origin = sgn * half[a] * eye[a] - half[b] * eye[b] - half[c] * eye[c]
            nb = max(1, int(np.ceil(2.0 * half[b] / cell_m - 1e-9)))
            nc = max(1, int(np.ceil(2.0 * half[c] / cell_m - 1e-9)))
            v, f = _grid_face(origin, eb, ec, nb, nc)
            all_v.append(v)
            all_f.append(f + n_off)
            all_n.append(np.broadcast_to(sgn * eye[a], v.shape))
            n_off += len(v)
    rot = _rot_z(box.yaw)
    verts = np.concatenate(all_v, 0) @ rot.T + np.asarray(box.center, dtype=np.float64)[None]
    normals = np.concatenate(all_n, 0) @ rot.T
    return PrimMesh(verts, np.concatenate(all_f, 0).astype(np.int64), normals)


def frustum_segments(fr: Frustum, cell_m: float = CELL_M) -> int:
    """Segments around a frustum: its larger circumference / cell_m, within [MIN_SEG, MAX_SEG]."""
    circ = 2.0 * np.pi * max(fr.r0, fr.r1)
    return int(min(MAX_SEG, max(MIN_SEG, np.ceil(circ / cell_m - 1e-9))))


def frustum_mesh(fr: Frustum, cell_m: float = CELL_M, n_seg: int | None = None) -> PrimMesh:
    """Triangle mesh of a vertical frustum: side rings every <= cell_m, caps of concentric rings."""
    n_seg = frustum_segments(fr, cell_m) if n_seg is None else n_seg
    assert fr.z1 > fr.z0 and fr.r0 > 0 and fr.r1 > 0 and n_seg >= 3
    height = fr.z1 - fr.z0
    n_ring = max(1, int(np.ceil(height / cell_m - 1e-9)))
    theta = 2.0 * np.pi * np.arange(n_seg) / n_seg                    # [S]
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    s = np.linspace(0.0, 1.0, n_ring + 1)                               # [R+1]
    radius = fr.r0 + (fr.r1 - fr.r0) * s
    z = fr.z0 + height * s
    side_v = np.stack([
        (radius[:, None] * cos_t[None]).ravel(),
        (radius[:, None] * sin_t[None]).ravel(),
        np.repeat(z, n_seg),
    ], 1)                                                               # [(R+1)*S, 3]
    slope = (fr.r0 - fr.r1) / height
    side_n = np.stack([np.tile(cos_t, n_ring + 1), np.tile(sin_t, n_ring + 1),
                       np.full((n_ring + 1) * n_seg, slope)], 1)
    side_n /= np.linalg.norm(side_n, axis=1, keepdims=True)
    k = np.arange(n_seg)
    k1 = (k + 1) % n_seg

    def band(lo: np.ndarray, hi: np.ndarray) -> list[np.ndarray]:
        """Two triangles per segment between vertex rings lo [S] and hi [S]: CCW seen from outside
        for the side when lo is below hi, and seen from +z for a cap when lo is outside hi."""
        a, b, c, d = lo[k], lo[k1], hi[k1], hi[k]
        return [np.stack([a, b, c], 1), np.stack([a, c, d], 1)]

    faces = []
    for j in range(n_ring):
        faces += band(j * n_seg + k, (j + 1) * n_seg + k)
    all_v, all_n, all_f = [side_v], [side_n], faces
    n_off = len(side_v)
    for cap, zc, rc, nz in (("-z", fr.z0, fr.r0, -1.0), ("+z", fr.z1, fr.r1, 1.0)):
        if cap in fr.skip:
            continue
        n_cr = max(1, int(np.ceil(rc / cell_m - 1e-9)))                # concentric rings
        rr = rc * np.arange(1, n_cr + 1) / n_cr                         # [Rc] inner to outer
        rings = np.stack([(rr[:, None] * cos_t[None]).ravel(), (rr[:, None] * sin_t[None]).ravel(),
                          np.full(n_cr * n_seg, zc)], 1)                # [Rc*S, 3]
        cv = np.concatenate([np.array([[0.0, 0.0, zc]]), rings], 0)     # centre first
        zero = np.zeros(n_seg, np.int64)
        cf = [np.stack([zero, 1 + k, 1 + k1], 1)]                       # fan, CCW seen from +z
        for j in range(n_cr - 1):
            cf += band(1 + (j + 1) * n_seg + k, 1 + j * n_seg + k)
        cf = np.concatenate(cf, 0)
        if nz < 0:
            cf = cf[:, ::-1]                                            # seen from -z
        all_v.append(cv)
        all_n.append(np.broadcast_to(np.array([0.0, 0.0, nz]), cv.shape))
        all_f.append(cf + n_off)
        n_off += len(cv)
    verts = np.concatenate(all_v, 0) + np.array([fr.x, fr.y, 0.0])[None]
    return PrimMesh(verts, np.concatenate(all_f, 0).astype(np.int64), np.concatenate(all_n, 0))


def prim_mesh(prim: Prim, cell_m: float = CELL_M) -> PrimMesh:
    if isinstance(prim, Box):
        return box_mesh(prim, cell_m)
    return frustum_mesh(prim, cell_m)


# ---------------------------------------------------------------- placement geometry
def prim_obb(prim: Prim) -> tuple[float, float, float, float, float, float, float]:
    """Conservative oriented bounding box (cx, cy, yaw, hx, hy, z0, z1) of a primitive."""
    if isinstance(prim, Box):
        cx, cy, cz = prim.center
        hx, hy, hz = prim.half
        return (cx, cy, prim.yaw, hx, hy, cz - hz, cz + hz)
    r = max(prim.r0, prim.r1)
    return (prim.x, prim.y, 0.0, r, r, prim.z0, prim.z1)


def _rect_corners(obb) -> np.ndarray:
    cx, cy, yaw, hx, hy = obb[:5]
    c, s = np.cos(yaw), np.sin(yaw)
    local = np.array([[hx, hy], [-hx, hy], [-hx, -hy], [hx, -hy]])
    return local @ np.array([[c, s], [-s, c]]) + np.array([cx, cy])


def obb_penetration(a, b) -> float:
    """Penetration depth (m) of two z-yawed boxes; <= 0 means disjoint or touching."""
    dz = min(a[6], b[6]) - max(a[5], b[5])
    if dz <= 0:
        return dz
    ca, cb = _rect_corners(a), _rect_corners(b)
    best = dz
    for yaw in (a[2], b[2]):
        for ax in (np.array([np.cos(yaw), np.sin(yaw)]), np.array([-np.sin(yaw), np.cos(yaw)])):
            pa, pb = ca @ ax, cb @ ax
            d = min(pa.max(), pb.max()) - max(pa.min(), pb.min())
            if d <= 0:
                return d
            best = min(best, d)
    return best


def rect_inside(obb, rect, margin: float = 0.0) -> bool:
    """Whether the xy footprint of `obb` lies inside rect (x0, y0, x1, y1) shrunk by margin."""
    cs = _rect_corners(obb)
    x0, y0, x1, y1 = rect
    return bool(np.all(cs[:, 0] >= x0 + margin - 1e-9) and np.all(cs[:, 0] <= x1 - margin + 1e-9)
                and np.all(cs[:, 1] >= y0 + margin - 1e-9) and np.all(cs[:, 1] <= y1 - margin + 1e-9))
