"""OpenUSD export for NVIDIA Isaac Sim (and any USD consumer): one stage, one prim per object, semantic labels
that Isaac Sim's Replicator annotators read, PhysX colliders.

OUT/
  scene.usdc      the stage (binary crate; `Sdf.Layer.FindOrOpen(p).ExportToString()` prints it as text)
  export.json, README.md

Stage (`usd_stage`):
  metadata         upAxis "Z", metersPerUnit 1, kilogramsPerUnit 1, defaultPrim "World"
  /World           Xform, kind assembly: what a reference to this file brings in
    environment    Xform, kind component, at the origin: the stuff and every surface of no listed instance
      visual/<class>    one Mesh per semantic class of its faces (wall, floor, ...; a face's class is the
                        one shared by two of its vertices, else its first vertex's), labelled with that class
                        ('unlabelled' faces carry no label: Replicator's background)
      collision/piece_000  the static collision mesh (collision.py; a triangle mesh, approximation "none")
    <class>_<id>   one Xform per thing instance, kind component, xformOp:translate = the instance centroid
                   in the export frame (no rotation, no scale), labelled with its class; custom attributes
                   recon:instanceId (int, the id of RUN/instances.json), recon:classId, recon:className,
                   recon:score (when known), recon:name
      visual            Mesh in object-local coordinates (vertex - centroid)
      collision/piece_NNN  collision shape(s) of collision.py: one mesh, or one per convex piece with
                        `--collision coacd`
  /PhysicsScene    PhysicsScene, gravity 9.81 m/s^2 along -Z; outside /World, so a reference to the file
                   (which brings in the defaultPrim) does not add a second scene to the referencing stage

Meshes: triangles (faceVertexCounts all 3), subdivisionScheme "none" (the faces are the surface, not a
subdivision cage), doubleSided (a reconstruction's surfaces are seen from either side), extent,
area-weighted vertex normals, and primvars:displayColor per vertex (interpolation "vertex") from the
export colours (`--color-by`). USD colour attributes are linear (the stage's default colour space,
lin_rec709), so the 8-bit sRGB colours are decoded with the sRGB transfer function (`srgb_to_linear`).
No material is bound: Isaac Sim (RTX) and usdview show displayColor on unbound meshes.

Collision: every collision Mesh has UsdPhysics.CollisionAPI and UsdPhysics.MeshCollisionAPI; purpose
"guide" (on the collision Xform and each piece) keeps it out of renders and Replicator annotations while
PhysX still collides with it. physics:approximation: "convexHull" for convex pieces (convex hull,
bounding box, every CoACD piece), "none" (the triangle mesh itself) otherwise.
Static scene (the default): no prim has RigidBodyAPI, so PhysX treats every collider as static (a triangle
mesh is only allowed on static colliders). `rigid_bodies=True` (`export --rigid-bodies`) applies
UsdPhysics.RigidBodyAPI and MassAPI to each thing instance (mass from the collider volume at PhysX's
default density) and uses "convexDecomposition" (PhysX decomposes at load) for its non-convex meshes;
expect objects to settle a little, since reconstructed objects rest in, not on, the floor.

Semantic labels, both forms, on each thing Xform (inherited by its meshes) and each environment class mesh:
- UsdSemantics.LabelsAPI, instance "class" (the taxonomy): `token[] semantics:labels:class = ["table"]`,
  applied schema "SemanticsLabelsAPI:class". The OpenUSD schema (usdSemantics, USD >= 24.11) that Isaac
  Sim 5.0 and later read and write (isaacsim.core.utils.semantics.add_labels(prim, labels,
  instance_name="class"); Replicator's semantic / instance segmentation and bounding-box annotators filter
  on this taxonomy: semanticTypes=["class"]).
- the deprecated NVIDIA Semantics schema that Isaac Sim up to 4.5 reads: applied schema
  "SemanticsAPI:Semantics" with `string semantic:Semantics:params:semanticType = "class"` and
  `string semantic:Semantics:params:semanticData = "table"` (what
  isaacsim.core.utils.semantics.add_update_semantics(prim, "table") writes: instance name "Semantics",
  type "class"). usd-core does not define this schema, so it is authored as an applied-schema name plus
  two plain attributes; Isaac Sim 5+ converts it with upgrade_prim_semantics_to_labels (same class, so the
  two forms never disagree).
The custom attributes recon:* carry what no schema has a place for (the instance id above all).

Frame: z up, metres, floor at z = 0: every vertex is mapped from the scene frame by the rigid A of
frames.py; export.json holds A. Validation: `validate_stage` runs the validators that `usdchecker
--useNewValidationFramework` runs (UsdValidation; the old Python ComplianceChecker is gone from usd-core 26).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from recon.core.io import atomic_write_text
from recon.data.run_files import face_labels
from recon.export.collision import CollisionMesh, collision_mesh
from recon.export.frames import UpFrame, apply_transform
from recon.export.meshes import vertex_normals
from recon.export.run_data import Part, RunMesh

STAGE_FILE = "scene.usdc"
ROOT = "/World"
PHYSICS_SCENE = "/PhysicsScene"
GRAVITY_M_S2 = 9.81
LABEL_TAXONOMY = "class"           # UsdSemantics.LabelsAPI instance name (Isaac Sim / Replicator: "class")
LEGACY_SEMANTICS_INSTANCE = "Semantics"  # Semantics.SemanticsAPI instance name of Isaac Sim <= 4.5


def srgb_to_linear(rgb: np.ndarray) -> np.ndarray:
    """8-bit sRGB [N, 3] uint8 -> linear [N, 3] float32 in [0, 1] (IEC 61966-2-1: c/12.92 up to 0.04045,
    else ((c + 0.055) / 1.055) ** 2.4)."""
    c = np.asarray(rgb, np.float64) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def prim_name(name: str, taken: set[str]) -> str:
    """A valid, unused USD prim name for `name` (characters outside [A-Za-z0-9_] -> '_', a leading digit gets a
    '_' prefix); a clash gets a '_2', '_3', ... suffix. Adds the result to `taken`."""
    base = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if not base or base[0].isdigit():
        base = "_" + base
    out, k = base, 2
    while out in taken:
        out, k = f"{base}_{k}", k + 1
    taken.add(out)
    return out


def define_mesh(stage, path: str, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None = None,
                normals: bool = True, double_sided: bool = False):
    """A triangle UsdGeom.Mesh at `path`: points [V, 3] (float32), faceVertexCounts [F] (all 3),
    faceVertexIndices [3F] (row-major faces), extent, subdivisionScheme none, and optionally vertex normals,
    doubleSided and primvars:displayColor from 8-bit sRGB colours [V, 3] (decoded to linear)."""
    from pxr import Sdf, UsdGeom, Vt
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    assert v.ndim == 2 and v.shape[1] == 3 and f.ndim == 2 and f.shape[1] == 3, (v.shape, f.shape)
    mesh = UsdGeom.Mesh.Define(stage, path)
    p32 = np.ascontiguousarray(v, np.float32)  # [V, 3] as stored (point3f)
    mesh.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(p32))
    mesh.CreateFaceVertexCountsAttr(Vt.IntArray.FromNumpy(np.full(len(f), 3, np.int32)))
    mesh.CreateFaceVertexIndicesAttr(Vt.IntArray.FromNumpy(np.ascontiguousarray(f.reshape(-1), np.int32)))
    mesh.CreateExtentAttr(Vt.Vec3fArray.FromNumpy(np.stack([p32.min(0), p32.max(0)])))  # [2, 3] of the stored points
    mesh.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
    if double_sided:
        mesh.CreateDoubleSidedAttr(True)
    if normals:
        mesh.CreateNormalsAttr(Vt.Vec3fArray.FromNumpy(np.ascontiguousarray(vertex_normals(v, f), np.float32)))
        mesh.SetNormalsInterpolation(UsdGeom.Tokens.vertex)
    if colors is not None:
        pv = UsdGeom.PrimvarsAPI(mesh).CreatePrimvar("displayColor", Sdf.ValueTypeNames.Color3fArray,
                                                     UsdGeom.Tokens.vertex)
        pv.Set(Vt.Vec3fArray.FromNumpy(np.ascontiguousarray(srgb_to_linear(colors))))
    return mesh


def add_class_label(prim, class_name: str) -> None:
    """Both semantic-label forms of the module docstring (LabelsAPI 'class' and the legacy SemanticsAPI)."""
    from pxr import Sdf, UsdSemantics, Vt
    UsdSemantics.LabelsAPI.Apply(prim, LABEL_TAXONOMY).CreateLabelsAttr(Vt.TokenArray([class_name]))
    prim.AddAppliedSchema(f"SemanticsAPI:{LEGACY_SEMANTICS_INSTANCE}")
    ns = f"semantic:{LEGACY_SEMANTICS_INSTANCE}:params"
    prim.CreateAttribute(f"{ns}:semanticType", Sdf.ValueTypeNames.String, custom=False).Set(LABEL_TAXONOMY)
    prim.CreateAttribute(f"{ns}:semanticData", Sdf.ValueTypeNames.String, custom=False).Set(class_name)


def define_collision(stage, path: str, col: CollisionMesh, dynamic: bool) -> list[str]:
    """An Xform at `path` (purpose guide) with one collider Mesh per piece of `col`; returns their paths."""
    from pxr import UsdGeom, UsdPhysics
    group = UsdGeom.Xform.Define(stage, path)
    group.CreatePurposeAttr(UsdGeom.Tokens.guide)
    if col.convex:
        approx = UsdPhysics.Tokens.convexHull
    else:
        approx = UsdPhysics.Tokens.convexDecomposition if dynamic else UsdPhysics.Tokens.none
    paths = []
    for k, (pv, pf) in enumerate(col.pieces):
        m = define_mesh(stage, f"{path}/piece_{k:03d}", pv, pf, normals=False)
        m.CreatePurposeAttr(UsdGeom.Tokens.guide)
        UsdPhysics.CollisionAPI.Apply(m.GetPrim())
        UsdPhysics.MeshCollisionAPI.Apply(m.GetPrim()).CreateApproximationAttr(approx)
        paths.append(str(m.GetPath()))
    return paths


def new_stage():
    """An in-memory stage with the metadata of the module docstring, /World as defaultPrim and the physics
    scene."""
    from pxr import Gf, Kind, Usd, UsdGeom, UsdPhysics
    stage = Usd.Stage.CreateInMemory()
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.z)
    UsdGeom.SetStageMetersPerUnit(stage, 1.0)
    UsdPhysics.SetStageKilogramsPerUnit(stage, 1.0)
    world = UsdGeom.Xform.Define(stage, ROOT)
    Usd.ModelAPI(world.GetPrim()).SetKind(Kind.Tokens.assembly)
    stage.SetDefaultPrim(world.GetPrim())
    scene = UsdPhysics.Scene.Define(stage, PHYSICS_SCENE)
    scene.CreateGravityDirectionAttr(Gf.Vec3f(0.0, 0.0, -1.0))
    scene.CreateGravityMagnitudeAttr(GRAVITY_M_S2)
    return stage


def validate_stage(path: str | Path) -> list[tuple[str, str, str]]:
    """Run on the stage file the validators that `usdchecker --useNewValidationFramework PATH` runs (every
    registered validator except the usdz-package ones and RootPackageValidator). Returns (type 'Error' |
    'Warn' | 'Info', validator error name, message) per finding; usdchecker fails on any 'Error'."""
    from pxr import Usd, UsdValidation
    reg = UsdValidation.ValidationRegistry()
    names = sorted(m.name for m in reg.GetAllValidatorMetadata()
                   if "UsdzValidators" not in list(m.GetKeywords())
                   and m.name != "usdUtilsValidators:RootPackageValidator")
    ctx = UsdValidation.ValidationContext(reg.GetOrLoadValidatorsByName(names))
    stage = Usd.Stage.Open(str(path))
    if stage is None:
        return [("Error", "open", f"{path}: cannot be opened as a USD stage")]
    return [(e.GetType().displayName, str(e.GetName()), e.GetErrorAsString()) for e in ctx.Validate(stage)]


README = """# Isaac Sim / OpenUSD export of a panoptic-recon run

Open `{stage}` in Isaac Sim (File > Open, or reference / add it to a stage: its defaultPrim is /World),
usdview, Blender or any USD tool. Z up, metres, floor at z = 0.

- /World/environment: the room (floor, walls, ceiling, unassigned surfaces), one mesh per class under
  `visual`, a static triangle-mesh collider under `collision`.
- /World/<class>_<id>: one prim per object, placed at its centroid; `visual` mesh, `collision` shape(s)
  ({collision}), custom attribute `recon:instanceId` = the id in the run's instances.json.
- Semantic labels for Replicator (semantic / instance segmentation, bounding boxes) in the taxonomy
  "class": UsdSemantics.LabelsAPI (`semantics:labels:class`, Isaac Sim >= 5.0) and the legacy
  `semantic:Semantics:params:semanticType/semanticData` (Isaac Sim <= 4.5).
- Physics: {physics}
  /PhysicsScene: gravity 9.81 m/s^2 along -Z.

Colours: the reconstruction's vertex colours as primvars:displayColor (colour mode: {color_by}).
export.json lists every prim, its class, instance id, origin and collision shapes.
"""


def write_usd(out: Path, mesh: RunMesh, parts: list[Part], frame: UpFrame, colors: np.ndarray,
              collision_faces: int, rigid_bodies: bool = False, color_by: str = "rgb", log=print) -> dict:
    """Write OUT/scene.usdc (layout of the module docstring) and OUT/README.md into `out` (an empty folder);
    returns the manifest entries for export.json ('stage', 'prims', ...)."""
    from pxr import Gf, Kind, Sdf, Usd, UsdGeom, UsdPhysics
    out = Path(out)
    A = frame.transform
    stage = new_stage()
    taken: set[str] = set()
    entries = []
    for part in tqdm(parts, desc="usd prims", dynamic_ncols=True, disable=len(parts) < 2):
        thing = part.instance_id > 0
        world_v = apply_transform(A, mesh.vertices[part.vertex_index])  # [Vp, 3] export frame
        origin = apply_transform(A, part.centroid[None])[0] if thing else np.zeros(3)
        local = world_v - origin
        path = f"{ROOT}/{prim_name(part.name, taken)}"
        xf = UsdGeom.Xform.Define(stage, path)
        prim = xf.GetPrim()
        Usd.ModelAPI(prim).SetKind(Kind.Tokens.component)
        visuals = []
        if thing:
            xf.AddTranslateOp().Set(Gf.Vec3d(*map(float, origin)))
            add_class_label(prim, part.class_name)
            for attr, typ, value in (("recon:instanceId", Sdf.ValueTypeNames.Int, int(part.instance_id)),
                                     ("recon:classId", Sdf.ValueTypeNames.Int, int(part.class_id)),
                                     ("recon:className", Sdf.ValueTypeNames.String, part.class_name),
                                     ("recon:name", Sdf.ValueTypeNames.String, part.name)):
                prim.CreateAttribute(attr, typ, custom=True).Set(value)
            if part.score is not None:
                prim.CreateAttribute("recon:score", Sdf.ValueTypeNames.Float, custom=True).Set(float(part.score))
            define_mesh(stage, f"{path}/visual", local, part.faces, colors[part.vertex_index], double_sided=True)
            visuals.append({"path": f"{path}/visual", "class": part.class_name, "faces": int(len(part.faces))})
        else:
            prim.CreateAttribute("recon:name", Sdf.ValueTypeNames.String, custom=True).Set(part.name)
            UsdGeom.Xform.Define(stage, f"{path}/visual")
            sem = face_labels(part.faces, mesh.semantic[part.vertex_index])  # [Fp] class id per face
            cls_taken: set[str] = set()
            for cid in np.unique(sem).tolist():
                sel = sem == cid
                vi, local_f = np.unique(part.faces[sel].reshape(-1), return_inverse=True)
                entry = mesh.legend.get(cid)
                cname = entry.name if entry is not None else f"class_{cid}"
                mpath = f"{path}/visual/{prim_name(cname, cls_taken)}"
                m = define_mesh(stage, mpath, local[vi], local_f.reshape(-1, 3), colors[part.vertex_index][vi],
                                double_sided=True)
                if cid != 0:
                    add_class_label(m.GetPrim(), cname)
                visuals.append({"path": mpath, "class": cname, "class_id": int(cid), "faces": int(sel.sum()),
                                "labelled": cid != 0})
        col = collision_mesh(local, part.faces, collision_faces, thing=thing)
        cpaths = define_collision(stage, f"{path}/collision", col, dynamic=rigid_bodies and thing)
        if rigid_bodies and thing:
            UsdPhysics.RigidBodyAPI.Apply(prim)
            UsdPhysics.MassAPI.Apply(prim)
        entries.append({"name": part.name, "prim": path, "instance_id": part.instance_id, "class_id": part.class_id,
                        "class": part.class_name, "score": part.score,
                        "origin_xyz": [round(float(x), 6) for x in origin], "visual": visuals,
                        "collision": cpaths, "collision_faces": int(len(col.faces)), "collision_method": col.method,
                        "collision_closed": bool(col.closed), "rigid_body": bool(rigid_bodies and thing)})
        log(f"export: {part.name}: {len(part.faces)} visual faces, collision {len(col.faces)} faces in "
            f"{len(cpaths)} piece(s) ({col.method}{', closed' if col.closed else ', open'})")
    stage.GetRootLayer().Export(str(out / STAGE_FILE))
    physics = ("thing instances are rigid bodies (RigidBodyAPI + MassAPI); the environment is a static collider."
               if rigid_bodies else "static scene: every collider is static (no RigidBodyAPI); "
               "`run.py export --rigid-bodies` makes the objects dynamic.")
    coacd = any(e["collision_method"] == "coacd" for e in entries)
    note = "convex pieces from CoACD" if coacd else f"simplified meshes of at most {collision_faces} faces"
    atomic_write_text(out / "README.md", README.format(stage=STAGE_FILE, collision=note, physics=physics,
                                                       color_by=color_by))
    return {"stage": STAGE_FILE, "default_prim": ROOT, "up_axis": "Z", "meters_per_unit": 1.0,
            "semantics": {"labels_api": f"semantics:labels:{LABEL_TAXONOMY}",
                          "legacy": f"semantic:{LEGACY_SEMANTICS_INSTANCE}:params:semanticType/semanticData"},
            "rigid_bodies": bool(rigid_bodies), "prims": entries}

