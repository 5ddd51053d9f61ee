"""Cross-attention between instance tokens and the instance field (Eq. 6-8, 15).

Reading of Eq. 6 (per METHOD.md Sec. 4): the paper writes A_ij as a softmax over points of
exp(S * G). We use the unnormalised product

    A_ij = S(f_q,i , f_k,j) * G(p_q,i , p_j)   in (0, 1)

as token i's *binary* mask probability at point j, which is what Eq. 15 (l_I = N independent,
unnormalised binary predictions) and the dice / BCE losses (Eq. 28-30) need. The tokens
compete only later, in the panoptic head (recon/model/panoptic_head.py), where l_I is normalised over
tokens.

Memory: ``spatial_prior`` forms the offsets p - mu as an [M, N, 3] float32 tensor (kept for
backward), i.e. about 12 * M * N bytes, plus [M, N] results; e.g. M = 1024 rays x 64 samples
and N = 32 tokens: 65536 * 32 * 12 B = 25 MB. Chunk the points upstream if M * N grows large.
"""
from __future__ import annotations

import torch
from torch import Tensor

from tokens.tokens import InstanceTokens


def _gaussian_prior(points: Tensor, means: Tensor, inv_cov: Tensor) -> Tensor:
    """G [M, N] = exp(-0.5 (p - mu)^T Sigma^-1 (p - mu)), points [M, 3], means [N, 3], inv_cov [N, 3, 3]."""
    assert points.ndim == 2 and points.shape[1] == 3, f"points must be [M, 3], got {tuple(points.shape)}"
    N = means.shape[0]
    assert means.shape == (N, 3) and inv_cov.shape == (N, 3, 3), "means [N, 3] and inv_cov [N, 3, 3]"
    d = points[:, None, :] - means[None, :, :]                                     # [M, N, 3] m
    maha = torch.einsum("mni,nij,mnj->mn", d, inv_cov, d)                          # [M, N] squared Mahalanobis
    return torch.exp(-0.5 * maha.clamp_min(0.0))                                   # [M, N] in (0, 1]


def spatial_prior(points: Tensor, means: Tensor, inv_cov: Tensor) -> Tensor:
    """Eq. 8: G [M, N] = P(p | mu, Sigma) / P(mu | mu, Sigma) = exp(-0.5 (p-mu)^T Sigma^-1 (p-mu)).

    points [M, 3] (m), means [N, 3] (m), inv_cov [N, 3, 3] (1/m^2). G = 1 at the mean.
    """
    return _gaussian_prior(points, means, inv_cov)


def feature_similarity(f_k: Tensor, f_q: Tensor, temperature: float = 1.0) -> Tensor:
    """Eq. 7: S [M, N] = sigmoid(f_k . f_q / temperature); f_k [M, d] keys, f_q [N, d] token features.

    temperature = 1 is the paper's sigmoid(f_q^T f_k) exactly; sqrt(d) would give the usual
    scaled dot product."""
    assert f_k.ndim == 2 and f_q.ndim == 2 and f_k.shape[1] == f_q.shape[1], \
        f"f_k [M, d] and f_q [N, d] must share d, got {tuple(f_k.shape)} and {tuple(f_q.shape)}"
    return torch.sigmoid((f_k @ f_q.T) / temperature)                              # [M, N]


def instance_probs(f_k: Tensor, points: Tensor, tokens: InstanceTokens, spatial_prior: bool = True,
                   temperature: float = 1.0) -> Tensor:
    """Eq. 6 / 15: per-point token mask probabilities A [..., N] = S * G (G = 1 if spatial_prior off).

    f_k [..., d] instance key features at points [..., 3] (m), same leading shape (e.g. [R, S]).
    spatial_prior=False is the ablation switch `tokens.spatial_prior` (feature similarity only).
    """
    lead = points.shape[:-1]
    assert points.shape[-1] == 3 and f_k.shape[:-1] == lead, \
        f"f_k [..., d] and points [..., 3] need the same leading shape, got {tuple(f_k.shape)}, {tuple(points.shape)}"
    assert f_k.shape[-1] == tokens.feat_dim, f"key dim {f_k.shape[-1]} != token feature dim {tokens.feat_dim}"
    fk = f_k.reshape(-1, f_k.shape[-1])                                            # [M, d]
    A = feature_similarity(fk, tokens.features, temperature)                       # [M, N]
    if spatial_prior:
        A = A * _gaussian_prior(points.reshape(-1, 3), tokens.means, tokens.inverse_covariance())
    return A.reshape(*lead, tokens.n)                                              # [..., N]
