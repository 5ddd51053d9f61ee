"""Checkpoints of a fit: everything exact resume needs (fields, tokens, optimisers, random streams).

Each file is written to a temporary name, fsynced and renamed, so a crash leaves the previous
checkpoint whole. Loading takes the newest readable one: last.pt, else the numbered checkpoints from
the newest down, saying which it used and why.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from recon.core.io import atomic_file
from recon.model.scene_model import SceneModel

REQUIRED_KEYS = ("iter", "model", "box", "optimizer", "rng", "fit_seconds")


class CheckpointError(FileNotFoundError):
    """A run has no readable checkpoint."""


def _rng_state(gen: torch.Generator) -> dict:
    return {"torch_gen": gen.get_state(), "torch_global": torch.get_rng_state()}


def save_checkpoint(run: Path, it: int, model: SceneModel, opt, gen: torch.Generator, fit_seconds: float,
                    inst=None, keep: int = 0, appearance: dict | None = None) -> Path:
    """Write checkpoints/ckpt_<it>.pt and last.pt (a copy), each atomically; then delete all but the newest
    `keep` numbered checkpoints (keep 0 = delete none)."""
    ckpt_dir = run / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    path = ckpt_dir / f"ckpt_{it:06d}.pt"
    state = {"iter": it, "model": model.state_dict(), "optimizer": opt.state_dict(), "rng": _rng_state(gen),
             "fit_seconds": fit_seconds, "box": model.box_dict()}
    if inst is not None:
        # the token count changes during training: store the tokens on their own so that a module of
        # the right size can be built before loading (InstanceTokens.from_state_dict)
        state["instance"] = {"tokens": inst.branch.tokens.state_dict(),
                             "class_head": inst.branch.class_head.state_dict(),
                             "thing_ids": inst.branch.thing_ids, "optimizer": inst.opt.state_dict(),
                             "strategy": inst.strategy.state_dict()}
    if appearance is not None:                 # the Gaussians (their count changes): recon/train/appearance.py
        state["appearance"] = appearance
    with atomic_file(path) as fh:
        torch.save(state, fh)
    with open(path, "rb") as src, atomic_file(ckpt_dir / "last.pt") as fh:
        shutil.copyfileobj(src, fh)
    if keep > 0:
        for old in sorted(ckpt_dir.glob("ckpt_*.pt"))[:-keep]:   # zero-padded names sort by iteration
            old.unlink()
    return path


def has_checkpoint(run: Path) -> bool:
    d = Path(run) / "checkpoints"
    return (d / "last.pt").is_file() or any(d.glob("ckpt_*.pt"))


def load_checkpoint(run: Path, log=print) -> tuple[dict, Path]:
    """(state, path) of the newest readable checkpoint of `run`: last.pt, else ckpt_<iteration>.pt from the
    newest down. Unreadable files are named in the log line that says which checkpoint is used; none
    readable raises CheckpointError listing each file and why."""
    ckpt_dir = Path(run) / "checkpoints"
    candidates = [ckpt_dir / "last.pt"] + sorted(ckpt_dir.glob("ckpt_*.pt"), reverse=True)
    bad: list[str] = []
    for path in candidates:
        if not path.is_file():
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
            missing = [k for k in REQUIRED_KEYS if k not in state] if isinstance(state, dict) else ["(not a dict)"]
            if missing:
                raise ValueError(f"not a checkpoint of this tool (missing {', '.join(missing)})")
        except Exception as exc:   # noqa: BLE001 - torch/pickle raise many types for a damaged file
            bad.append(f"{path.name} ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})")
            continue
        if bad:
            log(f"{ckpt_dir}: unreadable {'; '.join(bad)}; using {path.name} (iteration {state['iter']})")
        return state, path
    if bad:
        raise CheckpointError(f"{ckpt_dir}: no readable checkpoint: {'; '.join(bad)}")
    raise CheckpointError(f"{ckpt_dir}: no checkpoint (the run was never trained, or its checkpoints were deleted)")
