"""Microsoft 7-Scenes RGB-D sequences (Kinect v1, 640x480).

Layout (SRC = one sequence folder, e.g. redkitchen/seq-01):

    frame-NNNNNN.color.png   RGB 640x480 (.jpg accepted: the tsdf-fusion-python copy is JPEG)
    frame-NNNNNN.depth.png   uint16 millimetres; 0 and 65535 = invalid
    frame-NNNNNN.pose.txt    4x4 camera-to-world, metres, OpenCV axes
    camera-intrinsics.txt    optional 3x3 K (only in third-party copies; the dataset itself has none)

Depth intrinsics: --intrinsics FX FY CX CY, else camera-intrinsics.txt in SRC, else the values the
dataset page gives, fx = fy = 585, cx = 320, cy = 240 (a note says so). These are the depth camera's
(KinectFusion's) intrinsics, and the output K: the scene is written on the depth camera's grid.
Measured on the shared sample: the depth of frames 20 source frames apart reprojects with a median
error of 8.1 mm with fx = 585 (9.6 mm at 570, 8.5 mm at 600, 11.6 mm at 555), so 585 fits.

Colour registration: 7-Scenes' colour and depth are *not* registered (the dataset says the cameras
are uncalibrated); most users nevertheless use the colour image as if taken by the depth camera.
Measured on the shared sample (multi-view photometric consistency: points from one frame's depth,
moved into a second frame with the poses, should have the same grey value in both colour images,
12 frame pairs 20 source frames apart, 30k points each, occluded points removed with the second
depth): treating colour as the depth camera (fx = 585) gives a mean grey-level difference of 15.3;
modelling the colour camera with fx = fy = 525, cx = 320, cy = 240 (the usual Kinect v1 RGB focal
length) gives 11.2; a free fit gives fx 518, fy 530 and, with ~3 px principal-point offsets and a
1 cm baseline, 10.7. On the converted scenes (nearest sampling, same pairs) the default gives 11.8
against 16.2 for colour taken as is. So by default the colour image is re-imaged from
the colour camera K_c = (525, 525, 320, 240) into the depth camera (a centre pixel stays put, a
border pixel moves ~33 px; the colour camera sees wider, so no border is lost); the residual
parallax of the ~1-2.5 cm RGB-depth baseline is ignored. --color-intrinsics FX FY CX CY sets K_c;
--color-intrinsics 585 585 320 240 reproduces the unregistered common practice (so does any image
size other than 640x480 without --color-intrinsics).

Poses are used as is (camera-to-world, OpenCV axes), checked numerically with the depth
reprojection on the small real 7-Scenes sample (7scenes_redkitchen_100, see tests/conftest.py): median 6.1 mm over its 99 consecutive
pairs (10 source frames apart; p90 10 mm), while reading the poses with OpenGL axes puts frames
30 source frames apart 6 to 68 cm off. No labels and no mesh: empty
classes.json, no gt/, no masks/.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from recon.data.readers.common import (ConvertPlan, K_from_values, ReaderError, check_K, choose_frames,
                                       depth_raw_to_mm, image_size, numbered_files, pose_file_problem,
                                       read_color_depth, read_intrinsics_file, read_matrix, resample_to_camera,
                                       stride_candidates)
from recon.data.scene import FrameRecord

KIND = "7scenes"
OPTIONS = ("intrinsics", "color_intrinsics")
DEFAULT_K = (585.0, 585.0, 320.0, 240.0)        # depth camera, 640x480
DEFAULT_COLOR_K = (525.0, 525.0, 320.0, 240.0)  # colour camera, 640x480 (see the module docstring)
INVALID_DEPTH = (65535,)


def read(src: Path, *, stride: int = 1, max_frames: int | None = None, skip_bad_frames: bool = False,
         intrinsics: tuple[float, float, float, float] | None = None,
         color_intrinsics: tuple[float, float, float, float] | None = None) -> ConvertPlan:
    src = Path(src)
    colors = numbered_files(src, r"frame-(\d+)\.color\.(?:png|jpg|jpeg)")
    if not colors:
        seqs = sorted(p.name for p in src.glob("seq-*") if p.is_dir())
        hint = f"; it has sequences {', '.join(seqs)}: pass one of them" if seqs else ""
        raise ReaderError(f"{src}: no frame-NNNNNN.color.png images (7-Scenes sequence folder expected){hint}")
    depths = numbered_files(src, r"frame-(\d+)\.depth\.png")
    poses = numbered_files(src, r"frame-(\d+)\.pose\.txt")
    numbers = sorted(colors)
    W, H = image_size(colors[numbers[0]])
    notes: list[str] = []
    k_file = src / "camera-intrinsics.txt"
    if intrinsics is not None:
        K, k_src = K_from_values(*intrinsics), "--intrinsics"
    elif k_file.is_file():
        K, k_src = read_intrinsics_file(k_file), str(k_file)
    else:
        K, k_src = K_from_values(*DEFAULT_K), "7-Scenes defaults"
        notes.append("using the 7-Scenes intrinsics fx = fy = 585, cx = 320, cy = 240 (pass --intrinsics to change)")
    check_K(K, k_src)
    if not (0 < K[0, 2] < W and 0 < K[1, 2] < H):
        raise ReaderError(f"{k_src}: principal point ({K[0, 2]:g}, {K[1, 2]:g}) lies outside the {W}x{H} images")
    if color_intrinsics is not None:
        K_color = K_from_values(*color_intrinsics)
    elif (W, H) == (640, 480):
        K_color = K_from_values(*DEFAULT_COLOR_K)
        notes.append("re-imaging colour from the colour camera (fx = fy = 525, cx = 320, cy = 240) into the depth "
                     "camera; pass --color-intrinsics to change")
    else:
        K_color = K
        notes.append(f"images are {W}x{H}, not 640x480: colour is used as if taken by the depth camera "
                     "(pass --color-intrinsics to re-image it)")
    check_K(K_color, "--color-intrinsics")

    def problem(n: int) -> str | None:
        stem = f"frame-{n:06d}"
        if n not in depths:
            return f"{src / (stem + '.depth.png')}: missing (frame {colors[n].name} has no depth)"
        if n not in poses:
            return f"{src / (stem + '.pose.txt')}: missing (frame {colors[n].name} has no pose)"
        return pose_file_problem(poses[n])

    kept, skipped = choose_frames(stride_candidates(numbers, stride), max_frames, problem, skip_bad_frames)
    c2w = np.stack([read_matrix(poses[n], 4, 4) for n in kept])

    def load(i: int) -> FrameRecord:
        n = kept[i]
        color, raw = read_color_depth(colors[n], depths[n], (W, H))
        depth_mm = depth_raw_to_mm(raw, 0.001, invalid=INVALID_DEPTH)
        if not depth_mm.any():
            raise ReaderError(f"{depths[n]}: no valid depth (all zero or 65535)")
        return FrameRecord(color=resample_to_camera(color, K_color, K, (W, H), "linear"), c2w=c2w[i], depth_mm=depth_mm)

    meta = {"intrinsics_from": k_src, "pose_convention": "opencv c2w, as is", "K_color": K_color.tolist(),
            "color_registration": "colour re-imaged from K_color into the depth camera K (baseline ignored)"}
    return ConvertPlan(kind=KIND, K=K, size=(W, H), frame_ids=[f"{n:06d}" for n in kept],
                       source_names=[colors[n].name for n in kept], c2w=c2w, load=load, classes=[], meta=meta,
                       skipped=skipped, notes=notes)
