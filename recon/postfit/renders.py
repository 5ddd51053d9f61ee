"""`run.py render`: volume-rendered colour, depth and semantic images of a run from the scene's poses."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from recon.core.runfolder import writes_run
from recon.data.palette import class_palette
from recon.model.inference import far_plane, render_frame
from recon.model.sampling import build_frame_bank
from recon.train.runs import load_run


def depth_to_rgb(depth_m: np.ndarray, max_m: float) -> np.ndarray:
    """Depth [H, W] -> a viridis-like colour image [H, W, 3] uint8 (0 = invalid -> black)."""
    import matplotlib
    t = np.clip(depth_m / max(max_m, 1e-6), 0, 1)
    img = (matplotlib.colormaps["viridis"](t)[..., :3] * 255).astype(np.uint8)
    img[depth_m <= 0] = 0
    return img


@writes_run("render")
def render_run_images(run: Path, frames: str = "eval", log=print) -> Path:
    """Write RUN/renders/<frame>_{rgb,depth,semantic}.png and RUN/renders/overview.png."""
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
