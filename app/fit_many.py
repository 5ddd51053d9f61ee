"""Fit many scenes: `python run.py fit-many --scenes GLOB --out DIR [--config FILE] [key=value ...] [--ray [ADDRESS]]`.

Every scene folder the glob matches (a folder with color/ and pose/, docs/scene_format.md) is fitted
into DIR/<scene name>/ with the same settings, each in its own `run.py fit` process (its log in
DIR/logs/<name>.log), one after another, or as Ray tasks with `--ray` (app/executor.py: a local Ray
instance on this machine without an address, a cluster with one). Each task asks Ray for
train.threads CPUs (0 = all of this machine's) and a GPU where train.device is cuda, or auto on a
machine with one.

It is resumable: a scene whose run finished with the same settings is skipped; a run that was
interrupted continues from its checkpoint (`fit --resume`); a run with other settings is refused
(as `fit` does) unless --force. A failed scene is retried once under Ray, then reported, and the
others go on. DIR/fit_many.json lists every scene's status, error and times (rewritten after each
finished scene); DIR/fit_many.yaml holds the resolved settings every fit reads. The run folders are
exactly what `run.py fit` writes.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from app import ROOT
from app.bench.reuse import fit_reuse
from app.executor import Task, run_tasks
from recon.core.config import load_config, save_config, to_dict
from recon.core.io import atomic_write_text
from recon.core.settings import FitSettings


class FitManyError(ValueError):
    """Bad fit-many input (no scene matches, clashing names); the message says which."""


def find_scenes(pattern: str) -> list[Path]:
    """Scene folders matching the glob `pattern` (sorted); FitManyError if none."""
    hits = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern)))
    scenes = [p for p in hits if p.is_dir() and (p / "color").is_dir() and (p / "pose").is_dir()]
    if not scenes:
        what = (f"{len(hits)} path(s), none a scene folder (color/ and pose/ inside)" if hits else "nothing")
        raise FitManyError(f"--scenes {pattern!r} matches {what}")
    return scenes


def run_names(scenes: list[Path]) -> list[str]:
    """One run folder name per scene: its folder name, or parent_name where two scenes share a name."""
    names = [p.name for p in scenes]
    out = [f"{p.parent.name}_{p.name}" if names.count(p.name) > 1 else p.name for p in scenes]
    if len(set(out)) != len(out):
        dup = sorted({n for n in out if out.count(n) > 1})
        raise FitManyError(f"scenes {', '.join(dup)} would share a run folder name; select fewer with --scenes")
    return out


def run_state(run: Path, resolved: dict) -> str:
    """'done' (finished with these settings), 'resume' (same settings, a checkpoint, not finished), 'new'
    (no run yet) or 'other' (a run with other settings)."""
    cfg = run / "config.yaml"
    if not cfg.is_file():
        return "new"
    old = yaml.safe_load(cfg.read_text()) or {}
    if fit_reuse(old, resolved) != "evaluate":
        return "other"
    if (run / "timing.json").is_file() and (run / "mesh.ply").is_file():
        return "done"
    return "resume"


def fit_one(scene: str, run: str, config: str, force: bool, log_file: str) -> dict:
    """Fit one scene in a `run.py fit` process with the resolved settings file `config` (a task of fit-many);
    a record, never raises for the fit."""
    t0 = time.perf_counter()
    s = load_config(FitSettings, Path(config))
    state = run_state(Path(run), to_dict(s))
    if state == "done" and not force:
        return {"status": "done", "skipped": True, "wall_seconds": 0.0, **_timing(Path(run))}
    cmd = [sys.executable, str(ROOT / "run.py"), "fit", "--scene", scene, "--out", run, "--config", config]
    if force:
        cmd.append("--force")
    elif state == "resume":
        cmd.append("--resume")
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n".encode())
        fh.flush()
        rc = subprocess.run(cmd, cwd=str(ROOT), stdout=fh, stderr=subprocess.STDOUT).returncode
    rec = {"status": "done" if rc == 0 else "failed", "skipped": False, "returncode": rc,
           "wall_seconds": round(time.perf_counter() - t0, 2)}
    if rc != 0:
        tail = Path(log_file).read_bytes()[-2000:].decode("utf-8", "replace").strip().splitlines()
        starts = [k for k, ln in enumerate(tail) if ln.startswith("error:")]
        msg = " ".join(ln.strip() for ln in tail[starts[-1]:]) if starts else (tail[-1] if tail else "")
        rec["error"] = f"{msg[:800]} (exit code {rc}; log {log_file})"
    return {**rec, **_timing(Path(run))}


def _timing(run: Path) -> dict:
    try:
        t = json.loads((run / "timing.json").read_text())
        return {"fit_seconds": t.get("fit_seconds")}
    except (OSError, ValueError):
        return {"fit_seconds": None}


def task_resources(s: FitSettings) -> dict:
    """Ray resources of one fit: train.threads CPUs (0 = this machine's cores) and a GPU for train.device
    cuda (auto: where the cluster has one)."""
    device = str(s.train.device).lower()
    return {"cpus": float(s.train.threads or os.cpu_count() or 1), "gpus": 1.0 if device.startswith("cuda") else 0.0,
            "gpu_if_any": device == "auto"}


def fit_many(pattern: str, out: str | Path, config: Path | None = None, overrides: list[str] = (), *,
             ray_address: str | None = None, ray_cpus: int | None = None, force: bool = False, log=print) -> dict:
    """Fit every scene `pattern` matches into `out` (module docstring); returns the summary written to
    OUT/fit_many.json."""
    out = Path(out)
    s = load_config(FitSettings, config, list(overrides))     # bad settings fail here, before any fit
    scenes = find_scenes(pattern)
    names = run_names(scenes)
    if out.exists() and not out.is_dir():
        raise FitManyError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    resolved = to_dict(s)
    clash = [n for n in names if run_state(out / n, resolved) == "other"]
    if clash and not force:
        raise FitManyError(f"{out / clash[0]} holds a run with other settings ({len(clash)} such scene(s)); "
                           "choose another --out or pass --force to replace them")
    settings_file = out / "fit_many.yaml"          # every fit reads exactly these settings
    save_config(s, settings_file)
    res = task_resources(s)
    tasks = [Task(n, fit_one, (str(sc.resolve()), str((out / n).resolve()), str(settings_file.resolve()), force,
                               str((out / "logs" / f"{n}.log").resolve())), **res)
             for sc, n in zip(scenes, names)]
    summary = {"pattern": pattern, "config": str(config) if config else None, "overrides": list(overrides),
               "ray": ray_address, "scenes": {n: {"scene": str(sc.resolve()), "status": "pending"}
                                              for sc, n in zip(scenes, names)}}
    log(f"fit-many: {len(tasks)} scene(s) into {out}" + (f" on Ray ({ray_address})" if ray_address else ""))
    t0 = time.perf_counter()

    def describe(t: Task, rec: dict) -> str:
        if rec.get("status") == "done":
            fs = rec.get("fit_seconds")
            return ("done earlier, skipped" if rec.get("skipped") else
                    f"done in {rec.get('wall_seconds', 0):.0f} s" + (f" (fit {fs:.0f} s)" if fs else ""))
        return f"FAILED: {rec.get('error')}"

    for t, rec in run_tasks(tasks, ray_address, local_cpus=ray_cpus, log=log, describe=describe):
        summary["scenes"][t.key] = {"scene": summary["scenes"][t.key]["scene"], **rec}
        atomic_write_text(out / "fit_many.json", json.dumps(summary, indent=1) + "\n")
    summary["wall_seconds"] = round(time.perf_counter() - t0, 2)
    atomic_write_text(out / "fit_many.json", json.dumps(summary, indent=1) + "\n")
    n_ok = sum(r["status"] == "done" for r in summary["scenes"].values())
    log(f"fit-many: {n_ok} of {len(tasks)} scene(s) done in {summary['wall_seconds']:.0f} s; "
        f"{out / 'fit_many.json'}")
    return summary
