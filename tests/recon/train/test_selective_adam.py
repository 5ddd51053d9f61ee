"""recon/train/selective_adam.py: Adam on chosen rows, by hand and against torch.optim.Adam."""
import torch

from recon.train.selective_adam import SelectiveAdam


def test_first_step_by_hand_and_untouched_rows_stay():
    # Adam's first step: m = (1 - b1) g, v = (1 - b2) g^2, bias-corrected m / sqrt(v) = sign(g),
    # so each updated entry moves by -lr sign(g); rows outside `rows` keep parameters and moments.
    p = torch.nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
    opt = SelectiveAdam([p], lr=0.1, eps=0.0)
    p.grad = torch.tensor([[0.5, -2.0], [7.0, 7.0], [-1.0, 3.0]])
    opt.step(torch.tensor([0, 2]))
    assert torch.allclose(p.detach(), torch.tensor([[0.9, 2.1], [3.0, 4.0], [5.1, 5.9]]))
    st = opt.state[p]
    assert torch.allclose(st["exp_avg"][1], torch.zeros(2)) and torch.allclose(st["exp_avg_sq"][1], torch.zeros(2))
    assert torch.allclose(st["exp_avg"][0], 0.1 * torch.tensor([0.5, -2.0]))
    assert torch.allclose(st["exp_avg_sq"][2], 0.001 * torch.tensor([1.0, 9.0]))


def test_all_rows_is_torch_adam_and_state_loads_both_ways():
    gen = torch.Generator().manual_seed(0)
    a = torch.nn.Parameter(torch.randn(20, 3, generator=gen))
    b = torch.nn.Parameter(a.detach().clone())
    ours = SelectiveAdam([{"params": [a], "lr": 0.05}], eps=1e-15)
    ref = torch.optim.Adam([{"params": [b], "lr": 0.05}], eps=1e-15)
    for _ in range(5):
        grad = torch.randn(20, 3, generator=gen)
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.step(torch.arange(20))
        ref.step()
    assert torch.allclose(a, b, atol=1e-6)
    # a checkpoint of either optimiser loads into the other (same state keys)
    again = SelectiveAdam([{"params": [a], "lr": 0.05}], eps=1e-15)
    again.load_state_dict(ref.state_dict())
    assert torch.allclose(again.state[a]["exp_avg"], ref.state[b]["exp_avg"])
