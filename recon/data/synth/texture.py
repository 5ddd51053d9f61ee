"""Procedural materials: albedo patterns evaluated at world points, plus Lambert shading.

The light is fixed in the world, so shaded colour is view-independent: the
rendered pixel colour and the GT mesh vertex colour come from the same
function `shade_colour(points, normals, material_ids, table)`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# pattern ids
P_NOISE, P_STRIPES, P_CHECKER, P_WOOD, P_BOARDS = 0, 1, 2, 3, 4

# world-fixed lights: (unit direction towards the light, weight) and ambient term
_LIGHTS = (
    (np.array([0.35, 0.25, 1.0]) / np.linalg.norm([0.35, 0.25, 1.0]), 0.42),
    (np.array([-0.6, -0.45, 0.35]) / np.linalg.norm([-0.6, -0.45, 0.35]), 0.22),
)
_AMBIENT = 0.48


@dataclass(frozen=True)
class Material:
    base_rgb: tuple[float, float, float]   # albedo in [0, 1]
    pattern: int = P_NOISE
    scale_m: float = 0.05                  # value-noise feature size
    period_m: float = 0.1                  # stripe / board / checker period
    direction: tuple[float, float, float] = (1.0, 0.0, 0.0)  # stripe / grain direction (unit)
    amp: float = 0.15                      # pattern contrast
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)     # noise domain offset (decorrelates objects)


# ---------------------------------------------------------------- noise
_HC = (np.uint32(0x8DA6B343), np.uint32(0xD8163841), np.uint32(0xCB1AB31F))


def _mix(h: np.ndarray) -> np.ndarray:
    """uint32 avalanche -> float in [0, 1)."""
    h = h ^ (h >> np.uint32(15))
    h *= np.uint32(0x2C1B3C6D)
    h ^= h >> np.uint32(12)
    h *= np.uint32(0x297A2D39)
    h ^= h >> np.uint32(15)
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / float(1 << 24))


def _hash3(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray) -> np.ndarray:
    """Integer lattice hash -> float in [0, 1). Inputs int64 arrays of equal shape."""
    return _mix(ix.astype(np.uint32) * _HC[0] ^ iy.astype(np.uint32) * _HC[1] ^ iz.astype(np.uint32) * _HC[2])


def value_noise(p: np.ndarray) -> np.ndarray:
    """Smooth 3D value noise in [0, 1] at points p [N, 3] (lattice spacing 1)."""
    assert p.ndim == 2 and p.shape[1] == 3
    fl = np.floor(p)
    i = fl.astype(np.int64).astype(np.uint32)                           # [N, 3] (wraps negatives)
    f = (p - fl).astype(np.float32)
    w1 = f * f * (np.float32(3.0) - np.float32(2.0) * f)                # smoothstep weights [N, 3]
    w0 = np.float32(1.0) - w1
    hk = [(i[:, a] * _HC[a], (i[:, a] + np.uint32(1)) * _HC[a]) for a in range(3)]
    out = np.zeros(len(p), np.float32)
    for dx in (0, 1):
        wx = w1[:, 0] if dx else w0[:, 0]
        for dy in (0, 1):
            wxy = wx * (w1[:, 1] if dy else w0[:, 1])
            hxy = hk[0][dx] ^ hk[1][dy]
            for dz in (0, 1):
                out += wxy * (w1[:, 2] if dz else w0[:, 2]) * _mix(hxy ^ hk[2][dz])
    return out.astype(np.float64)


def fbm(p: np.ndarray) -> np.ndarray:
    """Two-octave value noise in [0, 1]."""
    return 0.65 * value_noise(p) + 0.35 * value_noise(2.03 * p + 17.31)


# ---------------------------------------------------------------- material table
def material_table(materials: list[Material]) -> dict[str, np.ndarray]:
    """Stack materials into arrays indexed by material id."""
    return {
        "base": np.array([m.base_rgb for m in materials], dtype=np.float64),        # [M, 3]
        "pattern": np.array([m.pattern for m in materials], dtype=np.int64),         # [M]
        "scale": np.array([m.scale_m for m in materials], dtype=np.float64),         # [M]
        "period": np.array([m.period_m for m in materials], dtype=np.float64),       # [M]
        "dir": np.array([m.direction for m in materials], dtype=np.float64),         # [M, 3]
        "amp": np.array([m.amp for m in materials], dtype=np.float64),               # [M]
        "offset": np.array([m.offset for m in materials], dtype=np.float64),         # [M, 3]
    }


def albedo(points: np.ndarray, mat_ids: np.ndarray, table: dict[str, np.ndarray]) -> np.ndarray:
    """Patterned albedo [N, 3] in [0, 1] at world points [N, 3] with material ids [N]."""
    assert points.ndim == 2 and points.shape[1] == 3 and mat_ids.shape == (len(points),)
    base = table["base"][mat_ids]
    pat = table["pattern"][mat_ids]
    scale = table["scale"][mat_ids][:, None]
    period = table["period"][mat_ids]
    direc = table["dir"][mat_ids]
    amp = table["amp"][mat_ids]
    n = fbm(points / scale + table["offset"][mat_ids])                 # [N] in [0, 1]
    noise_term = 2.0 * n - 1.0
    m = 1.0 + amp * noise_term                                          # P_NOISE (default)
    for kind in np.unique(pat):
        if kind == P_NOISE:
            continue
        sel = np.nonzero(pat == kind)[0]
        m[sel] = _pattern(int(kind), points[sel], n[sel], noise_term[sel], period[sel], direc[sel], amp[sel])
    return np.clip(base * m[:, None], 0.0, 1.0)


def _pattern(kind: int, p: np.ndarray, n: np.ndarray, noise_term: np.ndarray, period: np.ndarray,
             direc: np.ndarray, amp: np.ndarray) -> np.ndarray:
    """Albedo multiplier [M] of one structured pattern at points p [M, 3]."""
    along = np.einsum("nc,nc->n", p, direc) / period                    # [M] periods along dir
    if kind == P_STRIPES:
        return 1.0 + amp * (0.7 * np.sin(2.0 * np.pi * along) + 0.3 * noise_term)
    if kind == P_CHECKER:
        cell = np.floor(p / period[:, None]).astype(np.int64).sum(1)
        return 1.0 + amp * (np.where(cell % 2 == 0, 0.8, -0.8) + 0.2 * noise_term)
    if kind == P_WOOD:
        return 1.0 + amp * (0.6 * np.sin(2.0 * np.pi * (along + 2.0 * n)) + 0.4 * noise_term)
    if kind == P_BOARDS:
        # planks run along `dir`, side by side across it (horizontal perpendicular), 6 widths long
        perp = np.stack([-direc[:, 1], direc[:, 0], np.zeros(len(p))], 1)
        across = np.einsum("nc,nc->n", p, perp) / period
        board = np.floor(across).astype(np.int64)
        frac = across - board
        stagger = np.floor(along / 6.0 + 0.37 * board).astype(np.int64)
        board_val = _hash3(board, stagger, np.full_like(board, 7)) - 0.5  # per-plank brightness
        grain = np.sin(2.0 * np.pi * (along * 4.0 + 3.0 * n))
        joint = np.where((frac < 0.04) | (frac > 0.96), -0.35, 0.0)
        return 1.0 + amp * (0.8 * board_val + 0.25 * grain) + joint
    raise ValueError(kind)


def shading(normals: np.ndarray) -> np.ndarray:
    """Lambert + ambient factor [N] for unit normals [N, 3] (world-fixed lights)."""
    s = np.full(len(normals), _AMBIENT)
    for direction, weight in _LIGHTS:
        s += weight * np.clip(normals @ direction, 0.0, None)
    return s


def shade_colour(points: np.ndarray, normals: np.ndarray, mat_ids: np.ndarray,
                 table: dict[str, np.ndarray]) -> np.ndarray:
    """Final colour [N, 3] uint8 = albedo(point) * shading(normal)."""
    rgb = albedo(points, mat_ids, table) * shading(normals)[:, None]
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
