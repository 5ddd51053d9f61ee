"""`run.py render`: novel views of every branch of a run (RGB, depth, semantic, instance, panoptic) from any
camera path, as PNG images, an overview grid and, with --video, MP4s.

Poses (recon/postfit/poses.py; exactly one source): the scene's frames (--frames eval|train|all|IDS, the
default is eval), a pose file (--poses FILE), an orbit inside the run's scene box (--orbit) or a smooth path
through the training poses (--path interpolate); --n-frames sets the length of the last two.

RGB and depth come from recon.postfit.views.load_view_renderer (the Gaussians when the run has them, else
the fields' volume rendering). Labels come from
- `mesh` (default, fast): ray casting RUN/mesh.ply's per-vertex labels (recon/postfit/mesh_raycast.py);
- `fields`: the fields' own label rendering (recon.model.inference.render_pose_labels): the semantic and
  instance fields volume-rendered in the +-render.band_m band around the surface, which is the ray's hit on
  RUN/mesh.ply where there is one (the mesh is the SDF's zero level set; this skips the SDF search, the slow
  part on a CPU) and the SDF's first zero crossing elsewhere (everywhere with --fields-surface sdf, or when
  the run has no mesh);
- `compare`: both; the images show the mesh's labels and OUT/label_agreement.json says how often the two
  agree (LabelAgreement).
Label images use the run's legend (RUN/legend.json) for classes and recon.data.palette.instance_palette for
instance ids; panoptic = instance colour on thing instances, class colour elsewhere (as mesh_panoptic.ply).
Depth images are coloured with viridis from 0 m to the scene box's diagonal (black = no surface).

OUT (default RUN/renders) is built in a temporary folder and swapped into place when complete, so it always
holds one whole render: <name>_<what>.png per frame (name = frame id for scene frames, else the 4-digit pose
index), raw <name>_depth_mm.png (uint16 millimetres, 0 = none, as the scene format) and <name>_semantic_id.png /
<name>_instance_id.png (uint16 ids) beside them, poses.txt (the rendered c2w, a pose file that --poses reads
back exactly), overview.png, render.json (what was rendered, how, and how fast) and, with --video,
<what>.mp4 per branch and side_by_side.mp4 (rgb | depth | panoptic, captioned).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from recon.core.io import check_replaceable, marker_path, staged_dir, write_marker
from recon.core.runfolder import writes_run
from recon.data.palette import class_palette, instance_palette
from recon.data.run_files import png16_bytes
from recon.data.scene import depth_m_to_mm
from recon.data.axes import axis_vector, camera_up
from recon.postfit.poses import (RenderError, format_pose_file, frame_indices,
                                 interpolate_poses, orbit_poses, read_pose_file, scale_intrinsics)

__all__ = ["RenderError", "render_run_images", "LabelAgreement", "WHATS", "LABEL_SOURCES"]

WHATS = ("rgb", "depth", "semantic", "instance", "panoptic")   # canonical order of the branches
LABEL_WHATS = ("semantic", "instance", "panoptic")
LABEL_SOURCES = ("mesh", "fields", "compare")
FIELDS_SURFACES = ("mesh", "sdf")   # where the fields' label rendering finds a ray's surface (see `fields` below)
DEFAULT_WHAT = ("rgb", "depth", "semantic")
DEFAULT_FPS = 15.0
ORBIT_FRAMES = 90                # --orbit without --n-frames: 6 s at 15 frames/s
INTERP_FRAMES_PER_KEY = 4        # --path interpolate without --n-frames: 4 frames per pair of training poses
OVERVIEW_ROWS = 6                # frames shown in overview.png, spread evenly over the path
MAX_SIZE = 8192
SIDE_BY_SIDE = ("rgb", "depth", "panoptic")


# ----------------------------------------------------------------------------- options


def parse_what(what: str | tuple[str, ...] | list[str]) -> list[str]:
    """'rgb,depth' or a sequence -> the branches in canonical order; RenderError for unknown items."""
    items = [w.strip().lower() for w in (what.split(",") if isinstance(what, str) else what) if w.strip()]
    unknown = [w for w in items if w not in WHATS]
    if unknown:
        raise RenderError(f"--what: unknown item{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                          f"choose from {','.join(WHATS)}")
    if not items:
        raise RenderError(f"--what is empty; choose from {','.join(WHATS)}")
    return [w for w in WHATS if w in items]


def parse_size(size: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """'WxH' or (W, H) -> (W, H) (None = the scene's size); RenderError for anything else."""
    if size is None:
        return None
    if isinstance(size, str):
        try:
            w, h = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise RenderError(f"--size must look like 320x240, got {size!r}") from None
    else:
        w, h = (int(v) for v in size)
    if not (8 <= w <= MAX_SIZE and 8 <= h <= MAX_SIZE):
        raise RenderError(f"--size {w}x{h}: width and height must be in [8, {MAX_SIZE}]")
    return w, h


def check_pose_source(frames: str | None, poses_file: Path | None, orbit: bool, path: str | None,
                      n_frames: int | None) -> str:
    """Which pose source the options name ('frames', 'poses', 'orbit', 'interpolate'); RenderError when they
    conflict. No source given = --frames eval."""
    given = [name for name, on in (("--frames", frames is not None), ("--poses", poses_file is not None),
                                   ("--orbit", bool(orbit)), ("--path", path is not None)) if on]
    if len(given) > 1:
        raise RenderError(f"{' and '.join(given)} conflict: give one pose source (--frames, --poses, --orbit or "
                          f"--path interpolate)")
    if path is not None and path != "interpolate":
        raise RenderError(f"--path {path!r}: the only path is 'interpolate'")
    source = {"--poses": "poses", "--orbit": "orbit", "--path": "interpolate"}.get(given[0] if given else "",
                                                                                   "frames")
    if n_frames is not None:
        if source not in ("orbit", "interpolate"):
            raise RenderError("--n-frames sets the length of --orbit and --path interpolate only")
        least = 1 if source == "orbit" else 2
        if n_frames < least:
            raise RenderError(f"--n-frames must be at least {least}, got {n_frames}")
    return source


@dataclass
class CameraPath:
    c2w: np.ndarray                   # [N, 4, 4] camera-to-world, OpenCV axes, metres
    names: list[str]                  # file name stem of each pose
    frame_index: list[int] | None     # scene frame index of each pose (scene frames only)
    source: str                       # for logs and render.json


def camera_path(source: str, scene, box: dict | None, frames: str | None = None, poses: np.ndarray | None = None,
                n_frames: int | None = None, poses_file: Path | None = None) -> CameraPath:
    """The poses of `source` (check_pose_source) for `scene`; `box` {"min", "max"} is needed for the orbit."""
    if source == "frames":
        frames = frames or "eval"
        splits = {k: scene.split_indices(k) for k in ("eval", "train") if k in scene.splits}
        idx = frame_indices(scene.frame_ids, splits, frames)
        if not idx:
            raise RenderError(f"--frames {frames}: no frames to render in {scene.root}")
        return CameraPath(scene.c2w[idx].astype(np.float64), [scene.frame_ids[i] for i in idx], idx,
                          f"scene frames '{frames}'")
    if source == "poses":
        assert poses is not None
        return CameraPath(poses, [f"{k:04d}" for k in range(len(poses))], None, f"pose file {poses_file}")
    if source == "orbit":
        assert box is not None
        declared = scene.meta.get("up_axis")
        try:
            up = axis_vector(declared) if declared else camera_up(scene.c2w)
        except ValueError as exc:
            raise RenderError(f"{scene.root}: cannot tell which way is up for the orbit ({exc})") from exc
        n = n_frames or ORBIT_FRAMES
        c2w = orbit_poses(np.asarray(box["min"]), np.asarray(box["max"]), up, n)
        how = f"scene.json up_axis {declared}" if declared else "the cameras' up"
        return CameraPath(c2w, [f"{k:04d}" for k in range(n)], None, f"orbit of {n} poses in the scene box (up: {how})")
    if source == "interpolate":
        train = scene.split_indices("train") if "train" in scene.splits else list(range(len(scene)))
        n = n_frames or INTERP_FRAMES_PER_KEY * max(len(train) - 1, 1) + 1
        c2w = interpolate_poses(scene.c2w[train], n)
        return CameraPath(c2w, [f"{k:04d}" for k in range(n)], None,
                          f"{n} poses interpolated through {len(train)} training poses")
    raise AssertionError(source)


# ----------------------------------------------------------------------------- colours


def depth_to_rgb(depth_m: np.ndarray, max_m: float) -> np.ndarray:
    """Depth [H, W] -> a viridis colour image [H, W, 3] uint8 (0 = invalid -> black)."""
    import matplotlib
    t = np.clip(depth_m / max(max_m, 1e-6), 0, 1)
    img = (matplotlib.colormaps["viridis"](t)[..., :3] * 255).astype(np.uint8)
    img[depth_m <= 0] = 0
    return img


def legend_colors(run: Path, n_classes: int) -> np.ndarray:
    """Class colour table [C, 3] uint8 from RUN/legend.json (the colours of mesh_semantic.ply); classes the
    legend lacks (and runs without one) take recon.data.palette.class_palette."""
    legend_path = Path(run) / "legend.json"
    entries = json.loads(legend_path.read_text()) if legend_path.is_file() else []
    n = max([n_classes] + [int(e["id"]) + 1 for e in entries])
    lut = class_palette(n).copy()
    for e in entries:
        lut[int(e["id"])] = np.asarray(e["color"], np.uint8)
    return lut


def color_labels(kind: str, semantic: np.ndarray, instance: np.ndarray, class_lut: np.ndarray,
                 instance_lut: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 picture of labels semantic / instance [H, W]: semantic = class colours; instance =
    instance colours, black where there is no instance; panoptic = instance colours on instances, class
    colours elsewhere."""
    sem = np.clip(semantic, 0, len(class_lut) - 1)
    inst = np.clip(instance, 0, len(instance_lut) - 1)
    if kind == "semantic":
        return class_lut[sem]
    if kind == "instance":
        return np.where((inst > 0)[..., None], instance_lut[inst], np.uint8(0)).astype(np.uint8)
    if kind == "panoptic":
        return np.where((inst > 0)[..., None], instance_lut[inst], class_lut[sem]).astype(np.uint8)
    raise AssertionError(kind)


# ----------------------------------------------------------------------------- label agreement


AGREEMENT_NOTE = ("semantic_agreement: share of the pixels labelled by both sources with equal classes; "
                  "instance_agreement: share of the pixels labelled by both where either gives an instance, with "
                  "equal ids (fields' tokens mapped to the mesh's ids through instances.json token_ids); "
                  "labelled_*: share of all pixels each source labels")


@dataclass
class LabelAgreement:
    """How often two label renders of the same views agree (mesh ray casting vs the fields), summed over views.

    Semantic agreement: share of the pixels labelled by both where the classes are equal. Instance agreement:
    share of the pixels labelled by both where at least one gives an instance, on which the ids are equal
    (pixels where both say 'no instance' are left out: they would inflate it with stuff). Coverage: share of
    all pixels labelled by each, and by both."""
    pixels: int = 0
    labelled_a: int = 0
    labelled_b: int = 0
    both: int = 0
    semantic_equal: int = 0
    instance_pixels: int = 0
    instance_equal: int = 0

    def add(self, sem_a: np.ndarray, inst_a: np.ndarray, valid_a: np.ndarray, sem_b: np.ndarray,
            inst_b: np.ndarray, valid_b: np.ndarray) -> None:
        """One view's labels [H, W] from the two sources (valid_* [H, W] bool: the source labelled the pixel)."""
        assert sem_a.shape == inst_a.shape == valid_a.shape == sem_b.shape == inst_b.shape == valid_b.shape
        both = valid_a & valid_b
        has_inst = both & ((inst_a > 0) | (inst_b > 0))
        self.pixels += int(sem_a.size)
        self.labelled_a += int(valid_a.sum())
        self.labelled_b += int(valid_b.sum())
        self.both += int(both.sum())
        self.semantic_equal += int((both & (sem_a == sem_b)).sum())
        self.instance_pixels += int(has_inst.sum())
        self.instance_equal += int((has_inst & (inst_a == inst_b)).sum())

    @property
    def semantic(self) -> float:
        return self.semantic_equal / self.both if self.both else float("nan")

    @property
    def instance(self) -> float:
        return self.instance_equal / self.instance_pixels if self.instance_pixels else float("nan")

    def summary(self, name_a: str = "mesh", name_b: str = "fields") -> dict:
        share = (lambda k: round(k / self.pixels, 6) if self.pixels else None)  # noqa: E731
        return {"semantic_agreement": round(self.semantic, 6), "instance_agreement": round(self.instance, 6),
                f"labelled_{name_a}": share(self.labelled_a), f"labelled_{name_b}": share(self.labelled_b),
                "labelled_both": share(self.both), "pixels": self.pixels, "instance_pixels": self.instance_pixels,
                "note": AGREEMENT_NOTE}


# ----------------------------------------------------------------------------- the command


@dataclass
class RenderRequest:
    frames: str | None = None
    poses_file: Path | None = None
    orbit: bool = False
    path: str | None = None
    what: list[str] = field(default_factory=lambda: list(DEFAULT_WHAT))
    size: tuple[int, int] | None = None
    video: bool = False
    labels: str = "mesh"
    n_frames: int | None = None
    fps: float = DEFAULT_FPS
    fields_surface: str = "mesh"


def _inside(path: Path, folder: Path) -> bool:
    p, f = Path(path).resolve(), Path(folder).resolve()
    return p == f or f in p.parents


def render_run_images(run: Path, frames: str | None = None, *, poses_file: Path | None = None, orbit: bool = False,
                      path: str | None = None, what: str | tuple[str, ...] | list[str] = DEFAULT_WHAT,
                      size: str | tuple[int, int] | None = None, out: Path | None = None, video: bool = False,
                      labels: str = "mesh", n_frames: int | None = None, fps: float = DEFAULT_FPS,
                      fields_surface: str = "mesh", log=print, progress: bool = True) -> Path:
    """Render the run's views into `out` (default RUN/renders) as the module docstring says; returns `out`.
    Every option is checked (RenderError, one line) before anything is loaded or written. Writing inside the
    run folder takes the run's lock."""
    run = Path(run)
    req = RenderRequest(frames=frames, poses_file=Path(poses_file) if poses_file is not None else None,
                        orbit=orbit, path=path, what=parse_what(what), size=parse_size(size), video=video,
                        labels=labels, n_frames=n_frames, fps=fps, fields_surface=fields_surface)
    out = Path(out) if out is not None else run / "renders"
    if _inside(out, run):
        return _render_in_run(run, req, out, log, progress)
    return _render(run, req, out, log, progress)


@writes_run("render")
def _render_in_run(run: Path, req: RenderRequest, out: Path, log, progress: bool) -> Path:
    return _render(run, req, out, log, progress)


def _check_request(run: Path, req: RenderRequest) -> tuple[str, np.ndarray | None]:
    """The pose source and the pose file's poses (when --poses); RenderError for a bad option."""
    if req.labels not in LABEL_SOURCES:
        raise RenderError(f"--labels {req.labels!r}: choose from {', '.join(LABEL_SOURCES)}")
    if req.fields_surface not in FIELDS_SURFACES:
        raise RenderError(f"--fields-surface {req.fields_surface!r}: choose from {', '.join(FIELDS_SURFACES)}")
    if not (req.fps > 0 and np.isfinite(req.fps)):
        raise RenderError(f"--fps must be a positive number, got {req.fps}")
    source = check_pose_source(req.frames, req.poses_file, req.orbit, req.path, req.n_frames)
    if not (run / "config.yaml").is_file() or not (run / "scene.txt").is_file():
        raise RenderError(f"{run} is not a run folder (no config.yaml / scene.txt): give the folder `python run.py "
                          f"fit --out` wrote")
    poses = read_pose_file(req.poses_file) if source == "poses" else None
    return source, poses


def _mesh_caster(run: Path, log):
    from recon.postfit.mesh_raycast import load_mesh_caster

    mesh = run / "mesh.ply"
    if not mesh.is_file():
        raise RenderError(f"{mesh} does not exist: run `python run.py fit` to the end first (it writes the labelled "
                          f"mesh), or use --labels fields")
    try:
        caster = load_mesh_caster(mesh)
    except ValueError as exc:
        raise RenderError(f"{exc}; use --labels fields") from None
    if caster.n_faces == 0:
        log(f"warning: {mesh} has no faces (the fit found no surface): every label pixel is unlabelled")
    return caster


def _render(run: Path, req: RenderRequest, out: Path, log, progress: bool) -> Path:
    from recon.core.config import load_config
    from recon.core.settings import FitSettings
    from recon.data.scene import load_scene

    # every check that needs no model first: options, pose file, frame ids, output folder, mesh
    source, file_poses = _check_request(run, req)
    s = load_config(FitSettings, run / "config.yaml")
    scene = load_scene(Path((run / "scene.txt").read_text().strip()), skip_bad_frames=s.data.skip_bad_frames,
                       check_images=False)
    cams = None
    if source != "orbit":                            # the orbit needs the run's box (below)
        cams = camera_path(source, scene, None, frames=req.frames, poses=file_poses, n_frames=req.n_frames,
                           poses_file=req.poses_file)
    check_replaceable(out, "renders", lambda p: marker_path(p, "renders").is_file() or p == run / "renders",
                      inputs=(run, scene.root), flag="render --out")
    want_labels = [w for w in req.what if w in LABEL_WHATS]
    caster = None
    if want_labels and req.labels in ("mesh", "compare"):
        caster = _mesh_caster(run, log)
    elif want_labels and req.fields_surface == "mesh" and (run / "mesh.ply").is_file():
        # --labels fields: the mesh guides the rays to the surface
        try:
            caster = _mesh_caster(run, log)
        except RenderError:
            caster = None

    t_start = time.perf_counter()
    need_view = "rgb" in req.what or "depth" in req.what
    need_fields = bool(want_labels) and req.labels in ("fields", "compare")
    renderer = fields = None
    if need_view:
        from recon.postfit.views import load_view_renderer
        renderer = load_view_renderer(run)
        fields = _Fields(renderer.model, renderer.branch, s)
    elif need_fields:                                # labels alone: the fields without the appearance branch
        from recon.train.runs import load_run_full
        _, model, branch, _ = load_run_full(run, log=log)
        fields = _Fields(model, branch, s)
    if fields is not None:
        box = fields.model.box_dict()
    elif source == "orbit":
        from recon.train.checkpoint import load_checkpoint
        box = load_checkpoint(run, log=log)[0]["box"]
    else:
        box = None
    if cams is None:
        cams = camera_path(source, scene, box, n_frames=req.n_frames)
    W, H = req.size or (scene.width, scene.height)
    K = scale_intrinsics(scene.K, (scene.width, scene.height), (W, H))

    class_lut = legend_colors(run, scene.n_classes)
    max_inst = int(caster.instance.max(initial=0)) if caster is not None else 0
    token_ids = None
    if need_fields and fields.branch is not None:
        from recon.postfit.labelled_mesh import read_token_ids
        token_ids = read_token_ids(run, fields.branch.tokens.n)
        max_inst = max(max_inst, int(token_ids.max(initial=0)))
    instance_lut = instance_palette(np.arange(max_inst + 1))
    depth_max_m = float(np.linalg.norm(np.subtract(box["max"], box["min"]))) if box is not None else 1.0
    agreement = LabelAgreement() if req.labels == "compare" and want_labels else None
    t_loaded = time.perf_counter()

    rows_at = set(np.linspace(0, len(cams.c2w) - 1, min(OVERVIEW_ROWS, len(cams.c2w))).round().astype(int).tolist())
    rows: list[np.ndarray] = []
    writers: dict = {}
    with staged_dir(out) as tmp:
        write_marker(tmp, "renders")
        (tmp / "poses.txt").write_text(format_pose_file(cams.c2w, cams.names))
        try:
            if req.video:
                from recon.postfit.video import Mp4Writer
                writers = {w: Mp4Writer(tmp / f"{w}.mp4", req.fps) for w in req.what}
                writers["side_by_side"] = Mp4Writer(tmp / "side_by_side.mp4", req.fps)
            bar = tqdm(total=len(cams.c2w), desc="render", unit="frame", dynamic_ncols=True, disable=not progress)
            for k, c2w in enumerate(cams.c2w):
                imgs, raw = _render_view(renderer, caster, fields, K, c2w, W, H, box, req, want_labels, token_ids,
                                         class_lut, instance_lut, depth_max_m, agreement)
                name = cams.names[k]
                for w in req.what:
                    Image.fromarray(imgs[w]).save(tmp / f"{name}_{w}.png")
                for key, arr in raw.items():
                    (tmp / f"{name}_{key}.png").write_bytes(png16_bytes(arr, f"{name}_{key}.png"))
                if writers:
                    from recon.postfit.video import side_by_side
                    for w in req.what:
                        writers[w].append(imgs[w])
                    pick = [w for w in SIDE_BY_SIDE if w in imgs] or list(req.what)
                    writers["side_by_side"].append(side_by_side([imgs[w] for w in pick], pick))
                if k in rows_at:
                    rows.append(_overview_row(scene, cams, k, imgs, req.what, W, H, depth_max_m))
                bar.update(1)
            bar.close()
            for wr in writers.values():
                wr.close()
        except BaseException:
            for wr in writers.values():
                wr.abort()
            raise
        t_done = time.perf_counter()
        Image.fromarray(np.concatenate(rows, axis=0)).save(tmp / "overview.png")
        n = len(cams.c2w)
        fps_measured = n / max(t_done - t_loaded, 1e-9)
        doc = {"source": cams.source, "frames": n, "size": [W, H], "K": K.round(6).tolist(), "what": req.what,
               "labels": req.labels if want_labels else None,
               "appearance": ("gaussians" if getattr(renderer, "has_gaussians", False) else "fields")
               if renderer is not None else None,
               "fields_surface": ("mesh hit where the ray hits RUN/mesh.ply, else the SDF's first zero crossing"
                                  if caster is not None and req.fields_surface == "mesh"
                                  else "the SDF's first zero crossing") if need_fields else None,
               "depth_colors_max_m": round(depth_max_m, 4), "video_fps": req.fps if req.video else None,
               "seconds_loading": round(t_loaded - t_start, 3), "seconds_rendering": round(t_done - t_loaded, 3),
               "frames_per_second": round(fps_measured, 3)}
        if agreement is not None:
            doc["label_agreement"] = agreement.summary()
            (tmp / "label_agreement.json").write_text(json.dumps(agreement.summary(), indent=1) + "\n")
        (tmp / "render.json").write_text(json.dumps(doc, indent=1) + "\n")
    cols = _overview_columns(cams, req.what)
    log(f"wrote {n} views ({cams.source}, {W}x{H}, {', '.join(req.what)}) to {out} in {t_done - t_loaded:.1f} s "
        f"({fps_measured:.2f} frames/s, {t_loaded - t_start:.1f} s loading); overview.png: {' | '.join(cols)}")
    if agreement is not None:
        log(f"labels, mesh vs fields on {agreement.both} pixels labelled by both: semantic agreement "
            f"{agreement.semantic:.4f}, instance agreement {agreement.instance:.4f} "
            f"({agreement.instance_pixels} pixels with an instance)")
    return out


def _render_view(renderer, caster, fields, K: np.ndarray, c2w: np.ndarray, W: int, H: int, box: dict | None,
                 req: RenderRequest, want_labels: list[str], token_ids: np.ndarray | None, class_lut: np.ndarray,
                 instance_lut: np.ndarray, depth_max_m: float, agreement: LabelAgreement | None
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(pictures {what: [H, W, 3] uint8}, raw images {depth_mm | semantic_id | instance_id: [H, W] uint16})."""
    imgs: dict[str, np.ndarray] = {}
    raw: dict[str, np.ndarray] = {}
    if "rgb" in req.what or "depth" in req.what:
        view = renderer.render(K, c2w, W, H)
        assert view["rgb"].shape == (H, W, 3) and view["depth_m"].shape == (H, W), \
            (view["rgb"].shape, view["depth_m"].shape)
        if "rgb" in req.what:
            imgs["rgb"] = (np.clip(np.asarray(view["rgb"], np.float32), 0, 1) * 255).round().astype(np.uint8)
        if "depth" in req.what:
            depth = np.asarray(view["depth_m"], np.float32)
            imgs["depth"] = depth_to_rgb(depth, depth_max_m)
            raw["depth_mm"] = depth_m_to_mm(depth)
    if want_labels:
        ml = caster.render(K, c2w, W, H) if caster is not None else None
        if req.labels in ("mesh", "compare"):
            sem, inst = ml.semantic, ml.instance
        if req.labels in ("fields", "compare"):
            guide = ml if req.fields_surface == "mesh" else None
            f_sem, f_inst, f_valid = _field_labels(fields, K, c2w, W, H, box, token_ids, guide=guide)
            if req.labels == "fields":
                sem, inst = f_sem, f_inst
            else:
                agreement.add(ml.semantic, ml.instance, ml.hit, f_sem, f_inst, f_valid)
        for w in want_labels:
            imgs[w] = color_labels(w, sem, inst, class_lut, instance_lut)
        if "semantic" in want_labels or "panoptic" in want_labels:
            raw["semantic_id"] = sem.astype(np.uint16)
        if "instance" in want_labels or "panoptic" in want_labels:
            raw["instance_id"] = inst.astype(np.uint16)
    return imgs, raw


@dataclass
class _Fields:
    model: object          # SceneModel
    branch: object         # InstanceBranch or None
    s: object              # FitSettings


def _field_labels(fields: _Fields, K: np.ndarray, c2w: np.ndarray, W: int, H: int, box: dict, token_ids,
                  guide=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(semantic [H, W], instance id [H, W], labelled [H, W] bool) from the fields at any pose. The labels are
    volume-rendered in a band around the surface; with `guide` (the mesh's MeshLabels of this view) the surface
    of a ray that hits the mesh is its hit (the mesh is the SDF's zero level set, so this saves the SDF search,
    the slow part on a CPU); the other rays search the SDF for it."""
    from recon.model.inference import render_pose_labels
    from recon.model.sampling import camera_dirs
    from recon.postfit.labelled_mesh import apply_ids

    s = fields.s
    corners = np.array([[x, y, z] for x in (box["min"][0], box["max"][0]) for y in (box["min"][1], box["max"][1])
                        for z in (box["min"][2], box["max"][2])])
    # no observed depth to bound the rays: the far plane is the farthest box corner (or the run's render.far_m)
    far_m = s.render.far_m if s.render.far_m > 0 else float(np.linalg.norm(corners - c2w[:3, 3], axis=1).max())
    depth_ray = None
    if guide is not None:
        ray_scale = np.linalg.norm(camera_dirs(K, W, H), axis=1)                         # [P] |d| with z = 1
        depth_ray = np.where(guide.hit.reshape(-1), guide.depth_m.reshape(-1) * ray_scale, np.nan)
    sem, tok, depth = render_pose_labels(fields.model, fields.branch, bool(s.panoptic.head), K, c2w, W, H, s, far_m,
                                         depth_ray_m=depth_ray)
    has_ids = fields.branch is not None and token_ids is not None
    inst = apply_ids(tok, token_ids) if has_ids else np.zeros_like(sem)
    return sem, inst, depth > 0


def _overview_columns(cams: CameraPath, what: list[str]) -> list[str]:
    cols = []
    for w in what:
        if cams.frame_index is not None and w in ("rgb", "depth"):
            cols.append("observed colour" if w == "rgb" else "observed depth")
        cols.append(f"rendered {'colour' if w == 'rgb' else w}")
    return cols


def _overview_row(scene, cams: CameraPath, k: int, imgs: dict[str, np.ndarray], what: list[str], W: int, H: int,
                  depth_max_m: float) -> np.ndarray:
    """One overview row: per branch its picture, preceded for scene frames by the observed colour / depth."""
    panels = []
    for w in what:
        if cams.frame_index is not None and w in ("rgb", "depth"):
            i = cams.frame_index[k]
            if w == "rgb":
                obs = scene.load_color(i)
                if obs.shape[:2] != (H, W):
                    obs = np.asarray(Image.fromarray(obs).resize((W, H), Image.BILINEAR))
            else:
                d = scene.load_depth_m(i).astype(np.float32)
                if d.shape != (H, W):
                    d = np.asarray(Image.fromarray(d).resize((W, H), Image.NEAREST))
                obs = depth_to_rgb(d, depth_max_m)
            panels.append(obs)
        panels.append(imgs[w])
    return np.concatenate(panels, axis=1)
