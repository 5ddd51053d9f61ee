"""MLPs and the neural fields (geometry / semantics / instance keys / interim colour).

Coordinates
-----------
Every field takes ``x01`` [N, 3]: the position in the normalised scene box, each axis in [0, 1]
(``x01 = (x_world - box_min) / (box_max - box_min)``). The scene box has half-extents
``h = (box_max - box_min) / 2`` metres per axis.

SDF units and scaling (SDFField)
--------------------------------
The SDF MLP sees *isotropic* centred coordinates ``xc = (2 * x01 - 1) * h / h_max`` (metres divided by
``h_max = max(h)``; the longest box axis spans [-1, 1]) and predicts ``s_net`` in the same unit, so

    sdf_m = h_max * s_net                        (returned SDF is in metres)
    d sdf_m / d x_world_i = h_max * d s_net/d x01_i * d x01_i/d x_world_i
                          = (d sdf_m / d x01_i) / (2 * h_i)

``sdf_and_gradient`` returns the world-space gradient (metres per metre, unit norm for a true SDF),
which is what the eikonal loss needs. For a cubic box (h_i = h for all i) the factor is 1 / (2 h).

Geometric initialisation (SAL, Atzmon & Lipman 2020; as in IDR / NeuS): the raw ``xc`` is concatenated
to the grid features, hidden weights ~ N(0, sqrt(2 / fan_out)), biases 0, the grid-feature columns of
the first layer ~ N(0, grid_feat_init_std) (0 would be exact SAL, but then the grid gets no gradient
before the first step), and the SDF output row ~ N(sqrt(pi / fan_in), 1e-4) with bias -r. The net then
starts close to ``|xc| - r`` (a sphere of radius r around the box centre, negative inside). With
``inside_out=True`` the signs flip (``r - |xc|``): for indoor scenes the cameras are inside the room,
which is free space and must have positive SDF.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from fields.hashgrid import HashGridConfig, make_hash_grid
from fields.stages import stage

SOFTPLUS_BETA = 100.0  # softplus(beta=100) ~ ReLU but smooth: second derivatives for the eikonal term


class MLP(nn.Module):
    """in_dim -> [hidden] * n_hidden_layers -> out_dim; activation between layers, none at the end."""

    def __init__(self, in_dim: int, hidden: int, n_hidden_layers: int, out_dim: int, activation: str = "relu"):
        super().__init__()
        assert activation in ("relu", "softplus"), activation
        dims = [in_dim] + [hidden] * n_hidden_layers + [out_dim]
        self.in_dim, self.out_dim = in_dim, out_dim
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = nn.ReLU() if activation == "relu" else nn.Softplus(beta=SOFTPLUS_BETA)

    def forward(self, x: Tensor) -> Tensor:
        assert x.dim() == 2 and x.shape[1] == self.in_dim, f"expected [N, {self.in_dim}], got {tuple(x.shape)}"
        with stage("mlp"):
            for i, layer in enumerate(self.layers):
                x = layer(x)
                if i < len(self.layers) - 1:
                    x = self.act(x)
        return x


def _half_extents(box_half_extent_m: float | Sequence[float]) -> Tensor:
    h = torch.as_tensor(np.broadcast_to(np.asarray(box_half_extent_m, dtype=np.float64), (3,)).copy())
    assert torch.all(h > 0), "box half-extents must be positive"
    return h.float()


class SDFField(nn.Module):
    """Geometry: hash grid + MLP. x01 [N, 3] -> (sdf [N] metres, geo features [N, geo_feat_dim])."""

    def __init__(
        self,
        grid_cfg: HashGridConfig,
        hidden: int = 64,
        n_layers: int = 2,
        geo_feat_dim: int = 15,
        sphere_init_radius_m: float | None = None,
        inside_out: bool = False,
        box_half_extent_m: float | Sequence[float] = 1.0,
        grid_feat_init_std: float = 1e-3,
    ):
        super().__init__()
        self.grid = make_hash_grid(grid_cfg)
        self.geo_feat_dim = geo_feat_dim
        self.inside_out = inside_out
        h = _half_extents(box_half_extent_m)
        self.register_buffer("half_extent_m", h)  # [3]
        self.h_max = float(h.max())
        self.register_buffer("coord_scale", h / self.h_max)  # [3]: xc = (2 x01 - 1) * coord_scale
        if sphere_init_radius_m is None:
            sphere_init_radius_m = 0.5 * float(h.min())
        self.sphere_init_radius_m = float(sphere_init_radius_m)
        self.mlp = MLP(3 + self.grid.out_dim, hidden, n_layers, 1 + geo_feat_dim, activation="softplus")
        self._geometric_init(self.sphere_init_radius_m / self.h_max, grid_feat_init_std)

    @torch.no_grad()
    def _geometric_init(self, radius_norm: float, grid_feat_init_std: float) -> None:
        layers = self.mlp.layers
        for i, lin in enumerate(layers):
            fan_in, fan_out = lin.in_features, lin.out_features
            if i == len(layers) - 1:
                sign = -1.0 if self.inside_out else 1.0
                nn.init.normal_(lin.weight, 0.0, math.sqrt(1.0 / fan_in))  # geo feature rows
                nn.init.normal_(lin.weight[:1], sign * math.sqrt(math.pi / fan_in), 1e-4)  # sdf row
                nn.init.zeros_(lin.bias)
                lin.bias[0] = -sign * radius_norm
            else:
                nn.init.normal_(lin.weight, 0.0, math.sqrt(2.0) / math.sqrt(fan_out))
                nn.init.zeros_(lin.bias)
                if i == 0:
                    nn.init.normal_(lin.weight[:, 3:], 0.0, grid_feat_init_std)

    def centred_coords(self, x01: Tensor) -> Tensor:
        """x01 [N, 3] -> isotropic centred coords [N, 3] in units of h_max (longest axis in [-1, 1])."""
        return (2.0 * x01 - 1.0) * self.coord_scale

    def forward(self, x01: Tensor) -> tuple[Tensor, Tensor]:
        assert x01.dim() == 2 and x01.shape[1] == 3, f"x01 must be [N, 3], got {tuple(x01.shape)}"
        feats = self.grid(x01)  # [N, L*F]
        out = self.mlp(torch.cat([self.centred_coords(x01), feats], dim=-1))  # [N, 1 + G]
        sdf_m = out[:, 0] * self.h_max  # [N] metres
        geo = out[:, 1:]  # [N, G]
        return sdf_m, geo

    def sdf(self, x01: Tensor) -> Tensor:
        return self.forward(x01)[0]

    def world_gradient_scale(self) -> Tensor:
        """[3] factors d x01_i / d x_world_i = 1 / (2 h_i) (per metre)."""
        return 0.5 / self.half_extent_m

    def sdf_and_gradient(self, x01: Tensor, create_graph: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """(sdf [N] metres, geo [N, G], d sdf / d x_world [N, 3]) via autograd.

        ``create_graph=True`` keeps the graph of the gradient so that an eikonal loss on it trains the
        field (double backward). If x01 does not require grad, a detached copy is used as the leaf.
        """
        with torch.enable_grad():
            if not x01.requires_grad:
                x01 = x01.detach().requires_grad_(True)
            sdf_m, geo = self.forward(x01)
            (g01,) = torch.autograd.grad(sdf_m, x01, torch.ones_like(sdf_m), create_graph=create_graph)
        grad_world = g01 * self.world_gradient_scale()  # [N, 3] chain rule, see module docstring
        return sdf_m, geo, grad_world


class SemanticField(nn.Module):
    """Semantics: hash grid + MLP. x01 [N, 3] -> class logits [N, C]."""

    def __init__(self, grid_cfg: HashGridConfig, n_classes: int, hidden: int = 64, n_hidden_layers: int = 1):
        super().__init__()
        self.grid = make_hash_grid(grid_cfg)
        self.n_classes = n_classes
        self.mlp = MLP(self.grid.out_dim, hidden, n_hidden_layers, n_classes, activation="relu")

    def forward(self, x01: Tensor) -> Tensor:
        assert x01.dim() == 2 and x01.shape[1] == 3, f"x01 must be [N, 3], got {tuple(x01.shape)}"
        logits = self.mlp(self.grid(x01))
        assert logits.shape == (x01.shape[0], self.n_classes)
        return logits


class InstanceKeyField(nn.Module):
    """Instance keys: hash grid + small projection. x01 [N, 3] -> f_k [N, feat_dim].

    ``n_hidden_layers=0`` gives a single linear projection of the grid features.
    """

    def __init__(self, grid_cfg: HashGridConfig, feat_dim: int = 16, hidden: int = 64, n_hidden_layers: int = 1):
        super().__init__()
        self.grid = make_hash_grid(grid_cfg)
        self.feat_dim = feat_dim
        self.proj = MLP(self.grid.out_dim, hidden, n_hidden_layers, feat_dim, activation="relu")

    def forward(self, x01: Tensor) -> Tensor:
        assert x01.dim() == 2 and x01.shape[1] == 3, f"x01 must be [N, 3], got {tuple(x01.shape)}"
        fk = self.proj(self.grid(x01))
        assert fk.shape == (x01.shape[0], self.feat_dim)
        return fk


class ColorHead(nn.Module):
    """Interim appearance: (geo features [N, G], optional unit view dir [N, 3]) -> rgb [N, 3] in [0, 1]."""

    def __init__(self, geo_feat_dim: int, hidden: int = 64, n_hidden_layers: int = 2, use_view_dir: bool = False):
        super().__init__()
        self.geo_feat_dim = geo_feat_dim
        self.use_view_dir = use_view_dir
        in_dim = geo_feat_dim + (3 if use_view_dir else 0)
        self.mlp = MLP(in_dim, hidden, n_hidden_layers, 3, activation="relu")

    def forward(self, geo_feat: Tensor, view_dir: Tensor | None = None) -> Tensor:
        assert geo_feat.dim() == 2 and geo_feat.shape[1] == self.geo_feat_dim
        x = geo_feat
        if self.use_view_dir:
            assert view_dir is not None and view_dir.shape == (geo_feat.shape[0], 3), "view_dir [N, 3] required"
            x = torch.cat([x, view_dir], dim=-1)
        return torch.sigmoid(self.mlp(x))
