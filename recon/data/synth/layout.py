"""Room shells and furniture layouts for the presets (no rendering here).

A layout is a list of rooms (axis-aligned interior rectangles in metres,
floor top at z = 0) plus a list of SceneObjects: stuff (walls, floors,
ceilings) and things. Things never interpenetrate (checked per primitive,
touching allowed) and rest on the floor or on a table top.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .objects import (BUILDERS, LocalObject, SceneObject, build_box, ceiling_material, floor_material,
                      local_to_world, place, wall_material)
from .primitives import Box, Frustum, obb_penetration, rect_inside

CEIL_H = 2.6        # ceiling height (m)
WALL_T = 0.12       # interior wall thickness (m)
OUTER_T = 0.15      # outer wall thickness (m)
DOOR_W, DOOR_H = 0.9, 2.1
WALL_GAP = 0.02     # gap between furniture and wall (m)
TOUCH_TOL = 1e-4    # penetration below this counts as touching (m)

# yaw that turns an object's local +y (front) into the room for each wall side
_SIDE_YAW = {"S": 0.0, "E": np.pi / 2, "N": np.pi, "W": -np.pi / 2}


@dataclass
class Room:
    index: int
    rect: tuple[float, float, float, float]     # interior x0, y0, x1, y1 (m)
    height: float = CEIL_H

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.rect
        return ((x0 + x1) / 2, (y0 + y1) / 2)


@dataclass
class Layout:
    rooms: list[Room]
    objects: list[SceneObject]                   # stuff first, then things
    doors: list[dict] = field(default_factory=list)
    keepout: list[tuple] = field(default_factory=list)  # OBBs reserved free (door clearance)


# ---------------------------------------------------------------- shell
def _stuff(cls: str, prims: list, mats: list, room: int) -> SceneObject:
    return SceneObject(cls, prims, mats, room, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, stuff=True)


def _abox(x0, x1, y0, y1, z0, z1, skip=()) -> Box:
    return Box(((x0 + x1) / 2, (y0 + y1) / 2, (z0 + z1) / 2), ((x1 - x0) / 2, (y1 - y0) / 2, (z1 - z0) / 2),
               0.0, tuple(skip))


def build_shell(rng: np.random.Generator, rooms: list[Room]) -> tuple[list[SceneObject], list[dict], list]:
    """Floors, ceilings and walls of rooms laid out in a row along +x (shared walls with doors)."""
    objs: list[SceneObject] = []
    doors, keepout = [], []
    n = len(rooms)
    y0, y1 = rooms[0].rect[1], rooms[0].rect[3]
    H = rooms[0].height
    xs_left = [r.rect[0] for r in rooms]
    xs_right = [r.rect[2] for r in rooms]
    all_faces_but_top = ("-z", "+x", "-x", "+y", "-y")
    all_faces_but_bottom = ("+z", "+x", "-x", "+y", "-y")
    for r in rooms:
        x0, ry0, x1, ry1 = r.rect
        # floor / ceiling cover the interior plus half of each shared wall (the doorway strip)
        ext_l = 0.0 if r.index == 0 else WALL_T / 2
        ext_r = 0.0 if r.index == n - 1 else WALL_T / 2
        fx0, fx1, fy0, fy1 = x0 - ext_l, x1 + ext_r, ry0, ry1
        objs.append(_stuff("floor", [_abox(fx0, fx1, fy0, fy1, -0.05, 0.0, all_faces_but_top)],
                           [floor_material(rng)], r.index))
        objs.append(_stuff("ceiling", [_abox(fx0, fx1, fy0, fy1, H, H + 0.05, all_faces_but_bottom)],
                           [ceiling_material(rng)], r.index))
    # outer walls: south / north one segment per room, west / east close the row
    walls = [
        (_abox(xs_left[0] - OUTER_T, xs_left[0], y0, y1, 0.0, H, ("-z", "+z", "-x")), 0),
        (_abox(xs_right[-1], xs_right[-1] + OUTER_T, y0, y1, 0.0, H, ("-z", "+z", "+x")), n - 1),
    ]
    for r in rooms:
        sx0 = r.rect[0] - (OUTER_T if r.index == 0 else WALL_T / 2)
        sx1 = r.rect[2] + (OUTER_T if r.index == n - 1 else WALL_T / 2)
        walls.append((_abox(sx0, sx1, y0 - OUTER_T, y0, 0.0, H, ("-z", "+z", "-y")), r.index))
        walls.append((_abox(sx0, sx1, y1, y1 + OUTER_T, 0.0, H, ("-z", "+z", "+y")), r.index))
    # shared walls with a door opening; each half of the thickness belongs to the room it faces
    for i in range(n - 1):
        xa, xb = xs_right[i], xs_left[i + 1]
        xm = (xa + xb) / 2
        # doors sit near a corner: sight lines through them then mostly end on walls
        if rng.random() < 0.5:
            dy0 = y0 + float(rng.uniform(0.25, 0.45))
        else:
            dy0 = y1 - DOOR_W - float(rng.uniform(0.25, 0.45))
        dy1 = dy0 + DOOR_W
        for (ha, hb, idx, hid) in ((xa, xm, i, "+x"), (xm, xb, i + 1, "-x")):
            walls += [
                (_abox(ha, hb, y0, dy0, 0.0, H, ("-z", "+z", hid)), idx),
                (_abox(ha, hb, dy1, y1, 0.0, H, ("-z", "+z", hid)), idx),
                (_abox(ha, hb, dy0, dy1, DOOR_H, H, ("+z", hid)), idx),
            ]
        doors.append({"between": [i, i + 1], "x": [xa, xb], "y": [dy0, dy1], "z": [0.0, DOOR_H]})
        depth = 0.9
        keepout.append((xa - depth / 2, (dy0 + dy1) / 2, 0.0, depth / 2, DOOR_W / 2 + 0.1, 0.0, H))
        keepout.append((xb + depth / 2, (dy0 + dy1) / 2, 0.0, depth / 2, DOOR_W / 2 + 0.1, 0.0, H))
    wall_mats = [wall_material(rng) for _ in range(n)]
    for b, room_idx in walls:
        objs.append(_stuff("wall", [b], [wall_mats[room_idx]], room_idx))
    return objs, doors, keepout


# ---------------------------------------------------------------- placement helpers
class Placer:
    """Keeps placed things and rejects candidates that interpenetrate or leave their room."""

    def __init__(self, rooms: list[Room], keepout: list):
        self.rooms = rooms
        self.things: list[SceneObject] = []
        self._obbs: list[tuple] = list(keepout)

    def fits(self, obj: SceneObject, room: Room, margin: float = WALL_GAP - 1e-6) -> bool:
        if not rect_inside(obj.obb, room.rect, margin):
            return False
        for a in obj.prim_obbs():
            for b in self._obbs:
                if obb_penetration(a, b) > TOUCH_TOL:
                    return False
        return True

    def add(self, obj: SceneObject) -> SceneObject:
        self.things.append(obj)
        self._obbs.extend(obj.prim_obbs())
        return obj

    def try_add(self, obj: SceneObject, room: Room) -> SceneObject | None:
        return self.add(obj) if self.fits(obj, room) else None


def _wall_pose(room: Room, side: str, along: float, lo: LocalObject, gap: float = WALL_GAP):
    """(x, y, yaw) of an object with its back against wall `side`, `along` in [0, 1] along the wall."""
    x0, y0, x1, y1 = room.rect
    hx, hy = lo.hx, lo.hy
    if side in ("S", "N"):
        x = x0 + gap + hx + along * max(0.0, (x1 - x0) - 2 * (gap + hx))
        y = y0 + gap + hy if side == "S" else y1 - gap - hy
    else:
        y = y0 + gap + hx + along * max(0.0, (y1 - y0) - 2 * (gap + hx))
        x = x0 + gap + hy if side == "W" else x1 - gap - hy
    return x, y, _SIDE_YAW[side]


def place_against_wall(rng, placer: Placer, room: Room, lo: LocalObject, sides=("S", "E", "N", "W"),
                       tries: int = 40) -> SceneObject | None:
    for _ in range(tries):
        side = sides[int(rng.integers(len(sides)))]
        x, y, yaw = _wall_pose(room, side, float(rng.uniform(0.0, 1.0)), lo)
        got = placer.try_add(place(lo, x, y, 0.0, yaw, room.index), room)
        if got is not None:
            return got
    return None


def place_in_corner(rng, placer: Placer, room: Room, lo: LocalObject, tries: int = 8) -> SceneObject | None:
    x0, y0, x1, y1 = room.rect
    for _ in range(tries):
        cx, cy = int(rng.integers(2)), int(rng.integers(2))
        off = WALL_GAP + max(lo.hx, lo.hy) + float(rng.uniform(0.0, 0.1))
        x = x0 + off if cx == 0 else x1 - off
        y = y0 + off if cy == 0 else y1 - off
        got = placer.try_add(place(lo, x, y, 0.0, float(rng.uniform(-np.pi, np.pi)), room.index), room)
        if got is not None:
            return got
    return None


def place_table_group(rng, placer: Placer, room: Room, center: tuple[float, float], jitter: float,
                      n_chairs: tuple[int, int] = (2, 4), force_rect: bool = False,
                      tries: int = 30) -> tuple[SceneObject | None, list[SceneObject]]:
    """A table near `center` plus chairs facing it (some pushed in, some touching its edge)."""
    table = None
    for _ in range(tries):
        lo = BUILDERS["table"](rng)
        if force_rect and isinstance(lo.prims[0], Frustum):
            continue
        yaw = float(rng.choice([0.0, np.pi / 2]))
        if rng.random() < 0.5:
            yaw += float(rng.normal(0.0, np.deg2rad(12.0)))
        x = center[0] + float(rng.uniform(-jitter, jitter))
        y = center[1] + float(rng.uniform(-jitter, jitter))
        table = placer.try_add(place(lo, x, y, 0.0, yaw, room.index), room)
        if table is not None:
            break
    if table is None:
        return None, []
    # candidate chair slots: (outward unit in table frame, lateral offset)
    round_top = isinstance(table.prims[0], Frustum)
    slots = [((0.0, 1.0), 0.0), ((0.0, -1.0), 0.0), ((1.0, 0.0), 0.0), ((-1.0, 0.0), 0.0)]
    if not round_top and table.hx > 0.62:
        off = table.hx / 2
        slots += [((0.0, 1.0), -off), ((0.0, 1.0), off), ((0.0, -1.0), -off), ((0.0, -1.0), off)]
    order = rng.permutation(len(slots))
    want = int(rng.integers(n_chairs[0], n_chairs[1] + 1))
    chairs: list[SceneObject] = []
    for k in order:
        if len(chairs) >= want:
            break
        (ux, uy), lat = slots[k]
        lo = BUILDERS["chair"](rng)
        e = table.hx if ux != 0 else table.hy
        rel_yaw = {(0.0, 1.0): np.pi, (0.0, -1.0): 0.0, (1.0, 0.0): np.pi / 2, (-1.0, 0.0): -np.pi / 2}[(ux, uy)]
        mode = rng.random()
        dists = []
        if mode < 0.35 and not round_top:
            dists.append(e - lo.hy + 0.04)                   # pushed in: back touches the table top
        if mode < 0.7:
            dists.append(e + lo.hy)                          # seat front touching the table edge
        dists.append(e + lo.hy + float(rng.uniform(0.05, 0.2)))
        for dist in dists:
            px, py = ux * dist + (-uy) * lat, uy * dist + ux * lat
            wx, wy = local_to_world(table.x, table.y, table.yaw, px, py)
            got = placer.try_add(place(lo, wx, wy, 0.0, table.yaw + rel_yaw, room.index), room)
            if got is not None:
                chairs.append(got)
                break
    return table, chairs


def place_on_table(rng, placer: Placer, table: SceneObject, classes: list[str],
                   touch_prob: float = 0.6, tries: int = 30) -> list[SceneObject]:
    """Small objects resting on a table top, often touching the previous one."""
    round_top = isinstance(table.prims[0], Frustum)
    inset = 0.04
    ex = (table.hx / np.sqrt(2.0) if round_top else table.hx) - inset
    ey = (table.hy / np.sqrt(2.0) if round_top else table.hy) - inset
    top_z = table.z + table.height
    out: list[SceneObject] = []
    prev = None  # (lx, ly, hx, hy, rel_yaw) in the table frame
    for cls in classes:
        lo = build_box(rng, small=True) if cls == "box" else BUILDERS[cls](rng)
        for _ in range(tries):
            rel = float(rng.choice([0.0, np.pi / 2]))
            hx, hy = (lo.hx, lo.hy) if rel == 0.0 else (lo.hy, lo.hx)
            if prev is not None and rng.random() < touch_prob:
                px, py, phx, phy = prev
                side = int(rng.integers(4))
                if side < 2:
                    lx = px + (1 if side == 0 else -1) * (phx + hx)
                    ly = py + float(rng.uniform(-0.5, 0.5)) * max(0.0, phy - hy + 0.02)
                else:
                    ly = py + (1 if side == 2 else -1) * (phy + hy)
                    lx = px + float(rng.uniform(-0.5, 0.5)) * max(0.0, phx - hx + 0.02)
            else:
                lx = float(rng.uniform(-ex + hx, ex - hx)) if ex > hx else 0.0
                ly = float(rng.uniform(-ey + hy, ey - hy)) if ey > hy else 0.0
            if abs(lx) + hx > ex + 1e-9 or abs(ly) + hy > ey + 1e-9:
                continue
            wx, wy = local_to_world(table.x, table.y, table.yaw, lx, ly)
            obj = place(lo, wx, wy, top_z, table.yaw + rel, table.room)
            if placer.fits(obj, placer.rooms[table.room]):
                out.append(placer.add(obj))
                prev = (lx, ly, hx, hy)
                break
    return out


def place_box_by(rng, placer: Placer, room: Room, anchor: SceneObject, tries: int = 10) -> SceneObject | None:
    """A floor box touching the side of `anchor` (e.g. a cabinet), aligned with it."""
    for _ in range(tries):
        lo = build_box(rng)
        sgn = 1.0 if rng.random() < 0.5 else -1.0
        lx = sgn * (anchor.hx + lo.hx)
        ly = anchor.hy - lo.hy - float(rng.uniform(0.0, max(0.0, 2 * anchor.hy - 2 * lo.hy)))
        wx, wy = local_to_world(anchor.x, anchor.y, anchor.yaw, lx, ly)
        got = placer.try_add(place(lo, wx, wy, 0.0, anchor.yaw, room.index), room)
        if got is not None:
            return got
    return None


def _furnish_walls(rng, placer: Placer, room: Room, kinds: list[str]) -> None:
    for kind in kinds:
        if kind == "lamp":
            place_in_corner(rng, placer, room, BUILDERS["lamp"](rng))
        elif kind == "cabinet+box":
            cab = place_against_wall(rng, placer, room, BUILDERS["cabinet"](rng))
            if cab is not None:
                place_box_by(rng, placer, room, cab)
        elif kind == "box":
            place_against_wall(rng, placer, room, build_box(rng))
        else:
            place_against_wall(rng, placer, room, BUILDERS[kind](rng))


# ---------------------------------------------------------------- presets
def _finish(rooms, shell, doors, keepout, placer) -> Layout:
    things = placer.things
    order = sorted(range(len(things)), key=lambda i: things[i].room)  # stable: room-major
    return Layout(rooms, shell + [things[i] for i in order], doors, keepout)


def layout_room(rng: np.random.Generator) -> Layout:
    w, d = float(rng.uniform(4.6, 5.4)), float(rng.uniform(3.7, 4.3))
    rooms = [Room(0, (0.0, 0.0, w, d))]
    shell, doors, keepout = build_shell(rng, rooms)
    placer = Placer(rooms, keepout)
    room = rooms[0]
    table, _ = place_table_group(rng, placer, room, room.center, 0.25, (2, 3))
    if table is not None:
        n_small = int(rng.integers(1, 3))
        cls = [str(rng.choice(["bottle", "box"]))] + [str(c) for c in rng.choice(["bottle", "book", "box"], n_small)]
        place_on_table(rng, placer, table, cls)
    _furnish_walls(rng, placer, room, ["sofa", "shelf", "cabinet+box", "lamp"])
    for kind in ("box", "chair", "box", "box"):       # top up to about ten things
        if len(placer.things) >= 10:
            break
        _furnish_walls(rng, placer, room, [kind])
    return _finish(rooms, shell, doors, keepout, placer)


def layout_apartment(rng: np.random.Generator) -> Layout:
    n_rooms = int(rng.integers(2, 4))
    depth = float(rng.uniform(3.8, 4.5))
    rooms, x = [], 0.0
    for i in range(n_rooms):
        w = float(rng.uniform(3.9, 5.0))
        rooms.append(Room(i, (x, 0.0, x + w, depth)))
        x += w + WALL_T
    shell, doors, keepout = build_shell(rng, rooms)
    placer = Placer(rooms, keepout)
    # table + chairs repeat in every room (the cross-room ambiguity case); the other classes are
    # dealt out so that rooms mostly differ, which keeps cross-room co-visibility resolvable
    extra = [["sofa", "shelf", "cabinet+box", "lamp"][i] for i in rng.permutation(4)]
    small = [["bottle", "book", "box"][i] for i in rng.permutation(3)]
    if "cabinet+box" in extra[:n_rooms] or n_rooms == 2:
        small = [c for c in small if c != "box"]
    for room in rooms:
        table, _ = place_table_group(rng, placer, room, room.center, 0.2, (2, 3))
        if table is not None:
            cls = small[room.index % len(small)]
            place_on_table(rng, placer, table, [cls] * int(rng.integers(1, 3)))
        _furnish_walls(rng, placer, room, extra[room.index::n_rooms])
    return _finish(rooms, shell, doors, keepout, placer)


def layout_clutter(rng: np.random.Generator) -> Layout:
    w, d = float(rng.uniform(5.4, 6.0)), float(rng.uniform(4.6, 5.0))
    rooms = [Room(0, (0.0, 0.0, w, d))]
    shell, doors, keepout = build_shell(rng, rooms)
    placer = Placer(rooms, keepout)
    room = rooms[0]
    n_tables = int(rng.integers(2, 4))
    cx, cy = room.center
    if n_tables == 2:
        centers = [(cx - 0.95, cy), (cx + 0.95, cy)]
    else:
        centers = [(cx - 0.95, cy - 0.6), (cx + 0.95, cy - 0.6), (cx, cy + 0.75)]
    tables = []
    for c in centers:
        table, _ = place_table_group(rng, placer, room, c, 0.1, (0, 1), force_rect=True)
        if table is not None:
            tables.append(table)
    for table in tables:
        n_small = int(rng.integers(5, 9))
        cls = [str(c) for c in rng.choice(["box", "bottle", "book"], n_small)]
        place_on_table(rng, placer, table, cls, touch_prob=0.85)
    _furnish_walls(rng, placer, room, ["cabinet+box", "shelf", "sofa"])
    return _finish(rooms, shell, doors, keepout, placer)


LAYOUTS = {"room": layout_room, "apartment": layout_apartment, "clutter": layout_clutter}
