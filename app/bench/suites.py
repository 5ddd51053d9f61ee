"""`run.py bench`: benchmark suites (scenes x methods x seeds) run end to end, resumable.

A suite is data (`SUITES`): scene specs (a synthetic preset + mask noise, or a scene folder),
methods (`ours`, `panoptic_lifting` = Panoptic Lifting's softmax-slot formulation on our fields
(tokens/slots.py), `ours_ablated` = ours without spatial prior / token adjustment / panoptic head, `fusion` =
the TSDF-fusion + voting baseline of eval/baselines/fusion.py, or ablation variants) and seeds. One cell = (scene, method, seed); the seed drives the synthetic scene and
train.seed.

Layout of the output folder DIR:
    DIR/scenes/<scene_key>/             synthetic scenes (made once, shared by the cells)
    DIR/cells/<cell_id>/spec.json       what the cell runs (resolved config included)
    DIR/cells/<cell_id>/fit.yaml        the resolved fit settings (fit methods)
    DIR/cells/<cell_id>/run/            the run folder (RUN/metrics.json from eval/evaluate.py)
    DIR/cells/<cell_id>/cell.json       status done | failed, error, traceback, wall time, config hash
    DIR/cells/<cell_id>/output.log      the cell's console output
    DIR/references/<scene_key>.json     what the scene's masks carry in 3D (eval/mask_reference.py), cached
    DIR/results.json                    every metric of every cell (schema: app/bench/schema.json)
    DIR/report.md + DIR/*.png           tables and plots (app/bench/report.py)

Each cell runs in its own Python process (`python -m app.bench.cells --cell DIR/cells/<id>`), so its
peak memory is its own and a hard crash (segfault, out-of-memory kill) cannot take the suite down.
Resume: a cell whose cell.json says `done` with the same config hash is skipped; a failed cell is
retried; a cell interrupted during its fit continues from the run's last checkpoint.

Iteration budget (`scaled_schedule`): the quick config is tuned for the room (48 training frames,
1100 iterations). A scene with n_train training frames gets iters = round(1100 * n_train / 48) and
the stage boundaries (geometry_only_iters, pan_start_iters, dice_off_iters) scaled by the same
factor, so every training frame is visited about equally often in every scene (apartment: 144
training frames -> 3300 iterations).

Metric vs. time: fit methods run a MetricMonitor training callback every `ceil(iters / monitor_points)`
iterations; the monitor renders a fixed subset of `monitor_frames` evenly spaced evaluation frames
and logs PQ@0.5, PQ@0.3, mIoU and mCov over that subset (`subset_scores`) as monitor/<name> rows of
RUN/metrics.csv. The fusion baseline gets one point (its fit time, its label images on the subset).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class BenchError(ValueError):
    """A bench request that cannot be run as asked (unknown suite, a pattern that matches no cell)."""




BENCH_VERSION = 2                     # bump when a cell's computation changes meaning (invalidates old cells);

                                      # 2: synthetic GT meshes sample surfaces uniformly (5 cm)
REF_TRAIN_FRAMES = 48                 # training frames of the room, for which configs/quick.yaml is tuned

SCHEDULE_KEYS = ("iters", "geometry_only_iters", "pan_start_iters", "dice_off_iters")

# ours with the spatial prior, token adjustment and panoptic head off, and none of our post-processing (the bench's
# "Panoptic Lifting formulation" before the real baseline existed)
ABLATED_OVERRIDES = ("tokens.spatial_prior=false", "tokens.adjust=false", "panoptic.head=false",
                     "panoptic.merge_fragments=false", "panoptic.merge_by_masks=false",
                     "panoptic.split_untokened=false", "panoptic.fill_unmasked=false")
# Panoptic Lifting (Siddiqui et al., CVPR 2023) on our fields: a softmax over 25 slots per point, Hungarian on
# -mean probability, cross-entropy, segment consistency (tokens/slots.py); none of our merges or relabelling (the
# label clean-ups mask reclass and panoptic consistency stay on, as in ours_ablated)
PL_OVERRIDES = ("tokens.formulation=slots", "tokens.n_slots=25", "tokens.segment_consistency=1.2",
                "tokens.spatial_prior=false", "tokens.adjust=false", "panoptic.head=false",
                "panoptic.merge_fragments=false", "panoptic.merge_by_masks=false", "panoptic.split_untokened=false",
                "panoptic.fill_unmasked=false")


@dataclass(frozen=True)
class SceneSpec:
    """A synthetic scene (preset, noise, size, frames, holdout_every) or an existing scene folder (path)."""
    preset: str = "room"
    noise: str = "realistic"
    size: tuple[int, int] = (160, 120)
    frames: int | None = None
    holdout_every: int = 5
    path: str | None = None            # a scene folder to read instead of synthesising (name = its folder name)

    def key(self, seed: int) -> str:
        if self.path is not None:
            return Path(self.path).name
        return f"{self.preset}-{self.noise}-s{seed}"

    def group(self) -> str:
        """The scene without its seed (rows of the mean-over-seeds table)."""
        return Path(self.path).name if self.path is not None else f"{self.preset}-{self.noise}"


@dataclass(frozen=True)
class MethodSpec:
    """kind 'fit' = app.pipeline.fit_scene with `config` + `overrides`; kind 'fusion' = the fusion baseline."""
    name: str
    kind: str = "fit"
    overrides: tuple[str, ...] = ()
    label: str = ""                    # table / legend text (default: name)

    def title(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class Suite:
    name: str
    scenes: tuple[SceneSpec, ...]
    methods: tuple[MethodSpec, ...]
    seeds: tuple[int, ...] = (0,)
    config: str | None = "quick.yaml"  # fit settings file under configs/ (None = the schema defaults)
    base_overrides: tuple[str, ...] = ()  # applied to every fit method before its own overrides
    ref_train_frames: int | None = REF_TRAIN_FRAMES  # None = no iteration scaling
    monitor_points: int = 6            # metric-vs-time evaluations per fit (0 = none)
    monitor_frames: int = 6            # evaluation frames the monitor renders
    fusion_voxel_size_m: float = 0.02
    description: str = ""

OURS = MethodSpec("ours", label="ours (full)")

PANOPTIC_LIFTING = MethodSpec("panoptic_lifting", overrides=PL_OVERRIDES, label="Panoptic Lifting (softmax slots)")

OURS_ABLATED = MethodSpec("ours_ablated", overrides=ABLATED_OVERRIDES, label="ours w/o prior, adjustment, head")

FUSION = MethodSpec("fusion", kind="fusion", label="TSDF fusion + voting")

# the second, independent scene family (built by other code than room / apartment / clutter) and its noise levels
WALK_NOISE = ("clean", "realistic-video", "hard-video")

SUITES: dict[str, Suite] = {
    "quick": Suite(
        "quick", scenes=(SceneSpec("room", "realistic"),), methods=(OURS, PANOPTIC_LIFTING, OURS_ABLATED, FUSION),
        monitor_points=5, monitor_frames=4,
        description="room, realistic masks, one seed: ours, both baselines and ours ablated (about 30 min on a laptop CPU)"),
    "standard": Suite(
        "standard", scenes=tuple(SceneSpec(p, n) for p in ("room", "apartment", "clutter")
                                 for n in ("clean", "realistic", "hard"))
        + tuple(SceneSpec("walk", n) for n in WALK_NOISE),
        methods=(OURS, PANOPTIC_LIFTING, OURS_ABLATED, FUSION), seeds=(0, 1),
        description="room, apartment, clutter x clean / realistic / hard masks, and the independent walk family x "
                    "clean / realistic-video / hard-video masks, x 2 seeds"),
    "walk": Suite(
        "walk", scenes=tuple(SceneSpec("walk", n) for n in WALK_NOISE), methods=(OURS, PANOPTIC_LIFTING, FUSION),
        seeds=(0, 1), base_overrides=("appearance.steps_per_iter=0",),
        description="the walk family alone (recon/data/synth/walkthrough.py): multi-room walk-throughs, repeated "
                    "furniture, large objects seen in parts, temporally correlated mask noise; labels and geometry only "
                    "(the Gaussians are not trained: appearance.steps_per_iter=0, so a fit is CPU-sized; the fields "
                    "train as in the standard suite's published cells, which predate the appearance branch)"),
    "ablation": Suite(
        "ablation", scenes=(SceneSpec("apartment", "realistic"), SceneSpec("clutter", "realistic")),
        methods=(MethodSpec("prior_only", overrides=("tokens.adjust=false", "panoptic.head=false"),
                            label="spatial prior"),
                 MethodSpec("prior_adjust", overrides=("panoptic.head=false",),
                            label="+ dynamic adjustment"),
                 MethodSpec("full", label="+ panoptic head (full)"),
                 MethodSpec("no_prior", overrides=("tokens.spatial_prior=false",),
                            label="full without spatial prior")),
        description="the paper's Table V switches (spatial prior, dynamic token adjustment, panoptic head)"),
}


@dataclass(frozen=True)
class Cell:
    scene: SceneSpec
    method: MethodSpec
    seed: int

    @property
    def scene_key(self) -> str:
        return self.scene.key(self.seed)

    @property
    def cell_id(self) -> str:
        return f"{self.scene_key}__{self.method.name}"


def suite_cells(suite: Suite) -> list[Cell]:
    """Cells in run order: scene by scene (seed inner), method order within a scene."""
    cells = [Cell(sc, m, seed) for sc in suite.scenes for seed in (suite.seeds if sc.path is None else (0,))
             for m in suite.methods]
    ids = [c.cell_id for c in cells]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    assert not dup, f"suite {suite.name}: duplicate cell ids {dup}"
    return cells


def scaled_schedule(train: dict, n_train: int, ref_train: int | None = REF_TRAIN_FRAMES) -> dict:
    """The iteration budget rule: iters and stage boundaries times n_train / ref_train.

    train: the `train` section as a dict (iters, geometry_only_iters, pan_start_iters,
    dice_off_iters). Returns a new dict; a boundary of 0 (= never) stays 0, others are at least 1.
    ref_train None: unchanged.
    """
    assert n_train >= 1, f"n_train must be >= 1, got {n_train}"
    out = dict(train)
    if ref_train is None:
        return out
    for k in SCHEDULE_KEYS:
        out[k] = scale_iters(int(out[k]), n_train, ref_train)
    return out


def scale_iters(v: int, n_train: int, ref_train: int) -> int:
    """One iteration count times n_train / ref_train; 0 (= never / no limit) stays 0, others >= 1."""
    return 0 if v == 0 else max(1, int(round(v * n_train / float(ref_train))))


def monitor_every(iters: int, points: int) -> int:
    """Iterations between monitor calls for `points` evaluations over `iters` (0 = never)."""
    return 0 if points <= 0 else max(1, math.ceil(iters / points))


def evenly_spaced(indices: list[int], n: int) -> list[int]:
    """n items of `indices` evenly spaced from first to last (all of them if n >= len)."""
    if n >= len(indices):
        return list(indices)
    pos = np.unique(np.round(np.linspace(0, len(indices) - 1, n)).astype(int))
    return [indices[p] for p in pos]
