"""Parameter-free panoptic head (Eq. 18-21), panoptic loss / targets (Eq. 33) and inference (Fig. 5)."""
import math

import torch

from recon.model.panoptic_head import panoptic_inference, panoptic_layout, panoptic_loss, panoptic_probs, panoptic_targets

torch.set_num_threads(1)

THING = torch.tensor([False, False, True, True])   # columns: wall, floor (stuff); chair, table (thing)


def test_hand_computed_two_stuff_two_thing_two_tokens():
    # sem = (.1, .2, .3, .4): P(thing) = .7; l_I = (.6, .2) -> l_I / sum = (.75, .25)
    # l_P = (.1, .2, .7 * .75, .7 * .25) = (.1, .2, .525, .175), sum 1.
    sem = torch.tensor([0.1, 0.2, 0.3, 0.4])
    inst = torch.tensor([0.6, 0.2])
    out = panoptic_probs(sem, inst, THING)
    assert torch.allclose(out, torch.tensor([0.1, 0.2, 0.525, 0.175]), atol=1e-6)
    assert abs(float(out.sum()) - 1.0) < 1e-6
    # every token ~ 0: the thing mass is split evenly, (.35, .35)
    out0 = panoptic_probs(sem, torch.zeros(2), THING)
    assert torch.allclose(out0, torch.tensor([0.1, 0.2, 0.35, 0.35]), atol=1e-6)


def test_sums_to_one_batched():
    g = torch.Generator().manual_seed(0)
    sem = torch.softmax(torch.randn(5, 7, 4, generator=g), -1)
    inst = torch.rand(5, 7, 3, generator=g) * torch.tensor([1.0, 1e-9, 0.0])   # includes tiny / zero tokens
    out = panoptic_probs(sem, inst, THING)
    assert out.shape == (5, 7, 2 + 3)
    assert torch.allclose(out.sum(-1), torch.ones(5, 7), atol=1e-6)
    assert bool((out >= 0).all())


def test_loss_and_its_gradients_hand_computed():
    sem_logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]])).requires_grad_(True)
    inst = torch.tensor([[0.6, 0.2]], requires_grad=True)
    pan = panoptic_probs(torch.softmax(sem_logits, -1), inst, THING)
    # target = token 0 (column 2): -log(.525) = 0.644357; the ignored ray does not count
    pan2 = torch.cat([pan, pan])
    loss = panoptic_loss(pan2, torch.tensor([2, -1]))
    assert abs(loss.item() - (-math.log(0.525))) < 1e-5
    loss.backward()
    # loss = -log P(thing) - log(l_I0 / (l_I0 + l_I1)) (eps 1e-6 aside), P(thing) = s_2 + s_3, s = softmax(z).
    # d/dl_I0 = -1/.6 + 1/.8 = -5/12, d/dl_I1 = 1/.8 = 1.25: raising token 0 / lowering token 1 lowers it.
    torch.testing.assert_close(inst.grad, torch.tensor([[-5 / 12, 1.25]]), atol=1e-5, rtol=0)
    # d(-log P(thing))/dz_k = -(s_k / P) (1[k thing] - P), P = .7: stuff k: s_k = .1, .2;
    # thing k: -s_k * .3 / .7 = -.3 * 3/7 = -0.128571, -.4 * 3/7 = -0.171429 (the gradients sum to 0)
    torch.testing.assert_close(sem_logits.grad, torch.tensor([[0.1, 0.2, -0.9 / 7, -1.2 / 7]]), atol=1e-5, rtol=0)
    all_ignored = panoptic_loss(pan2, torch.tensor([-1, -1]))
    assert all_ignored.item() == 0.0 and all_ignored.requires_grad


def test_layout_and_targets():
    # semantic columns = class ids 0..4: 0 unlabelled, 1 wall, 2 floor (stuff), 3 chair, 4 table (thing)
    thing_mask, stuff_ids, stuff_index = panoptic_layout(5, [3, 4])
    assert thing_mask.tolist() == [False, False, False, True, True]
    assert stuff_ids.tolist() == [0, 1, 2] and stuff_index == {0: 0, 1: 1, 2: 2}
    sem = torch.tensor([0, 1, 2, 3, 3, 4])
    inst = torch.tensor([0, 0, 0, 7, 9, 0])
    # unlabelled -> -1; wall -> 1; floor -> 2; mask 7 matched to token 1 -> 3 + 1 = 4;
    # mask 9 unmatched -> -1; thing class without a mask -> -1
    t = panoptic_targets(sem, inst, stuff_index, {7: 1})
    assert t.tolist() == [-1, 1, 2, 4, -1, -1]


def test_inference_consistency():
    stuff_ids = torch.tensor([0, 1, 2])
    token_class = torch.tensor([4, 3])
    pan = torch.tensor([[0.1, 0.6, 0.1, 0.1, 0.1],     # wall -> (1, 0)
                        [0.0, 0.1, 0.1, 0.7, 0.1],     # token 0 -> (class 4, instance 1)
                        [0.0, 0.1, 0.1, 0.1, 0.7]])    # token 1 -> (class 3, instance 2)
    sem, ins = panoptic_inference(pan, stuff_ids, token_class)
    assert sem.tolist() == [1, 4, 3] and ins.tolist() == [0, 1, 2]
    g = torch.Generator().manual_seed(1)
    pan = torch.rand(6, 8, 5, generator=g)
    sem, ins = panoptic_inference(pan, stuff_ids, token_class)
    assert sem.shape == ins.shape == (6, 8)
    # instance > 0 exactly where the class is that token's class; stuff classes never have an instance
    thing_pix = ins > 0
    assert torch.equal(sem[thing_pix], token_class[ins[thing_pix] - 1])
    assert bool(torch.isin(sem[~thing_pix], stuff_ids).all())
