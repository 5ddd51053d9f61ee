"""Losses (Eq. 24-26, 32) on hand-computed cases."""
import math

import pytest
import torch

from recon.model.losses import depth_loss, eikonal_loss, rgb_loss, sdf_loss, semantic_loss




def test_sdf_loss_hand_computed():
    # tau = 0.25 m, beta = 2 /m. Binary fractions so that |b| <= tau is exact.
    # ray 0: D = 2,   rho = [0.5, 1.875, 2.125, 2.5] -> b = [1.5, 0.125, -0.125, -0.5]
    #        s = [1.0, 0.25, -0.25, 0.0]
    #        free (b > tau): sample 0: max(0, e^-2 - 1 = -0.865, 1.0 - 1.5 = -0.5) = 0
    #        band: |0.25 - 0.125| = 0.125, |-0.25 + 0.125| = 0.125;  sample 3: b < -tau, ignored
    # ray 1: D = 3,   rho = [1.0, 2.0, 2.875, 3.0] -> b = [2.0, 1.0, 0.125, 0.0]
    #        s = [-0.5, 1.5, 0.125, 0.25]
    #        free: sample 0: max(0, e^1 - 1 = 1.71828, -2.5) = 1.71828; sample 1: max(0, e^-3 - 1, 0.5) = 0.5
    #        band: |0.125 - 0.125| = 0, |0.25 - 0| = 0.25
    # ray 2: invalid depth (NaN), everything ignored
    # loss_trunc = (0.125 + 0.125 + 0 + 0.25) / 4 = 0.125
    # loss_free  = (0 + 1.71828 + 0.5) / 3 = 0.739427
    sdf = torch.tensor(
        [[1.0, 0.25, -0.25, 0.0], [-0.5, 1.5, 0.125, 0.25], [5.0, -9.0, 3.0, 1.0]], requires_grad=True
    )
    z = torch.tensor([[0.5, 1.875, 2.125, 2.5], [1.0, 2.0, 2.875, 3.0], [1.0, 2.0, 3.0, 4.0]])
    d = torch.tensor([2.0, 3.0, float("nan")])
    valid = torch.tensor([True, True, False])
    lt, lf = sdf_loss(sdf, z, d, trunc_m=0.25, beta=2.0, valid=valid)
    assert lt.item() == pytest.approx(0.125)
    assert lf.item() == pytest.approx((math.e - 1 + 0.5) / 3)
    (lt + lf).backward()
    assert torch.isfinite(sdf.grad).all()
    assert torch.all(sdf.grad[2] == 0) and sdf.grad[0, 3] == 0  # ignored samples get no gradient


def test_sdf_loss_empty_and_extreme():
    sdf = torch.full((2, 3), -100.0, requires_grad=True)  # very negative sdf in free space
    z = torch.tensor([[0.1, 0.2, 0.3]] * 2)
    lt, lf = sdf_loss(sdf, z, torch.tensor([5.0, 5.0]), trunc_m=0.1, beta=10.0, valid=torch.tensor([True, True]))
    assert lt.item() == 0.0  # no sample in the band: b = 5 - rho = 4.9, 4.8, 4.7 > tau, all free space
    # exp(-beta s) = exp(1000) is continued linearly above exponent 20: e^20 (1 + 1000 - 20) = 981 e^20;
    # max(0, 981 e^20 - 1, s - b = -104.9) = 981 e^20 - 1 for each of the 6 samples, so that is the mean
    assert torch.isfinite(lf) and lf.item() == pytest.approx(981 * math.exp(20) - 1, rel=1e-6)
    lf.backward()
    # the linear piece has slope e^20 in the exponent, times d(-beta s)/ds = -10, over the mean of 6 samples
    assert torch.allclose(sdf.grad, torch.full((2, 3), -10 * math.exp(20) / 6), rtol=1e-6)
    lt2, lf2 = sdf_loss(sdf, z, torch.tensor([5.0, 5.0]), 0.1, 10.0, torch.tensor([False, False]))
    assert lt2.item() == 0.0 and lf2.item() == 0.0


def test_eikonal_loss():
    # |g| = 5 -> (1-5)^2 = 16; |g| = 0.5 -> 0.25; |g| = 0 -> 1.  mean = 17.25 / 3 = 5.75
    g = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 0.5], [0.0, 0.0, 0.0]], requires_grad=True)
    loss = eikonal_loss(g)
    assert loss.item() == pytest.approx(5.75)
    loss.backward()
    # d/dg (1 - |g|)^2 / 3 = 2 (|g| - 1) g / (3 |g|): (3,4,0): 2 * 4 * (.6, .8, 0) / 3 = (1.6, 32/15, 0);
    # (0,0,.5): 2 * (-.5) * (0, 0, 1) / 3 = (0, 0, -1/3); at g = 0 the norm has no gradient: 0, not NaN
    expect = torch.tensor([[1.6, 32 / 15, 0.0], [0.0, 0.0, -1 / 3], [0.0, 0.0, 0.0]])
    assert torch.allclose(g.grad, expect, atol=1e-6)


def test_depth_rgb_losses():
    # valid rays 0 and 2: (|1 - 1.5| + |3 - 2|) / 2 = 0.75; the NaN of ray 1 is ignored
    pred = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    loss = depth_loss(pred, torch.tensor([1.5, float("nan"), 2.0]), torch.tensor([True, False, True]))
    assert loss.item() == pytest.approx(0.75)
    loss.backward()
    assert torch.allclose(pred.grad, torch.tensor([-0.5, 0.0, 0.5]))
    assert depth_loss(pred, pred.detach(), torch.zeros(3, dtype=torch.bool)).item() == 0.0
    # rgb: |0.5-0.25| + |0-0| + |1-0.5| + 0 + 0 + |0.2-0.4| = 0.95 over 6 entries
    a = torch.tensor([[0.5, 0.0, 1.0], [0.1, 0.1, 0.2]])
    b = torch.tensor([[0.25, 0.0, 0.5], [0.1, 0.1, 0.4]])
    assert rgb_loss(a, b).item() == pytest.approx(0.95 / 6)


def test_semantic_loss():
    # pixel 0: label 1, p = 0.6; pixel 1: unlabelled (0), ignored; pixel 2: label 2, p = 0.25
    # loss = -(ln 0.6 + ln 0.25) / 2
    probs = torch.tensor([[0.1, 0.6, 0.3], [0.2, 0.2, 0.5], [0.5, 0.25, 0.25]], requires_grad=True)
    labels = torch.tensor([1, 0, 2])
    loss = semantic_loss(probs, labels)
    assert loss.item() == pytest.approx(-(math.log(0.6) + math.log(0.25)) / 2)
    loss.backward()
    assert torch.all(probs.grad[1] == 0)
    # a zero probability is clamped (finite); all-ignored gives 0
    p0 = torch.tensor([[0.0, 0.0, 1.0]])
    assert semantic_loss(p0, torch.tensor([1])).item() == pytest.approx(-math.log(1e-6))
    assert semantic_loss(p0, torch.tensor([0])).item() == 0.0
    # normalize: rendered distribution [0.2, 0.2, 0.1] (opacity 0.5) -> label 1: p = 0.2 / 0.5 = 0.4
    assert semantic_loss(torch.tensor([[0.2, 0.2, 0.1]]), torch.tensor([1]), normalize=True).item() == pytest.approx(
        -math.log(0.4)
    )
