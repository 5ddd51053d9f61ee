"""`recon.model.sampling.sample_along_rays` on hand-computed rays.

Guards the depth-guided sampling rule the trainer and the renderers share: rays with valid depth D get
n_strat stratified samples over [near, min(far, D + band)] plus n_surf over [max(D - band, near), D + band];
rays without depth (D = 0) get all n_strat + n_surf samples stratified over [near, far]; the output is sorted
along each ray; gen=None gives the bin midpoints (deterministic), a seeded generator one jittered sample per bin,
reproducible from the seed.
"""
from __future__ import annotations

import torch

from recon.model.sampling import sample_along_rays

NEAR, FAR, BAND = 0.1, 3.0, 0.2
N_STRAT, N_SURF = 4, 2
# ray A: D = 2.0; ray B: no depth; ray C: D = 2.9 (D + band beyond far); ray D: D = 0.15 (D - band before near)
DEPTH = torch.tensor([2.0, 0.0, 2.9, 0.15])


def _z(gen=None, depth=DEPTH, n_strat=N_STRAT, n_surf=N_SURF):
    return sample_along_rays(depth, NEAR, FAR, n_strat, n_surf, BAND, gen)


def test_midpoints_without_generator_by_hand():
    z = _z()
    assert z.shape == (4, N_STRAT + N_SURF) and z.dtype == torch.float32
    # bin midpoints: a + (b - a) * (k + 0.5) / n
    # ray A, D = 2.0: stratified over [0.1, min(3.0, 2.0 + 0.2) = 2.2], width 2.1, fractions 1/8, 3/8, 5/8, 7/8
    #   -> 0.1 + 2.1 * [0.125, 0.375, 0.625, 0.875] = [0.3625, 0.8875, 1.4125, 1.9375]
    #   surface over [1.8, 2.2], width 0.4, fractions 1/4, 3/4 -> [1.9, 2.1]
    ray_a = [0.3625, 0.8875, 1.4125, 1.9, 1.9375, 2.1]
    # ray B, no depth: 6 samples over [0.1, 3.0], width 2.9, fractions 1/12, 3/12, ..., 11/12
    #   -> 0.1 + 2.9 * [1, 3, 5, 7, 9, 11] / 12 = [0.341667, 0.825, 1.308333, 1.791667, 2.275, 2.758333]
    ray_b = [0.1 + 2.9 * k / 12 for k in (1, 3, 5, 7, 9, 11)]
    # ray C, D = 2.9: stratified over [0.1, min(3.0, 3.1) = 3.0] -> 0.1 + 2.9 * [1, 3, 5, 7] / 8
    #   = [0.4625, 1.1875, 1.9125, 2.6375]; surface over [2.7, 3.1] (not clipped at far) -> [2.8, 3.0]
    ray_c = [0.4625, 1.1875, 1.9125, 2.6375, 2.8, 3.0]
    # ray D, D = 0.15: stratified over [0.1, 0.35], width 0.25 -> [0.13125, 0.19375, 0.25625, 0.31875];
    #   surface over [max(-0.05, near) = 0.1, 0.35] -> 0.1 + 0.25 * [0.25, 0.75] = [0.1625, 0.2875]
    ray_d = [0.13125, 0.1625, 0.19375, 0.25625, 0.2875, 0.31875]
    expected = torch.tensor([ray_a, ray_b, ray_c, ray_d])
    torch.testing.assert_close(z, expected, atol=1e-6, rtol=0)
    # deterministic: the same again
    assert torch.equal(_z(), z)


def test_no_surface_samples_and_no_depth_at_all():
    # every ray without depth: n_strat + n_surf samples over [near, far] whatever the split
    z = _z(depth=torch.zeros(2), n_strat=1, n_surf=3)
    # 4 samples over [0.1, 3.0]: 0.1 + 2.9 * [1, 3, 5, 7] / 8
    expected = torch.tensor([[0.4625, 1.1875, 1.9125, 2.6375]] * 2)
    torch.testing.assert_close(z, expected, atol=1e-6, rtol=0)
    # only surface samples (what the label renderer asks for): D = 2.0 -> [1.9, 2.1];
    # no depth -> 0.1 + 2.9 * [1, 3] / 4 = [0.825, 2.275]
    z = _z(depth=torch.tensor([2.0, 0.0]), n_strat=0, n_surf=2)
    torch.testing.assert_close(z, torch.tensor([[1.9, 2.1], [0.825, 2.275]]), atol=1e-6, rtol=0)
    # no surface samples at all: a ray with depth still stops at min(far, D + band) (D = 2.0 -> [0.1, 2.2]:
    # 0.1 + 2.1 * [1, 3] / 4 = [0.625, 1.675]); one without depth spans [near, far] as above
    z = _z(depth=torch.tensor([2.0, 0.0]), n_strat=2, n_surf=0)
    torch.testing.assert_close(z, torch.tensor([[0.625, 1.675], [0.825, 2.275]]), atol=1e-6, rtol=0)


def _count(z: torch.Tensor, a: float, b: float) -> int:
    return int(((z >= a) & (z <= b)).sum())


def test_seeded_samples_one_per_bin_and_reproducible():
    z1 = _z(torch.Generator().manual_seed(7))
    z2 = _z(torch.Generator().manual_seed(7))
    z3 = _z(torch.Generator().manual_seed(8))
    assert torch.equal(z1, z2)                                        # same seed: same samples
    assert not torch.equal(z1, z3)                                    # other seed: other samples
    assert not torch.allclose(z1, _z(), atol=1e-4)                    # jittered, not the midpoints
    assert bool((z1[:, 1:] >= z1[:, :-1]).all())                     # sorted along each ray
    gen = torch.Generator().manual_seed(7)
    first, second = _z(gen), _z(gen)
    assert torch.equal(first, z1) and not torch.equal(first, second)   # the generator's stream advances
    a, b, c, d = z1
    # ray A: stratified bins of [0.1, 2.2] are [0.1, 0.625], [0.625, 1.15], [1.15, 1.675], [1.675, 2.2];
    # the surface bins [1.8, 2.0], [2.0, 2.2] lie in the last one: 1 sample in each of the first three,
    # 1 + 2 = 3 in the last, at least one in each surface bin; nothing outside [0.1, 2.2]
    counts_a = [_count(a, 0.1, 0.625), _count(a, 0.625, 1.15), _count(a, 1.15, 1.675), _count(a, 1.675, 2.2)]
    assert counts_a == [1, 1, 1, 3]
    assert _count(a, 1.8, 2.0) >= 1 and _count(a, 2.0, 2.2) >= 1
    # ray B (no depth): one sample in each sixth of [0.1, 3.0] (bin width 2.9 / 6)
    edges = [0.1 + 2.9 * k / 6 for k in range(7)]
    assert [_count(b, edges[k], edges[k + 1]) for k in range(6)] == [1] * 6
    # ray C: stratified quarters of [0.1, 3.0] (edges 0.1, 0.825, 1.55, 2.275, 3.0), surface halves of
    # [2.7, 3.1]: the first three quarters hold one sample each, the rest (3) lie in [2.275, 3.1]
    counts_c = [_count(c, 0.1, 0.825), _count(c, 0.825, 1.55), _count(c, 1.55, 2.275), _count(c, 2.275, 3.1)]
    assert counts_c == [1, 1, 1, 3]
    assert _count(c, 2.7, 2.9) >= 1 and _count(c, 2.9, 3.1) >= 1
    # ray D: all six samples in [0.1, 0.35]
    assert _count(d, 0.1, 0.35) == 6
