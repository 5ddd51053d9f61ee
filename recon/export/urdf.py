"""URDF export: the room and its objects as one fixed 'robot' for ROS tools, PyBullet, MuJoCo's and Isaac Sim's
URDF importers.

OUT/
  <world>.urdf                      one robot: link 'environment' is the base; one link per thing instance
                                    '<class>_<id>', attached to it by a fixed joint '<class>_<id>_joint'
  meshes/<name>/visual.obj          visual mesh (link-local metres) with vertex colours and their baked
                                    texture (visual.mtl, visual.png; meshes.py), as for Gazebo
  meshes/<name>/collision.obj       collision mesh (collision.py), or collision_NNN.obj: one file per convex
                                    piece with `--collision coacd` (one <collision> element each)
  export.json, README.md

Mesh filenames are relative to the URDF file (plain relative paths, which urdfdom, yourdfpy, PyBullet and
Isaac Sim's importer resolve against the URDF's folder; no ROS package needed). Frame: the base link's frame
is the export frame (z up, metres, floor at z = 0: A of frames.py, in export.json). A thing link's frame is
its instance centroid (joint origin xyz = centroid, rpy = 0) and its meshes are in link-local coordinates
(vertex - centroid), so a link's world pose is a pure translation. Every joint is 'fixed': import with a
fixed base (PyBullet useFixedBase=True; Isaac Sim: "Fix Base Link", and leave "Merge Fixed Joints" off to
keep one prim per object). Each visual has a <material> whose <color> is the mean export colour of the part
(renderers that ignore the OBJ's texture show it). Links carry no <inertial>: nothing moves. The class,
class id and instance id of each link are in an XML comment above it and in export.json (URDF has no
element for them).
"""
from __future__ import annotations

import re
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np
from tqdm import tqdm

from recon.core.io import atomic_write_text
from recon.export.collision import collision_mesh
from recon.export.frames import UpFrame, apply_transform
from recon.export.meshes import write_obj
from recon.export.run_data import Part, RunMesh

BASE_LINK = "environment"


def _num(x: float) -> str:
    s = f"{float(x):.6f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _vec(v) -> str:
    return " ".join(_num(x) for x in v)


def mean_rgba(colors: np.ndarray) -> tuple[float, float, float, float]:
    """Mean of 8-bit colours [N, 3] as URDF rgba in [0, 1] (alpha 1)."""
    c = np.asarray(colors, np.float64).reshape(-1, 3)
    m = c.mean(axis=0) / 255.0 if len(c) else np.full(3, 0.7)
    return float(m[0]), float(m[1]), float(m[2]), 1.0


def link_xml(name: str, visual: str, collisions: list[str], rgba: tuple, comment: str) -> str:
    """One <link> with a visual mesh and one <collision> per mesh file (paths relative to the URDF)."""
    cols = "".join(f"""    <collision name={quoteattr(f"{name}_collision_{k}")}>
      <origin xyz="0 0 0" rpy="0 0 0"/>
      <geometry>
        <mesh filename={quoteattr(c)}/>
      </geometry>
    </collision>
""" for k, c in enumerate(collisions))
    safe_comment = comment.replace("--", "- -")  # '--' may not appear inside an XML comment
    return f"""  <!-- {safe_comment} -->
  <link name={quoteattr(name)}>
    <visual name={quoteattr(f"{name}_visual")}>
      <origin xyz="0 0 0" rpy="0 0 0"/>
      <geometry>
        <mesh filename={quoteattr(visual)}/>
      </geometry>
      <material name={quoteattr(f"{name}_colour")}>
        <color rgba="{_vec(rgba)}"/>
      </material>
    </visual>
{cols}  </link>
"""


def joint_xml(child: str, origin: np.ndarray) -> str:
    """A fixed joint from the base link to `child` at `origin` [3] (export frame, no rotation)."""
    return f"""  <joint name={quoteattr(f"{child}_joint")} type="fixed">
    <parent link={quoteattr(BASE_LINK)}/>
    <child link={quoteattr(child)}/>
    <origin xyz="{_vec(origin)}" rpy="0 0 0"/>
  </joint>
"""


README = """# URDF export of a panoptic-recon run

`{urdf}`: one robot; base link `environment` (floor, walls, ceiling, unassigned surfaces) and one link
`<class>_<id>` per object (the id of the run's instances.json), each attached by a fixed joint at the
object's centroid. Meshes: `meshes/<name>/`, paths relative to the URDF. Collision: {collision}.
Frame: z up, metres, floor at z = 0 (export.json "frame").

PyBullet:  p.loadURDF("{urdf}", useFixedBase=True)
yourdfpy:  yourdfpy.URDF.load("{urdf}").show()
Isaac Sim: File > Import (URDF), "Fix Base Link" on, "Merge Fixed Joints" off.
"""


def write_urdf(out: Path, mesh: RunMesh, parts: list[Part], frame: UpFrame, colors: np.ndarray,
               collision_faces: int, log=print) -> dict:
    """Write the layout of the module docstring into `out` (an empty folder); returns the manifest entries for
    export.json ('urdf', 'links')."""
    out = Path(out)
    A = frame.transform
    robot = re.sub(r"[^A-Za-z0-9_-]", "_", str(mesh.scene_meta.get("name") or mesh.run.name)) or "scene"
    links, joints, entries = [], [], []
    ordered = sorted(parts, key=lambda p: p.instance_id > 0)  # the base link first
    if not ordered or ordered[0].instance_id != 0:  # every face belongs to an object: an empty base link
        links.append(f"  <!-- no surface outside the objects: an empty base link -->\n  <link name=\"{BASE_LINK}\"/>\n")
    for part in tqdm(ordered, desc="urdf links", dynamic_ncols=True, disable=len(parts) < 2):
        thing = part.instance_id > 0
        mdir = out / "meshes" / part.name
        mdir.mkdir(parents=True, exist_ok=True)
        world_v = apply_transform(A, mesh.vertices[part.vertex_index])  # [Vp, 3] export frame
        origin = apply_transform(A, part.centroid[None])[0] if thing else np.zeros(3)
        local = world_v - origin
        col_v = colors[part.vertex_index]
        write_obj(mdir / "visual.obj", local, part.faces, colors=col_v, texture=True)
        col = collision_mesh(local, part.faces, collision_faces, thing=thing)
        pieces = col.pieces
        files = []
        for k, (pv, pf) in enumerate(pieces):
            fname = "collision.obj" if len(pieces) == 1 else f"collision_{k:03d}.obj"
            write_obj(mdir / fname, pv, pf, normals=False)
            files.append(f"meshes/{part.name}/{fname}")
        if thing:
            comment = (f"class {part.class_name!r} (class id {part.class_id}), instance {part.instance_id}"
                       + (f", score {part.score:.4f}" if part.score is not None else ""))
        else:
            comment = "the stuff: floor, walls, ceiling and surfaces of no listed instance (base link)"
        links.append(link_xml(part.name, f"meshes/{part.name}/visual.obj", files, mean_rgba(col_v), comment))
        if thing:
            joints.append(joint_xml(part.name, origin))
        entries.append({"name": part.name, "link": part.name, "joint": f"{part.name}_joint" if thing else None,
                        "instance_id": part.instance_id, "class_id": part.class_id, "class": part.class_name,
                        "score": part.score, "origin_xyz": [round(float(x), 6) for x in origin],
                        "visual": f"meshes/{part.name}/visual.obj", "visual_faces": int(len(part.faces)),
                        "collision": files, "collision_faces": int(len(col.faces)), "collision_method": col.method,
                        "collision_closed": bool(col.closed)})
        log(f"export: {part.name}: {len(part.faces)} visual faces, collision {len(col.faces)} faces in "
            f"{len(files)} file(s) ({col.method}{', closed' if col.closed else ', open'})")
    A_txt = " ".join(_num(x) for x in A.reshape(-1))
    text = (f'<?xml version="1.0"?>\n<!-- panoptic-recon export. Frame: z up, metres, floor at z = 0; world = A * '
            f'scene with row-major A = {A_txt} -->\n<robot name={quoteattr(robot)}>\n'
            + "".join(links) + "".join(joints) + "</robot>\n")
    urdf_name = f"{robot}.urdf"
    atomic_write_text(out / urdf_name, text)
    coacd = any(e["collision_method"] == "coacd" for e in entries)
    note = ("convex pieces from CoACD, one <collision> each" if coacd
            else f"simplified meshes of at most {collision_faces} faces")
    atomic_write_text(out / "README.md", README.format(urdf=urdf_name, collision=note))
    return {"urdf": urdf_name, "base_link": BASE_LINK, "links": entries}
