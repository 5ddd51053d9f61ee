"""Files of a run folder that other layers read: label images, the held-out depth grid, instance faces.

Rendered panoptic label images, RUN/labels/semantic|instance/<frame id>.png, one layout for every
method (ours and the peer baselines), read by eval/evaluate.py:
- labels/semantic/<fid>.png  uint16 class id per pixel (0 = no prediction)
- labels/instance/<fid>.png  uint16 scene-consistent instance id (0 = none / stuff)
Same size as the scene's colour images; lossless 16-bit PNG. Each file is written atomically
(temporary file + rename).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from recon.core.io import atomic_write_bytes

LABEL_KINDS = ("semantic", "instance")


def label_path(run: Path, kind: str, frame_id: str) -> Path:
    assert kind in LABEL_KINDS, f"label kind must be one of {LABEL_KINDS}, got {kind!r}"
    return Path(run) / "labels" / kind / f"{frame_id}.png"


def depth_npz_bytes(depth_m: np.ndarray) -> bytes:
    """[H, W] z-depth in metres (0 = none) -> the bytes of a compressed .npz with one float32 array
    "depth_m" (read back with read_depth_npz)."""
    assert depth_m.ndim == 2
    buf = io.BytesIO()
    np.savez_compressed(buf, depth_m=depth_m.astype(np.float32))
    return buf.getvalue()


def read_depth_npz(path: Path) -> np.ndarray:
    """RUN/depth_heldout/<frame>.npz -> [H, W] float64 z-depth in metres (0 = none)."""
    with np.load(path) as z:
        if "depth_m" not in z:
            raise ValueError(f"{path}: no 'depth_m' array in it (keys {sorted(z.keys())})")
        return z["depth_m"].astype(np.float64)


def png16_bytes(arr: np.ndarray, path: Path | str = "label image") -> bytes:
    """Lossless 16-bit PNG of an integer image [H, W] (values 0..65535); `path` names it in errors."""
    arr = np.asarray(arr)
    assert arr.ndim == 2, f"{path}: label image must be [H, W], got {arr.shape}"
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{path}: label image must hold integers, got {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise ValueError(f"{path}: label values outside the uint16 range [{arr.min()}, {arr.max()}]")
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint16)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def write_label_images(run: Path, frame_ids: Sequence[str], sem_list: Iterable[np.ndarray],
                       inst_list: Iterable[np.ndarray]) -> None:
    """Write labels/semantic/<fid>.png and labels/instance/<fid>.png for each frame id.

    sem_list, inst_list: per frame [H, W] non-negative integer arrays (class ids, instance ids);
    may be generators (each frame is written as it comes).
    """
    for fid, sem, inst in zip(frame_ids, sem_list, inst_list, strict=True):
        sem, inst = np.asarray(sem), np.asarray(inst)
        assert sem.shape == inst.shape, f"frame {fid}: semantic {sem.shape} and instance {inst.shape} differ"
        for kind, arr in (("semantic", sem), ("instance", inst)):
            path = label_path(run, kind, fid)
            atomic_write_bytes(path, png16_bytes(arr, path))


def has_label_images(run: Path) -> bool:
    return all((Path(run) / "labels" / kind).is_dir() for kind in LABEL_KINDS)


def missing_label_frames(run: Path, frame_ids: Iterable[str]) -> list[str]:
    """Frame ids whose semantic or instance label image is missing."""
    return [f for f in frame_ids if not all(label_path(run, k, f).is_file() for k in LABEL_KINDS)]


def read_label_images(run: Path, frame_id: str, size: tuple[int, int] | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(semantic [H, W] int64, instance [H, W] int64); size (W, H), if given, is checked."""
    out = []
    for kind in LABEL_KINDS:
        path = label_path(run, kind, frame_id)
        img = Image.open(path)
        if img.format != "PNG" or img.mode not in ("I;16", "I;16B", "I;16L", "I", "L"):
            raise ValueError(f"{path}: label image must be a lossless 16-bit PNG (got {img.format} {img.mode})")
        if size is not None and img.size != tuple(size):
            raise ValueError(f"{path}: size {img.size[0]}x{img.size[1]} differs from the scene's {size[0]}x{size[1]}")
        out.append(np.asarray(img).astype(np.int64))
    return out[0], out[1]


def face_labels(faces: np.ndarray, vertex_labels: np.ndarray) -> np.ndarray:
    """Label of each face [F]: the value shared by at least two of its vertices, else its first vertex's."""
    assert faces.ndim == 2 and faces.shape[1] == 3, f"faces must be [F, 3], got {faces.shape}"
    a, b, c = (vertex_labels[faces[:, k]] for k in range(3))
    return np.where((b == c) & (a != b), b, a)


def depth_pixel_grid(height: int, width: int, stride: int) -> np.ndarray:
    """[H, W] bool: the pixels on which held-out depth is rendered and evaluated (every stride-th, centred)."""
    grid = np.zeros((height, width), bool)
    grid[stride // 2::stride, stride // 2::stride] = True
    return grid
