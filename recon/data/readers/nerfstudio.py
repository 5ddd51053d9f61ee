"""nerfstudio datasets with depth: `transforms.json` as nerfstudio's data processing writes it
(`ns-process-data polycam --use-depth`, other phone apps' exports in that layout, any NeRF-style capture
with per-frame depth). nerfstudio's Record3D processing keeps no depth: convert a Record3D capture
with --from record3d instead.

Layout (SRC = the folder holding transforms.json, or the .json file itself):

    transforms.json       {"fl_x", "fl_y", "cx", "cy", "w", "h",            intrinsics, shared ...
                           "k1", "k2", "k3", "k4", "p1", "p2" | "distortion_params",   optional
                           "camera_model", "applied_transform", "applied_scale", ...,
                           "frames": [{"file_path": "images/frame_00001.jpg",
                                       "depth_file_path": "depth/frame_00001.png",
                                       "transform_matrix": 4x4 (or 3x4) camera-to-world,
                                       "fl_x", ...: per-frame intrinsics where not shared}, ...]}
    images/...            colour (any format PIL reads)
    depth/...             z-depth: 16-bit PNG (or 32-bit TIFF, or .npy) in units of depth_unit_scale_factor metres

Intrinsics: a key at the top level is shared by every frame and wins over the frame's own (as in
nerfstudio's dataparser, nerfstudio/data/dataparsers/nerfstudio_dataparser.py: `fx_fixed = "fl_x" in
meta`); otherwise every frame must carry it. `w`, `h` must match the colour image.

Pixel convention: nerfstudio puts pixel centres at half-integers. Its camera model
(nerfstudio/cameras/cameras.py) builds pixel coordinates with `get_image_coords(pixel_offset=0.5)`
(`torch.meshgrid(arange(H), arange(W)) + 0.5`) and the ray of a pixel as ((x - cx) / fx, (y - cy) / fy),
so the centre of the top-left pixel is (0.5, 0.5), as in COLMAP, whose cx, cy nerfstudio's
colmap_utils copies unchanged; nerfstudio's docs (docs/quickstart/data_conventions.md, "Pixel
coordinates") say the same in words: the ray for pixel (0, 0) goes through that pixel's centre,
"distinct from OpenCV". nerfstudio's record3d_utils.py sets cx, cy = W / 2, H / 2 for the image
centre. This project's convention (docs/scene_format.md) has integer pixel centres, image centre
((W - 1) / 2, (H - 1) / 2); so **cx = cx_nerfstudio - 0.5, cy = cy_nerfstudio - 0.5** (checked by
tests/recon/data/test_own_captures.py: a 7-Scenes scene written in this layout reads back identical).

Poses: `transform_matrix` is camera-to-world with OpenGL / Blender camera axes (x right, y up, z back;
docs/quickstart/data_conventions.md, "Camera/view space"); converted to OpenCV axes with
c2w @ diag(1, -1, -1, 1).
The world frame is the one transforms.json is written in (for Polycam nerfstudio has already permuted
its axes; for COLMAP data it is COLMAP's frame after `applied_transform`). nerfstudio's own re-orienting,
centring and scaling (`orientation_method`, `center_method`, `auto_scale_poses`) happens when
nerfstudio *loads* the data and is not part of the file, so it is not applied here: poses stay metric.
`applied_transform` (the rotation nerfstudio applied to the original data's world frame before saving)
is rigid, so the saved poses are used as they are and the matrix is recorded in scene.json
(reader.applied_transform). `applied_scale` (saved poses = original x applied_scale; nerfstudio scales
depth by it to match) is undone: translations are divided by it, so that they agree with the depth.

Depth: `depth_file_path` is needed on every frame (this project reconstructs from RGB-D); values times
`depth_unit_scale_factor` (--depth-unit-scale-factor, default 1e-3: millimetres, nerfstudio's default)
are metres; 0 (and NaN) = no measurement. Depth is z-depth (nerfstudio's depth losses multiply it by
the ray's direction norm). A depth image of another size than the colour image covers the same view
(as nerfstudio assumes: it resizes depth to the colour size); it is re-imaged into the colour camera
with nearest sampling (pixel centre to pixel centre; nerfstudio's cv2 INTER_NEAREST is off by up to half
a source pixel). A depth image of another aspect ratio is refused.

Distortion: k1, k2, k3, k4, p1, p2 (or `distortion_params` in that order) follow nerfstudio's
perspective model (camera_utils.radial_and_tangential_undistort: OpenCV's radial-tangential model with
a 4th radial term). Non-zero distortion is removed here, without OpenCV: every pixel of the undistorted
pinhole image (same K) is looked up in the distorted image through the forward model (bilinear for
colour, nearest for depth, which is assumed to share the colour image's distortion); pixels that fall
outside the source become black / invalid. Fisheye and other non-perspective `camera_model`s are
refused.

Frames are taken in the order of their file names (as nerfstudio sorts them); frame ids are the
trailing numbers of the colour file names when those are unique (frame_00001.jpg -> 000001), else
the position in that order. When frames have different intrinsics, the first converted frame's K
and size are the output's and every frame is re-imaged into it. `mask_path` is ignored. No labels:
empty classes.json, no gt/, no masks/.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from recon.data.readers.common import (ConvertPlan, ReaderError, c2w_from_opengl, check_K, choose_frames,
                                       distorted_source_map, image_size, load_json, pose_problem, read_png16,
                                       read_rgb, require_file, resample_to_camera, same_aspect, sample_image,
                                       scale_intrinsics, stride_candidates)
from recon.data.scene import FrameRecord, depth_m_to_mm

KIND = "nerfstudio"
OPTIONS = ("depth_unit_scale_factor",)
DEFAULT_DEPTH_UNIT_SCALE = 1e-3
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
# nerfstudio's CAMERA_MODEL_TO_TYPE names of perspective cameras (process_data_utils.CAMERA_MODELS values too)
PERSPECTIVE_MODELS = frozenset({"PINHOLE", "SIMPLE_PINHOLE", "OPENCV", "SIMPLE_RADIAL", "RADIAL", "PERSPECTIVE"})
INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h")


@dataclass
class _Frame:
    name: str                       # file_path as written
    color: Path
    depth: Path | None
    K: np.ndarray                   # [3, 3] OpenCV convention (cx, cy already shifted by -0.5)
    size: tuple[int, int]           # (w, h) from the JSON
    dist: tuple[float, ...]         # (k1, k2, k3, k4, p1, p2)
    c2w: np.ndarray | None          # [4, 4] OpenCV axes, metres; None if unreadable
    pose_error: str | None


def _number(value, key: str, where: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ReaderError(f"{where}: '{key}' must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise ReaderError(f"{where}: '{key}' is not finite ({value!r})")
    return out


def _distortion(entry: dict, where: str) -> tuple[float, ...] | None:
    """(k1, k2, k3, k4, p1, p2) if `entry` names any distortion, else None."""
    if "distortion_params" in entry:
        vals = entry["distortion_params"]
        if not isinstance(vals, list) or len(vals) != 6:
            raise ReaderError(f"{where}: 'distortion_params' must be 6 numbers (k1, k2, k3, k4, p1, p2)")
        return tuple(_number(v, "distortion_params", where) for v in vals)
    if any(k in entry for k in DISTORTION_KEYS):
        return tuple(_number(entry.get(k, 0.0), k, where) for k in DISTORTION_KEYS)
    return None


def _pose(value, where: str) -> tuple[np.ndarray | None, str | None]:
    """(c2w [4, 4] as written, None) or (None, the problem)."""
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None, f"{where}: 'transform_matrix' is not a matrix of numbers"
    if m.shape == (3, 4):
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    if m.shape != (4, 4):
        return None, f"{where}: 'transform_matrix' must be 4x4 (or 3x4), got shape {list(m.shape)}"
    why = pose_problem(m)
    return (None, f"{where}: 'transform_matrix' {why}") if why else (m, None)


def read_depth_file(path: Path) -> np.ndarray:
    """A nerfstudio depth file -> [H, W] float64 in stored units (16-bit PNG, 32-bit TIFF or .npy)."""
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise ReaderError(f"{path}: unreadable .npy depth ({type(exc).__name__}: {exc})") from None
        arr = np.squeeze(arr)
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
            raise ReaderError(f"{path}: expected a 2D numeric depth array, got {arr.dtype} {list(arr.shape)}")
        return arr.astype(np.float64)
    if path.suffix.lower() in (".tif", ".tiff"):
        try:
            with Image.open(path) as im:
                arr = np.asarray(im)
        except Exception as exc:
            raise ReaderError(f"{path}: unreadable depth image ({type(exc).__name__}: {exc})") from None
        if arr.ndim != 2:
            raise ReaderError(f"{path}: expected a single-channel depth image, got shape {list(arr.shape)}")
        return arr.astype(np.float64)
    return read_png16(path).astype(np.float64)


def read(src: Path, *, stride: int = 1, max_frames: int | None = None, skip_bad_frames: bool = False,
         depth_unit_scale_factor: float | None = None) -> ConvertPlan:
    src = Path(src)
    json_path = src if src.is_file() else src / "transforms.json"
    require_file(json_path, "nerfstudio's transforms.json (ns-process-data writes it)")
    data_dir = json_path.parent
    meta = load_json(json_path)
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise ReaderError(f"{json_path}: expected an object with a non-empty 'frames' list")
    model = str(meta.get("camera_model", "OPENCV")).upper()
    if model not in PERSPECTIVE_MODELS:
        raise ReaderError(f"{json_path}: camera_model {meta['camera_model']!r} is not a perspective camera; only "
                          f"{', '.join(sorted(PERSPECTIVE_MODELS))} can be converted (undistort fisheye / "
                          "equirectangular images first)")
    scale = DEFAULT_DEPTH_UNIT_SCALE if depth_unit_scale_factor is None else float(depth_unit_scale_factor)
    if not (math.isfinite(scale) and scale > 0):
        raise ReaderError(f"--depth-unit-scale-factor must be a positive number of metres per unit, got {scale}")
    applied_scale = _number(meta.get("applied_scale", 1.0), "applied_scale", str(json_path))
    if applied_scale <= 0:
        raise ReaderError(f"{json_path}: 'applied_scale' must be positive, got {applied_scale}")
    applied_transform = meta.get("applied_transform")
    shared_dist = _distortion(meta, str(json_path))

    entries = meta["frames"]
    for k, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("file_path"), str):
            raise ReaderError(f"{json_path}: frames[{k}] needs a 'file_path' string")
    if not any("depth_file_path" in e for e in entries):
        raise ReaderError(f"{json_path}: no frame has a 'depth_file_path'; this project needs depth (RGB-D). "
                          "Process a Polycam capture with `ns-process-data polycam --use-depth`; for a Record3D "
                          "capture convert the .r3d itself with --from record3d (nerfstudio's record3d processing "
                          "drops depth)")
    entries = sorted(entries, key=lambda e: e["file_path"])    # nerfstudio's order (by file name)

    def parse(k: int, e: dict) -> _Frame:
        where = f"{json_path} (frames[{k}], {e['file_path']})"
        vals = {}
        for key in INTRINSIC_KEYS:
            if key in meta:
                vals[key] = _number(meta[key], key, str(json_path))
            elif key in e:
                vals[key] = _number(e[key], key, where)
            else:
                raise ReaderError(f"{where}: no '{key}' (neither shared at the top level nor in the frame)")
        w, h = int(vals["w"]), int(vals["h"])
        K = np.array([[vals["fl_x"], 0.0, vals["cx"] - 0.5], [0.0, vals["fl_y"], vals["cy"] - 0.5], [0.0, 0.0, 1.0]])
        check_K(K, where)
        dist = shared_dist if shared_dist is not None else (_distortion(e, where) or (0.0,) * 6)
        c2w_gl, why = _pose(e.get("transform_matrix"), where) if "transform_matrix" in e else \
            (None, f"{where}: no 'transform_matrix'")
        c2w = None
        if c2w_gl is not None:
            c2w = c2w_from_opengl(c2w_gl)
            c2w[:3, 3] /= applied_scale
        depth = data_dir / e["depth_file_path"] if isinstance(e.get("depth_file_path"), str) else None
        return _Frame(e["file_path"], data_dir / e["file_path"], depth, K, (w, h), tuple(dist), c2w, why)

    frames = [parse(k, e) for k, e in enumerate(entries)]
    numbers = [re.search(r"(\d+)$", Path(f.name).stem) for f in frames]
    if all(numbers) and len({int(m.group(1)) for m in numbers}) == len(frames) and \
            max(int(m.group(1)) for m in numbers) <= 999999:
        ids = [int(m.group(1)) for m in numbers]
    else:
        ids = list(range(len(frames)))
    if len(frames) > 1000000:
        raise ReaderError(f"{json_path}: {len(frames)} frames; at most 1000000 fit in 6-digit frame ids")

    def problem(k: int) -> str | None:
        f = frames[k]
        if f.pose_error:
            return f.pose_error
        if not f.color.is_file():
            return f"{f.color}: missing (colour image of {json_path.name} frame {f.name})"
        if f.depth is None:
            return f"{json_path}: frame {f.name} has no 'depth_file_path'"
        if not f.depth.is_file():
            return f"{f.depth}: missing (depth image of frame {f.name})"
        return None

    kept, skipped = choose_frames(stride_candidates(list(range(len(frames))), stride), max_frames, problem,
                                  skip_bad_frames)
    ref = frames[kept[0]]
    K_out, size = ref.K, ref.size
    notes = []
    if any(f.size != size or not np.allclose(f.K, K_out) for f in (frames[k] for k in kept)):
        notes.append(f"frames have different intrinsics; each is re-imaged into the first one's ({ref.name})")
    if any(any(f.dist) for f in (frames[k] for k in kept)):
        notes.append("undistorting colour and depth with the distortion coefficients of transforms.json")
    if any("mask_path" in e for e in entries):
        notes.append("mask_path is ignored")

    def load(i: int) -> FrameRecord:
        f = frames[kept[i]]
        color = read_rgb(f.color)
        if (color.shape[1], color.shape[0]) != f.size:
            raise ReaderError(f"{f.color}: image is {color.shape[1]}x{color.shape[0]} but {json_path.name} says "
                              f"w x h = {f.size[0]}x{f.size[1]}")
        raw = read_depth_file(f.depth)
        d_size = (raw.shape[1], raw.shape[0])
        if not same_aspect(d_size, f.size):
            raise ReaderError(f"{f.depth}: depth is {d_size[0]}x{d_size[1]}, not the aspect ratio of the "
                              f"{f.size[0]}x{f.size[1]} colour image {f.color.name}")
        depth_m = np.where(np.isfinite(raw) & (raw > 0), raw * scale, 0.0)
        same_camera = f.size == size and np.allclose(f.K, K_out, atol=1e-9)
        if not any(f.dist):
            K_d = f.K if d_size == f.size else scale_intrinsics(f.K, f.size, d_size)
            color_out = color if same_camera else resample_to_camera(color, f.K, K_out, size, "linear")
            depth_out = depth_m if (same_camera and d_size == f.size) else \
                resample_to_camera(depth_m, K_d, K_out, size, "nearest")
        else:
            us, vs = distorted_source_map(f.K, f.dist, K_out, size)         # in the frame's colour pixels
            color_out = sample_image(color, us, vs, "linear")
            sx, sy = d_size[0] / f.size[0], d_size[1] / f.size[1]
            depth_out = sample_image(depth_m, (us + 0.5) * sx - 0.5, (vs + 0.5) * sy - 0.5, "nearest")
        depth_mm = depth_m_to_mm(depth_out)
        if not depth_mm.any():
            raise ReaderError(f"{f.depth}: no valid depth (all zero, or beyond 65.535 m with "
                              f"--depth-unit-scale-factor {scale:g})")
        return FrameRecord(color=color_out, c2w=f.c2w, depth_mm=depth_mm)

    first_size = image_size(ref.color)
    if first_size != ref.size:
        raise ReaderError(f"{ref.color}: image is {first_size[0]}x{first_size[1]} but {json_path.name} says "
                          f"w x h = {ref.size[0]}x{ref.size[1]}")
    meta_out = {"transforms": str(json_path), "depth_unit_scale_factor": scale,
                "pixel_convention": "cx, cy = nerfstudio's - 0.5 (nerfstudio: pixel centres at +0.5)",
                "pose_convention": "transform_matrix (OpenGL axes) @ diag(1, -1, -1, 1)",
                "applied_transform": applied_transform, "applied_scale": applied_scale,
                "camera_model": model, "undistorted": bool(any(any(frames[k].dist) for k in kept))}
    return ConvertPlan(kind=KIND, K=K_out, size=size, frame_ids=[f"{ids[k]:06d}" for k in kept],
                       source_names=[frames[k].name for k in kept], c2w=np.stack([frames[k].c2w for k in kept]),
                       load=load, classes=[], meta=meta_out, skipped=skipped, notes=notes)

