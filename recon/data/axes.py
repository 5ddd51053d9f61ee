"""Which way is up: a declared axis ("+z", scene.json "up_axis") or the cameras' own up.

Shared by the exporters (recon/export/frames.py) and the orbit of `run.py render` (recon/postfit/poses.py).
"""
from __future__ import annotations

import numpy as np


def axis_vector(text: str) -> np.ndarray:
    """'+z', '-y', 'x' ... -> unit vector [3]; ValueError for anything else."""
    t = str(text).strip().lower()
    sign = -1.0 if t.startswith("-") else 1.0
    t = t.lstrip("+-")
    if t not in ("x", "y", "z"):
        raise ValueError(f"up axis must be one of +x, -x, +y, -y, +z, -z, got {text!r}")
    v = np.zeros(3)
    v["xyz".index(t)] = sign
    return v


def camera_up(c2w: np.ndarray) -> np.ndarray:
    """Up direction [3] (unit) from OpenCV cameras c2w [N, 4, 4].

    Cameras are held or mounted without roll, so their x axes (c2w[:3, 0]) are level: up is the direction
    orthogonal to all of them, the least eigenvector e0 of sum x x^T, signed like the mean camera up
    (-y, i.e. -c2w[:3, 1]). This is not biased by the cameras looking down, which the mean camera up is.
    When the x axes do not pin it down (all headings alike: eigenvalue l1 < 4 l0 or l1 < 1e-6) the mean
    camera up is returned.
    """
    c2w = np.asarray(c2w, np.float64)
    assert c2w.ndim == 3 and c2w.shape[1:] == (4, 4) and len(c2w) > 0, c2w.shape
    u = -c2w[:, :3, 1].mean(axis=0)
    norm = np.linalg.norm(u)
    if not np.isfinite(norm) or norm < 1e-6:
        raise ValueError("camera up vectors cancel out; no mean up direction")
    u = u / norm
    x = c2w[:, :3, 0]  # [N, 3]
    lam, vec = np.linalg.eigh(x.T @ x / len(x))  # ascending
    if lam[1] >= 1e-6 and lam[1] >= 4.0 * lam[0]:
        e0 = vec[:, 0]
        return e0 if e0 @ u >= 0 else -e0
    return u
