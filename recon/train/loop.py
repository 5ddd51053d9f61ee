"""The training loop: staged schedule, Adam, checkpoints, exact resume, logs, callbacks.

A run folder holds config.yaml (resolved settings), scene.txt, log.txt, metrics.csv, tb/ (TensorBoard),
checkpoints/ckpt_<iteration>.pt (+ last.pt) and timing.json. What is made after training (mesh, label
images, held-out depth) comes from callbacks (recon/train/callbacks.py) that the caller passes in;
the loop knows none of them (app/pipeline.py composes the default set).
"""
from __future__ import annotations

import json
import math
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from fields.stages import stage
from recon.core.config import save_config, to_dict
from recon.core.device import describe, resolve_device, synchronize
from recon.core.faults import fault_point
from recon.core.io import atomic_write_text, check_replaceable, remove_stale_temporaries, write_marker
from recon.core.runfolder import (RunLock, RunLog, check_run_folder, clear_run_folder, may_hold_run,
                                 peak_rss_mb)
from recon.core.settings import FitSettings
from recon.data.scene import load_scene
from recon.model.inference import far_plane
from recon.model.instance_branch import InstanceBranch, init_tokens_from_bank
from recon.model.sampling import build_frame_bank
from recon.model.inference import sdf_and_gradient
from recon.train.appearance import (gaussian_state_dict, gaussian_step, new_gaussian_state, restore_gaussian_state)
from recon.train.callbacks import Callback, FitContext
from recon.train.checkpoint import CheckpointError, has_checkpoint, load_checkpoint, save_checkpoint
from recon.train.memory import check_memory, check_mesh_budget
from recon.train.optim import TOKEN_LR_KEYS, lr_factor, make_optimizer
from recon.train.runs import (build_model_for_scene, instance_branch_wanted, make_instance_state, restore_branch,
                              train_indices)
from recon.train.step import InstanceState, train_step


@dataclass
class FitResult:
    run: Path
    iterations: int
    fit_seconds: float
    finished: bool                      # the fit reached train.iters (the callbacks' on_fit_end ran)


FIRST_ITERS = 10      # the time per iteration is measured on this many and logged with the time left


def fit(scene_dir: Path, run: Path, s: FitSettings, *, resume: bool = False, force: bool = False,
        progress: bool = True, stop_at: int | None = None, callbacks: list[Callback] = ()) -> FitResult:
    """Train on `scene_dir` into the run folder `run` (validated and checked before any work).

    callbacks: hooks called in order (recon/train/callbacks.py); their time is not fit time. When the
    fit reaches train.iters their on_fit_end runs after the final checkpoint, then RUN/timing.json is
    written (fit_seconds, iterations, peak_rss_mb, threads, device and what the callbacks added).

    Ctrl-C (or `stop_at`, used by tests) stops after the current iteration with a checkpoint,
    so `fit --resume` continues exactly where it stopped (same schedule, same random stream).

    One process writes a run at a time (RunLock); `force` replaces only a run folder of ours and never
    the scene or a folder holding it. Every check runs before anything is written.
    """
    run, scene_dir = Path(run), Path(scene_dir)
    check_replaceable(run, "run", may_hold_run, inputs=(scene_dir,))       # before the lock creates anything
    created = not run.exists()
    lock = RunLock(run, f"fit {'--resume ' if resume else ''}into {run}", create=True)
    try:
        lock.acquire()
    except BaseException:
        if created:
            shutil.rmtree(run, ignore_errors=True)
        raise
    try:
        try:
            scene = load_scene(scene_dir, skip_bad_frames=s.data.skip_bad_frames)
            mode = check_run_folder(run, to_dict(s), resume, force, defaults=to_dict(FitSettings()),
                                    inputs=(scene_dir,))
            train_idx = train_indices(scene, s)
            dev = resolve_device(s.train.device)
            need = check_memory(scene, len(train_idx), s, scene.n_classes, dev)
            check_mesh_budget(scene, s)
            notes: list[str] = [f"estimated peak memory {need / (1 << 30):.2f} GiB (frames, hash grids with Adam "
                                "state, per-step activations; fits the limit, see data.max_memory_gb)"]
            if mode == "resume" and not has_checkpoint(run):    # killed before its first checkpoint: nothing to
                mode = "replace"                                 # continue from, so the same run starts over
                notes.append(f"{run} has no checkpoint yet (stopped before iteration {s.train.checkpoint_every}): "
                             "starting it from iteration 0")
            ckpt = load_checkpoint(run, log=notes.append)[0] if mode == "resume" else None
        except BaseException:
            if created:                                   # refused before any work: leave no empty folder behind
                lock.release()
                shutil.rmtree(run, ignore_errors=True)
            raise
        return _fit_locked(scene, scene_dir, run, s, mode, ckpt, notes, train_idx, dev, lock, progress, stop_at,
                           callbacks)
    finally:
        lock.release()


def _fit_locked(scene, scene_dir: Path, run: Path, s: FitSettings, mode: str, ckpt: dict | None, notes: list[str],
                train_idx: list[int], dev, lock: RunLock, progress: bool, stop_at: int | None, callbacks) -> FitResult:
    if mode == "replace":
        clear_run_folder(run)
    write_marker(run, "run")
    remove_stale_temporaries(run, recursive=True, log=lambda m: None)
    save_config(s, run / "config.yaml")
    atomic_write_text(run / "scene.txt", str(scene_dir.resolve()) + "\n")
    log = RunLog(run, append=(mode == "resume"), resume_at=None if ckpt is None else int(ckpt["iter"]))
    for note in notes:
        log.info(note)
    if lock.stale:
        log.info(f"the previous writer of {run} ended without releasing it ({lock.stale})")
    if s.train.threads > 0:
        torch.set_num_threads(s.train.threads)
    if not scene.has_masks:
        log.info(f"{scene.root} has no masks/: fitting geometry and colour only (semantic branch off)")

    torch.manual_seed(s.train.seed)
    gen = torch.Generator().manual_seed(s.train.seed)
    start_it, fit_seconds = 0, 0.0
    box = None if ckpt is None else ckpt["box"]
    with_inst = instance_branch_wanted(scene, s)
    if s.tokens.enabled and scene.has_masks and not with_inst:
        log.info(f"{scene.root} has no thing classes: instance branch off")
    model = build_model_for_scene(scene, s, train_idx, box, with_instance=with_inst)
    log.info(f"device: {describe(dev)}")
    bank = build_frame_bank(scene, train_idx, with_masks=True)
    far = far_plane(bank, s)
    inst: InstanceState | None = None
    # the appearance branch has its own random stream, so the fields' draws are those of a fit without it
    gs_wanted = s.appearance.branch in ("gaussians", "both") and s.appearance.steps_per_iter > 0
    gen_gs = torch.Generator().manual_seed(s.train.seed + 7919)
    gstate = None
    if ckpt is not None and gs_wanted and "appearance" not in ckpt:
        raise CheckpointError(f"{run}: its checkpoint has no Gaussians (fitted with appearance.branch=colour_head "
                              "or before the appearance branch existed): resume with appearance.branch=colour_head")
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
        if gs_wanted:
            gstate = restore_gaussian_state(ckpt["appearance"], s, dev, log=log.info)
            gen_gs.set_state(ckpt["appearance"]["gen"])
        log.info(f"resuming {run} at iteration {start_it}")
    else:
        log.info(f"fitting {scene.root} ({len(train_idx)} training frames of {len(scene)}) into {run}")
        model.to(dev)
        if with_inst:
            tokens = init_tokens_from_bank(bank, scene.thing_ids(), s.tokens, gen, log=log.info)
            branch0 = InstanceBranch(tokens, scene.thing_ids(), scene.n_classes, s.tokens,
                                     keep_untokened_classes=s.panoptic.keep_untokened_classes).to(dev)
            inst = make_instance_state(branch0, s, log.info)
        opt = make_optimizer(model, s, inst.branch if inst else None)
        if gs_wanted:
            gstate = new_gaussian_state(bank, s, gen_gs, dev, log=log.info)

    def ckpt_appearance() -> dict | None:
        return None if gstate is None else {**gaussian_state_dict(gstate), "gen": gen_gs.get_state()}

    ctx = FitContext(run=run, settings=s, scene=scene, model=model, branch=inst.branch if inst else None,
                     bank=bank, log=log, device=dev, progress=progress, fit_seconds=fit_seconds,
                     gaussians=gstate.g if gstate is not None else None)
    t0 = time.perf_counter()

    def run_callbacks(hook: str, *args, only=None) -> None:
        """Call `hook` on every callback (or those in `only`); the time it takes is taken out of the fit time."""
        nonlocal t0
        t_pause = time.perf_counter()
        ctx.fit_seconds = fit_seconds + t_pause - t0
        for cb in (callbacks if only is None else only):
            getattr(cb, hook)(ctx, *args)
        t0 += time.perf_counter() - t_pause

    run_callbacks("on_fit_start")
    steppers = [cb for cb in callbacks if type(cb).on_step_end is not Callback.on_step_end]   # the per-step hook
    end = s.train.iters if stop_at is None else min(stop_at, s.train.iters)
    bar = tqdm(total=s.train.iters, initial=start_it, disable=not progress, dynamic_ncols=True, desc="fit",
               mininterval=1.0)
    done = start_it
    vals: dict[str, float] = {}
    # Ctrl-C sets a flag checked after each iteration: a KeyboardInterrupt raised inside compiled code or an
    # autograd Function (the numba rasteriser) could otherwise be swallowed there and the fit keep running
    sigint: list[int] = []
    main = threading.current_thread() is threading.main_thread()
    prev_handler = signal.signal(signal.SIGINT, lambda *_: sigint.append(1)) if main else None
    t_first = time.perf_counter()
    try:
        for it in range(start_it, end):
            for g, base in zip(opt.param_groups, (s.train.lr_grid, s.train.lr_mlp)):
                g["lr"] = base * lr_factor(it, s)
            if inst is not None:
                for g, key in zip(inst.opt.param_groups, TOKEN_LR_KEYS):
                    g["lr"] = getattr(s.tokens, key) * lr_factor(it, s)
            vals = train_step(model, opt, bank, s, it, gen, far, inst)
            if gstate is not None:
                tie = ((lambda x: sdf_and_gradient(model, x)) if it >= s.train.geometry_only_iters else None)
                with stage("appearance (gaussians)"):
                    for _ in range(s.appearance.steps_per_iter):
                        vals.update(gaussian_step(gstate, bank, s, it, gen_gs, sdf_fn=tie))
            if not math.isfinite(vals["total"]) or not math.isfinite(vals.get("gs_total", 0.0)):
                raise FloatingPointError(f"loss became {vals['total']} at iteration {it}; see {run / 'log.txt'}")
            done = it + 1
            if done % s.train.log_every == 0 or done == s.train.iters:
                log.scalars(done, {**{f"loss/{k}": v for k, v in vals.items()},
                                   "time/seconds": fit_seconds + time.perf_counter() - t0,
                                   "lr/grid": opt.param_groups[0]["lr"]})
                bar.set_postfix({k: f"{v:.3g}" for k, v in vals.items()
                                 if k in ("total", "sdf", "depth", "rgb", "sem", "ins", "pan", "tokens", "gs_l1",
                                          "gaussians")})
            bar.update(1)
            if done == start_it + FIRST_ITERS and done < end:
                per_it = (time.perf_counter() - t_first) / FIRST_ITERS
                log.info(f"the first {FIRST_ITERS} iterations took {per_it:.3f} s each: about "
                         f"{per_it * (end - done) / 60:.1f} min for the {end - done} left (before meshing)")
            if sigint:
                raise KeyboardInterrupt
            if steppers:
                run_callbacks("on_step_end", done, vals, only=steppers)
            if done % s.train.checkpoint_every == 0 and done < s.train.iters:
                save_checkpoint(run, done, model, opt, gen, fit_seconds + time.perf_counter() - t0, inst,
                                keep=s.train.keep_checkpoints, appearance=ckpt_appearance())
                fault_point("training")
    except KeyboardInterrupt:
        if main:
            signal.signal(signal.SIGINT, prev_handler)
        bar.close()
        save_checkpoint(run, done, model, opt, gen, fit_seconds + time.perf_counter() - t0, inst,
                        keep=s.train.keep_checkpoints, appearance=ckpt_appearance())
        log.info(f"interrupted after iteration {done}: checkpoint saved; continue with 'fit --resume'")
        log.close()
        raise
    except BaseException:
        if main:
            signal.signal(signal.SIGINT, prev_handler)
        raise
    if main:
        signal.signal(signal.SIGINT, prev_handler)
    bar.close()
    synchronize(dev)
    fit_seconds += time.perf_counter() - t0
    save_checkpoint(run, done, model, opt, gen, fit_seconds, inst, keep=s.train.keep_checkpoints,
                    appearance=ckpt_appearance())
    log.info(f"trained {done} iterations in {fit_seconds:.1f} s"
             + (" (last losses: " + ", ".join(f"{k} {v:.4g}" for k, v in vals.items()) + ")" if vals else ""))
    if done < s.train.iters:
        log.info(f"stopped after iteration {done} of {s.train.iters}; continue with 'fit --resume'")
        log.close()
        return FitResult(run, done, fit_seconds, finished=False)

    ctx.fit_seconds = fit_seconds
    model.eval()
    for cb in callbacks:
        cb.on_fit_end(ctx)
    timing = {"fit_seconds": round(fit_seconds, 2), **ctx.timing, "iterations": done,
              "peak_rss_mb": round(peak_rss_mb(), 1), "threads": torch.get_num_threads(), "device": describe(dev)}
    if dev.type == "cuda":
        timing["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(dev) / (1 << 20), 1)
    atomic_write_text(run / "timing.json", json.dumps(timing, indent=1) + "\n")
    log.info(f"fit done; peak memory {timing['peak_rss_mb']:.0f} MiB")
    log.close()
    return FitResult(run, done, fit_seconds, finished=True)
