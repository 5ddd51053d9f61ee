"""Scene mesh assembly and exact per-pixel ray casting (Open3D RaycastingScene / Embree).

The triangle mesh *is* the analytic scene (boxes are exact, cylinders have
64 segments), so casting one ray per pixel against it gives exact depth and
exact labels from the hit triangle.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import open3d as o3d

from .classes import CLASS_ID
from .objects import SceneObject
from .primitives import CELL_M, prim_mesh
from .texture import Material, material_table, shade_colour

INVALID = np.uint32(0xFFFFFFFF)


@dataclass
class SceneMesh:
    vertices: np.ndarray        # [V, 3] float64 world metres
    faces: np.ndarray           # [F, 3] int32
    normals: np.ndarray         # [V, 3] float64 unit shading normals
    vert_semantic: np.ndarray   # [V] int32
    vert_instance: np.ndarray   # [V] int32
    vert_object: np.ndarray     # [V] int32 index into the object list
    vert_material: np.ndarray   # [V] int32 index into `materials`
    materials: list[Material]

    @property
    def tri_semantic(self) -> np.ndarray:
        return self.vert_semantic[self.faces[:, 0]]

    @property
    def tri_instance(self) -> np.ndarray:
        return self.vert_instance[self.faces[:, 0]]

    @property
    def tri_object(self) -> np.ndarray:
        return self.vert_object[self.faces[:, 0]]


def build_scene_mesh(objects: list[SceneObject], instance_ids: list[int], cell_m: float = CELL_M) -> SceneMesh:
    """Concatenate every primitive mesh; vertices are never shared between primitives."""
    assert len(objects) == len(instance_ids)
    vs, fs, ns, sem, inst, obj_idx, mat_idx = [], [], [], [], [], [], []
    materials: list[Material] = []
    n_off = 0
    for oi, (obj, iid) in enumerate(zip(objects, instance_ids)):
        mat_base = len(materials)
        materials.extend(obj.materials)
        for prim in obj.prims:
            pm = prim_mesh(prim, cell_m)
            nv = len(pm.vertices)
            vs.append(pm.vertices)
            ns.append(pm.normals)
            fs.append(pm.faces + n_off)
            sem.append(np.full(nv, CLASS_ID[obj.cls], np.int32))
            inst.append(np.full(nv, iid, np.int32))
            obj_idx.append(np.full(nv, oi, np.int32))
            mat_idx.append(np.full(nv, mat_base + prim.material, np.int32))
            n_off += nv
    return SceneMesh(np.concatenate(vs), np.concatenate(fs).astype(np.int32), np.concatenate(ns),
                     np.concatenate(sem), np.concatenate(inst), np.concatenate(obj_idx),
                     np.concatenate(mat_idx), materials)


def make_raycaster(vertices: np.ndarray, faces: np.ndarray) -> o3d.t.geometry.RaycastingScene:
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(vertices.astype(np.float32)), o3d.core.Tensor(faces.astype(np.uint32)))
    return scene


def pixel_dirs_cam(K: np.ndarray, width: int, height: int) -> np.ndarray:
    """Camera-frame ray directions [H*W, 3] ((u-cx)/fx, (v-cy)/fy, 1), row-major over (v, u)."""
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    d = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    return d.reshape(-1, 3)


@dataclass
class Hits:
    depth_m: np.ndarray     # [N, H, W] float32 z-depth, 0 = no hit
    prim: np.ndarray        # [N, H, W] int64 triangle index, -1 = no hit
    uv: np.ndarray          # [N, H, W, 2] float32 barycentrics (of vertices 1 and 2)


def cast_frames(scene: o3d.t.geometry.RaycastingScene, K: np.ndarray, c2ws: np.ndarray, width: int,
                height: int, chunk: int = 24) -> Hits:
    """One ray per pixel for every pose in c2ws [N, 4, 4]."""
    assert c2ws.ndim == 3 and c2ws.shape[1:] == (4, 4)
    d_cam = pixel_dirs_cam(K, width, height)                                 # [P, 3]
    depth, prim, uvs = [], [], []
    for s in range(0, len(c2ws), chunk):
        part = c2ws[s:s + chunk]
        d_world = np.matmul(d_cam[None], part[:, :3, :3].transpose(0, 2, 1))  # [n, P, 3]
        orig = np.broadcast_to(part[:, None, :3, 3], d_world.shape)
        rays = np.concatenate([orig, d_world], -1).astype(np.float32)        # [n, P, 6]
        out = scene.cast_rays(o3d.core.Tensor(rays))
        t = out["t_hit"].numpy()                                             # [n, P] in |d| units = z-depth
        pid = out["primitive_ids"].numpy()
        hit = np.isfinite(t) & (pid != INVALID)
        depth.append(np.where(hit, t, 0.0).astype(np.float32))
        prim.append(np.where(hit, pid.astype(np.int64), -1))
        uvs.append(out["primitive_uvs"].numpy().astype(np.float32))
    n = len(c2ws)
    return Hits(np.concatenate(depth).reshape(n, height, width),
                np.concatenate(prim).reshape(n, height, width),
                np.concatenate(uvs).reshape(n, height, width, 2))


def label_images(mesh: SceneMesh, prim: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Semantic / instance (uint16) and object index (int32, -1 none) images from triangle ids."""
    hit = prim >= 0
    safe = np.where(hit, prim, 0)
    sem = np.where(hit, mesh.tri_semantic[safe], 0).astype(np.uint16)
    inst = np.where(hit, mesh.tri_instance[safe], 0).astype(np.uint16)
    obj = np.where(hit, mesh.tri_object[safe], -1).astype(np.int32)
    return sem, inst, obj


def colour_images(mesh: SceneMesh, K: np.ndarray, c2ws: np.ndarray, hits: Hits) -> np.ndarray:
    """[N, H, W, 3] uint8 shaded colour at the exact hit points (black where nothing is hit)."""
    n, height, width = hits.depth_m.shape
    d_cam = pixel_dirs_cam(K, width, height)
    table = material_table(mesh.materials)
    out = np.zeros((n, height * width, 3), np.uint8)
    for i in range(n):
        prim = hits.prim[i].reshape(-1)
        sel = np.nonzero(prim >= 0)[0]
        if len(sel) == 0:
            continue
        f = mesh.faces[prim[sel]]                                            # [M, 3]
        uv = hits.uv[i].reshape(-1, 2)[sel].astype(np.float64)
        # hit point in the camera frame from the exact z-depth, then to world
        z = hits.depth_m[i].reshape(-1)[sel].astype(np.float64)
        p_cam = d_cam[sel] * z[:, None]
        pts = p_cam @ c2ws[i, :3, :3].T + c2ws[i, :3, 3]
        w0 = 1.0 - uv[:, 0] - uv[:, 1]
        nrm = (w0[:, None] * mesh.normals[f[:, 0]] + uv[:, 0:1] * mesh.normals[f[:, 1]]
               + uv[:, 1:2] * mesh.normals[f[:, 2]])
        nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
        out[i, sel] = shade_colour(pts, nrm, mesh.vert_material[f[:, 0]], table)
    return out.reshape(n, height, width, 3)


def vertex_colours(mesh: SceneMesh) -> np.ndarray:
    """[V, 3] uint8 GT mesh colours from the same colour function as the images."""
    return shade_colour(mesh.vertices, mesh.normals, mesh.vert_material, material_table(mesh.materials))
