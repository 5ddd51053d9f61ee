"""The `walk` synthetic scene family (recon/data/synth/walkthrough.py): rooms and doors, the repeated
furniture set, the large one-instance objects, the walk that leaves rooms and comes back, and the
ground truth of a generated scene (ids unique across rooms, the repeated set never in view twice)."""
import itertools
import json

import numpy as np
import open3d as o3d
import pytest

from recon.data.synth import PRESETS, default_frames, generate_scene
from recon.data.synth.classes import CLASS_ID
from recon.data.synth.layout import TOUCH_TOL, WALL_T
from recon.data.synth.primitives import obb_penetration
from recon.data.synth.render import make_raycaster
from recon.data.synth.walkthrough import (FreeGrid, build_l_sofa, layout_walk, room_of_point, walk_trajectory,
                                          walkable)

LAYOUT_SEEDS = range(6)
SCENE_SEED = 3            # a 3-room walk (A B C B A) that renders without coverage re-renders (about 5 s)


def layout_of(seed: int):
    """The layout and camera rngs exactly as generate_scene derives them."""
    layout_rng, cam_rng = np.random.default_rng(seed).spawn(2)
    return layout_walk(layout_rng), cam_rng


@pytest.fixture(scope="module")
def scene():
    return generate_scene("walk", seed=SCENE_SEED)


def test_registered():
    assert "walk" in PRESETS and default_frames("walk") == 120


# ---------------------------------------------------------------- layouts (no rendering)
@pytest.mark.parametrize("seed", LAYOUT_SEEDS)
def test_rooms_doors_and_furniture_rules(seed):
    layout, _ = layout_of(seed)
    rooms = layout.rooms
    assert len(rooms) in (2, 3) and len(layout.doors) == len(rooms) - 1
    for d in layout.doors:                                    # a door in a shared wall, inside both rooms' extent
        a, b = (rooms[i].rect for i in d["between"])
        nx, ny = d["normal_xy"]
        if nx:                                                # b east of a, WALL_T apart
            assert b[0] - a[2] == pytest.approx(WALL_T) and d["x"] == [a[2], b[0]]
            assert max(a[1], b[1]) < d["y"][0] < d["y"][1] < min(a[3], b[3])
        else:
            assert ny == 1.0 and b[1] - a[3] == pytest.approx(WALL_T) and d["y"] == [a[3], b[1]]
            assert max(a[0], b[0]) < d["x"][0] < d["x"][1] < min(a[2], b[2])
    assert walkable(layout)
    things = [o for o in layout.objects if not o.stuff]
    tops = {round(t.z + t.height, 9) for t in things if t.cls == "table"}
    for i, a in enumerate(things):
        assert a.z == 0.0 or round(a.z, 9) in tops, (a.cls, a.z)           # on the floor or a table top
        x0, y0, x1, y1 = rooms[a.room].rect
        assert x0 <= a.x <= x1 and y0 <= a.y <= y1
        for b in things[i + 1:]:
            pen = max(obb_penetration(pa, pb) for pa in a.prim_obbs() for pb in b.prim_obbs())
            assert pen <= TOUCH_TOL, (a.cls, b.cls, pen)
    # only the set's classes (and the long table) repeat across rooms
    rooms_of: dict[str, set] = {}
    for o in things:
        rooms_of.setdefault(o.cls, set()).add(o.room)
    assert {c for c, rs in rooms_of.items() if len(rs) > 1} == {"table", "chair"}
    assert any(max(t.hx, t.hy) * 2 < 0.15 for t in things)                 # small things too


@pytest.mark.parametrize("seed", LAYOUT_SEEDS)
def test_repeated_set_and_large_objects(seed):
    layout, _ = layout_of(seed)
    things = [o for o in layout.objects if not o.stuff]
    set_rooms = sorted({o.room for o in things if o.cls == "chair"})
    assert len(set_rooms) == 2 and set_rooms[0] != set_rooms[1]

    def local_shape(o):        # the object's primitives in its own frame: sizes and heights, rounded
        return sorted((round(p.half[0], 6), round(p.half[1], 6), round(p.center[2] - o.z, 6), round(p.half[2], 6))
                      for p in o.prims)

    def looks(o):
        return (local_shape(o), [m.base_rgb for m in o.materials])

    chairs = [o for o in things if o.cls == "chair"]
    assert len({json.dumps(looks(c)) for c in chairs}) == 1                # one chair model in both rooms
    set_tables = [o for o in things if o.cls == "table" and o.hx < 0.9]
    assert sorted(t.room for t in set_tables) == set_rooms
    assert json.dumps(looks(set_tables[0])) == json.dumps(looks(set_tables[1]))
    # the three large pieces, each ONE object (one instance) made of several primitives
    long_tables = [o for o in things if o.cls == "table" and 2 * o.hx >= 2.0]
    wardrobes = [o for o in things if o.cls == "cabinet" and 2 * o.hx >= 1.5 and o.height >= 1.9]
    sofas = [o for o in things if o.cls == "sofa"]
    assert len(long_tables) == len(wardrobes) == len(sofas) == 1
    assert len(long_tables[0].prims) == 7 and len(wardrobes[0].prims) >= 6
    assert len(sofas[0].prims) == 6 and 2 * sofas[0].hy >= 1.5 and 2 * sofas[0].hx >= 2.2


def test_l_sofa_is_an_l():
    """Footprint by hand: the boxes fill the back strip and the chaise end, not the opposite front corner."""
    lo = build_l_sofa(np.random.default_rng(0))
    pts = [(x, y) for p in lo.prims for x, y in [(p.center[0], p.center[1])]]
    assert len(lo.prims) == 6 and all(abs(x) <= lo.hx + 1e-9 and abs(y) <= lo.hy + 1e-9 for x, y in pts)
    occupied = lambda x, y: any(abs(x - p.center[0]) <= p.half[0] and abs(y - p.center[1]) <= p.half[1]  # noqa: E731
                                for p in lo.prims)
    chaise = [p for p in lo.prims if p.center[1] + p.half[1] > lo.hy - 1e-9]   # reach the front edge
    side = np.sign(chaise[0].center[0])
    assert all(np.sign(p.center[0]) == side for p in chaise)
    assert occupied(0.0, -lo.hy + 0.05)                                     # the back, centre
    assert occupied(side * (lo.hx - 0.3), lo.hy - 0.05)                     # the chaise's front
    assert not occupied(-side * (lo.hx - 0.3), lo.hy - 0.05)                # the empty front corner


@pytest.mark.parametrize("seed", LAYOUT_SEEDS)
def test_walk_leaves_rooms_and_comes_back(seed):
    layout, cam_rng = layout_of(seed)
    c2ws, room_of, record = walk_trajectory(cam_rng, layout, 120)
    assert c2ws.shape == (120, 4, 4) and len(room_of) == 120
    runs = [r for r, _ in itertools.groupby(room_of)]
    assert runs == record["visits"]                                        # A B A B or A B C B A
    assert runs in ([0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 2, 1, 0], [2, 1, 0, 1, 2])
    assert len(set(runs)) == len(layout.rooms)
    revisited = [r for r in set(runs) if runs.count(r) >= 2]               # left and entered again
    assert len(revisited) >= 2
    eyes = c2ws[:, :3, 3]
    fwd = c2ws[:, :3, 2]
    assert np.linalg.norm(np.diff(eyes, axis=0), axis=1).max() < 0.5      # a walk: small steps ...
    assert (fwd[:-1] * fwd[1:]).sum(1).min() > np.cos(np.radians(60.0))  # ... and turns
    grid = FreeGrid(layout)
    for p, r in zip(eyes, room_of):
        assert room_of_point(layout, p[:2]) == r
        x0, y0, x1, y1 = layout.rooms[r].rect
        assert x0 - WALL_T / 2 <= p[0] <= x1 + WALL_T / 2 and y0 - WALL_T / 2 <= p[1] <= y1 + WALL_T / 2
    assert grid.free.any()


# ---------------------------------------------------------------- a generated scene
def test_scene_ground_truth(scene):
    sc = scene
    thing_ids = {c["id"] for c in sc.classes if c["thing"]}
    assert len(sc.frames) == 120 and (sc.width, sc.height) == (160, 120)
    assert [i["id"] for i in sc.instances] == list(range(1, len(sc.instances) + 1))   # unique across rooms
    room_of = {i["id"]: i["room"] for i in sc.instances}
    class_of = {i["id"]: i["class_id"] for i in sc.instances}
    # the mesh: stuff vertices carry no instance, every thing vertex the instance of its class and room
    stuff_v = ~np.isin(sc.mesh_vertex_semantic, list(thing_ids))
    assert np.all(sc.mesh_vertex_instance[stuff_v] == 0) and np.all(sc.mesh_vertex_instance[~stuff_v] > 0)
    for iid, cid in class_of.items():
        assert np.all(sc.mesh_vertex_semantic[sc.mesh_vertex_instance == iid] == cid)
    repeated = {c for c in set(class_of.values()) if len({room_of[i] for i in class_of if class_of[i] == c}) > 1}
    assert repeated == {CLASS_ID["chair"], CLASS_ID["table"]}
    views = np.zeros(len(sc.instances) + 1, int)
    for f in sc.frames:
        stuff_px = ~np.isin(f.gt_semantic, list(thing_ids))
        assert np.all(f.gt_instance[stuff_px] == 0) and np.all(f.gt_instance[~stuff_px] > 0)
        ids = [int(i) for i in np.unique(f.gt_instance) if i > 0]
        for i in ids:                                                     # an id is one object in every frame
            assert np.all(f.gt_semantic[f.gt_instance == i] == class_of[i])
        seen: dict = {}
        for i in ids:
            seen.setdefault(class_of[i], set()).add(room_of[i])
        assert all(len(rs) == 1 for rs in seen.values()), seen             # never two rooms' chairs at once
        views += np.bincount(f.gt_instance.ravel(), minlength=len(views)) > 20
    assert views[1:].min() >= 3
    # the repeated chairs of both rooms are all seen (in different frames)
    chairs = [i for i, c in class_of.items() if c == CLASS_ID["chair"]]
    assert len({room_of[i] for i in chairs}) == 2 and all(views[i] >= 3 for i in chairs)
    # the camera leaves rooms and comes back
    runs = [r for r, _ in itertools.groupby(sc.room_of_frame)]
    assert runs == sc.meta["walk"]["visits"] and any(runs.count(r) >= 2 for r in set(runs))


def test_scene_frames_are_valid_views(scene):
    sc = scene
    rc = make_raycaster(sc.mesh_vertices, sc.mesh_faces)
    eyes = np.stack([f.c2w[:3, 3] for f in sc.frames])
    assert rc.compute_distance(o3d.core.Tensor(eyes.astype(np.float32))).numpy().min() >= 0.3
    assert eyes[:, 2].min() >= 1.2 and eyes[:, 2].max() <= 1.7
    for f in sc.frames:
        assert (f.depth_m > 0).mean() > 0.98 and np.median(f.depth_m[f.depth_m > 0]) > 0.8
    # large objects are seen only in parts: in some frame each is cut by the image border
    big = [i["id"] for i in sc.instances
           if np.hypot(i["bbox_max"][0] - i["bbox_min"][0], i["bbox_max"][1] - i["bbox_min"][1]) > 2.0]
    assert len(big) >= 3
    for iid in big:
        cut = [f for f in sc.frames if (f.gt_instance == iid).any() and
               ((f.gt_instance[:, [0, -1]] == iid).any() or (f.gt_instance[[0, -1], :] == iid).any())]
        assert len(cut) >= 3, iid


def test_small_walk_is_deterministic_and_writes_a_valid_scene(tmp_path):
    from recon.core.settings import SynthSettings
    from recon.data.make_synth import make_synth_scene
    from recon.data.scene import load_scene

    a = generate_scene("walk", seed=5, size=(48, 36), n_frames=8)
    b = generate_scene("walk", seed=5, size=(48, 36), n_frames=8)
    for x, y in zip(a.frames, b.frames):
        assert x.color.tobytes() == y.color.tobytes() and x.gt_instance.tobytes() == y.gt_instance.tobytes()
        assert x.c2w.tobytes() == y.c2w.tobytes()
    assert a.meta == b.meta and a.meta["walk"]["visits"] in ([0, 1, 0, 1], [1, 0, 1, 0])
    stats = make_synth_scene(SynthSettings(preset="walk", seed=5, size=(48, 36), frames=10, noise="realistic-video"),
                             tmp_path / "walk", log=lambda *_: None)
    scene = load_scene(tmp_path / "walk")                                  # validates the folder
    assert len(scene) == stats["frames"] == 10 and scene.has_masks
    meta = json.loads((tmp_path / "walk" / "scene.json").read_text())
    assert meta["generator"]["preset"] == "walk" and meta["mask_noise"]["p_swap_start"] > 0
