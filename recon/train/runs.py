"""Build a fit's objects from a scene and settings, and load a trained run folder back."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from recon.core.config import ConfigError, load_config
from recon.core.device import resolve_device
from recon.core.settings import FitSettings
from recon.data.scene import Scene, load_scene
from recon.model.instance_branch import InstanceBranch
from recon.model.scene_model import SceneModel, scene_box
from recon.train.checkpoint import load_checkpoint
from recon.train.optim import make_token_optimizer
from recon.train.step import InstanceState
from tokens.adjust import make_strategy
from tokens.tokens import InstanceTokens


def instance_branch_wanted(scene: Scene, s: FitSettings) -> bool:
    """The instance branch runs when enabled, the scene has masks and at least one thing class."""
    return bool(s.tokens.enabled and scene.has_masks and scene.thing_ids())


def build_model_for_scene(scene: Scene, s: FitSettings, train_idx: list[int], box: dict | None = None,
                          with_instance: bool | None = None) -> SceneModel:
    if box is None:
        box = scene_box(scene, train_idx, s.model.box_margin_m)
    if with_instance is None:
        with_instance = instance_branch_wanted(scene, s)
    return SceneModel(s, np.asarray(box["min"]), np.asarray(box["max"]), n_classes=scene.n_classes,
                      with_instance=with_instance)


def restore_branch(state: dict, scene: Scene, s: FitSettings) -> InstanceBranch:
    """The instance branch of a checkpoint's "instance" entry (tokens sized from the state)."""
    tokens = InstanceTokens.from_state_dict(state["tokens"])
    branch = InstanceBranch(tokens, list(state["thing_ids"]), scene.n_classes, s.tokens,
                            keep_untokened_classes=s.panoptic.keep_untokened_classes)
    branch.class_head.load_state_dict(state["class_head"])
    return branch


def make_instance_state(branch: InstanceBranch, s: FitSettings, log) -> InstanceState:
    rules = dataclasses.replace(s.tokens.adjust_rules, enabled=s.tokens.adjust and s.tokens.adjust_rules.enabled)
    return InstanceState(branch, make_token_optimizer(branch.tokens, s), make_strategy(rules, log=log))


def train_indices(scene: Scene, s: FitSettings) -> list[int]:
    if s.data.split in scene.splits:
        idx = scene.split_indices(s.data.split)
    else:
        raise ConfigError(f"data.split '{s.data.split}' is not a split of {scene.root} (has: {list(scene.splits)})")
    if not idx:
        raise ConfigError(f"data.split '{s.data.split}' of {scene.root} has no frames")
    return idx


def load_run(run: Path, log=print) -> tuple[FitSettings, SceneModel, Scene]:
    """Settings, trained model (newest readable checkpoint) and scene of a run folder."""
    s, model, _, scene = load_run_full(run, log=log)
    return s, model, scene


def load_run_full(run: Path, device: str | None = None, log=print
                  ) -> tuple[FitSettings, SceneModel, InstanceBranch | None, Scene]:
    """Settings, trained model, instance branch (None without one) and scene of a run folder, on
    `device` (default: the run's train.device setting; "auto" = CUDA where available)."""
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(f"{run} is not a run folder (no config.yaml)")
    s = load_config(FitSettings, run / "config.yaml")
    scene = load_scene(Path((run / "scene.txt").read_text().strip()), skip_bad_frames=s.data.skip_bad_frames,
                       check_images=False)
    ckpt, _ = load_checkpoint(run, log=log)
    model = build_model_for_scene(scene, s, train_indices(scene, s), ckpt["box"], with_instance="instance" in ckpt)
    model.load_state_dict(ckpt["model"])
    dev = resolve_device(device if device is not None else s.train.device)
    model.to(dev).eval()
    branch = restore_branch(ckpt["instance"], scene, s).to(dev).eval() if "instance" in ckpt else None
    return s, model, branch, scene


def load_run_gaussians(run: Path, device: str = "cpu", log=print):
    """The appearance branch's Gaussians (fields.gaussians.GaussianModel, eval mode) of a run's newest
    readable checkpoint, or None when the run has none (appearance.branch=colour_head, or older runs)."""
    from fields.gaussians import GaussianModel
    s = load_config(FitSettings, Path(run) / "config.yaml")
    ckpt, _ = load_checkpoint(Path(run), log=log)
    if "appearance" not in ckpt:
        return None
    g = GaussianModel.from_state_dict(ckpt["appearance"]["model"], s.appearance.sh_degree)
    g.active_degree.fill_(min(s.appearance.sh_degree, int(ckpt["appearance"]["steps"]) // s.appearance.sh_degree_every))
    return g.to(resolve_device(device)).eval()
