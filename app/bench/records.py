"""What a bench record holds: strict-JSON cleaning, the report's summary columns of a metrics.json, the
metric-vs-time curve of a run, and provenance (git commit, machine)."""
from __future__ import annotations

import csv
import math
import os
import platform
import subprocess
from pathlib import Path

import numpy as np

from app import ROOT


MONITOR_KEYS = ("pq50", "pq30", "miou", "mcov")


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
            "miou_2d": get("semantic_2d", "miou"),
            "miou_2d_paper": get("semantic_2d_paper", "miou"),  # per frame, averaged (absent in older results)
            "mcov_2d": get("instance_2d", "mcov"),
            "mcov_3d": get("instance_3d", "mcov"), "miou_3d": get("semantic_3d", "miou"),
            "f1": get("geometry", "f1"), "chamfer_l1_cm": get("geometry", "chamfer_l1_cm"),
            "fit_seconds": get("timing", "fit_seconds"), "peak_rss_mb": get("timing", "peak_rss_mb"),
            "iterations": get("timing", "iterations"),
            # the rendering block (held-out views); absent from cells evaluated before it existed
            "psnr": get("rendering", "psnr"), "ssim": get("rendering", "ssim"),
            "depth_absrel": get("rendering", "depth_absrel"), "render_fps": get("rendering", "render_fps")}


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
