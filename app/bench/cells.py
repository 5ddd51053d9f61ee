"""One bench cell: prepare it (scene, resolved settings, spec.json), compute it (fit or fusion, then
evaluate) and record it in cell.json. `python -m app.bench.cells --cell DIR` computes a prepared cell in
its own process (app/bench/runner.py starts it)."""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import numpy as np
import yaml

from app import CONFIGS
from app.bench.records import git_info, json_clean, machine_info, read_monitor_curve
from app.bench.reuse import config_hash, fit_reuse, hashed_spec, post_steps
from app.bench.suites import (BENCH_VERSION, Cell, MethodSpec, SceneSpec, Suite, evenly_spaced, monitor_every,
                              scale_iters, scaled_schedule)
from app.pipeline import evaluate, fit_scene
from eval.baselines.fusion import run_fusion_baseline
from eval.panoptic_metrics import instance_coverage, panoptic_quality, semantic_scores
from recon.core.config import load_config, save_config, to_dict
from recon.core.io import atomic_write_text
from recon.core.settings import FitSettings, SynthSettings
from recon.data.make_synth import make_synth_scene
from recon.data.run_files import read_label_images
from recon.data.scene import load_scene
from recon.postfit.post_process import (consistency_run, cull_run_mesh, merge_run_by_masks, merge_run_fragments,
                                         reclass_run, relabel_run)
from recon.train.callbacks import MetricMonitor
from recon.train.checkpoint import has_checkpoint


def subset_scores(preds: list[tuple[np.ndarray, np.ndarray]], gts: list[tuple[np.ndarray, np.ndarray]],
                  thing_ids: list[int], n_classes: int) -> dict[str, float]:
    """PQ@0.5, PQ@0.3, mIoU, mCov (percent) over frames concatenated into one image.

    preds, gts: per frame (semantic [H, W], instance [H, W]) integer label images.
    """
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


def ensure_scene(spec: SceneSpec, seed: int, scenes_dir: Path, log=print) -> Path:
    """The scene folder of (spec, seed): an existing folder, or a synthetic scene made once under scenes_dir."""
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


def prepare_cell(suite: Suite, cell: Cell, scene_dir: Path, cell_dir: Path, fit_threads: int | None = None) -> dict:
    """Write cell_dir/spec.json (and fit.yaml) and return the spec; its hash decides resume. fit_threads: a fit
    cell's train.threads (None: the suite's config)."""
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
        if fit_threads is not None:
            s.train.threads = int(fit_threads)
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


def make_monitor(scene, frame_idx: list[int]):
    """A MetricMonitor callback for the fit: subset scores on frame_idx + the fit time."""
    gts = [scene.load_gt(i) for i in frame_idx]
    things, n_classes = scene.thing_ids(), scene.n_classes

    def monitor(it: int, fit_seconds: float, label_fn) -> dict[str, float]:
        preds = [label_fn(i) for i in frame_idx]
        vals = subset_scores(preds, gts, things, n_classes)
        return {"fit_seconds": float(fit_seconds), **{k: (v if math.isfinite(v) else float("nan"))
                                                       for k, v in vals.items()}}
    return MetricMonitor(monitor)


def label_image_scores(run: Path, scene, frame_idx: list[int]) -> dict[str, float]:
    """subset_scores of a run's written label images (RUN/labels/) on frame_idx."""
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
    scene_dir, run = Path(spec["scene_dir"]), cell_dir / "run"
    scene = load_scene(scene_dir, check_images=False)
    frames = [int(i) for i in spec["monitor_frames"]]
    kind = spec["method"]["kind"]
    if kind == "fit":
        s = load_config(FitSettings, cell_dir / "fit.yaml")
        old = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else None
        reuse = fit_reuse(old, to_dict(s))
        same = reuse == "evaluate"
        extra = [make_monitor(scene, frames)] if frames else []
        finished = (run / "timing.json").is_file() and (run / "mesh.ply").is_file()
        if same and finished:
            print(f"{run}: fit finished earlier with these settings; evaluating it", file=sys.stderr)
        elif reuse == "postprocess" and finished:
            steps = post_steps(old, to_dict(s))
            print(f"{run}: fit finished earlier; post-processing it for the new settings ({', '.join(steps)}), "
                  f"then evaluating", file=sys.stderr)
            say = lambda m: print(m, file=sys.stderr)           # noqa: E731
            if "cull" in steps:
                cull_run_mesh(run, s.mesh.cull_front_margin_m, log=say)
            if "merge" in steps and (run / "instances.json").is_file():     # without instances nothing merges
                merge_run_fragments(run, s.panoptic.fragment_max_fraction, s.panoptic.fragment_min_shared_edges,
                                    log=say)
            if "maskmerge" in steps and (run / "instances.json").is_file():
                merge_run_by_masks(run, s.panoptic.mask_merge_min_frames, s.panoptic.mask_merge_min_share, log=say)
            if "relabel" in steps:
                relabel_run(run, split=s.panoptic.split_untokened, fill=s.panoptic.fill_unmasked, log=say)
            if "reclass" in steps and (run / "instances.json").is_file():
                reclass_run(run, log=say)
            if "consistency" in steps and (run / "instances.json").is_file():
                consistency_run(run, log=say)
        elif same and has_checkpoint(run):
            fit_scene(scene_dir, run, s, resume=True, progress=progress, extra_callbacks=extra)  # interrupted earlier
        else:
            fit_scene(scene_dir, run, s, force=True, progress=progress, extra_callbacks=extra)
        curve = read_monitor_curve(run / "metrics.csv")
    elif kind == "fusion":
        run_fusion_baseline(scene_dir, run, voxel_size_m=float(spec["config"]["voxel_size_m"]), force=True,
                            progress=progress)
        timing = json.loads((run / "timing.json").read_text())
        curve = [{"iter": 0, "fit_seconds": float(timing["fit_seconds"]), **label_image_scores(run, scene, frames)}]
    else:
        raise ValueError(f"unknown method kind {kind!r}")
    earlier = _model_blocks(run) if kind == "fit" and not has_checkpoint(run) else {}
    metrics = evaluate(run, scene_dir, baseline=False, log=lambda m: print(m, file=sys.stderr))
    carried = {k: v for k, v in earlier.items() if k not in metrics}
    if carried:        # the model is gone (checkpoints dropped): keep what only it could compute, from the last eval
        metrics.update(carried)
        metrics["carried_from_earlier_eval"] = sorted(carried)
        atomic_write_text(run / "metrics.json", json.dumps(metrics, indent=1) + "\n")
        print(f"{run}: no checkpoint; {', '.join(sorted(carried))} kept from its earlier evaluation (they do not "
              f"depend on the mesh's labels)", file=sys.stderr)
    return {"metrics": metrics, "curve": curve}


# metrics.json blocks that need the trained model (the fields or the Gaussians), not the labelled mesh: a
# post-process of a finished fit whose checkpoints were dropped cannot recompute them, nor does it change them
MODEL_BLOCKS = ("rendering", "semantic_3d_fields", "instance_3d_fields")


def _model_blocks(run: Path) -> dict:
    """The MODEL_BLOCKS of RUN/metrics.json from an earlier evaluation ({} without one)."""
    path = run / "metrics.json"
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
    except ValueError:
        return {}
    return {k: old[k] for k in MODEL_BLOCKS if isinstance(old.get(k), dict)}


def drop_checkpoints(run: Path) -> None:
    """Delete a finished run's checkpoints/ folder (nothing else)."""
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="run one prepared bench cell (used by run_suite)")
    p.add_argument("--cell", type=Path, required=True)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    rec = run_cell(a.cell, progress=not a.no_progress)
    if rec["status"] == "failed":
        print(rec["traceback"], file=sys.stderr)
    return 0   # the outcome is in cell.json


if __name__ == "__main__":
    sys.exit(main())
