"""Run a bench suite: every (selected) cell in its own process, resumable, then results.json and report.md.

Each cell runs in a fresh Python process (`python -m app.bench.cells --cell DIR/cells/<id>`), so its
peak memory is its own and a hard crash (segfault, out-of-memory kill) cannot take the suite down.
"""
from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from app import ROOT
from app.bench.cells import cell_is_done, drop_checkpoints, ensure_scene, prepare_cell, run_cell
from app.bench.records import git_info, json_clean, machine_info, summary_of
from app.bench.references import ensure_references
from app.bench.report import write_report
from app.bench.results import collect_results, write_results
from app.bench.suites import BenchError, Cell, Suite, suite_cells
from app.executor import Task
from recon.core.io import atomic_write_text


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
    cmd = [sys.executable, "-m", "app.bench.cells", "--cell", str(cell_dir)] + ([] if progress else ["--no-progress"])
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


def cell_resources(cell_dir: Path) -> dict:
    """Ray resources of a prepared cell: a fit asks for its train.threads CPUs (0 = every core of this machine)
    and a GPU where train.device is cuda (auto: where the cluster has one); other methods one CPU."""
    spec = json.loads((Path(cell_dir) / "spec.json").read_text())
    if spec["method"]["kind"] != "fit":
        return {"cpus": 1.0}
    import yaml
    train = (yaml.safe_load((Path(cell_dir) / "fit.yaml").read_text()) or {}).get("train", {})
    threads = int(train.get("threads", 0) or 0) or (os.cpu_count() or 1)
    device = str(train.get("device", "auto")).lower()
    return {"cpus": float(threads), "gpus": 1.0 if device.startswith("cuda") else 0.0, "gpu_if_any": device == "auto"}


def run_cell_task(cell_dir: str) -> dict:
    """One bench cell as a Ray task: the same isolated process as the sequential path, output to its log only."""
    return run_cell_process(Path(cell_dir), echo=False, progress=False)


def run_suite(suite: Suite, out: Path, *, force: bool = False, only: str | None = None, isolate: bool = True,
              echo: bool = True, progress: bool = True, keep_checkpoints: bool = False, log=print,
              ray_address: str | None = None, ray_cpus: int | None = None, fit_threads: int | None = None) -> dict:
    """Run every (selected) cell of `suite` into `out`, then write results.json and report.md.

    force: recompute done cells; only: fnmatch pattern(s) on cell ids, comma separated;
    isolate: one process per cell (False: in this process, for debugging);
    keep_checkpoints: keep a finished fit's run/checkpoints/ (hundreds of MB each; by default they
    are deleted once the cell is done: its mesh, labels and metrics stay, and a done cell is never
    resumed).
    ray_address: run the cells as Ray tasks (app/executor.py: "local" starts Ray on this machine with
    `ray_cpus` CPUs, default all; else a cluster address); the files written are the same.
    fit_threads: train.threads of every fit cell (None: the suite's config). It is part of the cell's
    settings (float sums may differ with the thread count), so cells done with other threads are refitted.
    Returns the results dict.
    """
    out = Path(out)
    to_run: list[tuple[Cell, Path]] = []
    cells = suite_cells(suite)
    if only:
        pats = [p.strip() for p in only.split(",") if p.strip()]
        cells = [c for c in cells if any(fnmatch.fnmatch(c.cell_id, p) for p in pats)]
        if not cells:
            raise BenchError(f"--only {only!r} matches no cell of suite {suite.name}; cell ids look like "
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
            spec = prepare_cell(suite, cell, sd, cell_dir, fit_threads=fit_threads)
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
        if force and (cell_dir / "run").exists():
            shutil.rmtree(cell_dir / "run")
        if ray_address is not None:
            to_run.append((cell, cell_dir))
            continue
        log(f"{head}: running ({cell.method.kind}) ...")
        rec = run_cell_process(cell_dir, echo=echo, progress=progress) if isolate else run_cell(cell_dir, progress)
        ok = _cell_finished(head, cell_dir, rec, keep_checkpoints, log)
        n_done, n_failed = n_done + ok, n_failed + (not ok)
    if to_run:
        from app.executor import run_tasks
        tasks = [Task(cell.cell_id, run_cell_task, (str(cell_dir),), **cell_resources(cell_dir))
                 for cell, cell_dir in to_run]
        for task, rec in run_tasks(tasks, ray_address, local_cpus=ray_cpus, log=log,
                                   describe=lambda t, r: cell_summary(r)):
            ok = _cell_finished(None, out / "cells" / task.key, rec, keep_checkpoints, log)
            n_done, n_failed = n_done + ok, n_failed + (not ok)
    log(f"suite {suite.name}: {n_done} computed, {n_skipped} already done, {n_failed} failed")
    results = collect_results(suite, out, ensure_references(suite, out, log))
    write_results(results, out)
    write_report(results, out, out)
    log(f"wrote {out / 'results.json'} and {out / 'report.md'}")
    return results


def cell_summary(rec: dict) -> str:
    """'done in 12 s (PQ@0.5 83.5, fit 250.1 s)' or 'FAILED in 3 s: error'."""
    if rec.get("status") == "done":
        sm = summary_of(rec.get("metrics", {}))
        pq = "-" if sm["pq50"] is None else f"{sm['pq50']:.1f}"
        return (f"done in {rec.get('wall_seconds', 0):.0f} s (PQ@0.5 {pq}, fit "
                f"{sm['fit_seconds'] if sm['fit_seconds'] is not None else '-'} s)")
    return f"FAILED in {rec.get('wall_seconds', 0):.0f} s: {rec.get('error')}"


def _cell_finished(head: str | None, cell_dir: Path, rec: dict, keep_checkpoints: bool, log) -> bool:
    """Drop a done fit's checkpoints, log the cell's line unless `head` is None; True if it is done."""
    done = rec.get("status") == "done"
    if done and not keep_checkpoints:
        drop_checkpoints(cell_dir / "run")
    if head is not None:
        log(f"{head}: {cell_summary(rec)}")
    return done
