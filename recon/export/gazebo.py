"""Gazebo export: a self-contained folder with an SDFormat world and one static model per part.

OUT/
  world.sdf                      light, ground plane, one <include> per model (pose = the model's origin)
  models/<name>/model.config     Gazebo model manifest
  models/<name>/model.sdf        static model: link 'link' with visual (OBJ + MTL + PNG texture holding the
                                 vertex colours) and collision (simplified OBJ, see collision.py)
  models/<name>/meshes/          visual.obj, visual.mtl, visual.png, collision.obj
  export.json, README.md

Names: a thing instance is '<class>_<id>' (instances.json id), the stuff is 'environment'. Each model also
carries <recon:instance class=".." class_id=".." instance_id=".." score=".."/> (environment:
<recon:environment classes=".."/>), a custom element in the namespace NAMESPACE that SDFormat parsers keep
and do not validate. Frame: Gazebo is z-up; every vertex is mapped from the scene frame by the rigid
A of frames.py (floor at z = 0). A thing model's origin is its instance centroid (after A) and its meshes
are in model-local coordinates (vertex - origin); the environment's origin is the world origin.
The ground plane lies GROUND_BELOW_FLOOR_M under the floor so that it does not z-fight the reconstructed
floor. SDF version 1.7: read by Gazebo Classic 11 (libsdformat 9) and Gazebo Sim (libsdformat >= 12).
"""
from __future__ import annotations

import re
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import numpy as np
from tqdm import tqdm

from recon.core.io import atomic_write_text
from recon.export.collision import collision_mesh
from recon.export.frames import UpFrame, apply_transform
from recon.export.meshes import write_obj
from recon.export.run_data import Part, RunMesh

SDF_VERSION = "1.7"
NAMESPACE = "urn:panoptic-recon:export:1"
GROUND_BELOW_FLOOR_M = 0.005


def _num(x: float) -> str:
    s = f"{float(x):.6f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _vec(v) -> str:
    return " ".join(_num(x) for x in v)


def _geometry_element(tag: str, shape: str, indent: str) -> str:
    """A link's <visual> or <collision> element (tag, also its name) around one geometry `shape` (XML lines
    indented relative to the shape element); every line starts with `indent` and ends with a newline."""
    lines = [f'<{tag} name="{tag}">', "  <geometry>", *("    " + s for s in shape.splitlines()), "  </geometry>",
             f"</{tag}>"]
    return "".join(f"{indent}{s}\n" for s in lines)


def _mesh_shape(uri: str) -> str:
    return f"<mesh>\n  <uri>{escape(uri)}</uri>\n</mesh>"


PLANE_SHAPE = "<plane>\n  <normal>0 0 1</normal>\n  <size>100 100</size>\n</plane>"  # the 100 m x 100 m ground


def model_sdf(part: Part, stuff_names: list[str]) -> str:
    """model.sdf text of one static model whose meshes live in model://<name>/meshes/."""
    n = part.name
    if part.instance_id > 0:
        attrs = [("class", part.class_name), ("class_id", str(part.class_id)), ("instance_id", str(part.instance_id))]
        if part.score is not None:
            attrs.append(("score", f"{part.score:.4f}"))
        tag = "<recon:instance " + " ".join(f"{k}={quoteattr(v)}" for k, v in attrs) + "/>"
    else:
        tag = f"<recon:environment classes={quoteattr(','.join(stuff_names))}/>"
    uri = f"model://{n}/meshes"
    visual = _geometry_element("visual", _mesh_shape(f"{uri}/visual.obj"), " " * 6)
    collision = _geometry_element("collision", _mesh_shape(f"{uri}/collision.obj"), " " * 6)
    return f"""<?xml version="1.0"?>
<sdf version="{SDF_VERSION}" xmlns:recon="{NAMESPACE}">
  <model name={quoteattr(n)}>
    <static>true</static>
    {tag}
    <link name="link">
{visual}{collision}    </link>
  </model>
</sdf>
"""


def model_config(part: Part, run_name: str) -> str:
    if part.instance_id > 0:
        desc = (f"{part.class_name} (class id {part.class_id}), instance {part.instance_id} of run {run_name}; "
                "static; origin at the instance centroid")
    else:
        desc = f"stuff (floor, walls, ceiling, unassigned surfaces) of run {run_name}; static"
    return f"""<?xml version="1.0"?>
<model>
  <name>{escape(part.name)}</name>
  <version>1.0</version>
  <sdf version="{SDF_VERSION}">model.sdf</sdf>
  <author>
    <name>panoptic-recon export</name>
  </author>
  <description>{escape(desc)}</description>
</model>
"""


def world_sdf(world_name: str, includes: list[tuple[str, np.ndarray]], frame: UpFrame) -> str:
    """world.sdf text: light, ground plane, and one include per (model name, origin xyz [3])."""
    inc = "".join(f"""    <include>
      <uri>model://{escape(name)}</uri>
      <name>{escape(name)}</name>
      <pose>{_vec(origin)} 0 0 0</pose>
    </include>
""" for name, origin in includes)
    A = " ".join(_num(x) for x in frame.transform.reshape(-1))
    ground = _geometry_element("collision", PLANE_SHAPE, " " * 8) + _geometry_element("visual", PLANE_SHAPE, " " * 8)
    return f"""<?xml version="1.0"?>
<!-- panoptic-recon export. Frame: z up, metres, floor at z = 0; world = A * scene (row-major 4x4 A in
     recon:frame below and in export.json). Models: GZ_SIM_RESOURCE_PATH (or GAZEBO_MODEL_PATH) = models/ -->
<sdf version="{SDF_VERSION}" xmlns:recon="{NAMESPACE}">
  <world name={quoteattr(world_name)}>
    <recon:frame scene_to_world={quoteattr(A)} up_source={quoteattr(frame.source)}/>
    <gravity>0 0 -9.81</gravity>
    <scene>
      <ambient>0.6 0.6 0.6 1</ambient>
      <background>0.8 0.8 0.8 1</background>
      <shadows>false</shadows>
    </scene>
    <light type="directional" name="sun">
      <cast_shadows>false</cast_shadows>
      <pose>0 0 10 0 0 0</pose>
      <diffuse>0.8 0.8 0.8 1</diffuse>
      <specular>0.1 0.1 0.1 1</specular>
      <direction>-0.3 0.2 -0.9</direction>
    </light>
    <model name="ground_plane">
      <static>true</static>
      <pose>0 0 {_num(-GROUND_BELOW_FLOOR_M)} 0 0 0</pose>
      <link name="link">
{ground}      </link>
    </model>
{inc}  </world>
</sdf>
"""


README = """# Gazebo export of a panoptic-recon run

Run with Gazebo Sim (Harmonic and later):

    GZ_SIM_RESOURCE_PATH=$PWD/models gz sim world.sdf

or Gazebo Classic 11:

    GAZEBO_MODEL_PATH=$PWD/models gazebo world.sdf

Every thing instance is a static model named `<class>_<id>` (the id of the run's instances.json) with a
`<recon:instance class=".." class_id=".." instance_id=".."/>` element ({ns}); the stuff (floor, walls,
ceiling) is the static model `environment`. Visual meshes: OBJ with the reconstruction's colours baked into
a PNG texture (and as OBJ vertex colours). Collision meshes: simplified to at most {faces} faces each;
export.json lists the method and whether each is closed.

Frame: z up, metres, floor at z = 0, ground plane {below} m under the floor. world = A * scene with
A = export.json "frame"."scene_to_export" (found by: {source}).
"""


def write_gazebo(out: Path, mesh: RunMesh, parts: list[Part], frame: UpFrame, colors: np.ndarray,
                 collision_faces: int, log=print) -> dict:
    """Write the folder layout of the module docstring into `out` (an empty folder); returns the manifest
    entries for export.json ('world', 'models')."""
    out = Path(out)
    models_dir = out / "models"
    A = frame.transform
    stuff = sorted({mesh.legend[c].name for c in np.unique(mesh.semantic).tolist()
                    if c in mesh.legend and not mesh.legend[c].thing and c != 0})
    includes, entries = [], []
    for part in tqdm(parts, desc="gazebo models", dynamic_ncols=True, disable=len(parts) < 2):
        mdir = models_dir / part.name
        (mdir / "meshes").mkdir(parents=True, exist_ok=True)
        world_v = apply_transform(A, mesh.vertices[part.vertex_index])  # [Vp, 3] z-up world
        thing = part.instance_id > 0
        origin = apply_transform(A, part.centroid[None])[0] if thing else np.zeros(3)
        local = world_v - origin
        write_obj(mdir / "meshes" / "visual.obj", local, part.faces, colors=colors[part.vertex_index], texture=True)
        col = collision_mesh(local, part.faces, collision_faces, thing=thing)
        write_obj(mdir / "meshes" / "collision.obj", col.vertices, col.faces, normals=False)
        atomic_write_text(mdir / "model.sdf", model_sdf(part, stuff))
        atomic_write_text(mdir / "model.config", model_config(part, mesh.run.name))
        includes.append((part.name, origin))
        entries.append({"name": part.name, "instance_id": part.instance_id, "class_id": part.class_id,
                        "class": part.class_name, "score": part.score, "origin_xyz": [round(float(x), 6) for x in origin],
                        "visual": f"models/{part.name}/meshes/visual.obj", "visual_faces": int(len(part.faces)),
                        "collision": f"models/{part.name}/meshes/collision.obj",
                        "collision_faces": int(len(col.faces)), "collision_method": col.method,
                        "collision_closed": bool(col.closed)})
        log(f"export: {part.name}: {len(part.faces)} visual faces, collision {len(col.faces)} faces "
            f"({col.method}{', closed' if col.closed else ', open'})")
    world_name = re.sub(r"[^A-Za-z0-9_-]", "_", str(mesh.scene_meta.get("name") or mesh.run.name)) or "scene"
    atomic_write_text(out / "world.sdf", world_sdf(world_name, includes, frame))
    atomic_write_text(out / "README.md", README.format(ns=NAMESPACE, faces=collision_faces,
                                                       below=GROUND_BELOW_FLOOR_M, source=frame.source))
    return {"world": "world.sdf", "ground_plane_z_m": -GROUND_BELOW_FLOOR_M, "models": entries}
