"""Hooks of the training loop: what runs beside training and after it, without the loop knowing it.

The loop (recon/train/loop.py) calls, on every callback it is given, in list order:

- `on_fit_start(ctx)` once the model, bank and optimisers exist (new and resumed fits alike);
- `on_step_end(ctx, it, losses)` after every step (`it` = iterations done);
- `on_fit_end(ctx)` after the final checkpoint, only when the fit reached train.iters.

Time spent inside callbacks is not fit time. The post-fit steps (mesh, labels, held-out depth) are
callbacks of recon/postfit/; the metric-vs-time monitor of the bench is `MetricMonitor` below.
Callbacks add what they want recorded in RUN/timing.json to `ctx.timing`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from recon.core.runfolder import RunLog
from recon.core.settings import FitSettings
from recon.data.scene import Scene
from recon.model.inference import frame_labels
from recon.model.instance_branch import InstanceBranch
from recon.model.sampling import FrameBank
from recon.model.scene_model import SceneModel


@dataclass
class FitContext:
    """What a callback may read (and, for timing, write) during a fit."""
    run: Path
    settings: FitSettings
    scene: Scene
    model: SceneModel
    branch: InstanceBranch | None       # None without an instance branch
    bank: FrameBank                     # the training frames
    log: RunLog
    device: torch.device
    progress: bool                      # show progress bars
    fit_seconds: float = 0.0            # training time so far (updated by the loop before each call)
    timing: dict = field(default_factory=dict)  # extra entries for RUN/timing.json (e.g. mesh_seconds)
    gaussians: object | None = None     # fields.gaussians.GaussianModel of the appearance branch, None without one


class Callback:
    """Base class: override the hooks you need (each does nothing by default)."""

    def on_fit_start(self, ctx: FitContext) -> None:
        pass

    def on_step_end(self, ctx: FitContext, it: int, losses: dict[str, float]) -> None:
        pass

    def on_fit_end(self, ctx: FitContext) -> None:
        pass


LabelFn = Callable[[int], tuple[np.ndarray, np.ndarray]]


def frame_label_fn(ctx: FitContext) -> LabelFn:
    """frame index -> (semantic [H, W], instance [H, W]) rendered by the current model (instance =
    token index + 1, 0 = none)."""
    def label_fn(i: int) -> tuple[np.ndarray, np.ndarray]:
        sem, tok = frame_labels(ctx.model, ctx.branch, ctx.scene, ctx.settings, i)
        return sem, tok + 1                                                   # -1 (none) -> 0
    return label_fn


class MetricMonitor(Callback):
    """Calls fn(it, fit_seconds, label_fn) -> {name: value} every train.monitor_every iterations and at
    the last one, and logs the values as monitor/<name> (metrics.csv, TensorBoard): metric-vs-time
    curves. label_fn renders frames with the model as it is at that iteration."""

    def __init__(self, fn: Callable[[int, float, LabelFn], dict[str, float]]):
        self.fn = fn

    def on_step_end(self, ctx: FitContext, it: int, losses: dict[str, float]) -> None:
        every = ctx.settings.train.monitor_every
        if every <= 0 or (it % every != 0 and it != ctx.settings.train.iters):
            return
        vals = self.fn(it, ctx.fit_seconds, frame_label_fn(ctx))
        ctx.log.scalars(it, {f"monitor/{k}": float(v) for k, v in vals.items()})
