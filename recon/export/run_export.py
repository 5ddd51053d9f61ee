"""Export a fitted run for simulators and 3D tools:
`python run.py export --run RUN --format gazebo|usd|urdf|ply|glb|obj [--collision auto|coacd]`.

Entry point: `export_run(run, fmt, out=None, collision_faces=2000, color_by="rgb", collision="auto",
rigid_bodies=False, log=print) -> Path`.
Modules: run_data (read and partition the run), frames (gravity alignment), meshes (colours, texture bake,
OBJ/GLB writers), collision (collision meshes: simplified, or CoACD convex pieces), gazebo (SDFormat world +
models), usd (one OpenUSD stage for Isaac Sim, with semantic labels and PhysX colliders), urdf (one fixed
robot, a link per object), mesh_files (PLY/OBJ/GLB files). The output folder is built next to OUT and
swapped in when complete; an existing OUT is replaced only if it holds a previous export (export.json).
The simulator formats (gazebo, usd, urdf) take `collision` (collision.py's COLLISION_MODES); usd and urdf
refuse a run without thing instances (there would be nothing but the room: use gazebo or a mesh format).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from recon.core.faults import fault_point
from recon.core.io import atomic_write_text, staged_dir
from recon.core.runfolder import writes_run
from recon.export.collision import COACD_PARAMS, COLLISION_MODES, MIN_FACES, collision_mode
from recon.export.frames import UpFrame, find_up_frame, is_floor_name
from recon.export.meshes import COLOR_MODES, vertex_colors
from recon.export.run_data import ExportError, RunMesh, load_run, split_parts

FORMATS = ("gazebo", "usd", "urdf", "ply", "glb", "obj")
SIM_FORMATS = ("gazebo", "usd", "urdf")  # the formats with collision shapes

def run_up_frame(mesh: RunMesh) -> UpFrame:
    """The gravity frame of a run (rules in frames.py) from its floor vertices, scene.json and cameras."""
    floor_ids = [c.id for c in mesh.legend.values() if is_floor_name(c.name)]
    floor_mask = np.isin(mesh.semantic, floor_ids) if floor_ids else None
    meta = mesh.scene_meta
    declared = meta.get("up_axis")
    floor_z = None
    if declared is not None:
        gen = meta.get("generator")
        floor_z = meta.get("floor_z", gen.get("floor_z") if isinstance(gen, dict) else None)
    try:
        return find_up_frame(mesh.vertices, floor_mask, mesh.cam_c2w, declared,
                             None if floor_z is None else float(floor_z))
    except ValueError as exc:
        raise ExportError(f"{mesh.scene_dir}/scene.json: {exc}") from None


def _check_dependencies(fmt: str, collision: str) -> None:
    """Fail before any work when a package the export needs is missing (the message says how to install it)."""
    need = {"usd": [("pxr", "usd-core")], "urdf": []}.get(fmt, [])
    if collision == "coacd":
        need.append(("coacd", "coacd"))
    for module, package in need:
        try:
            __import__(module)
        except ImportError as exc:
            raise ExportError(f"--format {fmt} --collision {collision} needs the Python package {package!r} "
                              f"({exc}); install the project's pinned requirements: "
                              f".venv/bin/pip install -r requirements.txt") from None


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "export.json").is_file():
        raise FileExistsError(f"{out} exists, is not empty and holds no previous export (export.json); "
                              "choose another --out")


def _make_readable(folder: Path) -> None:
    """The atomic writers create 0600 files; give an export the usual permissions (0644 / 0755 under the umask)
    so that a simulator running as another user (e.g. in a container) can read it."""
    mask = os.umask(0)
    os.umask(mask)
    for p in [folder, *folder.rglob("*")]:
        p.chmod((0o755 if p.is_dir() else 0o644) & ~mask)


@writes_run("export")
def export_run(run: str | Path, fmt: str, out: str | Path | None = None, collision_faces: int = 2000,
               color_by: str = "rgb", collision: str = "auto", rigid_bodies: bool = False, log=print) -> Path:
    """Export RUN as `fmt` into `out` (default RUN/export/<fmt>); returns the output folder."""
    run = Path(run)
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if collision not in COLLISION_MODES:
        raise ExportError(f"--collision must be one of {', '.join(COLLISION_MODES)}, got {collision!r}")
    if collision != "auto" and fmt not in SIM_FORMATS:
        raise ExportError(f"--collision {collision} applies to the formats with collision shapes "
                          f"({', '.join(SIM_FORMATS)}), not to {fmt}")
    if rigid_bodies and fmt != "usd":
        raise ExportError(f"--rigid-bodies applies to --format usd only, not to {fmt}")
    if color_by not in COLOR_MODES:
        raise ExportError(f"color-by must be one of {', '.join(COLOR_MODES)}, got {color_by!r}")
    if int(collision_faces) < MIN_FACES:
        raise ExportError(f"--collision-faces must be at least {MIN_FACES}, got {collision_faces}")
    _check_dependencies(fmt, collision)
    out = Path(out) if out is not None else run / "export" / fmt
    _prepare_out(out)
    t0 = time.perf_counter()
    mesh = load_run(run, log)
    parts = split_parts(mesh, log)
    n_things = sum(p.instance_id > 0 for p in parts)
    if fmt in ("usd", "urdf") and n_things == 0:
        raise ExportError(f"{run}: no thing instance to export as {fmt} (mesh.ply needs an 'instance' vertex "
                          f"property and {run / 'instances.json'} must list instances that own faces; see the "
                          "log above). An environment-only export: --format gazebo, glb, obj or ply")
    frame = run_up_frame(mesh)
    log(f"export: up direction {np.round(frame.up_scene, 4).tolist()} in the scene frame, floor at "
        f"{frame.floor_height_m:.4f} m along it ({frame.source})")
    colors = vertex_colors(mesh.rgb, mesh.semantic, mesh.instance,
                           {c.id: c.color for c in mesh.legend.values()}, color_by)
    with staged_dir(out) as tmp, collision_mode(collision):
        if fmt == "gazebo":
            from recon.export.gazebo import write_gazebo
            body = write_gazebo(tmp, mesh, parts, frame, colors, int(collision_faces), log)
        elif fmt == "usd":
            from recon.export.usd import write_usd
            body = write_usd(tmp, mesh, parts, frame, colors, int(collision_faces), rigid_bodies, color_by, log)
        elif fmt == "urdf":
            from recon.export.urdf import write_urdf
            body = write_urdf(tmp, mesh, parts, frame, colors, int(collision_faces), log)
        else:
            from recon.export.mesh_files import write_mesh_files
            body = write_mesh_files(tmp, fmt, mesh, parts, frame, colors, log)
        manifest = {
            "format": fmt, "run": str(run.resolve()), "color_by": color_by,
            "n_instances": n_things,
            "frame": {"scene_to_export": [[round(float(x), 9) for x in row] for row in frame.transform],
                      "up_in_scene": [round(float(x), 9) for x in frame.up_scene],
                      "floor_height_m": round(frame.floor_height_m, 6), "source": frame.source,
                      "export_axes": "z up, metres, floor at z = 0"},
            **body,
        }
        if fmt in SIM_FORMATS:
            manifest["collision"] = {"mode": collision, "max_faces": int(collision_faces),
                                     **({"coacd": COACD_PARAMS} if collision == "coacd" else {})}
        fault_point("export")
        atomic_write_text(tmp / "export.json", json.dumps(manifest, indent=1) + "\n")
        _make_readable(tmp)
    log(f"export: wrote {out} ({fmt}, {len(parts)} parts) in {time.perf_counter() - t0:.1f} s")
    return out
