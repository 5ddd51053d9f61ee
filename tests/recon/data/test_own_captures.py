"""`convert` for a user's own captures: nerfstudio transforms.json, Record3D .r3d, RealSense recordings
(recon/data/readers/{nerfstudio,record3d,realsense,odometry}.py), and convert's common options (--size,
--max-depth-m) with the pure maths behind them checked by hand.

Fixtures are written in each format's exact layout: from the plane world of test_readers.py (exact depth
and colour), and from the real 7-Scenes sample (RECON_SAMPLE_DATA; tests/conftest.py) so that poses and
depth can be checked against a second reader. The RealSense recording is written with pyrealsense2's
software device and recorder (it records .db3; no camera needed).

The odometry numbers quoted in recon/data/readers/odometry.py (all 100 frames of the 7-Scenes sample,
several settings; about a minute) are printed by running this file:
    RECON_SAMPLE_DATA=/path/to/data OMP_NUM_THREADS=1 .venv/bin/python -m tests.recon.data.test_own_captures
"""
import io
import json
import math
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import run
from recon.data.readers.common import (GL_TO_CV, K_from_values, ReaderError, c2w_from_opengl, depth_reprojection_error,
                                       distort_normalized, distorted_source_map, limit_depth_mm, parse_size,
                                       resize_frame, rotation_from_quaternion_xyzw, sample_image, source_pixel_map)
from recon.data.readers.convert import convert
from recon.data.readers.odometry import (OdometryLost, OdometrySettings, ate_rmse, estimate_trajectory,
                                         relative_pose_error, rigid_align)
from recon.data.readers.record3d import intrinsics_from_metadata, pose_from_record3d
from recon.data.scene import load_scene
from tests.conftest import SAMPLE_DATA
from tests.recon.data.test_readers import K_FIX, H, W, colour_agreement, fixture_pose, render, save_png

SEVEN = SAMPLE_DATA / "7scenes_redkitchen_100" if SAMPLE_DATA else None
needs_seven = pytest.mark.skipif(SEVEN is None or not (SEVEN / "frame-000000.pose.txt").is_file(),
                                 reason=f"real 7-Scenes sample not found (RECON_SAMPLE_DATA={SAMPLE_DATA}; set "
                                        "RECON_SAMPLE_DATA to the folder holding 7scenes_redkitchen_100/)")
try:
    import pyrealsense2 as rs
except ImportError:  # pragma: no cover - installed by scripts/setup.sh
    rs = None
needs_rs = pytest.mark.skipif(rs is None, reason="pyrealsense2 is not installed (.venv/bin/pip install pyrealsense2)")
try:
    import lzfse
except ImportError:  # pragma: no cover - installed by scripts/setup.sh
    lzfse = None
needs_lzfse = pytest.mark.skipif(lzfse is None, reason="lzfse is not installed (.venv/bin/pip install lzfse)")


def quiet(*_a, **_k):
    pass


def no_leftovers(out: Path) -> bool:
    """Nothing at `out` and no temporary folder of it beside it."""
    return not out.exists() and not list(out.parent.glob(f".{out.name}*"))


def quat_xyzw(R: np.ndarray) -> np.ndarray:
    """Rotation matrix -> (x, y, z, w), written independently of the reader (scipy)."""
    from scipy.spatial.transform import Rotation
    return Rotation.from_matrix(R).as_quat()


# ----------------------------------------------------------------------------- pure maths by hand

def test_parse_size():
    assert parse_size("64x48") == (64, 48) and parse_size(" 8X8 ") == (8, 8) and parse_size((32, 24)) == (32, 24)
    for bad in ("64", "64x", "4x4", "axb", "64x48x2"):
        with pytest.raises(ReaderError, match="--size"):
            parse_size(bad)


def test_resize_frame_box_nearest_and_K():
    color = np.array([[[0, 0, 0], [100, 0, 0], [10, 10, 10], [30, 30, 30]],
                      [[20, 0, 0], [40, 0, 0], [50, 50, 50], [70, 70, 70]]], np.uint8)        # [2, 4, 3]
    depth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.uint16)
    K = K_from_values(10.0, 8.0, 1.5, 0.5)                                                  # centred in 4x2
    c, d, K2 = resize_frame(color, depth, K, (2, 1))
    np.testing.assert_array_equal(c[0], [[40, 0, 0], [40, 40, 40]])        # 2x2 block means
    np.testing.assert_array_equal(d, [[6, 8]])                             # floor((u + 0.5) * 2) = 1, 3; row 1
    np.testing.assert_allclose(K2, K_from_values(5.0, 4.0, 0.5, 0.0))      # still centred: (2 - 1) / 2, (1 - 1) / 2
    c, d, K3 = resize_frame(color, depth, K, (8, 4))                       # enlarging: bilinear / nearest
    np.testing.assert_array_equal(d[0], [1, 1, 2, 2, 3, 3, 4, 4])
    np.testing.assert_array_equal(d[:, 0], [1, 1, 5, 5])
    np.testing.assert_allclose(K3, K_from_values(20.0, 16.0, 3.5, 1.5))
    assert c.shape == (4, 8, 3) and c[0, 0, 0] == 0 and c[3, 7, 0] == 70
    c, d, K4 = resize_frame(color, depth, K, (4, 2))
    assert (c == color).all() and (d == depth).all() and (K4 == K).all()


def test_limit_depth_mm():
    np.testing.assert_array_equal(limit_depth_mm(np.array([500, 1500, 1501, 0], np.uint16), 1.5), [500, 1500, 0, 0])
    np.testing.assert_array_equal(limit_depth_mm(np.array([7, 65535], np.uint16), None), [7, 65535])


def test_quaternion_and_opengl_axes_by_hand():
    s = math.sqrt(0.5)
    np.testing.assert_allclose(rotation_from_quaternion_xyzw([0, 0, s, s]), [[0, -1, 0], [1, 0, 0], [0, 0, 1]],
                               atol=1e-12)                                          # +90 deg about z
    np.testing.assert_allclose(rotation_from_quaternion_xyzw([2, 0, 0, 0]), np.diag([1, -1, -1]), atol=1e-12)
    # an OpenGL camera at (1, 2, 3) looking along world -z with y up: in OpenCV axes it looks along -z, y down
    c2w_gl = np.eye(4)
    c2w_gl[:3, 3] = [1, 2, 3]
    c2w = c2w_from_opengl(c2w_gl)
    np.testing.assert_array_equal(c2w[:3, 2], [0, 0, -1])       # viewing direction
    np.testing.assert_array_equal(c2w[:3, 1], [0, -1, 0])       # image down = world -y
    np.testing.assert_array_equal(c2w[:3, 3], [1, 2, 3])


def test_distortion_and_source_maps_by_hand():
    xd, yd = distort_normalized(np.array([0.5]), np.array([0.0]), (0.1, 0, 0, 0, 0, 0))
    assert xd[0] == pytest.approx(0.5 * (1 + 0.1 * 0.25)) and yd[0] == 0
    xd, yd = distort_normalized(np.array([0.5]), np.array([0.5]), (0, 0, 0, 0, 0.01, 0))
    assert xd[0] == pytest.approx(0.5 + 2 * 0.01 * 0.25) and yd[0] == pytest.approx(0.5 + 0.01 * (0.5 + 0.5))
    xd, _ = distort_normalized(np.array([1.0]), np.array([0.0]), (0, 0, 0, 0.5, 0, 0))     # k4 r^8
    assert xd[0] == pytest.approx(1.5)
    K = K_from_values(10, 10, 1.5, 1.0)
    us, vs = distorted_source_map(K, (0,) * 6, K, (4, 3))
    ref = source_pixel_map(K, K, (4, 3))
    np.testing.assert_allclose(us, ref[0]) and np.testing.assert_allclose(vs, ref[1])
    us, _ = distorted_source_map(K, (0.1, 0, 0, 0, 0, 0), K, (4, 3))
    x = (3 - 1.5) / 10                                            # pixel (3, 1): x = 0.15, y = 0
    assert us[1, 3] == pytest.approx(10 * x * (1 + 0.1 * x * x) + 1.5)


def test_sample_image_nearest_linear_outside():
    img = np.array([[0, 10, 20], [30, 40, 50]], np.uint8)
    us, vs = np.array([[0.4, 0.6, 2.4, 3.1]]), np.array([[0.0, 0.0, 1.0, 1.0]])
    np.testing.assert_array_equal(sample_image(img, us, vs, "nearest"), [[0, 10, 50, 0]])
    np.testing.assert_array_equal(sample_image(img, np.array([[0.5, 1.0]]), np.array([[0.5, 0.25]]), "linear"),
                                  [[20, 18]])                     # (0+10+30+40)/4; 10 + 0.25 * 30 = 17.5 -> 18


def test_trajectory_errors_by_hand():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(10, 3))
    a = math.radians(30)
    R = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    R2, t2 = rigid_align(pts, pts @ R.T + [1, 2, 3])
    np.testing.assert_allclose(R2, R, atol=1e-12) and np.testing.assert_allclose(t2, [1, 2, 3], atol=1e-12)
    # reference: 4 cameras on a line; estimate: the same moved rigidly, the last one 0.4 m off along x
    ref = np.repeat(np.eye(4)[None], 4, 0)
    ref[:, 0, 3] = [0, 1, 2, 3]
    est = ref.copy()
    est[3, 0, 3] += 0.4
    # best alignment of x = [0, 1, 2, 3.4] onto [0, 1, 2, 3] (a shift of -0.1, no rotation): residuals
    # -0.1, -0.1, -0.1, +0.3 -> RMSE sqrt(0.12 / 4)
    moved = est.copy()
    moved[:, :3, 3] = est[:, :3, 3] @ R.T + [5, 0, 0]
    moved[:, :3, :3] = R
    assert ate_rmse(moved, ref) == pytest.approx(math.sqrt(0.12 / 4), abs=1e-9)
    # relative errors: only the 2 -> 3 step is wrong, by 0.4 m: RMSE over 3 steps sqrt(0.16 / 3)
    t_rmse, r_rmse = relative_pose_error(moved, ref)
    assert t_rmse == pytest.approx(math.sqrt(0.16 / 3)) and r_rmse == pytest.approx(0.0, abs=1e-6)


def test_record3d_metadata_conventions_by_hand():
    K, note = intrinsics_from_metadata([500, 0, 0, 0, 510, 0, 359.5, 479.5, 1], "meta")    # column-major
    np.testing.assert_array_equal(K, [[500, 0, 359.5], [0, 510, 479.5], [0, 0, 1]]) and not note
    K, note = intrinsics_from_metadata([500, 0, 359.5, 0, 510, 479.5, 0, 0, 1], "meta")    # row-major: noted
    assert K[0, 2] == 359.5 and "row-major" in note
    with pytest.raises(ReaderError, match="meta: 'K' must be 9 numbers"):
        intrinsics_from_metadata([1, 2, 3], "meta")
    s = math.sqrt(0.5)
    c2w, why = pose_from_record3d([0, s, 0, s, 1, 2, 3], "meta")  # ARKit camera turned +90 deg about y
    assert why is None
    # OpenGL camera looks along its -z; turned about y by +90 deg that is world -x; OpenCV's z column must say so
    np.testing.assert_allclose(c2w[:3, 2], [-1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(c2w[:3, 1], [0, -1, 0], atol=1e-12) and np.testing.assert_allclose(c2w[:3, 3], [1, 2, 3])
    assert "norm" in pose_from_record3d([0, 0, 0, 2, 0, 0, 0], "m")[1]
    assert "7" in pose_from_record3d([0, 0, 0, 1], "m")[1]


# ----------------------------------------------------------------------------- --size / --max-depth-m on every reader

def test_common_options_on_existing_readers(tmp_path):
    """--size and --max-depth-m reach the older readers too; labels are resized like depth (nearest)."""
    from tests.recon.data.test_readers import write_7scenes, write_semantic_nerf
    src = write_7scenes(tmp_path / "seq-01", n=2)
    convert("7scenes", src, tmp_path / "a", size="16x12", max_depth_m=3.0, intrinsics=(26, 26, 15.5, 11.5),
            log=quiet)
    scene = load_scene(tmp_path / "a")
    assert (scene.width, scene.height) == (16, 12)
    np.testing.assert_allclose(scene.K, K_from_values(13, 13, 7.5, 5.5))
    true = np.rint(render(K_FIX, fixture_pose(1), W, H)[0] * 1000)[1::2, 1::2]     # nearest: odd pixels
    np.testing.assert_array_equal(np.rint(scene.load_depth_m(1) * 1000), np.where(true > 3000, 0, true))
    assert 0 < (true > 3000).mean() < 1 and scene.meta["reader"]["max_depth_m"] == 3.0
    src = write_semantic_nerf(tmp_path / "Replica_Dataset", n=2)
    convert("replica-semantic-nerf", src, tmp_path / "b", size="64x48", intrinsics=(26, 26, 15.5, 11.5), log=quiet)
    scene = load_scene(tmp_path / "b")
    sem, inst = scene.load_gt(1)
    assert sem.shape == inst.shape == (48, 64) and set(np.unique(sem)) <= {0, 5, 7} and scene.has_gt_images
    convert("replica-semantic-nerf", src, tmp_path / "c", intrinsics=(26, 26, 15.5, 11.5), log=quiet)
    np.testing.assert_array_equal(sem, load_scene(tmp_path / "c").load_gt(1)[0].repeat(2, 0).repeat(2, 1))
    assert colour_agreement(scene, 1) > 0.95


# ----------------------------------------------------------------------------- nerfstudio on the plane world

def write_nerfstudio(root: Path, n: int = 3, dist=None, depth_half: bool = True, shared: bool = False,
                     extra: dict | None = None, pose_scale: float = 1.0) -> Path:
    """transforms.json + images/ + depth/ of the plane world; nerfstudio's cx = ours + 0.5; OpenGL poses;
    depth (uint16 mm) at half the colour size when depth_half. With `dist` the colour and depth are rendered
    through the distorting camera (each distorted pixel's ray found by inverting the model iteratively).
    Translations are written times `pose_scale` (what nerfstudio's applied_scale declares)."""
    frames = []
    for i in range(n):
        c2w = fixture_pose(i)
        depth, color, _ = render(K_FIX, c2w, W, H)
        if dist is not None:
            color, depth = render_distorted(c2w, dist)
        raw = np.rint(depth * 1000).astype(np.uint16)
        if depth_half:
            raw = raw[1::2, 1::2]               # what a camera of half the resolution sees (pixel centres)
        save_png(root / "images" / f"frame_{i + 1:05d}.png", color)
        save_png(root / "depth" / f"frame_{i + 1:05d}.png", raw)
        c2w_gl = c2w @ GL_TO_CV
        c2w_gl[:3, 3] *= pose_scale
        f = {"file_path": f"images/frame_{i + 1:05d}.png", "depth_file_path": f"depth/frame_{i + 1:05d}.png",
             "transform_matrix": c2w_gl.tolist()}
        intr = {"fl_x": K_FIX[0, 0], "fl_y": K_FIX[1, 1], "cx": K_FIX[0, 2] + 0.5, "cy": K_FIX[1, 2] + 0.5,
                "w": W, "h": H}
        if not shared:
            f.update(intr)
        frames.append(f)
    meta = {"camera_model": "OPENCV", "frames": frames[::-1],                 # order must not matter
            "applied_transform": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], **(intr if shared else {})}
    if dist is not None:
        meta.update(dict(zip(("k1", "k2", "k3", "k4", "p1", "p2"), dist)))
    meta.update(extra or {})
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


def render_distorted(c2w: np.ndarray, dist) -> tuple[np.ndarray, np.ndarray]:
    """(colour, z-depth) of the plane world seen by the pinhole K_FIX with distortion `dist`."""
    from tests.recon.data.test_readers import PLANE_Z, colour_image
    u, v = np.meshgrid(np.arange(W, dtype=float), np.arange(H, dtype=float))
    xd, yd = (u - K_FIX[0, 2]) / K_FIX[0, 0], (v - K_FIX[1, 2]) / K_FIX[1, 1]
    x, y = xd.copy(), yd.copy()
    for _ in range(50):                          # fixed point: x = x + (xd - distort(x))
        fx, fy = distort_normalized(x, y, dist)
        x, y = x + (xd - fx), y + (yd - fy)
    d_w = np.stack([x, y, np.ones_like(x)], -1) @ c2w[:3, :3].T
    z = (PLANE_Z - c2w[2, 3]) / d_w[..., 2]
    return colour_image(c2w[:3, 3] + z[..., None] * d_w), z


def test_nerfstudio_fixture_conventions(tmp_path):
    src = write_nerfstudio(tmp_path / "ns")
    out = tmp_path / "scene"
    convert("nerfstudio", src, out, log=quiet)
    scene = load_scene(out)
    assert scene.frame_ids == ["000001", "000002", "000003"]                 # from frame_00001.png ...
    np.testing.assert_allclose(scene.K, K_FIX)                               # cx = nerfstudio's - 0.5
    for i in range(3):
        np.testing.assert_allclose(scene.c2w[i], fixture_pose(i), atol=1e-9)
        assert colour_agreement(scene, i) > 0.98
    # depth at half resolution, re-imaged by nearest: pixel (u, v) takes half-res pixel (u // 2, v // 2),
    # which is full-res pixel (2 (u // 2) + 1, 2 (v // 2) + 1)
    true = np.rint(render(K_FIX, fixture_pose(1), W, H)[0] * 1000)
    got = np.rint(scene.load_depth_m(1) * 1000)
    np.testing.assert_array_equal(got, true[1::2, 1::2].repeat(2, 0).repeat(2, 1))
    assert scene.meta["reader"]["applied_transform"] == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]


def test_nerfstudio_shared_intrinsics_scale_and_json_path(tmp_path):
    # saved translations are metric x 2 (applied_scale 2): the reader divides them back
    src = write_nerfstudio(tmp_path / "ns", n=2, shared=True, depth_half=False, extra={"applied_scale": 2.0},
                           pose_scale=2.0)
    convert("nerfstudio", src / "transforms.json", tmp_path / "m", log=quiet)
    m = load_scene(tmp_path / "m")
    np.testing.assert_allclose(m.c2w[1], fixture_pose(1), atol=1e-9)
    np.testing.assert_allclose(m.K, K_FIX)                         # shared intrinsics
    good = depth_reprojection_error(m.load_depth_m(0), m.load_depth_m(1), m.K, m.c2w[0], m.c2w[1])
    c2w = m.c2w.copy()
    c2w[:, :3, 3] *= 2.0                                           # had applied_scale been ignored
    bad = depth_reprojection_error(m.load_depth_m(0), m.load_depth_m(1), m.K, c2w[0], c2w[1])
    assert good["median_m"] < 0.005 and bad["median_m"] > 3 * good["median_m"], (good, bad)
    # --depth-unit-scale-factor: the same PNGs read as units of 2 mm
    convert("nerfstudio", src, tmp_path / "s", depth_unit_scale_factor=0.002, log=quiet, check_pairs=0)
    true = render(K_FIX, fixture_pose(1), W, H)[0]
    np.testing.assert_array_equal(np.rint(load_scene(tmp_path / "s").load_depth_m(1) * 1000),
                                  np.rint(true * 1000) * 2)


def test_nerfstudio_undistorts(tmp_path):
    dist = (-0.08, 0.01, 0.0, 0.0, 0.002, -0.001)
    src = write_nerfstudio(tmp_path / "ns", n=2, dist=dist, depth_half=False)
    convert("nerfstudio", src, tmp_path / "s", log=quiet)
    scene = load_scene(tmp_path / "s")
    assert scene.meta["reader"]["undistorted"]
    assert colour_agreement(scene, 1) > 0.97                  # geometry of the undistorted images is pinhole again
    true = render(K_FIX, fixture_pose(1), W, H)[0]
    got = scene.load_depth_m(1)
    ok = got > 0
    assert ok.mean() > 0.9 and np.median(np.abs(got[ok] - true[ok])) < 0.01
    # without undistortion the borders would be off by pixels: the same files read with dist ignored disagree more
    meta = json.loads((src / "transforms.json").read_text())
    for k in ("k1", "k2", "k3", "k4", "p1", "p2"):
        meta.pop(k)
    (src / "transforms.json").write_text(json.dumps(meta))
    convert("nerfstudio", src, tmp_path / "raw", log=quiet)
    assert np.median(np.abs(load_scene(tmp_path / "raw").load_depth_m(1) - true)) > \
        np.median(np.abs(got[ok] - true[ok]))


# ----------------------------------------------------------------------------- 7-Scenes: round trip and Record3D

@pytest.fixture(scope="module")
def seven_scene(tmp_path_factory):
    if SEVEN is None or not (SEVEN / "frame-000000.pose.txt").is_file():
        pytest.skip(f"real 7-Scenes sample not found (RECON_SAMPLE_DATA={SAMPLE_DATA})")
    out = tmp_path_factory.mktemp("seven") / "scene"
    convert("7scenes", SEVEN, out, max_frames=8, log=quiet, check_pairs=0)
    return load_scene(out)


def scene_to_nerfstudio(scene, root: Path) -> Path:
    """Write a scene in nerfstudio's layout: lossless colour PNGs, uint16 mm depth PNGs, OpenGL poses,
    nerfstudio's cx, cy (ours + 0.5), shared intrinsics."""
    frames = []
    for i, fid in enumerate(scene.frame_ids):
        save_png(root / "images" / f"frame_{fid}.png", scene.load_color(i))
        save_png(root / "depth" / f"frame_{fid}.png", np.rint(scene.load_depth_m(i) * 1000).astype(np.uint16))
        frames.append({"file_path": f"images/frame_{fid}.png", "depth_file_path": f"depth/frame_{fid}.png",
                       "transform_matrix": (scene.c2w[i] @ GL_TO_CV).tolist()})
    K = scene.K
    (root / "transforms.json").write_text(json.dumps({
        "fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2] + 0.5, "cy": K[1, 2] + 0.5, "w": scene.width,
        "h": scene.height, "camera_model": "OPENCV", "frames": frames}))
    return root


@needs_seven
def test_round_trip_7scenes_through_nerfstudio(seven_scene, tmp_path):
    src = scene_to_nerfstudio(seven_scene, tmp_path / "ns")
    rc = run.main(["convert", "--from", "nerfstudio", str(src), "--out", str(tmp_path / "back")])
    assert rc == 0
    back = load_scene(tmp_path / "back")
    assert back.frame_ids == seven_scene.frame_ids and (back.width, back.height) == (640, 480)
    np.testing.assert_array_equal(back.K, seven_scene.K)
    np.testing.assert_allclose(back.c2w, seven_scene.c2w, atol=1e-6)
    for i in range(len(back)):
        np.testing.assert_array_equal(back.load_color(i), seven_scene.load_color(i))
        np.testing.assert_array_equal(back.load_depth_m(i), seven_scene.load_depth_m(i))


def write_r3d(scene, dest: Path, n: int, as_zip: bool = True, with_conf: bool = True) -> Path:
    """A Record3D capture of the scene's first n frames: colour JPEG at full size, float32 depth (NaN = none)
    at half size (full-res pixels (2j + 1, 2i + 1)), confidence 2 except a medium (1) block, poses as
    [qx, qy, qz, qw, tx, ty, tz] in ARKit axes, K column-major."""
    Wc, Hc = scene.width, scene.height
    files = {}
    poses = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(scene.load_color(i)).save(buf, format="JPEG", quality=95)
        files[f"rgbd/{i}.jpg"] = buf.getvalue()
        d = scene.load_depth_m(i)[1::2, 1::2].astype(np.float32)
        conf = np.where(d > 0, 2, 0).astype(np.uint8)
        conf[:40, :60] = np.where(d[:40, :60] > 0, 1, 0)
        d[d == 0] = np.nan
        files[f"rgbd/{i}.depth"] = lzfse.compress(d.tobytes())
        if with_conf:
            files[f"rgbd/{i}.conf"] = lzfse.compress(conf.tobytes())
        c2w_gl = scene.c2w[i] @ GL_TO_CV
        poses.append([*quat_xyzw(c2w_gl[:3, :3]).tolist(), *c2w_gl[:3, 3].tolist()])
    meta = {"K": scene.K.T.reshape(-1).tolist(), "w": Wc, "h": Hc, "dw": Wc // 2, "dh": Hc // 2, "fps": 3,
            "poses": poses, "initPose": poses[0], "frameTimestamps": [i / 3 for i in range(n)], "cameraType": 0}
    files["metadata"] = json.dumps(meta).encode()
    if as_zip:
        with zipfile.ZipFile(dest, "w") as z:
            for name, data in files.items():
                z.writestr(name, data)
    else:
        for name, data in files.items():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(data)
    return dest


@needs_lzfse
@needs_seven
def test_record3d_from_7scenes(seven_scene, tmp_path):
    r3d = write_r3d(seven_scene, tmp_path / "capture.r3d", n=3)
    convert("record3d", r3d, tmp_path / "s", log=quiet)
    scene = load_scene(tmp_path / "s")
    assert scene.frame_ids == ["000000", "000001", "000002"]
    np.testing.assert_allclose(scene.K, seven_scene.K)
    # 7-Scenes' rotations are orthonormal only to ~1e-4; a quaternion stores the nearest rotation
    U, _, Vt = np.linalg.svd(seven_scene.c2w[:3, :3, :3])
    ref = seven_scene.c2w[:3].copy()
    ref[:, :3, :3] = U @ Vt
    np.testing.assert_allclose(scene.c2w, ref, atol=1e-6)
    full = np.rint(seven_scene.load_depth_m(1) * 1000)
    expect = full[1::2, 1::2].repeat(2, 0).repeat(2, 1)
    expect[:80, :120] = 0                                                # medium confidence: dropped by default
    np.testing.assert_array_equal(np.rint(scene.load_depth_m(1) * 1000), expect)
    assert np.abs(scene.load_color(1).astype(int) - seven_scene.load_color(1)).mean() < 3     # JPEG
    # the unzipped folder, keeping medium confidence, through the command line with the common options
    folder = write_r3d(seven_scene, tmp_path / "unzipped", n=3, as_zip=False)
    rc = run.main(["convert", "--from", "record3d", str(folder), "--out", str(tmp_path / "f"), "--min-confidence",
                   "1", "--size", "320x240", "--max-depth-m", "3.0", "--stride", "2"])
    assert rc == 0
    small = load_scene(tmp_path / "f")
    assert small.frame_ids == ["000000", "000002"] and (small.width, small.height) == (320, 240)
    np.testing.assert_allclose(small.K, K_from_values(292.5, 292.5, 159.75, 119.75))
    d = np.rint(small.load_depth_m(1) * 1000)
    half = np.rint(seven_scene.load_depth_m(2) * 1000)[1::2, 1::2]
    np.testing.assert_array_equal(d, np.where(half > 3000, 0, half))   # 2x down of 2x up = the half-res depth


@needs_lzfse
@needs_seven
def test_record3d_without_confidence_maps(seven_scene, tmp_path, capsys):
    r3d = write_r3d(seven_scene, tmp_path / "old.r3d", n=1, with_conf=False)
    convert("record3d", r3d, tmp_path / "s", log=print)
    assert "no rgbd/N.conf confidence maps" in capsys.readouterr().out
    assert (load_scene(tmp_path / "s").load_depth_m(0)[:80, :120] > 0).any()


# ----------------------------------------------------------------------------- odometry and RealSense

def seven_frames(n: int):
    """(colour list, depth-in-metres list, K, reference c2w) of the 7-Scenes sample's first n frames, as the
    7scenes reader converts them."""
    from recon.data.readers import seven_scenes
    plan = seven_scenes.read(SEVEN, max_frames=n)
    recs = [plan.load(i) for i in range(n)]
    return [r.color for r in recs], [r.depth_mm.astype(np.float32) / 1000 for r in recs], plan.K, plan.c2w


@needs_seven
def test_odometry_on_7scenes_and_lost_frames():
    colors, depths, K, ref = seven_frames(12)
    res = estimate_trajectory(list(zip(colors, depths)), 12, K, (640, 480), progress=False)
    assert res.kept == list(range(12)) and not res.lost
    np.testing.assert_allclose(res.c2w[0], np.eye(4))
    ate = ate_rmse(res.c2w, ref)
    rpe_t, rpe_r = relative_pose_error(res.c2w, ref)
    still_t, still_r = relative_pose_error(np.repeat(np.eye(4)[None], 12, 0), ref)    # "no motion" baseline
    assert ate < 0.04 and rpe_t < 0.4 * still_t and rpe_r < 0.4 * still_r, (ate, rpe_t, rpe_r, still_t, still_r)
    # a frame without depth cannot be registered: an error naming it, or left out with skip_lost
    frames = list(zip(colors[:4], depths[:4]))
    frames.insert(2, (colors[2], np.zeros_like(depths[2])))
    with pytest.raises(OdometryLost, match=r"indices \[2\]"):
        estimate_trajectory(frames, 5, K, (640, 480), progress=False)
    res = estimate_trajectory(frames, 5, K, (640, 480), skip_lost=True, progress=False)
    assert res.kept == [0, 1, 3, 4] and res.lost == [2]
    assert ate_rmse(res.c2w, ref[:4]) < 0.04


def write_realsense(path: Path, colors, depths_mm, K, depth_scale: float = 0.001) -> Path:
    """A RealSense recording of registered frames via pyrealsense2's software device and recorder (which writes
    the ROS2 .db3 container): depth Z16 and colour RGB8 streams with the same intrinsics, identity extrinsics."""
    Hh, Ww = depths_mm[0].shape
    dev = rs.software_device()
    ds, cs = dev.add_sensor("Depth"), dev.add_sensor("Color")
    intr = rs.intrinsics()
    intr.width, intr.height, intr.fx, intr.fy, intr.ppx, intr.ppy = Ww, Hh, K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    intr.model, intr.coeffs = rs.distortion.none, [0.0] * 5
    profiles = []
    for sensor, kind, fmt, bpp, uid in ((ds, rs.stream.depth, rs.format.z16, 2, 0),
                                        (cs, rs.stream.color, rs.format.rgb8, 3, 1)):
        vs = rs.video_stream()
        vs.type, vs.index, vs.uid, vs.width, vs.height, vs.fps, vs.bpp, vs.fmt, vs.intrinsics = \
            kind, 0, uid, Ww, Hh, 30, bpp, fmt, intr
        profiles.append(sensor.add_video_stream(vs))
    ds.add_read_only_option(rs.option.depth_units, depth_scale)
    ext = rs.extrinsics()
    ext.rotation, ext.translation = [1, 0, 0, 0, 1, 0, 0, 0, 1], [0, 0, 0]
    profiles[0].register_extrinsics_to(profiles[1], ext)
    recorder = rs.recorder(str(path), dev)
    ds.open(profiles[0])
    cs.open(profiles[1])
    ds.start(lambda f: None)
    cs.start(lambda f: None)
    keep = []
    for i, (c, d) in enumerate(zip(colors, depths_mm)):
        for sensor, prof, pix, bpp in ((ds, profiles[0], np.ascontiguousarray(d, np.uint16), 2),
                                       (cs, profiles[1], np.ascontiguousarray(c, np.uint8), 3)):
            f = rs.software_video_frame()
            f.pixels, f.bpp, f.stride, f.timestamp = pix, bpp, Ww * bpp, i * 33.0
            f.domain, f.frame_number, f.profile = rs.timestamp_domain.hardware_clock, i, prof.as_video_stream_profile()
            keep.append(pix)
            sensor.on_video_frame(f)
    for sensor in (ds, cs):
        sensor.stop()
        sensor.close()
    del recorder
    return path


@needs_rs
@needs_seven
def test_realsense_recording_end_to_end(tmp_path):
    colors, depths, K, ref = seven_frames(10)
    # a quarter-size recording keeps the test light: colour area-averaged, depth nearest, K scaled
    small = [resize_frame(c, np.rint(d * 1000).astype(np.uint16), K, (320, 240)) for c, d in zip(colors, depths)]
    K_s = small[0][2]
    bag = write_realsense(tmp_path / "capture.db3", [s[0] for s in small], [s[1] for s in small], K_s)
    rc = run.main(["convert", "--from", "realsense", str(bag), "--out", str(tmp_path / "s")])
    assert rc == 0
    scene = load_scene(tmp_path / "s")
    # frames are found by their device frame numbers (recorded as 0..9); librealsense's syncer can lose the
    # first frameset of a playback now and then (realsense.py), so the test reads which ones came through
    dnums = [int(re.search(r"depth #(\d+)", scene.meta["source_frames"][f]).group(1)) for f in scene.frame_ids]
    assert len(dnums) >= 9 and dnums == list(range(10 - len(dnums), 10)), dnums
    assert scene.frame_ids == [f"{i:06d}" for i in range(len(dnums))]
    np.testing.assert_allclose(scene.K, K_s, atol=1e-4)                 # the colour stream's intrinsics
    np.testing.assert_allclose(scene.c2w[0], np.eye(4))                 # the first camera is the world
    assert ate_rmse(scene.c2w, ref[dnums]) < 0.04
    # depth aligned to colour with identical cameras is the recorded depth, except at depth edges, where
    # librealsense's align spreads each depth pixel over +-half a pixel and the nearer surface wins: there a
    # pixel takes a neighbour's value (or stays empty)
    i = dnums.index(3)
    got = np.rint(scene.load_depth_m(i) * 1000)
    rec = small[3][1].astype(float)
    assert (got == rec).mean() > 0.95 and (got > 0).mean() > 0.95 * (rec > 0).mean()
    pad = np.pad(rec, 1)
    neighbours = np.stack([pad[1 + dy:1 + dy + rec.shape[0], 1 + dx:1 + dx + rec.shape[1]]
                           for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    assert ((neighbours == got).any(0) | (got == 0)).all()
    np.testing.assert_array_equal(scene.load_color(i), small[3][0])
    assert scene.meta["reader"]["depth_scale_m"] == pytest.approx(0.001)
    # --stride / --max-frames count framesets and tracked frames
    convert("realsense", bag, tmp_path / "t", stride=3, max_frames=2, log=quiet)
    ids = [int(f) for f in load_scene(tmp_path / "t").frame_ids]
    assert len(ids) == 2 and ids[1] - ids[0] == 3 and ids[0] in (0, 1, 2)


# ----------------------------------------------------------------------------- bad input: one clear message each

def _ns(tmp: Path, change, raw: bytes | None = None) -> Path:
    """A 2-frame nerfstudio fixture with `change(folder, meta)` applied (or transforms.json replaced by `raw`)."""
    src = write_nerfstudio(tmp / "ns", n=2, depth_half=False)
    meta = json.loads((src / "transforms.json").read_text())
    change(src, meta)
    if (src / "transforms.json").is_file():
        (src / "transforms.json").write_bytes(raw if raw is not None else json.dumps(meta).encode())
    return src


def _r3d(tmp: Path, change) -> Path:
    """A tiny Record3D zip of the plane world (32x24 colour, 16x12 depth), with `change(files, meta)` applied."""
    files, poses = {}, []
    for i in range(2):
        c2w = fixture_pose(i)
        depth, color, _ = render(K_FIX, c2w, W, H)
        buf = io.BytesIO()
        Image.fromarray(color).save(buf, format="JPEG")
        files[f"rgbd/{i}.jpg"] = buf.getvalue()
        files[f"rgbd/{i}.depth"] = lzfse.compress(depth[1::2, 1::2].astype(np.float32).tobytes())
        files[f"rgbd/{i}.conf"] = lzfse.compress(np.full((H // 2, W // 2), 2, np.uint8).tobytes())
        gl = c2w @ GL_TO_CV
        poses.append([*quat_xyzw(gl[:3, :3]).tolist(), *gl[:3, 3].tolist()])
    meta = {"K": K_FIX.T.reshape(-1).tolist(), "w": W, "h": H, "dw": W // 2, "dh": H // 2, "poses": poses}
    change(files, meta)
    if meta is not None:
        files["metadata"] = json.dumps(meta).encode()
    path = tmp / "cap.r3d"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            if data is not None:
                z.writestr(name, data)
    return path


def _rm(path: Path) -> None:
    path.unlink()


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


BAD = [
    ("nerfstudio", lambda t: _ns(t, lambda s, m: _rm(s / "transforms.json")), None, "transforms.json: missing"),
    ("nerfstudio", lambda t: _ns(t, lambda s, m: None, raw=b"{"), None, "transforms.json: not readable JSON"),
    ("nerfstudio", lambda t: _ns(t, lambda s, m: _rm(s / "images" / "frame_00002.png")), None,
     "frame_00002.png: missing (colour image"),
    ("nerfstudio", lambda t: _ns(t, lambda s, m: m["frames"][0].update(transform_matrix=[[2, 0, 0, 0], [0, 1, 0, 0],
                                                                                         [0, 0, 1, 0], [0, 0, 0, 1]])),
     None, "'transform_matrix' pose is not a rigid transform"),
    ("nerfstudio", lambda t: _ns(t, lambda s, m: m["frames"][0].update(transform_matrix=[[1, 0, 0]])), None,
     "'transform_matrix' must be 4x4 (or 3x4)"),
    ("nerfstudio", lambda t: _ns(t, lambda s, m: [f.pop("fl_x") for f in m["frames"]]), None,
     "no 'fl_x' (neither shared at the top level nor in the frame)"),
    ("nerfstudio", lambda t: _ns(t, lambda s, m: [f.pop("depth_file_path") for f in m["frames"]]), None,
     "no frame has a 'depth_file_path'"),
    ("nerfstudio", lambda t: _ns(t, lambda s, m: _rm(s / "depth" / "frame_00001.png")), None,
     "frame_00001.png: missing (depth image"),
    ("nerfstudio", lambda t: _ns(t, lambda s, m: save_png(s / "depth" / "frame_00001.png",
                                                          np.full((24, 24), 3000, np.uint16))), None,
     "depth is 24x24, not the aspect ratio of the 32x24 colour image"),
    ("nerfstudio", lambda t: _ns(t, lambda s, m: m.update(camera_model="OPENCV_FISHEYE")), None,
     "camera_model 'OPENCV_FISHEYE' is not a perspective camera"),
    ("nerfstudio", lambda t: _ns(t, lambda s, m: [f.update(w=64) for f in m["frames"]]), None,
     "image is 32x24 but transforms.json says w x h = 64x24"),
    ("record3d", lambda t: _write(t / "junk.r3d", b"not a zip") or t / "junk.r3d", None,
     "junk.r3d: not a Record3D .r3d export (not a readable zip archive"),
    ("record3d", lambda t: _r3d(t, lambda f, m: m.pop("K")), None, "cap.r3d:metadata: 'K' must be 9 numbers"),
    ("record3d", lambda t: _r3d(t, lambda f, m: f.update({"rgbd/1.depth": b"\x00garbage"})), None,
     "cap.r3d:rgbd/1.depth: not an LZFSE-compressed image"),
    ("record3d", lambda t: _r3d(t, lambda f, m: m.update(dw=20)), None,
     "cap.r3d:rgbd/0.depth: 768 bytes after decompression; a 20x12 float32 image has 960"),
    ("record3d", lambda t: _r3d(t, lambda f, m: m.update(poses=[])), None, "no 'poses'"),
    ("record3d", lambda t: _r3d(t, lambda f, m: f.update({"rgbd/1.depth": None})), None,
     "cap.r3d:rgbd/1.depth: missing (depth of frame 1)"),
    ("record3d", lambda t: _r3d(t, lambda f, m: m["poses"][1].__setitem__(3, 5.0)), None,
     "pose quaternion has norm"),
    ("realsense", lambda t: _write(t / "junk.bag", b"junk") or t / "junk.bag", None,
     "junk.bag: cannot be played back as a RealSense recording"),
    ("realsense", lambda t: _write(t / "rec.mp4", b"junk") or t / "rec.mp4", None,
     "expected a RealSense recording (.bag or .db3)"),
    ("realsense", lambda t: t / "gone.bag", None, "gone.bag: no such file"),
    ("record3d", lambda t: _r3d(t, lambda f, m: None), ["--depth-unit-scale-factor", "0.001"],
     "--depth-unit-scale-factor does not apply to --from record3d"),
    ("nerfstudio", lambda t: _ns(t, lambda s, m: None), ["--size", "20"], "--size must look like 640x480"),
    ("nerfstudio", lambda t: _ns(t, lambda s, m: None), ["--max-depth-m", "-1"], "--max-depth-m must be a positive"),
    ("nerfstudio", lambda t: _ns(t, lambda s, m: None), ["--max-depth-m", "0.5"],
     "no valid depth left within --max-depth-m 0.5"),
]


@pytest.mark.parametrize("kind, make, flags, message", BAD, ids=[f"{k}-{m[:40]}" for k, _, _, m in BAD])
def test_bad_input_one_clear_message_and_nothing_written(tmp_path, capsys, kind, make, flags, message):
    if kind == "realsense" and rs is None:
        pytest.skip("pyrealsense2 is not installed (.venv/bin/pip install pyrealsense2)")
    if kind == "record3d" and lzfse is None:
        pytest.skip("lzfse is not installed (.venv/bin/pip install lzfse)")
    src = make(tmp_path)
    out = tmp_path / "out" / "scene"
    rc = run.main(["convert", "--from", kind, str(src), "--out", str(out), *(flags or [])])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert err.count("\n") <= 3, err                                 # one message, no traceback
    assert no_leftovers(out)


def measure_odometry(variants=({}, {"keyframes": False}, {"work_width": 640}, {"iterations": (20, 10, 5)},
                               {"work_width": 160})) -> None:
    """Print ATE / RPE / time of the odometry on the whole 7-Scenes sample for some settings (odometry.py's table)."""
    import time
    colors, depths, K, ref = seven_frames(100)
    still = relative_pose_error(np.repeat(np.eye(4)[None], 100, 0), ref)
    print(f"no motion: ATE {ate_rmse(np.repeat(np.eye(4)[None], 100, 0), ref) * 100:.1f} cm, "
          f"RPE {still[0] * 100:.2f} cm / {still[1]:.2f} deg")
    for v in variants:
        t0 = time.perf_counter()
        res = estimate_trajectory(list(zip(colors, depths)), 100, K, (640, 480), OdometrySettings(**v),
                                  skip_lost=True, progress=False)
        dt = time.perf_counter() - t0
        rpe_t, rpe_r = relative_pose_error(res.c2w, ref[res.kept])
        print(f"{v or 'defaults'}: ATE {ate_rmse(res.c2w, ref[res.kept]) * 100:.2f} cm, RPE {rpe_t * 100:.2f} cm / "
              f"{rpe_r:.2f} deg, {len(res.kept)}/100 tracked, {len(res.keyframes)} keyframes, {dt:.1f} s")


if __name__ == "__main__":
    if SEVEN is None:
        raise SystemExit("set RECON_SAMPLE_DATA to the folder holding 7scenes_redkitchen_100/")
    measure_odometry()
