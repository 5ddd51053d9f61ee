"""fields/raster_numba.py: the compiled CPU blending against the PyTorch reference (fields/gaussians.py)
and against hand-computed early stopping. The hand-computed compositing cases of test_gaussians.py run
on both backends too."""
import pytest
import torch

import fields.raster_numba as rn
from fields.numba_jit import numba_available
from fields.gaussians import GaussianModel, pixel_extent, rasterize, render_gaussians, resolve_backend, rgb_to_sh_dc

pytestmark = pytest.mark.skipif(not numba_available()[0], reason=numba_available()[1])


def random_splats(n: int, width: int, height: int, seed: int, dtype=torch.float64):
    """n projected Gaussians on a width x height image: some opaque (alpha clamped at 0.99), some faint."""
    gen = torch.Generator().manual_seed(seed)
    uv = torch.rand(n, 2, generator=gen, dtype=dtype) * torch.tensor([width, height], dtype=dtype)
    L = torch.randn(n, 2, 2, generator=gen, dtype=dtype) * 2.0
    cov = L @ L.transpose(1, 2) + 0.5 * torch.eye(2, dtype=dtype)
    inv = torch.linalg.inv(cov)
    conic = torch.stack([inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 1]], 1)
    z = torch.rand(n, generator=gen, dtype=dtype)
    op = torch.rand(n, generator=gen, dtype=dtype)
    op[: n // 5] = 0.995                                   # clamped: these pass no gradient through alpha
    feats = torch.rand(n, 4, generator=gen, dtype=dtype)
    return uv, conic, z, pixel_extent(cov, op), feats, op


@pytest.mark.parametrize("tile", [4, 8])
def test_matches_the_pytorch_blend_exactly_without_early_stop(monkeypatch, tile):
    monkeypatch.setattr(rn, "T_STOP", 0.0)                 # blend every pair, as the PyTorch backend does
    uv, conic, z, ext, feats, op = random_splats(300, 37, 29, seed=0)
    target = torch.rand(29, 37, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    results = []
    for blend in ("torch", "numba"):
        leaves = [t.clone().requires_grad_(True) for t in (uv, conic, feats, op)]
        img, alpha = rasterize(leaves[0], leaves[1], z, ext, leaves[2], leaves[3], 37, 29, tile=tile, blend=blend)
        ((img - target) ** 2).sum().add((alpha * target[..., 0]).sum()).backward()
        results.append([img.detach(), alpha.detach()] + [leaf.grad for leaf in leaves])
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-9)


def test_early_stop_by_hand():
    # three opaque Gaussians (alpha clamped at 0.99) on pixel (2, 2), front to back red, green, blue:
    # after two, T = 0.01 * 0.01 = 1e-4 is not below T_STOP; after the third T = 1e-6 < T_STOP, so a
    # fourth (white) adds nothing. C = 0.99 red + 0.0099 green + 0.000099 blue.
    uv = torch.full((4, 2), 2.0, dtype=torch.float64)
    conic = torch.tensor([[1.0, 0.0, 1.0]] * 4, dtype=torch.float64)
    z = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    feats = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    op = torch.ones(4, dtype=torch.float64)
    r = torch.full((4,), 3.0, dtype=torch.float64)
    img, alpha = rasterize(uv, conic, z, r, feats, op, 5, 5, tile=4, blend="numba")
    expect = torch.tensor([0.99, 0.99 * 0.01, 0.99 * 1e-4], dtype=torch.float64)
    assert torch.allclose(img[2, 2], expect, atol=1e-12)
    assert float(alpha[2, 2]) == pytest.approx(1 - 1e-6, abs=1e-12)
    ref, _ = rasterize(uv, conic, z, r, feats, op, 5, 5, tile=4, blend="torch")     # blends the fourth too
    assert float((ref[2, 2] - img[2, 2]).abs().max()) == pytest.approx(0.99e-6, rel=1e-6)


def test_render_agrees_with_pytorch_within_the_early_stop(monkeypatch):
    gen = torch.Generator().manual_seed(3)
    n = 400
    means = torch.cat([torch.rand(n, 2, generator=gen) - 0.5, 1.5 + torch.rand(n, 1, generator=gen)], 1)
    g = GaussianModel(means, torch.randn(n, 4, generator=gen), torch.log(0.02 + 0.05 * torch.rand(n, 3, generator=gen)),
                      torch.randn(n, generator=gen) * 2, rgb_to_sh_dc(torch.rand(n, 3, generator=gen)), sh_degree=1)
    K = torch.tensor([[40.0, 0, 20], [0, 40.0, 15], [0, 0, 1]])
    with torch.no_grad():
        a = render_gaussians(g, K, torch.eye(4), 40, 30, backend="torch")
        b = render_gaussians(g, K, torch.eye(4), 40, 30, backend="numba")
    # what the early stop leaves out is below T_STOP times the largest feature (depth ~ 2.5 m)
    assert float((a["rgb"] - b["rgb"]).abs().max()) <= rn.T_STOP * 1.01
    assert float((a["depth_raw"] - b["depth_raw"]).abs().max()) <= rn.T_STOP * 2.6
    assert torch.equal(a["index"], b["index"]) and torch.equal(a["visible"], b["visible"])


def test_resolve_backend():
    assert resolve_backend("auto", "cpu") == "numba"
    assert resolve_backend("torch", "cpu") == "torch"
    assert resolve_backend("numba", "cpu") == "numba"
    with pytest.raises(ValueError, match="unknown rasteriser backend 'opengl'"):
        resolve_backend("opengl", "cpu")


def test_missing_numba_is_reported(monkeypatch):
    import fields.numba_jit as nj
    monkeypatch.setattr(nj, "numba", None)
    monkeypatch.setattr(nj, "_IMPORT_ERROR", ImportError("no module named numba"))
    ok, why = numba_available()
    assert not ok and "pip install numba" in why
    assert resolve_backend("auto", "cpu") == "torch"
    with pytest.raises(ValueError, match="appearance.backend=numba"):
        resolve_backend("numba", "cpu")
