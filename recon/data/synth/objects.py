"""Furniture-like objects built from primitives, in a local frame, and their placement.

Local frame: origin at the footprint centre on the supporting surface (z = 0
is the floor or the table top), the object's front faces local +y, its back
local -y. `place` rotates by yaw about z and translates into the world.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .primitives import Box, Frustum, Prim, prim_obb
from .texture import P_BOARDS, P_CHECKER, P_NOISE, P_STRIPES, P_WOOD, Material

# class palettes (albedo RGB in [0, 1])
PALETTE: dict[str, list[tuple[float, float, float]]] = {
    "wall": [(0.86, 0.84, 0.79), (0.78, 0.83, 0.86), (0.87, 0.80, 0.73), (0.80, 0.85, 0.78), (0.88, 0.78, 0.78)],
    "floor_wood": [(0.58, 0.40, 0.24), (0.68, 0.52, 0.34), (0.46, 0.32, 0.22)],
    "floor_tile": [(0.72, 0.72, 0.69), (0.52, 0.54, 0.58), (0.70, 0.62, 0.52)],
    "ceiling": [(0.93, 0.93, 0.91)],
    "wood": [(0.56, 0.36, 0.21), (0.72, 0.54, 0.35), (0.36, 0.23, 0.15), (0.62, 0.46, 0.30)],
    "white": [(0.88, 0.88, 0.85), (0.82, 0.84, 0.86)],
    "chair": [(0.62, 0.20, 0.15), (0.20, 0.30, 0.58), (0.30, 0.52, 0.30), (0.55, 0.40, 0.25), (0.25, 0.25, 0.27)],
    "sofa": [(0.33, 0.40, 0.62), (0.62, 0.30, 0.28), (0.45, 0.52, 0.35), (0.56, 0.55, 0.50), (0.40, 0.33, 0.45)],
    "cabinet": [(0.86, 0.86, 0.80), (0.42, 0.30, 0.22), (0.50, 0.60, 0.66), (0.60, 0.66, 0.52)],
    "metal": [(0.28, 0.28, 0.30), (0.70, 0.68, 0.62)],
    "shade": [(0.95, 0.90, 0.74), (0.90, 0.84, 0.86), (0.80, 0.88, 0.90)],
    "box": [(0.70, 0.55, 0.36), (0.76, 0.63, 0.43), (0.62, 0.50, 0.36)],
    "bottle": [(0.16, 0.48, 0.22), (0.20, 0.36, 0.64), (0.52, 0.30, 0.14), (0.80, 0.22, 0.22), (0.85, 0.75, 0.30)],
    "book": [(0.80, 0.16, 0.16), (0.15, 0.36, 0.76), (0.90, 0.76, 0.20), (0.20, 0.62, 0.36), (0.52, 0.22, 0.56)],
}


@dataclass
class LocalObject:
    cls: str
    prims: list[Prim]           # local frame
    materials: list[Material]   # directions in the local frame
    hx: float                   # footprint half extents (local x, y), metres
    hy: float
    height: float               # top z in the local frame


@dataclass
class SceneObject:
    cls: str
    prims: list[Prim]           # world frame
    materials: list[Material]   # world-frame directions
    room: int
    x: float
    y: float
    z: float                    # support height
    yaw: float
    hx: float
    hy: float
    height: float
    stuff: bool = False

    @property
    def obb(self):
        return (self.x, self.y, self.yaw, self.hx, self.hy, self.z, self.z + self.height)

    def prim_obbs(self):
        return [prim_obb(p) for p in self.prims]


# ---------------------------------------------------------------- materials
def _jitter(rng: np.random.Generator, rgb, sigma: float = 0.06) -> tuple[float, float, float]:
    out = np.clip(np.asarray(rgb) * (1.0 + sigma * rng.standard_normal(3)), 0.02, 1.0)
    return tuple(float(v) for v in out)


def _pick(rng: np.random.Generator, key: str):
    pal = PALETTE[key]
    return pal[int(rng.integers(len(pal)))]


def _offset(rng: np.random.Generator) -> tuple[float, float, float]:
    return tuple(float(v) for v in rng.uniform(0.0, 100.0, 3))


def make_material(rng: np.random.Generator, kind: str) -> Material:
    """A jittered material of a named kind (local-frame direction +x for grains)."""
    off = _offset(rng)
    if kind == "wood":
        return Material(_jitter(rng, _pick(rng, "wood")), P_WOOD, scale_m=float(rng.uniform(0.04, 0.08)),
                        period_m=float(rng.uniform(0.04, 0.08)), direction=(1.0, 0.0, 0.0),
                        amp=float(rng.uniform(0.12, 0.2)), offset=off)
    if kind == "white":
        return Material(_jitter(rng, _pick(rng, "white"), 0.03), P_NOISE, scale_m=0.06, amp=0.06, offset=off)
    if kind in ("chair", "cabinet", "bottle", "book", "box", "shade", "metal", "sofa"):
        rgb = _jitter(rng, _pick(rng, kind))
        if kind == "sofa":
            if rng.random() < 0.5:
                return Material(rgb, P_CHECKER, scale_m=0.03, period_m=float(rng.uniform(0.06, 0.1)),
                                amp=0.12, offset=off)
            return Material(rgb, P_NOISE, scale_m=float(rng.uniform(0.02, 0.04)), amp=0.22, offset=off)
        if kind == "bottle":
            return Material(rgb, P_STRIPES, scale_m=0.02, period_m=float(rng.uniform(0.025, 0.04)),
                            direction=(0.0, 0.0, 1.0), amp=0.22, offset=off)
        if kind == "book":
            return Material(rgb, P_STRIPES, scale_m=0.02, period_m=float(rng.uniform(0.02, 0.035)),
                            direction=(1.0, 0.0, 0.0), amp=0.25, offset=off)
        if kind == "box":
            return Material(rgb, P_NOISE, scale_m=float(rng.uniform(0.02, 0.04)), amp=0.16, offset=off)
        if kind == "metal":
            return Material(rgb, P_STRIPES, scale_m=0.05, period_m=0.03, direction=(0.0, 0.0, 1.0),
                            amp=0.08, offset=off)
        if kind == "shade":
            return Material(rgb, P_NOISE, scale_m=0.02, amp=0.12, offset=off)
        return Material(rgb, P_NOISE, scale_m=float(rng.uniform(0.03, 0.08)),
                        amp=float(rng.uniform(0.1, 0.18)), offset=off)
    raise ValueError(kind)


def wall_material(rng: np.random.Generator) -> Material:
    rgb = _jitter(rng, _pick(rng, "wall"), 0.03)
    if rng.random() < 0.5:  # wallpaper stripes along a horizontal diagonal (works on x and y walls)
        d = 1.0 / np.sqrt(2.0)
        return Material(rgb, P_STRIPES, scale_m=0.15, period_m=float(rng.uniform(0.12, 0.25)),
                        direction=(d, d, 0.0), amp=0.06, offset=_offset(rng))
    return Material(rgb, P_NOISE, scale_m=float(rng.uniform(0.08, 0.15)), amp=0.09, offset=_offset(rng))


def floor_material(rng: np.random.Generator) -> Material:
    along_x = bool(rng.random() < 0.5)
    direc = (1.0, 0.0, 0.0) if along_x else (0.0, 1.0, 0.0)
    if rng.random() < 0.65:
        return Material(_jitter(rng, _pick(rng, "floor_wood")), P_BOARDS, scale_m=0.08,
                        period_m=float(rng.uniform(0.14, 0.2)), direction=direc, amp=0.22,
                        offset=_offset(rng))
    return Material(_jitter(rng, _pick(rng, "floor_tile"), 0.03), P_CHECKER, scale_m=0.05,
                    period_m=float(rng.uniform(0.4, 0.6)), amp=0.12, offset=_offset(rng))


def ceiling_material(rng: np.random.Generator) -> Material:
    return Material(_jitter(rng, _pick(rng, "ceiling"), 0.02), P_NOISE, scale_m=0.3, amp=0.05,
                    offset=_offset(rng))


# ---------------------------------------------------------------- builders (local frame)
def _u(rng, lo, hi) -> float:
    return float(rng.uniform(lo, hi))


def _box(x0, x1, y0, y1, z0, z1, material=0, skip=()) -> Box:
    """Axis-aligned local box from bounds."""
    return Box(((x0 + x1) / 2, (y0 + y1) / 2, (z0 + z1) / 2), ((x1 - x0) / 2, (y1 - y0) / 2, (z1 - z0) / 2),
               0.0, tuple(skip), material)


def build_table(rng: np.random.Generator) -> LocalObject:
    mat = [make_material(rng, "wood" if rng.random() < 0.75 else "white")]
    h, t = _u(rng, 0.72, 0.77), 0.04
    if rng.random() < 0.25:  # round pedestal table
        r = _u(rng, 0.45, 0.55)
        prims = [Frustum(0, 0, h - t, h, r, r),
                 Frustum(0, 0, 0.03, h - t, 0.05, 0.05),
                 Frustum(0, 0, 0.0, 0.03, 0.25, 0.25, skip=("-z",))]
        return LocalObject("table", prims, mat, r, r, h)
    w, d = _u(rng, 1.0, 1.5), _u(rng, 0.72, 0.9)
    leg, inset = 0.05, 0.05
    prims = [_box(-w / 2, w / 2, -d / 2, d / 2, h - t, h)]
    for sx in (-1, 1):
        for sy in (-1, 1):
            cx, cy = sx * (w / 2 - inset - leg / 2), sy * (d / 2 - inset - leg / 2)
            prims.append(_box(cx - leg / 2, cx + leg / 2, cy - leg / 2, cy + leg / 2, 0.0, h - t,
                              skip=("-z", "+z")))
    return LocalObject("table", prims, mat, w / 2, d / 2, h)


def build_chair(rng: np.random.Generator) -> LocalObject:
    frame = make_material(rng, "wood" if rng.random() < 0.5 else "chair")
    seat_mat = make_material(rng, "chair")
    w, d = _u(rng, 0.42, 0.5), _u(rng, 0.42, 0.5)
    s0 = _u(rng, 0.40, 0.44)
    s1 = s0 + 0.05
    hb = _u(rng, 0.84, 0.95)
    p = 0.04  # post / leg size
    prims = [
        _box(-w / 2, w / 2, -d / 2 + p, d / 2, s0, s1, material=1),                          # seat
        _box(-w / 2, -w / 2 + p, -d / 2, -d / 2 + p, 0.0, hb, skip=("-z",)),                 # back posts
        _box(w / 2 - p, w / 2, -d / 2, -d / 2 + p, 0.0, hb, skip=("-z",)),
        _box(-w / 2 + p, w / 2 - p, -d / 2, -d / 2 + 0.03, s1 + 0.12, hb - 0.02),            # back rest
        _box(-w / 2, -w / 2 + p, d / 2 - p, d / 2, 0.0, s0, skip=("-z", "+z")),              # front legs
        _box(w / 2 - p, w / 2, d / 2 - p, d / 2, 0.0, s0, skip=("-z", "+z")),
    ]
    return LocalObject("chair", prims, [frame, seat_mat], w / 2, d / 2, hb)


def build_sofa(rng: np.random.Generator) -> LocalObject:
    mat = [make_material(rng, "sofa")]
    w, d = _u(rng, 1.6, 2.1), _u(rng, 0.8, 0.95)
    arm, back = _u(rng, 0.14, 0.2), _u(rng, 0.18, 0.24)
    hs, ha, hb = _u(rng, 0.4, 0.46), _u(rng, 0.56, 0.64), _u(rng, 0.78, 0.9)
    prims = [
        _box(-w / 2, -w / 2 + arm, -d / 2, d / 2, 0.0, ha, skip=("-z",)),
        _box(w / 2 - arm, w / 2, -d / 2, d / 2, 0.0, ha, skip=("-z",)),
        _box(-w / 2 + arm, w / 2 - arm, -d / 2, -d / 2 + back, 0.0, hb, skip=("-z",)),
        _box(-w / 2 + arm, w / 2 - arm, -d / 2 + back, d / 2, 0.0, hs, skip=("-z",)),
    ]
    return LocalObject("sofa", prims, mat, w / 2, d / 2, hb)


def build_shelf(rng: np.random.Generator) -> LocalObject:
    mat = [make_material(rng, "wood" if rng.random() < 0.6 else "white")]
    w, d, h = _u(rng, 0.8, 1.2), _u(rng, 0.3, 0.4), _u(rng, 1.5, 1.9)
    t, tb = 0.025, 0.012
    prims = [
        _box(-w / 2, -w / 2 + t, -d / 2, d / 2, 0.0, h, skip=("-z",)),
        _box(w / 2 - t, w / 2, -d / 2, d / 2, 0.0, h, skip=("-z",)),
        _box(-w / 2 + t, w / 2 - t, -d / 2, -d / 2 + tb, 0.0, h, skip=("-z",)),
    ]
    n_board = int(rng.integers(4, 6))
    levels = np.linspace(0.0, h - t, n_board)
    for i, z in enumerate(levels):
        z1 = z + (0.06 if i == 0 else t)
        prims.append(_box(-w / 2 + t, w / 2 - t, -d / 2 + tb, d / 2, z, z1, skip=("-z",) if i == 0 else ()))
    return LocalObject("shelf", prims, mat, w / 2, d / 2, h)


def build_cabinet(rng: np.random.Generator) -> LocalObject:
    body = make_material(rng, "wood" if rng.random() < 0.4 else "cabinet")
    metal = make_material(rng, "metal")
    w, d, h = _u(rng, 0.6, 1.2), _u(rng, 0.4, 0.55), _u(rng, 0.75, 1.15)
    pl, door_t, handle_t = 0.06, 0.018, 0.025
    yb = d / 2 - handle_t - door_t                                  # body front face
    prims = [
        _box(-w / 2 + 0.03, w / 2 - 0.03, -d / 2, yb - 0.03, 0.0, pl, skip=("-z",)),   # plinth
        _box(-w / 2, w / 2, -d / 2, yb, pl, h),                                         # body
    ]
    n_door = 2 if w > 0.75 else 1
    edges = np.linspace(-w / 2, w / 2, n_door + 1)
    for i in range(n_door):
        x0, x1 = edges[i] + 0.004, edges[i + 1] - 0.004
        prims.append(_box(x0, x1, yb, yb + door_t, pl + 0.02, h - 0.02))
        hx = x1 - 0.06 if (n_door == 1 or i == 0) else x0 + 0.06
        prims.append(_box(hx - 0.012, hx + 0.012, yb + door_t, yb + door_t + handle_t,
                          h - 0.25, h - 0.1, material=1))
    return LocalObject("cabinet", prims, [body, metal], w / 2, d / 2, h)


def build_lamp(rng: np.random.Generator) -> LocalObject:
    metal, shade = make_material(rng, "metal"), make_material(rng, "shade")
    rb, zs = _u(rng, 0.14, 0.18), _u(rng, 1.25, 1.45)
    rs0, rs1, hs = _u(rng, 0.19, 0.23), _u(rng, 0.11, 0.14), _u(rng, 0.24, 0.3)
    prims = [
        Frustum(0, 0, 0.0, 0.03, rb, rb * 0.85, skip=("-z",)),
        Frustum(0, 0, 0.03, zs, 0.016, 0.016, skip=("-z", "+z")),
        Frustum(0, 0, zs, zs + hs, rs0, rs1, material=1),
    ]
    r = max(rb, rs0)
    return LocalObject("lamp", prims, [metal, shade], r, r, zs + hs)


def build_box(rng: np.random.Generator, small: bool = False) -> LocalObject:
    mat = [make_material(rng, "box")]
    if small:
        w, d, h = _u(rng, 0.08, 0.14), _u(rng, 0.08, 0.14), _u(rng, 0.07, 0.14)
    else:
        w, d, h = _u(rng, 0.3, 0.5), _u(rng, 0.3, 0.45), _u(rng, 0.25, 0.45)
    return LocalObject("box", [_box(-w / 2, w / 2, -d / 2, d / 2, 0.0, h, skip=("-z",))], mat, w / 2, d / 2, h)


def build_bottle(rng: np.random.Generator) -> LocalObject:
    mat = [make_material(rng, "bottle")]
    r, hb = _u(rng, 0.032, 0.045), _u(rng, 0.13, 0.2)
    rn, hsh, hn = _u(rng, 0.012, 0.016), _u(rng, 0.03, 0.05), _u(rng, 0.04, 0.07)
    prims = [
        Frustum(0, 0, 0.0, hb, r, r, skip=("-z", "+z")),
        Frustum(0, 0, hb, hb + hsh, r, rn, skip=("-z",)),
        Frustum(0, 0, hb + hsh, hb + hsh + hn, rn, rn, skip=("-z",)),
    ]
    return LocalObject("bottle", prims, mat, r, r, hb + hsh + hn)


def build_book(rng: np.random.Generator) -> LocalObject:
    mat = [make_material(rng, "book")]
    w, d, h = _u(rng, 0.15, 0.21), _u(rng, 0.2, 0.27), _u(rng, 0.025, 0.05)
    return LocalObject("book", [_box(-w / 2, w / 2, -d / 2, d / 2, 0.0, h, skip=("-z",))], mat, w / 2, d / 2, h)


BUILDERS = {
    "table": build_table, "chair": build_chair, "sofa": build_sofa, "shelf": build_shelf,
    "cabinet": build_cabinet, "lamp": build_lamp, "box": build_box, "bottle": build_bottle,
    "book": build_book,
}


# ---------------------------------------------------------------- placement
def place(obj: LocalObject, x: float, y: float, z: float, yaw: float, room: int) -> SceneObject:
    """Rotate a local object by yaw about z and move its origin to (x, y, z)."""
    c, s = np.cos(yaw), np.sin(yaw)

    def xf(px, py):
        return (float(c * px - s * py + x), float(s * px + c * py + y))

    prims: list[Prim] = []
    for p in obj.prims:
        if isinstance(p, Box):
            cx, cy = xf(p.center[0], p.center[1])
            prims.append(dataclasses.replace(p, center=(cx, cy, float(p.center[2] + z)), yaw=float(p.yaw + yaw)))
        else:
            px, py = xf(p.x, p.y)
            prims.append(dataclasses.replace(p, x=px, y=py, z0=float(p.z0 + z), z1=float(p.z1 + z)))
    mats = []
    for m in obj.materials:
        dx, dy, dz = m.direction
        mats.append(dataclasses.replace(m, direction=(float(c * dx - s * dy), float(s * dx + c * dy), float(dz))))
    return SceneObject(obj.cls, prims, mats, room, float(x), float(y), float(z), float(yaw),
                       obj.hx, obj.hy, obj.height)


def local_to_world(x: float, y: float, yaw: float, px: float, py: float) -> tuple[float, float]:
    c, s = np.cos(yaw), np.sin(yaw)
    return (float(c * px - s * py + x), float(s * px + c * py + y))
