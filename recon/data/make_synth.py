"""Synthetic scene folder: procedural scene + simulated masks, written in the scene format."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from recon.core.config import ConfigError, to_dict
from recon.data.mask_sim import NOISE_LEVELS, noise_config, simulate_scene_masks
from recon.core.io import check_replaceable
from recon.data.scene import FrameRecord, is_scene_folder, write_scene
from recon.core.runfolder import available_memory_bytes
from recon.data.synth import CONFUSABLE, PRESETS, default_frames, generate_scene
from recon.data.ply import write_ply
from recon.core.settings import SynthSettings


def check_synth_settings(s: SynthSettings) -> None:
    """Raise ConfigError for settings that cannot work, before any generation starts."""
    if s.preset not in PRESETS:
        raise ConfigError(f"unknown preset '{s.preset}'; choose one of {', '.join(PRESETS)}")
    if s.noise not in NOISE_LEVELS:
        raise ConfigError(f"unknown noise level '{s.noise}'; choose one of {', '.join(NOISE_LEVELS)}")
    try:
        noise_config(s.noise, **s.masks)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"masks overrides: {exc}") from exc
    need = synth_bytes(s)
    limit = 0.8 * available_memory_bytes()
    if need > limit:
        w, h = s.size
        raise ConfigError(f"a {s.preset} of {synth_frames(s)} frames at {w}x{h} needs about {need / (1 << 30):.1f} GiB "
                          f"while it is made, above the {limit / (1 << 30):.1f} GiB this machine has free; use a "
                          f"smaller --size or fewer --frames")


SYNTH_BASE_BYTES = 700 << 20      # measured peaks: room 60 frames 0.81 GB at 160x120, 1.92 at 640x480;
SYNTH_BYTES_PER_PIXEL = 130       # 1280x960: 1.32 GB for 4 frames, 3.04 for 16 (117 bytes per pixel of every frame)


def synth_frames(s: SynthSettings) -> int:
    return int(s.frames) if s.frames is not None else default_frames(s.preset)


def synth_bytes(s: SynthSettings) -> float:
    """Peak memory of making the scene of `s` (linear fit of measured peaks, see SYNTH_* above)."""
    w, h = s.size
    return SYNTH_BASE_BYTES + synth_frames(s) * w * h * SYNTH_BYTES_PER_PIXEL


def confusable_ids(name_to_id: dict[str, int]) -> dict[int, list[int]]:
    """CONFUSABLE (class names) as class ids of this scene; pairs with an absent class are dropped."""
    return {name_to_id[a]: [name_to_id[b] for b in bs if b in name_to_id]
            for a, bs in CONFUSABLE.items() if a in name_to_id}


def frame_splits(n_frames: int, holdout_every: int) -> dict[str, list[str]]:
    """Every `holdout_every`-th frame (4, 9, ... for 5) is held out of training; eval uses all frames."""
    ids = [f"{i:06d}" for i in range(n_frames)]
    if holdout_every <= 0:
        return {"train": ids, "eval": ids}
    return {"train": [f for i, f in enumerate(ids) if (i + 1) % holdout_every != 0], "eval": ids}


def make_synth_scene(settings: SynthSettings, out: Path, overwrite: bool = False, log=print) -> dict:
    """Generate the scene of `settings` into `out`; returns timing and counts."""
    check_synth_settings(settings)
    check_replaceable(Path(out), "scene", is_scene_folder)              # before any work
    if Path(out).exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --force to replace it")
    w, h = settings.size
    log(f"making a {settings.preset} of up to {synth_frames(settings)} frames at {w}x{h} into {out} (about "
        f"{synth_bytes(settings) / (1 << 30):.1f} GiB of memory at most)")
    t0 = time.perf_counter()
    scene = generate_scene(settings.preset, seed=settings.seed, size=tuple(settings.size), n_frames=settings.frames)
    t_gen = time.perf_counter() - t0
    thing_ids = {c["id"] for c in scene.classes if c["thing"]}
    confusable = confusable_ids({c["name"]: c["id"] for c in scene.classes})
    cfg = noise_config(settings.noise, **settings.masks)
    t1 = time.perf_counter()
    masks = simulate_scene_masks([f.gt_semantic for f in scene.frames], [f.gt_instance for f in scene.frames],
                                 thing_ids, confusable, cfg, seed=settings.seed)
    t_masks = time.perf_counter() - t1
    frames = (FrameRecord(color=f.color, c2w=f.c2w, depth_m=f.depth_m, mask_instance=m.instance,
                          mask_semantic=m.semantic, mask_scores=m.scores, gt_semantic=f.gt_semantic,
                          gt_instance=f.gt_instance) for f, m in zip(scene.frames, masks))
    meta = {"name": scene.name, "source": "synthetic", "depth_trunc_m": 12.0, "up_axis": "+z",
            "synth": to_dict(settings), "mask_noise": dataclasses.asdict(cfg), "generator": scene.meta,
            "instances": scene.instances, "room_of_frame": scene.room_of_frame}

    def write_mesh(path: Path) -> None:
        write_ply(path, scene.mesh_vertices, scene.mesh_faces,
                  vertex_props={"semantic": scene.mesh_vertex_semantic.astype(np.int32),
                                "instance": scene.mesh_vertex_instance.astype(np.int32)},
                  colors=scene.mesh_vertex_colors)

    t2 = time.perf_counter()
    write_scene(out, K=scene.K, frames=frames, classes=scene.classes,
                splits=frame_splits(len(scene.frames), settings.holdout_every), meta=meta,
                gt_mesh_writer=write_mesh, overwrite=overwrite)
    t_write = time.perf_counter() - t2
    stats = {"frames": len(scene.frames), "instances": len(scene.instances), "seconds_generate": round(t_gen, 2),
             "seconds_masks": round(t_masks, 2), "seconds_write": round(t_write, 2),
             "seconds_total": round(time.perf_counter() - t0, 2)}
    log(f"wrote {out}: {stats['frames']} frames {settings.size[0]}x{settings.size[1]}, {stats['instances']} "
        f"thing instances, noise '{settings.noise}' in {stats['seconds_total']:.1f} s "
        f"(scene {t_gen:.1f} s, masks {t_masks:.1f} s, writing {t_write:.1f} s)")
    return stats


def simulate_masks_for_scene(scene_dir: Path, noise: str, seed: int, overwrite: bool = False, log=print) -> None:
    """`segment --backend sim`: replace a scene's masks/ by simulated ones made from its gt/ images."""
    from recon.data.scene import load_scene, replace_masks
    scene = load_scene(scene_dir)
    if not scene.has_gt_images:
        raise ConfigError(f"{scene_dir}: the simulator needs gt/semantic and gt/instance images")
    if scene.has_masks and not overwrite:
        raise FileExistsError(f"{scene_dir / 'masks'} already exists; pass --force to replace it")
    if noise not in NOISE_LEVELS:
        raise ConfigError(f"unknown noise level '{noise}'; choose one of {', '.join(NOISE_LEVELS)}")
    confusable = confusable_ids({c.name: c.id for c in scene.classes})
    gts = [scene.load_gt(i) for i in range(len(scene))]
    masks = simulate_scene_masks([g[0] for g in gts], [g[1] for g in gts], set(scene.thing_ids()), confusable,
                                 noise_config(noise), seed=seed)
    replace_masks(scene_dir, ((fid, m.instance, m.semantic, m.scores) for fid, m in zip(scene.frame_ids, masks)))
    log(f"wrote simulated '{noise}' masks for {len(scene)} frames of {scene_dir}")
