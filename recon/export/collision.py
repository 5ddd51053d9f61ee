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

Collision modes (COLLISION_MODES; `export --collision`):
- 'auto' (the default): the rule above; one mesh per part.
- 'coacd': thing instances get an approximate convex decomposition by CoACD (Wei et al., "Approximate
  convex decomposition for 3D meshes with collision-aware concavity and tree search", SIGGRAPH 2022; the
  `coacd` package): a few convex pieces whose union follows the object's concavities (a table's legs and
  top, the seat and back of a chair), which physics engines simulate faster and more robustly than a
  triangle mesh, and which are the only non-convex shapes a dynamic body can have in PhysX. Its input is a
  closed solid: the surface itself when closed, else the voxel shell of rule 2 with every cavity filled that
  is open only downwards (`floor_closed_solid`: objects are unseen underneath, where they rest; CoACD treats
  its input as a solid, and a thin hollow shell would cost it many pieces), decimated to COACD_INPUT_FACES.
  Parameters: COACD_PARAMS (concavity threshold 0.1 of the normalised size, at most 16 pieces, fixed seed
  0: the same input gives the same pieces). Time: seconds per object (2-8 s on one core for the demo room's
  objects).
  Every piece is re-hulled (outward wound) and capped to max_faces // pieces faces, so a part's pieces
  together stay within the face budget. The environment keeps rule 1 / 'decimated_open' in both modes
  (a room seen from inside is no solid: CoACD would fill it).
`collision_mesh(..., mode=None)` takes the mode of the innermost `collision_mode(mode)` context (default
'auto'), so that a writer that knows nothing of modes (gazebo.py) follows the export's `--collision`.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field

import numpy as np

MIN_FACES = 4
COLLISION_MODES = ("auto", "coacd")
# CoACD settings for room-scale objects (CoACD normalises the mesh to a unit box first, so the threshold is
# relative): concavity threshold 0.1 (its default 0.05 costs 2-4x the time: measured on the demo room's chair,
# table and box, both cover every sampled surface point and exceed the solid's volume by the same 1.6-1.9x,
# against 6.7-10.8x for the convex hull), at most 16 pieces per object, a cheaper tree search and surface
# sampling than its defaults (150 iterations, 20 nodes, resolution 2000), manifold preprocessing only when
# the input needs it, seed 0 (with one thread the same input gives the same pieces).
COACD_PARAMS = {"threshold": 0.1, "max_convex_hull": 16, "preprocess_mode": "auto", "preprocess_resolution": 50,
                "resolution": 500, "mcts_nodes": 12, "mcts_iterations": 60, "mcts_max_depth": 3, "merge": True,
                "seed": 0}
COACD_INPUT_FACES = 1000  # the closed input is decimated to this many faces first (CoACD's time grows with it)
_MODE: contextvars.ContextVar[str] = contextvars.ContextVar("collision_mode", default="auto")


@dataclass
class CollisionMesh:
    vertices: np.ndarray  # [V, 3] float64, same frame as the input (all pieces together)
    faces: np.ndarray     # [F, 3] int64
    method: str           # decimated | voxel_shell | convex_hull | decimated_open | bounding_box | coacd
    closed: bool          # watertight and consistently wound (every piece)
    parts: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # coacd: (vertices [Vk, 3], faces [Fk, 3]) per convex piece

    @property
    def pieces(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The shapes a simulator should get: the convex pieces (coacd), else the one mesh."""
        return self.parts if self.parts else [(self.vertices, self.faces)]

    @property
    def convex(self) -> bool:
        """Every piece is convex (a simulator may use it as a convex shape as it is)."""
        return self.method in ("convex_hull", "coacd", "bounding_box")


@contextlib.contextmanager
def collision_mode(mode: str):
    """Within this context, collision_mesh(..., mode=None) uses `mode` (one of COLLISION_MODES)."""
    if mode not in COLLISION_MODES:
        raise ValueError(f"collision mode must be one of {', '.join(COLLISION_MODES)}, got {mode!r}")
    token = _MODE.set(mode)
    try:
        yield
    finally:
        _MODE.reset(token)


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


def floor_closed_solid(vertices: np.ndarray, faces: np.ndarray, pitch: float) -> tuple[np.ndarray, np.ndarray]:
    """Closed surface around the voxels [pitch m] of the surface (z up) with every cavity filled that is closed
    except towards -z: a reconstructed object is open where it was never seen, mostly underneath, where it
    rests on the floor or a shelf. A one-voxel slab under the grid closes the bottom, scipy's
    binary_fill_holes fills what the slab and the surface enclose, the slab is dropped, marching cubes
    (PyMCubes) gives the surface. Space open to a side stays free (under a table, between chair legs)."""
    import mcubes
    import trimesh
    from scipy.ndimage import binary_fill_holes
    m = trimesh.Trimesh(vertices=vertices, faces=faces, process=False)
    grid = m.voxelized(pitch)
    occ = np.asarray(grid.matrix, bool)                            # [a, b, c] bool, index axis 2 = z
    slab = np.concatenate([np.ones(occ.shape[:2] + (1,), bool), occ], axis=2)
    filled = binary_fill_holes(slab)[:, :, 1:]
    occ = np.pad(filled, 1)                                        # one empty layer around for marching cubes
    v, f = mcubes.marching_cubes(occ.astype(np.float64), 0.5)
    idx = v - 1.0  # index coordinates of the unpadded grid
    v = idx @ grid.transform[:3, :3].T + grid.transform[:3, 3]
    return v, np.asarray(f, np.int64)


def solid_for_decomposition(vertices: np.ndarray, faces: np.ndarray,
                            max_faces: int = COACD_INPUT_FACES) -> tuple[np.ndarray, np.ndarray]:
    """A closed mesh around the object for CoACD: the surface when it is closed, else floor_closed_solid (the
    voxel shell of rule 2 with the cavities open only downwards filled: a thin hollow shell would cost CoACD
    many pieces); decimated to at most max_faces faces where it stays closed (CoACD's time grows with the
    input size)."""
    v, f = vertices, faces
    if not is_closed(v, f):
        sv, sf = floor_closed_solid(v, f, shell_pitch(v))
        if len(sf):
            v, f = sv, sf
    if len(f) > max_faces:
        dv, df = decimate(v, f, max_faces)
        if is_closed(dv, df):
            v, f = dv, df
    return v, f


def coacd_pieces(vertices: np.ndarray, faces: np.ndarray, max_faces: int,
                 params: dict | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """CoACD's convex pieces of the closed mesh (vertices [V, 3], faces [F, 3]), each re-hulled outward and
    capped so that all pieces together have at most max_faces faces. params: COACD_PARAMS overrides."""
    import coacd
    import trimesh
    p = {**COACD_PARAMS, **(params or {})}
    # each piece needs at least a tetrahedron's 4 faces; 8 leaves room for a box
    p["max_convex_hull"] = int(max(1, min(p["max_convex_hull"], max_faces // 8)))
    coacd.set_log_level("error")
    raw = coacd.run_coacd(coacd.Mesh(np.asarray(vertices, np.float64), np.asarray(faces, np.int32)), **p)
    budget = max(MIN_FACES, max_faces // max(1, len(raw)))
    out = []
    for pv, _ in raw:
        if len(pv) < 4:
            continue
        try:
            hull = trimesh.Trimesh(vertices=pv, process=False).convex_hull
        except Exception:  # flat piece (Qhull): skip it, the others still cover the object
            continue
        hv, hf = np.asarray(hull.vertices, np.float64), np.asarray(hull.faces, np.int64)
        if len(hf) > budget:
            hv, hf = convex_hull(hv, budget)
        out.append((hv, hf))
    return out


def collision_mesh(vertices: np.ndarray, faces: np.ndarray, max_faces: int, thing: bool,
                   mode: str | None = None) -> CollisionMesh:
    """The rule of the module docstring. vertices [V, 3] metres, faces [F, 3]; mode one of COLLISION_MODES
    (None: the innermost collision_mode context's, else 'auto')."""
    v, f = np.asarray(vertices, np.float64), np.asarray(faces, np.int64)
    assert v.ndim == 2 and v.shape[1] == 3 and f.ndim == 2 and f.shape[1] == 3 and len(f) > 0
    if max_faces < MIN_FACES:
        raise ValueError(f"collision face budget must be at least {MIN_FACES}, got {max_faces}")
    mode = _MODE.get() if mode is None else mode
    if mode not in COLLISION_MODES:
        raise ValueError(f"collision mode must be one of {', '.join(COLLISION_MODES)}, got {mode!r}")
    if mode == "coacd" and thing and len(v) >= 4:
        sv, sf = solid_for_decomposition(v, f)
        pieces = coacd_pieces(sv, sf, max_faces)
        if pieces:
            offsets = np.cumsum([0] + [len(pv) for pv, _ in pieces[:-1]])
            cv = np.concatenate([pv for pv, _ in pieces])
            cf = np.concatenate([pf + o for (_, pf), o in zip(pieces, offsets)])
            return CollisionMesh(cv, cf, "coacd", all(is_closed(pv, pf) for pv, pf in pieces), pieces)
        # nothing usable came back (degenerate input): fall through to the 'auto' rule
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
