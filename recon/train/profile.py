"""Per-stage profile of a fit (`python run.py profile`): where the training time goes.

The training step marks its stages with `fields.stages.stage` (ray sampling, hash grid, mlp, rendering,
eikonal gradient, token branch, hungarian, losses, backward, optimizer, token adjustment, appearance).
`FitProfiler` is a training callback that, in every phase of the schedule (geometry only, labels,
panoptic, BCE only; see train.*_iters), times `window` iterations without the profiler and the next
`window` with torch.profiler, and attributes the profiled operators' own (self) CPU time:

- an operator to the innermost stage around it;
- an operator run by the autograd engine (inside `autograd::engine::evaluate_function: XBackward`) to
  "<stage of the forward operator X> backward", found through the operators' autograd sequence numbers;
  so the hash grid's scatter-add in the backward shows as "hash grid backward", wherever it runs;
- what no operator covers (Python, the autograd engine's own bookkeeping, the profiler) to "python".

Each phase's per-iteration stage times are scaled so that they add up to the unprofiled time per
iteration measured just before (the profiler's own overhead is spread proportionally), then
multiplied by the phase's length: an estimate of the whole fit's time per stage, which is printed
beside the fit's measured time. Post-fit work (meshing, label images, ...) is timed per callback.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from fields.stages import PREFIX
from recon.core.settings import FitSettings
from recon.train.callbacks import Callback, FitContext

BACKWARD_EVENT = "autograd::engine::evaluate_function: "


class ProfileError(ValueError):
    """A profile that cannot be taken (no room for a window); the message says which setting to change."""
PYTHON = "python"
UNSTAGED = "other (outside any stage)"


# ------------------------------------------------------------------------------------------------
# attribution (pure: takes profiler events, or anything with the same attributes)
# ------------------------------------------------------------------------------------------------
def _innermost_stage(e) -> tuple[str | None, object | None]:
    """(innermost stage name around event e, the innermost backward-engine event around it or None)."""
    st, bw = None, None
    p = e.cpu_parent
    while p is not None:
        if bw is None and p.name.startswith(BACKWARD_EVENT):
            bw = p
        if st is None and p.name.startswith(PREFIX):
            st = p.name[len(PREFIX):]
        if st is not None and bw is not None:
            break
        p = p.cpu_parent
    return st, bw


def attribute_events(events) -> dict[str, float]:
    """Stage -> seconds of operator self time over `events` (torch.profiler FunctionEvents in start order:
    name, self_cpu_time_total in microseconds, sequence_nr, thread, fwd_thread, cpu_parent). Stage marks
    themselves count nothing here (their self time is Python; see `stage_times`)."""
    by_seq: dict[tuple[int, int], str] = {}
    out: dict[str, float] = {}
    for e in events:
        if e.name.startswith(PREFIX):
            continue
        st, bw = _innermost_stage(e)
        if e.name.startswith(BACKWARD_EVENT) and bw is None:
            bw = e
        if bw is not None:
            fwd = by_seq.get((bw.fwd_thread, bw.sequence_nr))
            name = f"{fwd.removesuffix(' backward')} backward" if fwd else "backward (other)"
        else:
            name = st or UNSTAGED
        if e.sequence_nr >= 0 and not e.name.startswith(BACKWARD_EVENT):
            by_seq[(e.thread, e.sequence_nr)] = name       # ops that will have a backward
        out[name] = out.get(name, 0.0) + e.self_cpu_time_total * 1e-6
    return out


def stage_times(events, wall_s: float) -> dict[str, float]:
    """attribute_events plus PYTHON = wall time not inside any operator's own time (never below 0)."""
    out = attribute_events(events)
    out[PYTHON] = max(wall_s - sum(out.values()), 0.0)
    return out


def scale_to(stages: dict[str, float], total_s: float) -> dict[str, float]:
    """`stages` scaled to add up to `total_s` (the unprofiled time of the same work)."""
    s = sum(stages.values())
    return {k: v * total_s / s for k, v in stages.items()} if s > 0 else dict(stages)


# ------------------------------------------------------------------------------------------------
# phases and windows
# ------------------------------------------------------------------------------------------------
@dataclass
class Window:
    phase: str
    phase_iters: int          # length of the phase in the schedule
    timed_start: int          # `done` count at which the unprofiled timing starts
    length: int               # iterations timed, then as many profiled
    timed_s: float = 0.0      # unprofiled wall time of `length` iterations
    profiled_s: float = 0.0   # profiled wall time of `length` iterations
    stages: dict[str, float] = field(default_factory=dict)   # per iteration, scaled to timed_s / length


def phase_windows(s: FitSettings, length: int, warmup: int = 5, start: int = 0) -> list[Window]:
    """One window per phase of the schedule that has room for 2 x `length` iterations after `warmup`
    (shortened where a phase is short); phases before `start` (a resumed fit) are skipped."""
    t = s.train
    bounds = [("geometry", 0, t.geometry_only_iters), ("labels", t.geometry_only_iters, t.pan_start_iters),
              ("panoptic", t.pan_start_iters, t.dice_off_iters if t.dice_off_iters > 0 else t.iters),
              ("bce only", t.dice_off_iters if t.dice_off_iters > 0 else t.iters, t.iters)]
    out = []
    for name, a, b in bounds:
        a, b = max(a, 0), min(b, t.iters)
        if b - a < 2 or a < start:
            continue
        g = min(warmup, (b - a) // 4)
        n = min(length, (b - a - g) // 2)
        if n >= 1:
            out.append(Window(name, b - a, a + g, n))
    return out


class FitProfiler(Callback):
    """Times and profiles one window per phase (module docstring); `windows` holds the results."""

    def __init__(self, s: FitSettings, length: int = 10, warmup: int = 5):
        self.windows = phase_windows(s, length, warmup)
        if not self.windows:
            raise ProfileError(f"train.iters={s.train.iters} leaves no room for a profiling window (2 x {length} "
                               "iterations in some phase); raise train.iters or lower --window")
        self._t = 0.0
        self._prof = None

    def on_step_end(self, ctx: FitContext, it: int, losses: dict[str, float]) -> None:
        for w in self.windows:
            if it == w.timed_start:
                self._sync(ctx)
                self._t = time.perf_counter()
            elif it == w.timed_start + w.length:
                self._sync(ctx)
                w.timed_s = time.perf_counter() - self._t
                self._prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                self._prof.start()
                self._t = time.perf_counter()
            elif it == w.timed_start + 2 * w.length and self._prof is not None:
                self._sync(ctx)
                w.profiled_s = time.perf_counter() - self._t
                self._prof.stop()
                raw = stage_times(self._prof.events(), w.profiled_s)
                w.stages = {k: v / w.length for k, v in scale_to(raw, w.timed_s).items()}
                self._prof = None

    @staticmethod
    def _sync(ctx: FitContext) -> None:
        if ctx.device is not None and ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)


class TimedCallback(Callback):
    """Forwards every hook to `inner` and adds up the seconds each hook takes (post-fit work)."""

    def __init__(self, inner: Callback):
        self.inner = inner
        self.name = type(inner).__name__
        self.seconds = 0.0

    def _timed(self, hook: str, *args) -> None:
        t0 = time.perf_counter()
        getattr(self.inner, hook)(*args)
        self.seconds += time.perf_counter() - t0

    def on_fit_start(self, ctx):
        self._timed("on_fit_start", ctx)

    def on_step_end(self, ctx, it, losses):
        self._timed("on_step_end", ctx, it, losses)

    def on_fit_end(self, ctx):
        self._timed("on_fit_end", ctx)


def summarise(profiler: FitProfiler, post: list[TimedCallback], fit_seconds: float | None) -> dict:
    """The profile as a dict: per phase (iterations, s/iteration, stages per iteration), the whole fit's
    estimated seconds per stage (phase per-iteration times x phase lengths), the post-fit callbacks' seconds."""
    phases, total = [], {}
    for w in profiler.windows:
        if not w.stages:
            continue
        phases.append({"phase": w.phase, "iterations": w.phase_iters, "window": w.length,
                       "seconds_per_iter": w.timed_s / w.length,
                       "profiler_overhead": (w.profiled_s / w.timed_s) if w.timed_s > 0 else None,
                       "stages_per_iter_s": dict(sorted(w.stages.items(), key=lambda kv: -kv[1]))})
        for k, v in w.stages.items():
            total[k] = total.get(k, 0.0) + v * w.phase_iters
    est = sum(total.values())
    overhead = sum(max(w.profiled_s - w.timed_s, 0.0) for w in profiler.windows if w.stages)
    return {"phases": phases,
            "training_estimate_s": est,
            "training_measured_s": None if fit_seconds is None else fit_seconds - overhead,
            "profiler_overhead_s": overhead,
            "stages_s": dict(sorted(total.items(), key=lambda kv: -kv[1])),
            "post_fit_s": {c.name: c.seconds for c in post if c.seconds > 0.0}}


def format_profile(p: dict) -> str:
    """The profile as a table for the terminal."""
    rows = []
    est = p["training_estimate_s"]
    meas = p["training_measured_s"]
    rows.append(f"training: {est:.1f} s estimated from the windows" +
                (f", {meas:.1f} s measured (the fit's time less the profiler's overhead "
                 f"{p['profiler_overhead_s']:.1f} s)" if meas is not None else ""))
    for ph in p["phases"]:
        rows.append(f"  {ph['phase']:<10} {ph['iterations']:>5} iterations x {ph['seconds_per_iter'] * 1e3:7.1f} ms "
                    f"(profiler overhead x{ph['profiler_overhead']:.2f}, window {ph['window']})")
    rows.append(f"{'stage':<34} {'seconds':>9} {'share':>7}")
    for k, v in p["stages_s"].items():
        rows.append(f"{k:<34} {v:>9.2f} {100 * v / est if est > 0 else 0:>6.1f}%")
    if p["post_fit_s"]:
        rows.append("post-fit (after training):")
        for k, v in p["post_fit_s"].items():
            rows.append(f"  {k:<32} {v:>9.2f}")
    return "\n".join(rows)
