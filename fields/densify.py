"""Densification and pruning of the Gaussians: a strategy object with hooks, like the token adjustment.

The trainer calls `after_backward(g, uv_grad, index, visible)` after each backward pass (it accumulates the
screen-space gradient of every visible Gaussian's mean) and `step(it, g, optimizer)` after the update;
when due, `step` changes the set of Gaussians and resizes the optimiser's state to match:

- clone: a Gaussian whose mean screen-space gradient exceeds `grad_threshold_px` and whose largest
  sigma is at most `split_scale_m` gets a copy (same parameters, fresh Adam moments);
- split: such a Gaussian with a larger sigma is replaced by two, their means drawn from it, their
  scales divided by 1.6 (3DGS's rule);
- prune: opacity below `prune_opacity`, or a sigma above `prune_scale_m`;
- the survivors keep their Adam moments (rows carried over by index).

This is the 3DGS adaptive density control (Kerbl et al. 2023, Sec. 5), written for our parameter set.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fields.gaussians import GaussianModel, quat_to_rotmat


@dataclass
class DensifyConfig:
    RANGES = {"start_iters": ">=0", "stop_iters": ">=0", "every": ">=1", "grad_threshold_px": ">=0",
              "split_scale_m": ">0", "prune_opacity": "[0, 1]", "prune_scale_m": ">0",
              "max_gaussians": ">=1"}   # valid values, checked when the settings are loaded (recon/core/config.py)
    enabled: bool = True                   # off: the initial Gaussians are kept as they are (count fixed)
    start_iters: int = 100                 # first densification after this many Gaussian steps
    stop_iters: int = 800                  # none from here on
    every: int = 100                       # steps between densifications
    grad_threshold_px: float = 5e-5        # mean |d loss / d uv| over the steps a Gaussian was seen (loss per window pixel; ~ the top 2 %)
    split_scale_m: float = 0.02            # larger sigma: split, else clone
    prune_opacity: float = 0.01            # pruned below this opacity
    prune_scale_m: float = 0.5             # pruned above this sigma
    max_gaussians: int = 300_000           # no growth beyond this count


class DensifyStrategy:
    """3DGS-style clone / split / prune with Adam state carried (see the module docstring)."""

    def __init__(self, cfg: DensifyConfig, log=None):
        self.cfg = cfg
        self.log = log or (lambda m: None)
        self.grad_sum: Tensor | None = None        # [N] summed |grad uv|
        self.seen: Tensor | None = None            # [N] steps in which the Gaussian was visible
        self.history: list[dict] = []

    def _ensure(self, n: int, device) -> None:
        if self.grad_sum is None or len(self.grad_sum) != n:
            self.grad_sum = torch.zeros(n, device=device)
            self.seen = torch.zeros(n, device=device)

    def after_backward(self, g: GaussianModel, uv_grad: Tensor | None, index: Tensor, visible: Tensor) -> None:
        """uv_grad [M, 2] gradient of the loss w.r.t. the projected means of the Gaussians `index` [M]
        (None: nothing seen); visible [M] bool."""
        self._ensure(g.n, g.means.device)
        if uv_grad is None:
            return
        assert uv_grad.shape == (len(index), 2) and visible.shape == (len(index),)
        self.grad_sum.index_add_(0, index, uv_grad.norm(dim=1) * visible)
        self.seen.index_add_(0, index, visible.float())

    def due(self, it: int) -> bool:
        c = self.cfg
        return c.enabled and c.start_iters <= it < c.stop_iters and it > 0 and it % c.every == 0

    @torch.no_grad()
    def step(self, it: int, g: GaussianModel, optimizer: torch.optim.Optimizer | None, gen: torch.Generator | None = None
             ) -> dict[str, int]:
        """Clone, split and prune when due; returns the counts (empty when not due)."""
        if not self.due(it):
            return {}
        c = self.cfg
        self._ensure(g.n, g.means.device)
        mean_grad = self.grad_sum / self.seen.clamp_min(1)
        sigma_max = g.scales().max(dim=1).values
        hot = mean_grad > c.grad_threshold_px
        room = max(0, c.max_gaussians - g.n)
        clone = hot & (sigma_max <= c.split_scale_m)
        split = hot & (sigma_max > c.split_scale_m)
        # respect the cap: the strongest gradients first
        n_new = int(clone.sum()) + int(split.sum())
        if n_new > room:
            order = torch.argsort(mean_grad * hot, descending=True)
            allowed = torch.zeros_like(hot)
            allowed[order[:room]] = True
            clone &= allowed
            split &= allowed
        prune = (g.opacities() < c.prune_opacity) | (sigma_max > c.prune_scale_m)
        counts = densify_and_prune(g, optimizer, clone, split, prune & ~split, gen)
        counts["iteration"] = it
        self.history.append(counts)
        seen = self.seen > 0
        q = torch.quantile(mean_grad[seen][:100_000], torch.tensor([0.5, 0.9, 0.99]).to(mean_grad)).tolist() \
            if bool(seen.any()) else [0.0, 0.0, 0.0]
        self.log(f"densify at step {it}: +{counts['cloned']} cloned, {counts['split']} split, "
                 f"-{counts['pruned']} pruned -> {g.n} Gaussians (screen gradient median {q[0]:.2g}, "
                 f"90% {q[1]:.2g}, 99% {q[2]:.2g} px)")
        self.grad_sum = torch.zeros(g.n, device=g.means.device)
        self.seen = torch.zeros(g.n, device=g.means.device)
        return counts

    def state_dict(self) -> dict:
        return {"grad_sum": self.grad_sum, "seen": self.seen, "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.grad_sum, self.seen = state["grad_sum"], state["seen"]
        self.history = list(state["history"])


def densify_and_prune(g: GaussianModel, optimizer: torch.optim.Optimizer | None, clone: Tensor, split: Tensor,
                      prune: Tensor, gen: torch.Generator | None = None) -> dict[str, int]:
    """Apply one densification to `g` (in place) and to the optimiser's Adam state.

    clone, split, prune: [N] bool masks (split Gaussians are removed and replaced by two children each).
    New rows: clones copy their parent; split children sample their means from the parent's Gaussian
    and take scale / 1.6. The optimiser's per-row moments are carried for survivors and zero for new rows.
    """
    n = g.n
    assert clone.shape == split.shape == prune.shape == (n,)
    params = {name: getattr(g, name).detach() for name in GaussianModel.PARAMS}
    keep = ~(prune | split)
    src_clone = torch.nonzero(clone & ~prune).squeeze(1)
    src_split = torch.nonzero(split).squeeze(1)
    # children of split Gaussians: two samples from each parent's 3D Gaussian
    R = quat_to_rotmat(params["quats"][src_split])                                  # [S, 3, 3]
    sig = params["log_scales"][src_split].exp()                                     # [S, 3]
    noise = torch.randn(2, len(src_split), 3, generator=gen).to(sig)
    child_means = params["means"][src_split][None] + torch.einsum("sij,ksj->ksi", R, noise * sig[None])
    new = {}
    for name, value in params.items():
        parts = [value[keep], value[src_clone]]
        if name == "means":
            parts.append(child_means.reshape(-1, 3))
        elif name == "log_scales":
            parts.append((value[src_split] - torch.log(torch.tensor(1.6))).repeat(2, 1))
        else:
            parts.append(value[src_split].repeat(2, *([1] * (value.ndim - 1))))
        new[name] = torch.cat(parts, dim=0)
    n_new = len(src_clone) + 2 * len(src_split)
    old_params = {name: getattr(g, name) for name in GaussianModel.PARAMS}
    g.replace(**new)
    if optimizer is not None:
        carry_adam_rows(optimizer, old_params, {name: getattr(g, name) for name in GaussianModel.PARAMS},
                        keep, n_new)
    return {"cloned": int(len(src_clone)), "split": int(len(src_split)), "pruned": int(prune.sum()),
            "n": g.n}


def carry_adam_rows(optimizer: torch.optim.Optimizer, old: dict[str, Tensor], new: dict[str, Tensor],
                    keep: Tensor, n_new: int) -> None:
    """Point the optimiser at the new parameter tensors, carrying the Adam moments of the kept rows
    (in order) and zeros for the `n_new` appended rows."""
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            name = next((k for k, v in old.items() if v is p), None)
            if name is None:
                continue
            q = new[name]
            state = optimizer.state.pop(p, None)
            group["params"][i] = q
            if state:
                fresh = {}
                for key, val in state.items():
                    if torch.is_tensor(val) and val.shape == p.shape:
                        pad = torch.zeros((n_new, *val.shape[1:]), dtype=val.dtype, device=val.device)
                        fresh[key] = torch.cat([val[keep], pad], dim=0)
                    else:
                        fresh[key] = val
                optimizer.state[q] = fresh
