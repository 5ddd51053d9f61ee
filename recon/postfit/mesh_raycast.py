"""Panoptic labels at any camera pose by ray casting the run's labelled mesh (the fast label path of
`run.py render --labels mesh`), with Open3D's RaycastingScene (Embree).

RUN/mesh.ply carries per-vertex `semantic` (class id) and `instance` (scene-consistent id, 0 = none)
properties (recon/postfit/labelled_mesh.py). A pixel's ray hits a triangle at barycentric weights
(w0, w1, w2) = (1 - u - v, u, v) of its vertices (Open3D's primitive_uvs are (u, v), the weights of
vertices 1 and 2). The pixel takes the labels of the hit triangle's vertex with the largest weight, the
vertex that dominates the hit point. This rule (rather than a majority of the three vertices) splits a
triangle whose vertices disagree along the lines where two weights are equal, so a label boundary runs
half-way between differently labelled vertices, as it does on the mesh's vertex colours and in the fields;
a majority vote would move whole triangles and has no answer when all three labels differ. Ties go to the
lower vertex slot (argmax), so the result is deterministic. Pixels whose ray hits nothing: semantic 0,
instance 0, depth 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recon.model.sampling import camera_dirs

INVALID_ID = np.uint32(0xFFFFFFFF)   # Open3D's primitive id of a ray that hits nothing


@dataclass
class MeshLabels:
    """Labels of one view: semantic [H, W] class id, instance [H, W] id (0 = none), depth_m [H, W] z-depth of
    the hit (0 = no hit), hit [H, W] bool."""
    semantic: np.ndarray
    instance: np.ndarray
    depth_m: np.ndarray
    hit: np.ndarray


class LabelledMeshCaster:
    """Ray caster over a triangle mesh with per-vertex labels: vertices [V, 3], faces [F, 3], semantic [V],
    instance [V] (non-negative integers)."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, semantic: np.ndarray, instance: np.ndarray):
        import open3d as o3d

        vertices, faces = np.asarray(vertices), np.asarray(faces)
        assert vertices.ndim == 2 and vertices.shape[1] == 3, vertices.shape
        assert faces.ndim == 2 and faces.shape[1] == 3, faces.shape
        assert semantic.shape == (len(vertices),) and instance.shape == (len(vertices),), \
            (semantic.shape, instance.shape, len(vertices))
        if len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
            raise ValueError(f"face indices outside [0, {len(vertices)})")
        self.faces = faces.astype(np.int64)
        self.semantic = np.asarray(semantic, np.int64)
        self.instance = np.asarray(instance, np.int64)
        self._o3d = o3d
        self.scene = o3d.t.geometry.RaycastingScene()
        if len(faces):
            self.scene.add_triangles(o3d.core.Tensor(vertices.astype(np.float32)),
                                     o3d.core.Tensor(faces.astype(np.uint32)))

    @property
    def n_faces(self) -> int:
        return len(self.faces)

    def cast(self, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Rays origins, dirs [R, 3] (any length) -> (t [R] hit distance in units of |dir|, 0 = none,
        hit [R] bool, semantic [R], instance [R]) by the dominant-vertex rule of the module docstring."""
        assert origins.shape == dirs.shape and origins.ndim == 2 and origins.shape[1] == 3
        R = len(origins)
        if self.n_faces == 0:
            z = np.zeros(R, np.int64)
            return np.zeros(R, np.float32), np.zeros(R, bool), z, z.copy()
        rays = np.concatenate([origins, dirs], 1).astype(np.float32)                  # [R, 6]
        out = self.scene.cast_rays(self._o3d.core.Tensor(rays))
        t = out["t_hit"].numpy()                                                        # [R]
        prim = out["primitive_ids"].numpy()                                             # [R] uint32
        uv = out["primitive_uvs"].numpy().astype(np.float64)                            # [R, 2]
        hit = np.isfinite(t) & (prim != INVALID_ID)
        tri = self.faces[np.where(hit, prim, 0).astype(np.int64)]                       # [R, 3]
        w = np.stack([1.0 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], 1)               # [R, 3] barycentric
        vert = tri[np.arange(R), np.argmax(w, 1)]                                       # [R] dominant vertex
        sem = np.where(hit, self.semantic[vert], 0)
        inst = np.where(hit, self.instance[vert], 0)
        return np.where(hit, t, 0.0).astype(np.float32), hit, sem, inst

    def render(self, K: np.ndarray, c2w: np.ndarray, width: int, height: int) -> MeshLabels:
        """One ray per pixel of a pinhole camera K [3, 3] (pixel centres at integer coordinates) at c2w [4, 4]."""
        assert K.shape == (3, 3) and c2w.shape == (4, 4), (K.shape, c2w.shape)
        d_cam = camera_dirs(K, width, height)                                            # [P, 3], z = 1
        d_world = d_cam @ np.asarray(c2w, np.float64)[:3, :3].T
        origins = np.broadcast_to(np.asarray(c2w, np.float64)[:3, 3], d_world.shape)
        t, hit, sem, inst = self.cast(origins, d_world)                                  # t in |d| units = z-depth
        shape = (height, width)
        return MeshLabels(sem.reshape(shape), inst.reshape(shape), t.reshape(shape), hit.reshape(shape))


def load_mesh_caster(mesh_path: Path) -> LabelledMeshCaster:
    """The caster of a run's labelled mesh (RUN/mesh.ply with `semantic` and `instance` vertex properties).
    FileNotFoundError / ValueError naming the file when it is missing or lacks the labels."""
    from recon.data.ply import read_ply

    mesh_path = Path(mesh_path)
    if not mesh_path.is_file():
        raise FileNotFoundError(f"{mesh_path} does not exist")
    verts, faces, _, props = read_ply(mesh_path)
    missing = [k for k in ("semantic", "instance") if k not in props]
    if missing:
        raise ValueError(f"{mesh_path} has no vertex propert{'y' if len(missing) == 1 else 'ies'} "
                         f"{', '.join(missing)}: not a labelled mesh")
    sem = np.asarray(props["semantic"]).astype(np.int64)
    inst = np.asarray(props["instance"]).astype(np.int64)
    return LabelledMeshCaster(verts, faces, np.maximum(sem, 0), np.maximum(inst, 0))
