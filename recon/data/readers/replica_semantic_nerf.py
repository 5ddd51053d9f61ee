"""Replica as rendered for Semantic-NeRF (also DM-NeRF's renders, which Panoptic Lifting preprocesses),
with semantic and instance ground truth.

Layout (SRC = one sequence folder, e.g. Replica_Dataset/room_0/Sequence_1, or a DM-NeRF scene folder):

    rgb/rgb_{i}.png                              RGB (640x480 in the public renders)
    depth/depth_{i}.png                          uint16 millimetres, 0 = no depth
    semantic_class/semantic_class_{i}.png        Replica class id per pixel (0 = void)
    semantic_instance/semantic_instance_{i}.png  Replica object id per pixel (optional)
    traj_w_c.txt                                 row i: 16 floats, row-major 4x4 T_wc of frame i
    (vis_sem_class_{i}.png, vis_sem_instance_{i}.png: colour visualisations, ignored)

i is an unpadded frame number. Source: the Semantic-NeRF repository (SSR/datasets/replica/
replica_datasets.py reads exactly these names, depth "/ 1000.0  # uint16 mm depth"; SSR/data_generation/
habitat_renderer.py writes them).

Intrinsics: the renders use a pinhole camera with a 90 degree horizontal field of view, so
fx = fy = W / 2 / tan(45 deg) = W / 2, cx = (W - 1) / 2, cy = (H - 1) / 2 (Semantic-NeRF's
set_params_replica); --intrinsics FX FY CX CY overrides.

Pose convention: traj_w_c.txt holds camera-to-world matrices T_wc with OpenCV camera axes and is used
as is. There is no sample of these renders here, so this is taken from the code, not measured:
Semantic-NeRF's Replica config sets `convention: "opencv"`, and its rays are
((u - cx) / fx, (v - cy) / fy, 1) rotated by T_wc; the renderer converts T_wc to Habitat's own
(OpenGL) frame only internally (Twc_to_Thc). These are the same trajectories as NICE-SLAM's
Replica traj.txt, whose OpenCV convention *is* verified numerically (see replica_nice_slam.py).
The conversion prints the depth-reprojection check, which exposes a wrong convention at once.

Labels: gt/semantic = the Replica class id (ids are small positive integers already; 0 = void ->
0 = unlabelled). gt/instance = Replica object id + 1 on thing pixels (object id 0 is a real object
in Replica, so the shift keeps 0 = "no instance"), 0 on stuff and unlabelled pixels. Class names
come from Replica's info_semantic.json ({"classes": [{"id", "name"}, ...]}), found next to SRC, in
its parents (also <parent>/habitat/ and semantic_info/<scene>/) or given with --class-names FILE;
classes.json lists the classes that occur in the converted frames, thing unless the name is wall,
floor or ceiling (common.STUFF_NAMES). Without names every class is called class_<id> and counted
as a thing (a note says so). If semantic_instance/ is missing, no gt/ images are written (a
warning says so). No masks/ are written: those come from the segmentation front-end.
A GT mesh in the same world frame (Replica's mesh.ply) can be added with --mesh FILE; integer
`semantic` / `instance` vertex properties are kept as they are, so they must already use these
ids (Replica class id; object id + 1), and their classes join classes.json.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from recon.data.readers.common import (ConvertPlan, K_from_values, ReaderError, check_K, choose_frames, class_entries,
                                       color_depth_files, image_size, load_json, numbered_files, read_color_depth,
                                       read_png16, require_dir, require_file, stride_candidates, zero_stuff_instances)
from recon.data.readers.mesh import copy_mesh_writer
from recon.data.readers.replica_nice_slam import read_traj, traj_row_problem
from recon.data.scene import FrameRecord

KIND = "replica-semantic-nerf"
OPTIONS = ("intrinsics", "class_names", "mesh", "no_gt")
HFOV_DEG = 90.0


def semantic_nerf_K(width: int, height: int, hfov_deg: float = HFOV_DEG) -> np.ndarray:
    fx = width / 2.0 / math.tan(math.radians(hfov_deg / 2.0))
    return K_from_values(fx, fx, (width - 1) / 2.0, (height - 1) / 2.0)


def find_info_semantic(src: Path) -> Path | None:
    src = src.resolve()
    cands = [src / "info_semantic.json", src.parent / "info_semantic.json", src / "habitat" / "info_semantic.json",
             src.parent / "habitat" / "info_semantic.json",
             src.parent.parent / "semantic_info" / src.parent.name / "info_semantic.json",
             src.parent / "semantic_info" / src.name / "info_semantic.json"]
    return next((p for p in cands if p.is_file()), None)


def read_class_names(path: Path) -> dict[int, str]:
    raw = load_json(path)
    classes = raw.get("classes") if isinstance(raw, dict) else raw
    if not isinstance(classes, list):
        raise ReaderError(f"{path}: expected {{\"classes\": [{{\"id\", \"name\"}}, ...]}}")
    out = {}
    for k, c in enumerate(classes):
        try:
            out[int(c["id"])] = str(c["name"])
        except (KeyError, TypeError, ValueError):
            raise ReaderError(f"{path}: classes[{k}] needs an integer id and a name") from None
    return out


def read(src: Path, *, stride: int = 1, max_frames: int | None = None, skip_bad_frames: bool = False,
         intrinsics: tuple[float, float, float, float] | None = None, class_names: Path | None = None,
         mesh: Path | None = None, no_gt: bool = False) -> ConvertPlan:
    src = Path(src)
    rgb_dir = require_dir(src / "rgb", "Semantic-NeRF Replica layout: rgb/rgb_<i>.png")
    depth_dir = require_dir(src / "depth", "depth/depth_<i>.png, uint16 millimetres")
    traj_path = require_file(src / "traj_w_c.txt", "one row-major 4x4 camera-to-world pose per frame")
    colors, depths, numbers = color_depth_files(rgb_dir, r"rgb_(\d+)\.png", depth_dir, r"depth_(\d+)\.png",
                                                "rgb_<i>.png images")
    traj = read_traj(traj_path)
    notes: list[str] = []

    sem_dir, inst_dir = src / "semantic_class", src / "semantic_instance"
    sems = numbered_files(sem_dir, r"semantic_class_(\d+)\.png") if sem_dir.is_dir() and not no_gt else {}
    insts = numbered_files(inst_dir, r"semantic_instance_(\d+)\.png") if inst_dir.is_dir() and not no_gt else {}
    with_gt = bool(sems) and bool(insts)
    if sems and not insts:
        warnings.warn(f"{inst_dir}: missing; writing no gt/ images (the scene format needs semantic and instance)")

    W, H = image_size(colors[numbers[0]])
    K = K_from_values(*intrinsics) if intrinsics is not None else semantic_nerf_K(W, H)
    check_K(K, "--intrinsics" if intrinsics is not None else "Semantic-NeRF intrinsics")

    def problem(n: int) -> str | None:
        if n not in depths:
            return f"{depth_dir / f'depth_{n}.png'}: missing (frame {colors[n].name} has no depth)"
        if with_gt and (n not in sems or n not in insts):
            return f"{sem_dir if n not in sems else inst_dir}: no label image for frame {colors[n].name}"
        return traj_row_problem(traj_path, traj, n, colors[n].name)

    kept, skipped = choose_frames(stride_candidates(numbers, stride), max_frames, problem, skip_bad_frames)
    c2w = traj[kept]

    classes: list[dict] = []
    thing_ids: list[int] = []
    mesh_writer, present = copy_mesh_writer(mesh, keep_labels=not no_gt) if mesh else (None, set())
    if with_gt:
        for n in tqdm(kept, desc="scan labels", dynamic_ncols=True, mininterval=1.0):
            present |= set(np.unique(read_png16(sems[n])).tolist())
        present.discard(0)
    if present:
        names_path = Path(class_names) if class_names else find_info_semantic(src)
        if names_path is not None:
            names = read_class_names(names_path)
            unknown = sorted(present - set(names))
            if unknown:
                raise ReaderError(f"{names_path}: class id(s) {unknown[:8]} used in {sem_dir} or the mesh have no name")
            notes.append(f"class names from {names_path}")
        else:
            names = {c: f"class_{c}" for c in present}
            notes.append("no info_semantic.json found (pass --class-names FILE): classes are named class_<id> "
                         "and all counted as things")
        classes = class_entries({c: names[c] for c in present})
        if names_path is None:
            for c in classes:
                c["thing"] = True
        thing_ids = [c["id"] for c in classes if c["thing"]]

    def load(i: int) -> FrameRecord:
        n = kept[i]
        color, raw = read_color_depth(colors[n], depths[n], (W, H))
        depth_mm = raw.astype(np.uint16)
        if not depth_mm.any():
            raise ReaderError(f"{depths[n]}: no valid depth (all zero)")
        rec = FrameRecord(color=color, c2w=c2w[i], depth_mm=depth_mm)
        if with_gt:
            sem = read_png16(sems[n]).astype(np.uint16)
            inst = read_png16(insts[n]).astype(np.int64) + 1
            for path, arr in ((sems[n], sem), (insts[n], inst)):
                if arr.shape != (H, W):
                    raise ReaderError(f"{path}: size {arr.shape[1]}x{arr.shape[0]} differs from colour {W}x{H}")
            if inst.max() > 65535:
                raise ReaderError(f"{insts[n]}: object id {inst.max() - 1} does not fit uint16 after the +1 shift")
            rec.gt_semantic = sem
            rec.gt_instance = zero_stuff_instances(sem, inst, thing_ids)
        return rec

    meta = {"intrinsics_from": "--intrinsics" if intrinsics is not None else f"hfov {HFOV_DEG} deg",
            "pose_convention": "opencv c2w (T_wc), as is", "gt_instance": "Replica object id + 1 on thing pixels"}
    return ConvertPlan(kind=KIND, K=K, size=(W, H), frame_ids=[f"{n:06d}" for n in kept],
                       source_names=[colors[n].name for n in kept], c2w=c2w, load=load, classes=classes, meta=meta,
                       gt_mesh_writer=mesh_writer, has_gt_images=with_gt,
                       skipped=skipped, notes=notes)
