"""Dataset readers: convert public RGB-D datasets and your own captures into the scene format
(docs/scene_format.md).

`python run.py convert --from KIND SRC --out SCENE [--stride N] [--max-frames N] [--size WxH]
[--max-depth-m M] [--force] ...`

Each reader module documents its source layout, its pose convention (and how that was checked),
its intrinsics and resizing, and its labels:

    replica-nice-slam       replica_nice_slam.py       Replica, NICE-SLAM renders (no labels)
    replica-semantic-nerf   replica_semantic_nerf.py   Replica, Semantic-NeRF / DM-NeRF renders (semantic + instance GT)
    scannet                 scannet.py                 ScanNet v2 .sens exports, NYU40 GT images and GT mesh
    scannetpp               scannetpp.py               ScanNet++ iPhone frames, GT mesh with raw labels
    7scenes                 seven_scenes.py            Microsoft 7-Scenes sequences (no labels)

Your own captures (no labels):

    nerfstudio              nerfstudio.py              transforms.json with per-frame depth (e.g. ns-process-data
                                                       polycam --use-depth; other phone apps in that layout)
    record3d                record3d.py                Record3D .r3d export (zip) or its unzipped folder
    realsense               realsense.py               Intel RealSense .bag / .db3 recording; poses from RGB-D
                                                       odometry (odometry.py), the geometry-only path

A reader returns a ConvertPlan after checking names, poses and intrinsics (bad input fails here,
before any image is converted); `convert` then streams the frames through
`recon.data.scene.write_scene`, which builds the scene under a temporary name, validates it with
`load_scene` and renames it into place. Common rules:

- Frame ids are the source frame numbers, zero-padded to 6 digits; scene.json records the source
  file of every frame, the reader's choices and the skipped frames.
- --stride N keeps every Nth available frame (in frame-number order, starting with the first);
  --max-frames N stops after N good frames.
- Every reader also takes --size WxH (the written images are resized after reading: colour
  area-averaged when shrinking, bilinear when enlarging, depth nearest, K scaled with the pixel-centre
  rule of scale_intrinsics) and --max-depth-m M (depth beyond M metres becomes 0 = invalid).
- A frame whose pose is missing, non-finite or not rigid (or whose depth file is missing) is an
  error naming the file; --skip-bad-frames drops it with a warning instead (never silently).
- Depth is written as uint16 millimetres at the colour size; where colour and depth differ in size
  or intrinsics the reader re-images one into the other's camera and writes the matching K.
- Ground-truth labels go to gt/ as uint16 PNG with classes.json listing the classes that occur
  (thing unless wall/floor/ceiling); datasets without labels get an empty classes.json ([], which
  load_scene accepts; the file itself is required), no gt/ and no masks/ (the trainer then fits
  geometry and colour only).
- After writing, the depth of consecutive frames is reprojected into each other with the poses
  and the median disagreement is printed (a wrong pose convention or intrinsics shows up as
  decimetres instead of millimetres).
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from recon.data.readers import (nerfstudio, realsense, record3d, replica_nice_slam, replica_semantic_nerf, scannet,
                                scannetpp, seven_scenes)
from recon.data.readers.common import (ConvertPlan, ReaderError, depth_reprojection_error, limit_depth_mm, parse_size,
                                       resize_frame, resize_nearest, scale_intrinsics)
from recon.core.io import check_replaceable
from recon.data.scene import depth_m_to_mm, is_scene_folder, load_scene, write_scene

_MODULES = (replica_nice_slam, replica_semantic_nerf, scannet, scannetpp, seven_scenes, nerfstudio, record3d, realsense)
READERS: dict[str, Callable[..., ConvertPlan]] = {m.KIND: m.read for m in _MODULES}
READER_OPTIONS: dict[str, tuple[str, ...]] = {m.KIND: tuple(m.OPTIONS) for m in _MODULES}
OPTION_FLAGS = {"intrinsics": "--intrinsics", "color_intrinsics": "--color-intrinsics", "resolution": "--resolution",
                "class_names": "--class-names", "label_map": "--label-map", "mesh": "--mesh", "no_gt": "--no-gt",
                "depth_unit_scale_factor": "--depth-unit-scale-factor", "min_confidence": "--min-confidence"}
# what SRC is for each kind: a folder (default), a file, or either
SOURCE_KINDS = {"nerfstudio": "file or folder", "record3d": "file or folder", "realsense": "file"}
REPROJECTION_WARN_M = 0.05

__all__ = ["READERS", "ReaderError", "convert", "reprojection_check"]


def _check_options(kind: str, opts: dict) -> dict:
    given = {k: v for k, v in opts.items() if v is not None and v is not False}
    unknown = sorted(set(given) - set(OPTION_FLAGS))
    if unknown:
        raise TypeError(f"unknown reader option(s) {unknown}")
    not_here = sorted(set(given) - set(READER_OPTIONS[kind]))
    if not_here:
        flags = ", ".join(OPTION_FLAGS[k] for k in not_here)
        usable = ", ".join(OPTION_FLAGS[k] for k in READER_OPTIONS[kind]) or "none"
        raise ReaderError(f"{flags} does not apply to --from {kind} (its options: {usable})")
    return given


def reprojection_check(scene_dir: Path, max_pairs: int = 5) -> list[dict]:
    """Depth reprojection error between up to `max_pairs` pairs of consecutive frames of a written scene."""
    scene = load_scene(scene_dir, check_images=False)
    n = len(scene)
    if n < 2:
        return []
    starts = np.unique(np.linspace(0, n - 2, min(max_pairs, n - 1)).round().astype(int))
    out = []
    for i in starts:
        err = depth_reprojection_error(scene.load_depth_m(i), scene.load_depth_m(i + 1), scene.K,
                                       scene.c2w[i], scene.c2w[i + 1])
        out.append({"a": scene.frame_ids[i], "b": scene.frame_ids[i + 1], **err})
    return out


def _resized_plan(plan: ConvertPlan, size: tuple[int, int] | None, max_depth_m: float | None) -> ConvertPlan:
    """The plan with --size and --max-depth-m applied to every frame it loads (resize_frame, limit_depth_mm)."""
    if size is None and max_depth_m is None:
        return plan
    load, src_size, src_K = plan.load, tuple(plan.size), plan.K.copy()
    out_size = tuple(size) if size is not None else src_size

    def loaded(i: int):
        fr = load(i)
        depth_mm = np.asarray(fr.depth_mm) if fr.depth_mm is not None else depth_m_to_mm(fr.depth_m)
        if out_size != src_size:
            color, depth_mm, _ = resize_frame(fr.color, depth_mm, src_K, out_size)
            fr.color = color
            for name in ("mask_instance", "mask_semantic", "gt_semantic", "gt_instance"):
                label = getattr(fr, name)
                if label is not None:   # labels: nearest, like depth
                    setattr(fr, name, resize_nearest(label, out_size))
        fr.depth_mm, fr.depth_m = limit_depth_mm(depth_mm, max_depth_m), None
        if not fr.depth_mm.any():
            raise ReaderError(f"frame {plan.frame_ids[i]} ({plan.source_names[i]}): no valid depth left"
                              + (f" within --max-depth-m {max_depth_m:g}" if max_depth_m is not None else ""))
        return fr

    if out_size != src_size:
        plan.K = scale_intrinsics(src_K, src_size, out_size)
        plan.size = out_size
    plan.load = loaded
    plan.meta = {**plan.meta, "size": f"{out_size[0]}x{out_size[1]}" if size is not None else None,
                 "max_depth_m": max_depth_m}
    return plan


def convert(kind: str, src: str | Path, out: str | Path, stride: int = 1, max_frames: int | None = None,
            force: bool = False, *, skip_bad_frames: bool = False, log=print, check_pairs: int = 5,
            holdout_every: int = 0, size: str | tuple[int, int] | None = None, max_depth_m: float | None = None,
            **opts) -> dict:
    """Convert the dataset folder (or capture file) `src` of `kind` into the scene folder `out`; returns a summary.

    opts (only where the reader takes them): intrinsics (fx, fy, cx, cy), color_intrinsics (fx, fy, cx, cy),
    resolution ('depth' | 'color' | 'WxH'), class_names (Path), label_map (Path), mesh (Path), no_gt (bool),
    depth_unit_scale_factor (float, nerfstudio), min_confidence (0 | 1 | 2, record3d).
    Every reader: size ('WxH' or (W, H)) resizes the written frames, max_depth_m drops depth beyond it.
    holdout_every N >= 2 holds every Nth frame out of training (splits.json; eval uses all frames).
    Raises ReaderError (bad source), FileExistsError (`out` exists without `force`),
    FileNotFoundError (no `src`).
    """
    if kind not in READERS:
        raise ReaderError(f"unknown dataset kind {kind!r}; choose one of {', '.join(READERS)}")
    src, out = Path(src), Path(out)
    accepts = SOURCE_KINDS.get(kind, "folder")
    if not (src.is_dir() if accepts == "folder" else src.is_file() if accepts == "file" else src.exists()):
        if accepts == "folder" or not src.exists():
            raise FileNotFoundError(f"{src}: no such {accepts}")
        raise ReaderError(f"{src}: --from {kind} reads a {accepts}")
    if size is not None:
        size = parse_size(size)
    if max_depth_m is not None and not (np.isfinite(max_depth_m) and max_depth_m > 0):
        raise ReaderError(f"--max-depth-m must be a positive number of metres, got {max_depth_m}")
    if stride < 1:
        raise ReaderError(f"--stride must be at least 1, got {stride}")
    if max_frames is not None and max_frames < 1:
        raise ReaderError(f"--max-frames must be at least 1, got {max_frames}")
    if holdout_every == 1 or holdout_every < 0:
        raise ReaderError("--holdout-every must be 0 (train on all frames) or at least 2")
    inputs = (src, *[Path(v) for k, v in opts.items() if k in ("class_names", "label_map", "mesh") and v])
    check_replaceable(out, "scene", is_scene_folder, inputs)          # before reading anything
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; pass --force to replace it")
    given = _check_options(kind, opts)
    t0 = time.perf_counter()
    plan = READERS[kind](src, stride=stride, max_frames=max_frames, skip_bad_frames=skip_bad_frames, **given)
    plan = _resized_plan(plan, size, max_depth_m)
    for note in plan.notes:
        log(f"note: {note}")
    n = len(plan.frame_ids)
    log(f"converting {n} frame(s) of {src} ({kind}) into {out} at {plan.size[0]}x{plan.size[1]}"
        + (f"; {len(plan.skipped)} bad frame(s) skipped" if plan.skipped else ""))

    def frames():
        for i in tqdm(range(n), desc="convert", dynamic_ncols=True, mininterval=1.0):
            yield plan.load(i)

    name = src.resolve().name if src.is_dir() else src.resolve().stem
    if name.lower().startswith(("sequence_", "seq-")):  # Semantic-NeRF / 7-Scenes sequence folders
        name = f"{src.resolve().parent.name}_{name}"
    meta = {"name": name, "source": kind, "source_path": str(src.resolve()),
            "source_frames": dict(zip(plan.frame_ids, plan.source_names)), "skipped_frames": list(plan.skipped),
            "stride": int(stride), "max_frames": max_frames, "reader": plan.meta}
    splits = None
    if holdout_every >= 2:
        ids = list(plan.frame_ids)
        splits = {"train": [f for k, f in enumerate(ids) if (k + 1) % holdout_every != 0], "eval": ids}
    write_scene(out, K=plan.K, frames=frames(), classes=plan.classes, meta=meta, gt_mesh_writer=plan.gt_mesh_writer,
                frame_ids=plan.frame_ids, overwrite=force, splits=splits, inputs=inputs)
    seconds = time.perf_counter() - t0
    checks = reprojection_check(out, check_pairs) if check_pairs > 0 else []
    medians = [c["median_m"] for c in checks if np.isfinite(c["median_m"])]
    summary = {"frames": n, "size": list(plan.size), "classes": len(plan.classes), "gt_images": plan.has_gt_images,
               "gt_mesh": plan.gt_mesh_writer is not None, "skipped": len(plan.skipped), "seconds": round(seconds, 2),
               "reprojection": checks,
               "reprojection_median_m": float(np.median(medians)) if medians else None}
    log(f"wrote {out}: {n} frames {plan.size[0]}x{plan.size[1]}, {len(plan.classes)} classes, "
        f"gt images: {'yes' if plan.has_gt_images else 'no'}, gt mesh: {'yes' if summary['gt_mesh'] else 'no'} "
        f"in {seconds:.1f} s")
    if medians:
        med = summary["reprojection_median_m"]
        log(f"depth reprojection between consecutive frames: median {med * 1000:.1f} mm over {len(medians)} pair(s)")
        if med > REPROJECTION_WARN_M:
            warnings.warn(f"{out}: consecutive frames' depths disagree by {med * 100:.0f} cm after reprojection; "
                          "the poses or intrinsics may follow another convention than the reader assumes")
    return summary
