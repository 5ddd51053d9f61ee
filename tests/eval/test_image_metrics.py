"""eval/image_metrics.py: PSNR, SSIM, depth metrics and the LPIPS loader on hand-computed cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eval.image_metrics import (LPIPS_MIN_SIZE, LpipsWeightsError, depth_metrics, gaussian_window, load_lpips, psnr,
                                ssim, ssim_batch)


def _image(h: int = 30, w: int = 40, seed: int = 0) -> np.ndarray:
    """A smooth gradient with a bright square and noise, [h, w, 3] float in [0, 1]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([0.2 + 0.5 * x, 0.3 + 0.4 * y, 0.5 + 0.2 * x * y], -1)
    img[h // 4: h // 2, w // 4: w // 2] = 0.9
    return np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1)


# ----------------------------------------------------------------------------- PSNR

def test_psnr_hand_case():
    gt = np.zeros((2, 2, 3))
    pred = gt.copy()
    pred[0, 1, 2] = 0.1                               # one channel of one pixel off by 0.1
    assert math.isclose(psnr(pred, gt), 10 * math.log10(1 / (0.01 / 12)), rel_tol=1e-12)   # 30.79 dB
    mask = np.array([[False, True], [False, False]])
    assert math.isclose(psnr(pred, gt, mask), 10 * math.log10(1 / (0.01 / 3)), rel_tol=1e-12)
    assert psnr(pred, gt, ~mask) == math.inf         # the other pixels are exact
    assert psnr(gt, gt) == math.inf
    assert math.isnan(psnr(pred, gt, np.zeros((2, 2), bool)))
    assert math.isclose(psnr(np.full((3, 3), 0.5), np.zeros((3, 3))), 10 * math.log10(4), rel_tol=1e-12)


def test_psnr_refuses_uint8_and_shape_mismatch():
    with pytest.raises(ValueError, match="uint8"):
        psnr(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        psnr(np.full((2, 2, 3), 255.0), np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(np.zeros((2, 2, 3)), np.zeros((2, 3, 3)))


# ----------------------------------------------------------------------------- SSIM

def test_gaussian_window():
    w = gaussian_window()
    assert w.shape == (11, 11) and math.isclose(float(w.sum()), 1.0, rel_tol=1e-12)
    # w[i, j] proportional to exp(-((i-5)^2 + (j-5)^2) / (2 * 1.5^2))
    assert math.isclose(float(w[5, 5] / w[5, 6]), math.exp(1 / 4.5), rel_tol=1e-12)
    assert math.isclose(float(w[5, 5] / w[0, 0]), math.exp(50 / 4.5), rel_tol=1e-9)


def test_ssim_identical_is_one_and_constant_images_by_hand():
    img = _image()
    assert math.isclose(ssim(img, img), 1.0, abs_tol=1e-12)
    # two flat images a, b: no variance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1) with C1 = 0.01^2
    a, b, c1 = 0.5, 0.25, 1e-4
    got = ssim(np.full((16, 16, 3), a), np.full((16, 16, 3), b))
    assert math.isclose(got, (2 * a * b + c1) / (a * a + b * b + c1), rel_tol=1e-9)   # 0.80006
    assert ssim(img, np.clip(img + np.random.default_rng(1).normal(0, 0.2, img.shape), 0, 1)) < 0.8


def _ssim_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al. 2004 with scipy's Gaussian filter (radius int(3.5 * 1.5 + 0.5) = 5: the 11x11 window), the
    map cropped to the windows inside the image, averaged over channels (scikit-image's gaussian_weights)."""
    from scipy.ndimage import gaussian_filter
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    out = []
    for ch in range(x.shape[2]):
        f = lambda a: gaussian_filter(a, 1.5, truncate=3.5)       # noqa: E731
        p, g = x[..., ch], y[..., ch]
        mp, mg = f(p), f(g)
        vp, vg, cv = f(p * p) - mp ** 2, f(g * g) - mg ** 2, f(p * g) - mp * mg
        m = ((2 * mp * mg + c1) * (2 * cv + c2)) / ((mp ** 2 + mg ** 2 + c1) * (vp + vg + c2))
        out.append(m[5:-5, 5:-5].mean())
    return float(np.mean(out))


def test_ssim_matches_an_independent_reference_and_torchmetrics_inside_the_border():
    x, y = _image(seed=0), _image(seed=3)[:, ::-1]
    ours = ssim(x, y)
    assert math.isclose(ours, _ssim_reference(x, y), abs_tol=1e-10)
    # torchmetrics averages over the reflect-padded full frame: its map agrees with ours on the interior
    # windows, but its mean does not (why image_metrics.py computes SSIM itself)
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim
    to = lambda a: torch.from_numpy(a.copy()).permute(2, 0, 1)[None]           # noqa: E731
    tm_mean, tm_map = tm_ssim(to(x), to(y), data_range=1.0, return_full_image=True)
    assert math.isclose(float(tm_map[..., 5:-5, 5:-5].mean()), ours, abs_tol=1e-9)
    assert abs(float(tm_mean) - ours) > 1e-3


def test_ssim_agrees_with_skimage():
    skimage_metrics = pytest.importorskip("skimage.metrics", reason="scikit-image is not installed")
    x, y = _image(seed=0), _image(seed=3)
    ref = skimage_metrics.structural_similarity(x, y, data_range=1.0, channel_axis=2, gaussian_weights=True,
                                                sigma=1.5, use_sample_covariance=False)
    assert math.isclose(ssim(x, y), ref, abs_tol=1e-8)


def test_ssim_batch_is_differentiable_and_checks_sizes():
    x = torch.from_numpy(_image()).permute(2, 0, 1)[None].requires_grad_(True)
    y = torch.from_numpy(_image(seed=2)).permute(2, 0, 1)[None]
    s = ssim_batch(x, y)
    assert s.shape == (1,)
    s.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="smaller than the 11x11 window"):
        ssim(np.zeros((10, 20, 3)), np.zeros((10, 20, 3)))


# ----------------------------------------------------------------------------- depth

def test_depth_metrics_hand_case():
    gt = np.array([[1.0, 2.0], [4.0, 0.0]])
    pred = np.array([[1.1, 2.0], [0.0, 3.0]])        # off by 10 cm, exact, missing, no measurement
    m = depth_metrics(pred, gt)
    assert m["n_pixels"] == 3
    assert math.isclose(m["absrel"], (0.1 / 1.0 + 0.0 / 2.0) / 2, rel_tol=1e-12)
    assert math.isclose(m["within"], 1 / 3)           # only the exact pixel is within 5 cm
    assert math.isclose(m["missing"], 1 / 3)
    m = depth_metrics(pred, gt, within_m=0.2)
    assert math.isclose(m["within"], 2 / 3)
    m = depth_metrics(pred, gt, mask=np.array([[True, False], [True, True]]))
    assert m["n_pixels"] == 2 and math.isclose(m["absrel"], 0.1) and math.isclose(m["missing"], 0.5)
    # frames stack: the pixels of all frames pool
    m = depth_metrics(np.stack([pred, pred]), np.stack([gt, gt]))
    assert m["n_pixels"] == 6 and math.isclose(m["absrel"], 0.05)
    none = depth_metrics(np.zeros((2, 2)), np.zeros((2, 2)))
    assert none["n_pixels"] == 0 and math.isnan(none["absrel"])
    assert math.isnan(depth_metrics(np.zeros((2, 2)), gt)["absrel"])            # nothing predicted
    assert depth_metrics(np.zeros((2, 2)), gt)["missing"] == 1.0


# ----------------------------------------------------------------------------- LPIPS

def _random_alexnet_features(seed: int = 0) -> dict[str, torch.Tensor]:
    """The convolution weights of a randomly initialised torchvision AlexNet (its `features`; no download)."""
    import torchvision
    torch.manual_seed(seed)
    return {k: v for k, v in torchvision.models.alexnet(weights=None).state_dict().items() if k.startswith("features.")}


def _lpips_by_hand(sd: dict, lins: list[torch.Tensor], x: np.ndarray, y: np.ndarray) -> float:
    """LPIPS v0.1 written out: inputs to [-1, 1], the LPIPS scaling, AlexNet's ReLU outputs 1-5, unit-normalised
    over channels, squared difference weighted by the linear layer, spatial mean, summed over layers."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    conv = {i: (sd[f"features.{i}.weight"], sd[f"features.{i}.bias"]) for i in (0, 3, 6, 8, 10)}

    def feats(img):
        h = (torch.from_numpy(img).float().permute(2, 0, 1)[None] * 2 - 1 - shift) / scale
        out = []
        h = torch.relu(torch.nn.functional.conv2d(h, *conv[0], stride=4, padding=2)); out.append(h)
        h = torch.nn.functional.max_pool2d(h, 3, 2)
        h = torch.relu(torch.nn.functional.conv2d(h, *conv[3], padding=2)); out.append(h)
        h = torch.nn.functional.max_pool2d(h, 3, 2)
        for i in (6, 8, 10):
            h = torch.relu(torch.nn.functional.conv2d(h, *conv[i], padding=1)); out.append(h)
        return out

    total = 0.0
    for f0, f1, w in zip(feats(x), feats(y), lins):
        n0 = f0 / (f0.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        n1 = f1 / (f1.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total += float(((n0 - n1) ** 2 * w.view(1, -1, 1, 1)).sum(1).mean())
    return total


def test_lpips_loads_a_torchvision_alexnet_state_dict(tmp_path):
    sd = _random_alexnet_features()
    path = tmp_path / "alexnet_random.pth"
    torch.save(sd, path)
    lp = load_lpips(path)
    own = lp.net.state_dict()
    slice_of = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}
    for i, k in slice_of.items():                    # every backbone tensor is the file's
        assert torch.equal(own[f"net.slice{k}.{i}.weight"], sd[f"features.{i}.weight"])
        assert torch.equal(own[f"net.slice{k}.{i}.bias"], sd[f"features.{i}.bias"])
    x, y = _image(48, 64, seed=0), _image(48, 64, seed=5)
    assert lp(x, x) == 0.0
    lins = [own[f"lin{j}.model.1.weight"].reshape(-1) for j in range(5)]   # torchmetrics' packaged layers
    assert all(float(w.abs().sum()) > 0 for w in lins)
    assert math.isclose(lp(x, y), _lpips_by_hand(sd, lins, x, y), rel_tol=1e-4)
    with pytest.raises(ValueError, match="smaller than AlexNet"):
        lp(np.zeros((LPIPS_MIN_SIZE - 1, 40, 3)), np.zeros((LPIPS_MIN_SIZE - 1, 40, 3)))


def test_lpips_loads_a_full_lpips_checkpoint(tmp_path):
    sd = _random_alexnet_features(seed=1)
    slice_of = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}
    torch.manual_seed(2)
    lins = [torch.rand(c) for c in (64, 192, 384, 256, 256)]
    ckpt = {f"net.slice{slice_of[int(k.split('.')[1])]}.{k.split('.', 1)[1]}": v for k, v in sd.items()}
    ckpt.update({f"lin{j}.model.1.weight": w.view(1, -1, 1, 1) for j, w in enumerate(lins)})
    path = tmp_path / "lpips_alex.pth"
    torch.save(ckpt, path)
    lp = load_lpips(path)
    x, y = _image(40, 40, seed=0), _image(40, 40, seed=7)
    assert math.isclose(lp(x, y), _lpips_by_hand(sd, lins, x, y), rel_tol=1e-4)


def test_lpips_refuses_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_lpips(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(LpipsWeightsError, match="junk.pth: not a PyTorch weights file"):
        load_lpips(junk)
    other = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(LpipsWeightsError, match="other.pth: holds no AlexNet weights"):
        load_lpips(other)
    sd = _random_alexnet_features()
    part = tmp_path / "partial.pth"
    torch.save({k: v for k, v in sd.items() if not k.startswith("features.10.")}, part)
    with pytest.raises(LpipsWeightsError, match="incomplete, missing net.slice5.10.weight"):
        load_lpips(part)
    wrong = tmp_path / "vgg_like.pth"
    torch.save({**sd, "features.0.weight": torch.zeros(64, 3, 3, 3)}, wrong)
    with pytest.raises(LpipsWeightsError, match="not AlexNet"):
        load_lpips(wrong)
