"""Novel-view depth of a trained run: the SDF's first surface seen from every held-out pose,
found without the frame's observed depth (RUN/depth_heldout/, scored by eval/evaluate.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from recon.core.io import atomic_write_bytes
from recon.data.run_files import depth_pixel_grid, png16_bytes
from recon.model.inference import sdf_surface_depth
from recon.model.sampling import camera_dirs


@torch.no_grad()
def write_heldout_depth(run: Path, model, scene, s, log=print, progress: bool = True) -> int:
    """RUN/depth_heldout/<frame>.png: uint16 mm z-depth of the SDF surface seen from every held-out
    pose, found without the frame's observed depth, on a pixel grid of stride
    mesh.heldout_depth_stride (full-size image; pixels off the grid are 0 = not evaluated).
    Returns the number of frames written."""
    idx = scene.heldout_indices()
    if not idx:
        return 0
    stride = max(1, int(s.mesh.heldout_depth_stride))
    H, W = scene.height, scene.width
    pix = np.nonzero(depth_pixel_grid(H, W, stride).reshape(-1))[0]
    dirs_cam = camera_dirs(scene.K, W, H)[pix]                                      # [P, 3], z = 1
    scale = np.linalg.norm(dirs_cam, axis=1)
    far = s.render.far_m if s.render.far_m > 0 else float(np.linalg.norm(model.box_max_np - model.box_min_np))
    out = Path(run) / "depth_heldout"
    out.mkdir(exist_ok=True)
    for i in tqdm(idx, desc="held-out depth", dynamic_ncols=True, disable=not progress, mininterval=1.0):
        c2w = scene.c2w[i]
        d_world = torch.from_numpy((dirs_cam / scale[:, None]) @ c2w[:3, :3].T).float()
        o = torch.from_numpy(np.broadcast_to(c2w[:3, 3], d_world.shape).copy()).float()
        t = sdf_surface_depth(model, o, d_world, s.render.near_m, far).numpy()     # along-ray m
        img = np.zeros(H * W, np.float64)
        img[pix] = t / scale                                                       # z-depth m
        mm = np.clip(np.round(img * 1000.0), 0, 65535).astype(np.int64).reshape(H, W)
        atomic_write_bytes(out / f"{scene.frame_ids[i]}.png", png16_bytes(mm))
    log(f"wrote SDF depth of {len(idx)} held-out frames to {out} (every {stride}th pixel)")
    return len(idx)
