#!/usr/bin/env python3
"""Held-out PSNR of the appearance Gaussians against their training budget, without the fields.

Trains the Gaussians alone (no SDF tie, the fit's initialisation, optimiser, densification and
Eq. 34 loss: recon/train/appearance.py) on a scene's training frames for --steps steps, then renders
its held-out frames (the `eval` split minus `train`) and prints one JSON line: settings, seconds,
ms per step, Gaussian count, mean held-out PSNR and depth AbsRel. It is how the PSNR-vs-budget numbers
of the README's appearance section were measured (the fit itself interleaves these steps with the
fields' steps, one per iteration; a fit's `eval` agrees with this to about 0.1 dB at the same budget).

  python scripts/appearance_budget.py --scene SCENE --steps 1100 appearance.patch_px=96
  python scripts/appearance_budget.py --scene SCENE --steps 0            # the initialisation alone

key=value arguments override the fit settings (configs/quick.yaml unless --config), as in `run.py fit`.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import torch

from fields.gaussians import render_gaussians, resolve_backend
from recon.core.config import load_config
from recon.core.settings import FitSettings
from recon.data.scene import load_scene
from recon.model.sampling import build_frame_bank
from recon.train.appearance import gaussian_step, new_gaussian_state


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scene", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=1100)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "quick.yaml")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("overrides", nargs="*", help="key=value fit settings")
    args = ap.parse_args(argv)
    if args.steps < 0:
        ap.error("--steps must be >= 0")
    s = load_config(FitSettings, args.config, args.overrides)
    s.train.iters = max(args.steps, 1)                     # the means' learning-rate decay spans the steps
    scene = load_scene(args.scene)
    train = scene.split_indices(s.data.split) if s.data.split in scene.splits else list(range(len(scene)))
    held = [i for i in scene.split_indices("eval") if i not in set(train)] if "eval" in scene.splits else []
    if not held:
        ap.error(f"{args.scene}: no held-out frames (the eval split minus {s.data.split!r})")
    bank = build_frame_bank(scene, train, with_masks=False)
    gen = torch.Generator().manual_seed(args.seed)
    gs = new_gaussian_state(bank, s, gen, "cpu", log=lambda m: None)
    t0 = time.perf_counter()
    for i in range(args.steps):
        gaussian_step(gs, bank, s, i, gen)
    seconds = time.perf_counter() - t0
    backend = resolve_backend(s.appearance.backend, "cpu")
    K = torch.tensor(scene.K, dtype=torch.float32)
    psnrs, absrel = [], []
    with torch.no_grad():
        for i in held:
            out = render_gaussians(gs.g, K, torch.tensor(scene.c2w[i], dtype=torch.float32), scene.width,
                                   scene.height, backend=backend)
            rgb = torch.from_numpy(np.array(scene.load_color(i))).float() / 255.0
            psnrs.append(-10.0 * math.log10(max(float(((out["rgb"].clamp(0, 1) - rgb) ** 2).mean()), 1e-10)))
            d = torch.from_numpy(scene.load_depth_m(i))
            m = (d > 0) & (out["depth_m"] > 0)
            absrel.append(float(((out["depth_m"][m] - d[m]).abs() / d[m]).mean()))
    result = {"scene": str(args.scene), "steps": args.steps, "overrides": args.overrides, "backend": backend,
              "seconds": round(seconds, 1), "ms_per_step": round(1000 * seconds / max(args.steps, 1), 1),
              "gaussians": gs.g.n, "heldout_psnr": round(float(np.mean(psnrs)), 2),
              "heldout_depth_absrel": round(float(np.mean(absrel)), 4), "torch_threads": torch.get_num_threads()}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
