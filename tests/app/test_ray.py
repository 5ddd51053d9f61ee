"""Batches on Ray (app/executor.py, bench --ray, fit-many --ray) against the sequential path.

One local Ray instance with 2 CPUs serves the module (starting one takes ~6 s). The tiny bench suite runs
both ways and its results.json must be equal apart from timings and the output folder's path; a failing
cell is reported while the others finish; a run of the suite again recomputes only what is missing.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from app.executor import Task, eta_seconds, format_eta, progress_line, run_tasks, schedule_eta

ray = pytest.importorskip("ray", reason="ray is not installed: bash scripts/setup.sh installs it")

TIMING_KEYS = {"fit_seconds", "eval_seconds", "render_fps", "peak_rss_mb", "wall_seconds", "started", "created",
               "seconds", "git", "machine", "host", "python", "torch", "iters_per_s"}


# ------------------------------------------------------------------------------------------------
# by hand
# ------------------------------------------------------------------------------------------------
def test_schedule_eta_of_parallel_tasks_by_hand():
    # 4 tasks of 10 min on 2 slots, the first just done and the second 9.5 min in: the second ends in 0.5 min;
    # a queued one starts on the free slot now and ends in 10, the last starts at 0.5 and ends in 10.5
    assert schedule_eta(10.0, [9.5], queued=2, slots=2) == 10.5
    assert schedule_eta(10.0, [], queued=3, slots=1) == 30.0          # sequential: tasks left x mean
    assert schedule_eta(10.0, [12.0, 3.0], queued=0, slots=2) == 7.0  # one already over the mean counts 0
    assert schedule_eta(10.0, [], queued=0, slots=4) == 0.0
    assert schedule_eta(10.0, [], queued=5, slots=2) == 30.0          # 3 rounds on 2 slots


def test_eta_and_progress_line_by_hand():
    assert eta_seconds(30.0, 0, 4) is None
    assert eta_seconds(30.0, 1, 4) == 90.0          # 30 s per task so far, 3 left
    assert eta_seconds(30.0, 4, 4) == 0.0
    assert format_eta(42.4) == "42 s" and format_eta(185) == "3 min 05 s" and format_eta(3720) == "1 h 02 min"
    t = Task("room", print)
    assert progress_line(1, 4, t, "done", 30.0) == "[1/4] room: done (elapsed 30 s; about 1 min 30 s left)"
    assert progress_line(4, 4, t, "done", 30.0) == "[4/4] room: done (elapsed 30 s)"
    assert progress_line(1, 4, t, "done", 30.0, eta_s=45.0) == "[1/4] room: done (elapsed 30 s; about 45 s left)"


# module-level task functions (Ray pickles this module by value: its workers cannot import tests/)
def ok_task(x: int) -> dict:
    return {"status": "done", "value": x * x, "pid": os.getpid()}


def fails_first_time(marker: str) -> dict:
    m = Path(marker)
    if not m.exists():
        m.write_text("1")
        return {"status": "failed", "error": "first try fails"}
    return {"status": "done", "value": "second try"}


def dies_first_time(marker: str) -> dict:
    m = Path(marker)
    if not m.exists():
        m.write_text("1")
        os._exit(3)                      # the worker process dies, as a killed fit would
    return {"status": "done", "value": "after the worker died"}


def always_fails(marker: str) -> dict:
    with open(marker, "a") as fh:
        fh.write("x")
    raise RuntimeError("broken input")


def test_sequential_tasks_in_order_without_retry(tmp_path):
    lines = []
    out = list(run_tasks([Task("a", ok_task, (2,)), Task("b", always_fails, (str(tmp_path / "m"),))],
                         log=lines.append))
    assert [(t.key, r["status"]) for t, r in out] == [("a", "done"), ("b", "failed")]
    assert out[0][1]["value"] == 4 and "RuntimeError: broken input" in out[1][1]["error"]
    assert (tmp_path / "m").read_text() == "x"                # no retry on the sequential path
    assert lines[0].startswith("[1/2] a: done") and lines[1].startswith("[2/2] b: FAILED")


@pytest.fixture(scope="module")
def local_ray():
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", object_store_memory=100 * 1024 ** 2,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}})
    yield
    ray.shutdown()


def test_ray_retries_once_then_reports_and_the_others_finish(local_ray, tmp_path):
    tasks = [Task("ok", ok_task, (3,)), Task("flaky", fails_first_time, (str(tmp_path / "flaky"),)),
             Task("dies", dies_first_time, (str(tmp_path / "dies"),)),
             Task("broken", always_fails, (str(tmp_path / "broken"),))]
    lines = []
    got = {t.key: r for t, r in run_tasks(tasks, "local", log=lines.append)}
    assert got["ok"]["value"] == 9
    assert got["flaky"] == {"status": "done", "value": "second try"}
    assert got["dies"] == {"status": "done", "value": "after the worker died"}
    assert got["broken"]["status"] == "failed" and "broken input" in got["broken"]["error"]
    assert (tmp_path / "broken").read_text() == "xx"          # tried twice, then reported
    assert sum("retrying once" in ln for ln in lines) == 3
    assert sum(ln.startswith("[") for ln in lines) == 4      # one progress line per task


def test_ray_refuses_tasks_larger_than_the_cluster(local_ray):
    with pytest.raises(RuntimeError, match="ask for more"):
        list(run_tasks([Task("big", ok_task, (1,), cpus=64)], "local", log=lambda m: None))


# ------------------------------------------------------------------------------------------------
# the tiny bench suite: sequential vs local Ray with 2 workers
# ------------------------------------------------------------------------------------------------
def _strip(obj, out_dir: str):
    """results.json without timings, host fields and the output folder's path."""
    if isinstance(obj, dict):
        return {k: _strip(v, out_dir) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_strip(v, out_dir) for v in obj]
    if isinstance(obj, str):
        return obj.replace(out_dir, "OUT")
    return obj


def _differences(a, b, path: str = "") -> list[str]:
    """Paths where two JSON-like values differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in (
            _differences(a[k], b[k], f"{path}/{k}") if k in a and k in b else [f"{path}/{k}: only in one"])]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {str(a)[:120]} != {str(b)[:120]}"]


def test_tiny_suite_on_ray_equals_sequential_and_resumes(local_ray, tmp_path, monkeypatch):
    from app.bench.runner import run_suite
    from tests.app.test_bench import tiny_suite
    lines_seq, lines_ray = [], []
    # both paths run each cell in a fresh process (the default), so no state of this test process leaks in, and
    # with one OpenMP / BLAS thread, as Ray gives a 1-CPU task (summation order is then the same in both)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    seq = run_suite(tiny_suite(), tmp_path / "seq", echo=False, progress=False, log=lines_seq.append)
    par = run_suite(tiny_suite(), tmp_path / "ray", ray_address="auto", echo=False, progress=False,
                    log=lines_ray.append)
    a = _strip(seq, str(tmp_path / "seq"))
    b = _strip(par, str(tmp_path / "ray"))
    for c in a["cells"] + b["cells"]:
        c.pop("traceback", None)            # differs in the frames of the runner that called the cell
        for p in c.get("curve", []):
            p.pop("fit_seconds", None)
    assert [c["status"] for c in b["cells"]] == ["done", "failed", "done"]
    assert _differences(a, b) == []
    on_disk = json.loads((tmp_path / "ray" / "results.json").read_text())
    assert _strip(on_disk, str(tmp_path / "ray"))["cells"][0]["metrics"] == b["cells"][0]["metrics"]
    assert any("retrying once" in ln for ln in lines_ray)                       # the broken cell, twice
    assert sum(ln.startswith("[") and "__" in ln for ln in lines_ray) == 3      # one line per finished cell
    # resume: a cell whose record is gone is recomputed, a done one is skipped
    (tmp_path / "ray" / "cells" / "room-realistic-s0__fusion" / "cell.json").unlink()
    lines = []
    again = run_suite(tiny_suite(), tmp_path / "ray", ray_address="auto", echo=False, progress=False,
                      log=lines.append, only="*__ours,*__fusion")
    assert any("room-realistic-s0__ours: done earlier" in ln for ln in lines)
    assert any(ln.startswith("[1/1] room-realistic-s0__fusion: done") for ln in lines)
    assert [c["status"] for c in again["cells"]] == ["done", "failed", "done"]
    assert _strip(again, str(tmp_path / "ray"))["cells"][2]["metrics"] == b["cells"][2]["metrics"]


def test_fit_many_on_ray_reports_a_broken_scene_and_resumes(local_ray, tmp_path):
    import shutil
    from app.fit_many import fit_many
    from recon.core.config import load_config
    from recon.core.settings import SynthSettings
    from recon.data.make_synth import make_synth_scene
    from tests.app.test_bench import TINY
    scenes = tmp_path / "scenes"
    synth = load_config(SynthSettings, None, ["preset=room", "size=[40,30]", "frames=6"])
    make_synth_scene(synth, scenes / "good", log=lambda m: None)
    shutil.copytree(scenes / "good", scenes / "bad")
    pose = sorted((scenes / "bad" / "pose").iterdir())[2]
    pose.write_text("not a matrix\n")
    lines = []
    out = tmp_path / "runs"
    summary = fit_many(str(scenes / "*"), out, None, list(TINY), ray_address="auto", log=lines.append)
    assert summary["scenes"]["good"]["status"] == "done" and (out / "good" / "mesh.ply").is_file()
    bad = summary["scenes"]["bad"]
    assert bad["status"] == "failed" and pose.name in bad["error"] and "retrying once" in " ".join(lines)
    assert json.loads((out / "fit_many.json").read_text())["scenes"]["bad"]["status"] == "failed"
    # again: the finished scene is skipped without a new process
    lines = []
    again = fit_many(str(scenes / "g*"), out, None, list(TINY), ray_address="auto", log=lines.append)
    assert again["scenes"]["good"]["skipped"] is True
    assert any("good: done earlier, skipped" in ln for ln in lines)
