"""The scene folder (docs/scene_format.md): validating reader and atomic writer.

`load_scene` checks a whole folder before any work starts and raises `SceneError`
with one line per problem, each naming the file. `write_scene` is the only way
producers (synthetic generator, converters, mask front-ends) write a scene: it
builds the folder under a temporary name beside the target and renames it into
place, so a crash never leaves a half-written scene.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from recon.core.io import check_replaceable, marker_path, staged_dir, write_marker

FRAME_ID_RE = re.compile(r"^\d{6}$")
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
PER_FRAME_DIRS = {
    # folder -> allowed extensions
    "color": (".png", ".jpg", ".jpeg"),
    "depth": (".png",),
    "pose": (".txt",),
    "masks/instance": IMAGE_EXTS,  # JPEG is detected and rejected as lossy, with its own message
    "masks/semantic": IMAGE_EXTS,
    "masks/scores": (".json",),
    "gt/semantic": IMAGE_EXTS,
    "gt/instance": IMAGE_EXTS,
}
RIGID_TOL = 1e-3  # max |R^T R - I| and |det R - 1| for a pose to count as rigid


DEFAULT_DEPTH_UNIT_M = 0.001      # depth PNGs hold millimetres unless scene.json says otherwise
MIN_MEDIAN_DEPTH_M = 0.1          # an indoor scene whose median valid depth is outside this range is a unit mistake
MAX_MEDIAN_DEPTH_M = 30.0


class SceneError(ValueError):
    """A scene folder failed validation; `problems` holds one message per problem."""

    def __init__(self, root: Path | str, problems: list[str]):
        self.root = Path(root)
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in group_problems(self.problems))
        super().__init__(f"scene {self.root} is invalid ({len(self.problems)} problem(s)):\n{lines}")


_FRAME_ID = re.compile(r"(?<![0-9])[0-9]{6}(?![0-9])")


def group_problems(problems: list[str], show: int = 1) -> list[str]:
    """One line per root cause: problems that differ only in their 6-digit frame ids are shown once, with
    the number of further frames that have the same problem."""
    groups: dict[str, list[str]] = {}
    for p in problems:
        groups.setdefault(_FRAME_ID.sub("NNNNNN", p), []).append(p)
    out = []
    for members in groups.values():
        out += members[:show]
        if len(members) > show:
            out.append(f"... and {len(members) - show} more frame(s) with the same problem")
    return out


@dataclass(frozen=True)
class ClassInfo:
    id: int
    name: str
    thing: bool
    prompts: tuple[str, ...] = ()


@dataclass
class FrameRecord:
    """One frame to write. Depth in metres (float, 0 = invalid) or millimetres (uint16)."""
    color: np.ndarray                       # [H, W, 3] uint8 RGB
    c2w: np.ndarray                         # [4, 4] float64 camera-to-world, OpenCV axes
    depth_m: np.ndarray | None = None       # [H, W] float, metres
    depth_mm: np.ndarray | None = None      # [H, W] uint16, millimetres
    mask_instance: np.ndarray | None = None  # [H, W] uint16, per-frame ids
    mask_semantic: np.ndarray | None = None  # [H, W] uint16 class ids
    mask_scores: dict | None = None          # {instance id: {"class": c, "score": s}}
    gt_semantic: np.ndarray | None = None    # [H, W] uint16
    gt_instance: np.ndarray | None = None    # [H, W] uint16 scene-consistent ids


@dataclass
class Scene:
    """A validated scene folder. Images are loaded lazily, per frame."""
    root: Path
    K: np.ndarray                 # [3, 3]
    width: int
    height: int
    frame_ids: list[str]
    c2w: np.ndarray               # [N, 4, 4] float64
    classes: list[ClassInfo]
    color_ext: dict[str, str]
    has_masks: bool
    has_gt_images: bool
    gt_mesh_path: Path | None
    splits: dict[str, list[str]]
    meta: dict = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.frame_ids)

    @property
    def n_classes(self) -> int:
        """Number of label slots: max class id + 1 (slot 0 = unlabelled)."""
        return max((c.id for c in self.classes), default=0) + 1

    def class_by_id(self) -> dict[int, ClassInfo]:
        return {c.id: c for c in self.classes}

    def thing_ids(self) -> list[int]:
        return [c.id for c in self.classes if c.thing]

    def stuff_ids(self) -> list[int]:
        return [c.id for c in self.classes if not c.thing]

    def index(self, frame_id: str) -> int:
        return self.frame_ids.index(frame_id)

    def split_indices(self, name: str) -> list[int]:
        pos = {f: i for i, f in enumerate(self.frame_ids)}
        return [pos[f] for f in self.splits[name] if f in pos]

    def heldout_indices(self) -> list[int]:
        """Frames in the "eval" split but not in "train" (novel views), in scene order."""
        train = set(self.split_indices("train"))
        return [i for i in self.split_indices("eval") if i not in train]

    def load_color(self, i: int) -> np.ndarray:
        """[H, W, 3] uint8 RGB."""
        fid = self.frame_ids[i]
        return np.asarray(Image.open(self.root / "color" / f"{fid}{self.color_ext[fid]}").convert("RGB"))

    @property
    def depth_unit_m(self) -> float:
        """Metres per stored depth unit: scene.json "depth_unit_m", default 0.001 (millimetres)."""
        return float(self.meta.get("depth_unit_m", DEFAULT_DEPTH_UNIT_M))

    def load_depth_m(self, i: int) -> np.ndarray:
        """[H, W] float32 z-depth in metres, 0 = invalid."""
        raw = _read_png16(self.root / "depth" / f"{self.frame_ids[i]}.png")
        if self.depth_unit_m == DEFAULT_DEPTH_UNIT_M:
            return raw.astype(np.float32) / 1000.0
        return (raw.astype(np.float64) * self.depth_unit_m).astype(np.float32)

    def load_masks(self, i: int) -> tuple[np.ndarray, np.ndarray, dict[int, dict]]:
        """(instance [H, W] uint16, semantic [H, W] uint16, scores {id: {"class", "score"}})."""
        fid = self.frame_ids[i]
        inst = _read_png16(self.root / "masks" / "instance" / f"{fid}.png")
        sem = _read_png16(self.root / "masks" / "semantic" / f"{fid}.png")
        scores = {int(k): v for k, v in json.loads((self.root / "masks" / "scores" / f"{fid}.json").read_text()).items()}
        return inst, sem, scores

    def load_gt(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(semantic [H, W] uint16, instance [H, W] uint16) ground truth."""
        fid = self.frame_ids[i]
        return (_read_png16(self.root / "gt" / "semantic" / f"{fid}.png"),
                _read_png16(self.root / "gt" / "instance" / f"{fid}.png"))


# ----------------------------------------------------------------------------- reading

def _read_png16(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.uint16)


def _parse_matrix(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Whitespace-separated floats -> array of `shape`; ValueError with a readable reason."""
    try:
        values = np.array(path.read_text().split(), dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"not numeric ({exc})") from None
    if values.size != shape[0] * shape[1]:
        raise ValueError(f"expected {shape[0]}x{shape[1]} = {shape[0] * shape[1]} numbers, found {values.size}")
    return values.reshape(shape)


def pose_problem(c2w: np.ndarray) -> str | None:
    """Why `c2w` [4, 4] is not a finite rigid transform, or None if it is."""
    if not np.all(np.isfinite(c2w)):
        return "pose has non-finite values (inf/nan)"
    if not np.allclose(c2w[3], [0, 0, 0, 1], atol=1e-6):
        return f"pose last row is {c2w[3].tolist()}, expected [0, 0, 0, 1]"
    rot = c2w[:3, :3]
    ortho_err = float(np.abs(rot.T @ rot - np.eye(3)).max())
    det = float(np.linalg.det(rot))
    if ortho_err > RIGID_TOL or abs(det - 1.0) > RIGID_TOL:
        return f"pose is not a rigid transform (|R^T R - I| = {ortho_err:.2g}, det R = {det:.4g})"
    return None


def _list_frames(folder: Path, exts: tuple[str, ...], problems: list[str]) -> dict[str, str]:
    """frame id -> extension for the files in `folder`; malformed names are problems."""
    out: dict[str, str] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        stem, ext = p.stem, p.suffix.lower()
        if not FRAME_ID_RE.match(stem) or ext not in exts:
            problems.append(f"{p}: unexpected file (expected <6-digit id>{'|'.join(exts)})")
            continue
        if stem in out:
            problems.append(f"{p}: frame {stem} appears twice in {folder.name}/")
            continue
        out[stem] = ext
    return out


def _load_classes(path: Path, problems: list[str]) -> list[ClassInfo]:
    if not path.is_file():
        problems.append(f"{path}: missing (a list of classes is required)")
        return []
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: not valid JSON ({exc})")
        return []
    if not isinstance(raw, list):
        problems.append(f"{path}: must be a JSON list of {{id, name, thing, prompts}}")
        return []
    classes, seen = [], set()
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or not {"id", "name", "thing"} <= set(entry):
            problems.append(f"{path}: entry {i} must have id, name and thing")
            continue
        cid = entry["id"]
        if not isinstance(cid, int) or isinstance(cid, bool) or cid <= 0 or cid > 65535:
            problems.append(f"{path}: entry {i} has id {cid!r}; ids are positive integers (0 is 'unlabelled')")
            continue
        if cid in seen:
            problems.append(f"{path}: class id {cid} appears twice")
            continue
        if not isinstance(entry["thing"], bool):
            problems.append(f"{path}: class {cid} 'thing' must be true or false")
            continue
        seen.add(cid)
        prompts = entry.get("prompts", [entry["name"]])
        classes.append(ClassInfo(cid, str(entry["name"]), entry["thing"], tuple(str(p) for p in prompts)))
    return sorted(classes, key=lambda c: c.id)


def _check_label_image(path: Path, size: tuple[int, int], problems: list[str]) -> np.ndarray | None:
    """Open a label image; it must be a lossless 16-bit PNG of `size` (W, H)."""
    try:
        img = Image.open(path)
        img.load()
    except Exception as exc:  # PIL raises many types for broken files
        problems.append(f"{path}: unreadable image ({type(exc).__name__}: {exc})")
        return None
    if img.format != "PNG":
        problems.append(f"{path}: label image is {img.format}, a lossy or unsupported format; "
                        "label images must be lossless 16-bit PNG")
        return None
    if img.mode not in ("I;16", "I;16B", "I;16L", "I"):
        problems.append(f"{path}: label image has mode {img.mode}; label images must be 16-bit (uint16) PNG")
        return None
    if img.size != size:
        problems.append(f"{path}: size {img.size[0]}x{img.size[1]} differs from colour {size[0]}x{size[1]}")
        return None
    arr = np.asarray(img)
    if arr.min() < 0 or arr.max() > 65535:
        problems.append(f"{path}: values outside uint16")
        return None
    return arr.astype(np.uint16)


def load_scene(root: str | Path, *, skip_bad_frames: bool = False, check_images: bool = True) -> Scene:
    """Validate the scene folder at `root` and return a `Scene`.

    Raises SceneError listing every problem found. With `skip_bad_frames`, frames whose
    pose is missing, non-finite or not rigid are dropped with a warning instead.
    With `check_images=False` only names, sizes of the first frame, poses and classes
    are checked (fast; for callers that validated the scene already).
    """
    root = Path(root)
    problems: list[str] = []
    if not root.is_dir():
        raise SceneError(root, [f"{root}: not a folder"])

    # intrinsics
    K = None
    k_path = root / "intrinsics.txt"
    if not k_path.is_file():
        problems.append(f"{k_path}: missing")
    else:
        try:
            K = _parse_matrix(k_path, (3, 3))
            if not (np.all(np.isfinite(K)) and K[0, 0] > 0 and K[1, 1] > 0 and abs(K[0, 1]) < 1e-9
                    and np.allclose(K[1, 0], 0) and np.allclose(K[2], [0, 0, 1])):
                problems.append(f"{k_path}: not a pinhole matrix (fx 0 cx / 0 fy cy / 0 0 1 with fx, fy > 0): "
                                f"{K.tolist()}")
                K = None
        except ValueError as exc:
            problems.append(f"{k_path}: {exc}")

    n_before = len(problems)
    classes = _load_classes(root / "classes.json", problems)
    classes_ok = len(problems) == n_before          # else label images are not checked against the classes
    class_ids = {c.id for c in classes}
    thing_ids = {c.id for c in classes if c.thing}

    # per-frame folders: (folders, whether the group must exist, what a missing member lacks)
    listings: dict[str, dict[str, str]] = {}
    has_masks = (root / "masks").is_dir()
    has_gt_images = (root / "gt" / "semantic").is_dir() or (root / "gt" / "instance").is_dir()
    groups = [(("color", "depth", "pose"), True, ""),
              (("masks/instance", "masks/semantic", "masks/scores"), has_masks,
               " (masks/ needs instance/, semantic/ and scores/)"),
              (("gt/semantic", "gt/instance"), has_gt_images, " (gt/ images need semantic/ and instance/)")]
    for subs, present, hint in groups:
        for sub in subs if present else ():
            folder = root / sub
            if not folder.is_dir():
                problems.append(f"{folder}: missing folder{hint}")
            else:
                listings[sub] = _list_frames(folder, PER_FRAME_DIRS[sub], problems)

    reference = listings.get("color") or listings.get("depth") or {}
    frame_ids = sorted(reference)
    if "color" in listings and not frame_ids:
        problems.append(f"{root / 'color'}: no frames")
    all_ids = set(frame_ids)
    for sub, listing in listings.items():
        all_ids |= set(listing)
    for sub, listing in listings.items():
        missing = sorted(all_ids - set(listing))
        if missing:
            shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            problems.append(f"{root / sub}: missing frame(s) {shown} that other folders have")
    frame_ids = sorted(set.intersection(*(set(v) for v in listings.values()))) if listings else []

    # poses
    poses: dict[str, np.ndarray] = {}
    bad_pose: list[str] = []
    for fid in frame_ids:
        p = root / "pose" / f"{fid}.txt"
        try:
            c2w = _parse_matrix(p, (4, 4))
        except (ValueError, OSError) as exc:
            msg = f"{p}: {exc}"
            c2w = None
        else:
            why = pose_problem(c2w)
            msg = f"{p}: {why}" if why else None
        if msg:
            bad_pose.append(fid)
            if skip_bad_frames:
                warnings.warn(f"skipping frame {fid}: {msg}")
            else:
                problems.append(msg)
        else:
            poses[fid] = c2w
    if skip_bad_frames:
        frame_ids = [f for f in frame_ids if f not in bad_pose]

    meta = {}
    m_path = root / "scene.json"
    if m_path.is_file():
        try:
            meta = json.loads(m_path.read_text())
            if not isinstance(meta, dict):
                raise ValueError("must be a JSON object")
        except ValueError as exc:
            problems.append(f"{m_path}: not valid JSON ({exc})")
            meta = {}
    unit = meta.get("depth_unit_m", DEFAULT_DEPTH_UNIT_M)
    if isinstance(unit, bool) or not isinstance(unit, (int, float)) or not (0 < unit < 1e3):
        problems.append(f"{m_path}: depth_unit_m must be a positive number of metres per stored depth unit "
                        f"(0.001 for millimetres), got {unit!r}")
        unit = DEFAULT_DEPTH_UNIT_M

    # images
    width = height = 0
    color_ext = listings.get("color", {})
    zero_depth: list[str] = []
    depth_medians: list[float] = []
    for n, fid in enumerate(frame_ids):
        if not check_images and n > 0:
            break
        c_path = root / "color" / f"{fid}{color_ext.get(fid, '.png')}"
        try:
            cimg = Image.open(c_path)
            cimg.load()
            c_size = cimg.size
            if cimg.mode not in ("RGB", "RGBA", "L"):
                problems.append(f"{c_path}: colour image has mode {cimg.mode}, expected 8-bit RGB")
        except Exception as exc:
            problems.append(f"{c_path}: unreadable image ({type(exc).__name__}: {exc})")
            continue
        if width == 0:
            width, height = c_size
            if K is not None and not (0 < K[0, 2] < width and 0 < K[1, 2] < height):
                problems.append(f"{k_path}: principal point ({K[0, 2]:g}, {K[1, 2]:g}) lies outside the "
                                f"{width}x{height} colour images")
        elif c_size != (width, height):
            problems.append(f"{c_path}: size {c_size[0]}x{c_size[1]} differs from the first frame's {width}x{height}")
        d_path = root / "depth" / f"{fid}.png"
        try:
            dimg = Image.open(d_path)
            dimg.load()
        except Exception as exc:
            problems.append(f"{d_path}: unreadable image ({type(exc).__name__}: {exc})")
            continue
        if dimg.size != c_size:
            problems.append(f"{d_path}: depth size {dimg.size[0]}x{dimg.size[1]} differs from colour "
                            f"{c_path.name} size {c_size[0]}x{c_size[1]}")
            continue
        if dimg.mode not in ("I;16", "I;16B", "I;16L", "I"):
            problems.append(f"{d_path}: depth has mode {dimg.mode}; expected uint16 millimetres")
            continue
        depth_raw = np.asarray(dimg)
        if not np.any(depth_raw):
            if skip_bad_frames:
                warnings.warn(f"skipping frame {fid}: {d_path}: depth is all zero (no valid measurement)")
                zero_depth.append(fid)
                continue
            problems.append(f"{d_path}: depth is all zero (no valid measurement)")
        else:
            depth_medians.append(float(np.median(depth_raw[depth_raw > 0])))
        if has_masks and "masks/instance" in listings and "masks/semantic" in listings:
            _check_masks(root, fid, c_size, class_ids if classes_ok else None, thing_ids, listings, problems)
        if has_gt_images and "gt/semantic" in listings and "gt/instance" in listings:
            _check_gt(root, fid, c_size, class_ids if classes_ok else None, listings, problems)

    if zero_depth:
        frame_ids = [f for f in frame_ids if f not in zero_depth]
    if check_images and depth_medians:
        problems += depth_unit_problems(root, float(np.median(depth_medians)) * float(unit), len(depth_medians))

    gt_mesh = root / "gt" / "mesh.ply"
    splits = {"train": list(frame_ids), "eval": list(frame_ids)}
    s_path = root / "splits.json"
    if s_path.is_file():
        try:
            raw = json.loads(s_path.read_text())
            for name in ("train", "eval"):
                if name in raw:
                    unknown = sorted(set(raw[name]) - set(frame_ids) - set(bad_pose))
                    if unknown:
                        problems.append(f"{s_path}: '{name}' names frames that do not exist: {', '.join(unknown[:8])}")
                    splits[name] = [f for f in raw[name] if f in set(frame_ids)]
        except (json.JSONDecodeError, TypeError) as exc:
            problems.append(f"{s_path}: not valid JSON ({exc})")
    if problems:
        raise SceneError(root, problems)
    return Scene(root=root, K=K, width=width, height=height, frame_ids=frame_ids,
                 c2w=np.stack([poses[f] for f in frame_ids]) if frame_ids else np.zeros((0, 4, 4)),
                 classes=classes, color_ext={f: color_ext[f] for f in frame_ids}, has_masks=has_masks,
                 has_gt_images=has_gt_images, gt_mesh_path=gt_mesh if gt_mesh.is_file() else None,
                 splits=splits, meta=meta, skipped=(bad_pose + zero_depth) if skip_bad_frames else [])


def depth_unit_problems(root: Path, median_m: float, n_frames: int) -> list[str]:
    """The depth of an indoor scene lies at tens of centimetres to several metres: a median far outside
    [MIN_MEDIAN_DEPTH_M, MAX_MEDIAN_DEPTH_M] is a unit mistake, caught before any work."""
    where = f"{root / 'depth'}: the median valid depth over {n_frames} frame(s) is {median_m:.4g} m"
    fix = (f"store depth as uint16 millimetres (round(depth_m * 1000)), or, if the images use another unit, set "
           f"\"depth_unit_m\" in {root / 'scene.json'} to the metres per stored unit (0.001 = millimetres, "
           f"0.0002 = 5000 units per metre)")
    if median_m < MIN_MEDIAN_DEPTH_M:
        return [f"{where}, too close for an indoor scene: depth in metres stored as integers? Then it has lost "
                f"everything below a metre; {fix}"]
    if median_m > MAX_MEDIAN_DEPTH_M:
        return [f"{where}, too far for an indoor scene: a finer unit than millimetres (e.g. 0.1 mm)? {fix}"]
    return []


def _check_masks(root: Path, fid: str, size: tuple[int, int], class_ids: set[int] | None, thing_ids: set[int],
                 listings: dict[str, dict[str, str]], problems: list[str]) -> None:
    """class_ids None: classes.json is broken (reported once already), so ids are not checked against it."""
    i_path = root / "masks" / "instance" / f"{fid}{listings['masks/instance'][fid]}"
    s_path = root / "masks" / "semantic" / f"{fid}{listings['masks/semantic'][fid]}"
    j_path = root / "masks" / "scores" / f"{fid}.json"
    inst = _check_label_image(i_path, size, problems)
    sem = _check_label_image(s_path, size, problems)
    scores = None
    if "masks/scores" in listings and fid in listings["masks/scores"]:   # a missing folder is reported once
        try:
            scores = json.loads(j_path.read_text())
            if not isinstance(scores, dict):
                raise ValueError("must be a JSON object {instance id: {class, score}}")
        except (OSError, ValueError) as exc:
            problems.append(f"{j_path}: {exc}")
            scores = None
    if sem is not None and class_ids is not None:
        _check_class_ids(s_path, sem, class_ids, problems)
    if inst is None or sem is None or class_ids is None:
        return
    on_inst = inst > 0
    stuff_with_inst = on_inst & ~np.isin(sem, list(thing_ids))
    if stuff_with_inst.any():
        bad = sorted(set(sem[stuff_with_inst].tolist()))
        problems.append(f"{i_path}: {int(stuff_with_inst.sum())} pixels carry an instance id but semantic class(es) "
                        f"{bad} in {s_path.name} are not thing classes")
    if scores is not None:
        ids = set(np.unique(inst[on_inst]).tolist())
        listed = set()
        for k, v in scores.items():
            try:
                listed.add(int(k))
                cls_ = int(v["class"])
                score = float(v["score"])
            except (ValueError, TypeError, KeyError):
                problems.append(f"{j_path}: entry {k!r} must be {{\"class\": int, \"score\": float}}")
                continue
            if not (np.isfinite(score) and 0.0 <= score <= 1.0):
                problems.append(f"{j_path}: instance {k} has score {v['score']!r}; scores are confidences in [0, 1]")
            if cls_ not in class_ids:
                problems.append(f"{j_path}: instance {k} has class id {cls_}, which is not in classes.json")
            elif cls_ not in thing_ids:
                problems.append(f"{j_path}: instance {k} has class id {cls_}, which is not a thing class")
        missing = sorted(ids - listed)
        if missing:
            problems.append(f"{j_path}: instance id(s) {missing[:8]} present in {i_path.name} have no score entry")


def _check_gt(root: Path, fid: str, size: tuple[int, int], class_ids: set[int] | None,
              listings: dict[str, dict[str, str]], problems: list[str]) -> None:
    s_path = root / "gt" / "semantic" / f"{fid}{listings['gt/semantic'][fid]}"
    i_path = root / "gt" / "instance" / f"{fid}{listings['gt/instance'][fid]}"
    sem = _check_label_image(s_path, size, problems)
    _check_label_image(i_path, size, problems)
    if sem is not None and class_ids is not None:
        _check_class_ids(s_path, sem, class_ids, problems)


def _check_class_ids(path: Path, sem: np.ndarray, class_ids: set[int], problems: list[str]) -> None:
    present = np.unique(sem)
    unknown = [int(c) for c in present if c != 0 and int(c) not in class_ids]
    if unknown:
        problems.append(f"{path}: class id(s) {unknown[:8]} not in classes.json")


# ----------------------------------------------------------------------------- writing

def _png_bytes(arr: np.ndarray) -> bytes:
    import io
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _write_label(path: Path, arr: np.ndarray) -> None:
    assert arr.ndim == 2, f"{path}: label image must be [H, W], got {arr.shape}"
    if arr.dtype != np.uint16:
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(f"{path}: label values outside uint16 range")
        arr = arr.astype(np.uint16)
    path.write_bytes(_png_bytes(arr))


def _scores_json(scores: dict) -> str:
    """masks/scores/<id>.json text: {"<instance id>": {"class": int, "score": float}}, sorted by id."""
    out = {str(int(k)): {"class": int(v["class"]), "score": round(float(v["score"]), 6)}
           for k, v in sorted(scores.items(), key=lambda kv: int(kv[0]))}
    return json.dumps(out, indent=1) + "\n"


def depth_m_to_mm(depth_m: np.ndarray) -> np.ndarray:
    """Metres (float, 0/nan = invalid) -> uint16 millimetres, rounded; beyond 65.535 m -> 0 (invalid)."""
    d = np.nan_to_num(np.asarray(depth_m, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    mm = np.rint(d * 1000.0)
    mm[(mm < 0) | (mm > 65535)] = 0
    return mm.astype(np.uint16)


def format_matrix(m: np.ndarray) -> str:
    return "\n".join(" ".join(f"{v:.10g}" for v in row) for row in m) + "\n"


def _write_frame(tmp: Path, fid: str, fr: FrameRecord, size: tuple[int, int] | None) -> tuple[int, int]:
    color = np.asarray(fr.color)
    assert color.ndim == 3 and color.shape[2] == 3 and color.dtype == np.uint8, \
        f"frame {fid}: colour must be [H, W, 3] uint8, got {color.shape} {color.dtype}"
    h, w = color.shape[:2]
    if size is not None and (w, h) != size:
        raise ValueError(f"frame {fid}: size {w}x{h} differs from the first frame's {size[0]}x{size[1]}")
    if fr.depth_mm is not None:
        depth_mm = np.asarray(fr.depth_mm)
        assert depth_mm.dtype == np.uint16, f"frame {fid}: depth_mm must be uint16"
    elif fr.depth_m is not None:
        depth_mm = depth_m_to_mm(fr.depth_m)
    else:
        raise ValueError(f"frame {fid}: no depth")
    assert depth_mm.shape == (h, w), f"frame {fid}: depth {depth_mm.shape} vs colour {(h, w)}"
    c2w = np.asarray(fr.c2w, dtype=np.float64)
    assert c2w.shape == (4, 4), f"frame {fid}: pose must be [4, 4]"
    why = pose_problem(c2w)
    if why:
        raise ValueError(f"frame {fid}: {why}")
    (tmp / "color" / f"{fid}.png").write_bytes(_png_bytes(color))
    (tmp / "depth" / f"{fid}.png").write_bytes(_png_bytes(depth_mm))
    (tmp / "pose" / f"{fid}.txt").write_text(format_matrix(c2w))
    if fr.mask_instance is not None:
        _write_label(tmp / "masks" / "instance" / f"{fid}.png", fr.mask_instance)
        _write_label(tmp / "masks" / "semantic" / f"{fid}.png", fr.mask_semantic)
        (tmp / "masks" / "scores" / f"{fid}.json").write_text(_scores_json(fr.mask_scores or {}))
    if fr.gt_semantic is not None:
        _write_label(tmp / "gt" / "semantic" / f"{fid}.png", fr.gt_semantic)
        _write_label(tmp / "gt" / "instance" / f"{fid}.png", fr.gt_instance)
    return (w, h)


def classes_to_json(classes: Iterable[ClassInfo | dict]) -> list[dict]:
    out = []
    for c in classes:
        if isinstance(c, ClassInfo):
            c = {"id": c.id, "name": c.name, "thing": c.thing, "prompts": list(c.prompts)}
        out.append({"id": int(c["id"]), "name": str(c["name"]), "thing": bool(c["thing"]),
                    "prompts": list(c.get("prompts", [c["name"]]))})
    return out


SCENE_SOURCES = ("synthetic", "replica-nice-slam", "replica-semantic-nerf", "scannet", "scannetpp", "7scenes")


def is_scene_folder(folder: Path) -> bool:
    """A scene folder this tool wrote: the marker, or (older scenes) scene.json naming one of our sources."""
    folder = Path(folder)
    if marker_path(folder, "scene").is_file():
        return True
    try:
        return json.loads((folder / "scene.json").read_text()).get("source") in SCENE_SOURCES
    except (OSError, ValueError, AttributeError):
        return False


def write_scene(out: str | Path, *, K: np.ndarray, frames: Iterable[FrameRecord], classes: Iterable[ClassInfo | dict],
                splits: dict[str, list[str]] | None = None, meta: dict | None = None,
                gt_mesh_writer=None, frame_ids: list[str] | None = None, overwrite: bool = False,
                validate: bool = True, inputs: tuple[Path | str, ...] = ()) -> Path:
    """Write a scene folder atomically and return its path.

    The folder is built under a temporary name beside `out`, validated with `load_scene`
    (unless `validate=False`) and renamed into place. An existing `out` is refused unless
    `overwrite`, in which case it is replaced only after the new scene is complete, and only if it is a
    scene folder this tool wrote (is_scene_folder) that is not, and does not hold, one of `inputs`.
    `gt_mesh_writer(path)`, if given, writes gt/mesh.ply into the temporary folder.
    """
    out = Path(out)
    check_replaceable(out, "scene", is_scene_folder, inputs)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite (--force) to replace it")
    K = np.asarray(K, dtype=np.float64)
    assert K.shape == (3, 3), f"K must be [3, 3], got {K.shape}"
    with staged_dir(out) as tmp:
        for sub in ("color", "depth", "pose"):
            (tmp / sub).mkdir(parents=True)
        size = None
        written: list[str] = []
        for n, fr in enumerate(frames):
            fid = frame_ids[n] if frame_ids is not None else f"{n:06d}"
            if not FRAME_ID_RE.match(fid):
                raise ValueError(f"frame id {fid!r} is not a 6-digit string")
            if n == 0:
                if fr.mask_instance is not None:
                    for sub in ("masks/instance", "masks/semantic", "masks/scores"):
                        (tmp / sub).mkdir(parents=True)
                if fr.gt_semantic is not None:
                    for sub in ("gt/semantic", "gt/instance"):
                        (tmp / sub).mkdir(parents=True)
            size = _write_frame(tmp, fid, fr, size)
            written.append(fid)
        (tmp / "intrinsics.txt").write_text(format_matrix(K))
        (tmp / "classes.json").write_text(json.dumps(classes_to_json(classes), indent=1) + "\n")
        if splits is not None:
            (tmp / "splits.json").write_text(json.dumps(splits) + "\n")
        if meta is not None:
            (tmp / "scene.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        if gt_mesh_writer is not None:
            (tmp / "gt").mkdir(exist_ok=True)
            gt_mesh_writer(tmp / "gt" / "mesh.ply")
        write_marker(tmp, "scene")
        if validate:
            load_scene(tmp)
    return out


def replace_masks(root: str | Path, masks: Iterable[tuple[str, np.ndarray, np.ndarray, dict]],
                  classes: Iterable[ClassInfo | dict] | None = None) -> None:
    """Replace a scene's masks/ (and optionally classes.json) atomically.

    `masks` yields (frame id, instance [H, W], semantic [H, W], scores). The new masks/
    folder is written beside the old one and swapped in; the scene is validated before
    the swap, and the old masks are restored if validation fails.
    """
    root = Path(root)
    tmp = Path(tempfile.mkdtemp(prefix=".masks.", suffix=".tmp", dir=root))
    try:
        for sub in ("instance", "semantic", "scores"):
            (tmp / sub).mkdir()
        for fid, inst, sem, scores in masks:
            _write_label(tmp / "instance" / f"{fid}.png", inst)
            _write_label(tmp / "semantic" / f"{fid}.png", sem)
            (tmp / "scores" / f"{fid}.json").write_text(_scores_json(scores))
        old_classes = (root / "classes.json").read_bytes() if (root / "classes.json").exists() else None
        if classes is not None:
            from recon.core.io import atomic_write_text
            atomic_write_text(root / "classes.json", json.dumps(classes_to_json(classes), indent=1) + "\n")
        backup = root / f".masks.old-{os.getpid()}"
        had_old = (root / "masks").exists()
        if had_old:
            os.replace(root / "masks", backup)
        os.replace(tmp, root / "masks")
        try:
            load_scene(root)
        except BaseException:
            shutil.rmtree(root / "masks", ignore_errors=True)
            if had_old:
                os.replace(backup, root / "masks")
            if old_classes is not None and classes is not None:
                (root / "classes.json").write_bytes(old_classes)
            raise
        if had_old:
            shutil.rmtree(backup, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

