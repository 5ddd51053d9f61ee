"""Procedural synthetic indoor scenes with exact ground truth (public entry point).

`generate_scene(preset, seed, size, n_frames)` returns an in-memory SynthScene:
RGB-D frames (exact ray-cast z-depth), OpenCV camera-to-world poses, GT
semantic / instance images and the GT mesh with per-vertex colour and labels.
Output is a pure function of the arguments (all randomness is derived from
`np.random.default_rng(seed)`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import open3d as o3d

from .camera import HFOV_DEG, intrinsics, perturb_pose, room_trajectory
from .classes import CLASS_ID, class_list
from .layout import LAYOUTS, Layout
from .render import (SceneMesh, build_scene_mesh, cast_frames, colour_images, label_images, make_raycaster,
                     vertex_colours)
from .walkthrough import WALK_FRAMES, WALK_PRESETS, layout_walk, walk_trajectory

PRESETS: tuple[str, ...] = ("room", "apartment", "clutter") + WALK_PRESETS   # walk: walkthrough.py
FRAMES_PER_ROOM = 60
MAX_ROOMS = {"room": 1, "apartment": 3, "clutter": 1}   # the apartment has 2 or 3 rooms, by seed


def default_frames(preset: str) -> int:
    """The most frames a preset makes when no frame count is given (its largest layout)."""
    return WALK_FRAMES if preset in WALK_PRESETS else FRAMES_PER_ROOM * MAX_ROOMS[preset]
GENERATOR_VERSION = "recon.data.synth/1"

# per-frame acceptance thresholds
MIN_CLEARANCE_M = 0.35       # camera centre to any surface (spec: never within 0.3 m of an object)
MIN_VALID_FRAC = 0.98        # rooms are closed, so nearly every ray hits
MIN_MEDIAN_DEPTH_M = 1.0     # no frame staring at a surface from close up
MAX_NEAR_FRAC = 0.05         # fraction of pixels closer than NEAR_M
NEAR_M = 0.4
MIN_THING_FRAC = 0.03        # look at the room's contents, not only at walls
YAW_TURNS_DEG = (10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 105.0, 120.0, 135.0, 150.0, 165.0)
RESAMPLE_LEVELS = (0.2, 0.4, 0.7, 1.0)
CANDIDATES_PER_LEVEL = 4
RAMP = 3                     # frames over which a run's corrective turn is ramped in / out
MAX_TURN_STEP_DEG = 25.0     # preferred largest change of corrective turn between frames
MIN_VIEWS = 3                # coverage: frames in which every thing must be visible ...
COVER_PX = 20                # ... with more than this many pixels at 160 x 120 (scaled with image area)
MIN_FRAMES_FOR_COVERAGE = 30  # per room; shorter (test) sequences skip the coverage rule


@dataclass
class SynthFrame:
    color: np.ndarray        # [H, W, 3] uint8 RGB
    depth_m: np.ndarray      # [H, W] float32 z-depth (m), 0 = no hit
    c2w: np.ndarray          # [4, 4] float64 camera-to-world, OpenCV axes
    gt_semantic: np.ndarray  # [H, W] uint16 class id, 0 = nothing
    gt_instance: np.ndarray  # [H, W] uint16 thing instance id, 0 = stuff / nothing


@dataclass
class SynthScene:
    name: str
    K: np.ndarray                     # [3, 3] float64
    width: int
    height: int
    frames: list[SynthFrame]
    classes: list[dict]
    mesh_vertices: np.ndarray         # [V, 3] float64
    mesh_faces: np.ndarray            # [F, 3] int32
    mesh_vertex_colors: np.ndarray    # [V, 3] uint8
    mesh_vertex_semantic: np.ndarray  # [V] int32
    mesh_vertex_instance: np.ndarray  # [V] int32
    instances: list[dict]
    room_of_frame: list[int]
    meta: dict = field(default_factory=dict)


# ---------------------------------------------------------------- frame checks
def _frames_ok(scene, hits_depth: np.ndarray, inst: np.ndarray, c2ws: np.ndarray, inst_room: np.ndarray,
               inst_class: np.ndarray, enforce_rooms: bool) -> np.ndarray:
    """[N] bool: which frames satisfy every acceptance rule (depth [N, H, W], instances [N, H, W])."""
    n = len(c2ws)
    assert hits_depth.shape[0] == n and inst.shape == hits_depth.shape
    eyes = o3d.core.Tensor(c2ws[:, :3, 3].astype(np.float32))
    clear = scene.compute_distance(eyes).numpy() >= MIN_CLEARANCE_M
    d = hits_depth.reshape(n, -1)
    valid = d > 0
    ok = clear & (valid.mean(1) >= MIN_VALID_FRAC)
    dd = np.where(valid, d, np.nan)
    with np.errstate(all="ignore"):
        med = np.nanmedian(dd, axis=1)
    ok &= np.nan_to_num(med, nan=0.0) >= MIN_MEDIAN_DEPTH_M
    ok &= (valid & (d < NEAR_M)).mean(1) <= MAX_NEAR_FRAC
    if len(inst_room) > 1:
        ok &= (inst.reshape(n, -1) > 0).mean(1) >= MIN_THING_FRAC
    if enforce_rooms:
        ok &= ~_cross_room_conflict(inst.reshape(n, -1), inst_room, inst_class)
    return ok


def _cross_room_conflict(inst: np.ndarray, inst_room: np.ndarray, inst_class: np.ndarray) -> np.ndarray:
    """[N] bool: frame shows (>= 1 pixel) two instances of one class that belong to different rooms."""
    bad = np.zeros(len(inst), bool)
    for i in range(len(inst)):
        ids = np.unique(inst[i])
        ids = ids[ids > 0]
        if len(ids) < 2:
            continue
        cls, rooms = inst_class[ids], inst_room[ids]
        for c in np.unique(cls):
            if len(np.unique(rooms[cls == c])) > 1:
                bad[i] = True
                break
    return bad


def _rotate_yaw(c2w: np.ndarray, angle: float) -> np.ndarray:
    """Turn a camera about the world z axis through its centre by `angle` (rad)."""
    c, s = np.cos(angle), np.sin(angle)
    out = c2w.copy()
    out[:3, :3] = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ c2w[:3, :3]
    return out


def _candidates(seed: int, f: int, c2w: np.ndarray, rect, round_idx: int) -> tuple[np.ndarray, np.ndarray]:
    """Replacement candidates [C, 4, 4] for frame f and their preference keys [C] (turn in degrees;
    random perturbations rank after every pure turn)."""
    poses, keys = [], []
    if round_idx == 0:
        for a in YAW_TURNS_DEG:
            for sgn in (1.0, -1.0):
                poses.append(_rotate_yaw(c2w, np.deg2rad(sgn * a)))
                keys.append(sgn * a)
    rng_f = np.random.default_rng([seed, 104729, f, round_idx])
    levels = RESAMPLE_LEVELS if round_idx == 0 else (1.0,) * len(RESAMPLE_LEVELS)
    for li, level in enumerate(levels):
        for _ in range(CANDIDATES_PER_LEVEL * (1 if round_idx == 0 else 2)):
            poses.append(perturb_pose(rng_f, c2w, rect, level))
            keys.append(1000.0 * (1 + li + round_idx * 10))
    return np.stack(poses), np.asarray(keys)


def _small_K(K: np.ndarray, width: int, height: int) -> tuple[np.ndarray, int, int]:
    """Intrinsics of a quarter-resolution screening camera with the same field of view."""
    sw, sh = max(16, width // 4), max(12, height // 4)
    k_small = K.copy()
    k_small[:2, :2] *= sw / width
    k_small[0, 2], k_small[1, 2] = (sw - 1) / 2.0, (sh - 1) / 2.0
    return k_small, sw, sh


def _smooth_turns(feasible: np.ndarray, turns: np.ndarray) -> np.ndarray | None:
    """Per-frame turn indices [W] minimising total turn variation over a window (Viterbi).

    feasible [W, T] bool; the frames just outside the window keep turn 0.
    Steps above MAX_TURN_STEP_DEG are penalised heavily. None if no path exists."""
    step = np.abs(turns[:, None] - turns[None, :])                           # [T, T]
    step = step + 10.0 * np.maximum(0.0, step - MAX_TURN_STEP_DEG)
    zero = int(np.argmin(np.abs(turns)))
    cost = np.where(feasible[0], step[zero], np.inf)                         # [T]
    back = []
    for w in range(1, len(feasible)):
        total = cost[:, None] + step                                         # [T_prev, T]
        arg = np.argmin(total, axis=0)
        back.append(arg)
        cost = np.where(feasible[w], total[arg, np.arange(len(turns))], np.inf)
    cost = cost + step[:, zero]
    if not np.isfinite(cost.min()):
        return None
    path = [int(np.argmin(cost))]
    for arg in reversed(back):
        path.append(int(arg[path[-1]]))
    return np.asarray(path[::-1])


def _fix_runs(K, width, height, c2ws, ok, room_of_frame, check):
    """Turn runs of failing frames about z with a smoothly varying angle (ramped in / out over
    RAMP neighbouring frames), so the trajectory stays smooth. Returns poses, ok, {frame: hits}."""
    c2ws, ok = c2ws.copy(), ok.copy()
    new_hits: dict[int, tuple] = {}
    k_small, sw, sh = _small_K(K, width, height)
    rooms = np.asarray(room_of_frame)
    turns = np.asarray(sorted([0.0, 180.0] + [sgn * a for a in YAW_TURNS_DEG for sgn in (1.0, -1.0)]))
    zero = int(np.argmin(np.abs(turns)))
    runs: list[list[int]] = []
    for f in np.nonzero(~ok)[0]:
        if runs and runs[-1][-1] >= f - 2 * RAMP and rooms[f] == rooms[runs[-1][-1]]:
            runs[-1].append(int(f))                                          # close runs share a window
        else:
            runs.append([int(f)])
    for run in runs:
        lo, hi = run[0], run[-1]
        while lo - 1 >= 0 and rooms[lo - 1] == rooms[run[0]] and run[0] - lo < RAMP:
            lo -= 1
        while hi + 1 < len(c2ws) and rooms[hi + 1] == rooms[run[0]] and hi - run[-1] < RAMP:
            hi += 1
        frames = list(range(lo, hi + 1))
        cand = np.stack([_rotate_yaw(c2ws[f], np.deg2rad(t)) for f in frames for t in turns])
        feasible, _ = check(cand, k_small, sw, sh)
        feasible = feasible.reshape(len(frames), len(turns))
        feasible[:, zero] = ok[frames]                                       # unturned: full-size result
        for _ in range(8):
            path = _smooth_turns(feasible, turns)
            if path is None:
                break
            changed = [j for j, f in enumerate(frames) if path[j] != zero]
            if not changed:
                break
            poses = np.stack([cand[j * len(turns) + path[j]] for j in changed])
            verified, hits = check(poses)
            if verified.all():
                for k, j in enumerate(changed):
                    f = frames[j]
                    c2ws[f], ok[f] = poses[k], True
                    new_hits[f] = (hits.depth_m[k], hits.prim[k], hits.uv[k])
                break
            for k, j in enumerate(changed):
                if not verified[k]:
                    feasible[j, path[j]] = False
    return c2ws, ok, new_hits


def _resample_frames(seed, K, width, height, c2ws, ok, layout, room_of_frame, check):
    """Replace failing poses by nearby valid ones (seeded, deterministic).

    Candidates per failing frame: the same pose turned about z by increasing
    angles, then random position / heading perturbations. All candidates are
    screened at quarter resolution; the preferred passing candidate (smallest
    turn, continuing the previous frame's turn) is then verified at full size.
    Returns the new poses, the ok mask and {frame: full-size hits} of replaced frames.
    """
    c2ws, ok = c2ws.copy(), ok.copy()
    new_hits: dict[int, tuple] = {}
    k_small, sw, sh = _small_K(K, width, height)
    turn_of: dict[int, float] = {}
    for round_idx in range(2):
        bad = [int(f) for f in np.nonzero(~ok)[0]]
        if not bad:
            break
        cand_pose, cand_key = {}, {}
        for f in bad:
            cand_pose[f], cand_key[f] = _candidates(seed, f, c2ws[f], layout.rooms[room_of_frame[f]].rect,
                                                    round_idx)
        screen, _ = check(np.concatenate([cand_pose[f] for f in bad]), k_small, sw, sh)
        passing, pos = {}, 0
        for f in bad:
            passing[f] = screen[pos:pos + len(cand_pose[f])].copy()
            pos += len(cand_pose[f])
        for _ in range(4):
            todo = [f for f in bad if not ok[f] and passing[f].any()]
            if not todo:
                break
            chosen: dict[int, int] = {}
            for f in todo:
                prev = turn_of.get(f - 1, 0.0)
                if f - 1 in chosen:
                    prev = cand_key[f - 1][chosen[f - 1]]
                prev = prev if abs(prev) < 1000.0 else 0.0
                cost = np.abs(cand_key[f] - prev) + 0.5 * np.abs(cand_key[f])
                chosen[f] = int(np.argmin(np.where(passing[f], cost, np.inf)))
            verified, hits = check(np.stack([cand_pose[f][chosen[f]] for f in todo]))
            for j, f in enumerate(todo):
                if verified[j]:
                    c2ws[f] = cand_pose[f][chosen[f]]
                    turn_of[f] = float(cand_key[f][chosen[f]])
                    ok[f] = True
                    new_hits[f] = (hits.depth_m[j], hits.prim[j], hits.uv[j])
                else:
                    passing[f][chosen[f]] = False
    return c2ws, ok, new_hits


def _split_frames(total: int, n_rooms: int) -> list[int]:
    base, extra = divmod(total, n_rooms)
    return [base + (1 if r < extra else 0) for r in range(n_rooms)]


# ---------------------------------------------------------------- main entry
def generate_scene(preset: str = "room", seed: int = 0, size: tuple[int, int] = (160, 120),
                   n_frames: int | None = None) -> SynthScene:
    """Generate a synthetic scene; deterministic in (preset, seed, size, n_frames)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {PRESETS}")
    seed = int(seed)
    assert seed >= 0, "seed must be a non-negative integer"
    width, height = int(size[0]), int(size[1])
    assert width >= 8 and height >= 8, size
    layout_rng, _ = np.random.default_rng(seed).spawn(2)
    layout: Layout = (layout_walk if preset in WALK_PRESETS else LAYOUTS[preset])(layout_rng)
    n_rooms = len(layout.rooms)
    total = (WALK_FRAMES if preset in WALK_PRESETS else FRAMES_PER_ROOM * n_rooms) if n_frames is None \
        else int(n_frames)
    assert total >= 1
    # coverage rule (only for real scans, >= MIN_FRAMES_FOR_COVERAGE frames per room): every thing is
    # seen in >= MIN_VIEWS frames with > COVER_PX pixels (scaled to the image size); a thing that the
    # trajectory cannot show (e.g. a box hidden in a corner) is removed and the scene re-rendered.
    enforce = total // n_rooms >= MIN_FRAMES_FOR_COVERAGE
    removed: list[str] = []
    for _ in range(3):
        scene, views, obj_of_inst = _render_layout(layout, preset, seed, width, height, total)
        weak = [o for i, o in enumerate(obj_of_inst) if views[i] < MIN_VIEWS and o.cls != "table"]
        if not enforce or not weak:
            break
        removed += [o.cls for o in weak]
        layout.objects = [o for o in layout.objects if not any(o is w for w in weak)]
    scene.meta["removed_for_coverage"] = removed
    return scene


def _render_layout(layout: Layout, preset: str, seed: int, width: int, height: int,
                   total: int) -> tuple[SynthScene, np.ndarray, list]:
    """Trajectories, validation and final images for a fixed layout. Also returns the per-instance
    view counts [I] (frames with > COVER_PX scaled pixels) and the object of each instance."""
    _, cam_rng = np.random.default_rng(seed).spawn(2)
    objects = layout.objects
    instance_ids, next_id = [], 1
    for obj in objects:
        if obj.stuff:
            instance_ids.append(0)
        else:
            instance_ids.append(next_id)
            next_id += 1
    n_inst = next_id - 1
    inst_room = np.full(n_inst + 1, -1, np.int64)      # [I+1] indexed by instance id
    inst_class = np.zeros(n_inst + 1, np.int64)
    for obj, iid in zip(objects, instance_ids):
        if iid > 0:
            inst_room[iid] = obj.room
            inst_class[iid] = CLASS_ID[obj.cls]

    mesh: SceneMesh = build_scene_mesh(objects, instance_ids)
    scene = make_raycaster(mesh.vertices, mesh.faces)
    K = intrinsics(width, height)

    # ---- trajectories: one loop per room
    n_rooms = len(layout.rooms)
    walk: dict = {}
    if preset in WALK_PRESETS:                         # one walk through all rooms (walkthrough.py)
        c2ws, room_of_frame, walk = walk_trajectory(cam_rng, layout, total)
    else:
        per_room = _split_frames(total, n_rooms)
        c2ws, room_of_frame = [], []
        for room, n_r in zip(layout.rooms, per_room):
            if n_r == 0:
                continue
            c2ws.append(room_trajectory(cam_rng, room.rect, n_r))
            room_of_frame += [room.index] * n_r
        c2ws = np.concatenate(c2ws, 0)                 # [N, 4, 4]
    room_of_frame_arr = np.asarray(room_of_frame)
    enforce_rooms = n_rooms > 1

    # ---- validate frames, re-sample (seeded) the ones that break a rule
    def check(poses: np.ndarray, k_mat: np.ndarray = K, w: int = width, h: int = height):
        hits = cast_frames(scene, k_mat, poses, w, h)
        _, inst, _ = label_images(mesh, hits.prim)
        return _frames_ok(scene, hits.depth_m, inst, poses, inst_room, inst_class, enforce_rooms), hits

    ok, hits = check(c2ws)
    n_resampled = int((~ok).sum())
    if n_resampled:
        c2ws, ok, new_hits = _fix_runs(K, width, height, c2ws, ok, room_of_frame, check)
        for f, (d, pr, uv) in new_hits.items():
            hits.depth_m[f], hits.prim[f], hits.uv[f] = d, pr, uv
    if not ok.all():
        c2ws, ok, new_hits = _resample_frames(seed, K, width, height, c2ws, ok, layout, room_of_frame, check)
        for f, (d, pr, uv) in new_hits.items():
            hits.depth_m[f], hits.prim[f], hits.uv[f] = d, pr, uv
    n_fallback = 0
    for f in np.nonzero(~ok)[0]:
        same = np.nonzero(ok & (room_of_frame_arr == room_of_frame[f]))[0]
        if len(same) == 0:
            raise RuntimeError(f"synth: no valid camera in room {room_of_frame[f]} (preset {preset}, seed {seed})")
        src = same[np.argmin(np.abs(same - f))]            # duplicate the nearest valid pose
        c2ws[f] = c2ws[src]
        hits.depth_m[f], hits.prim[f], hits.uv[f] = hits.depth_m[src], hits.prim[src], hits.uv[src]
        n_fallback += 1

    # ---- final images
    sem, inst, _ = label_images(mesh, hits.prim)
    colors = colour_images(mesh, K, c2ws, hits)
    frames = [SynthFrame(colors[i], hits.depth_m[i].copy(), c2ws[i].copy(), sem[i], inst[i])
              for i in range(len(c2ws))]

    min_px = max(4, int(round(COVER_PX * width * height / (160 * 120))))
    views = np.zeros(n_inst + 1, np.int64)
    for i in range(len(c2ws)):
        counts = np.bincount(inst[i].ravel(), minlength=n_inst + 1)
        views += counts > min_px
    instances = []
    for iid in range(1, n_inst + 1):
        sel = mesh.vert_instance == iid
        vmin, vmax = mesh.vertices[sel].min(0), mesh.vertices[sel].max(0)
        cid = int(inst_class[iid])
        instances.append({"id": iid, "class_id": cid, "class_name": class_list()[cid - 1]["name"],
                          "room": int(inst_room[iid]), "bbox_min": [float(v) for v in vmin],
                          "bbox_max": [float(v) for v in vmax]})

    meta = {
        "generator": GENERATOR_VERSION,
        "preset": preset,
        "seed": seed,
        "size": [width, height],
        "frames": len(frames),
        "up_axis": "+z",
        "units": "m",
        "hfov_deg": HFOV_DEG,
        "floor_z": 0.0,
        "ceiling_height_m": float(layout.rooms[0].height),
        "rooms": [{"index": r.index, "rect_xy": [float(v) for v in r.rect], "height_m": float(r.height)}
                  for r in layout.rooms],
        "doors": layout.doors,
        "n_resampled_frames": n_resampled,
        "n_fallback_frames": n_fallback,
        # frames in which each thing instance covers > COVER_PX (size-scaled) pixels; entry k is id k + 1
        "instance_views": [int(views[i]) for i in range(1, n_inst + 1)],
        "fx": float(K[0, 0]),
    }
    if walk:
        meta["walk"] = walk
    assert mesh.faces.dtype == np.int32 and mesh.vertices.shape[1] == 3
    obj_of_inst = [o for o, iid in zip(objects, instance_ids) if iid > 0]
    return SynthScene(
        name=f"synth_{preset}_{seed:04d}", K=K, width=width, height=height, frames=frames,
        classes=class_list(), mesh_vertices=mesh.vertices, mesh_faces=mesh.faces,
        mesh_vertex_colors=vertex_colours(mesh), mesh_vertex_semantic=mesh.vert_semantic,
        mesh_vertex_instance=mesh.vert_instance, instances=instances,
        room_of_frame=[int(r) for r in room_of_frame], meta=meta), views[1:], obj_of_inst


__all__ = ["PRESETS", "SynthFrame", "SynthScene", "generate_scene"]
