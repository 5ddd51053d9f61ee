"""`recon.train.step.train_step`: the stage gating of the loss terms on a tiny real scene.

Guards the training schedule (docs/method.md, training schedule): before train.geometry_only_iters only
the geometry terms (sdf, free, eik, depth, rgb); from there the semantic and instance terms (sem, ins,
cls); from train.pan_start_iters L_pan as well, but only with the panoptic head (panoptic.head) and
w_pan > 0; from train.dice_off_iters L_ins without its dice part; and total = the weighted sum of the
terms returned. The objects are built as recon/train/loop.py builds them.

Schedule used here: geometry_only_iters = 2, pan_start_iters = 4, dice_off_iters = 6, so the boundaries
are it = 1 | 2, 3 | 4 and 5 | 6.
"""
from __future__ import annotations

import math

import pytest
import torch

import recon.train.step as step_module
from recon.core.config import load_config
from recon.core.settings import FitSettings, SynthSettings
from recon.data.make_synth import make_synth_scene
from recon.data.scene import load_scene
from recon.model.inference import far_plane
from recon.model.instance_branch import InstanceBranch, init_tokens_from_bank
from recon.model.sampling import build_frame_bank
from recon.train.optim import make_optimizer
from recon.train.runs import build_model_for_scene, make_instance_state, train_indices
from recon.train.step import train_step

MICRO = [
    "model.sdf_grid.n_levels=4", "model.sdf_grid.log2_hashmap_size=10", "model.sdf_grid.finest_cell_m=0.2",
    "model.semantic_grid.n_levels=2", "model.semantic_grid.log2_hashmap_size=8",
    "model.semantic_grid.finest_cell_m=0.4", "model.instance_grid.n_levels=2",
    "model.instance_grid.log2_hashmap_size=8", "model.instance_grid.finest_cell_m=0.4",
    "tokens.feat_dim=4", "tokens.class_dim=4", "model.sdf_hidden=8", "model.semantic_hidden=8",
    "model.instance_hidden=8", "model.color_hidden=8", "render.n_stratified=3", "render.n_surface=4",
    "train.rays_per_iter=128", "train.frames_per_iter=2", "train.mask_ray_fraction=0.5",
    "tokens.min_mask_pixels=2", "train.device=cpu",
    "train.geometry_only_iters=2", "train.pan_start_iters=4", "train.dice_off_iters=6",
]
GEOMETRY = {"sdf", "free", "eik", "depth", "rgb", "total"}  # rgb: the colour head still shapes the SDF (appearance.branch=both)
STATS = {"tokens", "masks", "matched", "match_cost"}


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    out = tmp_path_factory.mktemp("step") / "room"
    make_synth_scene(SynthSettings(size=(32, 24), frames=4, holdout_every=0), out, log=lambda *_: None)
    return load_scene(out)


def _build(scene, *overrides: str, with_instance: bool = True):
    """(model, opt, bank, settings, gen, far, inst) as recon/train/loop.py makes them for a fresh fit."""
    s = load_config(FitSettings, None, MICRO + list(overrides))
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    idx = train_indices(scene, s)
    model = build_model_for_scene(scene, s, idx, with_instance=with_instance)
    bank = build_frame_bank(scene, idx, with_masks=True)
    far = far_plane(bank, s)
    inst = None
    if with_instance:
        tokens = init_tokens_from_bank(bank, scene.thing_ids(), s.tokens, gen)
        inst = make_instance_state(InstanceBranch(tokens, scene.thing_ids(), scene.n_classes, s.tokens), s,
                                   lambda msg: None)
    opt = make_optimizer(model, s, inst.branch if inst else None)
    return model, opt, bank, s, gen, far, inst


def _run(scene, its, *overrides: str, with_instance: bool = True) -> dict[int, dict[str, float]]:
    model, opt, bank, s, gen, far, inst = _build(scene, *overrides, with_instance=with_instance)
    return {it: train_step(model, opt, bank, s, it, gen, far, inst) for it in its}


def test_terms_per_stage_with_the_panoptic_head(scene):
    vals = _run(scene, range(7))
    for it in (0, 1):                                                 # it < geometry_only_iters = 2
        assert set(vals[it]) == GEOMETRY, it
    for it in (2, 3):                                                 # 2 <= it < pan_start_iters = 4
        assert set(vals[it]) == GEOMETRY | {"sem", "ins", "cls"} | STATS, it
    for it in (4, 5, 6):                                              # it >= pan_start_iters
        assert set(vals[it]) == GEOMETRY | {"sem", "ins", "cls", "pan"} | STATS, it
    for it, v in vals.items():
        assert all(math.isfinite(x) for k, x in v.items() if k != "match_cost"), (it, v)
        # total = the weighted sum with the default weights w_sdf 10, w_free 1, w_eik 0.1, w_depth 0.1,
        # w_rgb 1, w_sem 0.1, w_ins 1, w_cls 0.1, w_pan 0.5 (terms absent at this stage count 0)
        total = (10 * v["sdf"] + v["free"] + 0.1 * v["eik"] + 0.1 * v["depth"] + v.get("rgb", 0.0)
                 + 0.1 * v.get("sem", 0.0) + v.get("ins", 0.0) + 0.1 * v.get("cls", 0.0) + 0.5 * v.get("pan", 0.0))
        assert v["total"] == pytest.approx(total, rel=1e-5, abs=1e-6), it
        if "ins" in v:
            assert v["masks"] >= v["matched"] > 0 and v["tokens"] >= 1 and v["ins"] > 0
        if "pan" in v:
            assert v["pan"] > 0


def test_no_pan_without_the_head_or_its_weight(scene):
    for extra in ("panoptic.head=false", "loss.w_pan=0"):
        vals = _run(scene, (1, 4, 6), extra)
        assert set(vals[1]) == GEOMETRY, extra
        assert set(vals[4]) == set(vals[6]) == GEOMETRY | {"sem", "ins", "cls"} | STATS, extra


def test_no_instance_terms_without_a_branch(scene):
    vals = _run(scene, (1, 2, 4), with_instance=False)
    assert set(vals[1]) == GEOMETRY
    assert set(vals[2]) == set(vals[4]) == GEOMETRY | {"sem"}
    # and no semantic term with w_sem = 0 (the instance terms stay)
    vals = _run(scene, (2,), "loss.w_sem=0")
    assert set(vals[2]) == GEOMETRY | {"ins", "cls"} | STATS


def test_dice_is_dropped_from_dice_off_iters(scene, monkeypatch):
    seen: list[tuple[int, bool]] = []
    real = step_module.assignment_losses

    def spy(*args, use_dice, it, **kw):
        seen.append((it, use_dice))
        return real(*args, use_dice=use_dice, it=it, **kw)

    monkeypatch.setattr(step_module, "assignment_losses", spy)
    _run(scene, range(8))
    # called from it = 2 (labels on); dice on before dice_off_iters = 6, off from it = 6
    assert seen == [(2, True), (3, True), (4, True), (5, True), (6, False), (7, False)]
    seen.clear()
    _run(scene, (2, 6, 100), "train.dice_off_iters=0")                # 0 = never off
    assert seen == [(2, True), (6, True), (100, True)]


def test_dice_off_changes_only_the_instance_term(scene):
    # the same fresh state and random stream, one step at it = 5 (dice on) and one at it = 6 (dice off):
    # the rays, renders and the match are identical, so every term but ins agrees and
    # ins(6) = ins(5) - (the dice part >= 0, > 0 for matched masks)
    on = _run(scene, (5,))[5]
    off = _run(scene, (6,))[6]
    for k in ("sdf", "free", "eik", "depth", "rgb", "sem", "cls", "pan", "masks", "matched", "match_cost"):
        assert off[k] == on[k], k
    assert off["ins"] < on["ins"] - 1e-4


def test_colour_head_only_in_its_ablation(scene):
    """appearance.branch=gaussians: the colour head is not evaluated, so it gets no gradient and colour cannot
    shape the SDF; both / colour_head: the rgb term is back and trains it."""
    for branch, has_rgb in (("gaussians", False), ("both", True), ("colour_head", True)):
        model, opt, bank, s, gen, far, inst = _build(scene, f"appearance.branch={branch}")
        v = train_step(model, opt, bank, s, 0, gen, far, inst)
        assert ("rgb" in v) == has_rgb, branch
        grads = [p.grad for p in model.color_head.parameters()]
        assert all(g is None for g in grads) != has_rgb, branch
