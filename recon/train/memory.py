"""Peak-memory estimate of a fit, checked against the machine before any work."""
from __future__ import annotations

import numpy as np
import torch

from recon.core.runfolder import available_memory_bytes
from recon.core.settings import FitSettings
from recon.data.scene import Scene
from recon.model.sampling import bank_bytes
from recon.model.scene_model import estimate_model_bytes, scene_box


def estimate_fit_bytes(scene: Scene, n_train: int, s: FitSettings, n_classes: int) -> int:
    """Rough peak memory of a fit: frames in memory + parameters with Adam state + per-step activations."""
    per_point = (s.model.sdf_grid.n_levels * (8 * 4 * 3 + s.model.sdf_grid.n_features_per_level * 4 * 4)
                 + s.model.semantic_grid.n_levels * (8 * 4 * 2) + (s.model.sdf_hidden + n_classes) * 4 * 6
                 + s.model.instance_grid.n_levels * (8 * 4 * 2) + s.tokens.adjust_rules.max_tokens * 4 * 8)
    n_points = s.train.rays_per_iter * (s.render.n_stratified + s.render.n_surface)
    eik = 3.0 * s.loss.eik_fraction
    return int(bank_bytes(n_train, scene.width, scene.height) + estimate_model_bytes(s, n_classes)
               + n_points * per_point * (1 + eik) + (300 << 20))


def check_memory(scene: Scene, n_train: int, s: FitSettings, n_classes: int,
                 device: torch.device | None = None) -> int:
    """Refuse settings whose estimated peak memory exceeds the limit: host memory (data.max_memory_gb,
    else 80 % of what is available) and, on a CUDA device, 90 % of its memory (the frames stay on the host)."""
    need = estimate_fit_bytes(scene, n_train, s, n_classes)
    limit = s.data.max_memory_gb * (1 << 30) if s.data.max_memory_gb > 0 else 0.8 * available_memory_bytes()
    if need > limit:
        raise FitMemoryError(f"these settings need about {need / (1 << 30):.1f} GiB (frames, hash grids with Adam "
                           f"state, per-step activations) but the limit is {limit / (1 << 30):.1f} GiB; lower "
                           "model.*_grid.log2_hashmap_size, train.rays_per_iter or the number of samples")
    if device is not None and device.type == "cuda":
        need_gpu = need - bank_bytes(n_train, scene.width, scene.height)
        total = torch.cuda.get_device_properties(device).total_memory
        if need_gpu > 0.9 * total:
            raise FitMemoryError(f"these settings need about {need_gpu / (1 << 30):.1f} GiB on {device} (hash grids "
                               f"with Adam state, per-step activations) but it has {total / (1 << 30):.1f} GiB; lower "
                               "model.*_grid.log2_hashmap_size or train.rays_per_iter, or use train.device=cpu")
    return need


class FitMemoryError(ValueError):
    """Settings estimated to need more memory than allowed (raised before any work)."""


MESH_SECONDS_PER_SAMPLE = 3e-6    # SDF query + marching cubes per grid sample, 2 CPU threads (room: 11 M samples, ~35 s)
MESH_BYTES_PER_FACE = 200         # vertices, faces, normals, colours, labels in float64 / int64 during labelling
MESH_MAX_SECONDS = 48 * 3600


def mesh_budget(box_min: np.ndarray, box_max: np.ndarray, voxel_size_m: float) -> dict:
    """Estimated cost of meshing the scene box at `voxel_size_m`: grid samples, faces, peak bytes, seconds.
    Faces assume surfaces of about twice the box's own area (walls, floor, ceiling and as much again in
    furniture), two triangles per voxel face they cross."""
    ext = np.asarray(box_max, np.float64) - np.asarray(box_min, np.float64)
    cells = np.ceil(ext / voxel_size_m)
    samples = float(np.prod(cells + 1))
    area = 2.0 * 2.0 * (ext[0] * ext[1] + ext[1] * ext[2] + ext[0] * ext[2])
    faces = 2.0 * area / voxel_size_m ** 2
    return {"samples": samples, "faces": faces, "bytes": faces * MESH_BYTES_PER_FACE,
            "seconds": samples * MESH_SECONDS_PER_SAMPLE}


def check_mesh_budget(scene: Scene, s: FitSettings, max_frames: int = 30) -> dict:
    """Refuse (FitMemoryError) a mesh that cannot be made on this machine: its estimated memory above the
    limit of check_memory, or its time above two days. The box is estimated from up to `max_frames`
    training frames, as the fit will compute it."""
    idx = scene.split_indices(s.data.split) if s.data.split in scene.splits else list(range(len(scene)))
    step = max(1, len(idx) // max_frames)
    box = scene_box(scene, idx[::step], s.model.box_margin_m, max_points_per_frame=1000)
    b = mesh_budget(np.asarray(box["min"]), np.asarray(box["max"]), s.mesh.voxel_size_m)
    limit = s.data.max_memory_gb * (1 << 30) if s.data.max_memory_gb > 0 else 0.8 * available_memory_bytes()
    what = (f"mesh.voxel_size_m={s.mesh.voxel_size_m} over the scene box "
            f"{np.round(np.asarray(box['max']) - np.asarray(box['min']), 2).tolist()} m means about "
            f"{b['samples']:.2g} grid samples and {b['faces']:.2g} faces")
    if b["bytes"] > limit:
        raise FitMemoryError(f"{what}: about {b['bytes'] / (1 << 30):.1f} GiB to mesh, above the limit of "
                             f"{limit / (1 << 30):.1f} GiB; use a larger mesh.voxel_size_m (0.02 is the default)")
    if b["seconds"] > MESH_MAX_SECONDS:
        raise FitMemoryError(f"{what}: about {b['seconds'] / 3600:.0f} h to mesh on a CPU; use a larger "
                             f"mesh.voxel_size_m (0.02 is the default)")
    return b
