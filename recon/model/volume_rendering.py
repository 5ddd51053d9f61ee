"""S-density volume rendering from an SDF (METHOD.md Sec. 3, paper Eq. 10-11). Pure functions.

For a ray with samples p_j = o + rho_j d (j = 1..S, sorted by rho) and SDF values s_j (metres):

    sig(s)  = 1 / (1 + exp(-xi s))                      xi: sharpness in 1/m (NeuS "inv_s")
    alpha_j = max((sig(s_j) - sig(s_{j+1})) / sig(s_j), 0),   j < S
    alpha_S = 0        (the last sample has no successor: it closes the ray and gets no weight;
                        append one extra sample beyond the far bound if the last interval matters)
    T_j     = prod_{m<j} (1 - alpha_m),   w_j = T_j alpha_j,   u_f = sum_j w_j f_j

Signs: s > 0 is free space. A ray entering a surface sees s go from + to -, sig from 1 to 0 and alpha
to 1 at the crossing. Leaving a surface (s increasing) gives alpha = 0: only front faces render.

Numerics: 1 - sig(s_{j+1}) / sig(s_j) = -expm1(logsig(xi s_{j+1}) - logsig(xi s_j)) with the stable
log-sigmoid, so |xi s| up to ~1e38 gives neither NaN nor inf in values or gradients.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sdf_to_alpha(sdf: Tensor, xi: float | Tensor) -> Tensor:
    """sdf [R, S] (sorted along each ray) -> alpha [R, S] in [0, 1], alpha[:, -1] = 0.

    xi: float or tensor broadcastable to [R, S] (e.g. a learnable scalar or per-ray [R, 1]).
    """
    assert sdf.dim() == 2, f"sdf must be [R, S], got {tuple(sdf.shape)}"
    log_sig = F.logsigmoid(sdf * xi)  # [R, S] log sig(s_j), stable for any sign
    log_ratio = log_sig[:, 1:] - log_sig[:, :-1]  # [R, S-1] log(sig(s_{j+1}) / sig(s_j))
    # max(1 - ratio, 0): clip the log-ratio at 0 *before* expm1, so a rising SDF (ratio >> 1) neither
    # overflows nor sends 0 * inf = NaN through the backward pass
    alpha = -torch.expm1(torch.clamp_max(log_ratio, 0.0))  # [R, S-1] in [0, 1]
    alpha = torch.cat([alpha, torch.zeros_like(alpha[:, :1])], dim=1)  # [R, S], alpha_S = 0
    assert alpha.shape == sdf.shape
    return alpha


def transmittance(alpha: Tensor) -> Tensor:
    """alpha [R, S] -> T [R, S], T_j = prod_{m<j} (1 - alpha_m) (exclusive cumulative product, T_1 = 1)."""
    assert alpha.dim() == 2
    one_minus = 1.0 - alpha  # [R, S]
    ones = torch.ones_like(one_minus[:, :1])
    return torch.cumprod(torch.cat([ones, one_minus[:, :-1]], dim=1), dim=1)


def transmittance_weights(alpha: Tensor) -> Tensor:
    """alpha [R, S] -> w [R, S], w_j = T_j alpha_j (sum_j w_j <= 1)."""
    w = transmittance(alpha) * alpha
    assert w.shape == alpha.shape
    return w


def render(weights: Tensor, values: Tensor) -> Tensor:
    """weights [R, S], values [R, S, C] -> [R, C] = sum_j w_j f_j (no background term)."""
    assert weights.dim() == 2 and values.dim() == 3 and values.shape[:2] == weights.shape, (
        f"weights {tuple(weights.shape)} vs values {tuple(values.shape)}"
    )
    # one batched [1, S] @ [S, C] per ray: on the CPU 0.38 ms forward + backward at R=1024, S=20, C=20, where
    # torch.einsum("rs,rsc->rc") took 4.8 ms (it copies the operands into another layout first)
    return torch.bmm(weights[:, None, :], values)[:, 0]


def render_depth(weights: Tensor, z_vals: Tensor, normalize: bool = False, eps: float = 1e-6) -> Tensor:
    """weights [R, S], z_vals [R, S] (along-ray distance rho_j, metres) -> depth u_d [R].

    Plain Eq. 10 (sum_j w_j rho_j) by default, which pulls the depth towards 0 where the ray is not
    saturated; ``normalize=True`` divides by the accumulated opacity (clamped at eps).
    """
    assert weights.shape == z_vals.shape and weights.dim() == 2
    depth = (weights * z_vals).sum(dim=1)  # [R]
    if normalize:
        depth = depth / accumulated_opacity(weights).clamp_min(eps)
    return depth


def accumulated_opacity(weights: Tensor) -> Tensor:
    """weights [R, S] -> sum_j w_j [R] (1 - transmittance left after the last sample)."""
    assert weights.dim() == 2
    return weights.sum(dim=1)
