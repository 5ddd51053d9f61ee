"""The Numba hash-grid backend (fields/hashgrid_numba.py, NumbaHashGridEncoding) against the PyTorch one: the
same outputs and table gradients on dense and hashed levels (the same float32 operations in the same order,
so equal to the bit), the PyTorch path where the points need a gradient, and by hand on one level."""
from __future__ import annotations

import pytest
import torch

from fields.hashgrid import HashGridConfig, HashGridEncoding, NumbaHashGridEncoding, make_hash_grid
from fields.numba_jit import numba_available

pytestmark = pytest.mark.skipif(not numba_available()[0], reason=f"numba unavailable: {numba_available()[1]}")


def _pair(**kw):
    cfg = HashGridConfig(**{"n_levels": 6, "n_features_per_level": 2, "log2_hashmap_size": 12,
                            "base_resolution": 4, "finest_resolution": 64, "init_scale": 0.1, **kw})
    ref, fast = HashGridEncoding(cfg), NumbaHashGridEncoding(cfg)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


@pytest.mark.parametrize("n_feat", [2, 4])
def test_forward_and_table_gradient_equal_the_torch_backend(n_feat):
    ref, fast = _pair(n_features_per_level=n_feat)
    assert 0 < ref.n_dense < ref.n_levels                 # both kinds of level are exercised
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3000, 3, generator=gen) * 1.2 - 0.1    # some points outside [0, 1]: clamped
    g = torch.randn(3000, ref.out_dim, generator=gen)
    a, b = ref(x), fast(x)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-7)
    a.backward(g)
    b.backward(g)
    torch.testing.assert_close(fast.params.grad, ref.params.grad, rtol=0, atol=1e-6)


def test_no_points():
    """An empty batch (e.g. no sample carries weight for the semantic field) gives [0, L*F] and a zero gradient."""
    ref, fast = _pair()
    out = fast(torch.zeros(0, 3))
    assert out.shape == (0, ref.out_dim)
    out.sum().backward()
    assert float(fast.params.grad.abs().sum()) == 0.0


def test_one_dense_level_by_hand():
    """One level, 2 cells per axis, dense: the point (0.25, 0.5, 0.75) sits at grid position (0.5, 1, 1.5) ->
    cell (0, 1, 1), fractions (0.5, 0, 0.5); only corners with y bit 0 weigh, 0.25 each."""
    cfg = HashGridConfig(n_levels=1, n_features_per_level=1, log2_hashmap_size=6, base_resolution=2,
                         finest_resolution=2)
    enc = NumbaHashGridEncoding(cfg)
    with torch.no_grad():
        enc.params.copy_(torch.arange(64, dtype=torch.float32).reshape(1, 64, 1))   # row r holds value r
    out = enc(torch.tensor([[0.25, 0.5, 0.75]]))
    # dense rows i + 3 j + 9 k for corners (0|1, 1, 1|2): 12, 13, 21, 22
    assert float(out.detach()) == pytest.approx(0.25 * (12 + 13 + 21 + 22))
    out.sum().backward()
    grad = enc.params.grad.reshape(-1)
    assert {int(i): float(grad[i]) for i in torch.nonzero(grad).reshape(-1)} == {12: 0.25, 13: 0.25, 21: 0.25, 22: 0.25}


def test_points_that_need_a_gradient_take_the_torch_path():
    ref, fast = _pair()
    x = torch.rand(200, 3, generator=torch.Generator().manual_seed(1))
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ga = torch.autograd.grad(ref(xa).square().sum(), xa, create_graph=True)[0]
    gb = torch.autograd.grad(fast(xb).square().sum(), xb, create_graph=True)[0]
    torch.testing.assert_close(gb, ga)
    gb.sum().backward()                                   # the second derivative reaches the table
    assert fast.params.grad is not None and float(fast.params.grad.abs().sum()) > 0


def test_deterministic_and_the_auto_backend_on_cpu():
    _, fast = _pair()
    x = torch.rand(500, 3, generator=torch.Generator().manual_seed(2))
    outs = []
    for _ in range(2):
        fast.params.grad = None
        y = fast(x)
        y.square().sum().backward()
        outs.append((y.detach().clone(), fast.params.grad.clone()))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert isinstance(make_hash_grid(HashGridConfig(n_levels=2, log2_hashmap_size=8, finest_resolution=32)),
                      NumbaHashGridEncoding)
    assert type(make_hash_grid(HashGridConfig(backend="torch"))) is HashGridEncoding


def test_without_numba_auto_falls_back_and_numba_is_refused(monkeypatch):
    import fields.numba_jit as nj
    monkeypatch.setattr(nj, "numba", None)
    monkeypatch.setattr(nj, "_IMPORT_ERROR", ImportError("no module named numba"))
    assert type(make_hash_grid(HashGridConfig(n_levels=2, log2_hashmap_size=8, finest_resolution=32))) \
        is HashGridEncoding
    with pytest.raises(RuntimeError, match="hash grid backend 'numba' requested but numba does not import"):
        make_hash_grid(HashGridConfig(n_levels=2, log2_hashmap_size=8, finest_resolution=32, backend="numba"))


def test_gradient_buffers_are_reused_only_when_nothing_holds_them():
    """GradBufferPool: after .grad is dropped (zero_grad(set_to_none=True)) the next backward writes into the
    same memory; while a gradient is held, a second backward gets other memory and accumulates correctly
    (the held gradient is not overwritten)."""
    ref, fast = _pair()
    gen = torch.Generator().manual_seed(3)
    x1, x2 = torch.rand(400, 3, generator=gen), torch.rand(300, 3, generator=gen)
    fast(x1).square().sum().backward()
    first = fast.params.grad.data_ptr()
    fast.params.grad = None
    fast(x2).square().sum().backward()
    assert fast.params.grad.data_ptr() == first                     # reused: nothing held the buffer
    # held: accumulate two backward passes, as gradient accumulation does, and compare with the torch backend
    fast.params.grad = None
    held = None
    for x in (x1, x2):
        fast(x).square().sum().backward()
        held = fast.params.grad if held is None else held
    assert fast.params.grad is held                                 # accumulated in place into the first buffer
    for x in (x1, x2):
        ref(x).square().sum().backward()
    torch.testing.assert_close(fast.params.grad, ref.params.grad, rtol=0, atol=1e-6)
    # a gradient the user keeps a reference to is never overwritten by later passes
    saved = fast.params.grad.clone()
    kept = fast.params.grad
    fast.params.grad = None
    fast(x1).sum().backward()
    assert torch.equal(kept, saved)


def test_pool_is_scratch_memory_not_state():
    import copy
    import pickle

    from fields.hashgrid_numba import GradBufferPool
    pool = GradBufferPool(max_buffers=1)
    a = pool.take((4, 2))
    b = pool.take((4, 2))                                           # a is still referenced here: a new one
    assert a is not b and len(pool._buffers) == 1
    del a
    assert pool.take((4, 2)) is pool._buffers[0]                   # free again
    assert copy.deepcopy(pool)._buffers == [] and pickle.loads(pickle.dumps(pool))._buffers == []
    _, fast = _pair()
    assert copy.deepcopy(fast)._grad_pool._buffers == []


def test_numba_kernels_keep_the_torch_thread_count():
    """Starting Numba's OpenMP pool resets OpenMP's thread count, which torch reads: before the fix a fit with
    train.threads=1 ran on 2 torch threads after its first Numba kernel. In a fresh process (the pool starts
    once per process): torch at 1 thread stays at 1 after a Numba hash-grid pass, and Numba uses 1 too."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    code = (
        "import torch, numba\n"
        "torch.set_num_threads(1)\n"
        "from fields.hashgrid import HashGridConfig, NumbaHashGridEncoding\n"
        "enc = NumbaHashGridEncoding(HashGridConfig(n_levels=2, log2_hashmap_size=8, finest_resolution=16))\n"
        "enc(torch.rand(100, 3)).sum().backward()\n"
        "print(torch.get_num_threads(), numba.get_num_threads(), numba.config.NUMBA_NUM_THREADS)\n")
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "NUMBA_NUM_THREADS": "2", "PYTHONPATH": str(repo)}
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1", "2"]
