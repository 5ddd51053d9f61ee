"""Dataset readers: convert public RGB-D datasets into the scene format (docs/scene_format.md).

`python run.py convert --from KIND SRC --out SCENE [--stride N] [--max-frames N] [--force] ...`

Each reader module documents its source layout, its pose convention (and how that was checked),
its intrinsics and resizing, and its labels:

    replica-nice-slam       replica_nice_slam.py       Replica, NICE-SLAM renders (no labels)
    replica-semantic-nerf   replica_semantic_nerf.py   Replica, Semantic-NeRF / DM-NeRF renders (semantic + instance GT)
    scannet                 scannet.py                 ScanNet v2 .sens exports, NYU40 GT images and GT mesh
    scannetpp               scannetpp.py               ScanNet++ iPhone frames, GT mesh with raw labels
    7scenes                 seven_scenes.py            Microsoft 7-Scenes sequences (no labels)

A reader returns a ConvertPlan after checking names, poses and intrinsics (bad input fails here,
before any image is converted); `convert` then streams the frames through
`recon.data.scene.write_scene`, which builds the scene under a temporary name, validates it with
`load_scene` and renames it into place. Common rules:

- Frame ids are the source frame numbers, zero-padded to 6 digits; scene.json records the source
  file of every frame, the reader's choices and the skipped frames.
- --stride N keeps every Nth available frame (in frame-number order, starting with the first);
  --max-frames N stops after N good frames.
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

from recon.data.readers import replica_nice_slam, replica_semantic_nerf, scannet, scannetpp, seven_scenes
from recon.data.readers.common import ConvertPlan, ReaderError, depth_reprojection_error
from recon.core.io import check_replaceable
from recon.data.scene import is_scene_folder, load_scene, write_scene

_MODULES = (replica_nice_slam, replica_semantic_nerf, scannet, scannetpp, seven_scenes)
READERS: dict[str, Callable[..., ConvertPlan]] = {m.KIND: m.read for m in _MODULES}
READER_OPTIONS: dict[str, tuple[str, ...]] = {m.KIND: tuple(m.OPTIONS) for m in _MODULES}
OPTION_FLAGS = {"intrinsics": "--intrinsics", "color_intrinsics": "--color-intrinsics", "resolution": "--resolution",
                "class_names": "--class-names", "label_map": "--label-map", "mesh": "--mesh", "no_gt": "--no-gt"}
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


def convert(kind: str, src: str | Path, out: str | Path, stride: int = 1, max_frames: int | None = None,
            force: bool = False, *, skip_bad_frames: bool = False, log=print, check_pairs: int = 5,
            holdout_every: int = 0, **opts) -> dict:
    """Convert the dataset folder `src` of `kind` into the scene folder `out`; returns a summary.

    opts (only where the reader takes them): intrinsics (fx, fy, cx, cy), color_intrinsics (fx, fy, cx, cy),
    resolution ('depth' | 'color' | 'WxH'), class_names (Path), label_map (Path), mesh (Path), no_gt (bool).
    holdout_every N >= 2 holds every Nth frame out of training (splits.json; eval uses all frames).
    Raises ReaderError (bad source), FileExistsError (`out` exists without `force`),
    FileNotFoundError (no `src`).
    """
    if kind not in READERS:
        raise ReaderError(f"unknown dataset kind {kind!r}; choose one of {', '.join(READERS)}")
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such folder")
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
    for note in plan.notes:
        log(f"note: {note}")
    n = len(plan.frame_ids)
    log(f"converting {n} frame(s) of {src} ({kind}) into {out} at {plan.size[0]}x{plan.size[1]}"
        + (f"; {len(plan.skipped)} bad frame(s) skipped" if plan.skipped else ""))

    def frames():
        for i in tqdm(range(n), desc="convert", dynamic_ncols=True, mininterval=1.0):
            yield plan.load(i)

    name = src.resolve().name
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
