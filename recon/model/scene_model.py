"""The scene model: the fields of METHOD.md section 2 in one module, queried in world metres.

World points are mapped into the normalised scene box ([0, 1]^3) here, so the trainer,
the renderer and the mesher only ever deal in world coordinates.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from fields.hashgrid import HashGridConfig, estimate_hash_grid_bytes, resolution_for_cell_size
from fields.networks import ColorHead, InstanceKeyField, SDFField, SemanticField
from recon.data.scene import Scene
from recon.core.settings import FitSettings, GridSettings


def grid_config(g: GridSettings, extent_m: float) -> HashGridConfig:
    """Hash-grid config sized to the scene: the finest level has cells of about g.finest_cell_m."""
    finest = max(g.base_resolution, resolution_for_cell_size(extent_m, g.finest_cell_m))
    return HashGridConfig(n_levels=g.n_levels, n_features_per_level=g.n_features_per_level,
                          log2_hashmap_size=g.log2_hashmap_size, base_resolution=g.base_resolution,
                          finest_resolution=finest, backend=g.backend)


def estimate_model_bytes(s: FitSettings, n_classes: int, with_instance: bool = True) -> int:
    """Parameters + gradients + Adam state of the hash grids (the MLPs are negligible)."""
    dummy = 10.0  # the table sizes do not depend on the resolution
    grids = [s.model.sdf_grid, s.model.semantic_grid] + ([s.model.instance_grid] if with_instance else [])
    return sum(estimate_hash_grid_bytes(grid_config(g, dummy)) for g in grids)


def scene_box(scene: Scene, indices: list[int], margin_m: float, max_points_per_frame: int = 4000,
              seed: int = 0) -> dict:
    """Axis-aligned box around the back-projected depth of `indices` (0.1/99.9 percentiles) and the cameras."""
    from recon.model.sampling import camera_dirs
    rng = np.random.default_rng(seed)
    dirs = camera_dirs(scene.K, scene.width, scene.height)                      # [P, 3], z = 1
    pts = [scene.c2w[indices, :3, 3]]
    for i in indices:
        d = scene.load_depth_m(i).reshape(-1)
        valid = np.nonzero(d > 0)[0]
        if len(valid) > max_points_per_frame:
            valid = rng.choice(valid, max_points_per_frame, replace=False)
        pc = dirs[valid] * d[valid, None]                                        # [M, 3] camera frame
        pts.append(pc @ scene.c2w[i, :3, :3].T + scene.c2w[i, :3, 3])
    allp = np.concatenate(pts)
    cams = scene.c2w[indices, :3, 3]                                             # [F, 3]
    # the cameras are always inside: ray samples between a camera and the surface must not be clamped
    # onto the box boundary (scenes without a ceiling have cameras above the highest surface)
    lo = np.minimum(np.percentile(allp, 0.1, axis=0), cams.min(0)) - margin_m
    hi = np.maximum(np.percentile(allp, 99.9, axis=0), cams.max(0)) + margin_m
    return {"min": lo.tolist(), "max": hi.tolist()}


class SceneModel(nn.Module):
    """SDF + semantic (+ instance key) fields and the interim colour head over an axis-aligned world box."""

    def __init__(self, s: FitSettings, box_min: np.ndarray, box_max: np.ndarray, n_classes: int,
                 with_instance: bool = False):
        super().__init__()
        box_min = np.asarray(box_min, np.float64)
        box_max = np.asarray(box_max, np.float64)
        assert box_min.shape == (3,) and np.all(box_max > box_min), f"bad box {box_min} {box_max}"
        self.box_min_np, self.box_max_np = box_min, box_max
        extent = box_max - box_min
        self.register_buffer("box_min", torch.tensor(box_min, dtype=torch.float32))
        self.register_buffer("box_size", torch.tensor(extent, dtype=torch.float32))
        m = s.model
        half = extent / 2.0
        # inside-out sphere through the box corners: the cameras are inside the room, so the whole box
        # starts as free space (positive SDF) and the depth terms carve the surfaces into it
        self.sdf_field = SDFField(grid_config(m.sdf_grid, float(extent.max())), hidden=m.sdf_hidden,
                                  n_layers=m.sdf_layers, geo_feat_dim=m.geo_feat_dim,
                                  sphere_init_radius_m=float(np.linalg.norm(half)), inside_out=True,
                                  box_half_extent_m=half.tolist())
        self.semantic_field = SemanticField(grid_config(m.semantic_grid, float(extent.max())), n_classes,
                                            hidden=m.semantic_hidden)
        self.color_head = ColorHead(m.geo_feat_dim, hidden=m.color_hidden)
        self.n_classes = n_classes
        # instance keys f_k (Sec. 2): a separate grid, no classifier; the tokens attend to it
        self.instance_field = (InstanceKeyField(grid_config(m.instance_grid, float(extent.max())),
                                                feat_dim=s.tokens.feat_dim, hidden=m.instance_hidden)
                               if with_instance else None)

    @property
    def device(self) -> torch.device:
        """Where the fields live (the box buffers move with them)."""
        return self.box_min.device

    def box_dict(self) -> dict:
        return {"min": self.box_min_np.tolist(), "max": self.box_max_np.tolist()}

    def to01(self, x_world: Tensor) -> Tensor:
        """World metres [N, 3] -> normalised box coordinates [N, 3] (clamped to [0, 1])."""
        assert x_world.dim() == 2 and x_world.shape[1] == 3
        return ((x_world - self.box_min) / self.box_size).clamp(0.0, 1.0)

    def sdf(self, x_world: Tensor) -> tuple[Tensor, Tensor]:
        """(sdf [N] metres, geometry features [N, G])."""
        return self.sdf_field(self.to01(x_world))

    def sdf_and_grad(self, x_world: Tensor, create_graph: bool = True) -> tuple[Tensor, Tensor]:
        """(sdf [N], d sdf / d x_world [N, 3]); the graph is kept for the eikonal loss."""
        sdf, _, grad = self.sdf_field.sdf_and_gradient(self.to01(x_world), create_graph=create_graph)
        return sdf, grad

    def semantic_logits(self, x_world: Tensor) -> Tensor:
        return self.semantic_field(self.to01(x_world))

    def instance_keys(self, x_world: Tensor) -> Tensor:
        """f_k [N, d] at world points [N, 3]."""
        assert self.instance_field is not None, "this model has no instance branch"
        return self.instance_field(self.to01(x_world))

    def color(self, geo: Tensor) -> Tensor:
        return self.color_head(geo)

    def grid_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if ".grid." in n]

    def mlp_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if ".grid." not in n]
