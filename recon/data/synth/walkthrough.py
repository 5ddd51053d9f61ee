"""The `walk` scene family: walk-throughs of 2-3 furnished rooms joined by doorways.

A second family of synthetic scenes, built independently of the room / apartment / clutter
presets (layout.py, camera.py) so that a method tuned on those can be judged on data it was not
tuned on. What differs:

- rooms: two rooms side by side, or three in an L (the middle one joins the other two), walls
  of one thickness (WALL_T) with a door in every shared wall, doors anywhere along the wall;
- furniture: the SAME table-and-chairs set (one table model, one chair model: identical
  geometry and materials) stands in two different rooms; every other class lives in one room
  only, except tables (the set's and a long table); large objects that a 160x120 view shows
  only in parts: a long table (2.0-2.5 m), a wardrobe (class cabinet, 1.5-2.1 m wide, about
  2 m tall) and an L-shaped sofa built of six boxes, each ONE instance;
- camera: one continuous walk through the rooms (A B A B, or A B C B A), so the camera leaves
  every room and comes back later, each visit seeing other parts of it. The path is planned
  around the furniture on a 10 cm grid (Dijkstra, clearance-weighted), crosses each door
  through its centre, stops at viewpoints to look at the furniture and walks on; the heading
  turns smoothly between keyframes (look at a piece of furniture, look through the door).

The same acceptance rules as the other presets apply afterwards (generate.py: clearance,
depth, and no frame showing two same-class objects of different rooms, repaired by turning
the camera), so instance ids are unique across rooms and the repeated set is never in view
twice. `layout_walk(rng)` gives the Layout, `walk_trajectory(rng, layout, n)` the poses, the
room of each frame and a record of the walk (visits, the frames of each visit).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra

from .camera import pose_from_angles
from .layout import CEIL_H, DOOR_H, DOOR_W, WALL_T, Layout, Placer, Room, place_against_wall, place_in_corner, \
    place_on_table
from .objects import (BUILDERS, LocalObject, SceneObject, ceiling_material, floor_material, local_to_world,
                      make_material, place, wall_material)
from .primitives import Box, Frustum

WALK_PRESETS: tuple[str, ...] = ("walk",)
WALK_FRAMES = 120                 # default frames of a walk (all rooms together)
HALF_T = WALL_T / 2               # every wall is this thick on each room's side (m)
DOOR_END_M = 0.35                 # a door keeps at least this far from a wall's ends (m)
GRID_M = 0.1                      # path-planning cell (m)
WALL_MARGIN_M = 0.5               # the camera path keeps this far from the walls (m) ...
OBJ_MARGIN_M = 0.4                # ... and this far from every footprint (m)
APPROACH_M = 0.8                  # door crossings run straight from this far before the wall to as far after it
DWELL = 2.0                       # time spent at a viewpoint, in metres of walking
VP_DIST_M = 1.8                   # preferred distance between consecutive viewpoints (m) ...
VP_DOOR_M = 1.3                   # ... at least this far from a door's approach point
MAX_TURN_DEG = 110.0              # fastest turn between keyframes, degrees per metre of walking
SPEED_NEAR_DOOR = 0.7             # relative speed on door crossings (1 elsewhere)
SWAY_DEG, SWAY_PERIOD = 12.0, 3.5  # slow heading sway (deg, metres of walking per period)
EYE_Z = (1.38, 1.5)               # camera height band centre (m), +-0.05 bob
PITCH_LOOK_DEG = (18.0, 26.0)     # pitch at viewpoints (down), per keyframe
PITCH_DOOR_DEG = 10.0             # pitch while walking through a door


# ---------------------------------------------------------------- rooms and walls
def _abox(x0, x1, y0, y1, z0, z1, skip=()) -> Box:
    return Box(((x0 + x1) / 2, (y0 + y1) / 2, (z0 + z1) / 2), ((x1 - x0) / 2, (y1 - y0) / 2, (z1 - z0) / 2),
               0.0, tuple(skip))


def _stuff(cls: str, prims: list, mats: list, room: int) -> SceneObject:
    return SceneObject(cls, prims, mats, room, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, stuff=True)


def walk_rooms(rng: np.random.Generator) -> tuple[list[Room], list[tuple[int, int, str]]]:
    """2 rooms side by side (east-west) or 3 in an L (0 -E- 1 -N- 2); rooms sharing a wall have the
    same extent along it and are WALL_T apart. Returns the rooms and the links (a, b, side of a)."""
    n_rooms = int(rng.integers(2, 4))
    w = [float(rng.uniform(4.6, 5.4)) for _ in range(n_rooms)]
    d0 = float(rng.uniform(4.2, 4.8))
    rooms = [Room(0, (0.0, 0.0, w[0], d0)), Room(1, (w[0] + WALL_T, 0.0, w[0] + WALL_T + w[1], d0))]
    links = [(0, 1, "E")]
    if n_rooms == 3:
        x0, _, x1, _ = rooms[1].rect
        d2 = float(rng.uniform(4.2, 4.8))
        rooms.append(Room(2, (x0, d0 + WALL_T, x1, d0 + WALL_T + d2)))
        links.append((1, 2, "N"))
    return rooms, links


def build_walk_shell(rng: np.random.Generator, rooms: list[Room], links: list[tuple[int, int, str]]
                     ) -> tuple[list[SceneObject], list[dict], list[tuple]]:
    """Floors, ceilings and walls of rooms (each room closed by its own walls, HALF_T thick, with a
    door in every shared wall). Returns the stuff objects, the doors and the keep-out boxes in
    front of each door (furniture stays clear of them)."""
    doors_of: dict[tuple[int, str], tuple[float, float]] = {}   # (room, side) -> door interval along the side
    doors, keepout = [], []
    for a, b, side in links:
        ra, rb = rooms[a].rect, rooms[b].rect
        lo, hi = (ra[1], ra[3]) if side == "E" else (ra[0], ra[2])
        t0 = float(rng.uniform(lo + DOOR_END_M, hi - DOOR_END_M - DOOR_W))
        doors_of[(a, side)] = doors_of[(b, {"E": "W", "N": "S"}[side])] = (t0, t0 + DOOR_W)
        tc = t0 + DOOR_W / 2
        if side == "E":
            wall_c, normal = (ra[2] + rb[0]) / 2, (1.0, 0.0)
            centre, xs, ys = (wall_c, tc), [ra[2], rb[0]], [t0, t0 + DOOR_W]
        else:
            wall_c, normal = (ra[3] + rb[1]) / 2, (0.0, 1.0)
            centre, xs, ys = (tc, wall_c), [t0, t0 + DOOR_W], [ra[3], rb[1]]
        doors.append({"between": [a, b], "x": [float(v) for v in xs], "y": [float(v) for v in ys],
                      "z": [0.0, DOOR_H], "center_xy": [float(v) for v in centre],
                      "normal_xy": [float(v) for v in normal]})
        depth = 0.9
        for sgn in (-1.0, 1.0):                    # a box in front of the door on each side
            off = sgn * (HALF_T + depth / 2)
            cx, cy = centre[0] + normal[0] * off, centre[1] + normal[1] * off
            hx, hy = (depth / 2, DOOR_W / 2 + 0.1) if side == "E" else (DOOR_W / 2 + 0.1, depth / 2)
            keepout.append((cx, cy, 0.0, hx, hy, 0.0, CEIL_H))
    objs: list[SceneObject] = []
    shared = {(a, s) for a, _, s in links} | {(b, {"E": "W", "N": "S"}[s]) for _, b, s in links}
    for r in rooms:
        x0, y0, x1, y1 = r.rect
        ext = {s: (HALF_T if (r.index, s) in shared else 0.0) for s in "SNWE"}
        fx0, fx1, fy0, fy1 = x0 - ext["W"], x1 + ext["E"], y0 - ext["S"], y1 + ext["N"]
        objs.append(_stuff("floor", [_abox(fx0, fx1, fy0, fy1, -0.05, 0.0, ("-z", "+x", "-x", "+y", "-y"))],
                           [floor_material(rng)], r.index))
        objs.append(_stuff("ceiling", [_abox(fx0, fx1, fy0, fy1, CEIL_H, CEIL_H + 0.05, ("+z", "+x", "-x", "+y", "-y"))],
                           [ceiling_material(rng)], r.index))
    for r in rooms:
        x0, y0, x1, y1 = r.rect
        mat = wall_material(rng)
        H, t = r.height, HALF_T
        # side: (along-axis interval incl. corners, the wall box builder, outward face)
        sides = {
            "S": ((x0 - t, x1 + t), lambda a0, a1, z0, z1, sk: _abox(a0, a1, y0 - t, y0, z0, z1, sk), "-y"),
            "N": ((x0 - t, x1 + t), lambda a0, a1, z0, z1, sk: _abox(a0, a1, y1, y1 + t, z0, z1, sk), "+y"),
            "W": ((y0, y1), lambda a0, a1, z0, z1, sk: _abox(x0 - t, x0, a0, a1, z0, z1, sk), "-x"),
            "E": ((y0, y1), lambda a0, a1, z0, z1, sk: _abox(x1, x1 + t, a0, a1, z0, z1, sk), "+x"),
        }
        for side, ((a0, a1), make, out) in sides.items():
            door = doors_of.get((r.index, side))
            if door is None:
                boxes = [make(a0, a1, 0.0, H, ("-z", "+z", out))]
            else:
                d0, d1 = door
                boxes = [make(a0, d0, 0.0, H, ("-z", "+z", out)), make(d1, a1, 0.0, H, ("-z", "+z", out)),
                         make(d0, d1, DOOR_H, H, ("+z", out))]
            for b in boxes:
                objs.append(_stuff("wall", [b], [mat], r.index))
    return objs, doors, keepout


# ---------------------------------------------------------------- large furniture (local frame, front = +y)
def _box(x0, x1, y0, y1, z0, z1, material=0, skip=()) -> Box:
    return Box(((x0 + x1) / 2, (y0 + y1) / 2, (z0 + z1) / 2), ((x1 - x0) / 2, (y1 - y0) / 2, (z1 - z0) / 2),
               0.0, tuple(skip), material)


def build_long_table(rng: np.random.Generator) -> LocalObject:
    """A 2.0-2.5 m table (class table): top and six legs."""
    mat = [make_material(rng, "wood" if rng.random() < 0.7 else "white")]
    w, d, h, t = float(rng.uniform(2.0, 2.5)), float(rng.uniform(0.8, 0.95)), float(rng.uniform(0.73, 0.77)), 0.05
    leg, inset = 0.06, 0.06
    prims = [_box(-w / 2, w / 2, -d / 2, d / 2, h - t, h)]
    for cx in (-(w / 2 - inset - leg / 2), 0.0, w / 2 - inset - leg / 2):
        for sy in (-1, 1):
            cy = sy * (d / 2 - inset - leg / 2)
            prims.append(_box(cx - leg / 2, cx + leg / 2, cy - leg / 2, cy + leg / 2, 0.0, h - t, skip=("-z", "+z")))
    return LocalObject("table", prims, mat, w / 2, d / 2, h)


def build_wardrobe(rng: np.random.Generator) -> LocalObject:
    """A wardrobe (class cabinet): plinth, body, 2-3 doors with handles, about 2 m tall."""
    body = make_material(rng, "wood" if rng.random() < 0.5 else "cabinet")
    metal = make_material(rng, "metal")
    w, d, h = float(rng.uniform(1.5, 2.1)), float(rng.uniform(0.55, 0.62)), float(rng.uniform(1.95, 2.2))
    pl, door_t, handle_t = 0.08, 0.02, 0.025
    yb = d / 2 - handle_t - door_t
    prims = [_box(-w / 2 + 0.03, w / 2 - 0.03, -d / 2, yb - 0.03, 0.0, pl, skip=("-z",)),
             _box(-w / 2, w / 2, -d / 2, yb, pl, h)]
    n_door = 3 if w > 1.75 else 2
    edges = np.linspace(-w / 2, w / 2, n_door + 1)
    for i in range(n_door):
        a, b = edges[i] + 0.005, edges[i + 1] - 0.005
        prims.append(_box(a, b, yb, yb + door_t, pl + 0.02, h - 0.03))
        hx = b - 0.07 if i % 2 == 0 else a + 0.07
        prims.append(_box(hx - 0.012, hx + 0.012, yb + door_t, yb + door_t + handle_t, 0.9, 1.25, material=1))
    return LocalObject("cabinet", prims, [body, metal], w / 2, d / 2, h)


def build_l_sofa(rng: np.random.Generator) -> LocalObject:
    """An L-shaped sofa (class sofa) of six boxes: back, arm, main seat, chaise seat, chaise arm.
    The chaise sticks out forward at one end (side chosen by rng)."""
    mat = [make_material(rng, "sofa")]
    w, d, ext = float(rng.uniform(2.2, 2.7)), float(rng.uniform(0.85, 0.95)), float(rng.uniform(0.7, 0.9))
    cw, arm, back = float(rng.uniform(0.75, 0.9)), float(rng.uniform(0.15, 0.2)), float(rng.uniform(0.18, 0.24))
    hs, ha, hb = float(rng.uniform(0.4, 0.46)), float(rng.uniform(0.55, 0.62)), float(rng.uniform(0.8, 0.9))
    yb = -(d + ext) / 2                                   # back face; the footprint is (d + ext) deep
    s = 1.0 if rng.random() < 0.5 else -1.0               # chaise at +x (s = 1) or -x

    def sx(a: float, b: float) -> tuple[float, float]:   # mirror an x interval for s = -1
        return (a, b) if s > 0 else (-b, -a)

    sk = ("-z",)
    prims = [
        _box(-w / 2, w / 2, yb, yb + back, 0.0, hb, skip=sk),                                   # back
        _box(*sx(-w / 2, -w / 2 + arm), yb + back, yb + d, 0.0, ha, skip=sk),                   # arm
        _box(*sx(w / 2 - arm, w / 2), yb + back, yb + d + ext, 0.0, ha, skip=sk),               # chaise arm
        _box(*sx(-w / 2 + arm, w / 2 - arm), yb + back, yb + d, 0.0, hs, skip=sk),              # main seat
        _box(*sx(w / 2 - cw, w / 2 - arm), yb + d, yb + d + ext, 0.0, hs, skip=sk),             # chaise seat
        _box(*sx(-w / 2 + arm, w / 2 - arm), yb + back, yb + back + 0.12, hs, hs + 0.3, skip=sk),  # back cushion
    ]
    return LocalObject("sofa", prims, mat, w / 2, (d + ext) / 2, hb)


LARGE_BUILDERS = {"long_table": build_long_table, "wardrobe": build_wardrobe, "l_sofa": build_l_sofa}


# ---------------------------------------------------------------- furnishing
def place_set(rng: np.random.Generator, placer: Placer, room: Room, table: LocalObject, chair: LocalObject,
              n_chairs: int, tries: int = 40) -> tuple[SceneObject | None, list[SceneObject]]:
    """The repeated set: `table` near the room's centre (away from walls), `n_chairs` copies of
    `chair` facing it, on its long sides first."""
    x0, y0, x1, y1 = room.rect
    placed = None
    for k in range(tries):
        jit = 0.15 + 0.6 * k / tries
        x = (x0 + x1) / 2 + float(rng.uniform(-jit, jit))
        y = (y0 + y1) / 2 + float(rng.uniform(-jit, jit))
        yaw = float(rng.choice([0.0, np.pi / 2]))
        placed = placer.try_add(place(table, x, y, 0.0, yaw, room.index), room)
        if placed is not None:
            break
    if placed is None:
        return None, []
    slots = [((0.0, 1.0), 0.0), ((0.0, -1.0), 0.0), ((1.0, 0.0), 0.0), ((-1.0, 0.0), 0.0)]
    if table.hx > 0.62:
        off = table.hx / 2
        slots = [((0.0, 1.0), -off), ((0.0, -1.0), off), ((0.0, 1.0), off), ((0.0, -1.0), -off),
                 ((1.0, 0.0), 0.0), ((-1.0, 0.0), 0.0)]
    chairs: list[SceneObject] = []
    for (ux, uy), lat in slots:
        if len(chairs) >= n_chairs:
            break
        e = table.hx if ux != 0 else table.hy
        rel_yaw = {(0.0, 1.0): np.pi, (0.0, -1.0): 0.0, (1.0, 0.0): np.pi / 2, (-1.0, 0.0): -np.pi / 2}[(ux, uy)]
        dist = e + chair.hy + float(rng.uniform(0.04, 0.15))
        px, py = ux * dist + (-uy) * lat, uy * dist + ux * lat
        wx, wy = local_to_world(placed.x, placed.y, placed.yaw, px, py)
        got = placer.try_add(place(chair, wx, wy, 0.0, placed.yaw + rel_yaw, room.index), room)
        if got is not None:
            chairs.append(got)
    return placed, chairs


def _rect_table(rng: np.random.Generator) -> LocalObject:
    for _ in range(50):
        lo = BUILDERS["table"](rng)
        if not isinstance(lo.prims[0], Frustum):
            return lo
    raise RuntimeError("walk: no rectangular table drawn")


def layout_walk(rng: np.random.Generator, tries: int = 12) -> Layout:
    """Rooms, doors and furniture of a walk (see the module docstring); deterministic in rng.
    Furniture is drawn again (up to `tries` times) until every large piece and both sets stand,
    and the camera can walk from every door of a room to every other with room to stand."""
    rooms, links = walk_rooms(rng)
    shell, doors, keepout = build_walk_shell(rng, rooms, links)
    fallback = None
    for _ in range(tries):
        layout, complete = _furnish(rng, rooms, shell, doors, keepout)
        if walkable(layout):
            if complete:
                return layout
            fallback = fallback or layout
    if fallback is None:
        raise RuntimeError("walk: no walkable furniture layout found")
    return fallback


def door_approaches(layout: Layout, room: int) -> list[np.ndarray]:
    """Points APPROACH_M in front of each door of `room`, on its side."""
    out = []
    for d in layout.doors:
        if room in d["between"]:
            sgn = -1.0 if d["between"][0] == room else 1.0
            out.append(np.array(d["center_xy"]) + sgn * (HALF_T + APPROACH_M) * np.array(d["normal_xy"]))
    return out


def _room_component(grid: "FreeGrid", layout: Layout, room: int) -> int:
    """The free-space component the camera walks in within `room` (that of its first door)."""
    return int(grid.comp[grid.cell_of(door_approaches(layout, room)[0])])


def walkable(layout: Layout, min_area_m2: float = 1.5) -> bool:
    """Whether every room's doors are joined by free space (FreeGrid) with >= min_area_m2 of it."""
    grid = FreeGrid(layout)
    for r in layout.rooms:
        comps = {int(grid.comp[grid.cell_of(p)]) for p in door_approaches(layout, r.index)}
        if len(comps) != 1:
            return False
        if ((grid.comp == comps.pop()) & (grid.room == r.index)).sum() * GRID_M ** 2 < min_area_m2:
            return False
    return True


def _furnish(rng: np.random.Generator, rooms: list[Room], shell: list[SceneObject], doors: list[dict],
             keepout: list[tuple]) -> tuple[Layout, bool]:
    """One draw of the furniture; also whether every large piece and both set tables stand."""
    n = len(rooms)
    placed = 0
    placer = Placer(rooms, keepout)
    set_table, set_chair = _rect_table(rng), BUILDERS["chair"](rng)     # built once: identical in both rooms
    set_rooms = [0, n - 1]
    large = [("long_table", "wardrobe", "l_sofa")[i] for i in rng.permutation(3)]
    large_of = {0: [large[0]], 1: large[1:]} if n == 2 else {0: [], 1: large[:2], 2: [large[2]]}
    if n == 2 and rng.random() < 0.5:
        large_of = {0: large[1:], 1: [large[0]]}
    fillers = [("shelf", "lamp")[i] for i in rng.permutation(2)]
    filler_of = {0: [fillers[0]], n - 1: [fillers[1]]}
    small = [("bottle", "book", "box")[i] for i in rng.permutation(3)]  # one small class per room
    tables: dict[int, list[SceneObject]] = {r.index: [] for r in rooms}
    for room in rooms:                                   # large pieces against the walls first
        for kind in large_of.get(room.index, []):
            got = place_against_wall(rng, placer, room, LARGE_BUILDERS[kind](rng), tries=60)
            placed += got is not None
            if got is not None and got.cls == "table":
                tables[room.index].append(got)
    for room in rooms:
        if room.index in set_rooms:
            table, _ = place_set(rng, placer, room, set_table, set_chair, int(rng.integers(2, 5)))
            if table is not None:
                tables[room.index].append(table)
                placed += 1
        for kind in filler_of.get(room.index, []):
            if kind == "lamp":
                place_in_corner(rng, placer, room, BUILDERS["lamp"](rng))
            else:
                place_against_wall(rng, placer, room, BUILDERS[kind](rng))
        for table in tables[room.index]:
            place_on_table(rng, placer, table, [small[room.index]] * int(rng.integers(2, 4)))
    things = placer.things
    order = sorted(range(len(things)), key=lambda i: things[i].room)   # stable: room-major
    return Layout(rooms, list(shell) + [things[i] for i in order], doors, keepout), placed == 3 + len(set_rooms)


# ---------------------------------------------------------------- path planning
def _footprint_distance(px: np.ndarray, py: np.ndarray, obb) -> np.ndarray:
    """Distance (m) of points [N] from an object's footprint rectangle (cx, cy, yaw, hx, hy, ...)."""
    cx, cy, yaw, hx, hy = obb[:5]
    c, s = np.cos(yaw), np.sin(yaw)
    lx, ly = c * (px - cx) + s * (py - cy), -s * (px - cx) + c * (py - cy)
    return np.hypot(np.maximum(np.abs(lx) - hx, 0.0), np.maximum(np.abs(ly) - hy, 0.0))


class FreeGrid:
    """Cells (GRID_M) where the camera may stand: inside a room, WALL_MARGIN_M from its walls and
    OBJ_MARGIN_M from every piece of furniture; shortest clearance-weighted paths between cells."""

    def __init__(self, layout: Layout):
        rects = np.array([r.rect for r in layout.rooms])                       # [R, 4]
        self.x0, self.y0 = rects[:, 0].min() - GRID_M, rects[:, 1].min() - GRID_M
        nx = int(np.ceil((rects[:, 2].max() + GRID_M - self.x0) / GRID_M)) + 1
        ny = int(np.ceil((rects[:, 3].max() + GRID_M - self.y0) / GRID_M)) + 1
        gx, gy = np.meshgrid(self.x0 + GRID_M * np.arange(nx), self.y0 + GRID_M * np.arange(ny), indexing="ij")
        self.gx, self.gy = gx, gy                                             # [nx, ny] cell centres
        room = np.full(gx.shape, -1, np.int64)
        for r in layout.rooms:
            x0, y0, x1, y1 = r.rect
            m = WALL_MARGIN_M
            room[(gx >= x0 + m) & (gx <= x1 - m) & (gy >= y0 + m) & (gy <= y1 - m)] = r.index
        free = room >= 0
        for o in layout.objects:
            if not o.stuff:
                free &= _footprint_distance(gx, gy, o.obb) >= OBJ_MARGIN_M
        self.room = np.where(free, room, -1)                                  # [nx, ny] room of a free cell
        self.free = free
        self.clear = ndimage.distance_transform_edt(free) * GRID_M            # [nx, ny] m to the nearest blocked cell
        self.comp, _ = ndimage.label(free, structure=np.ones((3, 3)))
        self.cells = np.argwhere(free)                                        # [F, 2] grid index of node k
        idx = -np.ones(gx.shape, np.int64)                                    # [nx, ny] node of a free cell
        idx[self.cells[:, 0], self.cells[:, 1]] = np.arange(len(self.cells))
        self.idx = idx
        rows, cols, wts = [], [], []
        for dx, dy in ((1, 0), (0, 1), (1, 1), (1, -1)):                       # 8-neighbours, each pair once
            nb = self.cells + np.array([dx, dy])                              # [F, 2]
            ok = (nb[:, 0] < nx) & (nb[:, 1] >= 0) & (nb[:, 1] < ny)
            a, b = self.cells[ok], nb[ok]
            ok2 = free[b[:, 0], b[:, 1]]
            a, b = a[ok2], b[ok2]
            c = np.minimum(self.clear[a[:, 0], a[:, 1]], self.clear[b[:, 0], b[:, 1]])
            w = GRID_M * np.hypot(dx, dy) * (1.0 + 0.3 / c)                   # prefer the middle of free space
            ia, ib = idx[a[:, 0], a[:, 1]], idx[b[:, 0], b[:, 1]]
            rows += [ia, ib]
            cols += [ib, ia]
            wts += [w, w]
        n_free = len(self.cells)
        self.graph = coo_matrix((np.concatenate(wts), (np.concatenate(rows), np.concatenate(cols))),
                                shape=(n_free, n_free)).tocsr()

    def cell_of(self, xy) -> tuple[int, int]:
        """The free cell nearest to point xy (m)."""
        d = (self.gx[self.free] - xy[0]) ** 2 + (self.gy[self.free] - xy[1]) ** 2
        i, j = self.cells[int(np.argmin(d))]
        return int(i), int(j)

    def xy(self, cell) -> np.ndarray:
        return np.array([self.gx[cell], self.gy[cell]])

    def path(self, a, b) -> np.ndarray:
        """[P, 2] cell centres of the cheapest path between free cells a and b (both included)."""
        ia, ib = self.idx[a], self.idx[b]
        _, pred = dijkstra(self.graph, indices=int(ia), return_predecessors=True)
        if ia != ib and pred[ib] < 0:
            raise RuntimeError("walk: two viewpoints of the walk are not connected")
        out, k = [int(ib)], int(ib)
        while k != ia:
            k = int(pred[k])
            out.append(k)
        cells = self.cells[np.array(out[::-1])]
        return np.stack([self.gx[cells[:, 0], cells[:, 1]], self.gy[cells[:, 0], cells[:, 1]]], 1)


def _smooth_path(pts: np.ndarray, step: float = 0.05, sigma_m: float = 0.2) -> np.ndarray:
    """Resample a polyline [P, 2] every `step` m and smooth it (Gaussian, ends kept)."""
    if len(pts) < 2:
        return pts.copy()
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    if arc[-1] < 1e-9:
        return pts[:1].copy()
    s = np.linspace(0.0, arc[-1], max(2, int(np.ceil(arc[-1] / step)) + 1))
    res = np.stack([np.interp(s, arc, pts[:, 0]), np.interp(s, arc, pts[:, 1])], 1)
    sm = ndimage.gaussian_filter1d(res, sigma_m / step, axis=0, mode="nearest")
    ramp = np.clip(np.minimum(s, s[-1] - s) / (3 * sigma_m), 0.0, 1.0)[:, None]   # keep the ends in place
    return ramp * sm + (1 - ramp) * res


def _angle_lerp(a: float, b: float, t: np.ndarray) -> np.ndarray:
    d = (b - a + np.pi) % (2 * np.pi) - np.pi
    return a + d * t


def _room_cells(layout: Layout) -> list[tuple[float, float, float, float]]:
    """Each room's rectangle grown by HALF_T: the part of the world that counts as the room (a
    doorway belongs half to each side)."""
    return [(r.rect[0] - HALF_T, r.rect[1] - HALF_T, r.rect[2] + HALF_T, r.rect[3] + HALF_T) for r in layout.rooms]


def room_of_point(layout: Layout, xy) -> int:
    """Index of the room whose grown rectangle holds xy (the nearest one if none does)."""
    best, best_d = 0, np.inf
    for i, (x0, y0, x1, y1) in enumerate(_room_cells(layout)):
        d = np.hypot(max(x0 - xy[0], 0.0, xy[0] - x1), max(y0 - xy[1], 0.0, xy[1] - y1))
        if d < best_d - 1e-12:
            best, best_d = i, d
    return best


def walk_visits(rng: np.random.Generator, n_rooms: int) -> list[int]:
    """The order of rooms: A B A B for two rooms, A B C B A for three (either direction)."""
    if n_rooms == 2:
        s = int(rng.integers(2))
        return [s, 1 - s, s, 1 - s]
    return [0, 1, 2, 1, 0] if rng.random() < 0.5 else [2, 1, 0, 1, 2]


def walk_trajectory(rng: np.random.Generator, layout: Layout, n: int) -> tuple[np.ndarray, list[int], dict]:
    """[n, 4, 4] c2w poses of one walk through the layout's rooms, the room of each frame and a
    record {"visits": rooms in order, "visit_of_frame": [n]} (see the module docstring)."""
    assert n >= 1
    grid = FreeGrid(layout)
    visits = walk_visits(rng, len(layout.rooms))
    door_of = {}
    for d in layout.doors:
        a, b = d["between"]
        door_of[(a, b)], door_of[(b, a)] = d, d
    things = [o for o in layout.objects if not o.stuff and o.z == 0.0]
    # the walk as a timeline (time = metres walked at speed 1, plus dwells) and keyframes
    # (time, heading, pitch, on a door crossing)
    timeline_t: list[float] = []
    timeline_xy: list[np.ndarray] = []
    keys: list[tuple] = []
    used_vp: dict[int, list[np.ndarray]] = {r.index: [] for r in layout.rooms}

    def add_leg(pts: np.ndarray, speed: float = 1.0) -> None:
        for p in pts:
            if not timeline_xy:
                timeline_t.append(0.0)
            else:
                timeline_t.append(timeline_t[-1] + float(np.linalg.norm(p - timeline_xy[-1])) / speed)
            timeline_xy.append(np.asarray(p, np.float64))

    def dwell(duration: float) -> None:
        timeline_t.append(timeline_t[-1] + duration)
        timeline_xy.append(timeline_xy[-1])

    def add_key(heading: float, pitch: float, door: bool = False) -> None:
        """A heading / pitch keyframe now; first turn on the spot if the turn since the last key would
        be faster than MAX_TURN_DEG per unit of time."""
        if keys:
            turn = abs((heading - keys[-1][1] + np.pi) % (2 * np.pi) - np.pi)
            need = np.rad2deg(turn) / MAX_TURN_DEG - (timeline_t[-1] - keys[-1][0])
            if need > 0:
                dwell(float(need))
        keys.append((timeline_t[-1], float(heading), float(pitch), door))

    def heading_to(target: np.ndarray) -> float:
        return float(np.arctan2(target[1] - timeline_xy[-1][1], target[0] - timeline_xy[-1][0]))

    def crossing(a: int, b: int) -> tuple[np.ndarray, np.ndarray, float]:
        d = door_of[(a, b)]
        c, nrm = np.array(d["center_xy"]), np.array(d["normal_xy"])
        if d["between"][0] != a:
            nrm = -nrm
        off = HALF_T + APPROACH_M
        return c - nrm * off, c + nrm * off, float(np.arctan2(nrm[1], nrm[0]))

    def viewpoint(room: int, start: np.ndarray) -> np.ndarray:
        """A free point of the room about VP_DIST_M from `start`, away from earlier viewpoints there."""
        cand = np.argwhere((grid.room == room) & (grid.comp == _room_component(grid, layout, room)))
        pick = cand[rng.choice(len(cand), size=min(40, len(cand)), replace=False)]
        pts = np.stack([grid.gx[pick[:, 0], pick[:, 1]], grid.gy[pick[:, 0], pick[:, 1]]], 1)
        score = -np.abs(np.linalg.norm(pts - start, axis=1) - VP_DIST_M) + 0.5 * grid.clear[pick[:, 0], pick[:, 1]]
        near_door = np.min([np.linalg.norm(pts - q, axis=1) for q in door_approaches(layout, room)], axis=0)
        score -= 10.0 * (near_door < VP_DOOR_M)                              # not right at a door
        if used_vp[room]:
            score += np.minimum(np.min([np.linalg.norm(pts - p, axis=1) for p in used_vp[room]], axis=0), 1.5)
        best = pts[int(np.argmax(score))]
        used_vp[room].append(best)
        return best

    def look_target(room: int, at: np.ndarray) -> np.ndarray:
        cand = [o for o in things if o.room == room and 1.4 <= np.hypot(o.x - at[0], o.y - at[1]) <= 4.0]
        if not cand:
            cand = [o for o in things if o.room == room] or things
        area = np.array([o.hx * o.hy for o in cand])
        o = cand[int(rng.choice(len(cand), p=area / area.sum()))]
        return np.array([o.x, o.y])

    pos = None
    for v, room in enumerate(visits):
        if v == 0:
            cand = np.argwhere((grid.room == room) & (grid.comp == _room_component(grid, layout, room)))
            pos = grid.xy(tuple(cand[int(rng.integers(len(cand)))]))
        else:
            _, pos, _ = crossing(visits[v - 1], room)
        n_vp = 1 if len(visits) > 4 else int(rng.integers(1, 3))
        if v == 0:
            add_leg(pos[None])
            add_key(heading_to(look_target(room, pos)), float(np.deg2rad(rng.uniform(*PITCH_LOOK_DEG))))
        legs_to = []
        for _ in range(n_vp):
            legs_to.append(viewpoint(room, legs_to[-1] if legs_to else pos))
        exit_pts = crossing(room, visits[v + 1]) if v + 1 < len(visits) else None
        if exit_pts is not None:
            legs_to.append(exit_pts[0])
        for k, target in enumerate(legs_to):
            a, b = grid.cell_of(pos), grid.cell_of(target)
            pts = np.concatenate([pos[None], grid.path(a, b), target[None]], 0)
            add_leg(_smooth_path(pts))
            pos = target
            if exit_pts is not None and k == len(legs_to) - 1:
                add_key(exit_pts[2], np.deg2rad(PITCH_DOOR_DEG), door=True)
                add_leg(np.stack([exit_pts[0], exit_pts[1]]), SPEED_NEAR_DOOR)
                add_key(exit_pts[2], np.deg2rad(PITCH_DOOR_DEG), door=True)
                pos = exit_pts[1]
            else:
                pitch = float(np.deg2rad(rng.uniform(*PITCH_LOOK_DEG)))
                add_key(heading_to(look_target(room, pos)), pitch)
                dwell(DWELL)
                add_key(heading_to(look_target(room, pos)), pitch)
    t = np.asarray(timeline_t)                                              # [T]
    xy = np.asarray(timeline_xy)                                            # [T, 2]
    assert len(t) == len(xy), (len(t), len(xy))
    total = float(t[-1])
    times = (np.arange(n) + 0.5) / n * total if n > 1 else np.array([0.5 * total])
    eye_xy = np.stack([np.interp(times, t, xy[:, 0]), np.interp(times, t, xy[:, 1])], 1)   # [n, 2]
    # heading and pitch between the keyframes
    k_t = np.array([k[0] for k in keys])
    k_head = np.unwrap(np.array([k[1] for k in keys]))
    k_pitch = np.array([k[2] for k in keys])
    ease = lambda u: u * u * (3 - 2 * u)                                  # noqa: E731 - smoothstep
    heading, pitch = np.empty(n), np.empty(n)
    for i, ti in enumerate(times):
        j = int(np.searchsorted(k_t, ti, side="right")) - 1
        if j < 0:
            heading[i], pitch[i] = k_head[0], k_pitch[0]
        elif j >= len(k_t) - 1:
            heading[i], pitch[i] = k_head[-1], k_pitch[-1]
        else:
            u = ease(np.clip((ti - k_t[j]) / max(k_t[j + 1] - k_t[j], 1e-9), 0.0, 1.0))
            heading[i] = _angle_lerp(k_head[j], k_head[j + 1], u)
            pitch[i] = k_pitch[j] + (k_pitch[j + 1] - k_pitch[j]) * u
    # sway and height bob, except on door crossings (the keys there fix the heading)
    phase = rng.uniform(0.0, 2 * np.pi, 2)
    on_door = np.zeros(n, bool)
    for j in range(len(keys) - 1):
        if keys[j][3] and keys[j + 1][3]:
            on_door |= (times >= k_t[j]) & (times <= k_t[j + 1])
    heading = heading + np.where(on_door, 0.0, np.deg2rad(SWAY_DEG) * np.sin(2 * np.pi * times / SWAY_PERIOD + phase[0]))
    z = float(rng.uniform(*EYE_Z)) + 0.05 * np.sin(2 * np.pi * times / 4.0 + phase[1])
    eyes = np.concatenate([eye_xy, z[:, None]], 1)
    c2ws = np.stack([pose_from_angles(eyes[i], float(heading[i]), float(pitch[i])) for i in range(n)], 0)
    rooms_of = [room_of_point(layout, p) for p in eye_xy]
    # the visit of each frame: the room changes only at door crossings, in the order of `visits`
    visit_of, v = [], 0
    for i, r in enumerate(rooms_of):
        if i > 0 and r != rooms_of[i - 1]:
            v += 1
        visit_of.append(v)
    record = {"visits": [int(r) for r in visits], "visit_of_frame": visit_of,
              "path_length_m": float(np.sum(np.linalg.norm(np.diff(xy, axis=0), axis=1)))}
    return c2ws, [int(r) for r in rooms_of], record


__all__ = ["WALK_FRAMES", "WALK_PRESETS", "FreeGrid", "build_l_sofa", "build_long_table", "build_walk_shell",
           "build_wardrobe", "layout_walk", "place_set", "room_of_point", "walk_rooms", "walk_trajectory",
           "walk_visits"]
