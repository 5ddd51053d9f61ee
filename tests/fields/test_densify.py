"""fields/densify.py: clone, split and prune as specified, Adam state carried."""
import math

import torch

from fields.densify import DensifyConfig, DensifyStrategy, densify_and_prune
from fields.gaussians import GaussianModel, rgb_to_sh_dc


def three() -> GaussianModel:
    means = torch.tensor([[0.0, 0, 1], [1.0, 0, 1], [2.0, 0, 1]])
    log_scales = torch.log(torch.tensor([[0.01, 0.01, 0.01], [0.1, 0.05, 0.02], [0.01, 0.01, 0.01]]))
    op = torch.tensor([2.0, 2.0, -6.0])                 # the third is nearly transparent (0.0025)
    return GaussianModel(means, torch.tensor([[1.0, 0, 0, 0]]).repeat(3, 1), log_scales, op,
                         rgb_to_sh_dc(torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]])), sh_degree=1)


def adam_with_state(g: GaussianModel) -> torch.optim.Adam:
    opt = torch.optim.Adam([getattr(g, n) for n in GaussianModel.PARAMS], lr=1e-3)
    (g.means.sum() + g.log_scales.sum() + g.opacity_logits.sum() + g.sh_dc.sum() + g.quats.sum()
     + g.sh_rest.sum()).backward()
    opt.step()
    return opt


def test_clone_split_prune_by_hand_with_adam_state_carried():
    g = three()
    opt = adam_with_state(g)
    old_m = opt.state[g.means]["exp_avg"].clone()
    old_means = g.means.detach().clone()
    old_ls = g.log_scales.detach().clone()
    old_dc = g.sh_dc.detach().clone()
    counts = densify_and_prune(g, opt, clone=torch.tensor([True, False, False]),
                               split=torch.tensor([False, True, False]), prune=torch.tensor([False, False, True]),
                               gen=torch.Generator().manual_seed(0))
    assert counts == {"cloned": 1, "split": 1, "pruned": 1, "n": 4}
    # rows: the kept first Gaussian, its clone, the two children of the second
    assert torch.equal(g.means[0], old_means[0]) and torch.equal(g.means[1], old_means[0])
    assert torch.allclose(g.log_scales[2:], (old_ls[1] - math.log(1.6)).expand(2, 3))
    # children lie within 4 sigma of their parent along each axis
    assert ((g.means[2:] - old_means[1]).abs() <= 4 * old_ls[1].exp()).all()
    assert torch.equal(g.sh_dc[2:], old_dc[1].expand(2, 3))
    # Adam: the optimiser holds the new tensors; the kept row's moments are carried, new rows start at 0
    assert all(p is getattr(g, n) for p, n in zip(opt.param_groups[0]["params"], GaussianModel.PARAMS))
    m = opt.state[g.means]["exp_avg"]
    assert m.shape == (4, 3) and torch.equal(m[0], old_m[0]) and float(m[1:].abs().sum()) == 0.0
    # and it still steps
    g.means.sum().backward()
    opt.step()


def test_strategy_triggers_on_gradient_only_when_due():
    g = three()
    opt = adam_with_state(g)
    cfg = DensifyConfig(start_iters=10, stop_iters=100, every=10, grad_threshold_px=0.5, split_scale_m=0.05,
                        prune_opacity=0.005)
    st = DensifyStrategy(cfg)
    vis = torch.tensor([True, True, True])
    st.after_backward(g, torch.tensor([[1.0, 0.0], [0.0, 0.2], [0.0, 0.0]]), torch.arange(3), vis)
    assert st.step(5, g, opt) == {}                      # not due: nothing changes
    assert g.n == 3
    counts = st.step(10, g, opt)
    # the first is hot and small: cloned; the second is cold; the third is pruned for its opacity
    assert (counts["cloned"], counts["split"], counts["pruned"], g.n) == (1, 0, 1, 3)
    assert st.grad_sum.shape == (3,) and float(st.grad_sum.sum()) == 0.0
    assert not st.due(100) and not st.due(15)


def test_cap_on_growth():
    g = three()
    st = DensifyStrategy(DensifyConfig(start_iters=1, every=1, grad_threshold_px=0.1, max_gaussians=3,
                                       prune_opacity=0.0))
    st.after_backward(g, torch.ones(3, 2), torch.arange(3), torch.ones(3, dtype=torch.bool))
    counts = st.step(1, g, None)
    assert counts["cloned"] + counts["split"] == 0 and g.n == 3
