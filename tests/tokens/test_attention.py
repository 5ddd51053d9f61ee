"""Eq. 6-8: spatial prior, feature similarity and the per-point token probabilities."""
import math

import torch

from tokens.attention import feature_similarity, instance_probs, spatial_prior
from tokens.tokens import InstanceTokens

torch.set_num_threads(1)

C45 = math.sqrt(0.5)


def test_spatial_prior_hand_computed_axis_aligned():
    # token 0: mean 0, scales (1, 2, 0.5) m -> Sigma^-1 = diag(1, 1/4, 4).
    #   (1,0,0): 1 * 1 = 1 -> exp(-0.5) = 0.606531;  (0,2,0): 4/4 = 1 -> 0.606531;
    #   (0,0,1): 4 * 1 = 4 -> exp(-2) = 0.135335;    the mean itself -> 1.
    # token 1: mean (1,0,0), isotropic 1 m: (1,0,0) -> 1, (0,0,0) -> exp(-0.5).
    pts = torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 1.0], [0, 0, 0]])
    means = torch.tensor([[0.0, 0, 0], [1.0, 0, 0]])
    inv_cov = torch.stack([torch.diag(torch.tensor([1.0, 0.25, 4.0])), torch.eye(3)])
    G = spatial_prior(pts, means, inv_cov)
    e = math.exp(-0.5)
    expect = torch.tensor([[e, 1.0], [e, math.exp(-2.5)], [0.135335, math.exp(-1.0)], [1.0, e]])
    # (0,2,0) to token 1: d = (-1, 2, 0) -> 1 + 4 = 5 -> exp(-2.5); (0,0,1): d = (-1,0,1) -> 2 -> exp(-1).
    assert G.shape == (4, 2)
    assert torch.allclose(G, expect, atol=1e-6)


def test_spatial_prior_rotated_token():
    # scales (1, 2, 3), 90 deg about z -> Sigma^-1 = diag(1/4, 1, 1/9):
    # (2,0,0): 4/4 = 1 -> exp(-0.5); (0,1,0): 1 -> exp(-0.5); (0,0,3): 9/9 -> exp(-0.5).
    tok = InstanceTokens(torch.zeros(1, 3), torch.tensor([[1.0, 2.0, 3.0]]), 2, 2,
                         quats=torch.tensor([[C45, 0.0, 0.0, C45]]))
    pts = torch.tensor([[2.0, 0, 0], [0, 1.0, 0], [0, 0, 3.0]])
    G = spatial_prior(pts, tok.means, tok.inverse_covariance())
    assert torch.allclose(G[:, 0], torch.full((3,), math.exp(-0.5)), atol=1e-5)


def test_feature_similarity_hand_computed():
    # dots f_k . f_q: [[1, 0], [2, 0]] -> sigmoid: [[0.731059, 0.5], [0.880797, 0.5]];
    # temperature 2 halves the dots: [[sigmoid(0.5) = 0.622459, 0.5], [sigmoid(1) = 0.731059, 0.5]].
    f_k = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    f_q = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert torch.allclose(feature_similarity(f_k, f_q), torch.tensor([[0.731059, 0.5], [0.880797, 0.5]]), atol=1e-6)
    assert torch.allclose(feature_similarity(f_k, f_q, temperature=2.0),
                          torch.tensor([[0.622459, 0.5], [0.731059, 0.5]]), atol=1e-6)


def test_instance_probs_product_switch_and_gradients():
    g = torch.Generator().manual_seed(0)
    # anisotropic scales so that the rotation matters (an isotropic token has zero quaternion gradient)
    tok = InstanceTokens(torch.randn(3, 3, generator=g), torch.tensor([[0.4, 0.6, 0.9]]).repeat(3, 1), 4, 2,
                         quats=torch.randn(3, 4, generator=g), generator=g)
    pts = torch.randn(2, 5, 3, generator=g)                       # [R, S, 3]
    f_k = torch.randn(2, 5, 4, generator=g, requires_grad=True)   # [R, S, d]
    A = instance_probs(f_k, pts, tok)
    assert A.shape == (2, 5, 3)
    S = feature_similarity(f_k.reshape(-1, 4), tok.features)
    G = spatial_prior(pts.reshape(-1, 3), tok.means, tok.inverse_covariance())
    assert torch.allclose(A.reshape(-1, 3), S * G)
    assert bool(((A > 0) & (A < 1)).all())
    A.sum().backward()
    for p in (tok.means, tok.quats, tok.log_scales, tok.features):
        assert p.grad is not None and float(p.grad.abs().sum()) > 0
    assert f_k.grad is not None and float(f_k.grad.abs().sum()) > 0
    # ablation: no spatial prior -> feature similarity only
    A0 = instance_probs(f_k.detach(), pts, tok, spatial_prior=False)
    assert torch.allclose(A0.reshape(-1, 3), S.detach())
