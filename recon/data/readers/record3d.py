"""Record3D captures (iPhone / iPad LiDAR): the app's .r3d export, or the same content unzipped.

Layout (SRC = CAPTURE.r3d, a zip archive, or a folder holding its content):

    metadata        JSON: "K" (9 numbers, the colour camera's 3x3 intrinsics in column-major order),
                    "w", "h" (colour size), "dw", "dh" (depth size), "fps", "frameTimestamps",
                    "poses" ([qx, qy, qz, qw, tx, ty, tz] per frame), "initPose", "cameraType", ...
    rgbd/N.jpg      colour of frame N (N = 0, 1, ...), w x h
    rgbd/N.depth    LZFSE-compressed float32 z-depth in metres, dh x dw, row-major; NaN = no measurement
    rgbd/N.conf     LZFSE-compressed uint8 ARKit confidence, dh x dw: 0 low, 1 medium, 2 high

Sources for the format (there is no official specification): nerfstudio's Record3D processing
(nerfstudio/process_data/record3d_utils.py: `K = np.array(metadata["K"]).reshape((3, 3)).T`, poses
"scalar-last format quaternions (x y z w)" followed by the translation, used directly as nerfstudio's
camera-to-world `transform_matrix`, i.e. with OpenGL camera axes), and USA-Net's reader
(codekansas/usa, usa/tasks/datasets/r3d.py: depth `liblzfse.decompress` -> float32 reshaped to
(dh, dw), NaN = invalid; conf uint8 (dh, dw), pixels with conf != 2 masked; K scaled from (w, h) to the
depth size; poses multiplied on the right by diag(1, -1, -1, 1) to get OpenCV axes).

Conventions used here:
- K: read column-major and checked to be a pinhole matrix (last row 0 0 1); a K that is only valid
  read row-major is accepted with a note. K belongs to the w x h colour image; integer pixel
  coordinates are taken as pixel centres (ARKit does not state the half-pixel convention; the
  difference is at most half a pixel).
- Poses: camera-to-world in ARKit's world frame (metres, gravity along -y) with ARKit's camera axes
  (x right, y up, z back = OpenGL), converted with c2w @ diag(1, -1, -1, 1). Front-camera
  (TrueDepth) recordings carry no poses and are refused.
- Depth: the depth map sees the colour image's field of view at the lower resolution dw x dh (its K is
  the colour K scaled to that size); it is re-imaged to the colour size with nearest sampling.
  Pixels whose confidence is below --min-confidence are set invalid. Default 2 (high only): as in
  USA-Net's reader; ARKit's low / medium pixels lie mostly on depth edges and far or dark surfaces,
  and a missing depth costs the reconstruction less than a wrong one. --min-confidence 1 keeps
  medium, 0 keeps everything. Captures without .conf files (older app versions) are used
  unmasked, with a note.
- Frame ids are the numbers N. No labels: empty classes.json, no gt/, no masks/.
"""
from __future__ import annotations

import io
import json
import math
import re
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from recon.data.readers.common import (ConvertPlan, ReaderError, c2w_from_opengl, check_K, choose_frames,
                                       pose_problem, resample_to_camera, rotation_from_quaternion_xyzw,
                                       scale_intrinsics, stride_candidates)
from recon.data.scene import FrameRecord, depth_m_to_mm

KIND = "record3d"
OPTIONS = ("min_confidence",)
DEFAULT_MIN_CONFIDENCE = 2


class _Capture:
    """Read-only access to the members of an .r3d zip or of its unzipped folder."""

    def __init__(self, src: Path):
        self.src = src
        self.zip: zipfile.ZipFile | None = None
        if src.is_file():
            try:
                self.zip = zipfile.ZipFile(src)
            except (zipfile.BadZipFile, OSError) as exc:
                raise ReaderError(f"{src}: not a Record3D .r3d export (not a readable zip archive: {exc})") from None
            names = [n for n in self.zip.namelist() if not n.endswith("/")]
        elif src.is_dir():
            names = [p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()]
        else:
            raise ReaderError(f"{src}: no such file or folder")
        self.prefix = ""
        if "metadata" not in names and "metadata.json" not in names:
            tops = {n.rsplit("/", 1)[0] for n in names if n.rsplit("/", 1)[-1] in ("metadata", "metadata.json")}
            if len(tops) == 1:              # the content sits in one sub-folder
                self.prefix = tops.pop() + "/"
        self.names = {n[len(self.prefix):] for n in names if n.startswith(self.prefix)}

    def where(self, name: str) -> str:
        return f"{self.src}:{self.prefix}{name}" if self.zip is not None else str(self.src / (self.prefix + name))

    def read(self, name: str) -> bytes:
        try:
            if self.zip is not None:
                return self.zip.read(self.prefix + name)
            return (self.src / (self.prefix + name)).read_bytes()
        except (KeyError, OSError, zipfile.BadZipFile, RuntimeError) as exc:
            raise ReaderError(f"{self.where(name)}: unreadable ({type(exc).__name__}: {exc})") from None


def intrinsics_from_metadata(values, where: str) -> tuple[np.ndarray, str]:
    """(K [3, 3], note) from Record3D's 9 numbers, column-major ([fx, 0, 0, 0, fy, 0, cx, cy, 1])."""
    try:
        flat = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ReaderError(f"{where}: 'K' must be 9 numbers") from None
    if flat.size != 9:
        raise ReaderError(f"{where}: 'K' must be 9 numbers, found {flat.size}")
    for K, note in ((flat.reshape(3, 3).T, ""), (flat.reshape(3, 3), "K read row-major (it is not column-major)")):
        try:
            check_K(K, where)
            return K, note
        except ReaderError:
            continue
    raise ReaderError(f"{where}: 'K' {flat.tolist()} is not a pinhole matrix (column-major fx 0 0 0 fy 0 cx cy 1)")


def pose_from_record3d(values, where: str) -> tuple[np.ndarray | None, str | None]:
    """(c2w [4, 4] OpenCV axes, None) from [qx, qy, qz, qw, tx, ty, tz] (ARKit camera axes), or (None, problem)."""
    try:
        v = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None, f"{where}: pose is not 7 numbers"
    if v.size != 7:
        return None, f"{where}: pose has {v.size} numbers, expected 7 (qx, qy, qz, qw, tx, ty, tz)"
    if not np.all(np.isfinite(v)):
        return None, f"{where}: pose has non-finite values (inf/nan)"
    norm = float(np.linalg.norm(v[:4]))
    if abs(norm - 1.0) > 1e-2:
        return None, f"{where}: pose quaternion has norm {norm:.4g}, expected 1"
    c2w_gl = np.eye(4)
    c2w_gl[:3, :3] = rotation_from_quaternion_xyzw(v[:4])
    c2w_gl[:3, 3] = v[4:]
    c2w = c2w_from_opengl(c2w_gl)
    why = pose_problem(c2w)
    return (None, f"{where}: {why}") if why else (c2w, None)


def _lzfse():
    try:
        import lzfse
    except ImportError as exc:
        raise ReaderError(f"--from record3d needs the lzfse package ({exc}); install it with "
                          "`.venv/bin/pip install lzfse`") from None
    return lzfse


def decode_lzfse(blob: bytes, dtype, shape: tuple[int, int], where: str) -> np.ndarray:
    """LZFSE blob -> array of `shape` (rows, cols) and `dtype`; ReaderError naming `where` otherwise."""
    lzfse = _lzfse()
    try:
        raw = lzfse.decompress(blob)
    except Exception as exc:  # lzfse.error, usually with an empty message
        why = f"lzfse: {exc}" if str(exc) else "the LZFSE decoder rejected it"
        raise ReaderError(f"{where}: not an LZFSE-compressed image ({why})") from None
    itemsize = np.dtype(dtype).itemsize
    need = shape[0] * shape[1] * itemsize
    if len(raw) != need:
        raise ReaderError(f"{where}: {len(raw)} bytes after decompression; a {shape[1]}x{shape[0]} "
                          f"{np.dtype(dtype).name} image has {need}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def read(src: Path, *, stride: int = 1, max_frames: int | None = None, skip_bad_frames: bool = False,
         min_confidence: int | None = None) -> ConvertPlan:
    src = Path(src)
    _lzfse()                                # a missing package is reported before anything else
    cap = _Capture(src)
    meta_name = "metadata" if "metadata" in cap.names else "metadata.json" if "metadata.json" in cap.names else None
    if meta_name is None:
        raise ReaderError(f"{src}: no 'metadata' (Record3D's JSON with K, w, h, poses); is this an .r3d export?")
    where = cap.where(meta_name)
    try:
        meta = json.loads(cap.read(meta_name).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReaderError(f"{where}: not readable JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ReaderError(f"{where}: expected a JSON object")
    conf_min = DEFAULT_MIN_CONFIDENCE if min_confidence is None else int(min_confidence)
    if conf_min not in (0, 1, 2):
        raise ReaderError(f"--min-confidence must be 0, 1 or 2 (ARKit low / medium / high), got {min_confidence}")
    K, k_note = intrinsics_from_metadata(meta.get("K"), where)
    try:
        W, H = int(meta["w"]), int(meta["h"])
    except (KeyError, TypeError, ValueError):
        raise ReaderError(f"{where}: needs integer 'w' and 'h' (the colour image size)") from None
    poses = meta.get("poses")
    if not isinstance(poses, list) or not poses:
        raise ReaderError(f"{where}: no 'poses'; front-camera (TrueDepth) recordings and exports without "
                          "tracking carry none, and this reader needs them")

    rx = re.compile(r"rgbd/(\d+)\.jpg")
    colors = {int(m.group(1)): m.group(0) for m in map(rx.fullmatch, cap.names) if m}
    if not colors:
        raise ReaderError(f"{src}: no rgbd/N.jpg colour images")
    has_conf = any(n.endswith(".conf") for n in cap.names)
    notes = [k_note] if k_note else []
    if conf_min > 0 and not has_conf:
        notes.append("no rgbd/N.conf confidence maps: depth is used without a confidence mask")

    if "dw" in meta and "dh" in meta:
        try:
            dsize = (int(meta["dw"]), int(meta["dh"]))
        except (TypeError, ValueError):
            raise ReaderError(f"{where}: 'dw', 'dh' must be integers") from None
    else:                                   # older exports: the depth size follows from the blob length
        dsize = None

    def depth_size(n_floats: int, name: str) -> tuple[int, int]:
        dh = int(round(math.sqrt(n_floats * H / W)))
        dw = n_floats // max(dh, 1)
        if dw * dh != n_floats:
            raise ReaderError(f"{cap.where(name)}: {n_floats} depth values do not form a {W}:{H} image, "
                              "and metadata has no 'dw', 'dh'")
        return dw, dh

    cams: dict[int, np.ndarray] = {}

    def problem(n: int) -> str | None:
        for name, what in ((f"rgbd/{n}.depth", "depth"), (f"rgbd/{n}.conf", "confidence")):
            if name not in cap.names and (what == "depth" or (conf_min > 0 and has_conf)):
                return f"{cap.where(name)}: missing ({what} of frame {n})"
        if n >= len(poses):
            return f"{where}: no pose for frame {n} ('poses' has {len(poses)})"
        c2w, why = pose_from_record3d(poses[n], f"{where} (poses[{n}])")
        if why:
            return why
        cams[n] = c2w
        return None

    kept, skipped = choose_frames(stride_candidates(sorted(colors), stride), max_frames, problem, skip_bad_frames)
    c2w = np.stack([cams[n] for n in kept])

    def load(i: int) -> FrameRecord:
        n = kept[i]
        try:
            with Image.open(io.BytesIO(cap.read(colors[n]))) as im:
                color = np.asarray(im.convert("RGB"))
        except ReaderError:
            raise
        except Exception as exc:
            raise ReaderError(f"{cap.where(colors[n])}: unreadable image ({type(exc).__name__}: {exc})") from None
        if (color.shape[1], color.shape[0]) != (W, H):
            raise ReaderError(f"{cap.where(colors[n])}: image is {color.shape[1]}x{color.shape[0]}, metadata says "
                              f"w x h = {W}x{H}")
        name = f"rgbd/{n}.depth"
        blob = cap.read(name)
        ds = dsize
        if ds is None:
            lzfse = _lzfse()
            try:
                ds = depth_size(len(lzfse.decompress(blob)) // 4, name)
            except lzfse.error:
                ds = (1, 1)                 # decode_lzfse below reports the broken blob
        depth = decode_lzfse(blob, np.float32, (ds[1], ds[0]), cap.where(name))
        depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0).astype(np.float32)   # [dh, dw] metres
        if conf_min > 0 and has_conf:
            conf = decode_lzfse(cap.read(f"rgbd/{n}.conf"), np.uint8, (ds[1], ds[0]), cap.where(f"rgbd/{n}.conf"))
            depth[conf < conf_min] = 0
        K_d = scale_intrinsics(K, (W, H), ds)
        depth_mm = depth_m_to_mm(resample_to_camera(depth, K_d, K, (W, H), "nearest"))
        if not depth_mm.any():
            raise ReaderError(f"{cap.where(name)}: no valid depth (all NaN / zero"
                              + (f", or below confidence {conf_min})" if conf_min > 0 and has_conf else ")"))
        return FrameRecord(color=color, c2w=c2w[i], depth_mm=depth_mm)

    meta_out = {"source_format": "r3d zip" if cap.zip is not None else "unzipped r3d folder",
                "color_size": [W, H], "depth_size": list(dsize) if dsize else "from the depth blobs",
                "min_confidence": conf_min if has_conf else None, "fps": meta.get("fps"),
                "camera_type": meta.get("cameraType"),
                "pose_convention": "[qx, qy, qz, qw, tx, ty, tz] (ARKit, OpenGL axes) -> c2w @ diag(1, -1, -1, 1)",
                "K_order": "row-major" if k_note else "column-major"}
    return ConvertPlan(kind=KIND, K=K, size=(W, H), frame_ids=[f"{n:06d}" for n in kept],
                       source_names=[colors[n] for n in kept], c2w=c2w, load=load, classes=[], meta=meta_out,
                       skipped=skipped, notes=notes)
