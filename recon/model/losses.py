"""Geometry, appearance and semantic losses (METHOD.md Sec. 5, paper Eq. 24-26, 32). Pure functions.

Every loss is a mean over the entries it applies to and returns a 0-d tensor that stays attached to the
graph; when nothing applies it is exactly 0 (sum of nothing / 1), so it can always be added to a total.

Depth convention for the SDF and depth losses: ``depth_obs`` is the *along-ray* distance rho to the
observed surface (same unit and parameter as ``z_vals``), i.e. the sensor's z-depth divided by the ray
direction's z component in camera coordinates (for unit-length directions). Rendered depth
(``recon.model.volume_rendering.render_depth``) is in the same along-ray convention.

Real sensor depth (configs/real.yaml): the optional per-ray ``ray_weight`` of the surface terms
(``depth_noise_weight``: noise that grows with range) and the ``surface_ok`` mask (rays whose depth
bounds the free space but is not trusted as a surface, e.g. flying pixels at depth edges,
``recon.model.sampling.depth_edge_rays``). Without them the terms are exactly Eq. 24 and 26.
"""
from __future__ import annotations

import torch
from torch import Tensor

_EXP_LINEAR_FROM = 20.0  # exp(e) is continued linearly (C1) beyond e = 20 so the free-space term cannot overflow


def _masked_mean(values: Tensor, mask: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean of values[mask] (weighted by `weight`, same shape, when given); 0 (attached to the graph)
    when the mask is empty."""
    mask = mask.to(values.dtype)
    if weight is not None:
        mask = mask * weight
        return (values * mask).sum() / mask.sum().clamp_min(1e-12)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def depth_noise_weight(depth_m: Tensor, ref_m: float, power: float) -> Tensor:
    """Per-ray weight [R] of the depth-anchored surface terms for sensor noise that grows with range.

    depth_m [R] observed depth (metres; <= 0 or non-finite = none). Structured-light and ToF depth
    noise grows about as sigma(z) ~ z^2, so an L1 term weighted 1/sigma falls as z^-2:
    w = min(1, (ref_m / D)^power), i.e. rays nearer than ref_m weigh 1, a ray at 2 ref_m weighs
    2^-power. power = 0 or ref_m = 0: all 1 (Eq. 24 / 26 as they are). Rays without depth weigh 1
    (no depth term applies to them anyway)."""
    assert depth_m.ndim == 1 and ref_m >= 0 and power >= 0
    if power == 0 or ref_m == 0:
        return torch.ones_like(depth_m)
    ok = torch.isfinite(depth_m) & (depth_m > 0)
    d = torch.where(ok, depth_m, torch.full_like(depth_m, ref_m))
    return torch.clamp_max((ref_m / d) ** power, 1.0)


def _exp_capped(e: Tensor, cap: float = _EXP_LINEAR_FROM) -> Tensor:
    """exp(e) for e <= cap, exp(cap) * (1 + e - cap) above (finite values and gradients everywhere)."""
    ec = torch.clamp_max(e, cap)
    return torch.where(e > cap, torch.exp(ec) * (1.0 + e - cap), torch.exp(ec))


def sdf_loss(
    sdf_pred: Tensor, z_vals: Tensor, depth_obs: Tensor, trunc_m: float, beta: float, valid: Tensor,
    ray_weight: Tensor | None = None, surface_ok: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Eq. 24 with the along-ray approximate SDF b_j = D - rho_j (metres).

    sdf_pred [R, S] metres, z_vals [R, S] along-ray sample distances rho_j, depth_obs [R] along-ray
    observed depth D, valid [R] bool (rays with a depth measurement).
    Per sample of a valid ray:
      |b| <= trunc_m  (truncation band):        |s - b|
      b  >  trunc_m   (free space in front):    max(0, exp(-beta s) - 1, s - b)
      b  < -trunc_m   (behind the surface):     ignored (unobserved)
    Returns (loss_trunc, loss_free): each the mean over its own samples (0 if none).
    exp(-beta s) is continued linearly above exponent 20 (very negative s) to stay finite.
    Options (None = off): ray_weight [R] weights the truncation-band mean per ray (depth_noise_weight);
    surface_ok [R] bool: rays with False keep the free-space term but have no truncation-band term (their
    depth only bounds the free space in front of it).
    """
    assert sdf_pred.dim() == 2 and z_vals.shape == sdf_pred.shape, f"{tuple(sdf_pred.shape)} {tuple(z_vals.shape)}"
    n_rays = sdf_pred.shape[0]
    assert depth_obs.shape == (n_rays,) and valid.shape == (n_rays,) and valid.dtype == torch.bool
    depth = torch.where(valid, depth_obs, torch.zeros_like(depth_obs))  # invalid depth may be 0 / NaN / inf
    b = depth[:, None] - z_vals  # [R, S] approximate SDF along the ray
    valid_s = valid[:, None].expand_as(b)
    in_band = valid_s & (b.abs() <= trunc_m)
    in_free = valid_s & (b > trunc_m)
    if surface_ok is not None:
        assert surface_ok.shape == (n_rays,) and surface_ok.dtype == torch.bool
        in_band = in_band & surface_ok[:, None]
    l_band = (sdf_pred - b).abs()  # [R, S]
    l_free = torch.clamp_min(torch.maximum(_exp_capped(-beta * sdf_pred) - 1.0, sdf_pred - b), 0.0)  # [R, S]
    w_band = None
    if ray_weight is not None:
        assert ray_weight.shape == (n_rays,)
        w_band = ray_weight[:, None].expand_as(b)
    return _masked_mean(l_band, in_band, w_band), _masked_mean(l_free, in_free)


def eikonal_loss(grad: Tensor) -> Tensor:
    """grad [N, 3] (d sdf / d x_world) -> mean (1 - |grad|)^2."""
    assert grad.dim() == 2 and grad.shape[1] == 3, f"grad must be [N, 3], got {tuple(grad.shape)}"
    if grad.shape[0] == 0:
        return grad.sum() * 0.0
    norm = torch.linalg.vector_norm(grad, dim=1)  # [N]
    return ((1.0 - norm) ** 2).mean()


def depth_loss(depth_pred: Tensor, depth_obs: Tensor, valid: Tensor, ray_weight: Tensor | None = None) -> Tensor:
    """L1 |D - u_d| over valid rays (0 if none). depth_pred, depth_obs, valid: [R].
    ray_weight [R] (optional, depth_noise_weight): a weighted mean instead."""
    assert depth_pred.dim() == 1 and depth_obs.shape == depth_pred.shape and valid.shape == depth_pred.shape
    obs = torch.where(valid, depth_obs, depth_pred.detach())  # keep NaN/inf of invalid pixels out
    return _masked_mean((depth_pred - obs).abs(), valid, ray_weight)


def rgb_loss(rgb_pred: Tensor, rgb_obs: Tensor) -> Tensor:
    """Mean L1 over rays and channels. [R, 3] x [R, 3]."""
    assert rgb_pred.shape == rgb_obs.shape and rgb_pred.dim() == 2
    return (rgb_pred - rgb_obs).abs().mean()


def semantic_loss(
    sem_rendered_probs: Tensor, labels: Tensor, ignore_index: int = 0, eps: float = 1e-6, normalize: bool = False
) -> Tensor:
    """Eq. 32: cross-entropy of the volume-rendered class distribution.

    sem_rendered_probs [R, C]: u_{softmax(l_S)}(x) = sum_j w_j softmax(l_S(p_j)) (sums to the opacity
    <= 1); labels [R] long, column index into C. Pixels whose label is ``ignore_index`` (unlabelled) are
    skipped, so that column is never a target. Loss = mean over kept pixels of -log(clamp(p[label], eps));
    ``normalize=True`` first divides each row by its sum (i.e. conditions on the ray hitting something).
    """
    assert sem_rendered_probs.dim() == 2 and labels.shape == (sem_rendered_probs.shape[0],)
    assert labels.dtype == torch.long
    probs = sem_rendered_probs
    if normalize:
        probs = probs / probs.sum(dim=1, keepdim=True).clamp_min(eps)
    keep = labels != ignore_index
    if bool(keep.any()):
        kept = labels[keep]
        assert int(kept.min()) >= 0 and int(kept.max()) < probs.shape[1], "label outside [0, C)"
    safe_labels = torch.where(keep, labels, torch.zeros_like(labels))
    p_true = probs.gather(1, safe_labels[:, None])[:, 0]  # [R]
    nll = -torch.log(p_true.clamp_min(eps))
    return _masked_mean(nll, keep)
