"""results.json of a bench folder (collected from its cells, validated against schema.json) and the
published report in the repository (BENCHMARKS.md + docs/bench/)."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import jsonschema

from app import ROOT
from app.bench.records import git_info, json_clean, machine_info, summary_of
from app.bench.report import write_report
from app.bench.suites import BENCH_VERSION, Suite, suite_cells
from recon.core.io import atomic_write_text


SCHEMA_PATH = Path(__file__).resolve().parent / "schema.json"


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


def schema_problems(results: dict) -> list[str]:
    """Where `results` breaks schema.json (jsonschema, Draft 2020-12): one "path: message" line each."""
    schema = json.loads(SCHEMA_PATH.read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(results), key=lambda e: e.json_path)
    return [f"{e.json_path}: {e.message}" for e in errors]


def write_results(results: dict, out: Path) -> None:
    """Validate `results` against schema.json and write DIR/results.json atomically."""
    problems = schema_problems(results)
    assert not problems, f"results.json does not match {SCHEMA_PATH.name}:\n" + "\n".join(problems[:20])
    atomic_write_text(Path(out) / "results.json", json.dumps(results, indent=1, allow_nan=False) + "\n")


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
    md_rel, docs_rel = publish_paths(results["suite"])
    docs = repo / docs_rel
    docs.mkdir(parents=True, exist_ok=True)
    for old in docs.glob("*.png"):
        old.unlink()
    slim = {**results, "cells": [{**c, "traceback": None} for c in results["cells"]]}  # errors stay, local paths go
    atomic_write_text(docs / "results.json", json.dumps(slim, indent=1, allow_nan=False) + "\n")
    write_report(results, bench_dir, docs, md_path=repo / md_rel, image_prefix=f"{docs_rel}/",
                 regenerate=f"python run.py bench --suite {results['suite']} --out {bench_dir_text(bench_dir, repo)} "
                            "--publish")
    log(f"wrote {repo / md_rel} and {docs}/")


def bench_dir_text(bench_dir: Path, repo: Path) -> str:
    """How the published report names the bench folder: its path inside the repository, else DIR (a report
    in the repository names no path outside it)."""
    try:
        return str(Path(bench_dir).resolve().relative_to(Path(repo).resolve()))
    except ValueError:
        return "DIR"
