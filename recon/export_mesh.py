"""Mesh a trained run: chunked marching cubes on the SDF, cull unobserved space, label and colour vertices."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from recon.config import atomic_write_text
from recon.data.scene import Scene
from recon.meshing import extract_mesh, write_ply
from recon.sampling import FrameBank


def class_palette(n: int) -> np.ndarray:
    """[n, 3] uint8 distinct colours; index 0 (unlabelled) is grey. Deterministic."""
    rng = np.random.default_rng(12345)
    pal = np.zeros((max(n, 1), 3), np.uint8)
    pal[0] = (128, 128, 128)
    golden = 0.618033988749895
    for i in range(1, n):
        h = (i * golden) % 1.0
        s, v = 0.55 + 0.35 * rng.random(), 0.75 + 0.25 * rng.random()
        k = np.array([5.0, 3.0, 1.0])
        c = v - v * s * np.clip(np.minimum((k + h * 6) % 6, 4 - (k + h * 6) % 6), 0, 1)
        pal[i] = np.round(c * 255).astype(np.uint8)
    return pal


def observed_mask(points: np.ndarray, K: np.ndarray, c2w: np.ndarray, depth_z: list[np.ndarray] | np.ndarray,
                  margin_m: float, front_margin_m: float | None = None) -> np.ndarray:
    """Which world points [N, 3] lie near an observed surface (or in observed space) of at least one view.

    A point is observed by a view if it projects inside the image in front of the camera
    onto a pixel with valid depth D and its own z-depth z satisfies
    D - front_margin_m <= z <= D + margin_m: it is near the surface the view saw (just in
    front of it, on it or just behind it). front_margin_m None drops the lower bound: every
    point of the view's observed free space counts too. c2w: [F, 4, 4]; depth_z: [F, H, W].
    """
    assert points.ndim == 2 and points.shape[1] == 3
    seen = np.zeros(len(points), bool)
    for f in range(len(c2w)):
        d = depth_z[f]
        H, W = d.shape
        w2c = np.linalg.inv(c2w[f])
        pc = points @ w2c[:3, :3].T + w2c[:3, 3]                                    # [N, 3]
        z = pc[:, 2]
        front = z > 1e-3
        u = np.full(len(points), -1, np.int64)
        v = np.full(len(points), -1, np.int64)
        u[front] = np.round(K[0, 0] * pc[front, 0] / z[front] + K[0, 2]).astype(np.int64)
        v[front] = np.round(K[1, 1] * pc[front, 1] / z[front] + K[1, 2]).astype(np.int64)
        inside = front & (u >= 0) & (u < W) & (v >= 0) & (v < H)
        idx = np.nonzero(inside & ~seen)[0]
        dz = d[v[idx], u[idx]]
        ok = (dz > 0) & (z[idx] <= dz + margin_m)
        if front_margin_m is not None:
            ok &= z[idx] >= dz - front_margin_m
        seen[idx[ok]] = True
    return seen


@torch.no_grad()
def _chunked(fn, x: np.ndarray, chunk: int = 65536, device: torch.device | str = "cpu") -> np.ndarray:
    out = [fn(torch.from_numpy(x[i:i + chunk]).float().to(device)).cpu().numpy() for i in range(0, len(x), chunk)]
    return np.concatenate(out) if out else np.zeros((0,))


def vertex_attributes(model, vertices: np.ndarray, offset_m: float, chunk: int = 32768, branch=None,
                      head: bool = True) -> dict[str, np.ndarray]:
    """Normals, colours and panoptic labels at mesh vertices, queried `offset_m` inside the surface.

    semantic [V] class id; token [V] token index (-1 = none; only with an instance branch);
    confidence [V] the winning probability."""
    from recon.labels import point_labels
    normals, rgb, sem, tok, conf = [], [], [], [], []
    for i in range(0, len(vertices), chunk):
        x = torch.from_numpy(vertices[i:i + chunk]).float().to(model.device)
        _, grad = model.sdf_and_grad(x)
        n = torch.nn.functional.normalize(grad.detach(), dim=-1)
        with torch.no_grad():
            xin = x - offset_m * n
            _, geo = model.sdf(xin)
            rgb.append(model.color(geo).clamp(0, 1).cpu().numpy())
            c, t, p = point_labels(model, branch, head, xin)
            sem.append(c.cpu().numpy())
            tok.append(t.cpu().numpy())
            conf.append(p.cpu().numpy())
        normals.append(n.cpu().numpy())
    if not normals:
        return {"normals": np.zeros((0, 3)), "rgb": np.zeros((0, 3)), "semantic": np.zeros((0,), np.int64),
                "token": np.zeros((0,), np.int64), "confidence": np.zeros((0,))}
    return {"normals": np.concatenate(normals), "rgb": np.concatenate(rgb), "semantic": np.concatenate(sem),
            "token": np.concatenate(tok), "confidence": np.concatenate(conf)}


def face_labels(faces: np.ndarray, vertex_labels: np.ndarray) -> np.ndarray:
    """Label of each face [F]: the value shared by at least two of its vertices, else its first vertex's."""
    assert faces.ndim == 2 and faces.shape[1] == 3, f"faces must be [F, 3], got {faces.shape}"
    a, b, c = (vertex_labels[faces[:, k]] for k in range(3))
    return np.where((b == c) & (a != b), b, a)


def instance_palette(ids: np.ndarray) -> np.ndarray:
    """[len(ids), 3] uint8 distinct, deterministic colours for instance ids."""
    rng = np.random.default_rng(777)
    table = rng.integers(40, 256, size=(int(ids.max(initial=0)) + 1, 3)).astype(np.uint8)
    return table[ids]


def write_instances(run: Path, verts: np.ndarray, faces: np.ndarray, rgb: np.ndarray, sem: np.ndarray,
                    inst: np.ndarray, conf: np.ndarray, names: dict[int, str], token_ids: np.ndarray,
                    min_vertices: int) -> list[dict]:
    """RUN/instances/<id>_<class>.ply per thing instance and RUN/instances.json."""
    out_dir = run / "instances"
    if out_dir.exists():
        for old in out_dir.glob("*.ply"):
            old.unlink()
    out_dir.mkdir(exist_ok=True)
    f_inst = face_labels(faces, inst) if len(faces) else np.zeros(0, np.int64)
    entries = []
    for iid in sorted(int(i) for i in np.unique(inst) if i > 0):
        vsel = inst == iid
        if int(vsel.sum()) < min_vertices:
            continue
        cls = int(np.bincount(sem[vsel]).argmax())
        cname = names.get(cls, str(cls)).replace(" ", "_")
        fsel = faces[f_inst == iid]
        used = np.unique(fsel)
        remap = np.full(len(verts), -1, np.int64)
        remap[used] = np.arange(len(used))
        fname = f"{iid}_{cname}.ply"
        write_ply(out_dir / fname, verts[used], remap[fsel], colors=rgb[used],
                  vertex_props={"semantic": sem[used].astype(np.int32), "instance": inst[used].astype(np.int32)})
        pts = verts[vsel]
        entries.append({"id": iid, "class_id": cls, "class": names.get(cls, str(cls)),
                        "score": round(float(conf[vsel].mean()), 4), "n_vertices": int(vsel.sum()),
                        "n_faces": int(len(fsel)), "bbox_min": pts.min(0).round(4).tolist(),
                        "bbox_max": pts.max(0).round(4).tolist(), "centroid": pts.mean(0).round(4).tolist(),
                        "file": f"instances/{fname}"})
    doc = {"instances": entries, "token_ids": [int(t) for t in token_ids],
           "note": "id: scene-consistent instance id (mesh.ply vertex 'instance', labels/instance/*.png); "
                   "token_ids[i]: the id of token i"}
    atomic_write_text(run / "instances.json", json.dumps(doc, indent=1) + "\n")
    return entries


def write_label_meshes(run: Path, verts: np.ndarray, faces: np.ndarray, rgb: np.ndarray, sem: np.ndarray,
                       inst: np.ndarray, pal: np.ndarray) -> None:
    """RUN/mesh.ply (RGB colours), mesh_semantic.ply (class colours) and mesh_panoptic.ply (instance colours
    on things, class colours elsewhere), each with `semantic` and `instance` vertex properties."""
    props = {"semantic": sem.astype(np.int32), "instance": inst.astype(np.int32)}
    write_ply(run / "mesh.ply", verts, faces, vertex_props=props, colors=rgb)
    write_ply(run / "mesh_semantic.ply", verts, faces, vertex_props=props, colors=pal[sem])
    pan_rgb = np.where((inst > 0)[:, None], instance_palette(inst), pal[sem])
    write_ply(run / "mesh_panoptic.ply", verts, faces, vertex_props=props, colors=pan_rgb)


def export_run_mesh(run: Path, model, scene: Scene, bank: FrameBank, s, log, branch=None) -> Path:
    """Write RUN/mesh.ply (RGB colours, `semantic` and `instance` vertex properties), mesh_semantic.ply,
    mesh_panoptic.ply, legend.json and, with an instance branch, instances/ and instances.json."""
    from recon.labels import apply_ids, token_id_map
    model.eval()
    box_min, box_max = model.box_min_np, model.box_max_np
    depth_z = (bank.depth_ray_m / bank.ray_scale[None]).reshape(-1, bank.height, bank.width).numpy()
    c2w = bank.c2w.double().numpy()

    def sdf_fn(pts: np.ndarray) -> np.ndarray:
        return _chunked(lambda x: model.sdf(x)[0], pts.astype(np.float32), device=model.device)

    def keep_fn(pts: np.ndarray) -> np.ndarray:
        return observed_mask(pts, bank.K, c2w, depth_z, s.mesh.cull_margin_m, s.mesh.cull_front_margin_m)

    verts, faces = extract_mesh(sdf_fn, box_min, box_max, s.mesh.voxel_size_m, chunk_voxels=s.mesh.chunk_voxels,
                                keep_fn=keep_fn)
    attrs = vertex_attributes(model, verts.astype(np.float32), s.mesh.label_offset_m, branch=branch,
                              head=s.panoptic.head)
    rgb = np.round(attrs["rgb"] * 255).astype(np.uint8) if len(verts) else np.zeros((0, 3), np.uint8)
    sem = attrs["semantic"].astype(np.int64) if scene.has_masks else np.zeros(len(verts), np.int64)
    if branch is not None:
        token_ids = token_id_map(branch.tokens.n, attrs["token"])
        inst = apply_ids(attrs["token"], token_ids)
        if s.panoptic.merge_fragments:
            from recon.fragments import merge_fragment_ids
            _, lut = merge_fragment_ids(faces, inst, sem, token_ids, s.panoptic, log.info)
            if lut is not None:
                token_ids, inst = lut[token_ids], lut[inst]
    else:
        token_ids, inst = np.zeros(0, np.int64), np.zeros(len(verts), np.int64)
    path = run / "mesh.ply"
    pal = class_palette(scene.n_classes)
    write_label_meshes(run, verts, faces, rgb, sem, inst, pal)
    legend = [{"id": 0, "name": "unlabelled", "thing": False, "color": pal[0].tolist()}] + [
        {"id": c.id, "name": c.name, "thing": c.thing, "color": pal[c.id].tolist()} for c in scene.classes]
    atomic_write_text(run / "legend.json", json.dumps(legend, indent=1) + "\n")
    log.info(f"mesh: {len(verts)} vertices, {len(faces)} faces at {s.mesh.voxel_size_m * 100:.1f} cm voxels")
    if branch is not None:
        names = {c.id: c.name for c in scene.classes}
        entries = write_instances(run, verts, faces, rgb, sem, inst, attrs["confidence"], names, token_ids,
                                  s.panoptic.min_instance_vertices)
        log.info(f"instances: {len(entries)} with at least {s.panoptic.min_instance_vertices} vertices "
                 f"({branch.tokens.n} tokens): " + ", ".join(f"{e['class']}#{e['id']}" for e in entries))
    return path


# ----------------------------------------------------------------------------- finished runs (no model)

def read_labelled_run(run: Path, what: str) -> dict:
    """A finished run's labelled mesh for a post-process (`what` names it in errors): vertices [V, 3],
    faces [F, 3], rgb [V, 3] uint8, semantic / instance [V], the settings (config.yaml), the legend
    palette and class names and, with an instance branch, token_ids and per-vertex confidence [V]
    (each instance's score from instances.json)."""
    from recon.config import load_config
    from recon.meshing import read_ply
    from recon.schema import FitSettings
    run = Path(run)
    for need in ("config.yaml", "mesh.ply", "legend.json"):
        if not (run / need).is_file():
            raise FileNotFoundError(f"{run} has no {need}: {what} needs a finished run")
    verts, faces, colors, props = read_ply(run / "mesh.ply")
    if "instance" not in props or "semantic" not in props:
        raise ValueError(f"{run / 'mesh.ply'} has no 'instance' / 'semantic' vertex properties")
    legend = json.loads((run / "legend.json").read_text())
    out = {"settings": load_config(FitSettings, run / "config.yaml"), "verts": verts, "faces": faces,
           "rgb": colors if colors is not None else np.zeros((len(verts), 3), np.uint8),
           "semantic": props["semantic"].astype(np.int64), "instance": props["instance"].astype(np.int64),
           "pal": class_palette(max(int(e["id"]) for e in legend) + 1),      # the colours legend.json lists
           "names": {int(e["id"]): e["name"] for e in legend}, "token_ids": None, "confidence": None}
    if (run / "instances.json").is_file():
        doc = json.loads((run / "instances.json").read_text())
        out["token_ids"] = np.asarray(doc.get("token_ids") or [], np.int64)
        score = {int(e["id"]): float(e["score"]) for e in doc.get("instances", [])}
        inst = out["instance"]
        out["confidence"] = np.array([score.get(i, 0.0) for i in range(int(inst.max(initial=0)) + 1)])[inst]
    return out


def rewrite_labelled_run(run: Path, lr: dict, verts: np.ndarray, faces: np.ndarray, keep_vertices: np.ndarray | None,
                         instance: np.ndarray, token_ids: np.ndarray | None) -> None:
    """Write a post-processed mesh of read_labelled_run's `lr`: mesh*.ply and, with an instance branch,
    instances/ and instances.json. keep_vertices [V_old] bool selects lr's vertex attributes (None: all);
    instance [V_new] and token_ids are the (possibly remapped) ids."""
    sel = slice(None) if keep_vertices is None else keep_vertices
    rgb, sem = lr["rgb"][sel], lr["semantic"][sel]
    assert len(rgb) == len(verts) == len(instance), "post-process: vertex attributes do not match the mesh"
    write_label_meshes(run, verts, faces, rgb, sem, instance, lr["pal"])
    if lr["token_ids"] is not None:
        write_instances(run, verts, faces, rgb, sem, instance, lr["confidence"][sel], lr["names"], token_ids,
                        lr["settings"].panoptic.min_instance_vertices)


def record_post_process(run: Path, settings, line: str, log=print) -> None:
    """A post-process of a finished run is done: save its settings to config.yaml, append `line` to log.txt."""
    from recon.config import save_config
    save_config(settings, Path(run) / "config.yaml")
    with open(Path(run) / "log.txt", "a") as fh:
        fh.write(line + "\n")
    log(line)


def cull_run_mesh(run, front_margin_m: float | None = None, log=print) -> int:
    """Cull a finished run's mesh with the near-surface rule (observed_mask with mesh.cull_margin_m behind and
    `front_margin_m` in front of the training views' depth; default: the run's mesh.cull_front_margin_m),
    without its model: faces only go, vertex labels stay. Rewrites mesh.ply, mesh_semantic.ply,
    mesh_panoptic.ply and, with an instance branch, instances/ and instances.json, each atomically; records the
    margin in config.yaml and log.txt. Label images come from the fields and do not change. Culling twice with
    one margin removes nothing the second time. Returns the number of faces removed."""
    from recon.data.scene import load_scene
    from recon.meshing import cull_faces
    from recon.trainer import train_indices
    run = Path(run)
    lr = read_labelled_run(run, "mesh culling")
    s = lr["settings"]
    front = s.mesh.cull_front_margin_m if front_margin_m is None else float(front_margin_m)
    scene_txt = run / "scene.txt"
    if not scene_txt.is_file():
        raise FileNotFoundError(f"{run} does not say which scene it was fitted on ({scene_txt} missing)")
    scene = load_scene(Path(scene_txt.read_text().strip()), check_images=False)
    idx = train_indices(scene, s)
    depth_z = [scene.load_depth_m(i) for i in idx]                       # [H, W] each, z-depth in metres
    faces = lr["faces"]
    new_v, new_f, used = cull_faces(                          # the rule extract_mesh applies (keep_mode "all")
        lr["verts"], faces, lambda p: observed_mask(p, scene.K, scene.c2w[idx], depth_z, s.mesh.cull_margin_m, front),
        return_used=True)
    removed = len(faces) - len(new_f)
    rewrite_labelled_run(run, lr, new_v, new_f, used, lr["instance"][used], lr["token_ids"])
    s.mesh.cull_front_margin_m = front
    record_post_process(run, s, f"mesh culling (near-surface, {front} m in front / {s.mesh.cull_margin_m} m "
                                f"behind the training views' depth): removed {removed} of {len(faces)} faces", log)
    return removed
