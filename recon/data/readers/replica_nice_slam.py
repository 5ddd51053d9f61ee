"""Replica as rendered for NICE-SLAM (the same files are used by SplaTAM, Co-SLAM, GO-SLAM, ...).

Layout (SRC = one scene folder, e.g. Replica/room0):

    results/frameNNNNNN.jpg   RGB, 1200x680
    results/depthNNNNNN.png   uint16; metres = value / 6553.5 (the "scale" / png_depth_scale); 0 = no depth
    traj.txt                  one row per frame: 16 floats, a row-major 4x4 camera-to-world matrix;
                              row i belongs to frame i
    cam_params.json           optional: {"camera": {"w", "h", "fx", "fy", "cx", "cy", "scale"}}

Intrinsics, in order of precedence: --intrinsics FX FY CX CY; cam_params.json; otherwise, for
1200x680 images only, NICE-SLAM's Replica configuration (fx = fy = 600, cx = 599.5, cy = 339.5),
with a note. Any other size without intrinsics is an error. The depth scale comes from
cam_params.json ("scale") when present, else 6553.5.

Pose convention: traj.txt is camera-to-world with OpenCV camera axes (x right, y down, z forward),
used as is. Verified numerically on the small real Replica sample (replica_room0_20f, see tests/conftest.py): the depth of one frame
moved into another with these poses agrees to a median of well under 1 cm, while the same check
with the y/z axes flipped (OpenGL reading) is off by decimetres (tests/recon/test_readers.py).

Colour and depth are rendered by the same virtual camera at the same size, so nothing is resized.
No semantic ground truth ships with these renders: the scene gets no gt/ images, an empty
classes.json ([]; load_scene requires the file) and no masks/ (the trainer then fits geometry and
colour only). A GT mesh in the same world frame (e.g. NICE-SLAM's culled Replica mesh) can be
added with --mesh FILE; it is copied to gt/mesh.ply as geometry only (any label properties are
dropped: without class names they could not be evaluated).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from recon.data.readers.common import (ConvertPlan, K_from_values, ReaderError, check_K, choose_frames,
                                       color_depth_files, depth_raw_to_mm, image_size, load_json, pose_file_problem,
                                       read_color_depth, require_dir, require_file, stride_candidates)
from recon.data.readers.mesh import copy_mesh_writer
from recon.data.scene import FrameRecord

KIND = "replica-nice-slam"
OPTIONS = ("intrinsics", "mesh")
NICE_SLAM_REPLICA_K = (600.0, 600.0, 599.5, 339.5)  # for 1200x680 renders
NICE_SLAM_DEPTH_SCALE = 6553.5                      # raw units per metre


def read_traj(path: Path) -> np.ndarray:
    """traj.txt -> [N, 4, 4] float64 (rows of 16 numbers; non-finite values are kept and reported later)."""
    rows = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ReaderError(f"{path}: unreadable ({exc})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            vals = np.array(line.replace(",", " ").split(), dtype=np.float64)
        except ValueError as exc:
            raise ReaderError(f"{path}: line {n} is not numeric ({exc})") from None
        if vals.size != 16:
            raise ReaderError(f"{path}: line {n} has {vals.size} numbers, expected 16 (a row-major 4x4 matrix)")
        rows.append(vals.reshape(4, 4))
    if not rows:
        raise ReaderError(f"{path}: no poses")
    return np.stack(rows)


def traj_row_problem(traj_path: Path, traj: np.ndarray, n: int, frame_name: str) -> str | None:
    """None if row n of the trajectory `traj` [N, 4, 4] (read from traj_path) is a finite rigid pose of
    frame n (source file frame_name), else the message naming the file, row and frame."""
    if n >= len(traj):
        return f"{traj_path}: has {len(traj)} poses, none for frame {frame_name} (row {n + 1})"
    why = pose_file_problem(traj_path, traj[n])
    return f"{why} (row {n + 1}, frame {frame_name})" if why else None


def read(src: Path, *, stride: int = 1, max_frames: int | None = None, skip_bad_frames: bool = False,
         intrinsics: tuple[float, float, float, float] | None = None, mesh: Path | None = None) -> ConvertPlan:
    src = Path(src)
    results = require_dir(src / "results", "NICE-SLAM Replica layout: results/frameNNNNNN.jpg and depthNNNNNN.png")
    traj_path = require_file(src / "traj.txt", "one row-major 4x4 camera-to-world pose per frame")
    colors, depths, numbers = color_depth_files(results, r"frame(\d+)\.(?:jpg|jpeg|png)", results, r"depth(\d+)\.png",
                                                "frameNNNNNN.jpg colour images")
    traj = read_traj(traj_path)

    notes: list[str] = []
    cam_path = src / "cam_params.json"
    cam = load_json(cam_path).get("camera", {}) if cam_path.is_file() else {}
    depth_scale = float(cam.get("scale", NICE_SLAM_DEPTH_SCALE))
    if depth_scale <= 0:
        raise ReaderError(f"{cam_path}: depth scale must be positive, got {depth_scale}")
    first = colors[numbers[0]]
    W, H = image_size(first)
    if intrinsics is not None:
        K = K_from_values(*intrinsics)
        k_src = "--intrinsics"
    elif cam:
        try:
            K = K_from_values(float(cam["fx"]), float(cam["fy"]), float(cam["cx"]), float(cam["cy"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ReaderError(f"{cam_path}: camera needs fx, fy, cx, cy ({exc})") from None
        if "w" in cam and "h" in cam and (int(cam["w"]), int(cam["h"])) != (W, H):
            raise ReaderError(f"{cam_path}: camera is {cam['w']}x{cam['h']} but {first} is {W}x{H}")
        k_src = str(cam_path)
    elif (W, H) == (1200, 680):
        K = K_from_values(*NICE_SLAM_REPLICA_K)
        k_src = "NICE-SLAM Replica defaults"
        notes.append("no cam_params.json: using NICE-SLAM's Replica intrinsics fx = fy = 600, cx = 599.5, cy = 339.5")
    else:
        raise ReaderError(f"{src}: no cam_params.json and images are {W}x{H}, not NICE-SLAM's 1200x680; "
                          "pass --intrinsics FX FY CX CY")
    check_K(K, k_src)

    def problem(n: int) -> str | None:
        if n not in depths:
            return f"{results / f'depth{n:06d}.png'}: missing (frame {colors[n].name} has no depth)"
        return traj_row_problem(traj_path, traj, n, colors[n].name)

    kept, skipped = choose_frames(stride_candidates(numbers, stride), max_frames, problem, skip_bad_frames)
    c2w = traj[kept]

    def load(i: int) -> FrameRecord:
        n = kept[i]
        color, raw = read_color_depth(colors[n], depths[n], (W, H))
        depth_mm = depth_raw_to_mm(raw, 1.0 / depth_scale)
        if not depth_mm.any():
            raise ReaderError(f"{depths[n]}: no valid depth (all zero)")
        return FrameRecord(color=color, c2w=c2w[i], depth_mm=depth_mm)

    mesh_writer = None
    if mesh:
        mesh_writer, _ = copy_mesh_writer(mesh, keep_labels=False)
        notes.append(f"GT mesh {mesh} copied as geometry only (this dataset has no class names for its labels)")
    meta = {"depth_scale_units_per_m": depth_scale, "intrinsics_from": k_src, "pose_convention": "opencv c2w, as is"}
    return ConvertPlan(kind=KIND, K=K, size=(W, H), frame_ids=[f"{n:06d}" for n in kept],
                       source_names=[colors[n].name for n in kept], c2w=c2w, load=load, classes=[], meta=meta,
                       gt_mesh_writer=mesh_writer, skipped=skipped, notes=notes)
