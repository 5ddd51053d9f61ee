"""The soak run: many fit / kill -9 / resume cycles of a tiny scene at random moments must end with the
outputs of one clean, uninterrupted fit.

    python -m app.bench.soak --out DIR [--cycles 20] [--seed 0]

DIR/scene is a tiny synthetic room, DIR/reference the clean fit, DIR/soak the fit that is killed with
SIGKILL and resumed, `--cycles` times, then left to finish. Each cycle draws its moment at random: during
training (at a random iteration in the next eighth of the schedule, while training remains) or during the
post-fit steps (a random delay after training ends: mesh, held-out depth or label images). Once the fit
has finished, a `--resume` redoes the post-fit steps, so later cycles keep hitting them. DIR/soak.json
records every cycle and whether the outputs (meshes, instances, label images, held-out depth, the loss
columns of metrics.csv) are identical. Exit status 0 when they are.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from app import ROOT
from recon.core.io import atomic_write_text
from recon.core.settings import SynthSettings
from recon.data.make_synth import make_synth_scene

SETTINGS = [
    "model.sdf_grid.n_levels=8", "model.sdf_grid.log2_hashmap_size=14", "model.sdf_grid.finest_cell_m=0.05",
    "model.semantic_grid.n_levels=6", "model.semantic_grid.log2_hashmap_size=12", "model.semantic_grid.finest_cell_m=0.1",
    "model.instance_grid.n_levels=6", "model.instance_grid.log2_hashmap_size=12", "model.instance_grid.finest_cell_m=0.1",
    "model.sdf_hidden=32", "model.semantic_hidden=16", "model.instance_hidden=16", "model.color_hidden=16",
    "render.n_stratified=6", "render.n_surface=8", "train.rays_per_iter=384", "train.frames_per_iter=2",
    "tokens.feat_dim=8", "tokens.class_dim=8", "train.iters=200", "train.checkpoint_every=20",
    "train.geometry_only_iters=20", "train.pan_start_iters=60", "train.dice_off_iters=150", "train.threads=1",
    "train.log_every=1", "mesh.voxel_size_m=0.08",
]


def output_digest(run: Path) -> dict[str, str]:
    """Digest of what a user reads from a run: every file but checkpoints, TensorBoard, logs and timings,
    plus the loss columns of metrics.csv (each iteration once)."""
    out = {}
    for p in sorted(run.rglob("*")):
        rel = p.relative_to(run).as_posix()
        if p.is_file() and not rel.startswith(("checkpoints/", "tb/")) and rel not in (
                "log.txt", "timing.json", "metrics.csv", ".lock"):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    with open(run / "metrics.csv", newline="") as fh:
        out["metrics.csv"] = json.dumps([{k: v for k, v in r.items() if k.startswith("loss/")}
                                         for r in csv.DictReader(fh)])
    return out


def _fit(scene: Path, run: Path, resume: bool) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("RECON_KILL_AT", None)
    args = [sys.executable, str(ROOT / "run.py"), "fit", "--scene", str(scene), "--out", str(run),
            *(["--resume"] if resume else []), *SETTINGS]
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _iterations_logged(run: Path) -> int:
    """The last iteration in metrics.csv (0 before training)."""
    p = run / "metrics.csv"
    if not p.is_file():
        return 0
    lines = [l for l in p.read_text().splitlines()[1:] if l and l[0].isdigit()]
    return int(float(lines[-1].split(",")[0])) if lines else 0


def _log_lines(run: Path) -> int:
    p = run / "log.txt"
    return len(p.read_text().splitlines()) if p.is_file() else 0


def _trained_after(run: Path, n_lines: int) -> bool:
    """log.txt says training ended in a line after its first n_lines (written by this cycle's process)."""
    p = run / "log.txt"
    lines = p.read_text().splitlines()[n_lines:] if p.is_file() else []
    return any("trained " in l and " iterations in " in l for l in lines)


def _last_log_line(run: Path) -> str:
    p = run / "log.txt"
    lines = p.read_text().strip().splitlines() if p.is_file() else []
    return lines[-1] if lines else ""


def soak(out: Path, cycles: int = 20, seed: int = 0, log=print) -> dict:
    out = Path(out)
    scene = out / "scene"
    if not (scene / "classes.json").is_file():
        make_synth_scene(SynthSettings(size=(64, 48), frames=8, holdout_every=4), scene, overwrite=True,
                         log=lambda *_: None)
    ref, run = out / "reference", out / "soak"
    t0 = time.perf_counter()
    p = _fit(scene, ref, resume=False) if not (ref / "timing.json").is_file() else None
    if p is not None:
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"the clean fit failed:\n{err[-2000:]}")
    clean_s = time.perf_counter() - t0 if p is not None else 60.0
    post_s = float(json.loads((ref / "timing.json").read_text()).get("mesh_seconds", 1.0)) * 3 + 1.0
    iters = int(next(a for a in SETTINGS if a.startswith("train.iters=")).split("=")[1])
    rng = random.Random(seed)
    records = []
    for k in range(cycles):
        done = _iterations_logged(run)
        during_training = done < iters
        # a random iteration in the next eighth of the schedule, so that many cycles land in training
        target = rng.randint(done + 1, min(iters, done + max(1, iters // 8))) if during_training else None
        seen = _log_lines(run)
        delay = rng.uniform(0.0, post_s)
        proc = _fit(scene, run, resume=(run / "config.yaml").is_file())
        killed, moment = False, ""
        while proc.poll() is None:
            if during_training and _iterations_logged(run) >= target:
                moment = f"training, iteration {_iterations_logged(run)}"
            elif not during_training and _trained_after(run, seen):
                time.sleep(delay)
                moment = f"post-fit, {delay:.1f} s after training"
            else:
                time.sleep(0.02)
                continue
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                killed = True
            break
        _, err = proc.communicate()
        rec = {"cycle": k, "aimed_at": moment or ("training" if during_training else "post-fit"), "killed": killed,
               "returncode": proc.returncode, "last_log_line": _last_log_line(run)}
        if not killed and proc.returncode != 0:
            rec["error"] = err.strip().splitlines()[-1] if err.strip() else ""
        records.append(rec)
        log(f"cycle {k + 1}/{cycles}: {'killed' if killed else 'ended'} ({rec['aimed_at']}; {rec['last_log_line'][22:100]})")
    proc = _fit(scene, run, resume=(run / "config.yaml").is_file())
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the final resume failed:\n{err[-2000:]}")
    a, b = output_digest(ref), output_digest(run)
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    result = {"cycles": cycles, "seed": seed, "clean_fit_seconds": round(clean_s, 1),
              "killed": sum(r["killed"] for r in records), "identical": not differ, "differing_files": differ,
              "records": records}
    atomic_write_text(out / "soak.json", json.dumps(result, indent=1) + "\n")
    log(f"{result['killed']} of {cycles} cycles killed; outputs identical to the clean fit: {result['identical']}"
        + (f" (differ: {differ[:10]})" if differ else ""))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cycles", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    return 0 if soak(a.out, a.cycles, a.seed)["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
