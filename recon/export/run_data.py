"""Read a run folder for export and split its panoptic mesh into one part per thing instance + 'environment'.

Inputs (the run-folder contract): RUN/mesh.ply (x, y, z; red, green, blue; int vertex properties `semantic`
and `instance`), RUN/legend.json, RUN/instances.json, RUN/scene.txt (scene folder: scene.json, pose/).
Only mesh.ply and legend.json are required: a run without the `instance` property or without
instances.json exports everything as 'environment' (logged).

Partition rule (every face of mesh.ply goes to exactly one part, so the parts reassemble the mesh):
a face takes the instance id shared by at least two of its vertices, else its first vertex's (the rule
RUN/instances/*.ply are cut by); faces whose id is 0 or not listed in instances.json (stuff, unlabelled,
unassigned or dropped instances) form 'environment'. Thing parts are re-cut from mesh.ply with this rule
rather than read from RUN/instances/, so that the exported parts partition the panoptic mesh exactly.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recon.data.ply import read_ply
from recon.data.run_files import face_labels as face_instance_labels  # one face-labelling rule for RUN/instances/ and export


class ExportError(ValueError):
    """A run folder cannot be exported as it is (the message names the file and the problem)."""


ENVIRONMENT = "environment"


@dataclass(frozen=True)
class ClassEntry:
    id: int
    name: str
    thing: bool
    color: tuple[int, int, int]


@dataclass(frozen=True)
class InstanceEntry:
    id: int
    class_id: int
    class_name: str
    score: float | None
    centroid: np.ndarray | None  # [3] scene frame, metres (None: not given)

    @property
    def name(self) -> str:
        return model_name(self.class_name, self.id)


@dataclass
class RunMesh:
    run: Path
    vertices: np.ndarray      # [V, 3] float64, scene frame, metres
    faces: np.ndarray         # [F, 3] int64
    rgb: np.ndarray           # [V, 3] uint8 appearance colour
    semantic: np.ndarray      # [V] int64 class id (0 = unlabelled)
    instance: np.ndarray      # [V] int64 listed instance id (0 = none or not listed in instances.json)
    instance_raw: np.ndarray  # [V] int64 mesh.ply's instance property as read (zeros without one)
    legend: dict[int, ClassEntry]
    instances: list[InstanceEntry]
    scene_dir: Path | None
    scene_meta: dict = field(default_factory=dict)
    cam_c2w: np.ndarray | None = None  # [N, 4, 4] camera-to-world (OpenCV axes) of the scene's frames


@dataclass
class Part:
    name: str                 # "<class>_<id>" or "environment"
    instance_id: int          # 0 for environment
    class_id: int             # 0 for environment
    class_name: str           # "environment" for environment
    score: float | None
    vertex_index: np.ndarray  # [Vp] int64 indices into RunMesh.vertices (sorted)
    faces: np.ndarray         # [Fp, 3] int64 into vertex_index
    face_index: np.ndarray    # [Fp] int64 indices into RunMesh.faces
    centroid: np.ndarray      # [3] scene frame: instances.json centroid, else the part's vertex mean


def model_name(class_name: str, instance_id: int) -> str:
    """'<class>_<id>' with every character outside [A-Za-z0-9_-] replaced by '_' (safe as SDF, glTF node and
    file name)."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", class_name.strip()) or "class"
    return f"{safe}_{int(instance_id)}"


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path}: not valid JSON ({exc})") from None


def load_legend(path: Path) -> dict[int, ClassEntry]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (the run's class legend; written by 'run.py fit')")
    data = _read_json(path)
    if not isinstance(data, list):
        raise ExportError(f"{path}: must be a list of {{'id', 'name', 'thing', 'color'}} entries")
    out: dict[int, ClassEntry] = {}
    for i, e in enumerate(data):
        try:
            cid, name, thing = int(e["id"]), str(e["name"]), bool(e.get("thing", False))
            color = tuple(int(x) for x in e.get("color", (128, 128, 128)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ExportError(f"{path}: entry {i} is malformed ({exc!r}); need id, name, thing, color") from None
        if len(color) != 3 or not all(0 <= x <= 255 for x in color):
            raise ExportError(f"{path}: entry {i} ({name}): color must be [r, g, b] in 0..255, got {list(color)}")
        if cid in out:
            raise ExportError(f"{path}: class id {cid} appears twice")
        out[cid] = ClassEntry(cid, name, thing, color)  # type: ignore[arg-type]
    out.setdefault(0, ClassEntry(0, "unlabelled", False, (128, 128, 128)))
    return out


def load_instances(path: Path, legend: dict[int, ClassEntry]) -> list[InstanceEntry]:
    data = _read_json(path)
    items = data.get("instances") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ExportError(f"{path}: must be {{'instances': [...]}}")
    out, seen = [], set()
    for i, e in enumerate(items):
        try:
            iid, cid = int(e["id"]), int(e["class_id"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ExportError(f"{path}: instance entry {i} is malformed ({exc!r}); need id and class_id") from None
        if iid <= 0:
            raise ExportError(f"{path}: instance entry {i}: id must be a positive integer, got {iid}")
        if iid in seen:
            raise ExportError(f"{path}: instance id {iid} appears twice")
        if cid not in legend:
            raise ExportError(f"{path}: instance {iid} has class_id {cid}, which legend.json does not list")
        seen.add(iid)
        cname = str(e.get("class") or legend[cid].name)
        centroid = e.get("centroid")
        if centroid is not None:
            centroid = np.asarray(centroid, np.float64)
            if centroid.shape != (3,) or not np.all(np.isfinite(centroid)):
                raise ExportError(f"{path}: instance {iid}: centroid must be 3 finite numbers, got {e['centroid']}")
        score = e.get("score")
        out.append(InstanceEntry(iid, cid, cname, None if score is None else float(score), centroid))
    return out


def _scene_info(run: Path, log) -> tuple[Path | None, dict, np.ndarray | None]:
    """(scene folder or None, scene.json dict, camera c2w [N, 4, 4] or None); never fails on a missing scene."""
    p = run / "scene.txt"
    if not p.is_file():
        log(f"export: {p} missing; the up direction is found from the mesh alone")
        return None, {}, None
    scene_dir = Path(p.read_text().strip())
    if not scene_dir.is_dir():
        log(f"export: scene folder {scene_dir} (from {p}) not found; the up direction is found from the mesh alone")
        return None, {}, None
    meta = {}
    if (scene_dir / "scene.json").is_file():
        meta = _read_json(scene_dir / "scene.json")
        if not isinstance(meta, dict):
            raise ExportError(f"{scene_dir / 'scene.json'}: must be a JSON object")
    c2w = None
    try:
        from recon.data.scene import SceneError, load_scene
        c2w = load_scene(scene_dir, skip_bad_frames=True, check_images=False).c2w
    except SceneError as exc:
        log(f"export: scene folder {scene_dir} did not load ({len(exc.problems)} problem(s)); cameras not used")
    return scene_dir, meta, c2w


def load_run(run: str | Path, log=print) -> RunMesh:
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run folder")
    mesh_path = run / "mesh.ply"
    if not mesh_path.is_file():
        raise FileNotFoundError(f"{mesh_path}: missing (a fitted run writes it at the end of 'run.py fit')")
    legend = load_legend(run / "legend.json")
    try:
        verts, faces, colors, props = read_ply(mesh_path)
    except Exception as exc:  # plyfile raises several types for a broken file
        raise ExportError(f"{mesh_path}: cannot be read as PLY ({exc})") from None
    if len(faces) == 0 or len(verts) == 0:
        raise ExportError(f"{mesh_path}: has no faces; nothing to export")
    if not np.all(np.isfinite(verts)):
        raise ExportError(f"{mesh_path}: has non-finite vertex coordinates")
    if faces.min() < 0 or faces.max() >= len(verts):
        raise ExportError(f"{mesh_path}: face index out of range")
    n = len(verts)
    if colors is None:
        log(f"export: {mesh_path} has no red/green/blue; appearance colour is grey")
        colors = np.full((n, 3), 180, np.uint8)
    if "semantic" in props:
        sem = np.asarray(props["semantic"]).astype(np.int64)
    else:
        log(f"export: {mesh_path} has no 'semantic' vertex property; every vertex is unlabelled")
        sem = np.zeros(n, np.int64)
    unknown = sorted(set(np.unique(sem).tolist()) - set(legend))
    if unknown:
        raise ExportError(f"{mesh_path}: semantic ids {unknown[:10]} are not in {run / 'legend.json'}")

    inst_path = run / "instances.json"
    instances: list[InstanceEntry] = []
    inst = raw = np.zeros(n, np.int64)
    if "instance" not in props:
        log(f"export: {mesh_path} has no 'instance' vertex property (a run from before the instance branch): "
            f"everything is exported as the '{ENVIRONMENT}' model")
    elif not inst_path.is_file():
        log(f"export: {inst_path} missing: everything is exported as the '{ENVIRONMENT}' model")
    else:
        instances = load_instances(inst_path, legend)
        raw = np.asarray(props["instance"]).astype(np.int64)
        listed = np.array(sorted(e.id for e in instances), np.int64)
        ok = np.isin(raw, listed)
        inst = np.where(ok, raw, 0)
        stray = np.unique(raw[~ok & (raw != 0)])
        if len(stray):
            log(f"export: {int((~ok & (raw != 0)).sum())} vertices carry instance ids not listed in {inst_path} "
                f"({stray[:10].tolist()}{' ...' if len(stray) > 10 else ''}); they go to '{ENVIRONMENT}'")
        if not instances:
            log(f"export: {inst_path} lists no instances: everything is exported as the '{ENVIRONMENT}' model")
    scene_dir, meta, c2w = _scene_info(run, log)
    return RunMesh(run, verts, faces.astype(np.int64), colors, sem, inst, raw, legend, instances, scene_dir, meta,
                   c2w)


def _make_part(mesh: RunMesh, face_index: np.ndarray, name: str, iid: int, cid: int, cname: str,
               score: float | None, centroid: np.ndarray | None) -> Part:
    f = mesh.faces[face_index]  # [Fp, 3] global vertex ids
    vidx, local = np.unique(f.reshape(-1), return_inverse=True)
    if centroid is None:
        centroid = mesh.vertices[vidx].mean(axis=0)
    return Part(name, iid, cid, cname, score, vidx, local.reshape(-1, 3).astype(np.int64), face_index,
                np.asarray(centroid, np.float64))


def split_parts(mesh: RunMesh, log=print) -> list[Part]:
    """One Part per listed instance that owns at least one face (in instances.json order), then 'environment'
    (if any face is left). Every face of the mesh is in exactly one part."""
    labels = face_instance_labels(np.asarray(mesh.faces), mesh.instance_raw)  # [F]
    labels = np.where(np.isin(labels, [e.id for e in mesh.instances]), labels, 0)
    order = np.argsort(labels, kind="stable")
    ids, starts = np.unique(labels[order], return_index=True)
    bounds = dict(zip(ids.tolist(), zip(starts.tolist(), list(starts[1:]) + [len(order)])))
    parts = []
    for e in mesh.instances:
        if e.id not in bounds:
            log(f"export: instance {e.id} ({e.class_name}) owns no face of mesh.ply; skipped")
            continue
        s, t = bounds[e.id]
        parts.append(_make_part(mesh, np.sort(order[s:t]), e.name, e.id, e.class_id, e.class_name, e.score,
                                e.centroid))
    if 0 in bounds:
        s, t = bounds[0]
        parts.append(_make_part(mesh, np.sort(order[s:t]), ENVIRONMENT, 0, 0, ENVIRONMENT, None, None))
    assert sum(len(p.face_index) for p in parts) == len(mesh.faces)
    names = [p.name for p in parts]
    if len(set(names)) != len(names):
        raise ExportError(f"{mesh.run / 'instances.json'}: two instances map to the same model name ({names})")
    return parts
