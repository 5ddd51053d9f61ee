"""tokens/slots.py: Panoptic Lifting's slot cost, matched cross-entropy and segment-consistency targets,
each against a hand-computed case; and the glue in recon/model/instance_branch.py on a tiny ray batch."""
import math

import torch

from recon.core.settings import TokenSettings
from recon.model.instance_branch import InstanceBranch, segment_consistency_loss, slot_losses
from recon.model.sampling import RayBatch
from tokens.assign import hungarian
from tokens.slots import IGNORE, frame_segments, segment_targets, slot_ce, slot_cost, slot_probs, slot_targets
from tokens.tokens import InstanceTokens

torch.set_num_threads(1)


def test_slot_cost_hand_computed_3_slots_2_masks():
    # 4 pixels; mask 0 = pixels {0, 1}, mask 1 = pixels {2, 3}. Slot probabilities per pixel (columns sum to 1):
    #   slot 0: .6 .2 .1 .1    slot 1: .3 .4 .1 .2    slot 2: .1 .4 .8 .7
    # cost[l, k] = -mean over mask l of slot k:
    #   mask 0: -(.6+.2)/2 = -.40, -(.3+.4)/2 = -.35, -(.1+.4)/2 = -.25
    #   mask 1: -(.1+.1)/2 = -.10, -(.1+.2)/2 = -.15, -(.8+.7)/2 = -.75
    pred = torch.tensor([[0.6, 0.2, 0.1, 0.1], [0.3, 0.4, 0.1, 0.2], [0.1, 0.4, 0.8, 0.7]])
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    cost = slot_cost(pred, targets)
    assert torch.allclose(cost, torch.tensor([[-0.40, -0.35, -0.25], [-0.10, -0.15, -0.75]]), atol=1e-6)
    # the Hungarian match: mask 0 -> slot 0 and mask 1 -> slot 2 (total -1.15; any other pair costs more)
    rows, cols = hungarian(cost)
    assert rows.tolist() == [0, 1] and cols.tolist() == [0, 2]
    # an empty mask costs 0 for every slot (no division by zero)
    assert torch.equal(slot_cost(pred, torch.zeros(1, 4)), torch.zeros(1, 3))


def test_slot_loss_after_matching_hand_computed():
    # 3 slots, 5 pixels: pixels 0-1 in mask 0 (matched to slot 2), pixels 2-3 in mask 1 (matched to slot 0),
    # pixel 4 in no mask (ignored). Slot 1 is unmatched: no pixel has it as its target.
    pred = torch.tensor([[0.1, 0.2, 0.5, 0.8, 0.3],
                         [0.1, 0.3, 0.4, 0.1, 0.3],
                         [0.8, 0.5, 0.1, 0.1, 0.4]], requires_grad=True)
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0, 0.0]])
    tgt = slot_targets(targets, torch.tensor([0, 1]), torch.tensor([2, 0]))
    assert tgt.tolist() == [2, 2, 0, 0, IGNORE]
    assert 1 not in tgt.tolist()                                   # the unmatched slot has no positive target
    # CE = mean over the 4 targeted pixels of -log p: (-ln .8 - ln .5 - ln .5 - ln .8) / 4
    #    = (0.223144 + 0.693147 + 0.693147 + 0.223144) / 4 = 0.458145
    loss = slot_ce(pred, tgt)
    assert abs(loss.item() - 0.458145) < 1e-5
    loss.backward()
    # d/dp of -ln p / 4 = -1 / (4 p) on the target entries only; everything else (pixel 4, slot 1) gets 0
    g = torch.zeros(3, 5)
    g[2, 0], g[2, 1], g[0, 2], g[0, 3] = -1 / 3.2, -1 / 2.0, -1 / 2.0, -1 / 3.2
    assert torch.allclose(pred.grad, g, atol=1e-6)
    # no targeted pixel: zero, attached to the graph
    z = slot_ce(pred, torch.full((5,), IGNORE))
    assert z.item() == 0.0 and z.requires_grad


def test_slot_probs_is_a_softmax_over_the_slots():
    # keys (1, 0) and (0, 2); slots (1, 0), (0, 1), (0, 0): logits (1, 0, 0) and (0, 2, 0)
    keys = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    e, e2 = math.e, math.e ** 2
    want = torch.tensor([[e / (e + 2), 1 / (e + 2), 1 / (e + 2)], [1 / (e2 + 2), e2 / (e2 + 2), 1 / (e2 + 2)]])
    assert torch.allclose(slot_probs(keys, q), want, atol=1e-6)
    # temperature 2 halves the logits
    assert torch.allclose(slot_probs(keys, q, 2.0), slot_probs(keys / 2, q), atol=1e-7)


def test_segment_consistency_targets_hand_computed():
    # classes: 1 floor (stuff), 2 chair (thing), 3 table (thing). 9 sampled pixels of one frame:
    #   pixel     0  1  2  3  4  5  6  7  8
    #   semantic  2  2  2  3  3  1  1  0  2
    #   instance  5  5  5  7  7  0  0  0  0
    # segments: mask 5 = {0, 1, 2}, mask 7 = {3, 4}, floor region = {5, 6}; pixel 7 unlabelled and pixel 8
    # (a thing pixel without a mask id) are in no segment.
    thing = torch.tensor([False, False, True, True])
    sem = torch.tensor([2, 2, 2, 3, 3, 1, 1, 0, 2])
    inst = torch.tensor([5, 5, 5, 7, 7, 0, 0, 0, 0])
    seg = frame_segments(inst, sem, thing)
    # keys: floor -> -1, mask 5 -> 5, mask 7 -> 7; sorted unique keys (-1, 5, 7) -> indices 0, 1, 2
    assert seg.tolist() == [1, 1, 1, 2, 2, 0, 0, IGNORE, IGNORE]
    # predicted classes: mask 5 votes (2, 3, 2) -> 2; mask 7 votes (3, 2) -> a tie, the smaller id 2 wins;
    # the floor votes (1, 1) -> 1
    pred = torch.tensor([2, 3, 2, 3, 2, 1, 1, 2, 3])
    assert segment_targets(pred, seg).tolist() == [2, 2, 2, 2, 2, 1, 1, IGNORE, IGNORE]
    # with min_pixels 3 only mask 5 is large enough
    assert segment_targets(pred, seg, min_pixels=3).tolist() == [2, 2, 2] + [IGNORE] * 6


def _rays(frame, semantic, instance) -> RayBatch:
    R = len(frame)
    return RayBatch(frame=torch.tensor(frame), pixel=torch.arange(R), origins=torch.zeros(R, 3),
                    dirs=torch.tensor([[0.0, 0.0, 1.0]]).repeat(R, 1), depth=torch.ones(R), rgb=torch.zeros(R, 3),
                    semantic=torch.tensor(semantic), instance=torch.tensor(instance))


def test_slot_losses_match_each_frame_on_its_own():
    # two frames of 4 rays; 2 slots; class 2 is the one thing class. Frame 0: mask 1 on rays 0-1, mask 2 on
    # rays 2-3; frame 1: mask 9 on rays 4-5, rays 6-7 stuff (class 1, no mask: ignored).
    tok = InstanceTokens(torch.zeros(2, 3), 1.0, 2, 2)
    branch = InstanceBranch(tok, [2], n_sem_columns=3, s=TokenSettings(formulation="slots", n_slots=2))
    assert branch.slots
    rays = _rays([0, 0, 0, 0, 1, 1, 1, 1], [2, 2, 2, 2, 2, 2, 1, 1], [1, 1, 2, 2, 9, 9, 0, 0])
    p = torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8], [0.4, 0.6],
                      [0.25, 0.75], [0.5, 0.5], [0.9, 0.1], [0.9, 0.1]], requires_grad=True)   # [R, K]
    res = slot_losses(branch, p, rays, min_pixels=1)
    # frame 0: mask 1 -> slot 0, mask 2 -> slot 1: CE = (-ln .9 - ln .7 - ln .8 - ln .6) / 4
    # frame 1: mask 9 -> slot 1 (mean .625 > .375): CE = (-ln .75 - ln .5) / 2; l_ins = mean over the 2 frames
    f0 = -(math.log(0.9) + math.log(0.7) + math.log(0.8) + math.log(0.6)) / 4
    f1 = -(math.log(0.75) + math.log(0.5)) / 2
    assert abs(res.l_ins.item() - (f0 + f1) / 2) < 1e-5
    assert (res.n_masks, res.n_matched) == (3, 3) and res.l_cls.item() == 0.0
    assert bool((res.pan_target == -1).all())
    res.l_ins.backward()
    assert float(p.grad[6:].abs().sum()) == 0.0                    # the stuff rays carry no instance target


def test_segment_consistency_loss_on_rays():
    # one frame, classes 0..2 with 2 a thing: mask 4 on rays 0-2, stuff class 1 on ray 3.
    rays = _rays([0, 0, 0, 0], [2, 2, 2, 1], [4, 4, 4, 0])
    probs = torch.tensor([[0.1, 0.2, 0.7], [0.1, 0.6, 0.3], [0.1, 0.3, 0.6], [0.1, 0.8, 0.1]])
    # argmax (2, 1, 2 | 1): the mask's majority is 2 -> targets (2, 2, 2, 1):
    # loss = (-ln .7 - ln .3 - ln .6 - ln .8) / 4
    want = -(math.log(0.7) + math.log(0.3) + math.log(0.6) + math.log(0.8)) / 4
    got = segment_consistency_loss(probs, rays, torch.tensor([False, False, True]), min_pixels=1)
    assert abs(got.item() - want) < 1e-5
