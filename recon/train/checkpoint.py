"""Checkpoints of a fit: everything exact resume needs (fields, tokens, optimisers, random streams)."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from recon.model.scene_model import SceneModel


def _rng_state(gen: torch.Generator) -> dict:
    return {"torch_gen": gen.get_state(), "torch_global": torch.get_rng_state()}


def save_checkpoint(run: Path, it: int, model: SceneModel, opt, gen: torch.Generator, fit_seconds: float,
                    inst=None, keep: int = 0) -> Path:
    """Write checkpoints/ckpt_<it>.pt and last.pt (a copy), each via a temporary file; then delete
    all but the newest `keep` numbered checkpoints (keep 0 = delete none)."""
    ckpt_dir = run / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    path = ckpt_dir / f"ckpt_{it:06d}.pt"
    tmp = path.with_suffix(".pt.tmp")
    state = {"iter": it, "model": model.state_dict(), "optimizer": opt.state_dict(), "rng": _rng_state(gen),
             "fit_seconds": fit_seconds, "box": model.box_dict()}
    if inst is not None:
        # the token count changes during training: store the tokens on their own so that a module of
        # the right size can be built before loading (InstanceTokens.from_state_dict)
        state["instance"] = {"tokens": inst.branch.tokens.state_dict(),
                             "class_head": inst.branch.class_head.state_dict(),
                             "thing_ids": inst.branch.thing_ids, "optimizer": inst.opt.state_dict(),
                             "strategy": inst.strategy.state_dict()}
    torch.save(state, tmp)
    tmp.replace(path)
    shutil.copyfile(path, ckpt_dir / "last.pt.tmp")
    (ckpt_dir / "last.pt.tmp").replace(ckpt_dir / "last.pt")
    if keep > 0:
        for old in sorted(ckpt_dir.glob("ckpt_*.pt"))[:-keep]:   # zero-padded names sort by iteration
            old.unlink()
    return path
