"""Pinhole intrinsics, look-direction poses and smooth room-scanning trajectories.

Poses are camera-to-world [4, 4] with OpenCV camera axes (x right, y down,
z forward); the world is z up.
"""
from __future__ import annotations

import numpy as np

HFOV_DEG = 84.0
CAM_Z_RANGE = (1.25, 1.65)   # camera height band (m)
RING_INSET_M = 0.95          # distance of the scanning loop from the walls (m)


def intrinsics(width: int, height: int, hfov_deg: float = HFOV_DEG) -> np.ndarray:
    """[3, 3] pinhole K with fx = fy and the principal point at the image centre (pixel-centre convention)."""
    fx = (width / 2.0) / np.tan(np.deg2rad(hfov_deg) / 2.0)
    return np.array([[fx, 0.0, (width - 1) / 2.0], [0.0, fx, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def pose_from_angles(eye: np.ndarray, yaw: float, pitch: float, roll: float = 0.0) -> np.ndarray:
    """c2w [4, 4] for a camera at eye [3] looking along heading yaw (rad, about +z from +x),
    pitched down by `pitch` (rad, positive = down), rolled by `roll` about the optical axis."""
    fwd = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), -np.sin(pitch)])
    right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])          # fwd x up, normalised (horizontal)
    down = np.cross(fwd, right)
    if roll != 0.0:
        c, s = np.cos(roll), np.sin(roll)
        right, down = c * right + s * down, -s * right + c * down
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, fwd, eye
    return c2w


def ring_point(rect: tuple[float, float, float, float], theta: np.ndarray, inset: float) -> np.ndarray:
    """Points [N, 2] on a rounded-rectangle (superellipse, exponent 4) loop inset from the room walls."""
    x0, y0, x1, y1 = rect
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    a = max(0.3, (x1 - x0) / 2 - inset)
    b = max(0.3, (y1 - y0) / 2 - inset)
    c, s = np.cos(theta), np.sin(theta)
    px = cx + a * np.sign(c) * np.abs(c) ** 0.5
    py = cy + b * np.sign(s) * np.abs(s) ** 0.5
    return np.stack([px, py], -1)


def room_trajectory(rng: np.random.Generator, rect: tuple[float, float, float, float], n: int) -> np.ndarray:
    """[n, 4, 4] c2w: one smooth loop around the room looking across it, with yaw / pitch / height sweeps."""
    assert n >= 1
    x0, y0, x1, y1 = rect
    inset = min(RING_INSET_M, 0.3 * min(x1 - x0, y1 - y0))
    s = np.arange(n) / n                                        # [n] progress along the loop
    direction = 1.0 if rng.random() < 0.5 else -1.0
    theta0 = float(rng.uniform(0.0, 2 * np.pi))
    # constant speed: resample the loop uniformly in arc length
    dense = theta0 + direction * 2 * np.pi * np.arange(2049) / 2048
    pts = ring_point(rect, dense, inset)                        # [2049, 2]
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    theta = np.interp(s * arc[-1], arc, dense)
    xy = ring_point(rect, theta, inset)                         # [n, 2]
    zc = float(rng.uniform(1.38, 1.5))
    ph = rng.uniform(0.0, 2 * np.pi, 4)
    z = np.clip(zc + 0.12 * np.sin(2 * np.pi * 2 * s + ph[0]), *CAM_Z_RANGE)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    # look across the room: towards a point beyond the centre, swept left / right
    alpha = 0.45 + 0.2 * np.sin(2 * np.pi * s + ph[1])
    tx = cx + (cx - xy[:, 0]) * alpha
    ty = cy + (cy - xy[:, 1]) * alpha
    yaw = np.arctan2(ty - xy[:, 1], tx - xy[:, 0]) + np.deg2rad(32.0) * np.sin(2 * np.pi * 3 * s + ph[2])
    pitch = np.deg2rad(22.0 + 7.0 * np.sin(2 * np.pi * 2 * s + ph[3]))
    roll = np.deg2rad(1.5) * np.sin(2 * np.pi * 5 * s)
    eyes = np.concatenate([xy, z[:, None]], 1)
    return np.stack([pose_from_angles(eyes[i], float(yaw[i]), float(pitch[i]), float(roll[i]))
                     for i in range(n)], 0)


def perturb_pose(rng: np.random.Generator, c2w: np.ndarray, rect: tuple[float, float, float, float],
                 level: float) -> np.ndarray:
    """A nearby pose: position jitter (kept inside the room, inset 0.5 m), heading / pitch jitter.
    `level` in (0, 1] scales the perturbation; at 1 the heading is free."""
    fwd = c2w[:3, 2]
    yaw = np.arctan2(fwd[1], fwd[0])
    pitch = -np.arcsin(np.clip(fwd[2], -1.0, 1.0))
    eye = c2w[:3, 3].copy()
    eye[:2] += rng.normal(0.0, 0.35 * level, 2)
    x0, y0, x1, y1 = rect
    m = min(0.5, 0.25 * min(x1 - x0, y1 - y0))
    eye[0] = np.clip(eye[0], x0 + m, x1 - m)
    eye[1] = np.clip(eye[1], y0 + m, y1 - m)
    eye[2] = np.clip(eye[2] + rng.normal(0.0, 0.1 * level), *CAM_Z_RANGE)
    yaw = yaw + rng.normal(0.0, np.deg2rad(70.0) * level)
    pitch = np.clip(pitch + rng.normal(0.0, np.deg2rad(6.0) * level), np.deg2rad(10.0), np.deg2rad(40.0))
    return pose_from_angles(eye, float(yaw), float(pitch))
