"""Dataset readers (recon/data/readers): camera maths by hand, each reader on a small fixture written in
its dataset's layout (a textured plane seen by moving cameras, so geometry, colour and labels can be
checked against the world), and the real samples where RECON_SAMPLE_DATA points to them (tests/conftest.py)."""
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import run
from recon.data.readers.common import ReaderError
from recon.data.readers.convert import READERS, convert
from recon.data.readers.common import (GL_TO_CV, K_from_values, choose_frames, depth_raw_to_mm,
                                       depth_reprojection_error, resample_to_camera, scale_intrinsics,
                                       vertex_labels_from_segments)
from recon.data.scene import load_scene
from recon.data.ply import read_ply, write_ply

from tests.conftest import SAMPLE_DATA

REPLICA = SAMPLE_DATA / "replica_room0_20f" if SAMPLE_DATA else None
SEVEN = SAMPLE_DATA / "7scenes_redkitchen_100" if SAMPLE_DATA else None
PLANE_Z = 3.0  # world plane z = 3 m, seen by every fixture camera
RED, BLUE = np.array([220, 30, 30], np.uint8), np.array([30, 30, 220], np.uint8)


def quiet(*_args, **_kw):
    pass


# ----------------------------------------------------------------------------- fixture world

def fixture_pose(i: int) -> np.ndarray:
    """c2w [4, 4], OpenCV axes: small rotations about y and x, translation along x, y, z."""
    ay, ax = math.radians(3.0 * i), math.radians(-2.0 * i)
    Ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    Rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    T = np.eye(4)
    T[:3, :3] = Ry @ Rx
    T[:3, 3] = [0.05 * i, -0.03 * i, 0.1 * i]
    return T


def world_points(K: np.ndarray, c2w: np.ndarray, W: int, H: int) -> tuple[np.ndarray, np.ndarray]:
    """(z-depth [H, W] m, world points [H, W, 3]) where pixel rays hit the plane z = PLANE_Z."""
    u, v = np.meshgrid(np.arange(W, dtype=float), np.arange(H, dtype=float))
    d_c = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    d_w = d_c @ c2w[:3, :3].T
    s = (PLANE_Z - c2w[2, 3]) / d_w[..., 2]  # ray parameter = z-depth, since d_c has z = 1
    return s, c2w[:3, 3] + s[..., None] * d_w


def checker(pw: np.ndarray) -> np.ndarray:
    """[..., 3] world points -> bool, True on 'red' cells of a 0.6 m checkerboard."""
    return ((np.floor(pw[..., 0] / 0.6) + np.floor(pw[..., 1] / 0.6)) % 2) == 0


def colour_image(pw: np.ndarray) -> np.ndarray:
    return np.where(checker(pw)[..., None], RED, BLUE).astype(np.uint8)


def world_labels(pw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(region [H, W]: 1 = wall (x < 0), 2 = chair A (x >= 0, y >= 0), 3 = chair B (x >= 0, y < 0))."""
    region = np.where(pw[..., 0] < 0, 1, np.where(pw[..., 1] >= 0, 2, 3))
    return region, pw


def render(K: np.ndarray, c2w: np.ndarray, W: int, H: int):
    depth, pw = world_points(K, c2w, W, H)
    return depth, colour_image(pw), world_labels(pw)[0]


def save_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def colour_agreement(scene, i: int) -> float:
    """Fraction of pixels whose written colour is the checker colour of the world point that the written depth,
    K and pose give, over pixels at least one pixel away from a checker edge (so that resampling blur and the
    half-pixel quantisation of tiny images do not count; a registration error of a pixel or more does)."""
    d = scene.load_depth_m(i)
    u, v = np.meshgrid(np.arange(scene.width, dtype=float), np.arange(scene.height, dtype=float))
    K, c2w = scene.K, scene.c2w[i]
    pc = np.stack([(u - K[0, 2]) / K[0, 0] * d, (v - K[1, 2]) / K[1, 1] * d, d], -1)
    pw = pc @ c2w[:3, :3].T + c2w[:3, 3]
    cls = checker(pw)
    interior = d > 0
    for dy, dx in ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)):
        interior &= np.roll(cls, (dy, dx), axis=(0, 1)) == cls
    interior[[0, -1], :] = False
    interior[:, [0, -1]] = False
    col = scene.load_color(i).astype(int)
    red = col[..., 0] > col[..., 2]
    assert interior.mean() > 0.2, "fixture too small to judge"
    return float((red[interior] == cls[interior]).mean())


# ----------------------------------------------------------------------------- camera maths by hand

def test_scale_intrinsics_keeps_pixel_centres():
    K = K_from_values(100.0, 80.0, 15.5, 11.5)  # centred in 32x24
    K2 = scale_intrinsics(K, (32, 24), (16, 12))
    np.testing.assert_allclose(K2, K_from_values(50.0, 40.0, 7.5, 5.5))  # still centred: (16 - 1) / 2
    K3 = scale_intrinsics(K_from_values(10, 10, 0, 0), (10, 10), (20, 20))
    assert K3[0, 2] == pytest.approx(0.5)  # pixel 0's centre is at 0.5 of the doubled grid: (0 + 0.5) * 2 - 0.5


def test_resample_nearest_shift_and_outside_zero():
    img = np.arange(12, dtype=np.uint16).reshape(3, 4)
    K_src = K_from_values(10, 10, 1.5, 1.0)
    K_dst = K_from_values(10, 10, 2.5, 1.0)  # the same rays one pixel further right
    out = resample_to_camera(img, K_src, K_dst, (4, 3), "nearest")
    np.testing.assert_array_equal(out, [[0, 0, 1, 2], [0, 4, 5, 6], [0, 8, 9, 10]])


def test_resample_linear_half_pixel_and_identity():
    img = np.array([[0, 100, 200, 250]], np.uint8).repeat(2, axis=0)
    K_src = K_from_values(10, 10, 1.5, 0.5)
    K_dst = K_from_values(10, 10, 1.0, 0.5)  # destination u samples source u + 0.5
    out = resample_to_camera(img, K_src, K_dst, (4, 2), "linear")
    np.testing.assert_array_equal(out[0], [50, 150, 225, 250])  # last: 0.5 px past the centre clamps to the edge
    np.testing.assert_array_equal(resample_to_camera(img, K_src, K_src, (4, 2), "linear"), img)
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:, 4:] = 255
    small = resample_to_camera(rgb, K_from_values(8, 8, 3.5, 3.5), K_from_values(2, 2, 0.5, 0.5), (2, 2), "linear")
    np.testing.assert_array_equal(small[:, :, 0], [[0, 255], [0, 255]])  # 4x reduction, area-filtered


def test_depth_reprojection_error_hand_case():
    K = K_from_values(20, 20, 15.5, 11.5)
    a, b = np.eye(4), np.eye(4)
    b[2, 3] = 0.5  # camera b 0.5 m closer to the plane z = 2
    da, db = np.full((24, 32), 2.0), np.full((24, 32), 1.5)
    assert depth_reprojection_error(da, db, K, a, b)["median_m"] == pytest.approx(0.0, abs=1e-12)
    wrong = b.copy()
    wrong[2, 3] = 0.51  # 1 cm pose error along the view direction -> every point off by exactly 1 cm
    err = depth_reprojection_error(da, db, K, a, wrong)
    assert err["median_m"] == pytest.approx(0.01, abs=1e-9) and err["p90_m"] == pytest.approx(0.01, abs=1e-9)
    assert err["overlap"] == pytest.approx((1.5 / 2.0) ** 2, abs=0.01)  # b sees a 1.5/2 smaller patch of the plane


def test_depth_raw_to_mm():
    raw = np.array([[0, 8087, 65535]], np.uint16)  # NICE-SLAM units: 8087 / 6553.5 = 1.234 m, 65535 -> 10 m
    np.testing.assert_array_equal(depth_raw_to_mm(raw, 1 / 6553.5), [[0, 1234, 10000]])
    np.testing.assert_array_equal(depth_raw_to_mm(np.array([[1500, 65535]]), 0.001, invalid=(65535,)), [[1500, 0]])
    np.testing.assert_array_equal(depth_raw_to_mm(np.array([[40000]]), 0.002), [[0]])  # 80 m does not fit uint16 mm


def test_choose_frames_stride_cap_and_bad_frames():
    bad = {4: "f4.txt: pose has non-finite values (inf/nan)"}
    kept, skipped = choose_frames([0, 2, 6, 8], 3, bad.get, False)
    assert kept == [0, 2, 6] and skipped == []
    with pytest.raises(ReaderError, match=r"--skip-bad-frames.*\n  - f4\.txt: pose has non-finite"):
        choose_frames([0, 2, 4, 6], None, bad.get, False)
    with pytest.warns(UserWarning, match="f4.txt"):
        kept, skipped = choose_frames([0, 2, 4, 6], 3, bad.get, True)
    assert kept == [0, 2, 6] and len(skipped) == 1
    with pytest.raises(ReaderError, match="no usable frames"), pytest.warns(UserWarning, match="f4.txt"):
        choose_frames([4], None, bad.get, True)


def test_vertex_labels_from_segments():
    seg = [10, 10, 20, 20, 30, 40]
    groups = [{"objectId": 0, "label": "wall", "segments": [10]},
              {"objectId": 4, "label": "chair", "segments": [20, 30]}]
    sem, inst = vertex_labels_from_segments(6, seg, groups, {"wall": 1, "chair": 5}.get, Path("agg.json"))
    np.testing.assert_array_equal(sem, [1, 1, 5, 5, 5, 0])
    np.testing.assert_array_equal(inst, [1, 1, 5, 5, 5, 0])
    with pytest.raises(ReaderError, match="agg.json: 6 segment indices for a mesh of 7 vertices"):
        vertex_labels_from_segments(7, seg, groups, {"wall": 1}.get, Path("agg.json"))


def test_cli_kinds_match_registry():
    assert tuple(run.DATASET_KINDS) == tuple(READERS)


# ----------------------------------------------------------------------------- fixtures per dataset

W, H = 32, 24
K_FIX = K_from_values(26.0, 26.0, 15.5, 11.5)


def write_nice_slam(root: Path, n: int = 4, cam_params: bool = True) -> Path:
    rows = []
    for i in range(n):
        c2w = fixture_pose(i)
        depth, color, _ = render(K_FIX, c2w, W, H)
        save_png(root / "results" / f"frame{i:06d}.png", color)
        save_png(root / "results" / f"depth{i:06d}.png", np.rint(depth * 6553.5).astype(np.uint16))
        rows.append(" ".join(f"{x:.12e}" for x in c2w.reshape(-1)))
    (root / "traj.txt").write_text("\n".join(rows) + "\n")
    if cam_params:
        (root / "cam_params.json").write_text(json.dumps({"camera": {"w": W, "h": H, "fx": 26.0, "fy": 26.0,
                                                                     "cx": 15.5, "cy": 11.5, "scale": 6553.5}}))
    return root


def test_replica_nice_slam_fixture(tmp_path):
    src = write_nice_slam(tmp_path / "room0")
    out = tmp_path / "scene"
    summary = convert("replica-nice-slam", src, out, log=quiet)
    scene = load_scene(out)
    assert scene.frame_ids == ["000000", "000001", "000002", "000003"]
    assert not scene.has_masks and not scene.has_gt_images and scene.classes == [] and scene.gt_mesh_path is None
    assert json.loads((out / "classes.json").read_text()) == []
    np.testing.assert_allclose(scene.K, K_FIX)
    np.testing.assert_allclose(scene.c2w[2], fixture_pose(2), atol=1e-9)
    depth_true, _, _ = render(K_FIX, fixture_pose(1), W, H)
    assert np.abs(scene.load_depth_m(1) - depth_true).max() < 0.0011  # mm rounding of a 1/6553.5 m grid
    assert min(colour_agreement(scene, i) for i in range(4)) > 0.98
    assert summary["reprojection_median_m"] < 0.01
    meta = json.loads((out / "scene.json").read_text())
    assert meta["source"] == "replica-nice-slam" and meta["source_frames"]["000003"] == "frame000003.png"


def test_replica_nice_slam_intrinsics_and_bad_rows(tmp_path):
    src = write_nice_slam(tmp_path / "room0", cam_params=False)
    with pytest.raises(ReaderError, match="pass --intrinsics"):  # 32x24 is not NICE-SLAM's 1200x680
        convert("replica-nice-slam", src, tmp_path / "a", log=quiet)
    lines = (src / "traj.txt").read_text().splitlines()
    lines[1] = " ".join(["-inf"] * 16)
    (src / "traj.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ReaderError, match=r"traj\.txt: pose has non-finite values.*row 2, frame frame000001"):
        convert("replica-nice-slam", src, tmp_path / "b", intrinsics=(26, 26, 15.5, 11.5), log=quiet)
    with pytest.warns(UserWarning, match="row 2"):
        convert("replica-nice-slam", src, tmp_path / "c", intrinsics=(26, 26, 15.5, 11.5), skip_bad_frames=True,
                log=quiet)
    scene = load_scene(tmp_path / "c")
    assert scene.frame_ids == ["000000", "000002", "000003"]
    assert json.loads((tmp_path / "c" / "scene.json").read_text())["skipped_frames"][0].endswith("frame000001.png)")
    with pytest.raises(ReaderError, match="--resolution does not apply to --from replica-nice-slam"):
        convert("replica-nice-slam", src, tmp_path / "d", resolution="depth", log=quiet)


def test_replica_mesh_option_copies_gt_mesh(tmp_path):
    src = write_nice_slam(tmp_path / "room0", n=2)
    mesh = tmp_path / "room0_mesh.ply"
    verts = np.array([[0, 0, PLANE_Z], [1, 0, PLANE_Z], [0, 1, PLANE_Z]], float)
    write_ply(mesh, verts, np.array([[0, 1, 2]]), vertex_props={"semantic": np.array([0, 3, 3]),
                                                                 "quality": np.array([0.5, 0.5, 0.5])})
    with pytest.raises(ReaderError, match="nope.ply: missing"):
        convert("replica-nice-slam", src, tmp_path / "a", mesh=tmp_path / "nope.ply", log=quiet)
    convert("replica-nice-slam", src, tmp_path / "b", mesh=mesh, log=quiet)
    scene = load_scene(tmp_path / "b")
    v, f, _, props = read_ply(scene.gt_mesh_path)
    np.testing.assert_allclose(v, verts)
    assert props == {}  # no class names in this dataset: the mesh's labels are dropped, geometry kept


def write_semantic_nerf(root: Path, n: int = 4) -> Path:
    seq = root / "room_0" / "Sequence_1"
    rows = []
    for i in range(n):
        c2w = fixture_pose(i)
        depth, color, region = render(K_FIX, c2w, W, H)
        save_png(seq / "rgb" / f"rgb_{i}.png", color)
        save_png(seq / "depth" / f"depth_{i}.png", np.rint(depth * 1000).astype(np.uint16))
        sem = np.choose(region - 1, [7, 5, 5]).astype(np.uint8)  # wall = 7, chair = 5
        sem[:2, :] = 0  # a void band
        inst = np.choose(region - 1, [12, 0, 3]).astype(np.uint16)  # chair A is Replica object 0
        save_png(seq / "semantic_class" / f"semantic_class_{i}.png", sem)
        save_png(seq / "semantic_class" / f"vis_sem_class_{i}.png", np.zeros((H, W, 3), np.uint8))
        save_png(seq / "semantic_instance" / f"semantic_instance_{i}.png", inst)
        rows.append(" ".join(f"{x:.12e}" for x in c2w.reshape(-1)))
    (seq / "traj_w_c.txt").write_text("\n".join(rows) + "\n")
    info = {"classes": [{"id": 5, "name": "chair"}, {"id": 7, "name": "wall"}, {"id": 9, "name": "lamp"}]}
    (root / "semantic_info" / "room_0").mkdir(parents=True)
    (root / "semantic_info" / "room_0" / "info_semantic.json").write_text(json.dumps(info))
    return seq


def test_replica_semantic_nerf_fixture(tmp_path):
    src = write_semantic_nerf(tmp_path / "Replica_Dataset")
    out = tmp_path / "scene"
    summary = convert("replica-semantic-nerf", src, out, stride=2, intrinsics=(26, 26, 15.5, 11.5), log=quiet)
    scene = load_scene(out)
    assert scene.frame_ids == ["000000", "000002"] and scene.has_gt_images and not scene.has_masks
    assert [(c.id, c.name, c.thing) for c in scene.classes] == [(5, "chair", True), (7, "wall", False)]
    sem, inst = scene.load_gt(1)
    _, _, region = render(K_FIX, fixture_pose(2), W, H)
    assert sem.dtype == np.uint16 and inst.dtype == np.uint16
    assert Image.open(out / "gt" / "semantic" / "000002.png").format == "PNG"
    body = np.s_[2:, :]
    np.testing.assert_array_equal(sem[body], np.choose(region - 1, [7, 5, 5])[body])
    np.testing.assert_array_equal(inst[body], np.choose(region - 1, [0, 1, 4])[body])  # object id + 1, wall -> 0
    assert (sem[:2] == 0).all() and (inst[:2] == 0).all()
    assert summary["reprojection_median_m"] < 0.01 and colour_agreement(scene, 1) > 0.98


def test_replica_semantic_nerf_mesh_labels_join_classes(tmp_path):
    src = write_semantic_nerf(tmp_path / "Replica_Dataset", n=2)
    mesh = tmp_path / "mesh.ply"
    write_ply(mesh, np.array([[0, 0, PLANE_Z], [1, 0, PLANE_Z], [0, 1, PLANE_Z]], float), np.array([[0, 1, 2]]),
              vertex_props={"semantic": np.array([0, 9, 7]), "instance": np.array([0, 4, 0])})
    convert("replica-semantic-nerf", src, tmp_path / "s", mesh=mesh, intrinsics=(26, 26, 15.5, 11.5), log=quiet)
    scene = load_scene(tmp_path / "s")
    assert [c.name for c in scene.classes] == ["chair", "wall", "lamp"]  # lamp (9) only occurs in the mesh
    assert read_ply(scene.gt_mesh_path)[3]["instance"].tolist() == [0, 4, 0]


def test_replica_semantic_nerf_default_intrinsics_and_no_names(tmp_path):
    src = write_semantic_nerf(tmp_path / "R")
    (tmp_path / "R" / "semantic_info" / "room_0" / "info_semantic.json").unlink()
    out = tmp_path / "scene"
    convert("replica-semantic-nerf", src, out, max_frames=2, log=quiet)
    scene = load_scene(out)
    np.testing.assert_allclose(scene.K, K_from_values(16.0, 16.0, 15.5, 11.5))  # 90 deg hfov: fx = W / 2
    assert [(c.name, c.thing) for c in scene.classes] == [("class_5", True), ("class_7", True)]


NYU_TSV_ROWS = [("1", "wall", "1"), ("2", "chair", "5"), ("3", "floor", "2"), ("4", "office chair", "5"),
                ("5", "thing without nyu", "")]


def write_scannet(root: Path, n: int = 5, bad: int | None = None) -> Path:
    scan = root / "scans" / "scene0007_00"
    Wc, Hc = 48, 36
    K_c = K_from_values(40.0, 40.0, 23.5, 17.5)
    K_d = K_from_values(28.5, 28.2, 16.9, 12.3)  # not the colour K scaled to 32x24 (26.7, 26.7, 15.5, 11.5)
    for i in range(n):
        c2w = fixture_pose(i)
        _, color, region = render(K_c, c2w, Wc, Hc)
        depth, _, _ = render(K_d, c2w, W, H)
        save_png(scan / "color" / f"{i}.png", color)
        (scan / "color" / f"{i}.png").rename(scan / "color" / f"{i}.jpg")  # lossless, with ScanNet's name
        save_png(scan / "depth" / f"{i}.png", np.rint(depth * 1000).astype(np.uint16))
        label = np.choose(region - 1, [1, 2, 4]).astype(np.uint16)  # ScanNet ids: wall, chair, office chair
        save_png(scan / "label-filt" / f"{i}.png", label)
        save_png(scan / "instance-filt" / f"{i}.png", np.choose(region - 1, [1, 2, 3]).astype(np.uint8))
        pose = np.full((4, 4), -np.inf) if i == bad else c2w
        (scan / "pose").mkdir(parents=True, exist_ok=True)
        (scan / "pose" / f"{i}.txt").write_text("\n".join(" ".join(f"{x:f}" for x in r) for r in pose) + "\n")
    (scan / "intrinsic").mkdir()
    for name, K in (("intrinsic_color.txt", K_c), ("intrinsic_depth.txt", K_d)):
        K4 = np.eye(4)
        K4[:3, :3] = K
        (scan / "intrinsic" / name).write_text("\n".join(" ".join(f"{x:f}" for x in r) for r in K4) + "\n")
    with open(root / "scannetv2-labels.combined.tsv", "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t")
        w.writerow(["id", "raw_category", "category", "count", "nyu40id", "eigen13id", "nyuClass", "nyu40class"])
        for sid, raw, nyu in NYU_TSV_ROWS:
            w.writerow([sid, raw, raw, "10", nyu, "", "", ""])
    # GT mesh: a 3x3 vertex grid on the plane with segments 10 (wall), 20 (chair A), 30 (office chair B)
    xs, ys = np.meshgrid([-1.0, 0.5, 1.0], [-1.0, 0.0, 1.0])
    verts = np.stack([xs.ravel(), ys.ravel(), np.full(9, PLANE_Z)], 1)
    faces = np.array([[0, 1, 4], [0, 4, 3], [1, 2, 5], [1, 5, 4], [3, 4, 7], [3, 7, 6], [4, 5, 8], [4, 8, 7]])
    write_ply(scan / "scene0007_00_vh_clean_2.ply", verts, faces, colors=np.full((9, 3), 128, np.uint8))
    segs = [10, 20, 20, 10, 30, 30, 10, 30, 99]
    (scan / "scene0007_00_vh_clean_2.0.010000.segs.json").write_text(json.dumps({"segIndices": segs}))
    agg = {"segGroups": [{"id": 0, "objectId": 0, "label": "wall", "segments": [10]},
                         {"id": 1, "objectId": 1, "label": "chair", "segments": [20]},
                         {"id": 2, "objectId": 2, "label": "office chair", "segments": [30]}]}
    (scan / "scene0007_00.aggregation.json").write_text(json.dumps(agg))
    return scan


def test_scannet_fixture_depth_resolution(tmp_path):
    src = write_scannet(tmp_path / "ScanNet")
    out = tmp_path / "scene"
    summary = convert("scannet", src, out, log=quiet)
    scene = load_scene(out)
    assert (scene.width, scene.height) == (W, H) and len(scene) == 5
    np.testing.assert_allclose(scene.K, K_from_values(28.5, 28.2, 16.9, 12.3))  # intrinsic_depth
    assert [(c.id, c.name, c.thing) for c in scene.classes] == [(1, "wall", False), (5, "chair", True)]
    # colour and labels re-imaged from the colour camera into the depth camera land on the right world points
    assert min(colour_agreement(scene, i) for i in range(5)) > 0.98
    for i in range(5):
        _, _, region = render(scene.K, scene.c2w[i], W, H)
        sem, inst = scene.load_gt(i)
        assert (sem == np.choose(region - 1, [1, 5, 5])).mean() > 0.98
        assert (inst == np.choose(region - 1, [0, 2, 3])).mean() > 0.98  # objectId + 1; wall (stuff) -> 0
    v, f, _, props = read_ply(out / "gt" / "mesh.ply")
    np.testing.assert_array_equal(props["semantic"], [1, 5, 5, 1, 5, 5, 1, 5, 0])
    np.testing.assert_array_equal(props["instance"], [0, 2, 2, 0, 3, 3, 0, 3, 0])
    assert len(f) == 8 and summary["reprojection_median_m"] < 0.01


def test_scannet_color_resolution_and_bad_pose(tmp_path):
    src = write_scannet(tmp_path / "ScanNet", bad=2)
    with pytest.raises(ReaderError, match=r"pose/2\.txt: pose has non-finite"):
        convert("scannet", src, tmp_path / "a", stride=2, log=quiet)
    assert not (tmp_path / "a").exists()
    out = tmp_path / "b"
    with pytest.warns(UserWarning, match=r"2\.txt"):
        convert("scannet", src, out, stride=2, resolution="color", skip_bad_frames=True, log=quiet)
    scene = load_scene(out)
    assert scene.frame_ids == ["000000", "000004"] and (scene.width, scene.height) == (48, 36)
    np.testing.assert_allclose(scene.K, K_from_values(40.0, 40.0, 23.5, 17.5))
    depth_true, _, _ = render(scene.K, scene.c2w[1], 48, 36)
    d = scene.load_depth_m(1)
    # depth re-imaged (nearest) into the colour camera: within a few mm of the truth (a tilted plane and
    # half-pixel quantisation); the colour camera sees wider than this fixture's depth camera, so its border
    # has no depth (0 = invalid), nothing is invented there
    assert np.median(np.abs(d - depth_true)[d > 0]) < 0.01 and 0.8 < (d > 0).mean() < 0.95
    assert (d[:, -1] == 0).all() and (d[-1, :] == 0).all()  # where the depth camera does not look
    assert colour_agreement(scene, 1) > 0.98


def test_scannet_mesh_from_labels_ply(tmp_path):
    src = write_scannet(tmp_path / "ScanNet", n=2)
    (src / "scene0007_00.aggregation.json").unlink()
    v, f, c, _ = read_ply(src / "scene0007_00_vh_clean_2.ply")
    write_ply(src / "scene0007_00_vh_clean_2.labels.ply", v, f, colors=c,
              vertex_props={"label": np.array([1, 5, 5, 1, 5, 5, 22, 5, 0], np.uint16)})
    with pytest.warns(UserWarning, match="labels.ply: no aggregation/segs pair"):
        convert("scannet", src, tmp_path / "s", log=quiet)
    scene = load_scene(tmp_path / "s")
    props = read_ply(scene.gt_mesh_path)[3]
    assert props["semantic"].tolist() == [1, 5, 5, 1, 5, 5, 22, 5, 0] and "instance" not in props
    assert [(c.name, c.thing) for c in scene.classes] == [("wall", False), ("chair", True), ("ceiling", False)]


def test_scannet_needs_label_map(tmp_path):
    src = write_scannet(tmp_path / "ScanNet", n=2)
    (tmp_path / "ScanNet" / "scannetv2-labels.combined.tsv").unlink()
    with pytest.raises(ReaderError, match="--label-map FILE, or --no-gt"):
        convert("scannet", src, tmp_path / "a", log=quiet)
    convert("scannet", src, tmp_path / "b", no_gt=True, log=quiet)
    scene = load_scene(tmp_path / "b")
    assert not scene.has_gt_images and scene.gt_mesh_path is None and scene.classes == []


def write_scannetpp(root: Path, n: int = 3) -> Path:
    scene_dir = root / "data" / "0a5c013435"
    Wc, Hc, Wd, Hd = 64, 48, 16, 12
    meta = {}
    for i in range(n):
        c2w = fixture_pose(i)
        K = K_from_values(50.0 + 6 * i, 50.0 + 6 * i, 31.5, 23.5)  # per-frame K (exaggerated iPhone refocus)
        _, color, _ = render(K, c2w, Wc, Hc)
        depth, _, _ = render(scale_intrinsics(K, (Wc, Hc), (Wd, Hd)), c2w, Wd, Hd)
        save_png(scene_dir / "iphone" / "rgb" / f"frame_{i:06d}.png", color)
        rgb = scene_dir / "iphone" / "rgb" / f"frame_{i:06d}"
        rgb.with_suffix(".png").rename(rgb.with_suffix(".jpg"))  # lossless content under the toolkit's name
        save_png(scene_dir / "iphone" / "depth" / f"frame_{i:06d}.png", np.rint(depth * 1000).astype(np.uint16))
        meta[f"frame_{i:06d}"] = {"intrinsic": K.tolist(), "aligned_pose": c2w.tolist(),
                                  "pose": (c2w @ GL_TO_CV).tolist(), "timestamp": i / 60}
    (scene_dir / "iphone" / "pose_intrinsic_imu.json").write_text(json.dumps(meta))
    xs, ys = np.meshgrid([-1.0, 0.0, 1.0], [-1.0, 1.0])
    verts = np.stack([xs.ravel(), ys.ravel(), np.full(6, PLANE_Z)], 1)
    (scene_dir / "scans").mkdir(parents=True)
    faces = np.array([[0, 1, 4], [0, 4, 3], [1, 2, 5], [1, 5, 4]])
    write_ply(scene_dir / "scans" / "mesh_aligned_0.05.ply", verts, faces, colors=np.full((6, 3), 100, np.uint8))
    (scene_dir / "scans" / "segments.json").write_text(json.dumps({"segIndices": [0, 1, 2, 3, 4, 5]}))
    anno = {"segGroups": [{"id": 0, "objectId": 0, "label": "wall", "segments": [0, 3]},
                          {"id": 1, "objectId": 1, "label": "table", "segments": [1, 4]},
                          {"id": 2, "objectId": 2, "label": "SPLIT", "segments": [2]}]}
    (scene_dir / "scans" / "segments_anno.json").write_text(json.dumps(anno))
    return scene_dir


def test_scannetpp_fixture(tmp_path):
    src = write_scannetpp(tmp_path / "scannetpp")
    out = tmp_path / "scene"
    summary = convert("scannetpp", src, out, resolution="32x24", log=quiet)
    scene = load_scene(out)
    assert (scene.width, scene.height) == (32, 24) and len(scene) == 3
    np.testing.assert_allclose(scene.K, scale_intrinsics(K_from_values(50, 50, 31.5, 23.5), (64, 48), (32, 24)))
    np.testing.assert_allclose(scene.c2w[1], fixture_pose(1), atol=1e-9)  # aligned_pose, not ARKit's 'pose'
    # frames 1 and 2 have their own focal length and are re-imaged into frame 0's camera
    assert min(colour_agreement(scene, i) for i in range(3)) > 0.98
    assert summary["reprojection_median_m"] < 0.01
    assert not scene.has_gt_images and scene.gt_mesh_path is not None
    assert [(c.id, c.name, c.thing) for c in scene.classes] == [(1, "table", True), (2, "wall", False)]
    _, _, _, props = read_ply(out / "gt" / "mesh.ply")
    np.testing.assert_array_equal(props["semantic"], [2, 1, 0, 2, 1, 0])
    np.testing.assert_array_equal(props["instance"], [0, 2, 0, 0, 2, 0])
    convert("scannetpp", src, tmp_path / "d", resolution="depth", max_frames=1, log=quiet)
    assert (load_scene(tmp_path / "d").width, load_scene(tmp_path / "d").height) == (16, 12)


def write_7scenes(root: Path, n: int = 4) -> Path:
    for i in range(n):
        c2w = fixture_pose(i)
        depth, color, _ = render(K_FIX, c2w, W, H)
        raw = np.rint(depth * 1000).astype(np.uint16)
        raw[0, :3] = 65535  # Kinect "no measurement"
        save_png(root / f"frame-{i:06d}.color.png", color)
        save_png(root / f"frame-{i:06d}.depth.png", raw)
        (root / f"frame-{i:06d}.pose.txt").write_text("\n".join(" ".join(f"{x:.9e}" for x in r) for r in c2w) + "\n")
    return root


def test_7scenes_fixture_and_cli(tmp_path, capsys):
    src = write_7scenes(tmp_path / "seq-01")
    out = tmp_path / "scene"
    rc = run.main(["convert", "--from", "7scenes", str(src), "--out", str(out), "--intrinsics", "26", "26", "15.5",
                   "11.5", "--max-frames", "3"])
    assert rc == 0
    scene = load_scene(out)
    assert len(scene) == 3 and scene.classes == [] and not scene.has_masks
    assert (scene.load_depth_m(0)[0, :3] == 0).all()  # 65535 -> invalid
    assert colour_agreement(scene, 2) > 0.98
    assert "depth reprojection between consecutive frames" in capsys.readouterr().out
    rc = run.main(["convert", "--from", "7scenes", str(src), "--out", str(out)])
    assert rc == 2 and "already exists" in capsys.readouterr().err
    rc = run.main(["convert", "--from", "7scenes", str(tmp_path), "--out", str(tmp_path / "x")])
    assert rc == 2 and "no frame-NNNNNN.color.png" in capsys.readouterr().err
    rc = run.main(["convert", "--from", "7scenes", str(src), "--out", str(tmp_path / "y"), "--resolution", "color"])
    assert rc == 2 and "--resolution does not apply to --from 7scenes" in capsys.readouterr().err


# ----------------------------------------------------------------------------- real samples

needs_replica = pytest.mark.skipif(REPLICA is None or not (REPLICA / "traj.txt").is_file(),
                                   reason=f"real Replica sample not found (RECON_SAMPLE_DATA={SAMPLE_DATA}; "
                                          "see tests/conftest.py)")
needs_seven = pytest.mark.skipif(SEVEN is None or not (SEVEN / "frame-000000.pose.txt").is_file(),
                                 reason=f"real 7-Scenes sample not found (RECON_SAMPLE_DATA={SAMPLE_DATA}; "
                                        "see tests/conftest.py)")


@needs_replica
def test_replica_real_sample_conventions(tmp_path):
    """Frames 0 and 19 (23 cm, 5 degrees apart): depth reprojects to < 1 cm median with the poses as
    OpenCV camera-to-world; read as OpenGL axes or as world-to-camera the same check is off by > 5 cm."""
    out = tmp_path / "replica"
    convert("replica-nice-slam", REPLICA, out, stride=19, log=quiet)
    scene = load_scene(out)
    assert scene.frame_ids == ["000000", "000019"] and (scene.width, scene.height) == (1200, 680)
    np.testing.assert_allclose(scene.K, K_from_values(600, 600, 599.5, 339.5))
    da, db = scene.load_depth_m(0), scene.load_depth_m(1)
    a, b = scene.c2w
    as_is = depth_reprojection_error(da, db, scene.K, a, b)
    assert as_is["median_m"] < 0.01 and as_is["overlap"] > 0.9
    assert depth_reprojection_error(da, db, scene.K, a @ GL_TO_CV, b @ GL_TO_CV)["median_m"] > 0.05
    assert depth_reprojection_error(da, db, scene.K, np.linalg.inv(a), np.linalg.inv(b))["median_m"] > 0.05


def _photometric_difference(scene, a: int, b: int) -> float:
    """Mean grey-level difference of frame a's depth points seen in colour a and (unoccluded) in colour b."""
    K = scene.K
    da, db = scene.load_depth_m(a), scene.load_depth_m(b)
    ga = scene.load_color(a).astype(float) @ [0.299, 0.587, 0.114]
    gb = scene.load_color(b).astype(float) @ [0.299, 0.587, 0.114]
    vs, us = np.nonzero(da > 0)
    z = da[vs, us]
    pa = np.stack([(us - K[0, 2]) / K[0, 0] * z, (vs - K[1, 2]) / K[1, 1] * z, z], 1)
    T = np.linalg.inv(scene.c2w[b]) @ scene.c2w[a]
    pb = pa @ T[:3, :3].T + T[:3, 3]
    ub = np.rint(K[0, 0] * pb[:, 0] / pb[:, 2] + K[0, 2]).astype(int)
    vb = np.rint(K[1, 1] * pb[:, 1] / pb[:, 2] + K[1, 2]).astype(int)
    ok = (pb[:, 2] > 0.1) & (ub >= 0) & (ub < scene.width) & (vb >= 0) & (vb < scene.height)
    ok[ok] = np.abs(db[vb[ok], ub[ok]] - pb[ok, 2]) < 0.02
    return float(np.abs(ga[vs[ok], us[ok]] - gb[vb[ok], ub[ok]]).mean())


@needs_seven
def test_7scenes_real_sample_depth_and_colour_registration(tmp_path):
    out, plain = tmp_path / "seven", tmp_path / "seven_unregistered"
    convert("7scenes", SEVEN, out, stride=2, max_frames=3, log=quiet)
    convert("7scenes", SEVEN, plain, stride=2, max_frames=3, color_intrinsics=(585, 585, 320, 240), log=quiet)
    scene = load_scene(out)
    assert scene.frame_ids == ["000000", "000020", "000040"]
    np.testing.assert_allclose(scene.K, K_from_values(585, 585, 320, 240))
    errs = [depth_reprojection_error(scene.load_depth_m(i), scene.load_depth_m(i + 1), scene.K, scene.c2w[i],
                                     scene.c2w[i + 1])["median_m"] for i in range(2)]
    assert max(errs) < 0.02  # Kinect v1 depth noise and KinectFusion poses: ~5-10 mm
    flipped = depth_reprojection_error(scene.load_depth_m(0), scene.load_depth_m(1), scene.K,
                                       scene.c2w[0] @ GL_TO_CV, scene.c2w[1] @ GL_TO_CV)["median_m"]
    assert flipped > 2 * max(errs)
    # colour re-imaged from the colour camera (fx 525) agrees better across views than colour taken as is
    registered = np.mean([_photometric_difference(scene, 0, 1), _photometric_difference(scene, 1, 2)])
    unregistered = np.mean([_photometric_difference(load_scene(plain), 0, 1),
                            _photometric_difference(load_scene(plain), 1, 2)])
    assert registered < 0.9 * unregistered
