"""Image metrics of rendered views against the captured frames: PSNR, SSIM, depth AbsRel, LPIPS.

Colour images are float arrays in [0, 1], [H, W, 3] (or [H, W]); depth maps are z-depth in metres,
[H, W], 0 = no value. Pure functions (LPIPS: a network whose weights come from a local file only;
nothing is ever downloaded).

SSIM is written here with conv2d rather than taken from torchmetrics: torchmetrics 1.9's
`structural_similarity_index_measure` reflect-pads the images and averages the SSIM map over the
whole padded frame, border included, where the standard definition (Wang et al. 2004, the reference
MATLAB code, scikit-image, the 3DGS evaluation) averages only over the windows that lie inside the
image. On a 160x120 frame the border is 30 % of the pixels, so the two differ measurably
(tests/eval/test_image_metrics.py shows it on a test image).
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WINDOW = 11          # Gaussian window, pixels
SSIM_SIGMA = 1.5          # its standard deviation, pixels
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _float_image(x, name: str) -> np.ndarray:
    """[H, W] or [H, W, C] float64 copy of `x` (numpy or torch), checked to lie in [0, 1]."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim not in (2, 3):
        raise ValueError(f"{name}: expected an [H, W] or [H, W, C] image, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name}: expected a float image in [0, 1], got dtype {a.dtype} (uint8? divide by 255)")
    a = a.astype(np.float64)
    if a.size and (not np.isfinite(a).all() or a.min() < -1e-6 or a.max() > 1 + 1e-6):
        raise ValueError(f"{name}: values must be finite and in [0, 1], got [{np.nanmin(a):.4g}, {np.nanmax(a):.4g}]")
    return np.clip(a, 0.0, 1.0)


def psnr(rgb_pred, rgb_gt, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB of two float images in [0, 1] ([H, W, C] or [H, W]), peak 1:
    10 log10(1 / MSE), the MSE over every channel of the pixels in `mask` ([H, W] bool; default all).
    inf for identical images, nan when the mask selects nothing."""
    p, g = _float_image(rgb_pred, "rgb_pred"), _float_image(rgb_gt, "rgb_gt")
    if p.shape != g.shape:
        raise ValueError(f"psnr: image shapes differ: {p.shape} vs {g.shape}")
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != p.shape[:2]:
            raise ValueError(f"psnr: mask shape {mask.shape} is not the image's {p.shape[:2]}")
        p, g = p[mask], g[mask]
    if p.size == 0:
        return float("nan")
    mse = float(np.mean((p - g) ** 2))
    return float("inf") if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """[size, size] float64 Gaussian weights summing to 1, centred on the middle pixel."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim_batch(pred: torch.Tensor, gt: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM [B] of image batches pred, gt [B, C, H, W] (differentiable): the 11x11 Gaussian window
    (sigma 1.5), K1 = 0.01, K2 = 0.03, population (co)variances, the map averaged over the windows that
    lie inside the image ("valid", H - 10 by W - 10 centres) and over channels."""
    if pred.shape != gt.shape or pred.ndim != 4:
        raise ValueError(f"ssim_batch: expected two [B, C, H, W] batches of one shape, got {tuple(pred.shape)} "
                         f"and {tuple(gt.shape)}")
    B, C, H, W = pred.shape
    if H < SSIM_WINDOW or W < SSIM_WINDOW:
        raise ValueError(f"ssim: images of {W}x{H} are smaller than the {SSIM_WINDOW}x{SSIM_WINDOW} window")
    w = gaussian_window().to(pred.device, pred.dtype).expand(C, 1, SSIM_WINDOW, SSIM_WINDOW)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    stats = F.conv2d(torch.cat([pred, gt, pred * pred, gt * gt, pred * gt]), w, groups=C)   # [5B, C, H-10, W-10]
    mu_p, mu_g, e_pp, e_gg, e_pg = stats.split(B)
    var_p, var_g, cov = e_pp - mu_p ** 2, e_gg - mu_g ** 2, e_pg - mu_p * mu_g
    s_map = ((2 * mu_p * mu_g + c1) * (2 * cov + c2)) / ((mu_p ** 2 + mu_g ** 2 + c1) * (var_p + var_g + c2))
    return s_map.mean(dim=(1, 2, 3))


def ssim(rgb_pred, rgb_gt) -> float:
    """SSIM of two float images in [0, 1] ([H, W, C] or [H, W]; ssim_batch's definition), in [-1, 1]."""
    p, g = _float_image(rgb_pred, "rgb_pred"), _float_image(rgb_gt, "rgb_gt")
    if p.shape != g.shape:
        raise ValueError(f"ssim: image shapes differ: {p.shape} vs {g.shape}")
    to = lambda a: torch.from_numpy(a if a.ndim == 3 else a[..., None]).permute(2, 0, 1)[None]  # noqa: E731
    return float(ssim_batch(to(p), to(g))[0])


def depth_metrics(pred_m: np.ndarray, gt_m: np.ndarray, mask: np.ndarray | None = None,
                  within_m: float = 0.05) -> dict:
    """Depth of a render against the measured depth, over the pixels in `mask` (default all) with a
    measurement (gt > 0); any shape, pred and gt alike (several frames stack into one array):
      absrel  = mean |pred - gt| / gt over those where the prediction exists (pred > 0; nan if none);
      within  = share of ALL those pixels with |pred - gt| < within_m (a missing prediction is wrong);
      missing = share of them without a prediction;
      n_pixels = how many pixels have a measurement."""
    pred_m, gt_m = np.asarray(pred_m, np.float64), np.asarray(gt_m, np.float64)
    if pred_m.shape != gt_m.shape:
        raise ValueError(f"depth_metrics: shapes differ: {pred_m.shape} vs {gt_m.shape}")
    sel = np.isfinite(gt_m) & (gt_m > 0)
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != gt_m.shape:
            raise ValueError(f"depth_metrics: mask shape {mask.shape} is not the depth's {gt_m.shape}")
        sel &= mask
    n = int(sel.sum())
    if n == 0:
        return {"absrel": float("nan"), "within": float("nan"), "missing": float("nan"), "n_pixels": 0}
    p, g = pred_m[sel], gt_m[sel]
    has = np.isfinite(p) & (p > 0)
    err = np.abs(np.where(has, p, 0.0) - g)
    return {"absrel": float(np.mean(err[has] / g[has])) if has.any() else float("nan"),
            "within": float(np.mean(has & (err < within_m))), "missing": float(1.0 - np.mean(has)),
            "n_pixels": n}


# ----------------------------------------------------------------------------- LPIPS

LPIPS_MIN_SIZE = 31       # AlexNet's two stride-2 poolings leave nothing of a smaller image
LPIPS_NOT_GIVEN = ("no LPIPS weights given: pass 'eval --lpips-weights PATH' (or set RECON_LPIPS_WEIGHTS=PATH) with "
                   "PATH a torchvision AlexNet state dict (alexnet-owt-7be5be79.pth, as torchvision caches it in "
                   "~/.cache/torch/hub/checkpoints/) or a full LPIPS 'alex' checkpoint (the lpips package's "
                   "state_dict); the LPIPS linear layers ship with torchmetrics; nothing is downloaded")
# which slice of the LPIPS AlexNet holds torchvision's alexnet.features[i] (lpips / torchmetrics layout)
_ALEX_SLICE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 2, 5: 3, 6: 3, 7: 3, 8: 4, 9: 4, 10: 5, 11: 5}


class LpipsWeightsError(ValueError):
    """The LPIPS weights file cannot be used (the message names the file and why)."""


class Lpips:
    """LPIPS (Zhang et al. 2018, version 0.1, AlexNet backbone): the network of torchmetrics (the lpips
    package's, with its linear layers shipped in the wheel), built with a random backbone and then given
    the backbone weights of a local file (`load_lpips`). Lower is more similar; 0 for identical images."""

    def __init__(self, net: torch.nn.Module, source: Path):
        self.net = net.eval()
        self.source = source

    @torch.no_grad()
    def __call__(self, rgb_pred, rgb_gt) -> float:
        p, g = _float_image(rgb_pred, "rgb_pred"), _float_image(rgb_gt, "rgb_gt")
        if p.shape != g.shape or p.ndim != 3 or p.shape[2] != 3:
            raise ValueError(f"lpips: expected two [H, W, 3] images of one shape, got {p.shape} and {g.shape}")
        H, W = p.shape[:2]
        if min(H, W) < LPIPS_MIN_SIZE:
            raise ValueError(f"lpips: images of {W}x{H} are smaller than AlexNet's {LPIPS_MIN_SIZE}x{LPIPS_MIN_SIZE}")
        to = lambda a: torch.from_numpy(a).float().permute(2, 0, 1)[None]  # noqa: E731
        return float(self.net(to(p), to(g), normalize=True).reshape(-1)[0])


def _lpips_state(raw: dict, path: Path) -> dict[str, torch.Tensor]:
    """A file's tensors renamed to the LPIPS module's keys (net.sliceK.i.*, linJ.model.1.weight)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in raw.items():
        if not isinstance(v, torch.Tensor):
            continue
        m = re.search(r"(?:^|\.)features\.(\d+)\.(weight|bias)$", k)          # torchvision alexnet
        if m and int(m.group(1)) in _ALEX_SLICE:
            i = int(m.group(1))
            out[f"net.slice{_ALEX_SLICE[i]}.{i}.{m.group(2)}"] = v
            continue
        m = re.search(r"(?:^|\.)(slice\d\.\d+\.(?:weight|bias))$", k)         # lpips / torchmetrics module
        if m:
            out[f"net.{m.group(1)}"] = v
            continue
        m = re.search(r"(?:^|\.)(lin\d\.model\.1\.weight)$", k)
        if m:
            out[m.group(1)] = v
    if not any(k.startswith("net.") for k in out):
        some = ", ".join(list(raw)[:5])
        raise LpipsWeightsError(f"{path}: holds no AlexNet weights (expected keys like 'features.0.weight' of a "
                                f"torchvision alexnet state dict, or 'net.slice1.0.weight' of an LPIPS checkpoint; "
                                f"found: {some or 'nothing'})")
    return out


def load_lpips(path: Path) -> Lpips:
    """LPIPS (AlexNet) with the backbone (and, if the file has them, the linear layers) from the local file
    `path`; the linear layers otherwise come from torchmetrics' packaged lpips_models/alex.pth. No download:
    the backbone is built without pretrained weights and every one of its tensors must come from the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS weights {path}: no such file")
    try:
        from torchmetrics.functional.image.lpips import _LPIPS
    except ImportError as exc:
        raise LpipsWeightsError(f"LPIPS needs torchmetrics (requirements.txt): {exc}") from exc
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / zip errors of every kind: the file is not a tensor checkpoint
        raise LpipsWeightsError(f"{path}: not a PyTorch weights file ({type(exc).__name__}: {exc})") from exc
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict):
        raise LpipsWeightsError(f"{path}: expected a state dict (name -> tensor), got {type(raw).__name__}")
    state = _lpips_state(raw, path)
    # pretrained=True loads the packaged linear layers; pnet_rand=True: a random backbone, no download
    net = _LPIPS(pretrained=True, net="alex", pnet_rand=True)
    own = net.state_dict()
    backbone = [k for k in own if k.startswith("net.")]
    missing = [k for k in backbone if k not in state]
    if missing:
        raise LpipsWeightsError(f"{path}: AlexNet weights incomplete, missing {', '.join(missing[:4])}"
                                f"{' ...' if len(missing) > 4 else ''}")
    bad = [f"{k} {tuple(state[k].shape)} (needs {tuple(own[k].shape)})" for k in state
           if k in own and state[k].shape != own[k].shape]
    unknown = [k for k in state if k not in own]
    if bad or unknown:
        raise LpipsWeightsError(f"{path}: not AlexNet / LPIPS-alex weights: " + "; ".join((bad + unknown)[:4]))
    net.load_state_dict(state, strict=False)
    return Lpips(net, path)
