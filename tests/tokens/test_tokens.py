"""InstanceTokens: covariance maths, resizing, Adam state carry-over, initialisation."""
import math

import numpy as np
import pytest
import torch

from tokens.tokens import (InstanceTokens, TokenClassHead, farthest_point_order, init_from_points,
                           quat_to_rotmat, resize_adam_state)

torch.set_num_threads(1)

C45 = math.sqrt(0.5)  # cos(45 deg) = sin(45 deg): the quaternion of a 90 deg turn is (cos 45, axis * sin 45)


def test_quat_to_rotmat_90_deg_about_z():
    # q = (cos 45, 0, 0, sin 45) turns x into y and y into -x.
    R = quat_to_rotmat(torch.tensor([[C45, 0.0, 0.0, C45]]))
    expect = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert torch.allclose(R[0], expect, atol=1e-6)


def test_quaternion_is_normalised_on_use():
    # (2, 0, 0, 0) is the identity once normalised.
    assert torch.allclose(quat_to_rotmat(torch.tensor([[2.0, 0.0, 0.0, 0.0]]))[0], torch.eye(3))


def test_covariance_and_inverse_hand_computed():
    # scales (1, 2, 3) m -> Lambda^2 = diag(1, 4, 9); rotating by 90 deg about z swaps the x and y
    # variances: Sigma = sum_k lambda_k^2 r_k r_k^T with r_0 = (0,1,0), r_1 = (-1,0,0), r_2 = (0,0,1)
    # = diag(4, 1, 9), and Sigma^-1 = diag(1/4, 1, 1/9).
    tok = InstanceTokens(torch.zeros(1, 3), torch.tensor([[1.0, 2.0, 3.0]]), 2, 2,
                         quats=torch.tensor([[C45, 0.0, 0.0, C45]]))
    assert torch.allclose(tok.covariance()[0], torch.diag(torch.tensor([4.0, 1.0, 9.0])), atol=1e-5)
    assert torch.allclose(tok.inverse_covariance()[0], torch.diag(torch.tensor([0.25, 1.0, 1 / 9])), atol=1e-6)


def test_inverse_covariance_is_inverse_and_covariance_psd():
    g = torch.Generator().manual_seed(0)
    tok = InstanceTokens(torch.zeros(5, 3), torch.rand(5, 3, generator=g) + 0.1, 4, 3,
                         quats=torch.randn(5, 4, generator=g))
    S, Si = tok.covariance(), tok.inverse_covariance()
    assert torch.allclose(S @ Si, torch.eye(3).expand(5, 3, 3), atol=1e-4)
    assert torch.allclose(S, S.transpose(1, 2), atol=1e-6)
    # Sigma = R diag(lambda^2) R^T with R a rotation: its eigenvalues are the squared scales, whatever
    # the (normalised) quaternion; the eigenvectors are R's columns (checked up to sign via |R^T v|)
    lam2 = tok.scales().detach() ** 2                                              # [5, 3]
    eig, vec = torch.linalg.eigh(S)
    assert torch.allclose(eig, lam2.sort(dim=1).values, atol=1e-5)
    order = lam2.argsort(dim=1)                                                    # eigh: ascending
    R = tok.rotations().detach()
    R_sorted = torch.gather(R, 2, order[:, None, :].expand(5, 3, 3))               # columns in ascending lambda
    assert torch.allclose((R_sorted.transpose(1, 2) @ vec).abs(), torch.eye(3).expand(5, 3, 3), atol=1e-3)
    assert tok.n == 5


def _tokens3():
    means = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    return InstanceTokens(means, 0.1, 4, 3, generator=torch.Generator().manual_seed(1))


def test_remove_add_clone():
    tok = _tokens3()
    f = tok.features.detach().clone()
    im = tok.remove_tokens(torch.tensor([True, False, True]))
    assert im.tolist() == [0, 2] and tok.n == 2
    assert torch.equal(tok.features.detach(), f[[0, 2]])
    assert torch.equal(tok.means.detach()[:, 0], torch.tensor([0.0, 2.0]))
    im = tok.add_tokens(torch.tensor([[5.0, 5.0, 5.0]]), 0.3)
    assert im.tolist() == [0, 1, -1] and tok.n == 3
    assert torch.allclose(tok.scales()[2], torch.full((3,), 0.3))
    assert torch.equal(tok.quats.detach()[2], torch.tensor([1.0, 0.0, 0.0, 0.0]))
    im = tok.clone_token(1, [0.0, 0.02, 0.0])
    assert im.tolist() == [0, 1, 2, 1]
    assert tok.n == 4
    # the clone of token 1 (mean (2,0,0)) sits 2 cm further along y, with the same feature
    assert torch.allclose(tok.means.detach()[3], torch.tensor([2.0, 0.02, 0.0]))
    assert torch.equal(tok.features.detach()[3], tok.features.detach()[1])
    assert all(isinstance(p, torch.nn.Parameter) for p in tok.state_for_optimizer())


def test_resize_adam_state_carries_moments():
    tok = _tokens3()
    opt = torch.optim.Adam(tok.parameters(), lr=1e-2, betas=(0.9, 0.999))
    # loss = sum_r w_r * means[r, 0] with w = (1, 2, 3): grad rows of means[:, 0] = 1, 2, 3.
    # One Adam step: exp_avg = (1 - 0.9) g = 0.1 g, exp_avg_sq = (1 - 0.999) g^2 = 0.001 g^2.
    w = torch.tensor([1.0, 2.0, 3.0])
    (tok.means[:, 0] * w).sum().backward()
    opt.step()
    old = tok.state_for_optimizer()
    # keep rows 0 and 2, clone row 0, add one fresh row: index_map (0, 2, 0, -1)
    index_map = torch.tensor([0, 2, 0, -1])
    tok.reindex(index_map)
    new = tok.state_for_optimizer()
    resize_adam_state(opt, old, new, index_map)
    st = opt.state[tok.means]
    assert torch.allclose(st["exp_avg"][:, 0], torch.tensor([0.1, 0.3, 0.1, 0.0]))
    assert torch.allclose(st["exp_avg_sq"][:, 0], torch.tensor([0.001, 0.009, 0.001, 0.0]))
    assert float(st["step"]) == 1.0
    assert all(old_p not in opt.state for old_p in old)
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in held for p in new)
    # the patched optimizer steps the new tensors with the carried moments. Second step, gradient 1 on
    # every entry (loss = sum of means), lr 1e-2, bias corrections 1 - 0.9^2 = 0.19, 1 - 0.999^2 = 0.001999:
    #   m = 0.9 m0 + 0.1, v = 0.999 v0 + 0.001, step = lr (m / 0.19) / (sqrt(v / 0.001999) + 1e-8)
    #   rows 0 and 2 (old row 0, g was 1): m = 0.19, v = 0.001999 -> 1 / 1 -> 0.01
    #   row 1 (old row 2, g was 3): m = 0.37, v = 0.009991 -> 1.947368 / sqrt(4.997999) -> 0.00871064
    #   row 3 (new) and columns 1, 2 (g was 0): m = 0.1, v = 0.001 -> 0.526316 / sqrt(0.500250) -> 0.00744137
    before = tok.means.detach().clone()
    opt.zero_grad()
    tok.means.sum().backward()
    opt.step()
    u0 = 0.00744137
    expect = torch.tensor([[0.01, u0, u0], [0.00871064, u0, u0], [0.01, u0, u0], [u0, u0, u0]])
    assert torch.allclose(before - tok.means.detach(), expect, atol=1e-6)


def test_farthest_point_order_hand_case():
    # centroids on a line at x = 0, 1, 5: from 0 the farthest is 5 (index 2), then 1 (index 1).
    pts = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [5.0, 0, 0]])
    assert farthest_point_order(pts, 3, 0).tolist() == [0, 2, 1]
    assert farthest_point_order(pts, 5, 1).tolist() == [1, 2, 0]


def test_init_from_points():
    g = torch.Generator().manual_seed(0)
    masks = [np.array([[-0.1, 0, 0], [0.1, 0, 0]]), np.array([[1.0, 0, 0]]), torch.tensor([[5.0, 0, 0], [5.0, 0.2, 0]])]
    # centroids (0,0,0), (1,0,0), (5,0.1,0): any start of the farthest-point sampling keeps the 5 m one.
    tok = init_from_points(masks, 2, 0.3, feat_dim=8, class_dim=4, generator=g)
    assert tok.n == 2 and tok.features.shape == (2, 8) and tok.class_features.shape == (2, 4)
    assert any(torch.allclose(m, torch.tensor([5.0, 0.1, 0.0])) for m in tok.means.detach())
    assert torch.allclose(tok.scales(), torch.full((2, 3), 0.3))
    assert torch.allclose(tok.rotations(), torch.eye(3).expand(2, 3, 3))
    # more tokens than masks: 3 centroids + 2 points drawn from the masks
    tok = InstanceTokens.init_from_points(masks, 5, 0.3, 8, 4, torch.Generator().manual_seed(0))
    assert tok.n == 5
    pool = torch.cat([torch.as_tensor(np.asarray(m), dtype=torch.float32) for m in masks])
    for m in tok.means.detach()[3:]:
        assert bool((pool - m).norm(dim=1).min() < 1e-6)
    with pytest.raises(ValueError):
        init_from_points([np.zeros((0, 3))], 2, 0.3, 8, 4)


def test_state_dict_round_trip_with_new_size():
    tok = _tokens3()
    tok.clone_token(0, [0.01, 0.0, 0.0])
    back = InstanceTokens.from_state_dict(tok.state_dict())
    assert back.n == 4
    for a, b in zip(tok.state_for_optimizer(), back.state_for_optimizer()):
        assert torch.equal(a.detach(), b.detach())


def test_class_head_shape_and_hand_computed_logits():
    head = TokenClassHead(3, 5, hidden=4)
    assert head(torch.zeros(7, 3)).shape == (7, 5)
    # Linear(3 -> 4), ReLU, Linear(4 -> 2) with hand-set weights:
    #   hidden = (f0, f1, f2, -(f0 + f1 + f2)); f = (1, -2, 3): (1, -2, 3, -2) -> ReLU (1, 0, 3, 0)
    #   logits = ((1, 1, 1, 1) . h + 0.5, (1, -1, 0, 2) . h) = (4.5, 1)
    #   f = (-1, -1, -1): (-1, -1, -1, 3) -> (0, 0, 0, 3) -> (3.5, 6)
    head = TokenClassHead(3, 2, hidden=4)
    with torch.no_grad():
        head.net[0].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [-1, -1, -1]]))
        head.net[0].bias.zero_()
        head.net[2].weight.copy_(torch.tensor([[1.0, 1, 1, 1], [1, -1, 0, 2]]))
        head.net[2].bias.copy_(torch.tensor([0.5, 0.0]))
    out = head(torch.tensor([[1.0, -2, 3], [-1, -1, -1]]))
    assert torch.allclose(out, torch.tensor([[4.5, 1.0], [3.5, 6.0]]))
