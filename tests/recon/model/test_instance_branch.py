"""The trainer's instance-branch glue on hand-made cases: assignment per frame, labels, ids, switches."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from recon.data.run_files import face_labels
from recon.model.instance_branch import InstanceBranch, assignment_losses, count_clusters, backproject
from recon.model.inference import labels_from_distributions
from recon.postfit.labelled_mesh import apply_ids, token_id_map
from recon.model.panoptic_head import IGNORE
from recon.core.runfolder import RunLog
from recon.model.sampling import FrameBank, RayBatch
from recon.core.settings import TokenSettings
from tokens.adjust import AdjustConfig, TokenAdjustStrategy
from tokens.tokens import InstanceTokens

# classes: 0 unlabelled, 1 wall (stuff), 2 chair (thing), 3 table (thing) -> stuff columns [0, 1]
THINGS = [2, 3]


def _branch(n_tokens: int = 3, spatial_prior: bool = True) -> InstanceBranch:
    means = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [4.0, 0.0, 0.0]])[:n_tokens]
    tok = InstanceTokens(means, 0.5, feat_dim=4, class_dim=4)
    return InstanceBranch(tok, THINGS, n_sem_columns=4, s=TokenSettings(spatial_prior=spatial_prior))


def _rays(frame, sem, inst) -> RayBatch:
    R = len(frame)
    z = torch.zeros(R, 3)
    return RayBatch(frame=torch.tensor(frame), pixel=torch.arange(R), origins=z, dirs=z, depth=torch.ones(R),
                    rgb=z, semantic=torch.tensor(sem), instance=torch.tensor(inst))


def test_layout_and_switches():
    b = _branch()
    assert b.n_stuff == 2 and b.stuff_ids.tolist() == [0, 1] and b.thing_mask.tolist() == [False, False, True, True]
    keys = torch.randn(5, 4)
    pts = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0], [9.0, 0, 0], [0.5, 0, 0]])
    with_g = b.probs(keys, pts)
    b_off = _branch(spatial_prior=False)
    b_off.tokens.load_state_dict(b.tokens.state_dict())
    no_g = b_off.probs(keys, pts)
    s = torch.sigmoid(keys @ b.tokens.features.T)
    torch.testing.assert_close(no_g, s)                                   # G = 1 with the prior off
    g = torch.exp(-0.5 * ((pts[:, None, 0] - b.tokens.means[None, :, 0]) / 0.5) ** 2)
    torch.testing.assert_close(with_g, s * g)


def test_assignment_losses_per_frame_hand_case():
    b = _branch()
    # frame 0: mask 7 (chair) on rays 0-1, wall on ray 2, unlabelled ray 3; frame 1: mask 1 (table) on ray 4,
    # mask 2 (chair) on ray 5
    rays = _rays([0, 0, 0, 0, 1, 1], [2, 2, 1, 0, 3, 2], [7, 7, 0, 0, 1, 2])
    masks = torch.tensor([[0.9, 0.1, 0.1],    # token 0 covers rays 0-1
                          [0.8, 0.2, 0.1],
                          [0.1, 0.1, 0.1],
                          [0.5, 0.5, 0.5],
                          [0.1, 0.9, 0.1],    # token 1 on ray 4
                          [0.1, 0.1, 0.9]],   # token 2 on ray 5
                         requires_grad=True)
    strat = TokenAdjustStrategy(AdjustConfig(every_iters=10, window_iters=10))
    res = assignment_losses(b, masks, rays, use_dice=True, min_pixels=1, strategy=strat, it=0)
    # frame 0: mask 7 -> token 0; frame 1: mask 1 -> token 1, mask 2 -> token 2
    assert res.pan_target.tolist() == [2 + 0, 2 + 0, 1, IGNORE, 2 + 1, 2 + 2]
    assert res.n_masks == 3 and res.n_matched == 3
    assert [e[1] for e in strat.events] == [[0], [1, 2]]
    res.l_ins.backward()
    assert masks.grad is not None and masks.grad[3].abs().sum() == 0    # the unlabelled ray is left out
    # L_ins of frame 0 by hand: pred over labelled rays 0..2, token 0 matched to [1, 1, 0]
    p = masks.detach()[:3].T
    t = torch.zeros(3, 3)
    t[0] = torch.tensor([1.0, 1.0, 0.0])
    bce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean(1)
    dice0 = 1 - (2 * (p[0] * t[0]).sum() + 1) / (p[0].sum() + 2 + 1)
    l0 = (bce.sum() + dice0) / 3
    p1 = masks.detach()[4:].T
    t1 = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    bce1 = -(t1 * torch.log(p1) + (1 - t1) * torch.log(1 - p1)).mean(1)
    dice1 = sum(1 - (2 * (p1[k] * t1[k]).sum() + 1) / (p1[k].sum() + 1 + 1) for k in (1, 2))
    l1 = (bce1.sum() + dice1) / 3
    assert math.isclose(float(res.l_ins.detach()), float((l0 + l1) / 2), rel_tol=1e-5)


def test_blind_matches_report_the_mask_centroid_to_the_strategy():
    b = _branch()
    # one frame, two chair masks: mask 7 on rays 0-1 (token 0 renders it), mask 8 on rays 2-3 that no token
    # renders; the Hungarian match still gives mask 8 a token, blindly
    rays = _rays([0, 0, 0, 0], [2, 2, 2, 2], [7, 7, 8, 8])
    rays.dirs = torch.tensor([[0.0, 0, 1], [0.0, 0, 1], [1.0, 0, 0], [0.0, 1, 0]])
    rays.depth = torch.tensor([1.0, 1.0, 2.0, 4.0])          # mask 8's points: (2, 0, 0) and (0, 4, 0)
    masks = torch.tensor([[0.9, 0.1, 0.1], [0.9, 0.1, 0.1], [0.01, 0.02, 0.01], [0.01, 0.02, 0.01]])
    strat = TokenAdjustStrategy(AdjustConfig(blind_max_overlap=0.1))
    assignment_losses(b, masks, rays, use_dice=True, min_pixels=1, strategy=strat, it=0)
    _, cols, _, blind = strat.events[-1]
    assert cols[0] == 0 and len(blind) == 1
    tok, centroid = blind[0]
    assert tok == cols[1] and tok != 0
    assert np.allclose(centroid, (1.0, 2.0, 0.0))             # the mean of mask 8's back-projected points
    off = TokenAdjustStrategy(AdjustConfig())                  # the rule off: no blind bookkeeping
    assignment_losses(b, masks, rays, use_dice=True, min_pixels=1, strategy=off, it=0)
    assert off.events[-1][3] == []


def test_labels_from_distributions_head_on_and_off():
    b = _branch(n_tokens=2)
    with torch.no_grad():                                                # token 0 -> chair (2), token 1 -> table (3)
        for p in b.class_head.parameters():
            p.zero_()
        b.class_head.net[2].bias.copy_(torch.tensor([1.0, -1.0]))
        b.tokens.class_features.zero_()
        b.class_head.net[2].weight.zero_()
    # head: columns [unlabelled, wall, token0, token1]
    pan = torch.tensor([[0.1, 0.7, 0.1, 0.1], [0.0, 0.2, 0.3, 0.5], [0.0, 0.1, 0.8, 0.1]])
    sem, tok = labels_from_distributions(b, True, None, None, pan)
    assert sem.tolist() == [1, 2, 2] and tok.tolist() == [-1, 1, 0]      # token 1's class head says chair too
    # head off: class from the semantic field, argmax token on thing points only
    sem_p = torch.tensor([[0.0, 0.9, 0.05, 0.05], [0.0, 0.1, 0.2, 0.7]])
    tok_p = torch.tensor([[0.9, 0.1], [0.2, 0.6]])
    sem, tok = labels_from_distributions(b, False, sem_p, tok_p)
    assert sem.tolist() == [1, 3] and tok.tolist() == [-1, 1]


def test_labels_keep_a_thing_class_no_token_carries():
    """With the head, classes come from the tokens: both tokens here are chairs (2), so table (3) could never be
    named. keep_untokened_classes: where the semantic field's most likely class is table, the point keeps
    'table' (its instance stays the head's token); where the field names a class a token carries (chair) or a
    stuff class (wall), or the rule is off, the head decides."""
    b = _branch(n_tokens=2)
    with torch.no_grad():
        for p in b.class_head.parameters():
            p.zero_()
        b.class_head.net[2].bias.copy_(torch.tensor([1.0, -1.0]))          # every token -> chair
    # columns: sem [unlabelled, wall, chair, table]; head [unlabelled, wall, token0, token1]
    sem_p = torch.tensor([[0.0, 0.1, 0.2, 0.7],                          # the field: table
                          [0.0, 0.1, 0.6, 0.3],                          # chair
                          [0.0, 0.6, 0.1, 0.3]])                         # wall
    pan = torch.tensor([[0.0, 0.1, 0.2, 0.7], [0.0, 0.1, 0.6, 0.3], [0.0, 0.2, 0.5, 0.3]])
    assert b.keep_untokened_classes is False
    sem, tok = labels_from_distributions(b, True, sem_p, None, pan)
    assert sem.tolist() == [2, 2, 2] and tok.tolist() == [1, 0, 0]
    b.keep_untokened_classes = True
    sem, tok = labels_from_distributions(b, True, sem_p, None, pan)
    assert sem.tolist() == [3, 2, 2] and tok.tolist() == [1, 0, 0]
    sem, tok = labels_from_distributions(b, True, None, None, pan)      # no field distribution given: the head
    assert sem.tolist() == [2, 2, 2]


def test_token_ids_faces_and_clusters():
    ids = token_id_map(4, np.array([-1, 2, 2, 0, -1]))
    assert ids.tolist() == [1, 3, 2, 4]                                  # owners 0, 2 first, then 1, 3
    assert apply_ids(np.array([[-1, 2], [3, 0]]), ids).tolist() == [[0, 2], [4, 1]]
    faces = np.array([[0, 1, 2], [2, 3, 4], [0, 3, 4]])
    lab = np.array([5, 5, 6, 7, 8])
    assert face_labels(faces, lab).tolist() == [5, 6, 5]
    cents = np.array([[0, 0, 0], [0.1, 0, 0], [0.05, 0, 0], [3, 0, 0]])
    assert count_clusters(cents, [2, 2, 3, 2], radius_m=0.3) == 3


def test_backproject_hand_case():
    bank = FrameBank(K=np.eye(3), width=2, height=1, frame_index=[0], c2w=torch.eye(4)[None],
                     dirs_cam_unit=torch.tensor([[0.0, 0.0, 1.0], [0.6, 0.0, 0.8]]), ray_scale=torch.ones(2),
                     depth_ray_m=torch.tensor([[2.0, 5.0]]), rgb=torch.zeros(1, 2, 3, dtype=torch.uint8),
                     semantic=None, instance=None)
    bank.c2w[0, :3, 3] = torch.tensor([1.0, 0.0, 0.0])
    pts = backproject(bank, 0, torch.tensor([0, 1]))
    torch.testing.assert_close(pts, torch.tensor([[1.0, 0.0, 2.0], [4.0, 0.0, 4.0]]))


def test_runlog_widens_csv_for_later_stages(tmp_path):
    log = RunLog(tmp_path, append=False)
    log.scalars(10, {"loss/sdf": 1.0})
    log.scalars(20, {"loss/sdf": 0.5, "loss/ins": 0.3})
    log.close()
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert list(rows[0]) == ["iter", "loss/sdf", "loss/ins"]
    assert rows[0]["loss/ins"] == "" and float(rows[1]["loss/ins"]) == pytest.approx(0.3)


def test_resume_accepts_runs_from_before_a_setting_was_added(tmp_path):
    import yaml

    from recon.core.runfolder import check_run_folder
    old = {"train": {"iters": 10, "seed": 0}, "mesh": {"voxel_size_m": 0.02}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    (tmp_path / "scene.txt").write_text("/some/scene\n")          # an older run: config.yaml + scene.txt, no marker
    defaults = {"train": {"iters": 5, "seed": 0, "monitor_every": 0}, "mesh": {"voxel_size_m": 0.02},
                "panoptic": {"head": True}}
    newer = {"train": {"iters": 20, "seed": 0, "monitor_every": 0}, "mesh": {"voxel_size_m": 0.02},
             "panoptic": {"head": True}}
    assert check_run_folder(tmp_path, newer, resume=True, force=False, defaults=defaults) == "resume"
    # a setting the old run did not have, but set to something other than its default: a different run
    off = {**newer, "panoptic": {"head": False}}
    with pytest.raises(FileExistsError):
        check_run_folder(tmp_path, off, resume=True, force=False, defaults=defaults)
    changed = {**newer, "train": {"iters": 20, "seed": 1, "monitor_every": 0}}
    with pytest.raises(FileExistsError):
        check_run_folder(tmp_path, changed, resume=True, force=False, defaults=defaults)
