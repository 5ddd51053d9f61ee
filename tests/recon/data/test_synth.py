"""Procedural synthetic scene generator: determinism, exact depth, label consistency, preset rules."""
import json

import numpy as np
import open3d as o3d
import pytest

from recon.data.synth import CLASSES, CONFUSABLE, PRESETS, generate_scene
from recon.data.synth.layout import LAYOUTS, TOUCH_TOL
from recon.data.synth.primitives import obb_penetration
from recon.data.synth.render import cast_frames, make_raycaster

SMALL = (64, 48)
_CACHE: dict = {}


def scene_of(preset, seed=0, size=(160, 120), n_frames=None):
    """Generate once per argument tuple for the whole test module."""
    key = (preset, seed, tuple(size), n_frames)
    if key not in _CACHE:
        _CACHE[key] = generate_scene(preset, seed=seed, size=size, n_frames=n_frames)
    return _CACHE[key]


def mesh_raycaster(sc):
    return make_raycaster(sc.mesh_vertices, sc.mesh_faces)


def backproject(sc, frame, depth_m):
    """World points [N, 3] and pixel coords of valid depth pixels (OpenCV pixel-centre rays)."""
    v, u = np.nonzero(depth_m > 0)
    z = depth_m[v, u].astype(np.float64)
    K = sc.K
    p_cam = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], 1)
    return p_cam @ frame.c2w[:3, :3].T + frame.c2w[:3, 3], v, u


def all_arrays(sc):
    out = [sc.K, sc.mesh_vertices, sc.mesh_faces, sc.mesh_vertex_colors, sc.mesh_vertex_semantic,
           sc.mesh_vertex_instance]
    for f in sc.frames:
        out += [f.color, f.depth_m, f.c2w, f.gt_semantic, f.gt_instance]
    return out


# ---------------------------------------------------------------- API and determinism
def test_class_list_and_confusable():
    ids = [c["id"] for c in CLASSES]
    assert ids == list(range(1, len(CLASSES) + 1))
    names = {c["name"] for c in CLASSES}
    assert {"wall", "floor", "ceiling", "table", "chair", "sofa", "shelf", "cabinet", "lamp", "box"} <= names
    assert {c["name"] for c in CLASSES if not c["thing"]} == {"wall", "floor", "ceiling"}
    assert all(1 <= len(c["prompts"]) <= 3 for c in CLASSES)
    assert CONFUSABLE == {"chair": ["sofa"], "sofa": ["chair"], "table": ["cabinet"], "cabinet": ["table"]}
    assert PRESETS == ("room", "apartment", "clutter", "walk")


def test_same_seed_is_byte_identical_and_seeds_differ():
    a = generate_scene("room", seed=1, size=SMALL, n_frames=3)
    b = generate_scene("room", seed=1, size=SMALL, n_frames=3)
    c = generate_scene("room", seed=2, size=SMALL, n_frames=3)
    for x, y in zip(all_arrays(a), all_arrays(b)):
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
    assert a.instances == b.instances and a.meta == b.meta and a.room_of_frame == b.room_of_frame
    assert a.mesh_vertices.shape != c.mesh_vertices.shape or not np.array_equal(a.mesh_vertices, c.mesh_vertices)
    assert not np.array_equal(a.frames[0].color, c.frames[0].color)


def test_apartment_small_is_deterministic():
    a = generate_scene("apartment", seed=4, size=SMALL, n_frames=6)
    b = generate_scene("apartment", seed=4, size=SMALL, n_frames=6)
    for x, y in zip(all_arrays(a), all_arrays(b)):
        assert x.tobytes() == y.tobytes()


def test_raycaster_is_deterministic():
    sc = scene_of("room", 0, SMALL, 4)
    rc = mesh_raycaster(sc)
    poses = np.stack([f.c2w for f in sc.frames])
    h1 = cast_frames(rc, sc.K, poses, *SMALL)
    h2 = cast_frames(mesh_raycaster(sc), sc.K, poses, *SMALL)
    assert h1.depth_m.tobytes() == h2.depth_m.tobytes() and h1.prim.tobytes() == h2.prim.tobytes()
    # and the stored depth is what the ray caster returns
    assert np.stack([f.depth_m for f in sc.frames]).tobytes() == h1.depth_m.tobytes()


def test_types_shapes_and_intrinsics():
    sc = scene_of("room", 0, SMALL, 4)
    W, H = SMALL
    assert (sc.width, sc.height) == SMALL and len(sc.frames) == 4
    K = sc.K
    assert K.shape == (3, 3) and K.dtype == np.float64 and K[0, 0] == K[1, 1]
    hfov = np.degrees(2 * np.arctan(W / 2 / K[0, 0]))
    assert 80.0 <= hfov <= 90.0
    for f in sc.frames:
        assert f.color.shape == (H, W, 3) and f.color.dtype == np.uint8
        assert f.depth_m.shape == (H, W) and f.depth_m.dtype == np.float32
        assert f.gt_semantic.shape == (H, W) and f.gt_semantic.dtype == np.uint16
        assert f.gt_instance.shape == (H, W) and f.gt_instance.dtype == np.uint16
        assert f.c2w.shape == (4, 4) and f.c2w.dtype == np.float64
        R = f.c2w[:3, :3]
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-9) and np.isclose(np.linalg.det(R), 1.0)
        assert np.array_equal(f.c2w[3], [0, 0, 0, 1])
    V = len(sc.mesh_vertices)
    assert sc.mesh_faces.dtype == np.int32 and sc.mesh_faces.max() < V
    assert sc.mesh_vertex_colors.shape == (V, 3) and sc.mesh_vertex_colors.dtype == np.uint8
    assert sc.mesh_vertex_semantic.shape == (V,) and sc.mesh_vertex_semantic.dtype == np.int32
    assert sc.mesh_vertex_instance.shape == (V,) and sc.mesh_vertex_instance.dtype == np.int32
    assert sc.meta["up_axis"] == "+z" and sc.meta["preset"] == "room"
    json.dumps(sc.meta)
    json.dumps(sc.instances)
    assert len(generate_scene("clutter", 0, SMALL, n_frames=2).frames) == 2


# ---------------------------------------------------------------- exactness
@pytest.mark.parametrize("preset", ["room", "clutter"])
def test_depth_is_exact(preset):
    sc = scene_of(preset, 0, SMALL, 4)
    rc = mesh_raycaster(sc)
    for rounded in (False, True):
        dist = []
        for f in sc.frames:
            d = np.round(f.depth_m.astype(np.float64) * 1000.0) / 1000.0 if rounded else f.depth_m
            pts, _, _ = backproject(sc, f, d)
            dist.append(rc.compute_distance(o3d.core.Tensor(pts.astype(np.float32))).numpy())
        dist = np.concatenate(dist)
        assert np.median(dist) < 1e-3, (rounded, np.median(dist))
        assert np.percentile(dist, 99) < (1e-3 if rounded else 1e-4)


@pytest.mark.parametrize("preset", ["room", "apartment"])
def test_gt_images_agree_with_mesh_labels(preset):
    sc = scene_of(preset, 0, SMALL, 4)
    rc = mesh_raycaster(sc)
    tri_sem = sc.mesh_vertex_semantic[sc.mesh_faces[:, 0]]
    tri_inst = sc.mesh_vertex_instance[sc.mesh_faces[:, 0]]
    # per-vertex labels are per object: all three vertices of a triangle agree
    assert np.all(sc.mesh_vertex_semantic[sc.mesh_faces] == tri_sem[:, None])
    assert np.all(sc.mesh_vertex_instance[sc.mesh_faces] == tri_inst[:, None])
    agree = []
    for f in sc.frames:
        pts, v, u = backproject(sc, f, f.depth_m)
        pid = rc.compute_closest_points(o3d.core.Tensor(pts.astype(np.float32)))["primitive_ids"].numpy()
        agree.append((tri_sem[pid] == f.gt_semantic[v, u]) & (tri_inst[pid] == f.gt_instance[v, u]))
    assert np.concatenate(agree).mean() > 0.99


def test_colour_is_textured_and_matches_mesh_colours():
    sc = scene_of("room", 0, SMALL, 4)
    f = sc.frames[0]
    floor = f.color[f.gt_semantic == 2].astype(np.float64)
    assert len(floor) > 50 and floor.std(0).max() > 3.0       # floor carries a pattern
    rc = mesh_raycaster(sc)
    pts, v, u = backproject(sc, f, f.depth_m)
    cp = rc.compute_closest_points(o3d.core.Tensor(pts.astype(np.float32)))["primitive_ids"].numpy()
    # pixel colour is close to the colour of the nearest mesh vertices of the same triangle on average
    vc = sc.mesh_vertex_colors[sc.mesh_faces[cp]].astype(np.float64).mean(1)
    assert np.median(np.abs(vc - f.color[v, u]).mean(1)) < 25.0
    assert sc.mesh_vertex_colors.std(0).min() > 10.0


# ---------------------------------------------------------------- layout rules
@pytest.mark.parametrize("preset", ("room", "apartment", "clutter"))  # walk: tests/recon/data/test_synth_walk.py
def test_things_rest_and_do_not_interpenetrate(preset):
    layout = LAYOUTS[preset](np.random.default_rng(3))
    things = [o for o in layout.objects if not o.stuff]
    tops = {round(t.z + t.height, 9) for t in things if t.cls == "table"}
    touching = 0
    for i, a in enumerate(things):
        assert a.z == 0.0 or round(a.z, 9) in tops, (a.cls, a.z)      # on the floor or on a table top
        for b in things[i + 1:]:
            pen = max(obb_penetration(pa, pb) for pa in a.prim_obbs() for pb in b.prim_obbs())
            assert pen <= TOUCH_TOL, (a.cls, b.cls, pen)
            touching += abs(pen) <= TOUCH_TOL
    assert touching >= 1                                                  # some objects touch
    assert any(max(t.hx, t.hy) * 2 < 0.15 for t in things)               # some are small


# ---------------------------------------------------------------- presets at default size
@pytest.mark.slow
@pytest.mark.parametrize("preset", ("room", "apartment", "clutter"))  # walk: tests/recon/data/test_synth_walk.py
def test_preset_invariants(preset):
    sc = scene_of(preset)
    thing_ids = {c["id"] for c in sc.classes if c["thing"]}
    assert [c["id"] for c in sc.classes] == list(range(1, len(sc.classes) + 1))
    assert len(sc.frames) == 60 * len(sc.meta["rooms"])
    assert len(sc.room_of_frame) == len(sc.frames)
    assert [i["id"] for i in sc.instances] == list(range(1, len(sc.instances) + 1))
    assert len(sc.instances) >= (10 if preset != "apartment" else 12)
    assert all(i["class_id"] in thing_ids for i in sc.instances)
    stuff_v = ~np.isin(sc.mesh_vertex_semantic, list(thing_ids))
    assert np.all(sc.mesh_vertex_instance[stuff_v] == 0) and np.all(sc.mesh_vertex_instance[~stuff_v] > 0)
    views = np.zeros(len(sc.instances) + 1, int)
    rc = mesh_raycaster(sc)
    eyes = np.stack([f.c2w[:3, 3] for f in sc.frames])
    clearance = rc.compute_distance(o3d.core.Tensor(eyes.astype(np.float32))).numpy()
    assert clearance.min() >= 0.3
    assert eyes[:, 2].min() >= 1.2 and eyes[:, 2].max() <= 1.7
    for f in sc.frames:
        assert (f.depth_m > 0).mean() > 0.5
        assert np.median(f.depth_m[f.depth_m > 0]) > 0.8                 # not staring at a surface
        stuff_px = ~np.isin(f.gt_semantic, list(thing_ids))
        assert np.all(f.gt_instance[stuff_px] == 0)
        assert np.all(f.gt_instance[~stuff_px] > 0)
        views += np.bincount(f.gt_instance.ravel(), minlength=len(views)) > 20
    assert views[1:].min() >= 3, views
    # consecutive frames overlap: small camera motion between neighbours of one room
    for a, b, ra, rb in zip(sc.frames[:-1], sc.frames[1:], sc.room_of_frame[:-1], sc.room_of_frame[1:]):
        if ra == rb:
            assert np.linalg.norm(a.c2w[:3, 3] - b.c2w[:3, 3]) < 0.5
            assert a.c2w[:3, 2] @ b.c2w[:3, 2] > np.cos(np.radians(60.0))


@pytest.mark.slow
def test_apartment_rooms_and_cross_room_ambiguity():
    sc = scene_of("apartment")
    n_rooms = len(sc.meta["rooms"])
    assert n_rooms >= 2 and set(sc.room_of_frame) == set(range(n_rooms))
    room_of = {i["id"]: i["room"] for i in sc.instances}
    class_of = {i["id"]: i["class_id"] for i in sc.instances}
    rooms_per_class: dict = {}
    for i in sc.instances:
        rooms_per_class.setdefault(i["class_id"], set()).add(i["room"])
    assert any(len(r) >= 2 for r in rooms_per_class.values())
    for f, r in zip(sc.frames, sc.room_of_frame):
        ids = [int(i) for i in np.unique(f.gt_instance) if i > 0]
        seen: dict = {}
        for i in ids:
            seen.setdefault(class_of[i], set()).add(room_of[i])
        assert all(len(rs) == 1 for rs in seen.values()), (r, seen)
        # the camera is inside the room it scans
        x0, y0, x1, y1 = sc.meta["rooms"][r]["rect_xy"]
        x, y = f.c2w[:2, 3]
        assert x0 < x < x1 and y0 < y < y1


def test_smooth_turn_path_avoids_blocked_views():
    from recon.data.synth.generate import _smooth_turns

    turns = np.array([-40.0, -20.0, 0.0, 20.0, 40.0])
    feasible = np.ones((7, 5), bool)
    feasible[2:5, 2] = False            # frames 2..4 must turn
    feasible[3, 3] = False              # frame 3 must turn by at least 40 deg or to the left
    path = _smooth_turns(feasible, turns)
    assert path is not None and all(feasible[i, p] for i, p in enumerate(path))
    assert np.abs(np.diff(turns[path])).max() <= 20.0 + 1e-9   # ramps in steps, no jumps
    assert _smooth_turns(np.zeros((3, 5), bool), turns) is None


# ---------------------------------------------------------------- GT mesh resolution
def test_frustum_mesh_is_closed_outward_and_fine():
    from recon.data.synth.primitives import CELL_M, MIN_SEG, Frustum, frustum_mesh, frustum_segments
    for fr in (Frustum(0.3, 0.2, 0.1, 1.0, 0.2, 0.12), Frustum(0.0, 0.0, 0.0, 0.5, 0.016, 0.016)):
        m = frustum_mesh(fr)
        v, f = m.vertices, m.faces
        cross = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])          # [F, 3]
        assert np.all(np.linalg.norm(cross, axis=1) > 1e-12)                         # no degenerate faces
        n_seg = frustum_segments(fr)
        # signed volume (divergence theorem) = the inscribed polygonal frustum's: closed, wound outwards
        area = lambda r: 0.5 * n_seg * r * r * np.sin(2 * np.pi / n_seg)             # noqa: E731
        a0, a1 = area(fr.r0), area(fr.r1)
        expect = (fr.z1 - fr.z0) / 3 * (a0 + a1 + np.sqrt(a0 * a1))
        vol = np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6
        assert vol == pytest.approx(expect, rel=1e-9)
        # edges no longer than the cell except the short way round a thin pole (MIN_SEG segments)
        e = np.linalg.norm(v[f[:, [1, 2, 0]]] - v[f], axis=-1)
        assert e.max() <= np.hypot(CELL_M, 2 * np.pi * max(fr.r0, fr.r1) / n_seg) + 1e-9
        assert n_seg == max(MIN_SEG, int(np.ceil(2 * np.pi * max(fr.r0, fr.r1) / CELL_M)))


def test_gt_vertices_sample_every_class_about_uniformly():
    """semantic_3d / instance_3d are scored at GT vertices: vertices per m^2 may not differ by more
    than 4x between classes (a 64-segment lamp on a 0.15 m wall grid was 35x)."""
    sc = scene_of("room", 0, SMALL, 2)
    v, f = sc.mesh_vertices, sc.mesh_faces
    tri_sem = sc.mesh_vertex_semantic[f[:, 0]]
    area = 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)  # [F]
    density = []
    for c in np.unique(tri_sem):
        sel = tri_sem == c
        density.append(len(np.unique(f[sel])) / area[sel].sum())
    assert max(density) / min(density) < 4.0, density
