"""Training of the appearance branch: its optimiser, one Gaussian step, and the state a checkpoint keeps.

Each fit iteration runs `appearance.steps_per_iter` Gaussian steps after the fields' step: a random
window of a training frame is rasterised and L_rgb of Eq. 34 is formed (recon/model/appearance.py),
plus the tie of the Gaussians' means to the SDF's zero level (the SDF is queried without gradient to
its parameters, so appearance never reshapes the geometry). Densification (fields/densify.py) runs
after the update when due.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fields.densify import DensifyStrategy
from fields.gaussians import GaussianModel, resolve_backend
from recon.core.settings import AppearanceSettings, FitSettings
from recon.model.appearance import appearance_loss, init_gaussians, random_patch, render_patch
from recon.model.sampling import FrameBank
from recon.train.selective_adam import SelectiveAdam


@dataclass
class GaussianState:
    """What the trainer keeps for the appearance branch."""
    g: GaussianModel
    opt: torch.optim.Optimizer
    strategy: DensifyStrategy
    steps: int = 0                       # Gaussian steps taken (the SH degree and densify schedule)
    backend: str = "torch"               # training rasteriser: "numba" or "torch" (training_backend)


def training_backend(a: AppearanceSettings, device) -> str:
    """The rasteriser the Gaussian steps use: appearance.backend resolved for `device`; gsplat only renders
    (it gives no screen-space gradients for densification), so it trains with torch."""
    return "numba" if resolve_backend(a.backend, device) == "numba" else "torch"


LR_KEYS = {"means": "lr_means_m", "quats": "lr_quats", "log_scales": "lr_scales",
           "opacity_logits": "lr_opacity", "sh_dc": "lr_sh", "sh_rest": "lr_sh"}


def make_gaussian_optimizer(g: GaussianModel, a: AppearanceSettings) -> torch.optim.Optimizer:
    """Adam with one group per parameter (3DGS's learning rates; SH above degree 0 at lr / 20), updating only
    the rows a step rendered or tied (recon/train/selective_adam.py)."""
    groups = []
    for name in GaussianModel.PARAMS:
        lr = getattr(a, LR_KEYS[name]) / (20.0 if name == "sh_rest" else 1.0)
        groups.append({"params": [getattr(g, name)], "lr": lr, "name": name, "base_lr": lr})
    return SelectiveAdam(groups, eps=1e-15)


def new_gaussian_state(bank: FrameBank, s: FitSettings, gen: torch.Generator, device, log=print) -> GaussianState:
    a = s.appearance
    g = init_gaussians(bank, a.init_voxel_m, a.sh_degree, opacity=a.init_opacity, thin_ratio=a.thin_ratio,
                       footprint_factor=a.footprint_factor, max_gaussians=a.max_init_gaussians, gen=gen).to(device)
    log(f"appearance: {g.n} Gaussians from the training frames' depth (finest voxel {a.init_voxel_m} m)")
    return GaussianState(g, make_gaussian_optimizer(g, a), DensifyStrategy(a.densify, log=log),
                         backend=training_backend(a, g.means.device))


def restore_gaussian_state(state: dict, s: FitSettings, device, log=print) -> GaussianState:
    g = GaussianModel.from_state_dict(state["model"], s.appearance.sh_degree).to(device)
    opt = make_gaussian_optimizer(g, s.appearance)
    opt.load_state_dict(state["optimizer"])
    strategy = DensifyStrategy(s.appearance.densify, log=log)
    strategy.load_state_dict(state["strategy"])
    return GaussianState(g, opt, strategy, int(state["steps"]), backend=training_backend(s.appearance, g.means.device))


def gaussian_state_dict(gs: GaussianState) -> dict:
    return {"model": gs.g.state_dict(), "optimizer": gs.opt.state_dict(), "strategy": gs.strategy.state_dict(),
            "steps": gs.steps}


def set_gaussian_lr(gs: GaussianState, s: FitSettings, it: int) -> None:
    """Means decay exponentially to lr x lr_means_final_factor at the last iteration; the rest stay."""
    a = s.appearance
    t = min(1.0, it / max(1, s.train.iters))
    for group in gs.opt.param_groups:
        if group["name"] == "means":
            group["lr"] = group["base_lr"] * math.exp(t * math.log(a.lr_means_final_factor))


def gaussian_step(gs: GaussianState, bank: FrameBank, s: FitSettings, it: int, gen: torch.Generator,
                  sdf_fn=None) -> dict[str, float]:
    """One Gaussian step on a random window of a training frame; returns the loss terms as floats.
    sdf_fn: points [M, 3] -> (sdf [M], gradient [M, 3]) of the fields, both detached (recon.model.inference.
    sdf_and_gradient), or None. The tie |sdf(mu)| is linearised at the means: its gradient moves each
    mean along -sign(sdf) grad sdf, and the fields get none."""
    a = s.appearance
    g = gs.g
    g.active_degree.fill_(min(a.sh_degree, gs.steps // a.sh_degree_every))
    set_gaussian_lr(gs, s, it)
    row, x0, y0, w, h = random_patch(bank, a.patch_px, gen)
    out, rgb_obs, z_obs = render_patch(g, bank, row, x0, y0, w, h, tile=a.tile_px or None, backend=gs.backend)
    out["uv"].retain_grad()
    terms = appearance_loss(out, rgb_obs, z_obs, a.lambda_ssim, a.lambda_depth)
    total = terms["gs_total"]
    rows = [out["index"]]                                                           # what the step can move
    if sdf_fn is not None and a.w_sdf_tie > 0:
        idx = torch.randint(g.n, (min(g.n, 2048),), generator=gen).to(g.means.device)
        mu = g.means[idx]                                                              # [M, 3]
        sdf, grad = sdf_fn(mu.detach())
        tie = (sdf.abs() + (torch.sign(sdf)[:, None] * grad * (mu - mu.detach())).sum(1)).mean()
        terms["gs_sdf_tie"] = tie
        total = total + a.w_sdf_tie * tie
        rows.append(idx)
    gs.opt.zero_grad(set_to_none=True)
    total.backward()
    gs.strategy.after_backward(g, out["uv"].grad, out["index"], out["visible"])
    gs.opt.step(torch.unique(torch.cat(rows)))
    gs.steps += 1
    gs.strategy.step(gs.steps, g, gs.opt, gen)
    vals = {k: float(v.detach()) for k, v in terms.items()}
    vals["gaussians"] = float(g.n)
    return vals
