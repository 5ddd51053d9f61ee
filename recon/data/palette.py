"""Label colours: one deterministic palette for classes and one for instance ids.

Every picture and coloured mesh the project writes (mesh_semantic.ply, mesh_panoptic.ply, renders,
bench figures, exports) takes its colours from here, so a class has the same colour everywhere.
"""
from __future__ import annotations

import numpy as np


def class_palette(n: int) -> np.ndarray:
    """[n, 3] uint8 distinct colours; index 0 (unlabelled) is grey. Deterministic."""
    rng = np.random.default_rng(12345)
    pal = np.zeros((max(n, 1), 3), np.uint8)
    pal[0] = (128, 128, 128)
    golden = 0.618033988749895
    for i in range(1, n):
        h = (i * golden) % 1.0
        s, v = 0.55 + 0.35 * rng.random(), 0.75 + 0.25 * rng.random()
        k = np.array([5.0, 3.0, 1.0])
        c = v - v * s * np.clip(np.minimum((k + h * 6) % 6, 4 - (k + h * 6) % 6), 0, 1)
        pal[i] = np.round(c * 255).astype(np.uint8)
    return pal


def instance_palette(ids: np.ndarray) -> np.ndarray:
    """[len(ids), 3] uint8 distinct, deterministic colours for instance ids."""
    rng = np.random.default_rng(777)
    table = rng.integers(40, 256, size=(int(ids.max(initial=0)) + 1, 3)).astype(np.uint8)
    return table[ids]
