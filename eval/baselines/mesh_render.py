"""Colour and depth images of a vertex-coloured triangle mesh from any pinhole pose: how the TSDF-fusion
baseline's mesh is rendered for the novel-view comparison of eval's `rendering` block.

One ray per pixel (pixel centres at integer coordinates, eval/mesh_utils.pixel_rays) is cast with
Open3D's RaycastingScene (Embree); the colour of a hit is the barycentric interpolation of its triangle's
three vertex colours (Gouraud shading, what a mesh viewer shows for vertex colours), the depth is the hit's
z-depth. Rays that hit nothing get the background colour (black, as the Gaussians' renders) and depth 0.
"""
from __future__ import annotations

import numpy as np

from eval.mesh_utils import pixel_rays

INVALID_ID = np.uint32(0xFFFFFFFF)   # Open3D's primitive id of a ray that hits nothing


class MeshColourRenderer:
    """vertices [V, 3] metres, faces [F, 3], colors [V, 3] uint8 (or float in [0, 1])."""

    has_gaussians = False

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray):
        import open3d as o3d

        vertices, faces, colors = np.asarray(vertices), np.asarray(faces), np.asarray(colors)
        assert vertices.ndim == 2 and vertices.shape[1] == 3, vertices.shape
        assert faces.ndim == 2 and faces.shape[1] == 3, faces.shape
        assert colors.shape == vertices.shape, (colors.shape, vertices.shape)
        self.faces = faces.astype(np.int64)
        self.colors = (colors.astype(np.float64) / 255.0 if colors.dtype == np.uint8
                       else colors.astype(np.float64))                                  # [V, 3] 0..1
        self._o3d = o3d
        self.scene = o3d.t.geometry.RaycastingScene()
        if len(faces):
            self.scene.add_triangles(o3d.core.Tensor(vertices.astype(np.float32)),
                                     o3d.core.Tensor(faces.astype(np.uint32)))

    def render(self, K: np.ndarray, c2w: np.ndarray, width: int, height: int) -> dict[str, np.ndarray]:
        """rgb float32 [H, W, 3] in [0, 1], depth_m float32 [H, W] z-depth (0 = no hit), alpha [H, W] (hit)."""
        K, c2w = np.asarray(K, np.float64), np.asarray(c2w, np.float64)
        assert K.shape == (3, 3) and c2w.shape == (4, 4), (K.shape, c2w.shape)
        origins, d_world, z_comp = pixel_rays(K, c2w, width, height)                     # [P, 3], [P, 3] unit, [P]
        P = len(d_world)
        if len(self.faces) == 0:
            return {"rgb": np.zeros((height, width, 3), np.float32), "depth_m": np.zeros((height, width), np.float32),
                    "alpha": np.zeros((height, width), np.float32)}
        rays = np.concatenate([origins, d_world], 1).astype(np.float32)
        out = self.scene.cast_rays(self._o3d.core.Tensor(rays))
        t = out["t_hit"].numpy()                                                        # [P] metres along the ray
        prim = out["primitive_ids"].numpy()
        uv = out["primitive_uvs"].numpy().astype(np.float64)                            # [P, 2] weights of v1, v2
        hit = np.isfinite(t) & (prim != INVALID_ID)
        tri = self.faces[np.where(hit, prim, 0).astype(np.int64)]                       # [P, 3]
        w = np.stack([1.0 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], 1)               # [P, 3] barycentric
        rgb = (self.colors[tri] * w[:, :, None]).sum(1)                                 # [P, 3]
        rgb = np.where(hit[:, None], rgb, 0.0)
        depth = np.where(hit, t * z_comp, 0.0)                                          # z-depth
        assert rgb.shape == (P, 3)
        return {"rgb": rgb.reshape(height, width, 3).clip(0, 1).astype(np.float32),
                "depth_m": depth.reshape(height, width).astype(np.float32),
                "alpha": hit.reshape(height, width).astype(np.float32)}
