"""Novel-view depth of a trained run: the SDF's first surface seen from every held-out pose,
found without the frame's observed depth (RUN/depth_heldout/, scored by eval/evaluate.py).

By default the surface is the first + to - zero crossing of 96 samples over [near, far]
(recon.model.inference.sdf_surface_depth). On real sensor depth (configs/real.yaml) two rules make
the search skip zero crossings the data does not support (`surface_depth`):
- render.surface_observed_m: a crossing counts only where some training frame observed a surface
  within this distance of it (the rule the mesh culling applies to faces; TSDF fusion has no surface
  elsewhere either). It drops the SDF's solid "shadows" behind objects, space no training ray reached,
  which a nearby novel view looks into, and floaters in free space;
- render.surface_min_solid_m: a crossing counts only when the SDF stays <= 0 this far behind it
  (thin negative shells that noisy depth leaves in free space);
and render.surface_step_m sets the search step."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from recon.core.io import atomic_write_bytes
from recon.data.run_files import depth_npz_bytes, depth_pixel_grid, png16_bytes
from recon.model.inference import sdf_surface_depth
from recon.model.sampling import camera_dirs
from recon.train.runs import train_indices

MAX_SKIPPED = 8   # crossings a ray may reject before it counts as seeing no surface


def solid_crossings(sdf: torch.Tensor, n_solid: int) -> torch.Tensor:
    """[R, S-1] bool: + to - zero crossings between samples j and j+1 of sdf [R, S] along which the
    SDF stays <= 0 on the n_solid samples j+1 .. j+n_solid (fewer where the ray ends first).
    n_solid <= 1: every crossing (sdf[j] > 0 and sdf[j+1] <= 0)."""
    assert sdf.ndim == 2
    neg = sdf <= 0                                                                    # [R, S]
    cross = (sdf[:, :-1] > 0) & neg[:, 1:]                                           # [R, S-1]
    if n_solid <= 1:
        return cross
    S = sdf.shape[1]
    csum = torch.nn.functional.pad(torch.cumsum(neg.to(torch.int32), dim=1), (1, 0))  # [R, S+1]: negatives before i
    start = torch.arange(1, S, device=sdf.device)                                    # j+1 for j = 0 .. S-2
    stop = torch.clamp(start + n_solid, max=S)                                       # window [j+1, stop)
    count = csum[:, stop] - csum[:, start]                                           # [R, S-1]
    return cross & (count == (stop - start)[None, :])


def observed_points(points: torch.Tensor, depth_m: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor,
                    margin_m: float, free_ratio: float = 0.0) -> torch.Tensor:
    """[M] bool: points [M, 3] (world, metres) that the frames saw as surface. A point projects (OpenCV
    camera, K [3, 3], w2c [F, 4, 4]) into the image of frame f at z-depth z > 0 onto a pixel (nearest
    pixel centre) with observed z-depth D = depth_m[f] [F, H, W] > 0: a surface view when |z - D| <=
    margin_m, a see-through view when D > z + margin_m (the frame saw free space there). True when some
    frame has a surface view and, with free_ratio > 0, the see-through views number at most free_ratio
    times the surface views (a vote, as TSDF fusion averages its views)."""
    assert points.ndim == 2 and points.shape[1] == 3 and depth_m.ndim == 3 and w2c.shape[0] == depth_m.shape[0]
    F, H, W = depth_m.shape
    n_surf = torch.zeros(points.shape[0], dtype=torch.int32, device=points.device)
    n_free = torch.zeros_like(n_surf)
    for f in range(F):
        pc = points @ w2c[f, :3, :3].T + w2c[f, :3, 3]                               # [M, 3] camera frame
        z = pc[:, 2]
        zs = torch.where(z > 1e-6, z, torch.ones_like(z))
        u = torch.round(K[0, 0] * pc[:, 0] / zs + K[0, 2]).long()
        v = torch.round(K[1, 1] * pc[:, 1] / zs + K[1, 2]).long()
        inside = (z > 1e-6) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
        d = depth_m[f][v.clamp(0, H - 1), u.clamp(0, W - 1)]                          # [M]
        n_surf += (inside & (d > 0) & ((z - d).abs() <= margin_m)).to(torch.int32)
        n_free += (inside & (d > z + margin_m)).to(torch.int32)
    seen = n_surf > 0
    if free_ratio > 0:
        seen &= n_free.to(torch.float32) <= free_ratio * n_surf.to(torch.float32)
    return seen


@torch.no_grad()
def surface_depth(sdf_fn, origins: torch.Tensor, dirs: torch.Tensor, near_m: float, far_m: float,
                  step_m: float = 0.0, min_solid_m: float = 0.0, accept=None, n_refine: int = 3,
                  chunk: int = 4096) -> torch.Tensor:
    """Distance [R] along unit rays (origins, dirs [R, 3]) to the first + to - SDF zero crossing that
    counts, searched with samples every step_m over [near_m, far_m] (step_m 0: 96 samples) and refined
    by regula falsi inside its bracket (as recon.model.inference.sdf_surface_depth). A crossing counts
    when the SDF stays <= 0 for min_solid_m behind it (solid_crossings) and, with `accept` (points
    [M, 3] -> bool [M]), when accept() takes its refined point; a ray rejects at most MAX_SKIPPED.
    sdf_fn: points [N, 3] -> sdf [N]. 0 where no crossing counts."""
    assert origins.shape == dirs.shape and origins.ndim == 2 and origins.shape[1] == 3
    n = 96 if step_m <= 0 else max(2, int(np.ceil((far_m - near_m) / step_m)) + 1)
    z = torch.linspace(near_m, far_m, n, device=origins.device)                       # [S]
    dz = (far_m - near_m) / (n - 1)
    n_solid = int(np.ceil(min_solid_m / dz - 1e-9)) if min_solid_m > 0 else 0
    out = []
    for a in range(0, origins.shape[0], chunk):
        o, d = origins[a:a + chunk], dirs[a:a + chunk]
        R = o.shape[0]
        sdf = sdf_fn((o[:, None, :] + d[:, None, :] * z[None, :, None]).reshape(-1, 3)).reshape(R, n)
        cand = solid_crossings(sdf, n_solid)                                          # [R, S-1]
        t_out = torch.zeros(R, device=o.device)
        todo = torch.arange(R, device=o.device)
        for _ in range(MAX_SKIPPED if accept is not None else 1):
            todo = todo[cand[todo].any(1)]
            if todo.numel() == 0:
                break
            j = torch.argmax(cand[todo].to(torch.int8), dim=1)                       # first candidate left
            oo, dd = o[todo], d[todo]
            lo, hi = z[j], z[j + 1]
            s_lo, s_hi = sdf[todo, j], sdf[todo, j + 1]
            for _ in range(n_refine):
                t = lo + (hi - lo) * s_lo / (s_lo - s_hi).clamp_min(1e-9)
                s_t = sdf_fn(oo + dd * t[:, None])
                pos = s_t > 0
                lo, s_lo = torch.where(pos, t, lo), torch.where(pos, s_t, s_lo)
                hi, s_hi = torch.where(pos, hi, t), torch.where(pos, s_hi, s_t)
            t = lo + (hi - lo) * s_lo / (s_lo - s_hi).clamp_min(1e-9)
            ok = torch.ones_like(t, dtype=torch.bool) if accept is None else accept(oo + dd * t[:, None])
            t_out[todo[ok]] = t[ok]
            cand[todo, j] = False                                                     # tried
            todo = todo[~ok]
        out.append(t_out)
    return torch.cat(out).cpu() if out else torch.zeros(0)


@torch.no_grad()
def write_heldout_depth(run: Path, model, scene, s, log=print, progress: bool = True) -> int:
    """RUN/depth_heldout/<frame>.png: uint16 mm z-depth of the SDF surface seen from every held-out
    pose, found without the frame's observed depth, on a pixel grid of stride
    mesh.heldout_depth_stride (full-size image; pixels off the grid are 0 = not evaluated), and
    <frame>.npz: the same z-depth in float32 metres (key "depth_m"), which `eval` scores (errors on
    noise-free depth are about 1 mm, the PNG's step). Returns the number of frames written."""
    idx = scene.heldout_indices()
    if not idx:
        return 0
    stride = max(1, int(s.mesh.heldout_depth_stride))
    H, W = scene.height, scene.width
    pix = np.nonzero(depth_pixel_grid(H, W, stride).reshape(-1))[0]
    dirs_cam = camera_dirs(scene.K, W, H)[pix]                                      # [P, 3], z = 1
    scale = np.linalg.norm(dirs_cam, axis=1)
    far = s.render.far_m if s.render.far_m > 0 else float(np.linalg.norm(model.box_max_np - model.box_min_np))
    r = s.render
    rules = r.surface_step_m > 0 or r.surface_min_solid_m > 0 or r.surface_observed_m > 0
    accept = None
    if r.surface_observed_m > 0:
        train = train_indices(scene, s)
        depth_t = torch.from_numpy(np.stack([scene.load_depth_m(i) for i in train])).float()   # [F, H, W] z-depth m
        w2c_t = torch.from_numpy(np.linalg.inv(scene.c2w[train])).float()                       # [F, 4, 4]
        K_t = torch.from_numpy(scene.K).float()
        accept = lambda p: observed_points(p.cpu(), depth_t, K_t, w2c_t, r.surface_observed_m,  # noqa: E731
                                           r.surface_free_ratio).to(p.device)
    out = Path(run) / "depth_heldout"
    out.mkdir(exist_ok=True)
    for i in tqdm(idx, desc="held-out depth", dynamic_ncols=True, disable=not progress, mininterval=1.0):
        c2w = scene.c2w[i]
        d_world = torch.from_numpy((dirs_cam / scale[:, None]) @ c2w[:3, :3].T).float()
        o = torch.from_numpy(np.broadcast_to(c2w[:3, 3], d_world.shape).copy()).float()
        if rules:
            dev = getattr(model, "device", o.device)
            t = surface_depth(lambda x: model.sdf(x)[0], o.to(dev), d_world.to(dev), r.near_m, far,
                              r.surface_step_m, r.surface_min_solid_m, accept, chunk=r.chunk_rays).numpy()  # along-ray m
        else:
            t = sdf_surface_depth(model, o, d_world, s.render.near_m, far).numpy()     # along-ray m
        img = np.zeros(H * W, np.float64)
        img[pix] = t / scale                                                       # z-depth m
        mm = np.clip(np.round(img * 1000.0), 0, 65535).astype(np.int64).reshape(H, W)
        atomic_write_bytes(out / f"{scene.frame_ids[i]}.npz", depth_npz_bytes(img.reshape(H, W)))
        atomic_write_bytes(out / f"{scene.frame_ids[i]}.png", png16_bytes(mm))
    log(f"wrote SDF depth of {len(idx)} held-out frames to {out} (every {stride}th pixel)")
    return len(idx)
