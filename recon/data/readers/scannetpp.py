"""ScanNet++ iPhone sequences with the scene's laser-scan mesh and its 3D annotation.

Layout (SRC = one scene folder, data/<scene_id>; the iPhone folder itself is accepted too):

    iphone/rgb/frame_NNNNNN.jpg        RGB, 1920x1440 (extracted from rgb.mkv by the ScanNet++ toolkit's
                                       iphone/prepare_iphone_data.py; this reader does not decode video)
    iphone/depth/frame_NNNNNN.png      uint16 millimetres, 256x192 (extracted from depth.bin likewise), 0 = invalid
    iphone/pose_intrinsic_imu.json     {"frame_NNNNNN": {"intrinsic": 3x3 K of the RGB image,
                                        "aligned_pose": 4x4 camera-to-world in the mesh frame, "pose", ...}}
    scans/mesh_aligned_0.05.ply        GT mesh (optional)
    scans/segments.json                {"segIndices": segment id per mesh vertex}
    scans/segments_anno.json           {"segGroups": [{"objectId", "label", "segments"}, ...]}

Poses: `aligned_pose` is used as is, as camera-to-world with OpenCV axes in the frame of the
aligned mesh. Evidence (no real sample here): the toolkit's iphone/arkit_pcl.py back-projects
K^-1 [u, v, 1] * depth and applies `aligned_pose` directly to get world points that overlay the
mesh. (`pose` is ARKit's unaligned frame and is not used.) The conversion prints the
depth-reprojection check, which would expose a wrong convention.

Intrinsics and resolution: every frame has its own K (the iPhone refocuses), while a scene
folder has one. The output K is the first converted frame's K scaled to the output size, and
every frame is re-imaged from its own K into it (same camera centre, so this is exact up to
interpolation); the largest per-frame focal difference is stored in scene.json. Depth has the RGB
image's field of view at 256x192, i.e. K scaled to that size. --resolution 'depth' (256x192),
'color' (1920x1440) or WxH; the default 640x480 keeps the 4:3 frame, shrinks colour (area-filtered)
and enlarges depth (nearest, so no depth is invented between surfaces).

Labels: there are no per-frame 2D labels (the toolkit rasterises the mesh with PyTorch3D for
that), so the scene gets gt/mesh.ply only, no gt/ images. Classes are the raw annotation labels of
segments_anno.json (open vocabulary, sorted by name, ids 1..N); labels that mark annotation
bookkeeping rather than objects ("split", "remove", "unknown", ...; IGNORED_LABELS) are left
unlabelled. wall, floor and ceiling are stuff, every other label a thing. Mesh `instance` is
objectId + 1 for things, 0 for stuff and unannotated vertices. --no-gt skips the mesh.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from recon.data.readers.common import (ConvertPlan, ReaderError, check_K, choose_frames, class_entries,
                                       color_depth_files, image_size, load_json, parse_resolution, pose_file_problem,
                                       read_png16, read_rgb, require_dir, require_file, resample_to_camera,
                                       scale_intrinsics, stride_candidates, vertex_labels_from_segments)
from recon.data.readers.mesh import labelled_mesh_writer, read_mesh
from recon.data.scene import FrameRecord

KIND = "scannetpp"
OPTIONS = ("resolution", "no_gt")
DEFAULT_RESOLUTION = "640x480"
IGNORED_LABELS = frozenset({"split", "remove", "removed", "unknown", "undefined", "invalid", "none", ""})


def _frame_entry(meta: dict, key: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(K [3, 3], c2w [4, 4]) of one pose_intrinsic_imu.json entry."""
    entry = meta.get(key)
    if not isinstance(entry, dict):
        raise ReaderError(f"{path}: no entry for {key}")
    try:
        K = np.asarray(entry["intrinsic"], dtype=np.float64).reshape(3, 3)
    except (KeyError, ValueError, TypeError):
        raise ReaderError(f"{path}: {key} needs a 3x3 'intrinsic'") from None
    if "aligned_pose" not in entry:
        raise ReaderError(f"{path}: {key} has no 'aligned_pose' (the camera-to-world pose in the mesh frame)")
    try:
        c2w = np.asarray(entry["aligned_pose"], dtype=np.float64).reshape(4, 4)
    except (ValueError, TypeError):
        raise ReaderError(f"{path}: {key}: 'aligned_pose' must be 16 numbers") from None
    return K, c2w


def read(src: Path, *, stride: int = 1, max_frames: int | None = None, skip_bad_frames: bool = False,
         resolution: str | None = None, no_gt: bool = False) -> ConvertPlan:
    src = Path(src)
    iphone = src / "iphone" if (src / "iphone").is_dir() else src
    scans = (iphone.parent if iphone != src else src) / "scans"
    rgb_dir = require_dir(iphone / "rgb", "ScanNet++ iphone/rgb/frame_NNNNNN.jpg; extract it from rgb.mkv with the "
                                          "toolkit's iphone/prepare_iphone_data.py")
    depth_dir = require_dir(iphone / "depth", "ScanNet++ iphone/depth/frame_NNNNNN.png; extract it from depth.bin "
                                              "with the toolkit's iphone/prepare_iphone_data.py")
    json_path = require_file(iphone / "pose_intrinsic_imu.json", "per-frame intrinsics and poses")
    frames_meta = load_json(json_path)
    if not isinstance(frames_meta, dict):
        raise ReaderError(f"{json_path}: expected an object keyed by frame name")
    colors, depths, numbers = color_depth_files(rgb_dir, r"frame_(\d+)\.jpg", depth_dir, r"frame_(\d+)\.png",
                                                "frame_NNNNNN.jpg images")
    c_size = image_size(colors[numbers[0]])

    def key(n: int) -> str:
        return colors[n].stem

    cams: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def problem(n: int) -> str | None:
        if n not in depths:
            return f"{depth_dir / f'{key(n)}.png'}: missing (frame {colors[n].name} has no depth)"
        try:
            K, c2w = _frame_entry(frames_meta, key(n), json_path)
            check_K(K, f"{json_path} ({key(n)})")
        except ReaderError as exc:
            return str(exc)
        why = pose_file_problem(json_path, c2w)
        if why:
            return f"{why} ({key(n)} aligned_pose)"
        cams[n] = (K, c2w)
        return None

    kept, skipped = choose_frames(stride_candidates(numbers, stride), max_frames, problem, skip_bad_frames)
    d_size = image_size(depths[kept[0]])
    res = parse_resolution(resolution, DEFAULT_RESOLUTION)
    size = d_size if res == "depth" else c_size if res == "color" else res
    K_ref = cams[kept[0]][0]
    K_out = scale_intrinsics(K_ref, c_size, size)
    fx_all = np.array([cams[n][0][0, 0] for n in kept])
    c2w = np.stack([cams[n][1] for n in kept])

    # GT mesh with labels
    gt_mesh_writer, classes = None, []
    mesh_path = scans / "mesh_aligned_0.05.ply"
    if not no_gt and mesh_path.is_file():
        v, f, col, _ = read_mesh(mesh_path)
        sem_v = inst_v = None
        seg_path, anno_path = scans / "segments.json", scans / "segments_anno.json"
        if seg_path.is_file() and anno_path.is_file():
            segs, anno = load_json(seg_path), load_json(anno_path)
            try:
                seg_indices, groups = segs["segIndices"], anno["segGroups"]
            except (KeyError, TypeError):
                raise ReaderError(f"{seg_path} / {anno_path}: need segIndices and segGroups") from None
            labels = sorted({str(g.get("label", "")).strip() for g in groups} - {""})
            labels = [lab for lab in labels if lab.lower() not in IGNORED_LABELS]
            name_to_id = {lab: i + 1 for i, lab in enumerate(labels)}
            sem_v, inst_v = vertex_labels_from_segments(len(v), seg_indices, groups,
                                                        lambda lab: name_to_id.get(str(lab).strip(), 0), anno_path)
            classes = class_entries({i: lab for lab, i in name_to_id.items()})
            things = [c["id"] for c in classes if c["thing"]]
            inst_v = np.where(np.isin(sem_v, things), inst_v, 0).astype(np.int32)
        gt_mesh_writer = labelled_mesh_writer(v, f, col, sem_v, inst_v)

    def load(i: int) -> FrameRecord:
        n = kept[i]
        K = cams[n][0]
        color = read_rgb(colors[n])
        raw = read_png16(depths[n]).astype(np.uint16)
        if (color.shape[1], color.shape[0]) != c_size:
            raise ReaderError(f"{colors[n]}: size {color.shape[1]}x{color.shape[0]} differs from "
                              f"{c_size[0]}x{c_size[1]}")
        if not raw.any():
            raise ReaderError(f"{depths[n]}: no valid depth (all zero)")
        K_d = scale_intrinsics(K, c_size, (raw.shape[1], raw.shape[0]))
        return FrameRecord(color=resample_to_camera(color, K, K_out, size, "linear"), c2w=c2w[i],
                           depth_mm=resample_to_camera(raw, K_d, K_out, size, "nearest"))

    meta = {"resolution": res if isinstance(res, str) else f"{res[0]}x{res[1]}", "color_size": list(c_size),
            "depth_size": list(d_size), "K_reference_frame": colors[kept[0]].name,
            "max_focal_difference_px": float(np.abs(fx_all - K_ref[0, 0]).max()),
            "pose_convention": "aligned_pose, opencv c2w, as is",
            "gt_instance": "segments_anno objectId + 1 on thing vertices"}
    return ConvertPlan(kind=KIND, K=K_out, size=tuple(size), frame_ids=[f"{n:06d}" for n in kept],
                       source_names=[colors[n].name for n in kept], c2w=c2w, load=load, classes=classes, meta=meta,
                       gt_mesh_writer=gt_mesh_writer, has_gt_images=False, skipped=skipped,
                       notes=[f"no 2D ground truth in ScanNet++: gt/mesh.ply only ({mesh_path})"]
                       if gt_mesh_writer else [])
