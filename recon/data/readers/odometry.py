"""Camera poses from RGB-D frames alone (Open3D RGB-D odometry), and the trajectory errors that measure them.

Used by the RealSense reader (`convert --from realsense`): a .bag has colour and depth but no poses.
`estimate_trajectory` chains Open3D's `compute_rgbd_odometry` (Steinbruecker et al. 2011 / Park et al. 2017
hybrid photometric + geometric term, coarse-to-fine) over the frames:

- Each frame is registered to the current *keyframe*, starting from the constant-velocity guess
  (the keyframe-to-previous motion followed by the previous frame's motion; identity for the
  first pair). A frame whose registration fails, or has fewer than `min_inlier_fraction` of its
  valid depth pixels as correspondences, is registered to the previous frame instead, and that
  previous frame becomes the keyframe. When the registration to the keyframe drifts beyond
  `keyframe_translation_m` / `keyframe_rotation_deg`, the frame itself becomes the keyframe.
  Matching to a keyframe rather than to every previous frame is meant to slow drift while the
  camera lingers (see below).
- A frame that matches neither is *lost*: it is reported (OdometryLost with its index; the
  RealSense reader names the frame), or with `skip_lost` left out (the next frame is matched to the
  last good one).
- The first frame's camera is the world frame (identity pose; OpenCV axes). Scale is metric (from
  depth). There is no loop closure or global optimisation: drift grows with the path length.
- For speed the frames are registered at `work_width` pixels wide (colour area-averaged, depth
  nearest-sampled, K scaled; see the measurements below).

Measured on the shared 7-Scenes sample (7scenes_redkitchen_100: 100 frames, 10 source frames =
1/3 s apart, 6.7 m of camera path, steps of 6.8 cm / 3.7 deg on average and up to 14 cm / 7.3 deg;
colour re-imaged as the 7scenes reader does; its KinectFusion poses as the reference). ATE = RMSE of
the camera centres after the best rigid alignment (Horn); RPE = RMSE of the errors of the
consecutive relative motions (Sturm et al. 2012). One CPU thread on a shared machine, so the seconds
are rough (up to 2x more when it was busy). Command (prints this table):
`RECON_SAMPLE_DATA=... python -m tests.recon.data.test_own_captures`.

    no odometry (all poses identity)           ATE 61 cm,   RPE 7.37 cm / 4.03 deg
    defaults (320 px, 4 levels, keyframes)     ATE 4.62 cm, RPE 1.65 cm / 0.70 deg, 100/100 tracked, 10.5 s
    frame to frame (keyframes=False)           ATE 4.52 cm, RPE 1.64 cm / 0.70 deg, 100/100, 10.5 s
    work_width 640                             ATE 7.99 cm, RPE 1.95 cm / 0.88 deg, 100/100, 43 s
    Open3D's default pyramid (20, 10, 5)       ATE 9.99 cm, RPE 3.21 cm / 1.22 deg, 100/100, 7 s
    work_width 160                             ATE 39 cm,   RPE 6.96 cm / 2.52 deg, 100/100, 2 s

The fourth, coarser pyramid level is what makes the 1/3 s steps trackable (at 640 px the coarsest
level is finer again). With the sample's large steps nearly every frame becomes a keyframe, so
keyframes neither help nor hurt here (4.62 vs 4.52 cm); they are kept on for 30 Hz recordings,
where a frame-to-frame chain would add one link of error per frame while the camera barely moves
(an argument, not measured: no such sequence with reference poses is available here). About
1.6 cm and 0.7 deg of error per 1/3 s step and no loop closure: good for a room corner, not for a
whole room; for long captures prefer poses from a SLAM system (e.g. record with a phone app and
use --from record3d / nerfstudio).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from recon.data.readers.common import resize_frame


class OdometryLost(ValueError):
    """Odometry could not register some frames; `lost` holds their indices."""

    def __init__(self, message: str, lost: list[int]):
        super().__init__(message)
        self.lost = lost


# ----------------------------------------------------------------------------- trajectory errors (pure)

def rigid_align(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R [3, 3], t [3]) minimising sum |R src_i + t - dst_i|^2 over points src, dst [N, 3] (Horn / Kabsch,
    no scale; det R = +1)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    assert src.shape == dst.shape and src.ndim == 2 and src.shape[1] == 3, (src.shape, dst.shape)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    H = (src - mu_s).T @ (dst - mu_d)                 # [3, 3] cross-covariance
    U, _, Vt = np.linalg.svd(H)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(Vt.T @ U.T)) or 1.0])
    R = Vt.T @ D @ U.T
    return R, mu_d - R @ mu_s


def ate_rmse(c2w_est: np.ndarray, c2w_ref: np.ndarray) -> float:
    """Absolute trajectory error, metres: RMSE of the camera centres [N] after the rigid alignment of the
    estimated centres onto the reference ones."""
    p_est = np.asarray(c2w_est)[:, :3, 3]
    p_ref = np.asarray(c2w_ref)[:, :3, 3]
    R, t = rigid_align(p_est, p_ref)
    return float(np.sqrt(np.mean(np.sum((p_est @ R.T + t - p_ref) ** 2, axis=1))))


def rotation_angle_deg(R: np.ndarray) -> float:
    """Angle of the rotation matrix R [3, 3] in degrees."""
    c = (np.trace(R) - 1.0) / 2.0
    return float(math.degrees(math.acos(min(1.0, max(-1.0, c)))))


def relative_pose_error(c2w_est: np.ndarray, c2w_ref: np.ndarray, delta: int = 1) -> tuple[float, float]:
    """(translation RMSE m, rotation RMSE deg) of the relative motions between frames i and i + delta
    (Sturm et al. 2012: E_i = inv(inv(Q_i) Q_i+d) inv(P_i) P_i+d). Independent of the world frame."""
    c2w_est, c2w_ref = np.asarray(c2w_est), np.asarray(c2w_ref)
    t_err, r_err = [], []
    for i in range(len(c2w_est) - delta):
        rel_ref = np.linalg.inv(c2w_ref[i]) @ c2w_ref[i + delta]
        rel_est = np.linalg.inv(c2w_est[i]) @ c2w_est[i + delta]
        E = np.linalg.inv(rel_ref) @ rel_est
        t_err.append(float(np.linalg.norm(E[:3, 3])))
        r_err.append(rotation_angle_deg(E[:3, :3]))
    if not t_err:
        return 0.0, 0.0
    return float(np.sqrt(np.mean(np.square(t_err)))), float(np.sqrt(np.mean(np.square(r_err))))


def motion_size(T: np.ndarray) -> tuple[float, float]:
    """(translation m, rotation deg) of a rigid motion T [4, 4]."""
    return float(np.linalg.norm(T[:3, 3])), rotation_angle_deg(T[:3, :3])


# ----------------------------------------------------------------------------- odometry

@dataclass
class OdometrySettings:
    work_width: int = 320                       # register frames at this width (px); 0 = full size
    depth_max_m: float = 4.0                    # depth beyond this is not used for registration
    depth_diff_max_m: float = 0.07              # correspondence gate (Open3D's default 0.03 at 30 Hz)
    iterations: tuple[int, ...] = (40, 20, 10, 10)  # per pyramid level, coarsest first (Open3D's order)
    keyframes: bool = True                      # register to a keyframe (else always to the previous frame)
    keyframe_translation_m: float = 0.05        # new keyframe beyond this motion from the keyframe ...
    keyframe_rotation_deg: float = 3.0          # ... or this rotation
    min_inlier_fraction: float = 0.15           # correspondences / valid pixels below this = failed


@dataclass
class OdometryResult:
    c2w: np.ndarray                             # [N, 4, 4] camera-to-world (first camera = world), OpenCV axes
    kept: list[int]                             # indices of the frames with a pose (lost ones left out)
    lost: list[int] = field(default_factory=list)
    keyframes: list[int] = field(default_factory=list)
    fallbacks: int = 0                          # frames registered to the previous frame after the keyframe failed


class RGBDOdometry:
    """Incremental keyframe RGB-D odometry: feed frames in order with `add`; poses in `c2w`."""

    def __init__(self, K: np.ndarray, size: tuple[int, int], settings: OdometrySettings | None = None):
        import open3d as o3d
        self.o3d = o3d
        self.s = settings or OdometrySettings()
        self.K_full = np.asarray(K, dtype=np.float64)
        self.size = tuple(size)
        self.c2w: list[np.ndarray] = []           # poses of the tracked frames
        self.kept: list[int] = []
        self.lost: list[int] = []
        self.keyframes: list[int] = []
        self.fallbacks = 0
        self._key = None                          # (rgbd, c2w, index) of the keyframe
        self._prev = None                         # (rgbd, c2w, index) of the last tracked frame
        self._velocity = np.eye(4)                # last frame-to-frame motion (prev <- current), for the guess
        self._intr = None
        self._option = o3d.pipelines.odometry.OdometryOption(
            iteration_number_per_pyramid_level=o3d.utility.IntVector(list(self.s.iterations)),
            depth_diff_max=self.s.depth_diff_max_m, depth_min=0.0, depth_max=self.s.depth_max_m)
        self._jac = o3d.pipelines.odometry.RGBDOdometryJacobianFromHybridTerm()

    def _rgbd(self, color: np.ndarray, depth_m: np.ndarray):
        o3d = self.o3d
        assert color.shape[:2] == depth_m.shape and (depth_m.shape[1], depth_m.shape[0]) == self.size, \
            (color.shape, depth_m.shape, self.size)
        c, d, K = np.asarray(color), np.asarray(depth_m, dtype=np.float32), self.K_full
        W, H = self.size
        if 0 < self.s.work_width < W:
            c, d, K = resize_frame(c, d, K, (self.s.work_width, max(8, round(H * self.s.work_width / W))))
        if self._intr is None:
            self._intr = o3d.camera.PinholeCameraIntrinsic(d.shape[1], d.shape[0], K[0, 0], K[1, 1], K[0, 2], K[1, 2])
        d = np.where(np.isfinite(d) & (d > 0) & (d <= self.s.depth_max_m), d, 0).astype(np.float32)
        rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
            o3d.geometry.Image(np.ascontiguousarray(c)), o3d.geometry.Image(np.ascontiguousarray(d)),
            depth_scale=1.0, depth_trunc=self.s.depth_max_m + 1.0, convert_rgb_to_intensity=True)
        return rgbd, int((d > 0).sum())

    def _register(self, src, tgt, init: np.ndarray, n_valid: int) -> np.ndarray | None:
        """T (source camera -> target camera) or None when the registration failed."""
        ok, T, info = self.o3d.pipelines.odometry.compute_rgbd_odometry(
            src, tgt, self._intr, init, self._jac, self._option)
        if not ok:
            return None
        inliers = float(np.asarray(info)[5, 5])     # the information matrix's last entry counts correspondences
        if n_valid == 0 or inliers < self.s.min_inlier_fraction * n_valid:
            return None
        return np.asarray(T, dtype=np.float64)

    def add(self, index: int, color: np.ndarray, depth_m: np.ndarray) -> bool:
        """Register frame `index` (colour [H, W, 3] uint8, z-depth [H, W] metres); False if it is lost."""
        rgbd, n_valid = self._rgbd(color, depth_m)
        if self._prev is None:
            self._key = self._prev = (rgbd, np.eye(4), index)
            self.c2w.append(np.eye(4))
            self.kept.append(index)
            self.keyframes.append(index)
            return True
        key_rgbd, key_c2w, key_idx = self._key
        prev_rgbd, prev_c2w, prev_idx = self._prev
        pose = None
        if key_idx != prev_idx:
            # guess: current -> previous (constant velocity) -> keyframe
            T_key = self._register(rgbd, key_rgbd, np.linalg.inv(key_c2w) @ prev_c2w @ self._velocity, n_valid)
            if T_key is not None:
                pose = key_c2w @ T_key
            else:
                self.fallbacks += 1
        if pose is None:
            T_prev = self._register(rgbd, prev_rgbd, self._velocity, n_valid)
            if T_prev is None and not np.allclose(self._velocity, np.eye(4)):
                T_prev = self._register(rgbd, prev_rgbd, np.eye(4), n_valid)
            if T_prev is None:
                self.lost.append(index)
                return False
            pose = prev_c2w @ T_prev
            if key_idx != prev_idx:                      # the previous frame becomes the keyframe
                self._key = self._prev
                self.keyframes.append(prev_idx)
        self._velocity = np.linalg.inv(prev_c2w) @ pose
        self._prev = (rgbd, pose, index)
        self.c2w.append(pose)
        self.kept.append(index)
        dt, dr = motion_size(np.linalg.inv(self._key[1]) @ pose)
        if not self.s.keyframes or dt > self.s.keyframe_translation_m or dr > self.s.keyframe_rotation_deg:
            self._key = self._prev
            if self.s.keyframes:
                self.keyframes.append(index)
        return True

    def result(self) -> OdometryResult:
        return OdometryResult(c2w=np.stack(self.c2w) if self.c2w else np.zeros((0, 4, 4)), kept=list(self.kept),
                              lost=list(self.lost), keyframes=list(self.keyframes), fallbacks=self.fallbacks)


def estimate_trajectory(frames: Sequence | Callable[[int], tuple[np.ndarray, np.ndarray]], n: int, K: np.ndarray,
                        size: tuple[int, int], settings: OdometrySettings | None = None, skip_lost: bool = False,
                        progress: bool = True) -> OdometryResult:
    """Poses of `n` frames by RGB-D odometry (see the module docstring).

    frames: a sequence, or a function i -> (colour [H, W, 3] uint8, z-depth [H, W] float metres, 0 = invalid),
    with K [3, 3] and size (W, H) of those images. Raises OdometryLost naming the lost frames unless
    `skip_lost`, in which case they are left out of the result (`kept` lists the others).
    """
    get = frames if callable(frames) else frames.__getitem__
    odo = RGBDOdometry(K, size, settings)
    for i in tqdm(range(n), desc="odometry", dynamic_ncols=True, mininterval=1.0, disable=not progress):
        color, depth_m = get(i)
        odo.add(i, color, depth_m)
    res = odo.result()
    if res.lost and not skip_lost:
        raise OdometryLost(f"RGB-D odometry lost track at {len(res.lost)} frame(s) (indices {res.lost[:20]}"
                           f"{' ...' if len(res.lost) > 20 else ''})", res.lost)
    if not res.kept:
        raise OdometryLost("RGB-D odometry tracked no frame", res.lost)
    return res
