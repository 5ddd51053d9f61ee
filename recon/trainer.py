"""Training loop for the reconstruction: staged schedule, Adam, checkpoints, exact resume, logs.

A run folder holds config.yaml (resolved settings), log.txt, metrics.csv, tb/ (TensorBoard),
checkpoints/ckpt_<iteration>.pt (+ last.pt), timing.json and, at the end, mesh.ply + legend.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from recon.config import ConfigError, atomic_write_text, load_config, save_config, to_dict
from recon.data.scene import Scene, load_scene
from recon.device import DeviceError, describe, resolve_device, synchronize
from recon.instance import InstanceBranch, assignment_losses, init_tokens_from_bank, surface_points
from recon.losses import depth_loss, eikonal_loss, rgb_loss, sdf_loss, semantic_loss
from recon.panoptic import panoptic_loss, panoptic_probs
from recon.model import SceneModel, estimate_model_bytes, scene_box
from recon.render import accumulated_opacity, render, render_depth, sdf_to_alpha, transmittance_weights
from recon.runlog import RunLog, available_memory_bytes, check_run_folder, peak_rss_mb
from recon.sampling import FrameBank, RayBatch, bank_bytes, build_frame_bank, sample_along_rays, sample_rays
from recon.schema import FitSettings
from tokens.adjust import TokenAdjustStrategy, make_strategy
from tokens.tokens import InstanceTokens


# ----------------------------------------------------------------------------- one step

SEM_MIN_WEIGHT = 1e-3  # samples with a smaller rendering weight are skipped by the semantic branch

def render_rays(model: SceneModel, rays: RayBatch, z: torch.Tensor, s: FitSettings, *, with_grad: bool,
                with_semantic: bool, eik_fraction: float = 0.0, gen: torch.Generator | None = None,
                detach_sem_weights: bool = True, branch: InstanceBranch | None = None,
                with_panoptic: bool = False) -> dict[str, torch.Tensor]:
    """Query the fields at the samples `z` [R, S] of `rays` and volume-render them.

    Returns depth [R], rgb [R, 3], acc [R], sdf [R, S], weights [R, S], optionally sem_probs
    [R, C], the rendered token masks token_masks [R, N] (with `branch`), the rendered panoptic
    distribution pan_probs [R, C_stuff + N] (with_panoptic, Eq. 18 per point then Eq. 10) and the
    SDF gradient [M, 3] at a random `eik_fraction` of the samples (for the eikonal term).
    """
    R, S = z.shape
    dev = model.device
    rays, z = rays.to(dev), z.to(dev)                                               # no-op when already there
    pts = rays.origins[:, None, :] + rays.dirs[:, None, :] * z[..., None]          # [R, S, 3]
    flat = pts.reshape(-1, 3)
    out: dict[str, torch.Tensor] = {}
    if with_grad and eik_fraction > 0:
        n_eik = max(1, int(round(eik_fraction * R * S)))
        pick = torch.randperm(R * S, generator=gen)[:n_eik].to(dev)                # CPU generator: same stream on any device
        _, grad = model.sdf_and_grad(flat[pick])
        out["grad"] = grad                                                          # [M, 3]
    sdf, geo = model.sdf(flat)
    sdf = sdf.reshape(R, S)
    alpha = sdf_to_alpha(sdf, s.render.xi)                                          # [R, S]
    w = transmittance_weights(alpha)                                                # [R, S]
    rgb_pts = model.color(geo).reshape(R, S, 3)
    out["sdf"] = sdf
    out["weights"] = w
    out["depth"] = render_depth(w, z)
    out["acc"] = accumulated_opacity(w)
    out["rgb"] = render(w, rgb_pts)
    with_panoptic = with_panoptic and branch is not None and with_semantic
    if with_semantic or branch is not None:
        w_lab = w.detach() if detach_sem_weights else w
        if detach_sem_weights:
            # only samples that carry weight contribute to the rendered distributions: query the
            # semantic and instance fields there alone (a few samples per ray instead of all S)
            keep = torch.nonzero((w_lab > SEM_MIN_WEIGHT).reshape(-1)).reshape(-1)  # [M]
        else:
            keep = torch.arange(R * S, device=dev)
        pts_k = flat[keep]                                                          # [M, 3]

        def scatter(vals: torch.Tensor) -> torch.Tensor:                            # [M, K] -> [R, S, K]
            full = vals.new_zeros(R * S, vals.shape[1])
            full[keep] = vals
            return full.reshape(R, S, -1)

        probs_k = torch.softmax(model.semantic_logits(pts_k), -1) if with_semantic else None   # [M, C]
        if with_semantic:
            out["sem_probs"] = render(w_lab, scatter(probs_k))                      # [R, C]
        if branch is not None:
            A_k = branch.probs(model.instance_keys(pts_k), pts_k)                   # [M, N]
            out["token_masks"] = render(w_lab, scatter(A_k))                        # [R, N]
            if with_panoptic:
                lp_k = panoptic_probs(probs_k, A_k, branch.thing_mask)              # [M, C_stuff + N]
                out["pan_probs"] = render(w_lab, scatter(lp_k))                     # [R, C_stuff + N]
    return out


def far_plane(bank: FrameBank, s: FitSettings) -> float:
    return s.render.far_m if s.render.far_m > 0 else float(bank.depth_ray_m.max()) + s.model.box_margin_m


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
    rays_cpu = sample_rays(bank, t.rays_per_iter, t.frames_per_iter, gen,
                           mask_fraction=t.mask_ray_fraction if labels_on else 0.0, with_stuff=t.mask_ray_stuff)
    z = sample_along_rays(rays_cpu.depth, s.render.near_m, far, s.render.n_stratified, s.render.n_surface,
                          s.render.band_m, gen).to(model.device)
    rays = rays_cpu.to(model.device)
    semantic_on = labels_on and ls.w_sem > 0
    inst_on = labels_on and inst is not None and ls.w_ins + ls.w_cls + ls.w_pan > 0
    pan_on = inst_on and s.panoptic.head and it >= t.pan_start_iters and ls.w_pan > 0
    out = render_rays(model, rays, z, s, with_grad=True, with_semantic=semantic_on or pan_on,
                      eik_fraction=ls.eik_fraction, gen=gen, detach_sem_weights=t.detach_semantic_weights,
                      branch=inst.branch if inst_on else None, with_panoptic=pan_on)
    valid = rays.depth > 0
    l_trunc, l_free = sdf_loss(out["sdf"], z, rays.depth, ls.trunc_m, ls.beta, valid)
    terms = {
        "sdf": l_trunc, "free": l_free,
        "eik": eikonal_loss(out["grad"]) if "grad" in out else torch.zeros((), device=model.device),
        "depth": depth_loss(out["depth"], rays.depth, valid),
        "rgb": rgb_loss(out["rgb"], rays.rgb),
    }
    if semantic_on:
        terms["sem"] = semantic_loss(out["sem_probs"], rays.semantic)
    stats: dict[str, float] = {}
    if inst_on:
        use_dice = t.dice_off_iters <= 0 or it < t.dice_off_iters
        res = assignment_losses(inst.branch, out["token_masks"], rays_cpu, use_dice=use_dice,
                                min_pixels=s.tokens.min_mask_pixels, strategy=inst.strategy, it=it)
        terms["ins"], terms["cls"] = res.l_ins, res.l_cls
        if pan_on:
            terms["pan"] = panoptic_loss(out["pan_probs"], res.pan_target)
        stats = {"tokens": float(inst.branch.tokens.n), "masks": float(res.n_masks),
                 "matched": float(res.n_matched), "match_cost": res.mean_cost}
    weights = {"sdf": ls.w_sdf, "free": ls.w_free, "eik": ls.w_eik, "depth": ls.w_depth, "rgb": ls.w_rgb,
               "sem": ls.w_sem, "ins": ls.w_ins, "cls": ls.w_cls, "pan": ls.w_pan}
    total = sum(weights[k] * v for k, v in terms.items())
    opt.zero_grad(set_to_none=True)
    if inst is not None:
        inst.opt.zero_grad(set_to_none=True)
    total.backward()
    opt.step()
    if inst_on:
        inst.opt.step()
        if inst.strategy.due(it):
            pts = surface_points(bank, s.tokens.adjust_points, gen).to(model.device)
            with torch.no_grad():
                A = inst.branch.probs(model.instance_keys(pts), pts)               # [M, N]
            inst.strategy.step(it, inst.branch.tokens, pts.cpu(), A.cpu(), optimizer=inst.opt)
    vals = {k: float(v.detach()) for k, v in terms.items()}
    vals["total"] = float(total.detach())
    vals.update(stats)
    return vals


# ----------------------------------------------------------------------------- setup

def make_optimizer(model: SceneModel, s: FitSettings, branch: InstanceBranch | None = None) -> torch.optim.Optimizer:
    """Adam over the fields (hash grids; MLPs and the token class head). The per-token parameters,
    whose count changes, have their own optimiser (make_token_optimizer)."""
    head = list(branch.class_head.parameters()) if branch is not None else []
    groups = [{"params": model.grid_parameters(), "lr": s.train.lr_grid, "eps": 1e-15},
              {"params": model.mlp_parameters() + head, "lr": s.train.lr_mlp, "weight_decay": 1e-6}]
    # fused=True: one kernel over all tensors; 6x faster than the default on the large hash tables on CPU
    return torch.optim.Adam(groups, betas=(0.9, 0.99), fused=True)


def make_token_optimizer(tokens, s: FitSettings) -> torch.optim.Optimizer:
    """Adam over the token parameters: means, shape (quaternions, log-scales), features."""
    t = s.tokens
    return torch.optim.Adam([{"params": [tokens.means], "lr": t.lr_means},
                             {"params": [tokens.quats, tokens.log_scales], "lr": t.lr_shape},
                             {"params": [tokens.features, tokens.class_features], "lr": t.lr_features}],
                            betas=(0.9, 0.99))


TOKEN_LR_KEYS = ("lr_means", "lr_shape", "lr_features")


def lr_factor(it: int, s: FitSettings) -> float:
    """Exponential decay from 1 to lr_final_factor over the run."""
    return s.train.lr_final_factor ** (min(it, s.train.iters) / max(1, s.train.iters))


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
        raise MemoryError_(f"these settings need about {need / (1 << 30):.1f} GiB (frames, hash grids with Adam "
                           f"state, per-step activations) but the limit is {limit / (1 << 30):.1f} GiB; lower "
                           "model.*_grid.log2_hashmap_size, train.rays_per_iter or the number of samples")
    if device is not None and device.type == "cuda":
        need_gpu = need - bank_bytes(n_train, scene.width, scene.height)
        total = torch.cuda.get_device_properties(device).total_memory
        if need_gpu > 0.9 * total:
            raise MemoryError_(f"these settings need about {need_gpu / (1 << 30):.1f} GiB on {device} (hash grids "
                               f"with Adam state, per-step activations) but it has {total / (1 << 30):.1f} GiB; lower "
                               "model.*_grid.log2_hashmap_size or train.rays_per_iter, or use train.device=cpu")
    return need


class MemoryError_(ValueError):
    """Settings estimated to need more memory than allowed (raised before any work)."""


@dataclass
class FitResult:
    run: Path
    iterations: int
    fit_seconds: float
    mesh_path: Path | None


def _rng_state(gen: torch.Generator) -> dict:
    return {"torch_gen": gen.get_state(), "torch_global": torch.get_rng_state()}


def save_checkpoint(run: Path, it: int, model: SceneModel, opt, gen: torch.Generator, fit_seconds: float,
                    inst: InstanceState | None = None, keep: int = 0) -> Path:
    """Write checkpoints/ckpt_<it>.pt and last.pt (a copy), each via a temporary file; then delete
    all but the newest `keep` numbered checkpoints (keep 0 = delete none)."""
    ckpt_dir = run / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    path = ckpt_dir / f"ckpt_{it:06d}.pt"
    tmp = path.with_suffix(".pt.tmp")
    state = {"iter": it, "model": model.state_dict(), "optimizer": opt.state_dict(), "rng": _rng_state(gen),
             "fit_seconds": fit_seconds, "box": model.box_dict()}
    if inst is not None:
        # the token count changes during training: store the tokens on their own so that a module of
        # the right size can be built before loading (InstanceTokens.from_state_dict)
        state["instance"] = {"tokens": inst.branch.tokens.state_dict(),
                             "class_head": inst.branch.class_head.state_dict(),
                             "thing_ids": inst.branch.thing_ids, "optimizer": inst.opt.state_dict(),
                             "strategy": inst.strategy.state_dict()}
    torch.save(state, tmp)
    tmp.replace(path)
    shutil.copyfile(path, ckpt_dir / "last.pt.tmp")
    (ckpt_dir / "last.pt.tmp").replace(ckpt_dir / "last.pt")
    if keep > 0:
        for old in sorted(ckpt_dir.glob("ckpt_*.pt"))[:-keep]:   # zero-padded names sort by iteration
            old.unlink()
    return path


def instance_branch_wanted(scene: Scene, s: FitSettings) -> bool:
    """The instance branch runs when enabled, the scene has masks and at least one thing class."""
    return bool(s.tokens.enabled and scene.has_masks and scene.thing_ids())


def build_model_for_scene(scene: Scene, s: FitSettings, train_idx: list[int], box: dict | None = None,
                          with_instance: bool | None = None) -> SceneModel:
    if box is None:
        box = scene_box(scene, train_idx, s.model.box_margin_m)
    if with_instance is None:
        with_instance = instance_branch_wanted(scene, s)
    return SceneModel(s, np.asarray(box["min"]), np.asarray(box["max"]), n_classes=scene.n_classes,
                      with_instance=with_instance)


def restore_branch(state: dict, scene: Scene, s: FitSettings) -> InstanceBranch:
    """The instance branch of a checkpoint's "instance" entry (tokens sized from the state)."""
    tokens = InstanceTokens.from_state_dict(state["tokens"])
    branch = InstanceBranch(tokens, list(state["thing_ids"]), scene.n_classes, s.tokens)
    branch.class_head.load_state_dict(state["class_head"])
    return branch


def make_instance_state(branch: InstanceBranch, s: FitSettings, log) -> InstanceState:
    rules = dataclasses.replace(s.tokens.adjust_rules, enabled=s.tokens.adjust and s.tokens.adjust_rules.enabled)
    return InstanceState(branch, make_token_optimizer(branch.tokens, s), make_strategy(rules, log=log))


def train_indices(scene: Scene, s: FitSettings) -> list[int]:
    if s.data.split in scene.splits:
        idx = scene.split_indices(s.data.split)
    else:
        raise ConfigError(f"data.split '{s.data.split}' is not a split of {scene.root} (has: {list(scene.splits)})")
    if not idx:
        raise ConfigError(f"data.split '{s.data.split}' of {scene.root} has no frames")
    return idx


def _frame_label_fn(model: SceneModel, branch: InstanceBranch | None, scene: Scene, s: FitSettings):
    """frame index -> (semantic [H, W], instance [H, W]) rendered now (instance = token index + 1)."""
    from recon.labels import frame_labels

    def label_fn(i: int) -> tuple[np.ndarray, np.ndarray]:
        sem, tok = frame_labels(model, branch, scene, s, i)
        return sem, tok + 1                                                   # -1 (none) -> 0
    return label_fn


def fit(scene_dir: Path, run: Path, s: FitSettings, *, resume: bool = False, force: bool = False,
        progress: bool = True, stop_at: int | None = None, monitor=None) -> FitResult:
    """Train on `scene_dir` into the run folder `run` (validated and checked before any work).

    monitor(it, fit_seconds, label_fn) -> {name: value}, if given, is called every
    train.monitor_every iterations (and at the end) with label_fn(frame index) -> (semantic
    [H, W], instance [H, W]) rendered by the current model; its values are logged as
    monitor/<name> in metrics.csv (metric-vs-time curves). Its run time is not fit time.

    Ctrl-C (or `stop_at`, used by tests) stops after the current iteration with a checkpoint,
    so `fit --resume` continues exactly where it stopped (same schedule, same random stream).
    """
    scene = load_scene(scene_dir, skip_bad_frames=s.data.skip_bad_frames)
    resolved = to_dict(s)
    mode = check_run_folder(run, resolved, resume, force, defaults=to_dict(FitSettings()))
    train_idx = train_indices(scene, s)
    dev = resolve_device(s.train.device)
    check_memory(scene, len(train_idx), s, scene.n_classes, dev)
    if mode == "replace":
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    save_config(s, run / "config.yaml")
    atomic_write_text(run / "scene.txt", str(Path(scene_dir).resolve()) + "\n")
    log = RunLog(run, append=(mode == "resume"))
    if s.train.threads > 0:
        torch.set_num_threads(s.train.threads)
    if not scene.has_masks:
        log.info(f"{scene.root} has no masks/: fitting geometry and colour only (semantic branch off)")

    torch.manual_seed(s.train.seed)
    gen = torch.Generator().manual_seed(s.train.seed)
    start_it, fit_seconds = 0, 0.0
    box = None
    ckpt = None
    if mode == "resume":
        last = run / "checkpoints" / "last.pt"
        if not last.is_file():
            raise FileExistsError(f"{run} has no checkpoint to resume from ({last} missing)")
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
        box = ckpt["box"]
    with_inst = instance_branch_wanted(scene, s)
    if s.tokens.enabled and scene.has_masks and not with_inst:
        log.info(f"{scene.root} has no thing classes: instance branch off")
    model = build_model_for_scene(scene, s, train_idx, box, with_instance=with_inst)
    log.info(f"device: {describe(dev)}")
    bank = build_frame_bank(scene, train_idx, with_masks=True)
    far = far_plane(bank, s)
    inst: InstanceState | None = None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        model.to(dev)                                     # before the optimisers: their state follows the params
        if with_inst:
            inst = make_instance_state(restore_branch(ckpt["instance"], scene, s).to(dev), s, log.info)
            inst.opt.load_state_dict(ckpt["instance"]["optimizer"])
            inst.strategy.load_state_dict(ckpt["instance"]["strategy"])
        opt = make_optimizer(model, s, inst.branch if inst else None)
        opt.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["rng"]["torch_gen"])
        torch.set_rng_state(ckpt["rng"]["torch_global"])
        start_it, fit_seconds = int(ckpt["iter"]), float(ckpt["fit_seconds"])
        log.info(f"resuming {run} at iteration {start_it}")
    else:
        log.info(f"fitting {scene.root} ({len(train_idx)} training frames of {len(scene)}) into {run}")
        model.to(dev)
        if with_inst:
            tokens = init_tokens_from_bank(bank, scene.thing_ids(), s.tokens, gen, log=log.info)
            branch0 = InstanceBranch(tokens, scene.thing_ids(), scene.n_classes, s.tokens).to(dev)
            inst = make_instance_state(branch0, s, log.info)
        opt = make_optimizer(model, s, inst.branch if inst else None)

    t0 = time.perf_counter()
    end = s.train.iters if stop_at is None else min(stop_at, s.train.iters)
    bar = tqdm(total=s.train.iters, initial=start_it, disable=not progress, dynamic_ncols=True, desc="fit",
               mininterval=1.0)
    done = start_it
    vals: dict[str, float] = {}
    try:
        for it in range(start_it, end):
            for g, base in zip(opt.param_groups, (s.train.lr_grid, s.train.lr_mlp)):
                g["lr"] = base * lr_factor(it, s)
            if inst is not None:
                for g, key in zip(inst.opt.param_groups, TOKEN_LR_KEYS):
                    g["lr"] = getattr(s.tokens, key) * lr_factor(it, s)
            vals = train_step(model, opt, bank, s, it, gen, far, inst)
            if not math.isfinite(vals["total"]):
                raise FloatingPointError(f"loss became {vals['total']} at iteration {it}; see {run / 'log.txt'}")
            done = it + 1
            if done % s.train.log_every == 0 or done == s.train.iters:
                log.scalars(done, {**{f"loss/{k}": v for k, v in vals.items()},
                                   "time/seconds": fit_seconds + time.perf_counter() - t0,
                                   "lr/grid": opt.param_groups[0]["lr"]})
                bar.set_postfix({k: f"{v:.3g}" for k, v in vals.items()
                                 if k in ("total", "sdf", "depth", "rgb", "sem", "ins", "pan", "tokens")})
            bar.update(1)
            if monitor is not None and s.train.monitor_every > 0 and (
                    done % s.train.monitor_every == 0 or done == s.train.iters):
                t_pause = time.perf_counter()
                label_fn = _frame_label_fn(model, inst.branch if inst else None, scene, s)
                mvals = monitor(done, fit_seconds + t_pause - t0, label_fn)
                log.scalars(done, {f"monitor/{k}": float(v) for k, v in mvals.items()})
                t0 += time.perf_counter() - t_pause          # monitoring is not fit time
            if done % s.train.checkpoint_every == 0 and done < s.train.iters:
                save_checkpoint(run, done, model, opt, gen, fit_seconds + time.perf_counter() - t0, inst,
                                keep=s.train.keep_checkpoints)
    except KeyboardInterrupt:
        bar.close()
        save_checkpoint(run, done, model, opt, gen, fit_seconds + time.perf_counter() - t0, inst,
                        keep=s.train.keep_checkpoints)
        log.info(f"interrupted after iteration {done}: checkpoint saved; continue with 'fit --resume'")
        log.close()
        raise
    bar.close()
    synchronize(dev)
    fit_seconds += time.perf_counter() - t0
    save_checkpoint(run, done, model, opt, gen, fit_seconds, inst, keep=s.train.keep_checkpoints)
    log.info(f"trained {done} iterations in {fit_seconds:.1f} s"
             + (" (last losses: " + ", ".join(f"{k} {v:.4g}" for k, v in vals.items()) + ")" if vals else ""))
    if done < s.train.iters:
        log.info(f"stopped after iteration {done} of {s.train.iters}; continue with 'fit --resume'")
        log.close()
        return FitResult(run, done, fit_seconds, None)
    iters_done = done

    from recon.export_mesh import export_run_mesh
    t_mesh = time.perf_counter()
    branch = inst.branch if inst is not None else None
    mesh_path = export_run_mesh(run, model, scene, bank, s, log, branch=branch)
    mesh_seconds = time.perf_counter() - t_mesh
    from recon.labels import write_heldout_depth
    write_heldout_depth(run, model, scene, s, log=log.info, progress=progress)
    if scene.has_masks:
        from recon.labels import write_run_labels
        t_lab = time.perf_counter()
        write_run_labels(run, model, branch, scene, s, log=log.info, progress=progress)
        log.info(f"label images of all {len(scene)} frames in {time.perf_counter() - t_lab:.1f} s")
    timing = {"fit_seconds": round(fit_seconds, 2), "mesh_seconds": round(mesh_seconds, 2),
              "iterations": iters_done, "peak_rss_mb": round(peak_rss_mb(), 1),
              "threads": torch.get_num_threads(), "device": describe(dev)}
    if dev.type == "cuda":
        timing["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(dev) / (1 << 20), 1)
    atomic_write_text(run / "timing.json", json.dumps(timing, indent=1) + "\n")
    log.info(f"wrote {mesh_path} (meshing {mesh_seconds:.1f} s); peak memory {timing['peak_rss_mb']:.0f} MiB")
    log.close()
    return FitResult(run, iters_done, fit_seconds, mesh_path)


def load_run(run: Path) -> tuple[FitSettings, SceneModel, Scene]:
    """Settings, trained model (last checkpoint) and scene of a run folder."""
    s, model, _, scene = load_run_full(run)
    return s, model, scene


def load_run_full(run: Path, device: str | None = None
                  ) -> tuple[FitSettings, SceneModel, InstanceBranch | None, Scene]:
    """Settings, trained model, instance branch (None without one) and scene of a run folder, on
    `device` (default: the run's train.device setting; "auto" = CUDA where available)."""
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(f"{run} is not a run folder (no config.yaml)")
    s = load_config(FitSettings, run / "config.yaml")
    scene = load_scene(Path((run / "scene.txt").read_text().strip()), skip_bad_frames=s.data.skip_bad_frames,
                       check_images=False)
    ckpt_path = run / "checkpoints" / "last.pt"
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"{run} has no checkpoint ({ckpt_path})")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    model = build_model_for_scene(scene, s, train_indices(scene, s), ckpt["box"], with_instance="instance" in ckpt)
    model.load_state_dict(ckpt["model"])
    dev = resolve_device(device if device is not None else s.train.device)
    model.to(dev).eval()
    branch = restore_branch(ckpt["instance"], scene, s).to(dev).eval() if "instance" in ckpt else None
    return s, model, branch, scene


# ----------------------------------------------------------------------------- commands

def fit_command(args) -> int:
    s = load_config(FitSettings, args.config, args.overrides)
    if args.skip_bad_frames:
        s.data.skip_bad_frames = True
    try:
        fit(args.scene, args.out, s, resume=args.resume, force=args.force)
    except (MemoryError_, DeviceError) as exc:
        from recon.commands import UserError
        raise UserError(str(exc)) from exc
    return 0


def render_command(args) -> int:
    from recon.render_images import render_run_images
    render_run_images(args.run, args.frames)
    return 0


def demo_command(args) -> int:
    """synth room -> fit -> eval, skipping the steps whose outputs exist (unless --force)."""
    from eval.evaluate import evaluate_run
    from recon.data.make_synth import make_synth_scene
    from recon.schema import SynthSettings
    out = Path(args.out)
    scene_dir, run = out / "room", out / "run"
    if args.force or not (scene_dir / "classes.json").is_file():
        make_synth_scene(load_config(SynthSettings, Path(__file__).resolve().parents[1] / "configs" / "synth.yaml"),
                         scene_dir, overwrite=True)
    s = load_config(FitSettings, args.config, args.overrides)
    if args.force or not (run / "mesh.ply").is_file():
        fit(scene_dir, run, s, force=True)
    metrics = evaluate_run(run, scene_dir)
    print(json.dumps(metrics, indent=1))
    return 0
