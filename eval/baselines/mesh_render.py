"""Colour and depth images of a vertex-coloured triangle mesh from any pinhole pose: how the TSDF-fusion
baseline's mesh is rendered for the novel-view comparison of eval's `rendering` block.

One ray per pixel (pixel centres at integer coordinates) is cast with Open3D's RaycastingScene (Embree;
eval/mesh_utils.py); the colour of a hit is the barycentric interpolation of its triangle's three vertex
colours (Gouraud shading, what a mesh viewer shows for vertex colours), the depth is the hit's z-depth.
Rays that hit nothing get the background colour (black, as the Gaussians' renders) and depth 0.
"""
from __future__ import annotations

import numpy as np

from eval.mesh_utils import cast_rays, make_raycasting_scene, pixel_rays


class MeshColourRenderer:
    """vertices [V, 3] metres, faces [F, 3], colors [V, 3] uint8 (or float in [0, 1])."""

    has_gaussians = False

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray):
        vertices, faces, colors = np.asarray(vertices), np.asarray(faces), np.asarray(colors)
        assert colors.shape == vertices.shape, (colors.shape, vertices.shape)
        self.faces = faces.astype(np.int64)
        self.colors = (colors.astype(np.float64) / 255.0 if colors.dtype == np.uint8
                       else colors.astype(np.float64))                                  # [V, 3] 0..1
        self.scene = make_raycasting_scene(vertices, faces) if len(faces) else None

    def render(self, K: np.ndarray, c2w: np.ndarray, width: int, height: int) -> dict[str, np.ndarray]:
        """rgb float32 [H, W, 3] in [0, 1], depth_m float32 [H, W] z-depth (0 = no hit), alpha [H, W] (hit)."""
        if self.scene is None:
            return {"rgb": np.zeros((height, width, 3), np.float32), "depth_m": np.zeros((height, width), np.float32),
                    "alpha": np.zeros((height, width), np.float32)}
        origins, dirs, z_comp = pixel_rays(K, c2w, width, height)                       # [P, 3], [P, 3] unit, [P]
        t, tri_id, uv = cast_rays(self.scene, origins, dirs, return_uvs=True)           # t in metres (unit dirs)
        hit = tri_id >= 0
        tri = self.faces[np.where(hit, tri_id, 0)]                                      # [P, 3]
        w = np.stack([1.0 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], 1)               # [P, 3] barycentric
        rgb = np.where(hit[:, None], (self.colors[tri] * w[:, :, None]).sum(1), 0.0)    # [P, 3]
        depth = np.where(hit, t * z_comp, 0.0)                                          # z-depth
        return {"rgb": rgb.reshape(height, width, 3).clip(0, 1).astype(np.float32),
                "depth_m": depth.reshape(height, width).astype(np.float32),
                "alpha": hit.reshape(height, width).astype(np.float32)}
