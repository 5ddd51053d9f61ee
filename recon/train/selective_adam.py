"""Adam that updates only the rows a step saw: the Gaussians' optimiser.

A training window sees a few per cent of the Gaussians; the others have zero gradient. Dense Adam still
decays their moments and moves them by the momentum left from earlier steps, and on a CPU it spends
most of a Gaussian step's optimiser time on rows nothing touched (about 24 of 80 ms on the room).
This optimiser updates the moments and parameters of the given rows only (gsplat's SelectiveAdam and
Taming 3DGS do the same on the GPU); rows outside keep their moments until they are seen again.
torch.optim has no row-selective Adam (SparseAdam needs sparse gradients, which autograd does not give
for these dense parameters), hence this class. Its state has torch.optim.Adam's keys (step, exp_avg,
exp_avg_sq), so checkpoints of either load into the other and fields/densify.py `carry_adam_rows`
carries it unchanged.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


class SelectiveAdam(torch.optim.Optimizer):
    """Adam (Kingma & Ba, no weight decay) on dim-0 rows. `step(rows)`: rows [M] long, the rows to update in
    every parameter (all of them share dim 0); rows=None updates everything (plain Adam)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-15):
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0) or eps < 0 or lr < 0:
            raise ValueError(f"invalid Adam settings lr={lr}, betas={betas}, eps={eps}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, rows: Tensor | None = None, closure=None):       # torch's signature plus rows
        assert closure is None, "SelectiveAdam takes no closure"
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = float(state["step"])
                m, v = state["exp_avg"], state["exp_avg_sq"]
                step_size = group["lr"] / (1.0 - b1 ** t)
                root_bias = math.sqrt(1.0 - b2 ** t)
                if rows is None:
                    g = p.grad
                    m.lerp_(g, 1.0 - b1)
                    v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
                    p.addcdiv_(m, v.sqrt().div_(root_bias).add_(group["eps"]), value=-step_size)
                    continue
                g = p.grad[rows]
                mr = m[rows].lerp_(g, 1.0 - b1)
                vr = v[rows].mul_(b2).addcmul_(g, g, value=1.0 - b2)
                m[rows] = mr
                v[rows] = vr
                p[rows] = p[rows] - step_size * mr / (vr.sqrt() / root_bias + group["eps"])
