"""Crashes and interruptions: a process killed with SIGKILL at each phase (training, meshing, labels, export,
eval), then `fit --resume` or the same command again, ends with the same outputs as an uninterrupted run;
a second writer of a running fit is refused with the holder named; a damaged last.pt falls back to the
newest readable checkpoint. The kills come from recon/core/faults.py (RECON_KILL_AT), run in subprocesses."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recon.core.settings import SynthSettings
from recon.data.make_synth import make_synth_scene
from tests.tiny_settings import TINY_FIELDS

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = TINY_FIELDS + ["train.iters=8", "train.checkpoint_every=4", "train.geometry_only_iters=2",
                          "train.pan_start_iters=4", "train.dice_off_iters=6", "train.threads=1", "train.log_every=1",
                          "mesh.voxel_size_m=0.12"]


def _env(kill_at: str | None = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("RECON_KILL_AT", None)
    if kill_at:
        env["RECON_KILL_AT"] = kill_at
    return env


def cli(*args: str, kill_at: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=_env(kill_at),
                          capture_output=True, text=True, timeout=timeout)


def start_training(args: list[str], run: Path) -> subprocess.Popen:
    """`run.py ARGS` in the background, returned once it has written its first checkpoint."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "last.pt").is_file():
        assert time.time() < deadline and proc.poll() is None, "the fit did not start training"
        time.sleep(0.2)
    return proc


def fit_args(scene: Path, run: Path, *extra: str) -> list[str]:
    return ["fit", "--scene", str(scene), "--out", str(run), *extra, *SETTINGS]


def outputs(run: Path) -> dict[str, str]:
    """Digest of every output a user reads: meshes, instances, labels, held-out depth, the export, metrics
    (without timings), the loss columns of metrics.csv."""
    out = {}
    for p in sorted(run.rglob("*")):
        rel = p.relative_to(run).as_posix()
        if not p.is_file() or rel.startswith(("checkpoints/", "tb/")) or rel in (
                "log.txt", "timing.json", "metrics.csv", "metrics.json", ".lock") or rel.startswith("export/glb/export.json"):
            continue
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    if (run / "metrics.json").is_file():
        m = json.loads((run / "metrics.json").read_text())
        m.pop("eval_seconds", None)
        m.pop("timing", None)
        m.get("rendering", {}).pop("render_fps", None)         # a timing too
        out["metrics.json"] = json.dumps(m, sort_keys=True)
    with open(run / "metrics.csv", newline="") as fh:
        rows = [{k: v for k, v in r.items() if k.startswith("loss/")} for r in csv.DictReader(fh)]
    out["metrics.csv"] = json.dumps(rows)
    return out


@pytest.fixture(scope="module")
def scene_and_reference(tmp_path_factory):
    base = tmp_path_factory.mktemp("crash")
    scene = base / "room"
    make_synth_scene(SynthSettings(size=(40, 30), frames=6, holdout_every=3), scene, log=lambda *_: None)
    ref = base / "reference"
    for args in (fit_args(scene, ref), ["export", "--run", str(ref), "--format", "glb"],
                 ["eval", "--run", str(ref), "--no-baseline"]):
        r = cli(*args)
        assert r.returncode == 0, r.stderr[-3000:]
    return scene, ref


@pytest.mark.parametrize("phase", ["training", "meshing", "labels", "export", "eval"])
def test_kill_at_each_phase_then_resume_gives_the_same_outputs(phase, scene_and_reference, tmp_path):
    scene, ref = scene_and_reference
    run = tmp_path / "run"
    steps = [("fit", fit_args(scene, run)), ("export", ["export", "--run", str(run), "--format", "glb"]),
             ("eval", ["eval", "--run", str(run), "--no-baseline"])]
    for name, args in steps:
        killed_here = {"fit": ("training", "meshing", "labels")}.get(name, (name,))
        if phase in killed_here:
            r = cli(*args, kill_at=phase)
            assert r.returncode == -9, f"{phase}: expected SIGKILL, got {r.returncode}\n{r.stderr[-2000:]}"
            again = args + (["--resume"] if name == "fit" else [])
            r = cli(*again)
            assert r.returncode == 0, r.stderr[-3000:]
        else:
            r = cli(*args)
            assert r.returncode == 0, r.stderr[-3000:]
    assert outputs(run) == outputs(ref)
    leftovers = [p for p in run.rglob(".*") if p.name.endswith(".tmp") or ".old-" in p.name]
    assert leftovers == []


def test_a_second_writer_is_refused_and_a_dead_ones_lock_is_taken_over(scene_and_reference, tmp_path):
    scene, _ = scene_and_reference
    run = tmp_path / "run"
    slow = fit_args(scene, run) + ["train.iters=100000", "train.checkpoint_every=5"]
    first = start_training(slow, run)
    try:
        second = cli(*slow, "--resume")
        assert second.returncode == 2
        assert f"is being written by another process (pid {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        ev = cli("eval", "--run", str(run))
        assert ev.returncode == 2 and "is being written by another process" in ev.stderr
    finally:
        first.kill()
        first.communicate()
    r = cli(*fit_args(scene, run, "--resume"))             # the same run, now with 8 iterations: it finishes
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"the previous writer of {run} ended without releasing it (pid {first.pid}" in (run / "log.txt").read_text()


def test_damaged_last_checkpoint_falls_back_to_the_newest_readable_one(scene_and_reference, tmp_path):
    scene, ref = scene_and_reference
    run = tmp_path / "run"
    r = cli(*fit_args(scene, run), kill_at="meshing")       # both checkpoints (4, 8) written, then killed
    assert r.returncode == -9
    (run / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    ckpt8 = run / "checkpoints" / "ckpt_000008.pt"
    ckpt8.write_bytes(ckpt8.read_bytes()[:1000])           # truncated, as by a crash mid-write of an old version
    r = cli(*fit_args(scene, run, "--resume"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "unreadable last.pt" in r.stderr and "ckpt_000008.pt" in r.stderr and "using ckpt_000004.pt" in r.stderr
    ev = cli("eval", "--run", str(run), "--no-baseline")
    assert ev.returncode == 0, ev.stderr[-3000:]
    # resumed from iteration 4: the same outputs as the uninterrupted run
    ref_out, out = outputs(ref), outputs(run)
    assert {k: v for k, v in out.items() if not k.startswith("export/")} == \
        {k: v for k, v in ref_out.items() if not k.startswith("export/")}


def test_ctrl_c_saves_a_checkpoint_and_exits_130_with_one_line(scene_and_reference, tmp_path):
    import signal
    scene, _ = scene_and_reference
    run = tmp_path / "run"
    proc = start_training(fit_args(scene, run) + ["train.iters=100000", "train.checkpoint_every=5"], run)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("interrupted; what was finished is kept")
    assert "checkpoint saved; continue with 'fit --resume'" in (run / "log.txt").read_text()


def test_resume_of_a_fit_killed_before_its_first_checkpoint_starts_over(scene_and_reference, tmp_path):
    """Found by the soak run: a fit killed before its first checkpoint left a run that `--resume` refused
    forever. With nothing to continue from, the same run now starts from iteration 0."""
    scene, ref = scene_and_reference
    run = tmp_path / "run"
    r = cli(*fit_args(scene, run), kill_at="training")
    assert r.returncode == -9
    import shutil
    shutil.rmtree(run / "checkpoints")                      # as if killed at iteration 3, before the first one
    r = cli(*fit_args(scene, run, "--resume"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "has no checkpoint yet" in r.stderr and "starting it from iteration 0" in r.stderr
    ev = cli("eval", "--run", str(run), "--no-baseline")
    assert ev.returncode == 0, ev.stderr[-3000:]
    ref_out, out = outputs(ref), outputs(run)
    assert {k: v for k, v in out.items() if not k.startswith("export/")} == \
        {k: v for k, v in ref_out.items() if not k.startswith("export/")}
