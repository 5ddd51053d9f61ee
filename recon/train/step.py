"""One optimisation step: draw rays, render them, form every loss of the current stage, update.

The stages (docs/method.md, training schedule): geometry only before train.geometry_only_iters; then
the semantic and instance terms; L_pan from train.pan_start_iters (with the panoptic head); the dice
part of L_ins off from train.dice_off_iters. The token adjustment strategy runs after the update
when it is due.

The Panoptic Lifting baseline (tokens.formulation=slots): the slot cross-entropy after a per-frame
Hungarian match (recon.model.instance_branch.slot_losses) replaces L_ins and L_c; no L_pan, no
adjustment. Its segment-consistency term (tokens.segment_consistency > 0, weight times loss.w_sem, logged
as "seg") joins at train.pan_start_iters, with either formulation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fields.stages import stage
from recon.core.settings import FitSettings
from recon.model.inference import render_rays
from recon.model.instance_branch import (InstanceBranch, assignment_losses, segment_consistency_loss, slot_losses,
                                         surface_points)
from recon.model.losses import depth_loss, depth_noise_weight, eikonal_loss, rgb_loss, sdf_loss, semantic_loss
from recon.model.panoptic_head import panoptic_loss
from recon.model.sampling import FrameBank, depth_edge_rays, sample_along_rays, sample_rays
from recon.model.scene_model import SceneModel
from tokens.adjust import TokenAdjustStrategy


@dataclass
class InstanceState:
    """What the trainer keeps for the instance branch: the branch, its token optimiser, the strategy."""
    branch: InstanceBranch
    opt: torch.optim.Optimizer          # Adam over the token parameters (resized by the strategy)
    strategy: TokenAdjustStrategy


def train_step(model: SceneModel, opt: torch.optim.Optimizer, bank: FrameBank, s: FitSettings, it: int,
               gen: torch.Generator, far: float, inst: InstanceState | None = None) -> dict[str, float]:
    """One optimisation step; returns the loss terms (and assignment statistics) as floats."""
    t, ls = s.train, s.loss
    labels_on = it >= t.geometry_only_iters and bank.semantic is not None
    # rays and samples are drawn on the CPU (the bank and the generator live there), then moved
    with stage("ray sampling"):
        rays_cpu = sample_rays(bank, t.rays_per_iter, t.frames_per_iter, gen,
                               mask_fraction=t.mask_ray_fraction if labels_on else 0.0, with_stuff=t.mask_ray_stuff)
        surface_ok = None          # real-sensor depth options (configs/real.yaml); off by default: the rays as drawn
        if ls.edge_rel_jump > 0:
            rays_cpu.depth, surface_ok = depth_edge_rays(bank.depth_ray_m, bank.width, bank.height, rays_cpu.frame,
                                                         rays_cpu.pixel, ls.edge_rel_jump)
        z = sample_along_rays(rays_cpu.depth, s.render.near_m, far, s.render.n_stratified, s.render.n_surface,
                              s.render.band_m, gen).to(model.device)
        rays = rays_cpu.to(model.device)
    semantic_on = labels_on and ls.w_sem > 0
    inst_on = labels_on and inst is not None and ls.w_ins + ls.w_cls + ls.w_pan > 0
    slots = inst is not None and inst.branch.slots
    pan_on = inst_on and not slots and s.panoptic.head and it >= t.pan_start_iters and ls.w_pan > 0
    seg_on = semantic_on and s.tokens.segment_consistency > 0 and it >= t.pan_start_iters
    colour_head = s.appearance.branch in ("colour_head", "both")   # gaussians: colour from the Gaussians alone
    with stage("fields and rendering"):    # what the inner stages (hash grid, mlp, rendering, ...) leave
        out = render_rays(model, rays, z, s, with_grad=True, with_semantic=semantic_on or pan_on,
                          eik_fraction=ls.eik_fraction, gen=gen, detach_sem_weights=t.detach_semantic_weights,
                          branch=inst.branch if inst_on else None, with_panoptic=pan_on, with_rgb=colour_head)
    with stage("losses"):                  # the loss terms, the token assignment (Hungarian) and its losses
        valid = rays.depth > 0
        w_ray = depth_noise_weight(rays.depth, ls.noise_ref_m, ls.noise_power) if ls.noise_power > 0 else None
        sok = None if surface_ok is None else surface_ok.to(model.device)
        l_trunc, l_free = sdf_loss(out["sdf"], z, rays.depth, ls.trunc_m, ls.beta, valid, ray_weight=w_ray, surface_ok=sok)
        terms = {
            "sdf": l_trunc, "free": l_free,
            "eik": eikonal_loss(out["grad"]) if "grad" in out else torch.zeros((), device=model.device),
            "depth": depth_loss(out["depth"], rays.depth, valid if sok is None else valid & sok, ray_weight=w_ray),
        }
        if colour_head:
            terms["rgb"] = rgb_loss(out["rgb"], rays.rgb)
        if semantic_on:
            terms["sem"] = semantic_loss(out["sem_probs"], rays.semantic)
        if seg_on:
            terms["seg"] = segment_consistency_loss(out["sem_probs"], rays_cpu, bank.thing_class,
                                                    min_pixels=s.tokens.min_mask_pixels)
        stats: dict[str, float] = {}
        if inst_on and slots:
            res = slot_losses(inst.branch, out["token_masks"], rays_cpu, min_pixels=s.tokens.min_mask_pixels)
            terms["ins"] = res.l_ins
            stats = {"tokens": float(inst.branch.tokens.n), "masks": float(res.n_masks),
                     "matched": float(res.n_matched), "match_cost": res.mean_cost}
        elif inst_on:
            use_dice = t.dice_off_iters <= 0 or it < t.dice_off_iters
            res = assignment_losses(inst.branch, out["token_masks"], rays_cpu, use_dice=use_dice,
                                    min_pixels=s.tokens.min_mask_pixels, strategy=inst.strategy, it=it)
            terms["ins"], terms["cls"] = res.l_ins, res.l_cls
            if pan_on:
                terms["pan"] = panoptic_loss(out["pan_probs"], res.pan_target)
            stats = {"tokens": float(inst.branch.tokens.n), "masks": float(res.n_masks),
                     "matched": float(res.n_matched), "match_cost": res.mean_cost}
        weights = {"sdf": ls.w_sdf, "free": ls.w_free, "eik": ls.w_eik, "depth": ls.w_depth, "rgb": ls.w_rgb,
                   "sem": ls.w_sem, "ins": ls.w_ins, "cls": ls.w_cls, "pan": ls.w_pan,
                   "seg": ls.w_sem * s.tokens.segment_consistency}
        total = sum(weights[k] * v for k, v in terms.items())
    opt.zero_grad(set_to_none=True)
    if inst is not None:
        inst.opt.zero_grad(set_to_none=True)
    with stage("backward"):
        total.backward()
    with stage("optimizer"):
        opt.step()
        if inst_on:
            inst.opt.step()
    if inst_on and not slots and inst.strategy.due(it):
        with stage("token adjustment"):
            pts = surface_points(bank, s.tokens.adjust_points, gen).to(model.device)
            with torch.no_grad():
                A = inst.branch.probs(model.instance_keys(pts), pts)               # [M, N]
            inst.strategy.step(it, inst.branch.tokens, pts.cpu(), A.cpu(), optimizer=inst.opt)
    vals = {k: float(v.detach()) for k, v in terms.items()}
    vals["total"] = float(total.detach())
    vals.update(stats)
    return vals
