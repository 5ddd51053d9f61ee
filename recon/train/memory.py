"""Peak-memory estimate of a fit, checked against the machine before any work."""
from __future__ import annotations

import torch

from recon.core.runfolder import available_memory_bytes
from recon.core.settings import FitSettings
from recon.data.scene import Scene
from recon.model.sampling import bank_bytes
from recon.model.scene_model import estimate_model_bytes


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
