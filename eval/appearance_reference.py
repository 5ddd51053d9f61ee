"""How much of a held-out frame's colour the training frames carry: the appearance reference.

Like the masks' oracle reference (eval/mask_reference.py) for labels, this scores no model: each pixel of a
held-out frame is back-projected with the frame's own observed depth, reprojected into the `n_views`
training frames whose camera centres are nearest, kept where that frame's observed depth agrees (an
occlusion test, 3 % of the depth), sampled bilinearly and averaged. Its PSNR on the pixels some training
frame sees is what exact geometry plus the captured training images give for a novel view, without
learning; a rendered novel view well above it would be learning detail the training frames do not show
(it can be exceeded a little: averaging views loses sharpness that an optimised model keeps).
"""
from __future__ import annotations

import numpy as np

from recon.data.scene import Scene


def _bilinear(img: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """img [H, W, 3] sampled at pixel coordinates u, v [M] (pixel centres at integers; clamped inside)."""
    H, W = img.shape[:2]
    u0 = np.clip(np.floor(u).astype(np.int64), 0, W - 2)
    v0 = np.clip(np.floor(v).astype(np.int64), 0, H - 2)
    a = np.clip(u - u0, 0, 1)[:, None]
    b = np.clip(v - v0, 0, 1)[:, None]
    return (img[v0, u0] * (1 - a) * (1 - b) + img[v0, u0 + 1] * a * (1 - b) + img[v0 + 1, u0] * (1 - a) * b
            + img[v0 + 1, u0 + 1] * a * b)


def reproject_view(scene: Scene, target: int, sources: list[int], depth_tol: float = 0.03
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(colour [H, W, 3] in [0, 1], seen [H, W] bool) of frame `target` predicted from frames `sources` by
    reprojection with the observed depths (module docstring)."""
    H, W = scene.height, scene.width
    K = scene.K
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    z = scene.load_depth_m(target).astype(np.float64).reshape(-1)
    rays = np.stack([(u.reshape(-1) - K[0, 2]) / K[0, 0], (v.reshape(-1) - K[1, 2]) / K[1, 1],
                     np.ones(H * W)], 1)
    pts = (rays * z[:, None]) @ scene.c2w[target][:3, :3].T + scene.c2w[target][:3, 3]   # [P, 3] world
    acc = np.zeros((H * W, 3))
    count = np.zeros(H * W)
    for s in sources:
        w2c = np.linalg.inv(scene.c2w[s])
        pc = pts @ w2c[:3, :3].T + w2c[:3, 3]
        zc = pc[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            us = K[0, 0] * pc[:, 0] / zc + K[0, 2]
            vs = K[1, 1] * pc[:, 1] / zc + K[1, 2]
        ok = (z > 0) & (zc > 0.05) & (us >= 0) & (us <= W - 1) & (vs >= 0) & (vs <= H - 1)
        zs = scene.load_depth_m(s)
        ui = np.clip(np.round(np.nan_to_num(us)).astype(np.int64), 0, W - 1)
        vi = np.clip(np.round(np.nan_to_num(vs)).astype(np.int64), 0, H - 1)
        ok &= np.abs(zs[vi, ui] - zc) < depth_tol * zc
        col = _bilinear(scene.load_color(s).astype(np.float64) / 255.0, np.nan_to_num(us), np.nan_to_num(vs))
        acc[ok] += col[ok]
        count[ok] += 1
    seen = count > 0
    out = np.where(seen[:, None], acc / np.maximum(count, 1)[:, None], 0.0)
    return out.reshape(H, W, 3), seen.reshape(H, W)


def appearance_reference(scene: Scene, heldout: list[int], train: list[int], n_views: int = 4) -> dict:
    """{psnr (mean over frames, seen pixels only), seen (share of held-out pixels some training frame
    sees, %), n_views, n_frames} of the reprojection reference on the frames `heldout`."""
    psnrs, seen_share = [], []
    centres = scene.c2w[train][:, :3, 3]
    for i in heldout:
        near = [train[k] for k in np.argsort(np.linalg.norm(centres - scene.c2w[i][:3, 3], axis=1))[:n_views]]
        pred, seen = reproject_view(scene, i, near)
        gt = scene.load_color(i).astype(np.float64) / 255.0
        if seen.any():
            mse = float(((pred[seen] - gt[seen]) ** 2).mean())
            psnrs.append(100.0 if mse == 0 else -10 * np.log10(mse))
        seen_share.append(float(seen.mean()))
    return {"psnr": round(float(np.mean(psnrs)), 2) if psnrs else None,
            "seen": round(100 * float(np.mean(seen_share)), 2) if seen_share else None,
            "n_views": n_views, "n_frames": len(heldout)}
