"""Eq. 27-31: assignment cost, Hungarian matching, instance and class losses, frame masks, split evidence."""
import math

import numpy as np
import torch

from tokens.assign import (assignment_cost, assignment_stats, bce_cost, class_loss, dice_cost, hungarian,
                           instance_loss, masks_from_frame)

torch.set_num_threads(1)


def test_dice_cost_hand_computed():
    # target M = (1,0,0). token 0 = (.5,.5,0): inter .5, sums 1 + 1 -> 1 - (1 + 1)/(2 + 1) = 1/3.
    # token 1 = (1,0,0): inter 1, sums 1 + 1 -> 1 - (2 + 1)/(2 + 1) = 0.
    pred = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    target = torch.tensor([[1.0, 0.0, 0.0]])
    assert torch.allclose(dice_cost(pred, target), torch.tensor([[1 / 3, 0.0]]), atol=1e-6)


def test_bce_cost_hand_computed():
    # token 0 = (.5,.5,.5) vs (1,0,1): every pixel costs ln 2 -> mean 0.693147.
    # token 1 = (.8,.2,.5) vs (1,0,1): (-ln .8 - ln .8 - ln .5) / 3 = (0.223144 * 2 + 0.693147) / 3 = 0.379811.
    pred = torch.tensor([[0.5, 0.5, 0.5], [0.8, 0.2, 0.5]])
    target = torch.tensor([[1.0, 0.0, 1.0]])
    assert torch.allclose(bce_cost(pred, target), torch.tensor([[0.693147, 0.379811]]), atol=1e-5)
    # exact 0 / 1 predictions are clamped: finite cost
    c = bce_cost(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]))
    assert bool(torch.isfinite(c).all()) and abs(float(c) - (-math.log(1e-6))) < 1e-2  # float32 rounding of 1 - 1e-6
    assert assignment_cost(pred, target).shape == (1, 2)


def test_hungarian_square_and_more_masks_than_tokens():
    # [[4,1,3],[2,0,5],[3,2,2]]: best = (0->1) + (1->0) + (2->2) = 1 + 2 + 2 = 5.
    r, c = hungarian(torch.tensor([[4.0, 1, 3], [2, 0, 5], [3, 2, 2]]))
    assert r.tolist() == [0, 1, 2] and c.tolist() == [1, 0, 2]
    # 3 masks, 2 tokens [[1,5],[2,3],[0,9]]: the best pair of pairs is (1->1) + (2->0) = 3 + 0 = 3.
    r, c = hungarian(np.array([[1.0, 5], [2, 3], [0, 9]]))
    assert r.tolist() == [1, 2] and c.tolist() == [1, 0]
    # NaN is treated as a very large cost
    r, c = hungarian(torch.tensor([[float("nan"), 1.0], [0.0, 2.0]]))
    assert r.tolist() == [0, 1] and c.tolist() == [1, 0]
    r, c = hungarian(torch.zeros(0, 3))
    assert r.numel() == 0 and c.numel() == 0


def test_instance_loss_hand_computed():
    # 2 tokens, 2 pixels, one mask (1, 0) matched to token 1.
    # token 0 (unmatched, target (0,0)), pred (.5,.5): bce = ln 2 = 0.693147, no dice.
    # token 1, pred (.8,.2) vs (1,0): bce = -ln .8 = 0.223144; dice = 1 - (2*.8 + 1)/(1 + 1 + 1) = 0.133333.
    # with dice: (0.693147 + 0.223144 + 0.133333) / 2 = 0.524812; without: 0.458145.
    pred = torch.tensor([[0.5, 0.5], [0.8, 0.2]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0]])
    rows, cols = torch.tensor([0]), torch.tensor([1])
    loss = instance_loss(pred, target, rows, cols, use_dice=True)
    assert abs(loss.item() - 0.524812) < 1e-5
    assert abs(instance_loss(pred, target, rows, cols, use_dice=False).item() - 0.458145) < 1e-5
    # unmatched weight 0: only token 1 counts: (0.223144 + 0.133333) / 2 = 0.178238
    assert abs(instance_loss(pred, target, rows, cols, True, unmatched_weight=0.0).item() - 0.178238) < 1e-5
    loss.backward()
    # d loss / d pred, loss = (bce_0 + bce_1 + dice_1) / 2 (mean over the N = 2 tokens), bce a mean over P = 2:
    #   token 0 (target 0): d(-ln(1 - p) / 2) / dp = 1 / (2 (1 - p)) = 1 at p = .5 -> / 2 = 0.5 per pixel:
    #   pushed towards 0
    #   token 1, bce: pixel 0 (target 1) -1 / (2 * .8) = -0.625; pixel 1 (target 0) 1 / (2 * .8) = 0.625
    #   dice = 1 - (2 p0 + 1) / (p0 + p1 + 1 + 1): numerator 2.6, denominator 3;
    #     d/dp0 = -(2 * 3 - 2.6) / 9 = -17/45, d/dp1 = 2.6 / 9 = 13/45
    #   -> (-5/8 - 17/45) / 2 = -361/720 = -0.501389, (5/8 + 13/45) / 2 = 329/720 = 0.456944
    assert torch.allclose(pred.grad, torch.tensor([[0.5, 0.5], [-361 / 720, 329 / 720]]), atol=1e-6)


def test_class_loss_hand_computed():
    # matched token 1 with logits (2, -1), class 0 -> one-hot (1, 0):
    # log(1 + e^-2) + log(1 + e^-1) = 0.126928 + 0.313262 = 0.440190 (mean over K = 1).
    logits = torch.tensor([[0.0, 0.0], [2.0, -1.0]], requires_grad=True)
    loss = class_loss(logits, torch.tensor([0]), torch.tensor([1]))
    assert abs(loss.item() - 0.440190) < 1e-5
    loss.backward()
    # unmatched token 0 gets nothing; d BCE-with-logits / dz = sigmoid(z) - target:
    # sigmoid(2) - 1 = -0.119203, sigmoid(-1) - 0 = 0.268941
    assert float(logits.grad[0].abs().sum()) == 0.0
    assert torch.allclose(logits.grad[1], torch.tensor([-0.119203, 0.268941]), atol=1e-6)
    empty = class_loss(logits, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    assert empty.item() == 0.0 and empty.requires_grad


def test_masks_from_frame():
    # pixels: mask 3 at 1,2 (class 4); mask 5 at 3,4 (class 4, str key); mask 7 at 5 (class 2 = stuff).
    inst = torch.tensor([0, 3, 3, 5, 5, 7])
    sem = torch.tensor([1, 4, 4, 4, 4, 2])
    scores = {3: {"class": 4, "score": 0.9}, "5": {"class": 4, "score": 0.8}, 7: {"class": 2, "score": 0.5}}
    targets, classes, ids = masks_from_frame(inst, sem, scores, thing_class_ids=[4, 6], min_pixels=2)
    assert ids.tolist() == [3, 5] and classes.tolist() == [0, 0]
    assert targets.tolist() == [[0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 0]]
    # no score entry: class from the semantic pixels (6 -> thing index 1)
    t, c, i = masks_from_frame(torch.tensor([2, 2, 0]), torch.tensor([6, 6, 1]), {}, [4, 6])
    assert i.tolist() == [2] and c.tolist() == [1] and t.tolist() == [[1, 1, 0]]
    t, c, i = masks_from_frame(inst, sem, scores, [4, 6], min_pixels=3)
    assert t.shape == (0, 6) and c.numel() == 0 and i.numel() == 0


def test_assignment_stats_records_stolen_token():
    # both masks cost least at token 0; the match is (0->0) + (1->2) = 0.1 + 0.3 = 0.4,
    # so mask 1 lost token 0 to mask 0: evidence (token 0, mask 0, mask 1).
    cost = torch.tensor([[0.1, 0.5, 0.9], [0.2, 0.6, 0.3]])
    rows, cols = hungarian(cost)
    assert cols.tolist() == [0, 2]
    assert assignment_stats(cost, rows, cols) == [(0, 0, 1)]
    # one mask per token at its own minimum: no evidence
    cost = torch.tensor([[0.1, 0.5], [0.6, 0.2]])
    rows, cols = hungarian(cost)
    assert assignment_stats(cost, rows, cols) == []
