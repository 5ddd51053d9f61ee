"""Collision meshes: simplified to a face budget with Open3D's quadric-error decimation (Garland-Heckbert),
closed where possible.

Rule (the first that gives a closed mesh within the budget; `CollisionMesh.method` says which):
1. 'decimated': the surface itself, decimated, if it is closed (watertight and consistently wound) and
   stays closed after decimation.
2. 'voxel_shell' (thing instances only): a reconstructed object is usually an open surface (its underside
   against the floor or a wall was never seen). It is voxelised at `pitch` (trimesh), the voxels are filled
   (scipy binary_fill_holes) and marching cubes (PyMCubes) gives a closed shell around the surface, at
   most ~one pitch thicker than it; the shell is decimated and kept if it stays closed. Unlike a convex
   hull it keeps concavities (the space under a table stays free).
3. 'convex_hull' (thing instances only): the convex hull of the surface (Qhull via trimesh), always
   closed; decimated and re-hulled while above the budget.
The environment (walls, floor, ceiling: seen from inside, open by nature) gets rule 1 or, when open,
'decimated_open': the decimated surface, used as a static triangle-mesh collision. Should decimation
collapse a degenerate part to nothing, its bounding box is used ('bounding_box').
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_FACES = 4


@dataclass
class CollisionMesh:
    vertices: np.ndarray  # [V, 3] float64, same frame as the input
    faces: np.ndarray     # [F, 3] int64
    method: str           # decimated | voxel_shell | convex_hull | decimated_open | bounding_box
    closed: bool          # watertight and consistently wound


def is_closed(vertices: np.ndarray, faces: np.ndarray) -> bool:
    """Watertight (every edge shared by exactly two faces, after merging coincident vertices) and
    consistently wound, as trimesh defines it."""
    import trimesh
    if len(faces) < MIN_FACES:
        return False
    m = trimesh.Trimesh(vertices=vertices, faces=faces, process=True)
    return bool(m.is_watertight and m.is_winding_consistent)


def decimate(vertices: np.ndarray, faces: np.ndarray, max_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Open3D quadric decimation to at most max_faces faces (the target is lowered until it is met; vertex
    clustering as the last resort), then degenerate/duplicate faces and unused vertices are removed."""
    import open3d as o3d
    assert max_faces >= MIN_FACES
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(np.asarray(vertices, np.float64)),
                                     o3d.utility.Vector3iVector(np.asarray(faces, np.int32)))
    mesh.remove_duplicated_vertices()
    if len(mesh.triangles) <= max_faces:
        out = mesh
    else:
        out, target = mesh, max_faces
        for _ in range(6):
            out = mesh.simplify_quadric_decimation(int(target))
            out.remove_degenerate_triangles()
            out.remove_duplicated_triangles()
            if len(out.triangles) <= max_faces:
                break
            target = max(MIN_FACES, int(target * 0.8))
        if len(out.triangles) > max_faces:  # decimation stalled (e.g. many tiny components)
            ext = float(np.ptp(np.asarray(mesh.vertices), axis=0).max())
            voxel = ext / 64
            while len(out.triangles) > max_faces:
                out = mesh.simplify_vertex_clustering(voxel)
                out.remove_degenerate_triangles()
                voxel *= 1.5
    out.remove_unreferenced_vertices()
    return np.asarray(out.vertices, np.float64), np.asarray(out.triangles, np.int64)


def voxel_shell(vertices: np.ndarray, faces: np.ndarray, pitch: float) -> tuple[np.ndarray, np.ndarray]:
    """Closed surface around the voxels [pitch m] that the surface passes through (interior cavities filled)."""
    import mcubes
    import trimesh
    from scipy.ndimage import binary_fill_holes
    m = trimesh.Trimesh(vertices=vertices, faces=faces, process=False)
    grid = m.voxelized(pitch)
    occ = np.pad(binary_fill_holes(grid.matrix), 1)  # [a, b, c] bool, one empty layer around
    v, f = mcubes.marching_cubes(occ.astype(np.float64), 0.5)
    idx = v - 1.0  # index coordinates of the unpadded grid
    v = idx @ grid.transform[:3, :3].T + grid.transform[:3, 3]
    return v, np.asarray(f, np.int64)


def convex_hull(vertices: np.ndarray, max_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Convex hull (outward wound) with at most max_faces faces: hulls of ever coarser decimations."""
    import trimesh
    hull = trimesh.Trimesh(vertices=vertices, process=False).convex_hull
    target = max_faces
    while len(hull.faces) > max_faces:
        dv, _ = decimate(hull.vertices, hull.faces, max(MIN_FACES, target))
        hull = trimesh.Trimesh(vertices=dv, process=False).convex_hull
        target = max(MIN_FACES, int(target * 0.8))
    return np.asarray(hull.vertices, np.float64), np.asarray(hull.faces, np.int64)


def shell_pitch(vertices: np.ndarray) -> float:
    """Voxel pitch for the shell: 1/32 of the largest extent, clipped to [5 mm, 5 cm]."""
    ext = float(np.ptp(np.asarray(vertices), axis=0).max()) if len(vertices) else 0.0
    return float(np.clip(ext / 32.0, 0.005, 0.05))


def collision_mesh(vertices: np.ndarray, faces: np.ndarray, max_faces: int, thing: bool) -> CollisionMesh:
    """The rule of the module docstring. vertices [V, 3] metres, faces [F, 3]."""
    v, f = np.asarray(vertices, np.float64), np.asarray(faces, np.int64)
    assert v.ndim == 2 and v.shape[1] == 3 and f.ndim == 2 and f.shape[1] == 3 and len(f) > 0
    if max_faces < MIN_FACES:
        raise ValueError(f"collision face budget must be at least {MIN_FACES}, got {max_faces}")
    if is_closed(v, f):
        dv, df = decimate(v, f, max_faces)
        if is_closed(dv, df):
            return CollisionMesh(dv, df, "decimated", True)
    if not thing:
        dv, df = decimate(v, f, max_faces)
        return CollisionMesh(dv, df, "decimated_open", is_closed(dv, df))
    if len(v) >= 4:
        sv, sf = voxel_shell(v, f, shell_pitch(v))
        if len(sf):
            dv, df = decimate(sv, sf, max_faces)
            if is_closed(dv, df):
                return CollisionMesh(dv, df, "voxel_shell", True)
        from scipy.spatial import QhullError
        try:
            hv, hf = convex_hull(v, max_faces)
            return CollisionMesh(hv, hf, "convex_hull", is_closed(hv, hf))
        except QhullError:  # flat or degenerate input
            pass
    dv, df = decimate(v, f, max_faces)
    if len(df) == 0:  # degenerate input that decimation collapsed: its bounding box (12 faces, closed)
        import trimesh
        box = trimesh.creation.box(bounds=np.stack([v.min(0), v.max(0) + 1e-4]))
        return CollisionMesh(np.asarray(box.vertices), np.asarray(box.faces, np.int64), "bounding_box", True)
    return CollisionMesh(dv, df, "decimated_open", is_closed(dv, df))
