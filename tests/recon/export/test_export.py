"""Simulation export (recon/export): maths on hand cases, and every export checked by real consumers on a
tiny labelled run folder built here (box room + a closed box + an open table-like box).

Consumers: Debian's libsdformat (a checker compiled from tests/recon/sdformat_check.cpp calls cmdCheck, the
routine behind `gz sdf -k`, and a strict sdf::Root::Load), trimesh and Open3D. The libsdformat tests skip
with a reason when libsdformat-dev is absent; with RECON_REQUIRE_SDFORMAT=1 (CI) they fail instead.
"""
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from recon.export.run_export import ExportError, export_run
from recon.export.collision import collision_mesh, is_closed
from recon.export.frames import (Z_UP_TO_Y_UP, apply_transform, axis_vector, camera_up, find_up_frame, fit_plane,
                                 orient_up, rotation_to_z)
from recon.export.meshes import bake_vertex_colors, instance_colors, vertex_colors
from recon.export.run_data import face_instance_labels, model_name
from recon.data.ply import read_ply, write_ply

HERE = Path(__file__).resolve().parent
LEGEND = [{"id": 0, "name": "unlabelled", "thing": False, "color": [128, 128, 128]},
          {"id": 1, "name": "wall", "thing": False, "color": [200, 180, 150]},
          {"id": 2, "name": "floor", "thing": False, "color": [120, 80, 40]},
          {"id": 3, "name": "ceiling", "thing": False, "color": [240, 240, 240]},
          {"id": 4, "name": "table", "thing": True, "color": [30, 90, 200]},
          {"id": 5, "name": "chair", "thing": True, "color": [200, 40, 40]},
          {"id": 10, "name": "cardboard box", "thing": True, "color": [40, 200, 60]}]
TOL_M = 1e-3


# ------------------------------------------------------------------------------------------------
# the tiny run folder
# ------------------------------------------------------------------------------------------------
def _grid(origin, du, dv, nu, nv):
    """Quad grid panel: vertices [(nu+1)(nv+1), 3], faces wound so the normal is du x dv."""
    i, j = np.meshgrid(np.arange(nu + 1), np.arange(nv + 1), indexing="ij")
    v = np.asarray(origin) + i.reshape(-1, 1) * (np.asarray(du) / nu) + j.reshape(-1, 1) * (np.asarray(dv) / nv)
    idx = np.arange((nu + 1) * (nv + 1)).reshape(nu + 1, nv + 1)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    f = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    return v, f


def _box(lo, hi, open_bottom=False):
    """Closed (or bottomless) axis-aligned box from 6 (5) outward-facing 4x4 panels, welded."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    e = hi - lo
    X, Y, Z = np.diag(e)
    panels = [(lo, Y, X), (lo + [0, 0, e[2]], X, Y),          # bottom (-z), top (+z)
              (lo, X, Z), (lo + [0, e[1], 0], Z, X),          # -y, +y
              (lo, Z, Y), (lo + [e[0], 0, 0], Y, Z)]          # -x, +x
    if open_bottom:
        panels = panels[1:]
    vs, fs, n = [], [], 0
    for o, du, dv in panels:
        v, f = _grid(o, du, dv, 4, 4)
        vs.append(v)
        fs.append(f + n)
        n += len(v)
    v, f = np.concatenate(vs), np.concatenate(fs)
    key = np.round(v * 1e6).astype(np.int64)
    _, first, inv = np.unique(key, axis=0, return_index=True, return_inverse=True)
    return v[first], inv.reshape(-1)[f]


def tiny_mesh():
    """(vertices [V, 3], faces [F, 3], rgb [V, 3] uint8, semantic [V], instance [V]); z up, floor at z = 0."""
    parts = []  # (v, f, semantic, instance)
    W, D, H = 4.0, 3.0, 2.5
    parts.append((*_grid([0, 0, 0], [W, 0, 0], [0, D, 0], 8, 6), 2, 0))        # floor, normal +z
    parts.append((*_grid([0, 0, H], [0, D, 0], [W, 0, 0], 8, 6), 3, 0))        # ceiling, normal -z
    parts.append((*_grid([0, 0, 0], [0, 0, H], [W, 0, 0], 5, 8), 1, 0))        # wall y = 0, normal +y
    parts.append((*_grid([0, D, 0], [W, 0, 0], [0, 0, H], 8, 5), 1, 0))        # wall y = D
    parts.append((*_grid([0, 0, 0], [0, D, 0], [0, 0, H], 6, 5), 1, 0))        # wall x = 0
    parts.append((*_grid([W, 0, 0], [0, 0, H], [0, D, 0], 5, 6), 1, 0))        # wall x = W
    parts.append((*_box([1.0, 1.0, 0.0], [1.5, 1.4, 0.3]), 10, 1))             # closed box, instance 1
    parts.append((*_box([2.5, 1.0, 0.0], [3.3, 1.8, 0.75], open_bottom=True), 4, 2))  # open 'table', inst. 2
    parts.append((*_grid([0.2, 2.2, 0.4], [0.3, 0, 0], [0, 0.3, 0], 2, 2), 5, 7))     # instance 7: unlisted
    parts.append((*_grid([3.5, 0.3, 0.4], [0.2, 0, 0], [0, 0.2, 0], 2, 2), 5, 0))     # chair, no instance
    vs, fs, sem, inst, n = [], [], [], [], 0
    for v, f, s, i in parts:
        vs.append(v)
        fs.append(f + n)
        sem.append(np.full(len(v), s))
        inst.append(np.full(len(v), i))
        n += len(v)
    v = np.concatenate(vs)
    rgb = np.stack([128 + 100 * np.sin(3 * v[:, 0]), 128 + 100 * np.cos(2 * v[:, 1]), 60 + 60 * v[:, 2]], 1)
    return v, np.concatenate(fs), np.clip(np.round(rgb), 0, 255).astype(np.uint8), np.concatenate(sem), \
        np.concatenate(inst)


def make_run(root: Path, rotation: np.ndarray | None = None, with_instances: bool = True,
             up_axis: str | None = "+z") -> Path:
    """A run folder following the run-folder contract; `rotation` [3, 3] rotates the whole scene."""
    run = root / "run"
    run.mkdir(parents=True)
    v, f, rgb, sem, inst = tiny_mesh()
    if rotation is not None:
        v = v @ np.asarray(rotation).T
    props = {"semantic": sem.astype(np.int32)}
    if with_instances:
        props["instance"] = inst.astype(np.int32)
    write_ply(run / "mesh.ply", v, f, vertex_props=props, colors=rgb)
    (run / "legend.json").write_text(json.dumps(LEGEND))
    (run / "config.yaml").write_text("seed: 0\n")
    if with_instances:
        entries = []
        for iid, cid, cname in ((1, 10, "cardboard box"), (2, 4, "table")):
            p = v[inst == iid]
            entries.append({"id": iid, "class_id": cid, "class": cname, "score": 0.9, "n_vertices": int(len(p)),
                            "bbox_min": p.min(0).tolist(), "bbox_max": p.max(0).tolist(),
                            "centroid": p.mean(0).round(4).tolist(), "file": f"instances/{iid}_{cname}.ply"})
        (run / "instances.json").write_text(json.dumps({"instances": entries}))
    scene = root / "scene"
    scene.mkdir()
    meta = {"name": "tiny room", "source": "synthetic" if up_axis else "test"}
    if up_axis:
        meta.update(up_axis=up_axis, generator={"floor_z": 0.0})
    (scene / "scene.json").write_text(json.dumps(meta))
    (run / "scene.txt").write_text(str(scene) + "\n")
    return run


EXPECTED_NAMES = {"cardboard_box_1", "table_2", "environment"}


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def gazebo_out(run_folder) -> Path:
    return export_run(run_folder, "gazebo", collision_faces=60, log=lambda *_: None)


def panoptic(run: Path):
    v, f, col, props = read_ply(run / "mesh.ply")
    return v, f, col, props


def assert_coincide(parts: list[tuple[np.ndarray, np.ndarray]], v_ref: np.ndarray, f_ref: np.ndarray):
    """The faces of `parts` [(vertices, faces)] coincide with the reference mesh: same face count, and every
    vertex and face centroid of one lies within TOL_M of the other (both ways)."""
    v_all = np.concatenate([v for v, _ in parts])
    c_all = np.concatenate([v[f].mean(1) for v, f in parts])
    assert sum(len(f) for _, f in parts) == len(f_ref)
    c_ref = v_ref[f_ref].mean(1)
    for a, b in ((v_all, v_ref), (v_ref, v_all), (c_all, c_ref), (c_ref, c_all)):
        d, _ = cKDTree(b).query(a)
        assert d.max() < TOL_M, d.max()


def load_trimesh(path: Path):
    import trimesh
    m = trimesh.load(str(path), force="mesh", process=False)
    assert len(m.faces) > 0, path
    return m


def load_open3d(path: Path):
    import open3d as o3d
    m = o3d.io.read_triangle_mesh(str(path), True)  # post-processing on: materials and textures too
    assert len(m.triangles) > 0, path
    return m


# ------------------------------------------------------------------------------------------------
# maths, hand cases
# ------------------------------------------------------------------------------------------------
def test_rotation_to_z_hand_cases():
    # +y up -> +90 degrees about x: y -> z, z -> -y
    assert np.allclose(rotation_to_z([0, 1, 0]), [[1, 0, 0], [0, 0, -1], [0, 1, 0]])
    assert np.allclose(rotation_to_z([0, 0, 2]), np.eye(3))
    assert np.allclose(rotation_to_z([0, 0, -1]), np.diag([1, -1, -1]))
    u = np.array([0.3, -0.5, 0.8])
    R = rotation_to_z(u)
    assert np.allclose(R @ (u / np.linalg.norm(u)), [0, 0, 1])
    assert np.allclose(R @ R.T, np.eye(3)) and np.isclose(np.linalg.det(R), 1.0)
    assert np.allclose(R @ np.cross(u, [0, 0, 1]), np.cross(u, [0, 0, 1]))  # the axis is fixed: smallest rotation


def test_axis_vector_and_camera_up():
    assert axis_vector("+z").tolist() == [0, 0, 1] and axis_vector("-y").tolist() == [0, -1, 0]
    with pytest.raises(ValueError):
        axis_vector("up")
    # a level OpenCV camera looking along +x in a z-up world: x_cam = -y, y_cam (down) = -z, z_cam = +x
    c2w = np.eye(4)
    c2w[:3, :3] = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]])
    assert np.allclose(camera_up(c2w[None]), [0, 0, 1])
    # two cameras pitched 30 degrees down, headings +x and +y: their mean -y leans forward (biased), the
    # level x axes (-y and +x) pin up to +z exactly
    cams = []
    for yaw in (0.0, 90.0):
        Rw = Rotation.from_euler("z", yaw, degrees=True).as_matrix() @ c2w[:3, :3]
        cams.append(np.block([[Rw @ Rotation.from_euler("x", -30, degrees=True).as_matrix(), np.zeros((3, 1))],
                              [np.zeros((1, 3)), np.ones((1, 1))]]))
    cams = np.stack(cams)
    mean_up = -cams[:, :3, 1].mean(0)
    assert np.degrees(np.arccos(mean_up[2] / np.linalg.norm(mean_up))) > 20
    assert np.allclose(camera_up(cams), [0, 0, 1])
    assert np.allclose(camera_up(cams[:1]), -cams[0, :3, 1])  # one heading: the mean camera up


def test_fit_plane_with_outliers_and_orientation():
    rng = np.random.default_rng(0)
    n_true = np.array([0.1, -0.2, 1.0]) / np.linalg.norm([0.1, -0.2, 1.0])
    a = np.cross(n_true, [1, 0, 0])
    a /= np.linalg.norm(a)
    b = np.cross(n_true, a)
    pts = 0.7 * n_true + rng.uniform(-2, 2, (400, 1)) * a + rng.uniform(-2, 2, (400, 1)) * b
    pts += rng.normal(0, 0.002, (400, 1)) * n_true
    pts = np.concatenate([pts, rng.uniform(-2, 2, (40, 3)) + 1.5 * n_true])  # clutter above the plane
    n, d, inl = fit_plane(pts)
    n = orient_up(n, d, np.array([[0, 0, 3.0]]))
    assert np.degrees(np.arccos(np.clip(n @ n_true, -1, 1))) < 0.5
    assert n @ n_true > 0 and abs(0.7 - d) < 0.005  # offset along +n: the plane passes through 0.7 n_true
    assert inl[:400].mean() > 0.95 and inl[400:].mean() < 0.3


def test_find_up_frame_rules():
    v, f, _, sem, _ = tiny_mesh()
    floor = sem == 2
    ident = find_up_frame(v, floor, None, "+z", 0.0)
    assert np.allclose(ident.transform, np.eye(4)) and "scene.json" in ident.source
    # a y-up scene (floor at y = -1.2), no declaration: the floor plane gives +y and the height
    R = Z_UP_TO_Y_UP  # (x, y, z) -> (x, z, -y)
    assert np.allclose(R @ [0, 0, 1], [0, 1, 0])
    vy = v @ R.T + [0, -1.2, 0]
    fr = find_up_frame(vy, floor, None, None, None)
    assert np.allclose(fr.up_scene, [0, 1, 0], atol=1e-6) and abs(fr.floor_height_m + 1.2) < 1e-6
    assert "floor plane" in fr.source
    back = apply_transform(fr.transform, vy)
    assert np.abs(back[floor, 2]).max() < 1e-6 and back[:, 2].max() > 2.4
    # cameras decide the sign: cameras below a 'floor' flip it
    cams = np.tile(np.eye(4), (2, 1, 1))
    cams[:, :3, 3] = [[1, -5, 1], [2, -5, 1]]
    assert np.allclose(find_up_frame(vy, floor, cams, None, None).up_scene, [0, -1, 0], atol=1e-6)
    # no floor: mean camera up; no cameras either: +z assumed and said so
    cams[:, :3, :3] = R @ np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]])  # level cameras in the y-up frame
    fc = find_up_frame(vy, None, cams, None, None)
    assert np.allclose(fc.up_scene, [0, 1, 0]) and np.isclose(fc.floor_height_m, -1.2)
    assert "ASSUMED" in find_up_frame(v, None, None, None, None).source


def test_face_labels_and_names():
    faces = np.array([[0, 1, 2], [0, 3, 3], [3, 4, 4], [1, 3, 5], [5, 0, 0]])
    labels = np.array([0, 0, 7, 9, 9, 4])
    # shared by two -> that label; all different -> the first vertex's
    assert face_instance_labels(faces, labels).tolist() == [0, 9, 9, 0, 0]
    assert model_name("cardboard box", 3) == "cardboard_box_3" and model_name("a/b::c", 1) == "a_b__c_1"


def test_split_parts_partition():
    """Faces are labelled from mesh.ply's raw ids (as RUN/instances/*.ply are cut), then ids not listed in
    instances.json go to 'environment'."""
    from recon.export.run_data import ClassEntry, InstanceEntry, RunMesh, split_parts
    v = np.arange(18, dtype=float).reshape(6, 3)
    faces = np.array([[0, 1, 2], [1, 0, 2], [0, 3, 4], [2, 4, 5]])
    raw = np.array([5, 9, 0, 5, 0, 0])  # 5 listed, 9 not
    legend = {0: ClassEntry(0, "unlabelled", False, (0, 0, 0)), 4: ClassEntry(4, "table", True, (1, 2, 3))}
    mesh = RunMesh(Path("."), v, faces, np.zeros((6, 3), np.uint8), np.zeros(6, np.int64),
                   np.where(raw == 5, 5, 0), raw, legend, [InstanceEntry(5, 4, "table", 0.8, None)], None)
    parts = split_parts(mesh, log=lambda *_: None)
    assert [p.name for p in parts] == ["table_5", "environment"]
    assert parts[0].face_index.tolist() == [0, 2] and parts[1].face_index.tolist() == [1, 3]
    assert parts[0].vertex_index.tolist() == [0, 1, 2, 3, 4]
    assert np.array_equal(parts[0].vertex_index[parts[0].faces], faces[[0, 2]])
    assert np.allclose(parts[0].centroid, v[[0, 1, 2, 3, 4]].mean(0))


def test_bake_vertex_colors_hand_case():
    fc = np.array([[[10, 20, 30], [200, 20, 30], [10, 220, 30]]], np.uint8)  # a, b, c of one face
    img, uv = bake_vertex_colors(fc)
    assert img.shape == (4, 4, 3)
    a, b, c = fc[0].astype(int)
    d = np.clip(b + c - a, 0, 255)  # (200, 220, 30)
    assert img[1, 1].tolist() == a.tolist() and img[1, 2].tolist() == b.tolist()
    assert img[2, 1].tolist() == c.tolist() and img[2, 2].tolist() == d.tolist()
    assert img[0, 0].tolist() == a.tolist() and img[3, 3].tolist() == d.tolist()  # border replicates
    # corners at texel centres (x + 0.5) / 4, v measured from the bottom
    assert np.allclose(uv[0], [[1.5 / 4, 1 - 1.5 / 4], [2.5 / 4, 1 - 1.5 / 4], [1.5 / 4, 1 - 2.5 / 4]])
    # bilinear sampling inside the triangle = linear interpolation of a, b, c
    for s, t in ((0.25, 0.25), (0.5, 0.1), (0.1, 0.7)):
        x, y = 1 + s, 1 + t  # texel-index coordinates between the centres of a (1,1), b (2,1), c (1,2)
        bil = (img[1, 1] * (1 - s) * (1 - t) + img[1, 2] * s * (1 - t) + img[2, 1] * (1 - s) * t
               + img[2, 2] * s * t)
        assert np.allclose(bil, a + s * (b - a) + t * (c - a)), (x, y)


def test_bake_many_faces_and_small_cells():
    rng = np.random.default_rng(1)
    fc = rng.integers(0, 256, (50, 3, 3)).astype(np.uint8)
    for cell in (4, 2):
        img, uv = bake_vertex_colors(fc, cell=cell)
        H, W = img.shape[:2]
        px = np.floor(uv[..., 0] * W).astype(int)
        py = np.floor((1 - uv[..., 1]) * H).astype(int)
        assert np.array_equal(img[py, px], fc)  # nearest texel at every corner is the corner's colour


def test_instance_and_vertex_colors():
    c = instance_colors(np.arange(1, 41))
    assert np.array_equal(c, instance_colors(np.arange(1, 41)))  # deterministic
    assert len({tuple(x) for x in c}) == 40
    sem, inst = np.array([0, 2, 4, 4]), np.array([0, 0, 3, 0])
    rgb = np.arange(12, dtype=np.uint8).reshape(4, 3)
    cc = {0: (1, 1, 1), 2: (2, 2, 2), 4: (4, 4, 4)}
    assert np.array_equal(vertex_colors(rgb, sem, inst, cc, "rgb"), rgb)
    assert vertex_colors(rgb, sem, inst, cc, "semantic").tolist() == [[1] * 3, [2] * 3, [4] * 3, [4] * 3]
    pan = vertex_colors(rgb, sem, inst, cc, "instance")
    assert pan[2].tolist() == instance_colors(np.array([3]))[0].tolist() and pan[3].tolist() == [4, 4, 4]


def test_collision_rules():
    v, f = _box([0, 0, 0], [0.5, 0.4, 0.3])
    assert is_closed(v, f) and len(f) == 192
    c = collision_mesh(v, f, 40, thing=True)
    assert c.method == "decimated" and c.closed and len(c.faces) <= 40
    vo, fo = _box([0, 0, 0], [0.8, 0.8, 0.75], open_bottom=True)
    assert not is_closed(vo, fo)
    c = collision_mesh(vo, fo, 100, thing=True)
    assert c.method == "voxel_shell" and c.closed and len(c.faces) <= 100
    # the shell keeps the concavity: the open box's centre is free (a convex hull would fill it)
    import open3d as o3d
    rc = o3d.t.geometry.RaycastingScene()
    rc.add_triangles(o3d.core.Tensor(c.vertices, o3d.core.float32), o3d.core.Tensor(c.faces, o3d.core.uint32))
    occ = rc.compute_occupancy(o3d.core.Tensor([[0.4, 0.4, 0.3], [0.4, 0.4, 0.75]], o3d.core.float32)).numpy()
    assert occ.tolist() == [0, 1]  # centre free, lid solid
    c = collision_mesh(vo, fo, 100, thing=False)
    assert c.method == "decimated_open" and len(c.faces) <= 100
    with pytest.raises(ValueError):
        collision_mesh(v, f, 3, thing=True)


# ------------------------------------------------------------------------------------------------
# Gazebo: consumers trimesh / Open3D (always) and libsdformat (when installed)
# ------------------------------------------------------------------------------------------------
def _model_paths(out: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted((out / "models").iterdir())}


def test_gazebo_layout_and_meshes_load(gazebo_out, run_folder):
    man = json.loads((gazebo_out / "export.json").read_text())
    models = _model_paths(gazebo_out)
    assert set(models) == EXPECTED_NAMES == {m["name"] for m in man["models"]}
    inst = json.loads((run_folder / "instances.json").read_text())["instances"]
    assert {model_name(e["class"], e["id"]) for e in inst} == EXPECTED_NAMES - {"environment"}
    for m in man["models"]:
        d = models[m["name"]]
        assert {"model.config", "model.sdf"} <= {p.name for p in d.iterdir()}
        vis, col = gazebo_out / m["visual"], gazebo_out / m["collision"]
        tv, tc = load_trimesh(vis), load_trimesh(col)
        ov, oc = load_open3d(vis), load_open3d(col)
        assert len(tv.faces) == len(ov.triangles) == m["visual_faces"]
        assert len(tc.faces) == len(oc.triangles) == m["collision_faces"] <= 60
        assert ov.has_textures() and ov.has_triangle_uvs()
    by = {m["name"]: m for m in man["models"]}
    assert by["cardboard_box_1"]["collision_method"] == "decimated" and by["cardboard_box_1"]["collision_closed"]
    assert by["table_2"]["collision_method"] == "voxel_shell" and by["table_2"]["collision_closed"]
    assert by["environment"]["collision_method"] == "decimated_open"
    # synthetic scene: z up, floor at z = 0 already -> identity frame
    assert np.allclose(man["frame"]["scene_to_export"], np.eye(4))


def test_gazebo_world_assembles_to_panoptic_mesh(gazebo_out, run_folder):
    """Poses from export.json + meshes through trimesh reassemble mesh.ply (< 1 mm), and the texture
    trimesh reads gives every vertex its mesh.ply colour."""
    v_ref, f_ref, col_ref, _ = panoptic(run_folder)
    man = json.loads((gazebo_out / "export.json").read_text())
    A_inv = np.linalg.inv(np.array(man["frame"]["scene_to_export"]))
    parts = []
    tree = cKDTree(v_ref)
    for m in man["models"]:
        tm = load_trimesh(gazebo_out / m["visual"])
        world = np.asarray(tm.vertices) + m["origin_xyz"]
        scene_v = apply_transform(A_inv, world)
        parts.append((scene_v, np.asarray(tm.faces)))
        sampled = tm.visual.to_color().vertex_colors[:, :3]
        _, nn = tree.query(scene_v)
        assert np.abs(sampled.astype(int) - col_ref[nn].astype(int)).max() <= 1, m["name"]
    assert_coincide(parts, v_ref, f_ref)


def _sdformat_checker(tmp: Path) -> Path:
    if shutil.which("pkg-config") is None or shutil.which("g++") is None:
        reason = "pkg-config or g++ missing"
    else:
        mods = [m for m in ("sdformat", "sdformat15", "sdformat14", "sdformat13", "sdformat12")
                if subprocess.run(["pkg-config", "--exists", m]).returncode == 0]
        reason = None if mods else "libsdformat-dev is not installed (apt-get install libsdformat-dev)"
    if reason:
        if os.environ.get("RECON_REQUIRE_SDFORMAT") == "1":
            pytest.fail(f"RECON_REQUIRE_SDFORMAT=1 but {reason}")
        pytest.skip(f"reference SDFormat parser unavailable: {reason}")
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", mods[0]], capture_output=True, text=True,
                           check=True).stdout.split()
    exe = tmp / "sdformat_check"
    r = subprocess.run(["g++", "-O0", "-o", str(exe), str(HERE / "sdformat_check.cpp"), *flags],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return exe


@pytest.fixture(scope="module")
def sdformat_check(tmp_path_factory):
    return _sdformat_checker(tmp_path_factory.mktemp("sdfcheck"))


def run_sdformat(exe: Path, out: Path, files: list[Path]) -> dict:
    env = {**os.environ, "SDF_PATH": str(out / "models")}
    r = subprocess.run([str(exe), str(out / "models"), *map(str, files)], capture_output=True, text=True, env=env)
    res: dict = {}
    cur = None
    for line in r.stdout.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "FILE":
            cur = res.setdefault(rest, {"check": None, "errors": [], "models": {}, "tags": {}, "meshes": []})
        elif kind == "CHECK":
            cur["check"] = int(rest)
        elif kind == "ERROR":
            cur["errors"].append(rest)
        elif kind == "MODEL":
            name, *nums = rest.split()
            cur["models"][name] = np.array([float(x) for x in nums])
        elif kind == "TAG":
            name, el = rest.split(" ")
            cur["tags"][name] = (el, {})
        elif kind == "ATTR":
            name, key, value = rest.split(" ", 2)
            cur["tags"][name][1][key] = value
        elif kind == "MESH":
            cur["meshes"].append(rest.split())
    assert set(res) == set(map(str, files)), (r.stdout[-2000:], r.stderr[-2000:])
    return res | {"_rc": r.returncode, "_stderr": r.stderr}


def test_sdformat_validates_world_and_models(sdformat_check, gazebo_out, run_folder):
    files = [gazebo_out / "world.sdf"] + [p / "model.sdf" for p in _model_paths(gazebo_out).values()]
    res = run_sdformat(sdformat_check, gazebo_out, files)
    for f in files:
        r = res[str(f)]
        assert r["check"] == 0 and r["errors"] == [], (f, r, res["_stderr"][-2000:])
    assert res["_rc"] == 0
    world = res[str(gazebo_out / "world.sdf")]
    assert set(world["models"]) == EXPECTED_NAMES | {"ground_plane"}
    inst = json.loads((run_folder / "instances.json").read_text())["instances"]
    for e in inst:  # class and id are carried by the namespaced element the parser kept
        el, attrs = world["tags"][model_name(e["class"], e["id"])]
        assert el == "recon:instance"
        assert attrs["class"] == e["class"] and int(attrs["class_id"]) == e["class_id"]
        assert int(attrs["instance_id"]) == e["id"]
    assert world["tags"]["environment"][0] == "recon:environment"


def test_sdformat_poses_assemble_to_panoptic_mesh(sdformat_check, gazebo_out, run_folder):
    """Model poses as libsdformat resolves them + mesh URIs it reports, loaded by trimesh, reassemble
    mesh.ply within 1 mm."""
    res = run_sdformat(sdformat_check, gazebo_out, [gazebo_out / "world.sdf"])
    world = res[str(gazebo_out / "world.sdf")]
    man = json.loads((gazebo_out / "export.json").read_text())
    A_inv = np.linalg.inv(np.array(man["frame"]["scene_to_export"]))
    parts = []
    visuals = {m: uri for m, _, kind, uri in world["meshes"] if kind == "visual"}
    assert set(visuals) == EXPECTED_NAMES
    for name, uri in visuals.items():
        assert uri.startswith("model://")
        tm = load_trimesh(gazebo_out / "models" / uri[len("model://"):])
        pose = world["models"][name]
        R = Rotation.from_euler("xyz", pose[3:]).as_matrix()  # SDF roll-pitch-yaw, fixed axes
        parts.append((apply_transform(A_inv, np.asarray(tm.vertices) @ R.T + pose[:3]), np.asarray(tm.faces)))
    v_ref, f_ref, _, _ = panoptic(run_folder)
    assert_coincide(parts, v_ref, f_ref)


def test_sdformat_rejects_a_broken_world(sdformat_check, gazebo_out, tmp_path):
    """The checker can fail: an unknown element and a dangling include are reported."""
    out = tmp_path / "broken"
    shutil.copytree(gazebo_out, out)
    w = out / "world.sdf"
    w.write_text(w.read_text().replace("<gravity>", "<gravityy>1</gravityy><gravity>")
                 .replace("model://table_2</uri>", "model://no_such_model</uri>"))
    res = run_sdformat(sdformat_check, out, [w])[str(w)]
    assert res["check"] != 0 and res["errors"]


def test_gazebo_rotated_scene_is_levelled(tmp_path):
    """A scene tilted and turned, with no up_axis declared: the floor plane puts the floor at z = 0 and the
    world still reassembles the panoptic mesh."""
    R = Rotation.from_euler("xyz", [100, -20, 35], degrees=True).as_matrix()
    run = make_run(tmp_path, rotation=R, up_axis=None)
    out = export_run(run, "gazebo", collision_faces=40, log=lambda *_: None)
    man = json.loads((out / "export.json").read_text())
    A = np.array(man["frame"]["scene_to_export"])
    v_ref, f_ref, _, props = panoptic(run)
    lev = apply_transform(A, v_ref)
    assert np.abs(lev[props["semantic"] == 2, 2]).max() < 1e-5   # floor at z = 0
    assert np.isclose(lev[:, 2].max(), 2.5, atol=1e-5)              # ceiling at 2.5 m above it
    assert "floor plane" in man["frame"]["source"]
    parts = []
    for m in man["models"]:
        tm = load_trimesh(out / m["visual"])
        parts.append((apply_transform(np.linalg.inv(A), np.asarray(tm.vertices) + m["origin_xyz"]),
                      np.asarray(tm.faces)))
    assert_coincide(parts, v_ref, f_ref)


# ------------------------------------------------------------------------------------------------
# PLY / OBJ / GLB
# ------------------------------------------------------------------------------------------------
def test_glb_nodes_match_instances(run_folder, tmp_path):
    import trimesh
    out = export_run(run_folder, "glb", tmp_path / "glb", color_by="instance", log=lambda *_: None)
    scene = trimesh.load(str(out / "panoptic.glb"))
    inst = json.loads((run_folder / "instances.json").read_text())["instances"]
    nodes = set(scene.graph.nodes_geometry)
    assert nodes - {"environment"} == {model_name(e["class"], e["id"]) for e in inst}
    assert len(scene.graph.nodes_geometry) == len(inst) + 1
    # nodes with their transforms, back from glTF's y-up, coincide with mesh.ply
    man = json.loads((out / "export.json").read_text())
    G_inv = np.linalg.inv(np.array(man["file_frame"]["scene_to_file"]))
    assert np.allclose(np.array(man["file_frame"]["scene_to_file"])[:3, :3], Z_UP_TO_Y_UP)
    parts = []
    for node in scene.graph.nodes_geometry:
        M, geom = scene.graph[node]
        g = scene.geometry[geom]
        parts.append((apply_transform(G_inv, apply_transform(M, np.asarray(g.vertices))), np.asarray(g.faces)))
        assert g.visual.kind == "vertex"
    v_ref, f_ref, _, _ = panoptic(run_folder)
    assert_coincide(parts, v_ref, f_ref)
    import open3d as o3d
    assert len(o3d.io.read_triangle_mesh(str(out / "panoptic.glb")).triangles) == len(f_ref)
    for e in man["parts"]:
        assert len(trimesh.load(str(out / e["file"])).graph.nodes_geometry) == 1
        load_open3d(out / e["file"])


@pytest.mark.parametrize("fmt", ["ply", "obj"])
def test_ply_obj_whole_and_parts(run_folder, tmp_path, fmt):
    out = export_run(run_folder, fmt, tmp_path / fmt, color_by="semantic", log=lambda *_: None)
    v_ref, f_ref, _, props = panoptic(run_folder)
    whole = load_trimesh(out / f"panoptic.{fmt}")
    load_open3d(out / f"panoptic.{fmt}")
    assert_coincide([(np.asarray(whole.vertices), np.asarray(whole.faces))], v_ref, f_ref)
    man = json.loads((out / "export.json").read_text())
    assert {e["name"] for e in man["parts"]} == EXPECTED_NAMES
    parts = []
    for e in man["parts"]:
        m = load_trimesh(out / e["file"])
        load_open3d(out / e["file"])
        parts.append((np.asarray(m.vertices), np.asarray(m.faces)))
    assert_coincide(parts, v_ref, f_ref)
    legend = {c["id"]: c["color"] for c in LEGEND}
    if fmt == "ply":
        v, f, col, pr = read_ply(out / "panoptic.ply")
        assert np.array_equal(col, np.array([legend[s] for s in props["semantic"]], np.uint8))
        assert set(np.unique(pr["instance"])) == {0, 1, 2}  # the unlisted id 7 is no instance
    else:
        # the texture gives each corner the colour of a mesh.ply vertex at that position (panels that meet
        # at a corner have coincident vertices of different classes)
        sampled = whole.visual.to_color().vertex_colors[:, :3].astype(int)
        ref_col = np.array([legend[s] for s in props["semantic"]])
        near = cKDTree(v_ref).query_ball_point(np.asarray(whole.vertices), 1e-6)
        assert all(len(n) and np.abs(ref_col[n] - c).max(axis=1).min() <= 1 for n, c in zip(near, sampled))


def test_old_run_without_instances_exports_environment(tmp_path):
    import trimesh
    run = make_run(tmp_path, with_instances=False)
    lines = []
    out = export_run(run, "glb", log=lines.append)
    assert out == run / "export" / "glb"
    assert any("no 'instance' vertex property" in l and "environment" in l for l in lines)
    scene = trimesh.load(str(out / "panoptic.glb"))
    assert list(scene.graph.nodes_geometry) == ["environment"]
    gz = export_run(run, "gazebo", collision_faces=50, log=lines.append)
    assert [p.name for p in (gz / "models").iterdir()] == ["environment"]


def test_bad_inputs_are_clear(tmp_path, run_folder):
    with pytest.raises(FileNotFoundError, match="mesh.ply"):
        (tmp_path / "empty").mkdir()
        export_run(tmp_path / "empty", "ply")
    run = make_run(tmp_path / "r")
    doc = json.loads((run / "instances.json").read_text())
    doc["instances"][0]["class_id"] = 99
    (run / "instances.json").write_text(json.dumps(doc))
    with pytest.raises(ExportError, match="instances.json.*class_id 99"):
        export_run(run, "ply", log=lambda *_: None)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="busy"):
        export_run(run_folder, "ply", busy)
    assert (busy / "keep.txt").is_file()
    with pytest.raises(ExportError, match="collision-faces"):
        export_run(run_folder, "gazebo", tmp_path / "g", collision_faces=2)


def test_cli_export(run_folder, tmp_path, capsys):
    import run as run_py
    out = tmp_path / "cli"
    assert run_py.main(["export", "--run", str(run_folder), "--format", "ply", "--out", str(out)]) == 0
    assert (out / "panoptic.ply").is_file()
    # a second export replaces the first (it holds export.json)
    assert run_py.main(["export", "--run", str(run_folder), "--format", "ply", "--out", str(out),
                        "--color-by", "instance"]) == 0
    assert json.loads((out / "export.json").read_text())["color_by"] == "instance"
    assert run_py.main(["export", "--run", str(tmp_path / "nope"), "--format", "gazebo"]) == 2
    assert "no such run folder" in capsys.readouterr().err
