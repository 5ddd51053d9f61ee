"""`run.py bench`: benchmark suites (scenes x methods x seeds) run end to end, resumable.

A suite is data (`SUITES`): scene specs (a synthetic preset + mask noise, or a scene folder),
methods (`ours`, `panoptic_lifting` = ours without spatial prior / token adjustment / panoptic
head, `fusion` = the TSDF-fusion + voting baseline of eval/baselines/fusion.py, or ablation
variants) and seeds. One cell = (scene, method, seed); the seed drives the synthetic scene and
train.seed.

Layout of the output folder DIR:
    DIR/scenes/<scene_key>/             synthetic scenes (made once, shared by the cells)
    DIR/cells/<cell_id>/spec.json       what the cell runs (resolved config included)
    DIR/cells/<cell_id>/fit.yaml        the resolved fit settings (fit methods)
    DIR/cells/<cell_id>/run/            the run folder (RUN/metrics.json from eval/evaluate.py)
    DIR/cells/<cell_id>/cell.json       status done | failed, error, traceback, wall time, config hash
    DIR/cells/<cell_id>/output.log      the cell's console output
    DIR/references/<scene_key>.json     what the scene's masks carry in 3D (eval/mask_reference.py), cached
    DIR/results.json                    every metric of every cell (schema: eval/bench_schema.json)
    DIR/report.md + DIR/*.png           tables and plots (eval/bench_report.py)

Each cell runs in its own Python process (`python -m eval.bench --cell DIR/cells/<id>`), so its
peak memory is its own and a hard crash (segfault, out-of-memory kill) cannot take the suite down.
Resume: a cell whose cell.json says `done` with the same config hash is skipped; a failed cell is
retried; a cell interrupted during its fit continues from the run's last checkpoint.

Iteration budget (`scaled_schedule`): the quick config is tuned for the room (48 training frames,
1100 iterations). A scene with n_train training frames gets iters = round(1100 * n_train / 48) and
the stage boundaries (geometry_only_iters, pan_start_iters, dice_off_iters) scaled by the same
factor, so every training frame is visited about equally often in every scene (apartment: 144
training frames -> 3300 iterations).

Metric vs. time: fit methods call `fit(..., monitor=...)` every `ceil(iters / monitor_points)`
iterations; the monitor renders a fixed subset of `monitor_frames` evenly spaced evaluation frames
and logs PQ@0.5, PQ@0.3, mIoU and mCov over that subset (`subset_scores`) as monitor/<name> rows of
RUN/metrics.csv. The fusion baseline gets one point (its fit time, its label images on the subset).
"""
from __future__ import annotations

import csv
import fnmatch
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from recon.config import atomic_write_text, load_config, save_config, to_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SCHEMA_PATH = Path(__file__).resolve().parent / "bench_schema.json"
BENCH_VERSION = 2                     # bump when a cell's computation changes meaning (invalidates old cells);
                                      # 2: synthetic GT meshes sample surfaces uniformly (5 cm)
REF_TRAIN_FRAMES = 48                 # training frames of the room, for which configs/quick.yaml is tuned
SCHEDULE_KEYS = ("iters", "geometry_only_iters", "pan_start_iters", "dice_off_iters")
# the Panoptic Lifting formulation: no spatial prior, fixed tokens, no panoptic head, and none of our post-processing
PL_OVERRIDES = ("tokens.spatial_prior=false", "tokens.adjust=false", "panoptic.head=false",
                "panoptic.merge_fragments=false")
MONITOR_KEYS = ("pq50", "pq30", "miou", "mcov")


# ----------------------------------------------------------------------------- suites as data

@dataclass(frozen=True)
class SceneSpec:
    """A synthetic scene (preset, noise, size, frames, holdout_every) or an existing scene folder (path)."""
    preset: str = "room"
    noise: str = "realistic"
    size: tuple[int, int] = (160, 120)
    frames: int | None = None
    holdout_every: int = 5
    path: str | None = None            # a scene folder to read instead of synthesising (name = its folder name)

    def key(self, seed: int) -> str:
        if self.path is not None:
            return Path(self.path).name
        return f"{self.preset}-{self.noise}-s{seed}"

    def group(self) -> str:
        """The scene without its seed (rows of the mean-over-seeds table)."""
        return Path(self.path).name if self.path is not None else f"{self.preset}-{self.noise}"


@dataclass(frozen=True)
class MethodSpec:
    """kind 'fit' = recon.trainer.fit with `config` + `overrides`; kind 'fusion' = the fusion baseline."""
    name: str
    kind: str = "fit"
    overrides: tuple[str, ...] = ()
    label: str = ""                    # table / legend text (default: name)

    def title(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class Suite:
    name: str
    scenes: tuple[SceneSpec, ...]
    methods: tuple[MethodSpec, ...]
    seeds: tuple[int, ...] = (0,)
    config: str | None = "quick.yaml"  # fit settings file under configs/ (None = the schema defaults)
    base_overrides: tuple[str, ...] = ()  # applied to every fit method before its own overrides
    ref_train_frames: int | None = REF_TRAIN_FRAMES  # None = no iteration scaling
    monitor_points: int = 6            # metric-vs-time evaluations per fit (0 = none)
    monitor_frames: int = 6            # evaluation frames the monitor renders
    fusion_voxel_size_m: float = 0.02
    description: str = ""


OURS = MethodSpec("ours", label="ours (full)")
PANOPTIC_LIFTING = MethodSpec("panoptic_lifting", overrides=PL_OVERRIDES, label="Panoptic Lifting formulation")
FUSION = MethodSpec("fusion", kind="fusion", label="TSDF fusion + voting")

SUITES: dict[str, Suite] = {
    "quick": Suite(
        "quick", scenes=(SceneSpec("room", "realistic"),), methods=(OURS, PANOPTIC_LIFTING, FUSION),
        monitor_points=5, monitor_frames=4,
        description="room, realistic masks, one seed: ours and both baselines (about 20 min on a laptop CPU)"),
    "standard": Suite(
        "standard", scenes=tuple(SceneSpec(p, n) for p in ("room", "apartment", "clutter")
                                 for n in ("clean", "realistic", "hard")),
        methods=(OURS, PANOPTIC_LIFTING, FUSION), seeds=(0, 1),
        description="room, apartment, clutter x clean / realistic / hard masks x 2 seeds"),
    "ablation": Suite(
        "ablation", scenes=(SceneSpec("apartment", "realistic"), SceneSpec("clutter", "realistic")),
        methods=(MethodSpec("prior_only", overrides=("tokens.adjust=false", "panoptic.head=false"),
                            label="spatial prior"),
                 MethodSpec("prior_adjust", overrides=("panoptic.head=false",),
                            label="+ dynamic adjustment"),
                 MethodSpec("full", label="+ panoptic head (full)"),
                 MethodSpec("no_prior", overrides=("tokens.spatial_prior=false",),
                            label="full without spatial prior")),
        description="the paper's Table V switches (spatial prior, dynamic token adjustment, panoptic head)"),
}


@dataclass(frozen=True)
class Cell:
    scene: SceneSpec
    method: MethodSpec
    seed: int

    @property
    def scene_key(self) -> str:
        return self.scene.key(self.seed)

    @property
    def cell_id(self) -> str:
        return f"{self.scene_key}__{self.method.name}"


def suite_cells(suite: Suite) -> list[Cell]:
    """Cells in run order: scene by scene (seed inner), method order within a scene."""
    cells = [Cell(sc, m, seed) for sc in suite.scenes for seed in (suite.seeds if sc.path is None else (0,))
             for m in suite.methods]
    ids = [c.cell_id for c in cells]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    assert not dup, f"suite {suite.name}: duplicate cell ids {dup}"
    return cells


# ----------------------------------------------------------------------------- pure rules

def scaled_schedule(train: dict, n_train: int, ref_train: int | None = REF_TRAIN_FRAMES) -> dict:
    """The iteration budget rule: iters and stage boundaries times n_train / ref_train.

    train: the `train` section as a dict (iters, geometry_only_iters, pan_start_iters,
    dice_off_iters). Returns a new dict; a boundary of 0 (= never) stays 0, others are at least 1.
    ref_train None: unchanged.
    """
    assert n_train >= 1, f"n_train must be >= 1, got {n_train}"
    out = dict(train)
    if ref_train is None:
        return out
    for k in SCHEDULE_KEYS:
        out[k] = scale_iters(int(out[k]), n_train, ref_train)
    return out


def scale_iters(v: int, n_train: int, ref_train: int) -> int:
    """One iteration count times n_train / ref_train; 0 (= never / no limit) stays 0, others >= 1."""
    return 0 if v == 0 else max(1, int(round(v * n_train / float(ref_train))))


def monitor_every(iters: int, points: int) -> int:
    """Iterations between monitor calls for `points` evaluations over `iters` (0 = never)."""
    return 0 if points <= 0 else max(1, math.ceil(iters / points))


def evenly_spaced(indices: list[int], n: int) -> list[int]:
    """n items of `indices` evenly spaced from first to last (all of them if n >= len)."""
    if n >= len(indices):
        return list(indices)
    pos = np.unique(np.round(np.linspace(0, len(indices) - 1, n)).astype(int))
    return [indices[p] for p in pos]


def subset_scores(preds: list[tuple[np.ndarray, np.ndarray]], gts: list[tuple[np.ndarray, np.ndarray]],
                  thing_ids: list[int], n_classes: int) -> dict[str, float]:
    """PQ@0.5, PQ@0.3, mIoU, mCov (percent) over frames concatenated into one image.

    preds, gts: per frame (semantic [H, W], instance [H, W]) integer label images.
    """
    from eval.panoptic_metrics import instance_coverage, panoptic_quality, semantic_scores
    assert len(preds) == len(gts) and preds, "need the same, non-zero number of predicted and GT frames"
    for (ps, pi), (gs, gi) in zip(preds, gts):
        assert ps.shape == pi.shape == gs.shape == gi.shape, (ps.shape, pi.shape, gs.shape, gi.shape)
    cat = [np.concatenate([np.asarray(f[k]).reshape(-1) for f in frames]).astype(np.int64)
           for frames in (preds, gts) for k in (0, 1)]
    p_sem, p_inst, g_sem, g_inst = cat
    return {"pq50": float(panoptic_quality(p_sem, p_inst, g_sem, g_inst, thing_ids, 0.5)["pq"]),
            "pq30": float(panoptic_quality(p_sem, p_inst, g_sem, g_inst, thing_ids, 0.3)["pq"]),
            "miou": float(semantic_scores(p_sem, g_sem, n_classes)["miou"]),
            "mcov": float(instance_coverage(p_inst, g_sem, g_inst, thing_ids)["mcov"])}


def config_hash(obj) -> str:
    """sha256 (16 hex digits) of the canonical JSON of obj."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# where a fit runs does not make it another cell (cells computed before the key existed keep their hash)
UNHASHED_TRAIN_KEYS = ("device",)
# the fragment-merging post-process, added after cells were computed: switched off it changes nothing
# (and its parameters are unused), so such a cell keeps its identity and its finished fit stays reusable
FRAGMENT_KEYS = ("merge_fragments", "fragment_max_fraction", "fragment_min_shared_edges")
# the blind split rule (tokens/adjust.py), added later and off by default: while off (blind_max_overlap 0)
# its keys change nothing, so cells keep their identity
BLIND_KEYS = ("blind_max_overlap", "blind_min_events", "blind_min_distance_m")


def comparable_config(cfg: dict | None) -> dict | None:
    """A resolved fit config without the settings that do not change the result (UNHASHED_TRAIN_KEYS; the
    FRAGMENT_KEYS while panoptic.merge_fragments is off; the BLIND_KEYS while the blind split is off): what
    the cell hash and fit reuse compare."""
    if not isinstance(cfg, dict):
        return cfg
    out = dict(cfg)
    if isinstance(out.get("train"), dict):
        out["train"] = {k: v for k, v in out["train"].items() if k not in UNHASHED_TRAIN_KEYS}
    pan = out.get("panoptic")
    if isinstance(pan, dict) and not pan.get("merge_fragments", False):
        out["panoptic"] = {k: v for k, v in pan.items() if k not in FRAGMENT_KEYS}
    tok = out.get("tokens")
    rules = tok.get("adjust_rules") if isinstance(tok, dict) else None
    if isinstance(rules, dict) and not rules.get("blind_max_overlap", 0.0):
        out["tokens"] = {**tok, "adjust_rules": {k: v for k, v in rules.items() if k not in BLIND_KEYS}}
    return out


# post-processes a finished fit can take without its model: the mesh's near-surface cull (recon/export_mesh.py
# cull_run_mesh; a run fitted before the key existed was culled with no front margin) and fragment merging
CULL_KEY = "cull_front_margin_m"


def post_steps(old_cfg: dict, new_cfg: dict) -> list[str] | None:
    """The post-processes ("cull", then "merge") that turn a finished fit with settings old_cfg into one with
    new_cfg, [] if none is needed, or None if no post-process can (other settings differ, a looser cull, or
    other fragment-merging settings on a run merged already): then the cell is refitted."""
    old_c, new_c = comparable_config(old_cfg), comparable_config(new_cfg)

    def without_post(c: dict) -> dict:
        return {**c, "panoptic": {k: v for k, v in (c.get("panoptic") or {}).items() if k not in FRAGMENT_KEYS},
                "mesh": {k: v for k, v in (c.get("mesh") or {}).items() if k != CULL_KEY}}
    if without_post(old_c) != without_post(new_c):
        return None
    steps = []
    inf = float("inf")
    old_front, new_front = (c.get("mesh", {}).get(CULL_KEY) for c in (old_c, new_c))
    old_front, new_front = (inf if f is None else float(f) for f in (old_front, new_front))
    if new_front != old_front:
        if new_front > old_front:                   # faces culled already cannot come back
            return None
        steps.append("cull")
    old_frag, new_frag = ({k: v for k, v in (c.get("panoptic") or {}).items() if k in FRAGMENT_KEYS}
                          for c in (old_c, new_c))
    if old_frag != new_frag:
        if not new_frag.get("merge_fragments") or old_frag.get("merge_fragments"):
            return None                             # merged ids cannot be split again
        steps.append("merge")
    return steps


def fit_reuse(old_cfg: dict | None, new_cfg: dict) -> str:
    """What a cell does with a finished fit whose RUN/config.yaml is old_cfg, for settings new_cfg:
    "evaluate" (same result settings), "postprocess" (only post-process settings differ, and post_steps can
    apply them to the finished run: then evaluate) or "refit"."""
    if old_cfg is None:
        return "refit"
    if comparable_config(old_cfg) == comparable_config(new_cfg):
        return "evaluate"
    return "postprocess" if post_steps(old_cfg, new_cfg) else "refit"


def hashed_spec(spec: dict) -> dict:
    """The part of a cell spec that decides resume: all but the scene folder's path, with the config
    reduced by comparable_config."""
    out = {k: v for k, v in spec.items() if k != "scene_dir"}
    if isinstance(out.get("config"), dict):
        out["config"] = comparable_config(out["config"])
    return out


def json_clean(obj):
    """NaN / inf -> None, tuples -> lists, numpy scalars -> Python (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def summary_of(metrics: dict) -> dict:
    """The report's columns from a RUN/metrics.json dict (None where absent)."""
    def get(*path):
        node = metrics
        for p in path:
            if not isinstance(node, dict) or p not in node:
                return None
            node = node[p]
        return None if node is None or (isinstance(node, float) and not math.isfinite(node)) else node
    return {"pq50": get("panoptic_2d", "pq"), "pq30": get("panoptic_2d_paper", "pq"),
            "miou_2d": get("semantic_2d", "miou"), "mcov_2d": get("instance_2d", "mcov"),
            "mcov_3d": get("instance_3d", "mcov"), "miou_3d": get("semantic_3d", "miou"),
            "f1": get("geometry", "f1"), "chamfer_l1_cm": get("geometry", "chamfer_l1_cm"),
            "fit_seconds": get("timing", "fit_seconds"), "peak_rss_mb": get("timing", "peak_rss_mb"),
            "iterations": get("timing", "iterations")}


def read_monitor_curve(metrics_csv: Path) -> list[dict]:
    """monitor/* rows of a run's metrics.csv -> [{iter, fit_seconds, pq50, pq30, miou, mcov}] by iteration.

    A resumed fit may log an iteration twice; the last row wins.
    """
    if not metrics_csv.is_file():
        return []
    by_iter: dict[int, dict] = {}
    with open(metrics_csv, newline="") as fh:
        for row in csv.DictReader(fh):
            t = row.get("monitor/fit_seconds", "")
            if t in ("", None) or t.lower() == "nan":
                continue
            point = {"iter": int(float(row["iter"])), "fit_seconds": float(t)}
            for k in MONITOR_KEYS:
                v = row.get(f"monitor/{k}", "")
                point[k] = float(v) if v not in ("", None) and math.isfinite(float(v)) else None
            by_iter[point["iter"]] = point
    return [by_iter[k] for k in sorted(by_iter)]


# ----------------------------------------------------------------------------- environment

def git_info(root: Path = ROOT) -> dict:
    def git(*a: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True, timeout=20,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    commit = git("rev-parse", "HEAD")
    # the published reports themselves do not count as uncommitted changes (publishing rewrites them)
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)BENCHMARKS*.md",
                 ":(exclude)docs/bench*")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def machine_info() -> dict:
    cpu = platform.processor() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 1024 ** 2, 1)
    except OSError:
        pass
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "memory_gb": mem_gb, "torch": None, "gpu": None}
    try:
        import torch
        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # torch missing or broken: recorded as None
        pass
    return info


# ----------------------------------------------------------------------------- preparation (parent)

def ensure_scene(spec: SceneSpec, seed: int, scenes_dir: Path, log=print) -> Path:
    """The scene folder of (spec, seed): an existing folder, or a synthetic scene made once under scenes_dir."""
    from recon.data.make_synth import make_synth_scene
    from recon.schema import SynthSettings
    if spec.path is not None:
        p = Path(spec.path)
        if not (p / "classes.json").is_file():
            raise FileNotFoundError(f"scene folder {p} has no classes.json (is it a scene folder?)")
        return p
    out = scenes_dir / spec.key(seed)
    want = {"bench_version": BENCH_VERSION, "spec": json_clean(asdict(spec)), "seed": seed}
    stamp = out / "bench_scene.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == want and (out / "classes.json").is_file():
        return out
    settings = SynthSettings(preset=spec.preset, seed=seed, size=tuple(spec.size), frames=spec.frames,
                             noise=spec.noise, holdout_every=spec.holdout_every)
    make_synth_scene(settings, out, overwrite=True, log=log)
    atomic_write_text(stamp, json.dumps(want, indent=1) + "\n")
    return out


def resolve_fit_settings(suite: Suite, method: MethodSpec, seed: int, n_train: int | None):
    """FitSettings of a fit cell: config file <- suite overrides <- method overrides <- seed, then the
    iteration budget scaled to n_train training frames (None: unscaled) and the monitor period."""
    from recon.schema import FitSettings
    cfg = None if suite.config is None else CONFIGS / suite.config
    s = load_config(FitSettings, cfg, list(suite.base_overrides) + list(method.overrides) + [f"train.seed={seed}"])
    train = to_dict(s.train)
    tokens = to_dict(s.tokens)
    if n_train is not None:
        train = scaled_schedule(train, n_train, suite.ref_train_frames)
        # the last-stage split cut-off is a stage boundary too
        rules = tokens["adjust_rules"]
        if suite.ref_train_frames is not None:
            rules["split_until_iters"] = scale_iters(rules["split_until_iters"], n_train, suite.ref_train_frames)
    train["monitor_every"] = monitor_every(train["iters"], suite.monitor_points)
    return load_config(FitSettings, None, [], base={**to_dict(s), "train": train, "tokens": tokens})


def prepare_cell(suite: Suite, cell: Cell, scene_dir: Path, cell_dir: Path) -> dict:
    """Write cell_dir/spec.json (and fit.yaml) and return the spec; its hash decides resume."""
    from recon.data.scene import load_scene
    scene = load_scene(scene_dir, check_images=False)
    eval_idx = scene.split_indices("eval") if "eval" in scene.splits else list(range(len(scene)))
    monitor_idx = evenly_spaced(eval_idx, suite.monitor_frames) if scene.has_gt_images else []
    spec = {"bench_version": BENCH_VERSION, "suite": suite.name, "cell_id": cell.cell_id,
            "scene": {"key": cell.scene_key, "group": cell.scene.group(), **json_clean(asdict(cell.scene))},
            "scene_dir": str(scene_dir.resolve()), "method": json_clean(asdict(cell.method)), "seed": cell.seed,
            "monitor_frames": monitor_idx}
    cell_dir.mkdir(parents=True, exist_ok=True)
    if cell.method.kind == "fit":
        split = resolve_fit_settings(suite, cell.method, cell.seed, None).data.split
        n_train = len(scene.split_indices(split)) if split in scene.splits else len(scene)
        s = resolve_fit_settings(suite, cell.method, cell.seed, n_train)
        spec["config"] = to_dict(s)
        spec["n_train"] = n_train
        save_config(s, cell_dir / "fit.yaml")
    elif cell.method.kind == "fusion":
        spec["config"] = {"method": "fusion_baseline", "voxel_size_m": suite.fusion_voxel_size_m}
    else:
        raise ValueError(f"method {cell.method.name}: unknown kind {cell.method.kind!r} (fit | fusion)")
    spec["config_hash"] = config_hash(hashed_spec(spec))
    atomic_write_text(cell_dir / "spec.json", json.dumps(spec, indent=1) + "\n")
    return spec


# ----------------------------------------------------------------------------- one cell (child process)

def make_monitor(scene, frame_idx: list[int]):
    """monitor(it, fit_seconds, label_fn) for recon.trainer.fit: subset scores + the fit time."""
    gts = [scene.load_gt(i) for i in frame_idx]
    things, n_classes = scene.thing_ids(), scene.n_classes

    def monitor(it: int, fit_seconds: float, label_fn) -> dict[str, float]:
        preds = [label_fn(i) for i in frame_idx]
        vals = subset_scores(preds, gts, things, n_classes)
        return {"fit_seconds": float(fit_seconds), **{k: (v if math.isfinite(v) else float("nan"))
                                                       for k, v in vals.items()}}
    return monitor


def label_image_scores(run: Path, scene, frame_idx: list[int]) -> dict[str, float]:
    """subset_scores of a run's written label images (RUN/labels/) on frame_idx."""
    from recon.data.run_labels import read_label_images
    preds = [read_label_images(run, scene.frame_ids[i], (scene.width, scene.height)) for i in frame_idx]
    return subset_scores(preds, [scene.load_gt(i) for i in frame_idx], scene.thing_ids(), scene.n_classes)


def run_cell(cell_dir: Path, progress: bool = True) -> dict:
    """Compute one prepared cell (spec.json) and write cell.json: status done or failed (never raises)."""
    cell_dir = Path(cell_dir)
    t0 = time.perf_counter()
    spec = json.loads((cell_dir / "spec.json").read_text())
    record = {"cell_id": spec["cell_id"], "status": "running", "config_hash": spec["config_hash"],
              "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "git": git_info(), "machine": machine_info(),
              "error": None, "traceback": None}
    atomic_write_text(cell_dir / "cell.json", json.dumps(record, indent=1) + "\n")
    try:
        record.update(_compute_cell(spec, cell_dir, progress))
        record["status"] = "done"
    except BaseException as exc:  # noqa: BLE001 - every failure is recorded, the suite goes on
        record["status"] = "failed"
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc()
        if isinstance(exc, KeyboardInterrupt):
            record["error"] = "interrupted (Ctrl-C)"
    record["wall_seconds"] = round(time.perf_counter() - t0, 2)
    atomic_write_text(cell_dir / "cell.json", json.dumps(json_clean(record), indent=1) + "\n")
    return record


def _compute_cell(spec: dict, cell_dir: Path, progress: bool) -> dict:
    from eval.evaluate import evaluate_run
    from recon.data.scene import load_scene
    scene_dir, run = Path(spec["scene_dir"]), cell_dir / "run"
    scene = load_scene(scene_dir, check_images=False)
    frames = [int(i) for i in spec["monitor_frames"]]
    kind = spec["method"]["kind"]
    if kind == "fit":
        from recon.schema import FitSettings
        from recon.trainer import fit
        import yaml
        s = load_config(FitSettings, cell_dir / "fit.yaml")
        old = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else None
        reuse = fit_reuse(old, to_dict(s))
        same = reuse == "evaluate"
        monitor = make_monitor(scene, frames) if frames else None
        finished = (run / "timing.json").is_file() and (run / "mesh.ply").is_file()
        if same and finished:
            print(f"{run}: fit finished earlier with these settings; evaluating it", file=sys.stderr)
        elif reuse == "postprocess" and finished:
            steps = post_steps(old, to_dict(s))
            print(f"{run}: fit finished earlier; post-processing it for the new settings ({', '.join(steps)}), "
                  f"then evaluating", file=sys.stderr)
            say = lambda m: print(m, file=sys.stderr)           # noqa: E731
            if "cull" in steps:
                from recon.export_mesh import cull_run_mesh
                cull_run_mesh(run, s.mesh.cull_front_margin_m, log=say)
            if "merge" in steps and (run / "instances.json").is_file():     # without instances nothing merges
                from recon.fragments import merge_run_fragments
                merge_run_fragments(run, s.panoptic.fragment_max_fraction, s.panoptic.fragment_min_shared_edges,
                                    log=say)
        elif same and (run / "checkpoints" / "last.pt").is_file():
            fit(scene_dir, run, s, resume=True, progress=progress, monitor=monitor)  # interrupted earlier
        else:
            fit(scene_dir, run, s, force=True, progress=progress, monitor=monitor)
        curve = read_monitor_curve(run / "metrics.csv")
    elif kind == "fusion":
        from eval.baselines.fusion import run_fusion_baseline
        run_fusion_baseline(scene_dir, run, voxel_size_m=float(spec["config"]["voxel_size_m"]), force=True,
                            progress=progress)
        timing = json.loads((run / "timing.json").read_text())
        curve = [{"iter": 0, "fit_seconds": float(timing["fit_seconds"]), **label_image_scores(run, scene, frames)}]
    else:
        raise ValueError(f"unknown method kind {kind!r}")
    metrics = evaluate_run(run, scene_dir, baseline=False, log=lambda m: print(m, file=sys.stderr))
    return {"metrics": metrics, "curve": curve}


# ----------------------------------------------------------------------------- the suite (parent)

def _pump(src, sinks) -> None:
    """Copy a child's output byte chunks to every sink (terminal and log file) until EOF."""
    while True:
        chunk = os.read(src.fileno(), 4096)
        if not chunk:
            break
        for s in sinks:
            try:
                s.write(chunk)
                s.flush()
            except (OSError, ValueError):
                pass


def run_cell_process(cell_dir: Path, echo: bool = True, progress: bool = True) -> dict:
    """Run one prepared cell in a fresh Python process; a process that dies is recorded as failed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "eval.bench", "--cell", str(cell_dir)] + ([] if progress else ["--no-progress"])
    t0 = time.perf_counter()
    with open(cell_dir / "output.log", "wb") as logf:
        proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        sinks = [logf] + ([sys.stderr.buffer] if echo and hasattr(sys.stderr, "buffer") else [])
        pump = threading.Thread(target=_pump, args=(proc.stdout, sinks), daemon=True)
        pump.start()
        try:
            rc = proc.wait()
        except KeyboardInterrupt:
            proc.wait()
            raise
        pump.join()
    rec_path = cell_dir / "cell.json"
    rec = json.loads(rec_path.read_text()) if rec_path.is_file() else {}
    if rc != 0 or rec.get("status") not in ("done", "failed"):
        tail = (cell_dir / "output.log").read_bytes()[-4000:].decode("utf-8", "replace")
        why = f"worker process exited with code {rc}" + (" (killed: out of memory?)" if rc in (-9, 137) else "")
        rec = {**rec, "status": "failed", "error": rec.get("error") or why,
               "traceback": rec.get("traceback") or tail, "wall_seconds": round(time.perf_counter() - t0, 2)}
        atomic_write_text(rec_path, json.dumps(json_clean(rec), indent=1) + "\n")
    return rec


def drop_checkpoints(run: Path) -> None:
    """Delete a finished run's checkpoints/ folder (nothing else)."""
    import shutil
    if (run / "checkpoints").is_dir():
        shutil.rmtree(run / "checkpoints")


def cell_is_done(cell_dir: Path, spec_hash: str) -> bool:
    p = cell_dir / "cell.json"
    if not p.is_file():
        return False
    try:
        rec = json.loads(p.read_text())
    except json.JSONDecodeError:
        return False
    return rec.get("status") == "done" and rec.get("config_hash") == spec_hash


def run_suite(suite: Suite, out: Path, *, force: bool = False, only: str | None = None, isolate: bool = True,
              echo: bool = True, progress: bool = True, keep_checkpoints: bool = False, log=print) -> dict:
    """Run every (selected) cell of `suite` into `out`, then write results.json and report.md.

    force: recompute done cells; only: fnmatch pattern(s) on cell ids, comma separated;
    isolate: one process per cell (False: in this process, for debugging);
    keep_checkpoints: keep a finished fit's run/checkpoints/ (hundreds of MB each; by default they
    are deleted once the cell is done: its mesh, labels and metrics stay, and a done cell is never
    resumed).
    Returns the results dict.
    """
    out = Path(out)
    cells = suite_cells(suite)
    if only:
        pats = [p.strip() for p in only.split(",") if p.strip()]
        cells = [c for c in cells if any(fnmatch.fnmatch(c.cell_id, p) for p in pats)]
        if not cells:
            from recon.commands import UserError
            raise UserError(f"--only {only!r} matches no cell of suite {suite.name}; cell ids look like "
                            f"{suite_cells(suite)[0].cell_id}")
    (out / "cells").mkdir(parents=True, exist_ok=True)
    scene_dirs: dict[str, Path | BaseException] = {}
    n_done = n_failed = n_skipped = 0
    for k, cell in enumerate(cells, 1):
        head = f"[{k}/{len(cells)}] {cell.cell_id}"
        cell_dir = out / "cells" / cell.cell_id
        t0 = time.perf_counter()
        try:
            if cell.scene_key not in scene_dirs:
                try:
                    scene_dirs[cell.scene_key] = ensure_scene(cell.scene, cell.seed, out / "scenes", log=log)
                except Exception as exc:  # every cell of this scene fails with this error
                    scene_dirs[cell.scene_key] = exc
            sd = scene_dirs[cell.scene_key]
            if isinstance(sd, BaseException):
                raise RuntimeError(f"scene {cell.scene_key} could not be made: {type(sd).__name__}: {sd}") from sd
            spec = prepare_cell(suite, cell, sd, cell_dir)
        except Exception as exc:
            cell_dir.mkdir(parents=True, exist_ok=True)
            rec = {"cell_id": cell.cell_id, "status": "failed", "config_hash": "",
                   "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(),
                   "wall_seconds": round(time.perf_counter() - t0, 2), "git": git_info(), "machine": machine_info()}
            atomic_write_text(cell_dir / "cell.json", json.dumps(json_clean(rec), indent=1) + "\n")
            n_failed += 1
            log(f"{head}: FAILED before running: {rec['error']}")
            continue
        if not force and cell_is_done(cell_dir, spec["config_hash"]):
            n_skipped += 1
            log(f"{head}: done earlier (same config {spec['config_hash']}), skipped")
            continue
        log(f"{head}: running ({cell.method.kind}) ...")
        if force and (cell_dir / "run").exists():
            import shutil
            shutil.rmtree(cell_dir / "run")
        rec = run_cell_process(cell_dir, echo=echo, progress=progress) if isolate else run_cell(cell_dir, progress)
        if rec["status"] == "done":
            n_done += 1
            if not keep_checkpoints:
                drop_checkpoints(cell_dir / "run")
            sm = summary_of(rec.get("metrics", {}))
            pq = "-" if sm["pq50"] is None else f"{sm['pq50']:.1f}"
            log(f"{head}: done in {rec.get('wall_seconds', 0):.0f} s (PQ@0.5 {pq}, fit "
                f"{sm['fit_seconds'] if sm['fit_seconds'] is not None else '-'} s)")
        else:
            n_failed += 1
            log(f"{head}: FAILED in {rec.get('wall_seconds', 0):.0f} s: {rec.get('error')}")
    log(f"suite {suite.name}: {n_done} computed, {n_skipped} already done, {n_failed} failed")
    results = collect_results(suite, out, ensure_references(suite, out, log))
    write_results(results, out)
    from eval.bench_report import write_report
    write_report(results, out, out)
    log(f"wrote {out / 'results.json'} and {out / 'report.md'}")
    return results


def scene_fingerprint(scene_dir: Path) -> str:
    """A hash of the names, sizes and modification times of a scene's masks/ and gt/mesh.ply: what the
    mask reference reads (besides poses and depth, which a scene does not change without its masks)."""
    h = hashlib.sha256()
    scene_dir = Path(scene_dir)
    files = sorted(p for p in (scene_dir / "masks").rglob("*") if p.is_file()) + \
        [p for p in [scene_dir / "gt" / "mesh.ply"] if p.is_file()]
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(scene_dir)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def ensure_references(suite: Suite, out: Path, log=print) -> dict[str, dict]:
    """The mask references (eval/mask_reference.py) of the suite's scenes that exist under `out` (or as
    scene folders), computed once into DIR/references/<scene_key>.json and recomputed when the scene's
    masks or GT mesh change: {scene key: {"semantic_3d_miou", "instance_3d_mcov"}}. Scenes without masks,
    a GT mesh or GT labels are left out; a scene whose reference fails is logged and left out."""
    from eval.mask_reference import mask_reference
    from recon.data.scene import load_scene
    refs: dict[str, dict] = {}
    seen = set()
    for cell in suite_cells(suite):
        key = cell.scene_key
        if key in seen:
            continue
        seen.add(key)
        scene_dir = Path(cell.scene.path) if cell.scene.path is not None else out / "scenes" / key
        if not (scene_dir / "classes.json").is_file() or not (scene_dir / "masks").is_dir() \
                or not (scene_dir / "gt" / "mesh.ply").is_file():
            continue
        path = out / "references" / f"{key}.json"
        stamp = scene_fingerprint(scene_dir)
        doc = json.loads(path.read_text()) if path.is_file() else None
        if doc is None or doc.get("fingerprint") != stamp:
            try:
                ref = mask_reference(load_scene(scene_dir, check_images=False))
            except Exception as exc:   # noqa: BLE001 - a reference is optional; the cells are what matter
                log(f"mask reference of {key} failed: {type(exc).__name__}: {exc}")
                continue
            doc = {"fingerprint": stamp, "reference": ref}
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(json_clean(doc), indent=1) + "\n")
            log(f"mask reference of {key}: semantic_3d {ref['semantic_3d']['miou']:.1f}"
                + (f", instance_3d {ref['instance_3d']['mcov']:.1f}" if "instance_3d" in ref else ""))
        ref = doc["reference"]
        refs[key] = {"semantic_3d_miou": ref["semantic_3d"]["miou"],
                     "instance_3d_mcov": ref.get("instance_3d", {}).get("mcov")}
    return json_clean(refs)


def collect_results(suite: Suite, out: Path, references: dict[str, dict] | None = None) -> dict:
    """results.json contents from the cell folders (every cell of the suite; pending where never run),
    with the scenes' mask references (ensure_references) under "references"."""
    cells_out = []
    for cell in suite_cells(suite):
        cell_dir = out / "cells" / cell.cell_id
        rec, spec = {}, {}
        if (cell_dir / "cell.json").is_file():
            rec = json.loads((cell_dir / "cell.json").read_text())
        if (cell_dir / "spec.json").is_file():
            spec = json.loads((cell_dir / "spec.json").read_text())
        status = rec.get("status", "pending")
        if status == "running":
            status = "failed" if rec.get("error") else "pending"   # interrupted without a record
        metrics = rec.get("metrics") or {}
        summary = summary_of(metrics)
        threads, device = None, None   # the fit's torch threads and device (RUN/timing.json; metrics.json keeps
        if (cell_dir / "run" / "timing.json").is_file():   # exactly the timing keys)
            timing = json.loads((cell_dir / "run" / "timing.json").read_text())
            threads = timing.get("threads")
            # fits from before train.device existed (no "device" key) ran on the CPU; the fusion baseline always does
            device = timing.get("device") or "cpu"
        cells_out.append({
            "cell_id": cell.cell_id, "scene": cell.scene_key, "scene_group": cell.scene.group(),
            "scene_spec": json_clean(asdict(cell.scene)), "method": cell.method.name,
            "method_label": cell.method.title(), "method_kind": cell.method.kind, "seed": cell.seed,
            "status": status, "config_hash": rec.get("config_hash") or None, "error": rec.get("error"),
            "traceback": rec.get("traceback"), "wall_seconds": rec.get("wall_seconds"),
            "fit_seconds": summary["fit_seconds"], "iterations": summary["iterations"],
            "peak_rss_mb": summary["peak_rss_mb"], "threads": threads, "fit_device": device,
            "started": rec.get("started"),
            "git": rec.get("git"), "machine": rec.get("machine"), "config": spec.get("config"),
            "monitor_frames": spec.get("monitor_frames"), "summary": summary, "metrics": metrics,
            "curve": rec.get("curve") or [], "run": os.path.relpath(cell_dir / "run", out),
        })
    return json_clean({
        "schema_version": 1, "bench_version": BENCH_VERSION, "suite": suite.name,
        "description": suite.description, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "git": git_info(), "machine": machine_info(),
        "suite_spec": {"config": suite.config, "base_overrides": list(suite.base_overrides),
                       "ref_train_frames": suite.ref_train_frames, "monitor_points": suite.monitor_points,
                       "monitor_frames": suite.monitor_frames, "fusion_voxel_size_m": suite.fusion_voxel_size_m,
                       "seeds": list(suite.seeds)},
        "methods": [{"name": m.name, "label": m.title(), "kind": m.kind, "overrides": list(m.overrides)}
                    for m in suite.methods],
        "notes": read_notes(out),
        "references": references or {},
        "cells": cells_out,
    })


NOTES_FILE = "NOTES.md"


def read_notes(out: Path) -> str | None:
    """The bench folder's NOTES.md (the operator's words on how the cells were run), or None."""
    p = Path(out) / NOTES_FILE
    if not p.is_file():
        return None
    text = p.read_text(encoding="utf-8").strip()
    return text or None


def write_results(results: dict, out: Path) -> None:
    from eval.bench_schema import validate
    problems = validate(results, json.loads(SCHEMA_PATH.read_text()))
    assert not problems, "results.json does not match eval/bench_schema.json:\n" + "\n".join(problems[:20])
    atomic_write_text(Path(out) / "results.json", json.dumps(results, indent=1, allow_nan=False) + "\n")


# ----------------------------------------------------------------------------- command

def publish_paths(suite_name: str) -> tuple[str, str]:
    """(markdown file, figure folder) relative to the repository root: the standard suite is the
    repository's BENCHMARKS.md + docs/bench/; any other suite gets its own pair, so publishing one
    suite never overwrites another's report."""
    if suite_name == "standard":
        return "BENCHMARKS.md", "docs/bench"
    return f"BENCHMARKS_{suite_name}.md", f"docs/bench_{suite_name}"


def publish(results: dict, bench_dir: Path, repo: Path = ROOT, log=print) -> None:
    """The suite's report in the repository (publish_paths: BENCHMARKS.md + docs/bench/ for the
    standard suite) with its plots and results.json, from a bench folder."""
    from eval.bench_report import write_report
    md_rel, docs_rel = publish_paths(results["suite"])
    docs = repo / docs_rel
    docs.mkdir(parents=True, exist_ok=True)
    for old in docs.glob("*.png"):
        old.unlink()
    slim = {**results, "cells": [{**c, "traceback": None} for c in results["cells"]]}  # errors stay, local paths go
    atomic_write_text(docs / "results.json", json.dumps(slim, indent=1, allow_nan=False) + "\n")
    write_report(results, bench_dir, docs, md_path=repo / md_rel, image_prefix=f"{docs_rel}/",
                 regenerate=f"python run.py bench --suite {results['suite']} --out {bench_dir} --publish")
    log(f"wrote {repo / md_rel} and {docs}/")


def bench_command(args) -> int:
    from recon.commands import UserError
    if args.suite not in SUITES:
        raise UserError(f"unknown suite {args.suite!r}; choose one of {', '.join(SUITES)}")
    suite = SUITES[args.suite]
    out = Path(args.out) if args.out is not None else Path("runs") / "bench" / suite.name
    if args.report_only:
        if not (out / "cells").is_dir():
            raise FileNotFoundError(f"{out} holds no bench cells ({out / 'cells'} missing); run the suite first")
        results = collect_results(suite, out, ensure_references(suite, out,
                                                                 lambda m: print(m, file=sys.stderr)))
        write_results(results, out)
        from eval.bench_report import write_report
        write_report(results, out, out)
        print(f"wrote {out / 'results.json'} and {out / 'report.md'}", file=sys.stderr)
    else:
        try:
            results = run_suite(suite, out, force=args.force, only=args.only,
                                keep_checkpoints=args.keep_checkpoints,
                                log=lambda m: print(m, file=sys.stderr, flush=True))
        except KeyboardInterrupt:
            print(f"interrupted: finished cells are kept in {out / 'cells'}; run the same command again to "
                  f"continue (an interrupted fit resumes from its checkpoint)", file=sys.stderr)
            return 130
    if args.publish:
        publish(results, out, log=lambda m: print(m, file=sys.stderr))
    failed = [c["cell_id"] for c in results["cells"] if c["status"] == "failed"]
    return 1 if failed else 0


def _main(argv: list[str] | None = None) -> int:
    import argparse
    p = argparse.ArgumentParser(description="run one prepared bench cell (used by run_suite)")
    p.add_argument("--cell", type=Path, required=True)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    rec = run_cell(a.cell, progress=not a.no_progress)
    if rec["status"] == "failed":
        print(rec["traceback"], file=sys.stderr)
    return 0   # the outcome is in cell.json


if __name__ == "__main__":
    sys.exit(_main())
