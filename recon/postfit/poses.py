"""Camera paths for `run.py render`: pose files, the scene's frames, an orbit in the scene box, and a smooth
path through the training poses. Pure functions of arrays (and a path for the file readers).

Every pose is a camera-to-world matrix c2w [4, 4] in metres with OpenCV camera axes (x right, y down,
z forward), the scene format's convention (SCENE/pose/<frame>.txt).

Pose files (read_pose_file / write_pose_file):
- .txt: 4 rows of 4 whitespace-separated numbers per pose, poses one after another; '#' starts a comment
  (to the end of the line); blank lines are ignored. One scene pose file is a valid pose file.
- .npy: an array [N, 4, 4] (or one [4, 4]).
- .json: a list of 4x4 nested lists, or {"poses": [...]} holding such a list.
Each pose must be finite, have the last row 0 0 0 1 and an orthonormal rotation with det +1 (within 1e-3,
recon.data.scene.pose_problem, the rule the scene reader applies). write_pose_file writes .txt with every
number in Python's shortest round-trip form, so reading it back gives the same float64 matrices exactly.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from recon.core.io import atomic_write_text
from recon.data.scene import pose_problem

POSE_SUFFIXES = (".txt", ".npy", ".json")


class RenderError(ValueError):
    """Bad input to `run.py render` (options, pose file, missing run files); one clear line for the user."""


# ----------------------------------------------------------------------------- pose files


def _check_poses(poses: np.ndarray, path: Path) -> np.ndarray:
    """poses [N, 4, 4] float64 after checking each one; RenderError naming the file and the pose index."""
    if poses.ndim != 3 or poses.shape[1:] != (4, 4):
        raise RenderError(f"pose file {path}: expected poses of shape [N, 4, 4], got {list(poses.shape)}")
    if len(poses) == 0:
        raise RenderError(f"pose file {path}: holds no poses")
    for k, c2w in enumerate(poses):
        why = pose_problem(c2w)
        if why is not None:
            raise RenderError(f"pose file {path}: pose {k}: {why}")
    return poses


def _read_txt(path: Path) -> np.ndarray:
    rows: list[list[float]] = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        fields = text.split()
        if len(fields) != 4:
            raise RenderError(f"pose file {path}: line {line_no}: expected 4 numbers (one matrix row), "
                              f"found {len(fields)}")
        try:
            rows.append([float(f) for f in fields])
        except ValueError:
            raise RenderError(f"pose file {path}: line {line_no}: not numeric: {text!r}") from None
    if len(rows) % 4:
        raise RenderError(f"pose file {path}: 4 rows per pose, found {len(rows)} rows "
                          f"(pose {len(rows) // 4} is incomplete)")
    return np.asarray(rows, np.float64).reshape(-1, 4, 4)


def _read_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise RenderError(f"pose file {path}: not a numeric .npy array ({exc})") from None
    if not np.issubdtype(arr.dtype, np.number):
        raise RenderError(f"pose file {path}: array of {arr.dtype}, expected numbers")
    arr = np.asarray(arr, np.float64)
    return arr[None] if arr.shape == (4, 4) else arr


def _read_json(path: Path) -> np.ndarray:
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RenderError(f"pose file {path}: not valid JSON ({exc})") from None
    if isinstance(doc, dict):
        if "poses" not in doc:
            raise RenderError(f"pose file {path}: a JSON object must hold a \"poses\" list")
        doc = doc["poses"]
    if not isinstance(doc, list):
        raise RenderError(f"pose file {path}: expected a list of 4x4 matrices")
    out = []
    for k, m in enumerate(doc):
        try:
            arr = np.asarray(m, dtype=np.float64)
        except (ValueError, TypeError):
            raise RenderError(f"pose file {path}: pose {k}: not a 4x4 list of numbers") from None
        if arr.shape != (4, 4):
            raise RenderError(f"pose file {path}: pose {k}: expected 4x4, got shape {list(arr.shape)}")
        out.append(arr)
    return np.stack(out) if out else np.zeros((0, 4, 4))


def read_pose_file(path: Path | str) -> np.ndarray:
    """Camera-to-world poses [N, 4, 4] float64 from a .txt, .npy or .json pose file (module docstring).
    RenderError (naming the file, and the line or pose index) for anything unreadable or not a rigid pose."""
    path = Path(path)
    if path.suffix.lower() not in POSE_SUFFIXES:
        raise RenderError(f"pose file {path}: unknown suffix {path.suffix!r}; use one of {', '.join(POSE_SUFFIXES)}")
    if not path.is_file():
        raise RenderError(f"pose file {path} does not exist")
    reader = {".txt": _read_txt, ".npy": _read_npy, ".json": _read_json}[path.suffix.lower()]
    try:
        poses = reader(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise RenderError(f"pose file {path}: cannot read it ({exc})") from None
    return _check_poses(poses, path)


def format_pose_file(poses: np.ndarray, names: list[str] | None = None) -> str:
    """The .txt pose-file text of poses [N, 4, 4]: a header, then per pose a '# k name' comment and 4 rows.
    Numbers are written with repr (the shortest text that reads back to the same float64)."""
    poses = np.asarray(poses, np.float64)
    assert poses.ndim == 3 and poses.shape[1:] == (4, 4), poses.shape
    assert names is None or len(names) == len(poses)
    lines = [f"# {len(poses)} camera-to-world poses, 4 rows of 4 each; OpenCV camera axes (x right, y down, "
             "z forward), metres"]
    for k, c2w in enumerate(poses):
        lines.append(f"# {k}" + (f" {names[k]}" if names is not None else ""))
        lines.extend(" ".join(repr(float(v)) for v in row) for row in c2w)
    return "\n".join(lines) + "\n"


def write_pose_file(path: Path | str, poses: np.ndarray, names: list[str] | None = None) -> Path:
    """Write poses [N, 4, 4] as a .txt pose file (atomically); read_pose_file gives them back exactly."""
    path = Path(path)
    atomic_write_text(path, format_pose_file(poses, names))
    return path


# ----------------------------------------------------------------------------- intrinsics


def scale_intrinsics(K: np.ndarray, size: tuple[int, int], new_size: tuple[int, int]) -> np.ndarray:
    """K [3, 3] of an image of size (W, H) -> K' for the same camera at new_size (W', H').

    Our intrinsics put pixel centres at integer coordinates (recon.model.sampling.camera_dirs: pixel u looks
    along (u - cx) / fx), so the continuous image coordinate of the pixel-centre grid is u + 0.5 with the
    image edge at 0. Scaling by s = W' / W maps u + 0.5 to s (u + 0.5):
        fx' = s fx,  cx' = s (cx + 0.5) - 0.5       (y likewise with H' / H).
    """
    K = np.asarray(K, np.float64)
    assert K.shape == (3, 3), K.shape
    (w, h), (w2, h2) = size, new_size
    sx, sy = w2 / w, h2 / h
    out = K.copy()
    out[0, 0], out[0, 1] = K[0, 0] * sx, K[0, 1] * sx
    out[1, 1] = K[1, 1] * sy
    out[0, 2] = sx * (K[0, 2] + 0.5) - 0.5
    out[1, 2] = sy * (K[1, 2] + 0.5) - 0.5
    return out


# ----------------------------------------------------------------------------- the scene's frames


def frame_indices(frame_ids: list[str], splits: dict[str, list[int]], frames: str) -> list[int]:
    """Scene frame indices for --frames: 'eval' / 'train' (the split's indices, given in `splits`), 'all',
    or a comma list of frame ids. Unknown ids: FileNotFoundError naming them."""
    if frames in ("eval", "train"):
        if frames not in splits:
            raise RenderError(f"the scene has no '{frames}' split (has: {sorted(splits)})")
        return list(splits[frames])
    if frames == "all":
        return list(range(len(frame_ids)))
    wanted = [f.strip() for f in frames.split(",") if f.strip()]
    if not wanted:
        raise RenderError(f"--frames {frames!r}: expected eval, train, all or a comma list of frame ids")
    pos = {f: i for i, f in enumerate(frame_ids)}
    unknown = [f for f in wanted if f not in pos]
    if unknown:
        raise FileNotFoundError(f"frames {unknown} are not in the scene (it has {len(frame_ids)} frames, "
                                f"{frame_ids[0] if frame_ids else '-'} .. {frame_ids[-1] if frame_ids else '-'})")
    return [pos[f] for f in wanted]


# ----------------------------------------------------------------------------- orbit


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """c2w [4, 4] (OpenCV axes) of a camera at eye [3] looking at target [3], with image 'up' along `up`
    (no roll): z = forward, x = forward x up (right), y = z x x (down)."""
    eye, target, up = (np.asarray(a, np.float64) for a in (eye, target, up))
    fwd = target - eye
    assert np.linalg.norm(fwd) > 1e-9, "eye and target coincide"
    fwd = fwd / np.linalg.norm(fwd)
    right = np.cross(fwd, up)
    assert np.linalg.norm(right) > 1e-9, "viewing direction parallel to up"
    right = right / np.linalg.norm(right)
    down = np.cross(fwd, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, fwd, eye
    return c2w


def orbit_poses(box_min: np.ndarray, box_max: np.ndarray, up: np.ndarray, n: int, radius_fraction: float = 0.5,
                height_fraction: float = 0.6, target_height_fraction: float = 0.5) -> np.ndarray:
    """n poses [n, 4, 4] on an ellipse inside the axis-aligned scene box, each looking at the box's centre axis.

    The orbit's axis is the box axis closest to `up` (signed like it); heights are fractions of the box along
    it, from the bottom. The ellipse is centred on the box centre, at height_fraction of the box, with
    semi-axes radius_fraction x the box's half extents across the up axis: with radius_fraction < 1 the camera
    stays inside the box's walls. Each camera looks at the box centre (on its axis at target_height_fraction,
    by default the centre itself: slightly downward from 60 % of the height), with no roll. Poses go
    counter-clockwise about up, angles 2 pi k / n, k = 0..n-1 (a closed loop without a repeated frame).
    """
    box_min, box_max, up = (np.asarray(a, np.float64) for a in (box_min, box_max, up))
    assert box_min.shape == (3,) and box_max.shape == (3,) and np.all(box_max > box_min), (box_min, box_max)
    assert n >= 1 and 0.0 < radius_fraction < 1.0 and 0.0 <= height_fraction <= 1.0
    a = int(np.argmax(np.abs(up)))                       # the box axis that is 'up'
    sign = 1.0 if up[a] > 0 else -1.0
    axis = np.zeros(3)
    axis[a] = sign
    i, j = (a + 1) % 3, (a + 2) % 3                      # cyclic: e_i x e_j = e_a
    if sign < 0:                                         # keep (i, j, up) right-handed: counter-clockwise about up
        i, j = j, i
    centre = (box_min + box_max) / 2
    half = (box_max - box_min) / 2

    def at_height(frac: float) -> float:                 # coordinate along axis a at `frac` of the box, from the bottom
        return box_min[a] + frac * 2 * half[a] if sign > 0 else box_max[a] - frac * 2 * half[a]

    target = centre.copy()
    target[a] = at_height(target_height_fraction)
    out = np.zeros((n, 4, 4))
    for k in range(n):
        t = 2 * np.pi * k / n
        eye = centre.copy()
        eye[i] += radius_fraction * half[i] * np.cos(t)
        eye[j] += radius_fraction * half[j] * np.sin(t)
        eye[a] = at_height(height_fraction)
        out[k] = look_at(eye, target, axis)
    return out


# ----------------------------------------------------------------------------- interpolation


def interpolate_poses(keys: np.ndarray, n: int) -> np.ndarray:
    """n poses [n, 4, 4] along a smooth path through the key poses keys [K, 4, 4] (K >= 2), in their order.

    Key k sits at parameter t = k; the n frames are spread evenly over t in [0, K - 1], so with
    n = m (K - 1) + 1 frame m k is key k exactly. Positions: a natural cubic spline per coordinate
    (scipy CubicSpline, C2, passes through every key); rotations: scipy RotationSpline (C2 in angular
    velocity, passes through every key rotation; between two keys it follows the short arc, like slerp).
    """
    from scipy.interpolate import CubicSpline
    from scipy.spatial.transform import Rotation, RotationSpline

    keys = np.asarray(keys, np.float64)
    assert keys.ndim == 3 and keys.shape[1:] == (4, 4), keys.shape
    if len(keys) < 2:
        raise RenderError(f"--path interpolate needs at least 2 key poses, the training split has {len(keys)}")
    assert n >= 2, n
    t_key = np.arange(len(keys), dtype=np.float64)
    t = np.linspace(0.0, len(keys) - 1.0, n)
    # exact key parameters where they fall on the grid (linspace rounding must not move a key frame)
    on_key = np.isclose(t, np.round(t), rtol=0, atol=1e-9)
    t[on_key] = np.round(t[on_key])
    pos = CubicSpline(t_key, keys[:, :3, 3], axis=0, bc_type="natural")(t)                # [n, 3]
    rot = RotationSpline(t_key, Rotation.from_matrix(keys[:, :3, :3]))(t).as_matrix()      # [n, 3, 3]
    out = np.tile(np.eye(4), (n, 1, 1))
    out[:, :3, :3] = rot
    out[:, :3, 3] = pos
    return out
