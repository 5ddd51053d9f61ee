"""ScanNet (v2) scans exported from .sens with the official SensReader, plus their annotations.

Layout (SRC = one scan folder, e.g. scans/scene0000_00):

    color/<i>.jpg                    RGB, 1296x968 (SensReader `--export_color_images`)
    depth/<i>.png                    uint16 millimetres, 640x480, 0 = invalid
    pose/<i>.txt                     4x4 camera-to-world, OpenCV axes; invalid frames hold -inf
    intrinsic/intrinsic_color.txt    4x4 (3x3 used) K of the colour images
    intrinsic/intrinsic_depth.txt    4x4 (3x3 used) K of the depth images
    label-filt/<i>.png               optional GT (from <scan>_2d-label-filt.zip): uint16 ScanNet label id,
                                     rendered at the colour resolution
    instance-filt/<i>.png            optional GT (from <scan>_2d-instance-filt.zip): aggregation objectId + 1
    <scan>_vh_clean_2.ply            optional GT mesh (same world frame as the poses)
    <scan>.aggregation.json          segGroups [{objectId, label, segments}] on that mesh
    <scan>_vh_clean_2.0.010000.segs.json   segIndices: segment id per vertex
    <scan>_vh_clean_2.labels.ply     per-vertex `label`; used only when the aggregation/segs pair is absent
    scannetv2-labels.combined.tsv    label map, looked for in SRC and two parents, or --label-map FILE

<i> is the unpadded frame number; the output frame id is that number, zero-padded.

Bad frames: a pose with non-finite values (ScanNet writes -inf for frames the reconstruction lost)
or a non-rigid matrix is an error naming the file; --skip-bad-frames drops such frames with a
warning each. --stride picks every Nth frame by number before bad frames are dropped, and
--max-frames caps the number of frames kept.

Resolution (--resolution): colour (1296x968) and depth (640x480) come from two cameras with their
own intrinsics (identity extrinsics). 'depth' (default) writes 640x480 with K = intrinsic_depth and
re-images the colour (and label) images into that camera; 'color' writes 1296x968 with
K = intrinsic_color and re-images the depth into it (nearest, so no depth is invented between
surfaces); WxH writes that size with intrinsic_color scaled to it. Re-imaging uses the two K
matrices (a pixel's ray is found with one K and imaged with the other), not a plain resize, so the
0.3% focal / 1 px principal-point difference between ScanNet's colour and depth intrinsics is honoured.

Labels: label-filt ids are mapped to NYU40 with the tsv's `id` -> `nyu40id` columns (no entry -> 0,
unlabelled); gt/semantic is the NYU40 id. gt/instance is the instance-filt value (objectId + 1) on
thing pixels and 0 elsewhere. classes.json holds the NYU40 classes present in the converted frames
and the GT mesh, with wall, floor and ceiling as stuff and every other class as a thing -- the rule of
ScanNet's own helper convert_scannet_instance_image.py ("walls/floors/ceilings are not assigned
instances"). GT mesh: vertices, faces and colours of _vh_clean_2.ply; `semantic` = NYU40 id of the
vertex's segGroup label (tsv `raw_category` -> `nyu40id`), `instance` = objectId + 1 for things, 0
for stuff and unannotated vertices. --no-gt writes neither gt/ images nor the mesh.
"""
from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from recon.data.readers.common import (ConvertPlan, ReaderError, choose_frames, class_entries, color_depth_files,
                                       find_upwards, image_size, is_stuff_name, load_json, lookup, numbered_files,
                                       parse_resolution, pose_file_problem, read_intrinsics_file, read_matrix,
                                       read_png16, read_rgb, require_dir, require_file, resample_to_camera,
                                       scale_intrinsics, stride_candidates, vertex_labels_from_segments,
                                       zero_stuff_instances)
from recon.data.readers.mesh import labelled_mesh_writer, read_mesh
from recon.data.scene import FrameRecord

KIND = "scannet"
OPTIONS = ("resolution", "label_map", "no_gt")
LABEL_MAP_NAMES = ("scannetv2-labels.combined.tsv", "scannet-labels.combined.tsv")

# NYU40 class names by id (the nyu40class column of the ScanNet label map; 'refridgerator' spelt right).
NYU40 = ("wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
         "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes",
         "ceiling", "books", "refrigerator", "television", "paper", "towel", "shower curtain", "box", "whiteboard",
         "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure", "otherfurniture",
         "otherprop")
NYU40_PROMPTS = {38: ["structure"], 39: ["furniture"], 40: ["object"], 32: ["night stand", "nightstand"],
                 25: ["television", "tv"], 3: ["cabinet", "cupboard"]}


def nyu40_classes(ids) -> list[dict]:
    """classes.json entries for NYU40 ids (1..40)."""
    return class_entries({int(i): NYU40[int(i) - 1] for i in ids if 1 <= int(i) <= 40}, NYU40_PROMPTS)


def read_label_map(path: Path) -> tuple[np.ndarray, dict[str, int]]:
    """(table [max id + 1] ScanNet label id -> NYU40 id, {raw_category: NYU40 id}) from the tsv."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ReaderError(f"{path}: unreadable label map ({exc})") from None
    if not rows or not {"id", "raw_category", "nyu40id"} <= set(rows[0]):
        raise ReaderError(f"{path}: expected a tab-separated table with columns id, raw_category and nyu40id")
    by_id: dict[int, int] = {}
    by_raw: dict[str, int] = {}
    for n, r in enumerate(rows, 2):
        try:
            sid = int(r["id"])
            nyu = int(r["nyu40id"]) if (r["nyu40id"] or "").strip() else 0
        except ValueError:
            raise ReaderError(f"{path}: line {n}: id and nyu40id must be integers") from None
        if not 0 <= nyu <= 40:
            raise ReaderError(f"{path}: line {n}: nyu40id {nyu} outside 0..40")
        by_id[sid] = nyu
        by_raw[r["raw_category"]] = nyu
    table = np.zeros(max(by_id) + 1, np.uint16)
    for sid, nyu in by_id.items():
        if sid >= 0:
            table[sid] = nyu
    return table, by_raw


def _check_K_fits(K: np.ndarray, size: tuple[int, int], k_path: Path, img_path: Path) -> None:
    W, H = size
    if abs(K[0, 2] - (W - 1) / 2) > 0.2 * W or abs(K[1, 2] - (H - 1) / 2) > 0.2 * H:
        raise ReaderError(f"{k_path}: principal point ({K[0, 2]:g}, {K[1, 2]:g}) does not fit the {W}x{H} images "
                          f"({img_path}); were the images exported at another size?")


def _mesh_paths(src: Path) -> dict[str, Path | None]:
    name = src.resolve().name
    mesh = src / f"{name}_vh_clean_2.ply"
    if not mesh.is_file():
        found = sorted(p for p in src.glob("*_vh_clean_2.ply"))
        if len(found) == 1:
            mesh = found[0]
            name = mesh.name[: -len("_vh_clean_2.ply")]
    def opt(p: Path) -> Path | None:
        return p if p.is_file() else None
    return {"mesh": opt(mesh), "aggregation": opt(src / f"{name}.aggregation.json"),
            "segs": opt(src / f"{name}_vh_clean_2.0.010000.segs.json"),
            "labels": opt(src / f"{name}_vh_clean_2.labels.ply")}


def read(src: Path, *, stride: int = 1, max_frames: int | None = None, skip_bad_frames: bool = False,
         resolution: str | None = None, label_map: Path | None = None, no_gt: bool = False) -> ConvertPlan:
    src = Path(src)
    color_dir = require_dir(src / "color", "SensReader export: color/<i>.jpg")
    depth_dir = require_dir(src / "depth", "SensReader export: depth/<i>.png")
    pose_dir = require_dir(src / "pose", "SensReader export: pose/<i>.txt")
    k_color_path = src / "intrinsic" / "intrinsic_color.txt"
    k_depth_path = src / "intrinsic" / "intrinsic_depth.txt"
    for p in (k_color_path, k_depth_path):
        require_file(p, "SensReader --export_intrinsics")
    K_color = read_intrinsics_file(k_color_path)
    K_depth = read_intrinsics_file(k_depth_path)
    notes: list[str] = []
    for p in (src / "intrinsic" / "extrinsic_color.txt", src / "intrinsic" / "extrinsic_depth.txt"):
        if p.is_file() and not np.allclose(read_matrix(p, 4, 4), np.eye(4), atol=1e-4):
            notes.append(f"{p} is not the identity; colour and depth are nevertheless treated as one camera centre")

    colors, depths, numbers = color_depth_files(color_dir, r"(\d+)\.(?:jpg|jpeg|png)", depth_dir, r"(\d+)\.png",
                                                "<i>.jpg colour images")
    poses = numbered_files(pose_dir, r"(\d+)\.txt")
    c_size = image_size(colors[numbers[0]])
    first_depth = depths.get(numbers[0]) or next(iter(depths.values()), None)
    if first_depth is None:
        raise ReaderError(f"{depth_dir}: no <i>.png depth images")
    d_size = image_size(first_depth)
    _check_K_fits(K_color, c_size, k_color_path, colors[numbers[0]])
    _check_K_fits(K_depth, d_size, k_depth_path, first_depth)

    res = parse_resolution(resolution, "depth")
    if res == "depth":
        K_out, size = K_depth, d_size
    elif res == "color":
        K_out, size = K_color, c_size
    else:
        K_out, size = scale_intrinsics(K_color, c_size, res), res

    # ground truth sources
    label_dir, inst_dir = src / "label-filt", src / "instance-filt"
    labels = numbered_files(label_dir, r"(\d+)\.png") if label_dir.is_dir() and not no_gt else {}
    insts = numbered_files(inst_dir, r"(\d+)\.png") if inst_dir.is_dir() and not no_gt else {}
    if labels and not insts:
        warnings.warn(f"{inst_dir}: missing; writing no gt/ images (the scene format needs semantic and instance)")
    with_gt = bool(labels) and bool(insts)
    mpaths = _mesh_paths(src) if not no_gt else {"mesh": None}
    mesh_by_aggregation = (mpaths["mesh"] is not None and mpaths["aggregation"] is not None
                           and mpaths["segs"] is not None)
    id_to_nyu, raw_to_nyu = None, None
    if with_gt or mesh_by_aggregation:
        lm = Path(label_map) if label_map else find_upwards(src, LABEL_MAP_NAMES, levels=2)
        if lm is None or not lm.is_file():
            raise ReaderError(f"{src}: ScanNet labels need scannetv2-labels.combined.tsv (looked in {src} and two "
                              "parents); pass --label-map FILE, or --no-gt to convert without ground truth")
        id_to_nyu, raw_to_nyu = read_label_map(lm)
        notes.append(f"NYU40 label map: {lm}")

    def problem(n: int) -> str | None:
        if n not in depths:
            return f"{depth_dir / f'{n}.png'}: missing (frame {colors[n].name} has no depth)"
        if n not in poses:
            return f"{pose_dir / f'{n}.txt'}: missing (frame {colors[n].name} has no pose)"
        if with_gt and (n not in labels or n not in insts):
            return f"{(label_dir / f'{n}.png') if n not in labels else (inst_dir / f'{n}.png')}: missing GT label image"
        return pose_file_problem(poses[n])

    kept, skipped = choose_frames(stride_candidates(numbers, stride), max_frames, problem, skip_bad_frames)
    c2w = np.stack([read_matrix(poses[n], 4, 4) for n in kept])

    # GT mesh (read now: its classes go into classes.json)
    gt_mesh_writer = None
    present: set[int] = set()
    if mpaths["mesh"] is not None:
        v, f, col, props = read_mesh(mpaths["mesh"])
        sem_v = inst_v = None
        if mesh_by_aggregation:
            agg = load_json(mpaths["aggregation"])
            segs = load_json(mpaths["segs"])
            try:
                groups, seg_indices = agg["segGroups"], segs["segIndices"]
            except (KeyError, TypeError):
                raise ReaderError(f"{mpaths['aggregation']} / {mpaths['segs']}: "
                                  "need segGroups and segIndices") from None
            sem_v, inst_v = vertex_labels_from_segments(len(v), seg_indices, groups,
                                                        lambda lab: raw_to_nyu.get(lab, 0), mpaths["aggregation"])
        elif mpaths.get("labels") is not None:
            _, _, _, lprops = read_mesh(mpaths["labels"])
            lab = lprops.get("label")
            if lab is None or len(lab) != len(v):
                raise ReaderError(f"{mpaths['labels']}: needs a per-vertex 'label' for the {len(v)} vertices of "
                                  f"{mpaths['mesh']}")
            lab = lab.astype(np.int64)
            if lab.max() > 40:
                raise ReaderError(f"{mpaths['labels']}: labels up to {lab.max()} are not NYU40 ids; supply "
                                  f"{src.name}.aggregation.json and the segs.json instead")
            sem_v = lab.astype(np.int32)
            warnings.warn(f"{mpaths['labels']}: no aggregation/segs pair, so the mesh gets NYU40 semantics from the "
                          "'label' property and no instances")
        if sem_v is not None:
            things = np.array([i for i in range(1, 41) if not is_stuff_name(NYU40[i - 1])])
            if inst_v is not None:
                inst_v = np.where(np.isin(sem_v, things), inst_v, 0).astype(np.int32)
            present |= set(np.unique(sem_v).tolist())
        gt_mesh_writer = labelled_mesh_writer(v, f, col, sem_v, inst_v)

    if with_gt:
        for n in tqdm(kept, desc="scan labels", dynamic_ncols=True, mininterval=1.0):
            present |= set(np.unique(lookup(id_to_nyu, read_png16(labels[n]))).tolist())
    present.discard(0)
    classes = nyu40_classes(sorted(present))
    thing_ids = [c["id"] for c in classes if c["thing"]]

    def load(i: int) -> FrameRecord:
        n = kept[i]
        color = read_rgb(colors[n])
        raw = read_png16(depths[n]).astype(np.uint16)
        if (color.shape[1], color.shape[0]) != c_size:
            raise ReaderError(f"{colors[n]}: size {color.shape[1]}x{color.shape[0]} differs from "
                              f"{c_size[0]}x{c_size[1]}")
        if (raw.shape[1], raw.shape[0]) != d_size:
            raise ReaderError(f"{depths[n]}: size {raw.shape[1]}x{raw.shape[0]} differs from {d_size[0]}x{d_size[1]}")
        if not raw.any():
            raise ReaderError(f"{depths[n]}: no valid depth (all zero)")
        rec = FrameRecord(color=resample_to_camera(color, K_color, K_out, size, "linear"), c2w=c2w[i],
                          depth_mm=resample_to_camera(raw, K_depth, K_out, size, "nearest"))
        if with_gt:
            sem_raw = read_png16(labels[n])
            inst_raw = read_png16(insts[n])
            if sem_raw.shape != inst_raw.shape:
                raise ReaderError(f"{labels[n]} and {insts[n]} differ in size")
            l_size = (sem_raw.shape[1], sem_raw.shape[0])
            K_lab = scale_intrinsics(K_color, c_size, l_size)  # labels are rendered with the colour camera
            sem = resample_to_camera(lookup(id_to_nyu, sem_raw), K_lab, K_out, size, "nearest")
            inst = resample_to_camera(inst_raw.astype(np.uint16), K_lab, K_out, size, "nearest")
            rec.gt_semantic = sem.astype(np.uint16)
            rec.gt_instance = zero_stuff_instances(sem, inst, thing_ids)
        return rec

    meta = {"resolution": res if isinstance(res, str) else f"{res[0]}x{res[1]}",
            "K_color": K_color.tolist(), "K_depth": K_depth.tolist(), "color_size": list(c_size),
            "depth_size": list(d_size), "pose_convention": "opencv c2w, as is", "labels": "NYU40",
            "gt_instance": "aggregation objectId + 1 on thing pixels/vertices"}
    return ConvertPlan(kind=KIND, K=K_out, size=tuple(size), frame_ids=[f"{n:06d}" for n in kept],
                       source_names=[colors[n].name for n in kept], c2w=c2w, load=load, classes=classes, meta=meta,
                       gt_mesh_writer=gt_mesh_writer, has_gt_images=with_gt, skipped=skipped, notes=notes)
