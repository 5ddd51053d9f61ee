"""Hash-grid encoding: level maths, hand-computed lookups, vectorised backend vs loop reference."""

import pytest
import torch

from fields.hashgrid import (
    PRIME_Y,
    PRIME_Z,
    HashGridConfig,
    HashGridEncoding,
    benchmark_hash_grid,
    encode_level_reference,
    estimate_hash_grid_bytes,
    growth_factor,
    hash_grid_indices_weights,
    interpolate_table,
    level_is_dense,
    level_resolutions,
    make_hash_grid,
    tcnn_available,
)




def small_cfg(**kw):
    # levels 4, 6, 10, 15, 25, 40 with T = 2^12: (N+1)^3 <= 4096 for N <= 15 -> 4 dense + 2 hashed levels
    base = dict(n_levels=6, log2_hashmap_size=12, base_resolution=4, finest_resolution=40, init_scale=1.0, backend="torch")
    base.update(kw)
    return HashGridConfig(**base)


def test_level_resolutions_default():
    cfg = HashGridConfig()
    # b = exp((ln 512 - ln 16) / 15) = 32^(1/15) = 2^(1/3) = 1.259921...
    assert growth_factor(cfg) == pytest.approx(2 ** (1 / 3))
    # N_l = floor(16 * 2^(l/3)): 16, 20.16, 25.4, 32, 40.3, 50.8, 64, 80.6, 101.6, 128, ...
    assert level_resolutions(cfg) == [16, 20, 25, 32, 40, 50, 64, 80, 101, 128, 161, 203, 256, 322, 406, 512]
    # dense iff (N+1)^3 <= 2^19 = 524288: 80^3 = 512000 ok (N=79), 81^3 = 531441 not -> N <= 64 dense
    dense = [level_is_dense(r, 2**19) for r in level_resolutions(cfg)]
    assert dense == [True] * 7 + [False] * 9
    assert HashGridEncoding(HashGridConfig(log2_hashmap_size=19, n_levels=16)).n_dense == 7
    assert level_resolutions(HashGridConfig(n_levels=1, base_resolution=8, finest_resolution=8)) == [8]


def test_dense_lookup_hand_computed():
    # one dense level, N = 2: 3^3 = 27 vertices; table[row] = row with row = i + 3 j + 9 k, i.e. the
    # linear function f(i, j, k) = i + 3 j + 9 k, which trilinear interpolation reproduces exactly.
    table = torch.arange(27, dtype=torch.float32)[:, None]  # [T=27, F=1]
    x = torch.tensor([[0.25, 0.5, 0.75]])  # pos = x * 2 = (0.5, 1.0, 1.5): f = 0.5 + 3 * 1 + 9 * 1.5 = 17
    assert encode_level_reference(table, x, 2, dense=True).item() == pytest.approx(17.0)
    x1 = torch.tensor([[1.0, 1.0, 1.0]])  # the far corner (2, 2, 2): row 2 + 6 + 18 = 26, cell clamped to 1
    assert encode_level_reference(table, x1, 2, dense=True).item() == pytest.approx(26.0)
    # the vectorised path on the same level (one-level grid whose N = 2 and T = 32 >= 27: dense)
    enc = HashGridEncoding(HashGridConfig(n_levels=1, n_features_per_level=2, log2_hashmap_size=5,
                                          base_resolution=2, finest_resolution=2, backend="torch"))
    assert enc.n_dense == 1
    with torch.no_grad():
        enc.params.zero_()
        enc.params[0, :27, 0] = torch.arange(27.0)
        enc.params[0, :27, 1] = -torch.arange(27.0)
    out = enc(torch.cat([x, x1]))
    assert torch.allclose(out, torch.tensor([[17.0, -17.0], [26.0, -26.0]]))


def test_hashed_lookup_hand_computed():
    # vertex (1, 2, 3), T = 2^10: 2 * 2654435761 = 5308871522 = 1024 * 5184444 + 866,
    # 3 * 805459861 = 2416379583 = 1024 * 2359745 + 703; 1 ^ 866 ^ 703 = 1 ^ 477 = 476
    assert (1 ^ 2 * PRIME_Y ^ 3 * PRIME_Z) % 1024 == 476
    table = torch.zeros(1024, 1)
    table[476, 0] = 1.0
    # a point exactly on vertex (1, 2, 3) of an N = 4 grid: x = (0.25, 0.5, 0.75) -> weight 1 on that vertex
    out = encode_level_reference(table, torch.tensor([[0.25, 0.5, 0.75]]), 4, dense=False)
    assert out.item() == pytest.approx(1.0)
    idx, w = hash_grid_indices_weights(
        torch.tensor([[0.25, 0.5, 0.75]]), torch.tensor([4.0]), torch.tensor([[1, PRIME_Y % 1024, PRIME_Z % 1024]]),
        torch.tensor([0]), n_dense=0, table_size=1024,
    )
    assert idx.shape == (8, 1, 1) and w.shape == (8, 1, 1)
    assert idx[0, 0, 0].item() == 476 and w[0, 0, 0].item() == pytest.approx(1.0)  # corner (0,0,0) of cell (1,2,3)


@pytest.mark.parametrize("use_complex", [True, False])
@pytest.mark.parametrize("int32", [True, False])
@pytest.mark.parametrize("corner_inner", [True, False])
def test_vectorised_matches_reference(use_complex, int32, corner_inner):
    torch.manual_seed(0)
    enc = HashGridEncoding(small_cfg(use_complex_gather=use_complex, int32_indices=int32, corner_inner=corner_inner))
    assert enc.resolutions == [4, 6, 10, 15, 25, 40] and enc.n_dense == 4
    assert enc.index_dtype == (torch.int32 if int32 else torch.int64)
    x = torch.rand(40, 3)
    x[0] = 0.0
    x[1] = 1.0
    x[2] = torch.tensor([0.0, 1.0, 0.5])
    out = enc(x)
    assert out.shape == (40, 12) and out.dtype == torch.float32
    ref = torch.cat(
        [
            encode_level_reference(enc.params[lvl].detach(), x, r, level_is_dense(r, enc.table_size))
            for lvl, r in enumerate(enc.resolutions)
        ],
        dim=1,
    )
    assert torch.allclose(out, ref, atol=1e-5)


def test_int32_indices_exact_near_limit():
    # (N_l + 1) * T must stay < 2^31: finest 4000 -> 4001 * 2^19 = 2.0977e9 < 2.1475e9
    cfg = HashGridConfig(n_levels=4, log2_hashmap_size=19, base_resolution=500, finest_resolution=4000, backend="torch")
    e32 = HashGridEncoding(cfg)
    assert e32.index_dtype == torch.int32
    x = torch.rand(500, 3)
    args = (x, e32.res, e32.axis_mult, e32.level_offset, e32.n_dense, e32.table_size)
    i32, w32 = hash_grid_indices_weights(*args, index_dtype=torch.int32)
    i64, w64 = hash_grid_indices_weights(*args, index_dtype=torch.int64)
    assert torch.equal(i32.long(), i64) and torch.equal(w32, w64)
    # unreduced primes in int64 give the same rows (only the low log2 T bits matter)
    full = torch.tensor([[1, PRIME_Y, PRIME_Z]] * 4)
    i_full, _ = hash_grid_indices_weights(x, e32.res, full, e32.level_offset, 0, e32.table_size, torch.int64)
    assert torch.equal(i_full, i64)
    # a grid too fine for int32 falls back to int64
    assert HashGridEncoding(HashGridConfig(n_levels=2, log2_hashmap_size=19, finest_resolution=5000)).index_dtype == torch.int64


def test_gradients_and_double_backward():
    torch.manual_seed(1)
    # tiny table for gradcheck: levels N = 2 (dense, 27 <= 64), 4 and 8 (hashed), T = 64
    enc = HashGridEncoding(small_cfg(n_levels=3, log2_hashmap_size=6, base_resolution=2, finest_resolution=8))
    assert enc.n_dense == 1
    x = (0.05 + 0.9 * torch.rand(8, 3, dtype=torch.float64)).requires_grad_(True)
    table = enc.params.detach().double().view(-1, 2).requires_grad_(True)

    def f(x, table):
        idx, w = hash_grid_indices_weights(x, enc.res.double(), enc.axis_mult, enc.level_offset, enc.n_dense, enc.table_size)
        return interpolate_table(table, idx, w, use_complex=True)

    # trilinear interpolation is smooth inside a cell; gradcheck uses small steps that stay inside
    assert torch.autograd.gradcheck(f, (x, table), eps=1e-7, atol=1e-5)
    # eikonal-style double backward: d/d table of Q = |d out / d x|^2. The output is linear in the
    # table (out = sum_c w_c(x) table[idx_c]; the cell, hence idx, is piecewise constant in x), so
    # d out / d x = sum_c (d w_c / d x) table[idx_c] is linear in it too and Q is homogeneous of degree 2
    # in the table. Euler's theorem: sum(table * dQ/dtable) = 2 Q, exactly. A double backward that drops
    # or double-counts a path breaks this identity.
    out = f(x, table).sum()
    (gx,) = torch.autograd.grad(out, x, create_graph=True)
    q = (gx**2).sum()
    (gt,) = torch.autograd.grad(q, table)
    assert q.item() > 1e-6                                     # a non-trivial case (random table)
    assert (gt * table).sum().item() == pytest.approx(2.0 * q.item(), rel=1e-9)
    # rows that no corner of any point touches get exactly zero gradient
    idx, _ = hash_grid_indices_weights(x.detach(), enc.res.double(), enc.axis_mult, enc.level_offset, enc.n_dense,
                                       enc.table_size)
    untouched = torch.ones(table.shape[0], dtype=torch.bool)
    untouched[idx.reshape(-1).long()] = False
    assert untouched.any() and torch.all(gt[untouched] == 0)


def test_module_grads_reach_params():
    enc = HashGridEncoding(small_cfg(init_scale=1e-4))
    assert enc.params.shape == (6, 4096, 2)
    assert enc.params.abs().max() <= 1e-4
    x = torch.rand(64, 3, requires_grad=True)
    loss = enc(x).square().sum()
    loss.backward()
    # enc(x) is linear in params, so loss = sum(out^2) is homogeneous of degree 2 in them and
    # (Euler) sum(params * d loss / d params) = 2 loss; float32 sums of ~768 terms: rel 1e-4
    assert (enc.params.detach() * enc.params.grad).sum().item() == pytest.approx(2.0 * loss.item(), rel=1e-4)
    assert x.grad is not None and torch.isfinite(x.grad).all()   # values: gradcheck in the test above


def test_make_hash_grid_and_estimate():
    assert isinstance(make_hash_grid(small_cfg(backend="torch")), HashGridEncoding)
    ok, _ = tcnn_available()
    if not ok:
        assert isinstance(make_hash_grid(small_cfg(backend="auto")), HashGridEncoding)
        with pytest.raises(RuntimeError):
            make_hash_grid(small_cfg(backend="tcnn"))
    with pytest.raises(ValueError):
        make_hash_grid(small_cfg(backend="nope"))
    # 16 levels * 2^19 rows * 2 features = 16,777,216 floats; x4 bytes x4 copies (param, grad, 2 Adam)
    assert estimate_hash_grid_bytes(HashGridConfig()) == 16 * 2**19 * 2 * 4 * 4 == 268_435_456


def test_benchmark_measures_forward_backward_and_reports_consistent_rates(monkeypatch):
    """What benchmark_hash_grid measures, with a scripted clock (the speed itself is not a test):
    reps + 1 forward+backward passes over n_points points (the first one a warm-up that is not timed),
    best / median of the timed wall durations, points per second = n_points / best duration."""
    import types

    import fields.hashgrid as hg

    # perf_counter is read at the start of every pass and at the end of the timed ones (i >= 1):
    # pass 0 starts at 0.0 (warm-up, untimed); passes 1-3 take 10.5 - 10.0 = 0.5 s, 20.25 - 20.0 = 0.25 s
    # and 31.0 - 30.0 = 1.0 s (binary fractions: the differences are exact).
    wall = iter([0.0, 10.0, 10.5, 20.0, 20.25, 30.0, 31.0])
    # process CPU time of the same passes: 0.75, 0.125, 0.5 s
    cpu = iter([0.0, 1.0, 1.75, 2.0, 2.125, 3.0, 3.5])
    clock = types.SimpleNamespace(perf_counter=lambda: next(wall), process_time=lambda: next(cpu))
    monkeypatch.setattr(hg, "time", clock)
    passes = []                                           # (points in, gradient shape that came back)
    forward = hg.HashGridEncoding.forward

    def counted(self, x01):
        out = forward(self, x01)
        passes.append([tuple(x01.shape), None])
        out.register_hook(lambda g, rec=passes[-1]: rec.__setitem__(1, tuple(g.shape)))
        return out

    monkeypatch.setattr(hg.HashGridEncoding, "forward", counted)
    r = benchmark_hash_grid(small_cfg(), n_points=512, reps=3)
    # 1 warm-up + 3 timed passes, each a forward over the 512 points and a backward of a [512, 6 * 2] gradient
    assert passes == [[(512, 3), (512, 12)]] * 4
    assert next(wall, None) is None and next(cpu, None) is None       # every clock reading was used
    # best of (0.5, 0.25, 1.0) = 0.25 s; median = sorted[3 // 2] = (0.25, 0.5, 1.0)[1] = 0.5 s
    assert r["seconds_best"] == 0.25 and r["seconds_median"] == 0.5
    # 512 points / 0.25 s = 2048 points/s; by CPU time 512 / min(0.75, 0.125, 0.5) = 512 / 0.125 = 4096
    assert r["points_per_s"] == 2048.0 and r["points_per_cpu_s"] == 4096.0
    assert set(r) == {"points_per_s", "points_per_cpu_s", "seconds_best", "seconds_median"}


def test_tcnn_matches_torch_backend_interface():
    ok, why = tcnn_available()
    if not ok:
        pytest.skip(f"tinycudann/CUDA not available: {why}")
    # The backends are not bit-compatible (tcnn: pos = x * (base * b^l - 1) + 0.5, per-level table
    # sizes, fp16 params), so compare interface, scale and trainability, not values.
    cfg = HashGridConfig(n_levels=8, log2_hashmap_size=15, base_resolution=16, finest_resolution=256, backend="tcnn")
    tc = make_hash_grid(cfg).cuda()
    th = make_hash_grid(HashGridConfig(**{**cfg.__dict__, "backend": "torch"})).cuda()
    x = torch.rand(4096, 3, device="cuda")
    a, b = tc(x), th(x)
    assert a.shape == b.shape == (4096, 16) and a.dtype == b.dtype == torch.float32
    assert a.abs().max() <= 2 * cfg.init_scale and b.abs().max() <= cfg.init_scale + 1e-9
    # both fit the same smooth target equally well-ish in a few Adam steps
    target = torch.sin(6.0 * x).repeat(1, 16)[:, :16] * 0.1
    for enc in (tc, th):
        opt = torch.optim.Adam(enc.parameters(), lr=1e-2)
        for _ in range(100):
            opt.zero_grad()
            loss = (enc(x) - target).square().mean()
            loss.backward()
            opt.step()
        assert loss.item() < 0.5 * target.square().mean().item()
