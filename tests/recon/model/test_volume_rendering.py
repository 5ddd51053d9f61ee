"""S-density rendering (Eq. 10-11) against a hand-computed ray, stability and gradients."""
import math

import pytest
import torch

from recon.model.volume_rendering import accumulated_opacity, render, render_depth, sdf_to_alpha, transmittance, transmittance_weights




# Hand-computed ray, xi = 1: s = [ln 3, 0, -ln 3, -ln 9] gives sig(s) = [3/4, 1/2, 1/4, 1/10]
#   alpha_1 = (3/4 - 1/2) / (3/4) = 1/3
#   alpha_2 = (1/2 - 1/4) / (1/2) = 1/2
#   alpha_3 = (1/4 - 1/10) / (1/4) = 3/5
#   alpha_4 = 0                                (last sample: no successor)
#   T = [1, 2/3, 2/3 * 1/2 = 1/3, 1/3 * 2/5 = 2/15]
#   w = T * alpha = [1/3, 1/3, 1/5, 0]   (sum 13/15; telescopes to (sig_j - sig_{j+1}) / sig_1)
#   depth with rho = [1, 2, 3, 4]: 1/3 + 2/3 + 3/5 = 1.6
SDF = torch.tensor([[math.log(3.0), 0.0, -math.log(3.0), -math.log(9.0)]], dtype=torch.float64)
ALPHA = torch.tensor([[1 / 3, 1 / 2, 3 / 5, 0.0]], dtype=torch.float64)
T_EXP = torch.tensor([[1.0, 2 / 3, 1 / 3, 2 / 15]], dtype=torch.float64)
W = torch.tensor([[1 / 3, 1 / 3, 1 / 5, 0.0]], dtype=torch.float64)
Z = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)


def test_hand_computed_ray():
    alpha = sdf_to_alpha(SDF, 1.0)
    assert torch.allclose(alpha, ALPHA, atol=1e-12)
    assert torch.allclose(transmittance(alpha), T_EXP, atol=1e-12)
    w = transmittance_weights(alpha)
    assert torch.allclose(w, W, atol=1e-12)
    assert torch.allclose(render_depth(w, Z), torch.tensor([1.6], dtype=torch.float64))
    assert torch.allclose(accumulated_opacity(w), torch.tensor([13 / 15], dtype=torch.float64))
    # normalised depth: 1.6 / (13/15) = 24/13
    assert torch.allclose(render_depth(w, Z, normalize=True), torch.tensor([24 / 13], dtype=torch.float64))
    # xi scales s: xi = 2 on s / 2 gives the same ray
    assert torch.allclose(sdf_to_alpha(SDF / 2, torch.tensor(2.0, dtype=torch.float64)), ALPHA, atol=1e-12)


def test_render_values():
    # values [R=1, S=4, C=2]: channel 0 = [3, 6, 5, 100], channel 1 = 1
    # channel 0: 3/3 + 6/3 + 5/5 + 0 * 100 = 4; channel 1: the opacity 13/15
    v = torch.tensor([[[3.0, 1.0], [6.0, 1.0], [5.0, 1.0], [100.0, 1.0]]], dtype=torch.float64)
    out = render(W, v)
    assert out.shape == (1, 2)
    assert torch.allclose(out, torch.tensor([[4.0, 13 / 15]], dtype=torch.float64))


def test_rising_sdf_gives_zero_alpha():
    # leaving a surface (s increasing): sig(s_{j+1}) > sig(s_j), the ratio is clipped: alpha = 0
    alpha = sdf_to_alpha(torch.tensor([[-1.0, 0.0, 1.0]]), 5.0)
    assert torch.equal(alpha, torch.zeros(1, 3))


def test_stability_large_xi_s():
    s = torch.tensor([[1000.0, 1000.0, -1000.0, -1000.0, 1000.0, -1000.0]], requires_grad=True)
    alpha = sdf_to_alpha(s, 1.0)
    # + -> + : 0;  + -> - : 1;  - -> - : 0 (log ratio 0);  - -> + : 0 (rising);  + -> - : 1;  last : 0
    assert torch.allclose(alpha.detach(), torch.tensor([[0.0, 1.0, 0.0, 0.0, 1.0, 0.0]]))
    w = transmittance_weights(alpha)
    assert torch.allclose(w.detach(), torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0, 0.0]]))
    (w * torch.arange(6.0)).sum().backward()
    assert torch.isfinite(s.grad).all()
    # a large learnable xi times moderate sdf
    xi = torch.tensor(1e4, requires_grad=True)
    s2 = torch.linspace(0.5, -0.5, 9)[None].requires_grad_(True)
    w2 = transmittance_weights(sdf_to_alpha(s2, xi))
    d2 = render_depth(w2, torch.arange(9.0)[None])
    d2.sum().backward()
    assert torch.isfinite(w2).all() and torch.isfinite(s2.grad).all() and torch.isfinite(xi.grad)
    # s = (.5, .375, .25, .125, 0, -.125, ...): sig(xi s) = 1 (saturated) up to sample 3, 1/2 at sample 4 (s = 0),
    # 0 after it. alpha_3 = (1 - 1/2) / 1 = 1/2, alpha_4 = (1/2 - 0) / (1/2) = 1, every other alpha 0:
    # w = (0, 0, 0, 1/2, 1/2, 0, ...) and the depth is 3 * 1/2 + 4 * 1/2 = 3.5: each weight sits at the start
    # of its interval, so a surface exactly on sample 4 renders half a sample short
    assert torch.allclose(w2.detach(), torch.tensor([[0, 0, 0, 0.5, 0.5, 0, 0, 0, 0]]), atol=1e-6)
    assert d2.item() == pytest.approx(3.5, abs=1e-5)


def test_gradients_flow_and_match_finite_differences():
    s = (torch.linspace(0.8, -0.8, 6, dtype=torch.float64) + 0.05 * torch.randn(6, dtype=torch.float64))[None]
    s = s.repeat(2, 1).requires_grad_(True)
    xi = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    z = torch.linspace(1.0, 2.0, 6, dtype=torch.float64)[None].repeat(2, 1)

    def f(s, xi):
        w = transmittance_weights(sdf_to_alpha(s, xi))
        return render_depth(w, z), render(w, torch.stack([z, z**2], -1))

    assert torch.autograd.gradcheck(f, (s, xi))
