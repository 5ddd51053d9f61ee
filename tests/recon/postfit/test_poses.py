"""Camera paths of `run.py render` by hand (recon/postfit/poses.py): pose files, intrinsics scaling, the orbit
and the interpolated path."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from recon.model.sampling import camera_dirs
from recon.postfit.poses import (RenderError, format_pose_file, frame_indices, interpolate_poses,
                                 look_at, orbit_poses, read_pose_file, scale_intrinsics, write_pose_file)


def random_poses(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.tile(np.eye(4), (n, 1, 1))
    out[:, :3, :3] = Rotation.random(n, random_state=seed).as_matrix()
    out[:, :3, 3] = rng.normal(size=(n, 3)) * 3.0
    return out


def assert_rigid(c2w: np.ndarray, tol: float = 1e-9) -> None:
    R = c2w[..., :3, :3]
    np.testing.assert_allclose(np.swapaxes(R, -1, -2) @ R, np.broadcast_to(np.eye(3), R.shape), atol=tol)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=tol)
    np.testing.assert_array_equal(c2w[..., 3, :], np.broadcast_to([0, 0, 0, 1], c2w[..., 3, :].shape))


# ----------------------------------------------------------------------------- pose files


def test_pose_file_round_trips_exactly(tmp_path):
    poses = random_poses(7)
    path = write_pose_file(tmp_path / "poses.txt", poses, names=[f"f{k}" for k in range(7)])
    back = read_pose_file(path)
    assert back.dtype == np.float64
    np.testing.assert_array_equal(back, poses)          # bit-exact, not merely close
    text = path.read_text()
    assert text.startswith("# 7 camera-to-world poses") and "# 3 f3\n" in text


def test_txt_with_comments_blank_lines_and_a_scene_pose_file(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("# my path\n\n1 0 0 1   # first row\n0 1 0 2\n0 0 1 3\n0 0 0 1\n\n"
                 "0 -1 0 0\n1 0 0 0\n0 0 1 0\n0 0 0 1\n")
    got = read_pose_file(p)
    assert got.shape == (2, 4, 4)
    np.testing.assert_array_equal(got[0, :3, 3], [1, 2, 3])
    np.testing.assert_array_equal(got[1, :3, :3], [[0, -1, 0], [1, 0, 0], [0, 0, 1]])
    # a pose file of the scene format (SCENE/pose/<frame>.txt) is a one-pose file
    scene_pose = tmp_path / "000000.txt"
    scene_pose.write_text(format_pose_file(got[:1]).split("\n", 2)[2])    # without the comment lines
    np.testing.assert_array_equal(read_pose_file(scene_pose), got[:1])


def test_npy_and_json_forms(tmp_path):
    poses = random_poses(3, seed=1)
    np.save(tmp_path / "p.npy", poses)
    np.testing.assert_array_equal(read_pose_file(tmp_path / "p.npy"), poses)
    np.save(tmp_path / "one.npy", poses[0])
    assert read_pose_file(tmp_path / "one.npy").shape == (1, 4, 4)
    (tmp_path / "l.json").write_text(json.dumps(poses.tolist()))
    np.testing.assert_array_equal(read_pose_file(tmp_path / "l.json"), poses)
    (tmp_path / "d.json").write_text(json.dumps({"poses": poses.tolist(), "fps": 10}))
    np.testing.assert_array_equal(read_pose_file(tmp_path / "d.json"), poses)


@pytest.mark.parametrize("name, content, match", [
    ("rows.txt", "1 0 0 0\n0 1 0\n0 0 1 0\n0 0 0 1\n", r"rows.txt: line 2: expected 4 numbers"),
    ("short.txt", "1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n1 0 0 0\n", r"short.txt: 4 rows per pose, found 5 rows"),
    ("word.txt", "1 0 0 x\n0 1 0 0\n0 0 1 0\n0 0 0 1\n", r"word.txt: line 1: not numeric"),
    ("empty.txt", "# nothing\n", r"empty.txt: holds no poses"),
    ("scaled.txt", "1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n2 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n",
     r"scaled.txt: pose 1: pose is not a rigid transform"),
    ("row.txt", "1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 1 1\n", r"row.txt: pose 0: pose last row"),
    ("nan.txt", "1 0 0 nan\n0 1 0 0\n0 0 1 0\n0 0 0 1\n", r"nan.txt: pose 0: pose has non-finite"),
    ("mirror.txt", "-1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n", r"mirror.txt: pose 0: pose is not a rigid"),
    ("bad.json", "[[1, 2, 3]]", r"bad.json: pose 0: expected 4x4"),
    ("obj.json", "{\"frames\": []}", r"obj.json: a JSON object must hold"),
    ("broken.json", "[[", r"broken.json: not valid JSON"),
    ("poses.csv", "1,0", r"unknown suffix '.csv'"),
])
def test_bad_pose_files_are_named_with_the_place(tmp_path, name, content, match):
    (tmp_path / name).write_text(content)
    with pytest.raises(RenderError, match=match):
        read_pose_file(tmp_path / name)


def test_missing_pose_file_and_bad_npy(tmp_path):
    with pytest.raises(RenderError, match="does not exist"):
        read_pose_file(tmp_path / "nope.txt")
    np.save(tmp_path / "flat.npy", np.zeros((3, 16)))
    with pytest.raises(RenderError, match=r"flat.npy: expected poses of shape \[N, 4, 4\], got \[3, 16\]"):
        read_pose_file(tmp_path / "flat.npy")
    near = np.eye(4)
    near[0, 0] = 1.0004                                   # |R^T R - I| = 8e-4 < 1e-3: accepted
    np.save(tmp_path / "near.npy", near[None])
    assert read_pose_file(tmp_path / "near.npy").shape == (1, 4, 4)


# ----------------------------------------------------------------------------- intrinsics


def test_scale_intrinsics_keeps_the_pixel_centre_convention():
    K = np.array([[88.849, 0, 79.5], [0, 88.849, 59.5], [0, 0, 1]])     # 160x120, principal point at the centre
    K2 = scale_intrinsics(K, (160, 120), (320, 240))
    np.testing.assert_allclose(K2, [[177.698, 0, 159.5], [0, 177.698, 119.5], [0, 0, 1]])
    K3 = scale_intrinsics(K, (160, 120), (40, 30))
    np.testing.assert_allclose(K3, [[22.21225, 0, 19.5], [0, 22.21225, 14.5], [0, 0, 1]])
    # the image edges (u = -0.5 and u = W - 0.5 with pixel centres at integers) look along the same rays
    Ko = np.array([[100.0, 0, 70.0], [0, 90.0, 50.0], [0, 0, 1]])           # off-centre principal point
    for (w, h) in ((320, 240), (57, 41)):
        Ks = scale_intrinsics(Ko, (160, 120), (w, h))
        for u_old, u_new in ((-0.5, -0.5), (159.5, w - 0.5), (70.0, (70.0 + 0.5) * w / 160 - 0.5)):
            assert (u_old - Ko[0, 2]) / Ko[0, 0] == pytest.approx((u_new - Ks[0, 2]) / Ks[0, 0])
        assert (119.5 - Ko[1, 2]) / Ko[1, 1] == pytest.approx((h - 0.5 - Ks[1, 2]) / Ks[1, 1])
    # at the same size nothing changes, and the centre pixel of an even-scaled image keeps the optical axis
    np.testing.assert_array_equal(scale_intrinsics(Ko, (160, 120), (160, 120)), Ko)
    d = camera_dirs(K2, 320, 240).reshape(240, 320, 3)
    np.testing.assert_allclose(d[:, :, :2].mean((0, 1)), [0, 0], atol=1e-12)


# ----------------------------------------------------------------------------- scene frames


def test_frame_indices():
    ids = ["000000", "000001", "000002", "000003"]
    splits = {"eval": [0, 1, 2, 3], "train": [0, 1, 3]}
    assert frame_indices(ids, splits, "train") == [0, 1, 3]
    assert frame_indices(ids, splits, "eval") == [0, 1, 2, 3]
    assert frame_indices(ids, splits, "all") == [0, 1, 2, 3]
    assert frame_indices(ids, splits, "000003, 000001") == [3, 1]
    with pytest.raises(FileNotFoundError, match=r"\['999999'\] are not in"):
        frame_indices(ids, splits, "000001,999999")
    with pytest.raises(RenderError, match="no 'train' split"):
        frame_indices(ids, {"eval": [0]}, "train")


# ----------------------------------------------------------------------------- orbit


def test_look_at_by_hand():
    c2w = look_at(np.zeros(3), np.array([5.0, 0, 0]), np.array([0, 0, 1.0]))
    # looking along +x with z up: right = -y, down = -z, forward = +x (OpenCV axes)
    np.testing.assert_allclose(c2w[:3, :3], [[0, 0, 1], [-1, 0, 0], [0, -1, 0]], atol=1e-15)
    assert_rigid(c2w)


def test_orbit_stays_inside_the_box_and_looks_at_its_centre():
    lo, hi = np.array([0.0, 0.0, 0.0]), np.array([4.0, 3.0, 2.5])
    c2w = orbit_poses(lo, hi, np.array([0, 0, 1.0]), 12)
    assert c2w.shape == (12, 4, 4)
    assert_rigid(c2w)
    eye = c2w[:, :3, 3]
    # hand values: centre (2, 1.5, 1.25), semi-axes 0.5 x (2, 1.5), height 0.6 x 2.5 = 1.5
    np.testing.assert_allclose(eye[0], [3.0, 1.5, 1.5])
    np.testing.assert_allclose(eye[3], [2.0, 2.25, 1.5], atol=1e-12)                   # a quarter turn: +y
    np.testing.assert_allclose(((eye[:, 0] - 2) / 1.0) ** 2 + ((eye[:, 1] - 1.5) / 0.75) ** 2, 1.0)
    assert np.all(eye > lo + [0.99, 0.74, 1.0]) and np.all(eye < hi - [0.99, 0.74, 0.99])   # well inside the walls
    target = np.array([2.0, 1.5, 1.25])                                                  # the box centre
    fwd = c2w[:, :3, 2]
    to_target = (target - eye) / np.linalg.norm(target - eye, axis=1, keepdims=True)
    np.testing.assert_allclose(fwd, to_target, atol=1e-12)                              # looks at the centre
    np.testing.assert_allclose(fwd[0], np.array([-1.0, 0, -0.25]) / np.hypot(1.0, 0.25), atol=1e-12)
    assert np.all(fwd[:, 2] < 0)                                                        # slightly downward
    assert np.all(np.degrees(np.arcsin(-fwd[:, 2])) < 20)
    np.testing.assert_allclose(c2w[:, 2, 0], 0, atol=1e-12)                             # no roll: x level
    assert np.all(c2w[:, 2, 1] < 0)                                                     # image down = world down


def test_orbit_about_a_negative_y_up_axis():
    lo, hi = np.array([-1.0, -3.0, 0.0]), np.array([1.0, 0.0, 4.0])
    c2w = orbit_poses(lo, hi, np.array([0.1, -0.9, 0.05]), 8)                  # nearest box axis: -y
    eye = c2w[:, :3, 3]
    np.testing.assert_allclose(eye[:, 1], 0.0 - 0.6 * 3.0)                      # 60 % of the way up (towards -y)
    assert np.all((eye > lo) & (eye < hi))
    assert_rigid(c2w)
    np.testing.assert_allclose(c2w[:, 1, 0], 0, atol=1e-12)                     # x axes level (perpendicular to y)
    assert np.all(c2w[:, :3, 2] @ np.array([0, -1.0, 0]) < 0)                   # looking slightly 'down' (+y)
    # counter-clockwise about up (-y): the turn from pose 0 to pose 1 is positive about -y
    r0, r1 = eye[0] - eye.mean(0), eye[1] - eye.mean(0)
    assert np.cross(r0, r1) @ np.array([0, -1.0, 0]) > 0


# ----------------------------------------------------------------------------- interpolation


def test_interpolation_passes_through_the_keys_and_stays_rigid():
    keys = np.tile(np.eye(4), (5, 1, 1))
    for k in range(5):
        keys[k, :3, :3] = Rotation.from_euler("zyx", [0.5 * k, 0.2 * np.sin(k), 0.1 * k]).as_matrix()
        keys[k, :3, 3] = [k, 0.3 * k * k, 1.5 + 0.1 * k]
    path = interpolate_poses(keys, 4 * 4 + 1)                 # m = 4 frames per key interval
    assert path.shape == (17, 4, 4)
    np.testing.assert_allclose(path[::4], keys, atol=1e-12)   # frame 4k is key k
    assert_rigid(path)
    # smooth: between keys 1 unit apart the steps are small and change gradually
    steps = np.linalg.norm(np.diff(path[:, :3, 3], axis=0), axis=1)
    assert steps.max() < 0.9 and np.abs(np.diff(steps)).max() < 0.25
    rel = np.einsum("nji,njk->nik", path[:-1, :3, :3], path[1:, :3, :3])            # R_k^T R_{k+1}
    angles = np.arccos(np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1))
    assert angles.max() < 0.25                                                       # < 15 degrees per frame


def test_interpolation_of_two_keys_and_refusals():
    a = np.eye(4)
    b = np.eye(4)
    b[:3, :3] = Rotation.from_euler("z", 90, degrees=True).as_matrix()
    b[:3, 3] = [2, 0, 0]
    path = interpolate_poses(np.stack([a, b]), 3)
    np.testing.assert_allclose(path[1, :3, 3], [1, 0, 0], atol=1e-12)               # half-way
    half = Rotation.from_matrix(path[1, :3, :3]).as_euler("zyx", degrees=True)
    np.testing.assert_allclose(half, [45, 0, 0], atol=1e-9)                          # half the turn
    with pytest.raises(RenderError, match="at least 2 key poses"):
        interpolate_poses(a[None], 5)
