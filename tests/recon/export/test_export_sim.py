"""Simulator exports beyond Gazebo (recon/export/usd.py, urdf.py) and CoACD collision shapes (collision.py): hand
cases for the maths, and the exports of the tiny labelled run of test_export.py checked by their consumers:
pxr (usd-core: reopened, and the validators `usdchecker --useNewValidationFramework` runs) and yourdfpy
(meshes loaded, scene graph assembled). CoACD itself runs on a small box only (seconds per real object);
the exporters' multi-piece paths are driven by a stand-in decomposition.
"""
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

from recon.export.collision import collision_mesh, collision_mode, floor_closed_solid, is_closed
from recon.export.run_export import ExportError, export_run
from recon.export.usd import define_mesh, prim_name, srgb_to_linear, validate_stage
from tests.recon.export.test_export import (EXPECTED_NAMES, _box, assert_coincide, make_run, panoptic)

pxr = pytest.importorskip("pxr", reason="usd-core is not installed: .venv/bin/pip install -r requirements.txt")
from pxr import Sdf, Usd, UsdGeom, UsdPhysics, UsdSemantics  # noqa: E402

QUIET = dict(log=lambda *_: None)
CLASS_OF = {"cardboard_box_1": "cardboard box", "table_2": "table"}
ID_OF = {"cardboard_box_1": 1, "table_2": 2}


def linear_to_srgb8(lin: np.ndarray) -> np.ndarray:
    """Inverse of srgb_to_linear, to 8 bits (for comparing colours read back from a stage)."""
    c = np.clip(np.asarray(lin, np.float64), 0.0, 1.0)
    s = np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)
    return np.round(s * 255).astype(int)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("sim"))


@pytest.fixture(scope="module")
def usd_out(run_folder) -> Path:
    return export_run(run_folder, "usd", collision_faces=60, **QUIET)


@pytest.fixture(scope="module")
def urdf_out(run_folder) -> Path:
    return export_run(run_folder, "urdf", collision_faces=60, **QUIET)


def fake_coacd(mesh, **params):
    """Stand-in for coacd.run_coacd: the input's bounding box cut in two halves along x (two convex pieces)."""
    import trimesh
    lo, hi = mesh.vertices.min(0), mesh.vertices.max(0)
    mid = (lo[0] + hi[0]) / 2
    out = []
    for a, b in ((lo[0], mid), (mid, hi[0])):
        box = trimesh.creation.box(bounds=[[a, lo[1], lo[2]], [b, hi[1], hi[2]]])
        out.append([np.asarray(box.vertices), np.asarray(box.faces)])
    return out


# ------------------------------------------------------------------------------------------------
# hand cases
# ------------------------------------------------------------------------------------------------
def test_srgb_to_linear_hand_values():
    lin = srgb_to_linear(np.array([[0, 10, 128], [255, 255, 255]], np.uint8))
    # 10/255 = 0.0392 <= 0.04045: linear segment 0.0392/12.92; 128: ((0.50196 + 0.055)/1.055)^2.4 = 0.21586
    assert np.allclose(lin[0], [0.0, 10 / 255 / 12.92, 0.2158605], atol=1e-6)
    assert np.allclose(lin[1], 1.0) and lin.dtype == np.float32
    assert np.array_equal(linear_to_srgb8(srgb_to_linear(np.arange(256, dtype=np.uint8)[:, None])),
                          np.arange(256)[:, None])


def test_prim_names_are_valid_and_unique():
    taken: set[str] = set()
    assert prim_name("table-1", taken) == "table_1"
    assert prim_name("3d_printer_2", taken) == "_3d_printer_2"
    assert prim_name("table_1", taken) == "table_1_2"  # 'table-1' took 'table_1'
    assert all(Sdf.Path.IsValidIdentifier(n) for n in taken)


def test_usd_cube_mesh_hand_case(tmp_path):
    """A unit cube (8 corners, 12 triangles) as written and read back: points, counts, indices, extent, colours."""
    corners = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], float)  # index 4x + 2y + z
    faces = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5],      # x = 0 (-x), x = 1 (+x)
                      [0, 4, 5], [0, 5, 1], [2, 3, 7], [2, 7, 6],      # y = 0 (-y), y = 1 (+y)
                      [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])     # z = 0 (-z), z = 1 (+z)
    assert is_closed(corners, faces)
    colors = np.zeros((8, 3), np.uint8)
    colors[:, 0] = 255
    colors[7] = [128, 128, 128]
    stage = Usd.Stage.CreateInMemory()
    define_mesh(stage, "/cube", corners, faces, colors, double_sided=True)
    stage.GetRootLayer().Export(str(tmp_path / "cube.usda"))
    back = Usd.Stage.Open(str(tmp_path / "cube.usda"))
    m = UsdGeom.Mesh(back.GetPrimAtPath("/cube"))
    assert np.array_equal(np.array(m.GetPointsAttr().Get()), corners)
    assert list(m.GetFaceVertexCountsAttr().Get()) == [3] * 12
    assert list(m.GetFaceVertexIndicesAttr().Get()) == faces.reshape(-1).tolist()
    assert np.array_equal(np.array(m.GetExtentAttr().Get()), [[0, 0, 0], [1, 1, 1]])
    assert m.GetSubdivisionSchemeAttr().Get() == "none" and m.GetDoubleSidedAttr().Get()
    pv = UsdGeom.PrimvarsAPI(m).GetPrimvar("displayColor")
    assert pv.GetInterpolation() == "vertex"
    col = np.array(pv.Get())
    assert np.allclose(col[0], [1, 0, 0]) and np.allclose(col[7], [0.2158605] * 3, atol=1e-6)
    # outward unit normals: at corner (1, 1, 1) the normal points into the positive octant
    n = np.array(m.GetNormalsAttr().Get())
    assert m.GetNormalsInterpolation() == "vertex" and np.allclose(np.linalg.norm(n, axis=1), 1, atol=1e-6)
    assert np.all(n[7] > 0) and np.all(n[0] < 0)


# ------------------------------------------------------------------------------------------------
# CoACD collision shapes
# ------------------------------------------------------------------------------------------------
def test_coacd_on_a_box_and_the_mode_context():
    pytest.importorskip("coacd", reason="coacd is not installed: .venv/bin/pip install -r requirements.txt")
    v, f = _box([0, 0, 0], [0.5, 0.4, 0.3])
    c = collision_mesh(v, f, 60, thing=True, mode="coacd")
    assert c.method == "coacd" and c.convex and c.closed and len(c.pieces) == 1 and len(c.faces) <= 60
    import trimesh
    piece = trimesh.Trimesh(*c.pieces[0])
    assert np.isclose(piece.volume, 0.5 * 0.4 * 0.3, rtol=1e-6)  # a box is its own convex decomposition
    assert np.allclose(piece.bounds, [[0, 0, 0], [0.5, 0.4, 0.3]], atol=1e-6)
    again = collision_mesh(v, f, 60, thing=True, mode="coacd")  # fixed seed: the same pieces
    assert np.array_equal(again.vertices, c.vertices) and np.array_equal(again.faces, c.faces)
    # the context sets the default mode; the environment keeps the 'auto' rule in either mode
    assert collision_mesh(v, f, 60, thing=True).method == "decimated"
    with collision_mode("coacd"):
        assert collision_mesh(v, f, 60, thing=True).method == "coacd"
        assert collision_mesh(v, f, 60, thing=False).method == "decimated"
    assert collision_mesh(v, f, 60, thing=True).method == "decimated"
    # an open (bottomless) box is closed downwards first, so CoACD sees a solid: one piece, the box
    vo, fo = _box([0, 0, 0], [0.8, 0.8, 0.75], open_bottom=True)
    c = collision_mesh(vo, fo, 60, thing=True, mode="coacd")
    assert c.method == "coacd" and len(c.pieces) == 1 and c.closed
    assert np.allclose(trimesh.Trimesh(*c.pieces[0]).bounds, [[0, 0, 0], [0.8, 0.8, 0.75]], atol=0.03)
    with pytest.raises(ValueError, match="collision mode"):
        collision_mesh(v, f, 60, thing=True, mode="vhacd")


def test_floor_closed_solid_fills_only_what_opens_downwards():
    """A bottomless box (the usual reconstructed object: never seen from below) becomes a solid block; a table
    (top on four legs) keeps the space under its top free, since it opens to the sides."""
    import open3d as o3d
    import trimesh
    vo, fo = _box([0, 0, 0], [0.8, 0.8, 0.75], open_bottom=True)
    pitch = 0.025
    sv, sf = floor_closed_solid(vo, fo, pitch)
    assert is_closed(sv, sf)
    # the solid is the box grown by at most about a voxel on each side
    assert 0.8 * 0.8 * 0.75 <= trimesh.Trimesh(sv, sf).volume <= (0.8 + 2 * pitch) ** 2 * (0.75 + 2 * pitch)
    parts = [_box([0, 0, 0.7], [1, 0.6, 0.75])] + [_box([x, y, 0], [x + 0.05, y + 0.05, 0.7])
                                                   for x in (0, 0.95) for y in (0, 0.55)]
    offsets = np.cumsum([0] + [len(v) for v, _ in parts[:-1]])
    tv, tf = floor_closed_solid(np.concatenate([v for v, _ in parts]),
                                np.concatenate([f + o for (_, f), o in zip(parts, offsets)]), 0.02)
    rc = o3d.t.geometry.RaycastingScene()
    rc.add_triangles(o3d.core.Tensor(tv, o3d.core.float32), o3d.core.Tensor(tf, o3d.core.uint32))
    occ = rc.compute_occupancy(o3d.core.Tensor([[0.5, 0.3, 0.35], [0.5, 0.3, 0.725], [0.025, 0.025, 0.35]],
                                               o3d.core.float32)).numpy()
    assert occ.tolist() == [0, 1, 1]  # under the top free; the top and a leg solid


def test_coacd_pieces_respect_the_face_budget(monkeypatch):
    """Pieces are re-hulled (closed, outward) and capped at max_faces // pieces faces each; an open surface is
    closed (voxel shell) before the decomposition."""
    calls = []

    def spy(mesh, **params):
        calls.append((is_closed(mesh.vertices, mesh.indices), params))
        import trimesh
        sphere = trimesh.creation.icosphere(subdivisions=3)  # 1280 faces, 642 vertices
        return [[np.asarray(sphere.vertices) + [k, 0, 0], np.asarray(sphere.faces)] for k in range(3)]

    import coacd
    monkeypatch.setattr(coacd, "run_coacd", spy)
    vo, fo = _box([0, 0, 0], [0.8, 0.8, 0.75], open_bottom=True)
    c = collision_mesh(vo, fo, 90, thing=True, mode="coacd")
    assert calls[0][0] and calls[0][1]["seed"] == 0  # closed input, fixed seed
    assert calls[0][1]["max_convex_hull"] == 90 // 8  # never more pieces than the budget can hold
    assert c.method == "coacd" and len(c.pieces) == 3 and len(c.faces) <= 90
    assert all(len(pf) <= 30 and is_closed(pv, pf) for pv, pf in c.pieces)


# ------------------------------------------------------------------------------------------------
# USD: reopened with pxr, checked by the usdchecker validators
# ------------------------------------------------------------------------------------------------
def test_usd_stage_validates(usd_out):
    findings = validate_stage(usd_out / "scene.usdc")
    assert [f for f in findings if f[0] == "Error"] == [], findings
    assert findings == [], findings  # not even warnings (usdchecker --strict passes)


def test_usd_checker_can_fail(usd_out, tmp_path):
    """The same validators report a stage without defaultPrim and up axis."""
    layer = Sdf.Layer.FindOrOpen(str(usd_out / "scene.usdc"))
    broken = Sdf.Layer.CreateAnonymous(".usda")
    broken.TransferContent(layer)
    broken.ClearDefaultPrim()
    broken.pseudoRoot.ClearInfo("upAxis")
    broken.Export(str(tmp_path / "broken.usda"))
    errors = {name for kind, name, _ in validate_stage(tmp_path / "broken.usda") if kind == "Error"}
    assert {"MissingDefaultPrim", "MissingUpAxisMetadata"} <= errors, errors


def test_usd_stage_units_prims_and_labels(usd_out, run_folder):
    stage = Usd.Stage.Open(str(usd_out / "scene.usdc"))
    assert UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.z
    assert UsdGeom.GetStageMetersPerUnit(stage) == 1.0 and UsdPhysics.GetStageKilogramsPerUnit(stage) == 1.0
    world = stage.GetDefaultPrim()
    assert world.GetPath() == Sdf.Path("/World")
    inst = json.loads((run_folder / "instances.json").read_text())["instances"]
    children = {p.GetName(): p for p in world.GetChildren()}
    assert set(children) == EXPECTED_NAMES and len(children) == len(inst) + 1
    query = UsdSemantics.LabelsQuery("class", Usd.TimeCode.Default())
    for name in ("cardboard_box_1", "table_2"):
        prim = children[name]
        assert list(UsdSemantics.LabelsAPI(prim, "class").GetLabelsAttr().Get()) == [CLASS_OF[name]]
        assert prim.GetAttribute("semantic:Semantics:params:semanticType").Get() == "class"
        assert prim.GetAttribute("semantic:Semantics:params:semanticData").Get() == CLASS_OF[name]
        # an applied-schema name usd-core does not define (Isaac Sim's Semantics schema): in the listOp
        assert "SemanticsAPI:Semantics" in prim.GetMetadata("apiSchemas").GetAddedOrExplicitItems()
        assert prim.GetAttribute("recon:instanceId").Get() == ID_OF[name]
        visual = prim.GetChild("visual")
        assert list(query.ComputeUniqueInheritedLabels(visual)) == [CLASS_OF[name]]  # the mesh inherits it
        assert not prim.HasAPI(UsdPhysics.RigidBodyAPI)  # a static scene by default
    env = children["environment"]
    env_labels = {m.GetName(): list(query.ComputeUniqueDirectLabels(m)) for m in env.GetChild("visual").GetChildren()}
    # stuff by class; the chair without instance and the unlisted instance 7 (a chair) stay in the environment
    assert env_labels == {"wall": ["wall"], "floor": ["floor"], "ceiling": ["ceiling"], "chair": ["chair"]}
    assert not env.HasAPI(UsdSemantics.LabelsAPI)
    # colliders: guide purpose, CollisionAPI + approximation (convex shapes as hulls, else the triangle mesh)
    man = json.loads((usd_out / "export.json").read_text())
    method = {e["name"]: e["collision_method"] for e in man["prims"]}
    assert method == {"cardboard_box_1": "decimated", "table_2": "voxel_shell", "environment": "decimated_open"}
    for name, prim in children.items():
        pieces = prim.GetChild("collision").GetChildren()
        assert len(pieces) == 1
        piece = pieces[0]
        assert piece.HasAPI(UsdPhysics.CollisionAPI) and piece.HasAPI(UsdPhysics.MeshCollisionAPI)
        assert UsdGeom.Imageable(piece).ComputePurpose() == UsdGeom.Tokens.guide
        assert UsdPhysics.MeshCollisionAPI(piece).GetApproximationAttr().Get() == "none"
        assert len(UsdGeom.Mesh(piece).GetFaceVertexCountsAttr().Get()) <= 60
    scene = UsdPhysics.Scene(stage.GetPrimAtPath("/PhysicsScene"))
    assert np.allclose(scene.GetGravityDirectionAttr().Get(), [0, 0, -1])
    assert man["format"] == "usd" and man["n_instances"] == 2 and man["collision"]["mode"] == "auto"
    assert {p["name"] for p in man["prims"]} == EXPECTED_NAMES


def test_usd_meshes_assemble_to_panoptic_mesh(usd_out, run_folder):
    """Visual meshes placed by their composed transforms (xformOp:translate = centroid), mapped back by A^-1,
    coincide with mesh.ply, and their displayColor decodes to mesh.ply's colours."""
    v_ref, f_ref, col_ref, _ = panoptic(run_folder)
    man = json.loads((usd_out / "export.json").read_text())
    A_inv = np.linalg.inv(np.array(man["frame"]["scene_to_export"]))
    stage = Usd.Stage.Open(str(usd_out / "scene.usdc"))
    cache = UsdGeom.XformCache()
    tree = cKDTree(v_ref)
    parts = []
    for prim in stage.Traverse():
        if not prim.IsA(UsdGeom.Mesh) or UsdGeom.Imageable(prim).ComputePurpose() != UsdGeom.Tokens.default_:
            continue
        M = np.array(cache.GetLocalToWorldTransform(prim)).T  # Gf matrices are row-vector: transpose to [4, 4] column
        mesh = UsdGeom.Mesh(prim)
        pts = np.array(mesh.GetPointsAttr().Get(), np.float64)
        world = pts @ M[:3, :3].T + M[:3, 3]
        scene_v = world @ A_inv[:3, :3].T + A_inv[:3, 3]
        faces = np.array(mesh.GetFaceVertexIndicesAttr().Get()).reshape(-1, 3)
        parts.append((scene_v, faces))
        srgb = linear_to_srgb8(np.array(UsdGeom.PrimvarsAPI(mesh).GetPrimvar("displayColor").Get()))
        _, nn = tree.query(scene_v)
        assert np.abs(srgb - col_ref[nn].astype(int)).max() <= 1, prim.GetPath()
    for e in man["prims"]:
        if e["instance_id"]:
            M = np.array(cache.GetLocalToWorldTransform(stage.GetPrimAtPath(e["prim"]))).T
            assert np.allclose(M[:3, :3], np.eye(3)) and np.allclose(M[:3, 3], e["origin_xyz"], atol=1e-6)
    assert_coincide(parts, v_ref, f_ref)


def test_usd_rigid_bodies_option(run_folder, tmp_path):
    out = export_run(run_folder, "usd", tmp_path / "dyn", collision_faces=60, rigid_bodies=True, **QUIET)
    assert [f for f in validate_stage(out / "scene.usdc") if f[0] == "Error"] == []
    stage = Usd.Stage.Open(str(out / "scene.usdc"))
    for name in ("cardboard_box_1", "table_2"):
        prim = stage.GetPrimAtPath(f"/World/{name}")
        assert prim.HasAPI(UsdPhysics.RigidBodyAPI) and prim.HasAPI(UsdPhysics.MassAPI)
        for piece in prim.GetChild("collision").GetChildren():  # a dynamic body needs convex shapes
            assert UsdPhysics.MeshCollisionAPI(piece).GetApproximationAttr().Get() in ("convexHull",
                                                                                       "convexDecomposition")
    assert not stage.GetPrimAtPath("/World/environment").HasAPI(UsdPhysics.RigidBodyAPI)


# ------------------------------------------------------------------------------------------------
# URDF: loaded by yourdfpy with its meshes
# ------------------------------------------------------------------------------------------------
def load_urdf(out: Path):
    yourdfpy = pytest.importorskip("yourdfpy", reason="yourdfpy is not installed: .venv/bin/pip install -r "
                                                      "requirements.txt")
    man = json.loads((out / "export.json").read_text())
    return yourdfpy.URDF.load(str(out / man["urdf"]), load_meshes=True, load_collision_meshes=True,
                              build_scene_graph=True, build_collision_scene_graph=True), man


def test_urdf_loads_with_meshes(urdf_out, run_folder):
    urdf, man = load_urdf(urdf_out)
    assert urdf.validate()
    inst = json.loads((run_folder / "instances.json").read_text())["instances"]
    assert set(urdf.link_map) == EXPECTED_NAMES and len(urdf.link_map) == len(inst) + 1
    assert urdf.base_link == "environment"
    assert {j.type for j in urdf.robot.joints} == {"fixed"} and len(urdf.robot.joints) == len(inst)
    for link in urdf.robot.links:
        for g in [*link.visuals, *link.collisions]:
            rel = g.geometry.mesh.filename
            assert not Path(rel).is_absolute() and (urdf_out / rel).is_file(), rel
        rgba = link.visuals[0].material.color.rgba
        assert np.all((0 <= rgba) & (rgba <= 1)) and rgba[3] == 1
    # every visual and collision mesh was loaded
    assert len(urdf.scene.geometry) == 3 and len(urdf.collision_scene.geometry) == 3
    # joint origins: the instance centroids of instances.json (the frame is the identity for this scene)
    for e in inst:
        T = urdf.get_transform(f"{e['class'].replace(' ', '_')}_{e['id']}", "environment")
        assert np.allclose(T[:3, :3], np.eye(3)) and np.allclose(T[:3, 3], e["centroid"], atol=1e-6)


def test_urdf_scene_assembles_to_panoptic_mesh(urdf_out, run_folder):
    urdf, man = load_urdf(urdf_out)
    A_inv = np.linalg.inv(np.array(man["frame"]["scene_to_export"]))
    parts = []
    for node in urdf.scene.graph.nodes_geometry:
        T, geom = urdf.scene.graph[node]
        g = urdf.scene.geometry[geom]
        world = np.asarray(g.vertices) @ T[:3, :3].T + T[:3, 3]
        parts.append((world @ A_inv[:3, :3].T + A_inv[:3, 3], np.asarray(g.faces)))
    v_ref, f_ref, _, _ = panoptic(run_folder)
    assert_coincide(parts, v_ref, f_ref)


# ------------------------------------------------------------------------------------------------
# --collision coacd through every simulator format (stand-in decomposition: two halves of the bbox)
# ------------------------------------------------------------------------------------------------
def test_coacd_mode_in_usd_urdf_gazebo(run_folder, tmp_path, monkeypatch):
    import coacd
    monkeypatch.setattr(coacd, "run_coacd", fake_coacd)
    usd = export_run(run_folder, "usd", tmp_path / "usd", collision_faces=60, collision="coacd", **QUIET)
    assert validate_stage(usd / "scene.usdc") == []
    stage = Usd.Stage.Open(str(usd / "scene.usdc"))
    for name in ("cardboard_box_1", "table_2"):
        pieces = stage.GetPrimAtPath(f"/World/{name}/collision").GetChildren()
        assert len(pieces) == 2
        assert {UsdPhysics.MeshCollisionAPI(p).GetApproximationAttr().Get() for p in pieces} == {"convexHull"}
    env = stage.GetPrimAtPath("/World/environment/collision").GetChildren()
    assert len(env) == 1 and UsdPhysics.MeshCollisionAPI(env[0]).GetApproximationAttr().Get() == "none"
    man = json.loads((usd / "export.json").read_text())
    assert man["collision"]["mode"] == "coacd" and man["collision"]["coacd"]["seed"] == 0

    urdf_dir = export_run(run_folder, "urdf", tmp_path / "urdf", collision_faces=60, collision="coacd", **QUIET)
    urdf, _ = load_urdf(urdf_dir)
    assert [len(urdf.link_map[n].collisions) for n in ("environment", "cardboard_box_1", "table_2")] == [1, 2, 2]
    # yourdfpy joins a link's collision pieces into one geometry: two boxes of 12 triangles
    faces = {k: len(g.faces) for k, g in urdf.collision_scene.geometry.items()}
    assert faces["cardboard_box_1_collision_0"] == faces["table_2_collision_0"] == 24

    gz = export_run(run_folder, "gazebo", tmp_path / "gz", collision_faces=60, collision="coacd", **QUIET)
    by = {m["name"]: m for m in json.loads((gz / "export.json").read_text())["models"]}
    assert by["table_2"]["collision_method"] == "coacd" and by["table_2"]["collision_closed"]
    assert by["environment"]["collision_method"] == "decimated_open"


# ------------------------------------------------------------------------------------------------
# bad input and the command line
# ------------------------------------------------------------------------------------------------
def test_bad_inputs_are_refused_before_writing(run_folder, tmp_path):
    out = tmp_path / "x"
    cases = [(dict(fmt="step"), "format must be one of"),
             (dict(fmt="usd", collision="vhacd"), "--collision must be one of"),
             (dict(fmt="ply", collision="coacd"), "applies to the formats with collision shapes"),
             (dict(fmt="urdf", rigid_bodies=True), "--rigid-bodies applies to --format usd only")]
    for kw, msg in cases:
        with pytest.raises(ExportError, match=msg):
            export_run(run_folder, out=out, **kw, **QUIET)
    old = make_run(tmp_path / "old", with_instances=False)
    for fmt in ("usd", "urdf"):
        with pytest.raises(ExportError, match="no thing instance"):
            export_run(old, fmt, out, **QUIET)
    assert not out.exists()


def test_cli_export_urdf_and_usd(run_folder, tmp_path, capsys):
    import run as run_py
    out = tmp_path / "cli"
    assert run_py.main(["export", "--run", str(run_folder), "--format", "urdf", "--out", str(out),
                        "--collision-faces", "40"]) == 0
    assert json.loads((out / "export.json").read_text())["format"] == "urdf"
    assert run_py.main(["export", "--run", str(run_folder), "--format", "usd", "--out", str(out),
                        "--rigid-bodies"]) == 0  # replaces the previous export
    assert (out / "scene.usdc").is_file() and not list(out.glob("*.urdf"))
    assert run_py.main(["export", "--run", str(run_folder), "--format", "ply", "--collision", "coacd"]) == 2
    assert "collision shapes" in capsys.readouterr().err
