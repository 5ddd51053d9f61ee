"""End to end: the Panoptic Lifting baseline (tokens.formulation=slots) fits, labels and evaluates a tiny
scene like our method, and gives two separated objects of one class two instance ids."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from app.pipeline import evaluate, fit_scene
from recon.core.config import load_config
from recon.core.settings import FitSettings
from recon.data.ply import read_ply
from recon.train.runs import load_run_full
from tests.app.test_instance_fit import BOX_CENTRES, make_two_box_scene
from tests.tiny_settings import TINY_FIELDS

N_SLOTS = 5
TINY_SLOTS = TINY_FIELDS + [
    # a short schedule: higher learning rates, and half of a frame's rays on the masks (the boxes are small)
    "train.iters=150", "train.geometry_only_iters=20", "train.pan_start_iters=90", "loss.w_sem=0.5",
    "train.lr_grid=0.03", "train.lr_mlp=0.006", "train.mask_ray_fraction=0.5", "train.mask_ray_stuff=true",
    "train.log_every=10", "train.checkpoint_every=1000", "train.threads=1", "appearance.branch=colour_head",
    # the baseline's overrides (the bench method "panoptic_lifting")
    "tokens.formulation=slots", f"tokens.n_slots={N_SLOTS}", "tokens.segment_consistency=1.2",
    "tokens.spatial_prior=false", "tokens.adjust=false", "panoptic.head=false", "panoptic.merge_fragments=false",
]


@pytest.fixture(scope="module")
def slot_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pl_baseline")
    scene = make_two_box_scene(root / "scene", n_frames=12)
    run = root / "run"
    fit_scene(scene, run, load_config(FitSettings, None, TINY_SLOTS), progress=False)
    return scene, run


def _box_ids(v: np.ndarray, inst: np.ndarray, centre: np.ndarray) -> np.ndarray:
    near = (np.linalg.norm(v - centre, axis=1) < 0.45) & (v[:, 2] > 0.05)     # box faces, not the floor
    return inst[near]


def test_slots_fit_separates_two_objects_and_evaluates(slot_run):
    scene, run = slot_run
    v, _, _, props = read_ply(run / "mesh.ply")
    ids = []
    for c in BOX_CENTRES:
        got = _box_ids(v, props["instance"], c)
        assert len(got) > 20, "the box surface is missing from the mesh"
        labelled = got[got > 0]
        assert len(labelled) > 0.8 * len(got), f"box at {c}: only {len(labelled)} of {len(got)} vertices have an id"
        vals, counts = np.unique(labelled, return_counts=True)
        assert counts.max() > 0.8 * len(labelled), f"box at {c} is split over ids {dict(zip(vals, counts))}"
        ids.append(int(vals[counts.argmax()]))
        assert np.mean(_box_ids(v, props["semantic"], c) == 2) > 0.8
    assert ids[0] != ids[1], "two separated boxes of one class share an instance id"
    floor = (np.abs(v[:, 2]) < 0.02) & (np.linalg.norm(v[:, :2], axis=1) > 1.6)
    assert np.mean(props["instance"][floor] == 0) > 0.9                      # stuff carries no instance

    # the slot loss was trained (logged as loss/ins with masks matched) and the segment term joined
    rows = (run / "metrics.csv").read_text().splitlines()
    head = rows[0].split(",")
    last = dict(zip(head, rows[-1].split(",")))
    assert float(last["loss/tokens"]) == N_SLOTS and float(last["loss/matched"]) > 0
    assert float(last["loss/ins"]) < 0.5 and "loss/seg" in head and "loss/pan" not in head

    # the run loads back with its K slots; one instance id per slot, as for tokens
    s, model, branch, _ = load_run_full(run, device="cpu", log=lambda *_: None)
    assert branch.slots and branch.tokens.n == N_SLOTS
    doc = json.loads((run / "instances.json").read_text())
    assert sorted(doc["token_ids"]) == list(range(1, N_SLOTS + 1))
    with torch.no_grad():
        x = torch.tensor(BOX_CENTRES + np.array([0.0, 0.0, 0.31]), dtype=torch.float32)   # the boxes' top faces
        p = branch.probs(model.instance_keys(x), x)
    assert torch.allclose(p.sum(-1), torch.ones(2), atol=1e-5)               # a softmax over the slots

    # evaluated as the bench evaluates ours: the label images against the GT, two box instances found
    m = evaluate(run, scene, baseline=False, rendering=False, log=lambda *_: None)
    assert json.loads((run / "metrics.json").read_text()) == json.loads(json.dumps(m))
    assert m["instance_2d"]["n_pred_instances"] == 2, m["instance_2d"]
    assert m["panoptic_2d"]["pq_things"] > 70 and m["semantic_2d"]["miou"] > 80, (m["panoptic_2d"], m["semantic_2d"])
