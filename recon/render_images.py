"""`run.py render`: volume-render colour, depth and semantic images of a run from the scene's poses."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from recon.export_mesh import class_palette
from recon.sampling import FrameBank, build_frame_bank, rays_for_pixels, sample_along_rays


@torch.no_grad()
def render_frame(model, bank: FrameBank, row: int, s, far: float) -> dict[str, np.ndarray]:
    """Render every pixel of bank row `row`: rgb [H, W, 3] uint8, depth_m [H, W] (z-depth), semantic [H, W]."""
    from recon.trainer import render_rays
    H, W = bank.height, bank.width
    rgb, depth, sem = [], [], []
    for start in range(0, H * W, s.render.chunk_rays):
        pix = torch.arange(start, min(start + s.render.chunk_rays, H * W))
        rays = rays_for_pixels(bank, torch.full_like(pix, row), pix)
        z = sample_along_rays(rays.depth, s.render.near_m, far, s.render.n_stratified, s.render.n_surface,
                              s.render.band_m, gen=None)
        out = render_rays(model, rays, z, s, with_grad=False, with_semantic=True)
        rgb.append(out["rgb"].cpu())
        depth.append(out["depth"].cpu() / bank.ray_scale[pix])           # along-ray -> z-depth
        sem.append(out["sem_probs"].argmax(-1).cpu())
    return {"rgb": (torch.cat(rgb).clamp(0, 1).reshape(H, W, 3).numpy() * 255).round().astype(np.uint8),
            "depth_m": torch.cat(depth).reshape(H, W).numpy(),
            "semantic": torch.cat(sem).reshape(H, W).numpy().astype(np.int64)}


def depth_to_rgb(depth_m: np.ndarray, max_m: float) -> np.ndarray:
    """Depth [H, W] -> a viridis-like colour image [H, W, 3] uint8 (0 = invalid -> black)."""
    import matplotlib
    t = np.clip(depth_m / max(max_m, 1e-6), 0, 1)
    img = (matplotlib.colormaps["viridis"](t)[..., :3] * 255).astype(np.uint8)
    img[depth_m <= 0] = 0
    return img


def render_run_images(run: Path, frames: str = "eval", log=print) -> Path:
    """Write RUN/renders/<frame>_{rgb,depth,semantic}.png and RUN/renders/overview.png."""
    from recon.trainer import far_plane, load_run
    run = Path(run)
    s, model, scene = load_run(run)
    if frames in ("eval", "train"):
        idx = scene.split_indices(frames)
    elif frames == "all":
        idx = list(range(len(scene)))
    else:
        wanted = [f.strip() for f in frames.split(",") if f.strip()]
        unknown = [f for f in wanted if f not in scene.frame_ids]
        if unknown:
            raise FileNotFoundError(f"frames {unknown} are not in {scene.root}")
        idx = [scene.index(f) for f in wanted]
    bank = build_frame_bank(scene, idx, with_masks=False)
    far = far_plane(bank, s)
    pal = class_palette(scene.n_classes)
    out_dir = run / "renders"
    out_dir.mkdir(exist_ok=True)
    max_d = float(bank.depth_ray_m.max()) or 1.0
    rows = []
    for row, i in enumerate(tqdm(idx, desc="render", dynamic_ncols=True)):
        r = render_frame(model, bank, row, s, far)
        fid = scene.frame_ids[i]
        sem_rgb = pal[np.clip(r["semantic"], 0, len(pal) - 1)]
        Image.fromarray(r["rgb"]).save(out_dir / f"{fid}_rgb.png")
        Image.fromarray(depth_to_rgb(r["depth_m"], max_d)).save(out_dir / f"{fid}_depth.png")
        Image.fromarray(sem_rgb).save(out_dir / f"{fid}_semantic.png")
        if len(rows) < 6:
            obs_depth = scene.load_depth_m(i)
            rows.append(np.concatenate([scene.load_color(i), r["rgb"], depth_to_rgb(obs_depth, max_d),
                                        depth_to_rgb(r["depth_m"], max_d), sem_rgb], axis=1))
    if rows:
        Image.fromarray(np.concatenate(rows, axis=0)).save(out_dir / "overview.png")
    log(f"wrote {len(idx)} frames to {out_dir} (overview.png: observed colour | rendered colour | observed depth "
        f"| rendered depth | rendered semantics)")
    return out_dir
