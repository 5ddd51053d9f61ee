"""Gaussian-modulated instance query tokens (PanopticRecon++ Sec. IV-A, Eq. 5).

Each token Q_i carries
  * ``means``          [N, 3]  p_q, world metres;
  * ``quats``          [N, 4]  rotation quaternion (w, x, y, z), normalised on use;
  * ``log_scales``     [N, 3]  lambda = exp(log_scales), standard deviations in metres;
  * ``features``       [N, d]  instance feature f_q (dotted with the key features f_k);
  * ``class_features`` [N, c]  class feature F_i (fed to the class head h_SI, Eq. 22).

Sigma = R Lambda Lambda^T R^T with Lambda = diag(lambda) is PSD by construction, and its
inverse is formed directly as R diag(1 / lambda^2) R^T (no matrix inversion).

Changing the number of tokens
-----------------------------
``add_tokens``, ``remove_tokens``, ``clone_token`` and the general ``reindex`` replace the
five ``nn.Parameter`` objects with NEW tensors of the new length. An optimizer built on the
old parameters still points at the old tensors, so after every such change the trainer must
patch it::

    old = tokens.state_for_optimizer()          # list of the 5 parameters, fixed order
    index_map = tokens.remove_tokens(keep)      # [N_new] long: old row of each new row, -1 = new
    resize_adam_state(opt, old, tokens.state_for_optimizer(), index_map)

``resize_adam_state`` swaps the parameters inside the optimizer's param groups and carries
the per-row state (Adam ``exp_avg`` / ``exp_avg_sq`` / ``max_exp_avg_sq``; any state tensor
shaped like the parameter) over for surviving and cloned rows; rows with index -1 get zeros.
Scalar state such as Adam's ``step`` is kept as is.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

PARAM_NAMES = ("means", "quats", "log_scales", "features", "class_features")


# ----------------------------------------------------------------------------- pure maths

def quat_to_rotmat(q: Tensor) -> Tensor:
    """Rotation matrices [N, 3, 3] from quaternions q [N, 4] (w, x, y, z); q is normalised here."""
    assert q.ndim == 2 and q.shape[1] == 4, f"quaternions must be [N, 4], got {tuple(q.shape)}"
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)                                                      # each [N]
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, -1).reshape(q.shape[0], 3, 3)                         # [N, 3, 3]


def covariance_from(quats: Tensor, log_scales: Tensor) -> Tensor:
    """Sigma [N, 3, 3] = R diag(lambda^2) R^T, lambda = exp(log_scales) [N, 3] (m)."""
    R = quat_to_rotmat(quats)                                                      # [N, 3, 3]
    var_m2 = torch.exp(2.0 * log_scales)                                           # [N, 3] lambda^2
    return (R * var_m2[:, None, :]) @ R.transpose(1, 2)


def inverse_covariance_from(quats: Tensor, log_scales: Tensor) -> Tensor:
    """Sigma^-1 [N, 3, 3] = R diag(1 / lambda^2) R^T (1/m^2), without a matrix inverse."""
    R = quat_to_rotmat(quats)                                                      # [N, 3, 3]
    inv_var = torch.exp(-2.0 * log_scales)                                         # [N, 3] 1 / lambda^2
    return (R * inv_var[:, None, :]) @ R.transpose(1, 2)


def farthest_point_order(points: Tensor, n: int, start: int) -> Tensor:
    """Indices [min(n, K)] of a farthest-point sampling over points [K, 3], beginning at `start`."""
    assert points.ndim == 2 and points.shape[1] == 3
    K = points.shape[0]
    n = min(n, K)
    chosen = [start]
    dist = (points - points[start]).norm(dim=-1)                                   # [K] m
    for _ in range(n - 1):
        nxt = int(torch.argmax(dist))
        chosen.append(nxt)
        dist = torch.minimum(dist, (points - points[nxt]).norm(dim=-1))
    return torch.tensor(chosen, dtype=torch.long)


# ----------------------------------------------------------------------------- the module

class InstanceTokens(nn.Module):
    """N Gaussian-modulated query tokens; see the module docstring for layout and resizing."""

    def __init__(self, means: Tensor, scales_m: Tensor | float, feat_dim: int, class_dim: int, *,
                 features: Tensor | None = None, class_features: Tensor | None = None,
                 quats: Tensor | None = None, feat_std: float = 0.1,
                 generator: torch.Generator | None = None):
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float32)
        assert means.ndim == 2 and means.shape[1] == 3, f"means must be [N, 3], got {tuple(means.shape)}"
        N = means.shape[0]
        scales = torch.as_tensor(scales_m, dtype=torch.float32)
        scales = scales.expand(N, 3).clone() if scales.ndim < 2 else scales
        assert scales.shape == (N, 3) and bool((scales > 0).all()), "scales must be positive, [N, 3] or scalar"
        if quats is None:
            quats = torch.zeros(N, 4)
            quats[:, 0] = 1.0                                                      # identity rotation
        if features is None:
            features = torch.randn(N, feat_dim, generator=generator) * feat_std
        if class_features is None:
            class_features = torch.randn(N, class_dim, generator=generator) * feat_std
        assert quats.shape == (N, 4) and features.shape == (N, feat_dim) and class_features.shape == (N, class_dim)
        self.feat_dim, self.class_dim, self.feat_std = feat_dim, class_dim, feat_std
        self.means = nn.Parameter(means.clone())                                   # [N, 3] m
        self.quats = nn.Parameter(torch.as_tensor(quats, dtype=torch.float32).clone())      # [N, 4]
        self.log_scales = nn.Parameter(torch.log(scales))                          # [N, 3] log m
        self.features = nn.Parameter(torch.as_tensor(features, dtype=torch.float32).clone())  # [N, d]
        self.class_features = nn.Parameter(torch.as_tensor(class_features, dtype=torch.float32).clone())  # [N, c]

    # -- geometry
    @property
    def n(self) -> int:
        return int(self.means.shape[0])

    def scales(self) -> Tensor:
        """lambda [N, 3] (m)."""
        return torch.exp(self.log_scales)

    def rotations(self) -> Tensor:
        """R [N, 3, 3]."""
        return quat_to_rotmat(self.quats)

    def covariance(self) -> Tensor:
        """Sigma [N, 3, 3] (m^2), PSD by construction."""
        return covariance_from(self.quats, self.log_scales)

    def inverse_covariance(self) -> Tensor:
        """Sigma^-1 [N, 3, 3] (1/m^2) = R diag(1/lambda^2) R^T."""
        return inverse_covariance_from(self.quats, self.log_scales)

    # -- resizing
    def state_for_optimizer(self) -> list[nn.Parameter]:
        """The per-token parameters in a fixed order (PARAM_NAMES). They are replaced by every
        resize, so the optimizer must be patched with `resize_adam_state` (or rebuilt) after one."""
        return [getattr(self, name) for name in PARAM_NAMES]

    def reindex(self, index_map: Tensor, *, fill: dict[str, Tensor] | None = None,
                mean_offset_m: Tensor | None = None) -> Tensor:
        """Rebuild every per-token parameter as new[r] = old[index_map[r]].

        index_map [N_new] long: the old row of each new row, or -1 for a brand-new row whose
        values come, in order, from `fill` (name -> [n_new_rows, ...]; missing names get the
        defaults: identity rotation, scale 0.1 m, small random features). mean_offset_m
        [N_new, 3] is added to the new means (used to nudge clones). Returns index_map.
        """
        index_map = torch.as_tensor(index_map, dtype=torch.long).reshape(-1).cpu()
        N_new = index_map.shape[0]
        assert bool((index_map < self.n).all()) and bool((index_map >= -1).all()), "index_map out of range"
        is_new = index_map < 0                                                     # [N_new]
        n_fresh = int(is_new.sum())
        fill = dict(fill or {})
        defaults = {
            "means": lambda k: torch.zeros(k, 3),
            "quats": lambda k: torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(k, 1),
            "log_scales": lambda k: torch.full((k, 3), math.log(0.1)),
            "features": lambda k: torch.randn(k, self.feat_dim) * self.feat_std,
            "class_features": lambda k: torch.randn(k, self.class_dim) * self.feat_std,
        }
        with torch.no_grad():
            for name in PARAM_NAMES:
                # rebuilt on the CPU (a few dozen rows), then put back on the parameter's device
                dev = getattr(self, name).device
                old = getattr(self, name).detach().cpu()
                new = torch.zeros((N_new,) + tuple(old.shape[1:]), dtype=old.dtype)
                new[~is_new] = old[index_map[~is_new]]
                if n_fresh:
                    rows = fill[name] if name in fill else defaults[name](n_fresh)
                    rows = torch.as_tensor(rows, dtype=old.dtype).cpu()
                    assert rows.shape == (n_fresh,) + tuple(old.shape[1:]), \
                        f"fill['{name}'] must be {(n_fresh,) + tuple(old.shape[1:])}, got {tuple(rows.shape)}"
                    new[is_new] = rows
                if name == "means" and mean_offset_m is not None:
                    assert mean_offset_m.shape == (N_new, 3)
                    new = new + mean_offset_m.to(dtype=new.dtype, device="cpu")
                setattr(self, name, nn.Parameter(new.to(dev)))
        return index_map

    def add_tokens(self, means: Tensor, scales_m: Tensor | float, features: Tensor | None = None,
                   class_features: Tensor | None = None) -> Tensor:
        """Append K tokens (means [K, 3] m, scales [K, 3] or scalar m, identity rotation).
        Returns index_map [N + K] (old rows, then -1 for each new one)."""
        means = torch.as_tensor(means, dtype=torch.float32)
        assert means.ndim == 2 and means.shape[1] == 3
        K = means.shape[0]
        scales = torch.as_tensor(scales_m, dtype=torch.float32).expand(K, 3)
        fill = {"means": means, "log_scales": torch.log(scales)}
        if features is not None:
            fill["features"] = features
        if class_features is not None:
            fill["class_features"] = class_features
        index_map = torch.cat([torch.arange(self.n), torch.full((K,), -1, dtype=torch.long)])
        return self.reindex(index_map, fill=fill)

    def remove_tokens(self, keep_mask: Tensor) -> Tensor:
        """Keep the rows where keep_mask [N] bool is True (order preserved). Returns index_map [N_kept]."""
        keep_mask = torch.as_tensor(keep_mask, dtype=torch.bool)
        assert keep_mask.shape == (self.n,), f"keep_mask must be [{self.n}], got {tuple(keep_mask.shape)}"
        return self.reindex(torch.nonzero(keep_mask).reshape(-1))

    def clone_token(self, i: int, offset_m: Tensor | Sequence[float]) -> Tensor:
        """Append a copy of token i whose mean is shifted by offset_m [3] (m). Returns index_map [N + 1]."""
        assert 0 <= i < self.n
        offset = torch.zeros(self.n + 1, 3)
        offset[-1] = torch.as_tensor(offset_m, dtype=torch.float32).reshape(3)
        index_map = torch.cat([torch.arange(self.n), torch.tensor([i])])
        return self.reindex(index_map, mean_offset_m=offset)

    # -- checkpoints (the token count changes during training)
    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor], feat_std: float = 0.1) -> "InstanceTokens":
        """A module sized to fit `state` (from `state_dict()`), with its values loaded."""
        tok = cls(state["means"], torch.exp(state["log_scales"]), state["features"].shape[1],
                  state["class_features"].shape[1], features=state["features"],
                  class_features=state["class_features"], quats=state["quats"], feat_std=feat_std)
        tok.load_state_dict(state)
        return tok

    # -- initialisation
    @classmethod
    def init_from_points(cls, points_by_mask: list[np.ndarray | Tensor], n_tokens: int, scale_m: float,
                         feat_dim: int, class_dim: int, generator: torch.Generator | None = None,
                         feat_std: float = 0.1) -> "InstanceTokens":
        """Initial tokens from back-projected 2D thing masks (paper Sec. IV-A "Initialization").

        points_by_mask: one [K_m, 3] array (world m) per 2D thing mask, from a few frames.
        Means: farthest-point sampling over the mask centroids, starting at a random centroid
        (drawn with `generator`), so that distinct objects are covered before a second token is
        put on an object seen in several frames. If n_tokens exceeds the number of masks, the
        remaining means are single points drawn at random from random masks (the paper's
        "randomly sample pixels from the 2D instance masks"). Identity rotation, isotropic
        scale scale_m (m; about the median object size), features ~ N(0, feat_std^2).
        """
        sets = [torch.as_tensor(np.asarray(p), dtype=torch.float32).reshape(-1, 3) for p in points_by_mask]
        sets = [p[torch.isfinite(p).all(-1)] for p in sets]
        sets = [p for p in sets if p.shape[0] > 0]
        assert n_tokens >= 1, "need at least one token"
        if not sets:
            raise ValueError("init_from_points: no 3D points in any mask (no thing masks with valid depth)")
        centroids = torch.stack([p.mean(0) for p in sets])                         # [K, 3] m
        start = int(torch.randint(centroids.shape[0], (1,), generator=generator))
        order = farthest_point_order(centroids, n_tokens, start)
        means = [centroids[order]]
        extra = n_tokens - order.shape[0]
        if extra > 0:
            which = torch.randint(len(sets), (extra,), generator=generator)
            pts = []
            for m in which.tolist():
                j = int(torch.randint(sets[m].shape[0], (1,), generator=generator))
                pts.append(sets[m][j])
            means.append(torch.stack(pts))
        means_t = torch.cat(means)                                                 # [n_tokens, 3]
        return cls(means_t, float(scale_m), feat_dim, class_dim, feat_std=feat_std, generator=generator)


def init_from_points(points_by_mask: list[np.ndarray | Tensor], n_tokens: int, scale_m: float, feat_dim: int,
                     class_dim: int, generator: torch.Generator | None = None, feat_std: float = 0.1
                     ) -> InstanceTokens:
    """Module-level alias of `InstanceTokens.init_from_points`."""
    return InstanceTokens.init_from_points(points_by_mask, n_tokens, scale_m, feat_dim, class_dim, generator,
                                           feat_std)


class TokenClassHead(nn.Module):
    """h_SI (Eq. 22): a small MLP class feature F_i [N, c] -> thing-class logits [N, C_thing].

    Shared across tokens, so it is NOT resized when tokens are added or removed."""

    def __init__(self, class_dim: int, n_thing: int, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(class_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_thing))
        self.n_thing = n_thing

    def forward(self, class_features: Tensor) -> Tensor:
        assert class_features.ndim == 2
        return self.net(class_features)                                            # [N, C_thing]


# ----------------------------------------------------------------------------- optimizer patching

def resize_adam_state(optimizer: torch.optim.Optimizer, old_params: Sequence[Tensor],
                      new_params: Sequence[Tensor], index_map: Tensor) -> None:
    """Swap old_params for new_params inside `optimizer` and carry their per-row state over.

    index_map [N_new] long: old row of each new row (-1: new row, zero moments). Every state
    tensor with the old parameter's shape (Adam exp_avg, exp_avg_sq, max_exp_avg_sq; SGD
    momentum_buffer) is re-indexed the same way; other state (Adam's step) is kept unchanged.
    A parameter the optimizer does not hold is ignored; a parameter without state yet gets none.
    """
    assert len(old_params) == len(new_params)
    index_map = torch.as_tensor(index_map, dtype=torch.long).reshape(-1)
    survivors = index_map >= 0
    for old, new in zip(old_params, new_params):
        assert new.shape[0] == index_map.shape[0], "new parameter rows must match index_map"
        found = False
        for group in optimizer.param_groups:
            for k, p in enumerate(group["params"]):
                if p is old:
                    group["params"][k] = new
                    found = True
        if not found:
            continue
        state = optimizer.state.pop(old, None)
        if not state:
            continue
        new_state = {}
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == old.shape and value.ndim >= 1:
                moved = torch.zeros(new.shape, dtype=value.dtype, device=value.device)
                moved[survivors.to(value.device)] = value[index_map[survivors].to(value.device)]
                new_state[key] = moved
            else:
                new_state[key] = value
        optimizer.state[new] = new_state
