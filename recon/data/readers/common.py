"""Shared pieces of the dataset readers: the plan a reader returns, frame selection with bad-frame
handling, pinhole-camera maths (intrinsics scaling, resampling an image into another pinhole camera
with the same centre), label/class rules and the depth reprojection check.

Conventions (docs/scene_format.md): K is a 3x3 pinhole matrix for the output images;
integer pixel (u, v) is a pixel centre and its ray is ((u - cx) / fx, (v - cy) / fy, 1); poses are
camera-to-world 4x4 in metres with OpenCV camera axes (x right, y down, z forward); depth is z-depth.
"""
from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

import numpy as np
from PIL import Image

from recon.data.scene import FrameRecord, pose_problem

T = TypeVar("T")

# Classes whose pixels/vertices carry no instance ("stuff"): the building's enclosing surfaces.
# This follows the ScanNet benchmark helper (BenchmarkScripts/2d_helpers/convert_scannet_instance_image.py:
# "walls/floors/ceilings are not assigned instances") and is applied by exact (case-insensitive) class name
# to every dataset, so the rule is the same for ScanNet (NYU40), ScanNet++ raw labels and Replica classes.
STUFF_NAMES = frozenset({"wall", "floor", "ceiling"})

# OpenCV camera axes (x right, y down, z forward) <-> OpenGL/Blender/ARKit axes (x right, y up, z backward):
# c2w_opencv = c2w_opengl @ diag(1, -1, -1, 1) (and the same matrix converts back).
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


class ReaderError(ValueError):
    """A source dataset folder cannot be converted; the message names the file and the problem."""


@dataclass
class ConvertPlan:
    """What a reader found, validated before any frame is converted.

    `load(i)` reads and converts frame i (colour, depth, optional GT labels, the pose already in
    `c2w[i]`) into a FrameRecord at `size` with intrinsics `K`.
    """
    kind: str
    K: np.ndarray                          # [3, 3] intrinsics of the output images
    size: tuple[int, int]                  # (W, H) of the output images
    frame_ids: list[str]                   # 6-digit ids (from the source frame numbers)
    source_names: list[str]                # source frame name per frame (for scene.json)
    c2w: np.ndarray                        # [N, 4, 4] float64, OpenCV axes, metres
    load: Callable[[int], FrameRecord]
    classes: list[dict] = field(default_factory=list)   # classes.json entries ([] = no labels)
    meta: dict = field(default_factory=dict)
    gt_mesh_writer: Callable[[Path], None] | None = None
    has_gt_images: bool = False
    skipped: list[str] = field(default_factory=list)    # source files of frames skipped as bad
    notes: list[str] = field(default_factory=list)      # printed by convert (choices the reader made)

    def __post_init__(self) -> None:
        self.K = np.asarray(self.K, dtype=np.float64)
        self.c2w = np.asarray(self.c2w, dtype=np.float64).reshape(-1, 4, 4)
        assert self.K.shape == (3, 3), self.K.shape
        assert len(self.frame_ids) == len(self.c2w) == len(self.source_names), \
            (len(self.frame_ids), len(self.c2w), len(self.source_names))


# ----------------------------------------------------------------------------- files

def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise ReaderError(f"{path}: missing ({what})")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ReaderError(f"{path}: missing ({what})")
    return path


def numbered_files(folder: Path, pattern: str) -> dict[int, Path]:
    """{frame number: path} for files in `folder` whose name fully matches `pattern` (one int group)."""
    rx = re.compile(pattern)
    out: dict[int, Path] = {}
    for p in folder.iterdir():
        m = rx.fullmatch(p.name)
        if m:
            out[int(m.group(1))] = p
    return out


def color_depth_files(color_dir: Path, color_pattern: str, depth_dir: Path, depth_pattern: str,
                      expected: str) -> tuple[dict[int, Path], dict[int, Path], list[int]]:
    """({n: colour path}, {n: depth path}, sorted colour frame numbers) by `numbered_files`; an error
    "<color_dir>: no <expected>" when no colour image matches (missing depths are reported per frame)."""
    colors = numbered_files(color_dir, color_pattern)
    depths = numbered_files(depth_dir, depth_pattern)
    if not colors:
        raise ReaderError(f"{color_dir}: no {expected}")
    return colors, depths, sorted(colors)


def read_matrix(path: Path, rows: int, cols: int) -> np.ndarray:
    """Whitespace/comma separated numbers -> [rows, cols] float64; 'inf'/'nan' parse (checked later)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ReaderError(f"{path}: unreadable ({exc})") from None
    try:
        values = np.array(text.replace(",", " ").split(), dtype=np.float64)
    except ValueError as exc:
        raise ReaderError(f"{path}: not numeric ({exc})") from None
    if values.size != rows * cols:
        raise ReaderError(f"{path}: expected {rows}x{cols} = {rows * cols} numbers, found {values.size}")
    return values.reshape(rows, cols)


def read_intrinsics_file(path: Path) -> np.ndarray:
    """A 3x3 or 4x4 (ScanNet) intrinsics text file -> [3, 3] pinhole K."""
    try:
        n = len(path.read_text().replace(",", " ").split())
    except OSError as exc:
        raise ReaderError(f"{path}: unreadable ({exc})") from None
    side = {9: 3, 16: 4}.get(n)
    if side is None:
        raise ReaderError(f"{path}: expected a 3x3 or 4x4 matrix, found {n} numbers")
    K = read_matrix(path, side, side)[:3, :3]
    check_K(K, path)
    return K


def check_K(K: np.ndarray, where: Path | str) -> None:
    if not (np.all(np.isfinite(K)) and K[0, 0] > 0 and K[1, 1] > 0 and abs(K[0, 1]) < 1e-9
            and abs(K[1, 0]) < 1e-9 and np.allclose(K[2], [0, 0, 1])):
        raise ReaderError(f"{where}: not a pinhole matrix (fx 0 cx / 0 fy cy / 0 0 1): {K.tolist()}")


def K_from_values(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.size
    except Exception as exc:  # PIL raises many types for broken files
        raise ReaderError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None


def read_rgb(path: Path) -> np.ndarray:
    """[H, W, 3] uint8."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as exc:
        raise ReaderError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None


def read_png16(path: Path) -> np.ndarray:
    """A single-channel 8- or 16-bit PNG -> [H, W] integer array (uint16 or uint8 as stored)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("I;16", "I;16B", "I;16L", "I", "L", "P"):
                raise ReaderError(f"{path}: image mode {im.mode}, expected a single-channel 8/16-bit PNG")
            arr = np.asarray(im)
    except ReaderError:
        raise
    except Exception as exc:
        raise ReaderError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None
    if arr.ndim != 2:
        raise ReaderError(f"{path}: expected a single-channel image, got shape {arr.shape}")
    if arr.dtype not in (np.uint8, np.uint16):
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ReaderError(f"{path}: values outside uint16")
        arr = arr.astype(np.uint16)
    return arr


def read_color_depth(color_path: Path, depth_path: Path, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(colour [H, W, 3] uint8, raw depth [H, W] as stored) of one frame whose colour and depth are both
    `size` = (W, H); an error naming both files otherwise."""
    W, H = size
    color = read_rgb(color_path)
    raw = read_png16(depth_path)
    if color.shape[:2] != (H, W) or raw.shape != (H, W):
        raise ReaderError(f"{color_path} is {color.shape[1]}x{color.shape[0]} and {depth_path} is "
                          f"{raw.shape[1]}x{raw.shape[0]}; both must be {W}x{H}")
    return color, raw


def depth_raw_to_mm(raw: np.ndarray, metres_per_unit: float, invalid: Iterable[int] = ()) -> np.ndarray:
    """Raw depth [H, W] integer units -> uint16 millimetres, 0 = invalid (also every value in `invalid`)."""
    raw = np.asarray(raw)
    bad = raw == 0
    for v in invalid:
        bad |= raw == v
    mm = np.rint(raw.astype(np.float64) * (metres_per_unit * 1000.0))
    mm[bad | (mm > 65535)] = 0
    return mm.astype(np.uint16)


def find_upwards(start: Path, names: Sequence[str], levels: int = 2) -> Path | None:
    """First existing `start/<name>`, `start/../<name>`, ... (up to `levels` parents)."""
    folder = start
    for _ in range(levels + 1):
        for name in names:
            if (folder / name).is_file():
                return folder / name
        folder = folder.parent
    return None


# ----------------------------------------------------------------------------- frames

def stride_candidates(items: Sequence[T], stride: int) -> list[T]:
    """Every `stride`-th item of the sorted available frames, starting with the first."""
    if stride < 1:
        raise ReaderError(f"--stride must be >= 1, got {stride}")
    return list(items[::stride])


def choose_frames(candidates: Sequence[T], max_frames: int | None, problem_of: Callable[[T], str | None],
                  skip_bad_frames: bool) -> tuple[list[T], list[str]]:
    """Walk `candidates` in order, keeping good ones until `max_frames` are kept.

    `problem_of(c)` returns None or a message naming the bad file. Bad frames raise one ReaderError
    listing them all, or with `skip_bad_frames` are dropped with a warning each (never silently).
    Returns (kept, skipped messages).
    """
    if max_frames is not None and max_frames < 1:
        raise ReaderError(f"--max-frames must be >= 1, got {max_frames}")
    kept: list[T] = []
    bad: list[str] = []
    for c in candidates:
        if max_frames is not None and len(kept) >= max_frames:
            break
        msg = problem_of(c)
        if msg is None:
            kept.append(c)
            continue
        bad.append(msg)
        if skip_bad_frames:
            warnings.warn(f"skipping frame: {msg}")
    if bad and not skip_bad_frames:
        shown = "\n".join(f"  - {m}" for m in bad[:20]) + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
        raise ReaderError(f"{len(bad)} bad frame(s) (pass --skip-bad-frames to drop them with a warning):\n{shown}")
    if not kept:
        raise ReaderError("no usable frames left to convert" + (f" ({len(bad)} bad frame(s) skipped)" if bad else ""))
    return kept, bad


def pose_file_problem(path: Path, c2w: np.ndarray | None = None) -> str | None:
    """None if the pose in `path` (or the given matrix read from it) is a finite rigid transform."""
    if c2w is None:
        try:
            c2w = read_matrix(path, 4, 4)
        except ReaderError as exc:
            return str(exc)
    why = pose_problem(np.asarray(c2w, dtype=np.float64))
    return f"{path}: {why}" if why else None


# ----------------------------------------------------------------------------- cameras

def scale_intrinsics(K: np.ndarray, src_size: tuple[int, int], dst_size: tuple[int, int]) -> np.ndarray:
    """K of an image resized from src_size (W, H) to dst_size covering the same field of view.

    Pixel centres: u_dst + 0.5 = s (u_src + 0.5) with s = W_dst / W_src, so fx' = s fx and
    cx' = s (cx + 0.5) - 0.5 (likewise for y).
    """
    sx = dst_size[0] / src_size[0]
    sy = dst_size[1] / src_size[1]
    out = np.array(K, dtype=np.float64)
    out[0, 0] *= sx
    out[1, 1] *= sy
    out[0, 2] = sx * (K[0, 2] + 0.5) - 0.5
    out[1, 2] = sy * (K[1, 2] + 0.5) - 0.5
    return out


def source_pixel_map(K_src: np.ndarray, K_dst: np.ndarray, dst_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(u_src, v_src) [H, W] float: where each destination pixel centre looks in the source image.

    Both cameras share centre and orientation; only the pinhole intrinsics differ, so a
    destination pixel's ray ((u - cx') / fx', (v - cy') / fy', 1) is imaged at K_src times it.
    """
    W, H = dst_size
    u = np.arange(W, dtype=np.float64)
    v = np.arange(H, dtype=np.float64)
    xs = (u - K_dst[0, 2]) / K_dst[0, 0]
    ys = (v - K_dst[1, 2]) / K_dst[1, 1]
    us = K_src[0, 0] * xs + K_src[0, 2]
    vs = K_src[1, 1] * ys + K_src[1, 2]
    return np.broadcast_to(us[None, :], (H, W)), np.broadcast_to(vs[:, None], (H, W))


def resample_to_camera(img: np.ndarray, K_src: np.ndarray, K_dst: np.ndarray, dst_size: tuple[int, int],
                       interp: str) -> np.ndarray:
    """Re-image `img` ([H, W] or [H, W, C], taken with K_src) as seen by a pinhole camera K_dst of dst_size.

    interp 'nearest' (depth, labels: values are never mixed) or 'linear' (colour; a large
    reduction is first area-filtered by PIL so that it does not alias). Destination pixels whose
    source lies outside the image get 0 (invalid depth, unlabelled, black).
    """
    assert interp in ("nearest", "linear"), interp
    img = np.asarray(img)
    Hs, Ws = img.shape[:2]
    K_src = np.asarray(K_src, dtype=np.float64)
    K_dst = np.asarray(K_dst, dtype=np.float64)
    if (Ws, Hs) == tuple(dst_size) and np.allclose(K_src, K_dst, atol=1e-9):
        return img.copy()
    if interp == "linear":
        reduction = min(K_src[0, 0] / K_dst[0, 0], K_src[1, 1] / K_dst[1, 1])
        if reduction > 1.5:  # pre-filter: box (area) average down to about the destination scale
            new = (max(1, round(Ws / reduction)), max(1, round(Hs / reduction)))
            img = np.asarray(Image.fromarray(img).resize(new, Image.Resampling.BOX))
            K_src = scale_intrinsics(K_src, (Ws, Hs), new)
            Hs, Ws = img.shape[:2]
    us, vs = source_pixel_map(K_src, K_dst, dst_size)                           # [h, w] each
    return sample_image(img, us, vs, interp)


def parse_resolution(text: str | None, default: str) -> str | tuple[int, int]:
    """'depth' | 'color' | 'WxH' -> the string or (W, H)."""
    text = (text or default).strip().lower()
    if text in ("depth", "color", "colour"):
        return "color" if text == "colour" else text
    m = re.fullmatch(r"(\d+)x(\d+)", text)
    if not m or int(m.group(1)) < 8 or int(m.group(2)) < 8:
        raise ReaderError(f"--resolution must be 'depth', 'color' or WxH (e.g. 640x480), got {text!r}")
    return int(m.group(1)), int(m.group(2))


# ----------------------------------------------------------------------------- classes and labels

def is_stuff_name(name: str) -> bool:
    return name.strip().lower() in STUFF_NAMES


def class_entries(names: dict[int, str], prompts: dict[int, list[str]] | None = None) -> list[dict]:
    """classes.json entries for {id: name}; thing unless the name is in STUFF_NAMES."""
    out = []
    for cid in sorted(names):
        if cid <= 0:
            continue
        name = names[cid]
        out.append({"id": int(cid), "name": name, "thing": not is_stuff_name(name),
                    "prompts": list((prompts or {}).get(cid) or [name])})
    return out


def zero_stuff_instances(semantic: np.ndarray, instance: np.ndarray, thing_ids: Iterable[int]) -> np.ndarray:
    """instance with 0 wherever the class is not a thing (stuff and unlabelled carry no instance)."""
    out = np.asarray(instance).astype(np.uint16, copy=True)
    out[~np.isin(semantic, np.fromiter(thing_ids, dtype=np.int64))] = 0
    return out


def lookup(table: np.ndarray, values: np.ndarray) -> np.ndarray:
    """table[values] with values outside the table mapped to 0."""
    values = np.asarray(values).astype(np.int64)
    ok = (values >= 0) & (values < len(table))
    out = np.zeros(values.shape, dtype=table.dtype)
    out[ok] = table[values[ok]]
    return out


def vertex_labels_from_segments(n_vertices: int, seg_indices: Sequence[int], groups: Sequence[dict],
                                label_to_class: Callable[[str], int], where: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex (class id, object id + 1) from a ScanNet-style over-segmentation and segGroups.

    seg_indices [V]: segment id per vertex; groups: [{"objectId", "label", "segments"}, ...].
    Vertices in no group get (0, 0). Later groups overwrite earlier ones on shared segments.
    """
    seg = np.asarray(seg_indices, dtype=np.int64)
    if seg.shape != (n_vertices,):
        raise ReaderError(f"{where}: {seg.size} segment indices for a mesh of {n_vertices} vertices")
    semantic = np.zeros(n_vertices, np.int32)
    instance = np.zeros(n_vertices, np.int32)
    order = np.argsort(seg, kind="stable")
    seg_sorted = seg[order]
    for k, g in enumerate(groups):
        try:
            obj = int(g.get("objectId", g.get("id", k)))
            label = str(g["label"])
            segs = np.asarray(g["segments"], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ReaderError(f"{where}: segGroups[{k}] needs objectId, label and segments ({exc})") from None
        lo = np.searchsorted(seg_sorted, segs, side="left")
        hi = np.searchsorted(seg_sorted, segs, side="right")
        if not len(segs):
            continue
        verts = np.concatenate([order[a:b] for a, b in zip(lo, hi)]) if np.any(hi > lo) else np.zeros(0, np.int64)
        semantic[verts] = label_to_class(label)
        instance[verts] = obj + 1
    return semantic, instance


def load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReaderError(f"{path}: not readable JSON ({exc})") from None


# ----------------------------------------------------------------------------- checks

def depth_reprojection_error(depth_a_m: np.ndarray, depth_b_m: np.ndarray, K: np.ndarray, c2w_a: np.ndarray,
                             c2w_b: np.ndarray, max_points: int = 50000, seed: int = 0) -> dict:
    """How well frame A's depth, moved into frame B with the poses, agrees with B's depth.

    Back-project valid pixels of A (z-depth, pixel-centre rays), transform with inv(c2w_b) @ c2w_a,
    project with K into B, keep points in front of B whose nearest pixel has valid depth, and
    compare the predicted z with B's depth there. Returns {"median_m", "mean_abs_m", "p90_m",
    "n_points", "overlap"} (overlap = fraction of A's sampled points that land on valid B pixels).
    Occlusions and disocclusions add outliers, which the median ignores.
    """
    depth_a_m = np.asarray(depth_a_m, dtype=np.float64)
    depth_b_m = np.asarray(depth_b_m, dtype=np.float64)
    assert depth_a_m.ndim == 2 and depth_a_m.shape == depth_b_m.shape, (depth_a_m.shape, depth_b_m.shape)
    H, W = depth_a_m.shape
    vs, us = np.nonzero(depth_a_m > 0)
    if len(us) > max_points:
        pick = np.random.default_rng(seed).choice(len(us), max_points, replace=False)
        us, vs = us[pick], vs[pick]
    z = depth_a_m[vs, us]
    pts_a = np.stack([(us - K[0, 2]) / K[0, 0] * z, (vs - K[1, 2]) / K[1, 1] * z, z], axis=1)  # [P, 3] m
    a_to_b = np.linalg.inv(c2w_b) @ c2w_a
    pts_b = pts_a @ a_to_b[:3, :3].T + a_to_b[:3, 3]
    zb = pts_b[:, 2]
    front = zb > 1e-3
    ub = np.full(len(zb), -1, np.int64)
    vb = np.full(len(zb), -1, np.int64)
    ub[front] = np.floor(K[0, 0] * pts_b[front, 0] / zb[front] + K[0, 2] + 0.5).astype(np.int64)
    vb[front] = np.floor(K[1, 1] * pts_b[front, 1] / zb[front] + K[1, 2] + 0.5).astype(np.int64)
    inside = front & (ub >= 0) & (ub < W) & (vb >= 0) & (vb < H)
    d_obs = np.zeros(len(zb))
    d_obs[inside] = depth_b_m[vb[inside], ub[inside]]
    ok = inside & (d_obs > 0)
    if not ok.any():
        return {"median_m": float("nan"), "mean_abs_m": float("nan"), "p90_m": float("nan"), "n_points": 0,
                "overlap": 0.0}
    err = np.abs(zb[ok] - d_obs[ok])
    return {"median_m": float(np.median(err)), "mean_abs_m": float(err.mean()), "p90_m": float(np.percentile(err, 90)),
            "n_points": int(ok.sum()), "overlap": float(ok.mean())}


# ----------------------------------------------------------------------------- own captures; convert's common options

def parse_size(text: str | Sequence[int]) -> tuple[int, int]:
    """'WxH' (or a (W, H) pair) -> (W, H), both at least 8."""
    if isinstance(text, str):
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
        if not m:
            raise ReaderError(f"--size must look like 640x480 (width x height in pixels), got {text!r}")
        size = (int(m.group(1)), int(m.group(2)))
    else:
        size = tuple(int(v) for v in text)
        if len(size) != 2:
            raise ReaderError(f"--size needs a width and a height, got {text!r}")
    if min(size) < 8:
        raise ReaderError(f"--size {size[0]}x{size[1]} is too small (at least 8x8)")
    return size


def resize_frame(color: np.ndarray, depth: np.ndarray, K: np.ndarray,
                 size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(colour, depth, K) of a registered frame resized to size = (W, H), covering the same field of view.

    colour [H0, W0, 3] uint8: area average (PIL box filter) when shrinking, bilinear when enlarging.
    depth [H0, W0] (any dtype): nearest, so no depth is invented between surfaces: destination pixel u takes
    source pixel floor((u + 0.5) W0 / W) (the source pixel under its centre; at an exact tie, the right /
    lower one). K [3, 3] is scaled as scale_intrinsics does (pixel centres kept).
    """
    color = np.asarray(color)
    depth = np.asarray(depth)
    H0, W0 = color.shape[:2]
    assert color.ndim == 3 and depth.shape == (H0, W0), (color.shape, depth.shape)
    W, H = size
    if (W, H) == (W0, H0):
        return color.copy(), depth.copy(), np.array(K, dtype=np.float64)
    shrink = W <= W0 and H <= H0
    color_out = np.asarray(Image.fromarray(color).resize((W, H), Image.Resampling.BOX if shrink
                                                         else Image.Resampling.BILINEAR))
    return color_out, resize_nearest(depth, (W, H)), scale_intrinsics(K, (W0, H0), (W, H))


def resize_nearest(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[H0, W0, ...] -> [H, W, ...] for size = (W, H) by nearest sampling: destination pixel u takes source
    pixel floor((u + 0.5) W0 / W) (depth, labels: values are never mixed)."""
    img = np.asarray(img)
    H0, W0 = img.shape[:2]
    W, H = size
    iu = np.minimum(np.floor((np.arange(W) + 0.5) * (W0 / W)).astype(np.int64), W0 - 1)
    iv = np.minimum(np.floor((np.arange(H) + 0.5) * (H0 / H)).astype(np.int64), H0 - 1)
    return img[iv[:, None], iu[None, :]]


def limit_depth_mm(depth_mm: np.ndarray, max_depth_m: float | None) -> np.ndarray:
    """uint16 millimetres with every value beyond `max_depth_m` metres set to 0 (invalid); None = unchanged."""
    out = np.asarray(depth_mm).astype(np.uint16, copy=True)
    if max_depth_m is not None:
        out[out > int(round(max_depth_m * 1000.0))] = 0
    return out


def rotation_from_quaternion_xyzw(q: Sequence[float]) -> np.ndarray:
    """Unit quaternion (x, y, z, w): scalar last, Hamilton convention, as ARKit / Record3D / scipy write it) ->
    [3, 3] rotation matrix. The quaternion is normalised first."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(np.asarray(q, dtype=np.float64))
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def c2w_from_opengl(c2w_gl: np.ndarray) -> np.ndarray:
    """Camera-to-world with OpenGL / ARKit / Blender camera axes (x right, y up, z back) -> OpenCV camera axes
    (x right, y down, z forward): the camera's y and z columns change sign; the world frame is unchanged."""
    return np.asarray(c2w_gl, dtype=np.float64) @ GL_TO_CV


def distort_normalized(x: np.ndarray, y: np.ndarray, dist: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Brown-Conrady distortion of normalised image coordinates, dist = (k1, k2, k3, k4, p1, p2) (nerfstudio's
    order; OpenCV's model with k4 as a 4th radial term): r2 = x^2 + y^2,
    d = 1 + k1 r2 + k2 r2^2 + k3 r2^3 + k4 r2^4, xd = x d + 2 p1 x y + p2 (r2 + 2 x^2),
    yd = y d + 2 p2 x y + p1 (r2 + 2 y^2)."""
    k1, k2, k3, k4, p1, p2 = (float(v) for v in dist)
    r2 = x * x + y * y
    d = 1.0 + r2 * (k1 + r2 * (k2 + r2 * (k3 + r2 * k4)))
    return x * d + 2 * p1 * x * y + p2 * (r2 + 2 * x * x), y * d + 2 * p2 * x * y + p1 * (r2 + 2 * y * y)


def distorted_source_map(K_src: np.ndarray, dist: Sequence[float], K_dst: np.ndarray,
                         dst_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(u_src, v_src) [H, W] float: where each pixel centre of an undistorted pinhole camera K_dst (same centre
    and orientation) is imaged by the distorting camera (K_src, dist). With dist = 0 this is
    source_pixel_map. Sampling the distorted image there undistorts it."""
    W, H = dst_size
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    xd, yd = distort_normalized((u - K_dst[0, 2]) / K_dst[0, 0], (v - K_dst[1, 2]) / K_dst[1, 1], dist)
    return K_src[0, 0] * xd + K_src[0, 2], K_src[1, 1] * yd + K_src[1, 2]


def sample_image(img: np.ndarray, us: np.ndarray, vs: np.ndarray, interp: str) -> np.ndarray:
    """`img` ([H, W] or [H, W, C]) read at source pixel positions (us, vs) [h, w] (integer = pixel centre).

    'nearest' (depth, labels) takes the pixel whose centre is nearest; 'linear' interpolates bilinearly
    (positions up to half a pixel outside the centres clamp to the border pixel). Positions outside the
    image give 0. No anti-aliasing: use for maps near 1:1 (undistortion), resample_to_camera otherwise.
    """
    assert interp in ("nearest", "linear"), interp
    img = np.asarray(img)
    Hs, Ws = img.shape[:2]
    out_shape = us.shape + img.shape[2:]
    if interp == "nearest":
        iu = np.floor(us + 0.5).astype(np.int64)
        iv = np.floor(vs + 0.5).astype(np.int64)
        ok = (iu >= 0) & (iu < Ws) & (iv >= 0) & (iv < Hs)
        out = np.zeros(out_shape, dtype=img.dtype)
        out[ok] = img[iv[ok], iu[ok]]
        return out
    ok = (us >= -0.5) & (us <= Ws - 0.5) & (vs >= -0.5) & (vs <= Hs - 0.5)
    uc = np.clip(us, 0, Ws - 1)
    vc = np.clip(vs, 0, Hs - 1)
    u0 = np.minimum(np.floor(uc).astype(np.int64), max(Ws - 2, 0))
    v0 = np.minimum(np.floor(vc).astype(np.int64), max(Hs - 2, 0))
    u1 = np.minimum(u0 + 1, Ws - 1)
    v1 = np.minimum(v0 + 1, Hs - 1)
    a = (uc - u0)[..., None] if img.ndim == 3 else uc - u0
    b = (vc - v0)[..., None] if img.ndim == 3 else vc - v0
    f = img.astype(np.float64)
    val = f[v0, u0] * (1 - a) * (1 - b) + f[v0, u1] * a * (1 - b) + f[v1, u0] * (1 - a) * b + f[v1, u1] * a * b
    val[~ok] = 0
    if np.issubdtype(img.dtype, np.integer):
        info = np.iinfo(img.dtype)
        val = np.clip(np.rint(val), info.min, info.max)
    return val.astype(img.dtype)


def same_aspect(size_a: tuple[int, int], size_b: tuple[int, int], tol: float = 0.01) -> bool:
    """True if two (W, H) sizes have the same aspect ratio within `tol` (relative)."""
    return abs(size_a[0] * size_b[1] - size_b[0] * size_a[1]) <= tol * size_a[0] * size_b[1]
