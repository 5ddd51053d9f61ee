"""The per-stage profile (recon/train/profile.py): attribution on hand-made events, the phase windows by hand,
and `run.py profile` on a tiny scene naming every stage of the step."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from fields.stages import PREFIX
from recon.core.config import load_config
from recon.core.settings import FitSettings
from recon.train.profile import (BACKWARD_EVENT, PYTHON, UNSTAGED, ProfileError, FitProfiler, attribute_events,
                                 phase_windows, scale_to, stage_times)


@dataclass
class Ev:
    """The attributes of a torch.profiler FunctionEvent that the attribution reads."""
    name: str
    self_cpu_time_total: float            # microseconds
    sequence_nr: int = -1
    thread: int = 1
    fwd_thread: int = 0
    cpu_parent: "Ev | None" = None


def test_attribution_by_hand():
    grid = Ev(PREFIX + "hash grid", 5.0)
    index = Ev("aten::index", 300.0, sequence_nr=7, cpu_parent=grid)          # forward op with a backward
    inner = Ev("aten::empty", 20.0, cpu_parent=index)                           # nested: innermost stage too
    mlp = Ev(PREFIX + "mlp", 1.0)
    mm = Ev("aten::mm", 100.0, sequence_nr=8, cpu_parent=mlp)
    loose = Ev("aten::add", 10.0, sequence_nr=9)                                # outside any stage
    bw = Ev(PREFIX + "backward", 50.0)
    ev_mm = Ev(BACKWARD_EVENT + "MmBackward0", 4.0, sequence_nr=8, fwd_thread=1, cpu_parent=bw)
    mm_b = Ev("aten::mm", 200.0, cpu_parent=ev_mm)
    ev_ix = Ev(BACKWARD_EVENT + "IndexBackward0", 6.0, sequence_nr=7, fwd_thread=1, cpu_parent=bw)
    scatter = Ev("aten::index_put_", 900.0, cpu_parent=ev_ix)
    ev_unknown = Ev(BACKWARD_EVENT + "AddBackward0", 2.0, sequence_nr=99, fwd_thread=1, cpu_parent=bw)
    events = [grid, index, inner, mlp, mm, loose, bw, ev_mm, mm_b, ev_ix, scatter, ev_unknown]
    got = attribute_events(events)
    want = {"hash grid": 320e-6, "mlp": 100e-6, UNSTAGED: 10e-6, "mlp backward": 204e-6,
            "hash grid backward": 906e-6, "backward (other)": 2e-6}
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k] == pytest.approx(v), k
    # python: the wall time not inside any operator's own time (stage marks and gaps)
    st = stage_times(events, wall_s=2000e-6)
    assert st[PYTHON] == pytest.approx(2000e-6 - sum(want.values()))
    assert scale_to({"a": 1.0, "b": 3.0}, 2.0) == {"a": 0.5, "b": 1.5}


def test_a_backward_of_a_backward_keeps_one_suffix():
    bw = Ev(PREFIX + "eikonal gradient", 0.0)
    ev1 = Ev(BACKWARD_EVENT + "MmBackward0", 1.0, sequence_nr=3, fwd_thread=1, cpu_parent=bw)
    op = Ev("aten::mm", 10.0, sequence_nr=4, cpu_parent=ev1)          # a double-backward graph's forward op
    fwd = Ev("aten::mm", 5.0, sequence_nr=3, cpu_parent=Ev(PREFIX + "mlp", 0.0))
    ev2 = Ev(BACKWARD_EVENT + "MmBackward0", 1.0, sequence_nr=4, fwd_thread=1, cpu_parent=Ev(PREFIX + "backward", 0))
    got = attribute_events([fwd, ev1, op, ev2])
    assert got == pytest.approx({"mlp": 5e-6, "mlp backward": 12e-6})


def test_phase_windows_by_hand():
    s = load_config(FitSettings, None, ["train.iters=100", "train.geometry_only_iters=20", "train.pan_start_iters=30",
                                        "train.dice_off_iters=90"])
    w = phase_windows(s, length=10, warmup=5)
    # geometry [0, 20): warm-up min(5, 5) = 5, window min(10, (20 - 5) // 2) = 7
    # labels [20, 30): warm-up 2, window 4;  panoptic [30, 90): 5, 10;  bce only [90, 100): 2, 4
    assert [(x.phase, x.phase_iters, x.timed_start, x.length) for x in w] == [
        ("geometry", 20, 5, 7), ("labels", 10, 22, 4), ("panoptic", 60, 35, 10), ("bce only", 10, 92, 4)]
    with pytest.raises(ProfileError, match="no room"):
        FitProfiler(load_config(FitSettings, None, ["train.iters=1"]), 10)


def test_profile_command_names_every_stage(tmp_path, capsys):
    import run as run_py
    from tests.app.test_bench import TINY
    assert run_py.main(["synth", "--preset", "room", "--size", "40x30", "--frames", "8", "--out",
                        str(tmp_path / "scene")]) == 0
    over = [o for o in TINY if not o.startswith(("train.iters", "train.pan_start", "train.dice_off"))]
    rc = run_py.main(["profile", "--scene", str(tmp_path / "scene"), "--out", str(tmp_path / "prof"), "--window", "2",
                      *over, "train.iters=24", "train.pan_start_iters=8", "train.dice_off_iters=16"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    p = json.loads((tmp_path / "prof" / "profile.json").read_text())
    assert [ph["phase"] for ph in p["phases"]] == ["geometry", "labels", "panoptic", "bce only"]
    for name in ("ray sampling", "hash grid", "hash grid backward", "mlp", "mlp backward", "rendering",
                 "eikonal gradient", "token branch", "hungarian", "losses", "optimizer", "appearance (gaussians)",
                 PYTHON):
        assert name in p["stages_s"], name
    assert sum(p["stages_s"].values()) == pytest.approx(p["training_estimate_s"])
    assert {"LabelledMesh", "LabelImages"} <= set(p["post_fit_s"])
    assert (tmp_path / "prof" / "profile.png").stat().st_size > 1000
    assert "hash grid backward" in out.out + out.err
