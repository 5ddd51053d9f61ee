"""PLY / OBJ / GLB export of the panoptic mesh: the whole mesh plus one file per part.

OUT/panoptic.<ext>              the whole mesh (GLB: one node per part)
OUT/instances/<name>.<ext>      one file per thing instance ('<class>_<id>') and 'environment'
OUT/export.json

Frames: PLY and OBJ keep the run's scene frame (they overlay RUN/mesh.ply exactly). GLB follows glTF 2.0
(+y up): a node's world position is Y A p (A: frames.py, z-up with the floor at z = 0; Y = Z_UP_TO_Y_UP);
a node's transform is a pure translation to its origin (instance centroid; the environment at 0) and its
mesh is node-local. PLY files keep the integer vertex properties `semantic` and `instance` (instance ids
not listed in instances.json are 0). OBJ: vertex colours as 'v x y z r g b' plus a baked texture
(meshes.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from recon.core.io import atomic_write_bytes
from recon.export.frames import Z_UP_TO_Y_UP, UpFrame, apply_transform
from recon.export.meshes import glb_bytes, write_obj
from recon.export.run_data import Part, RunMesh
from recon.data.ply import write_ply

MESH_FORMATS = ("ply", "obj", "glb")


def gltf_transform(frame: UpFrame) -> np.ndarray:
    """[4, 4] scene -> glTF world (+y up)."""
    Y = np.eye(4)
    Y[:3, :3] = Z_UP_TO_Y_UP
    return Y @ frame.transform


def _glb_entries(mesh: RunMesh, parts: list[Part], colors: np.ndarray, G: np.ndarray) -> list[tuple]:
    entries = []
    for p in parts:
        world = apply_transform(G, mesh.vertices[p.vertex_index])
        origin = apply_transform(G, p.centroid[None])[0] if p.instance_id > 0 else np.zeros(3)
        M = np.eye(4)
        M[:3, 3] = origin
        entries.append((p.name, world - origin, p.faces, colors[p.vertex_index], M))
    return entries


def _write_one(path: Path, fmt: str, v: np.ndarray, f: np.ndarray, col: np.ndarray, sem: np.ndarray,
               inst: np.ndarray) -> None:
    if fmt == "ply":
        write_ply(path, v, f, vertex_props={"semantic": sem.astype(np.int32), "instance": inst.astype(np.int32)},
                  colors=col)
    else:
        write_obj(path, v, f, colors=col, texture=True)


def write_mesh_files(out: Path, fmt: str, mesh: RunMesh, parts: list[Part], frame: UpFrame, colors: np.ndarray,
                     log=print) -> dict:
    """Write the layout of the module docstring into `out`; returns manifest entries for export.json."""
    assert fmt in MESH_FORMATS, fmt
    out = Path(out)
    (out / "instances").mkdir(parents=True, exist_ok=True)
    whole = out / f"panoptic.{fmt}"
    entries = []
    if fmt == "glb":
        G = gltf_transform(frame)
        glb = _glb_entries(mesh, parts, colors, G)
        atomic_write_bytes(whole, glb_bytes(glb))
        for p, e in zip(tqdm(parts, desc="glb parts", dynamic_ncols=True, disable=len(parts) < 2), glb):
            atomic_write_bytes(out / "instances" / f"{p.name}.glb", glb_bytes([e]))
        frame_note = {"scene_to_file": [[round(float(x), 9) for x in row] for row in G],
                      "convention": "glTF +y up; node world = scene_to_file * scene point"}
    else:
        _write_one(whole, fmt, mesh.vertices, mesh.faces, colors, mesh.semantic, mesh.instance)
        for p in tqdm(parts, desc=f"{fmt} parts", dynamic_ncols=True, disable=len(parts) < 2):
            vi = p.vertex_index
            _write_one(out / "instances" / f"{p.name}.{fmt}", fmt, mesh.vertices[vi], p.faces, colors[vi],
                       mesh.semantic[vi], mesh.instance[vi])
        frame_note = {"scene_to_file": np.eye(4).tolist(), "convention": "the run's scene frame, unchanged"}
    for p in parts:
        entries.append({"name": p.name, "instance_id": p.instance_id, "class_id": p.class_id, "class": p.class_name,
                        "score": p.score, "faces": int(len(p.faces)), "file": f"instances/{p.name}.{fmt}"})
    log(f"export: {whole} ({len(mesh.faces)} faces) and {len(parts)} part files in {out / 'instances'}")
    return {"mesh": whole.name, "file_frame": frame_note, "parts": entries}
