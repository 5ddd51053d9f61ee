"""The labelled mesh of a trained run: marching cubes on the SDF, culled to observed surfaces, every
vertex labelled and coloured from the fields, one scene-consistent id per object.

Instance ids: tokens are numbered into ids 1..K once, when the mesh is labelled (tokens that own mesh
vertices first, in token order, then the rest), and the map is stored in RUN/instances.json
("token_ids"); label images use the same map, so an id means the same object in the mesh, in
instances/ and in every image. Fragment merging (recon/postfit/fragments.py) only remaps ids through
that map.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from recon.core.faults import fault_point
from recon.core.io import atomic_write_text
from recon.data.palette import class_palette, instance_palette
from recon.data.ply import write_ply
from recon.data.run_files import face_labels
from recon.data.scene import Scene
from recon.model.inference import vertex_attributes
from recon.model.sampling import FrameBank
from recon.postfit.fragments import merge_fragment_ids, merged_id_map
from recon.postfit.mask_merge import mask_merge_params, merge_ids_by_masks
from recon.postfit.mask_reclass import reclass_mesh, reclass_params
from recon.postfit.mask_relabel import RELABEL_FILE, relabel_params, relabel_mesh, write_relabel
from recon.postfit.mesh_colour import colour_vertices_from_images
from recon.postfit.meshing import extract_mesh, observed_mask
from recon.postfit.panoptic_consistency import consistent_mesh


@torch.no_grad()
def _chunked(fn, x: np.ndarray, chunk: int = 65536, device: torch.device | str = "cpu") -> np.ndarray:
    out = [fn(torch.from_numpy(x[i:i + chunk]).float().to(device)).cpu().numpy() for i in range(0, len(x), chunk)]
    return np.concatenate(out) if out else np.zeros((0,))


def token_id_map(n_tokens: int, vertex_tokens: np.ndarray) -> np.ndarray:
    """Scene-consistent instance id of every token [N] (1..N): tokens owning mesh vertices first
    (in token order), then the others."""
    owning = sorted(set(int(t) for t in np.unique(vertex_tokens) if t >= 0))
    rest = [t for t in range(n_tokens) if t not in set(owning)]
    ids = np.zeros(n_tokens, np.int64)
    for k, t in enumerate(owning + rest):
        ids[t] = k + 1
    return ids


def apply_ids(token: np.ndarray, token_ids: np.ndarray) -> np.ndarray:
    """Instance ids [...] from token indices [...] (-1 -> 0)."""
    out = np.zeros(token.shape, np.int64)
    has = token >= 0
    out[has] = token_ids[token[has]]
    return out


def read_token_ids(run: Path, n_tokens: int) -> np.ndarray:
    """The token -> instance id map stored with the mesh (identity + 1 when absent)."""
    p = Path(run) / "instances.json"
    if p.is_file():
        ids = json.loads(p.read_text()).get("token_ids")
        if ids is not None and len(ids) == n_tokens:
            return np.asarray(ids, np.int64)
    return np.arange(1, n_tokens + 1, dtype=np.int64)


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


def gaussian_colours_at(gaussians, points: np.ndarray) -> np.ndarray:
    """uint8 colours [V, 3]: the view-independent (degree-0) colour of the nearest Gaussian of each point."""
    from scipy.spatial import cKDTree
    from fields.gaussians import SH_C0
    means = gaussians.means.detach().cpu().numpy()
    rgb = np.clip(0.5 + SH_C0 * gaussians.sh_dc.detach().cpu().numpy(), 0, 1)
    _, nearest = cKDTree(means).query(np.asarray(points, np.float64), k=1)
    return np.round(rgb[nearest] * 255).astype(np.uint8)


def label_run_mesh(run: Path, model, scene: Scene, bank: FrameBank, s, log, branch=None, progress: bool = False,
                   colour_source: str = "images", colour_depth_tol_m: float = 0.05, gaussians=None) -> Path:
    """Write RUN/mesh.ply (RGB colours, `semantic` and `instance` vertex properties), mesh_semantic.ply,
    mesh_panoptic.ply, legend.json and, with an instance branch, instances/ and instances.json.

    Vertex colours: colour_source "images" = from the bank's training frames where a vertex is seen
    (recon/postfit/mesh_colour.py; depth test within colour_depth_tol_m), elsewhere the colour of the
    nearest Gaussian (`gaussians`, the appearance branch) or, without Gaussians, the fields' colour head;
    "fields" = that fallback everywhere."""
    if colour_source not in ("images", "fields"):
        raise ValueError(f"colour_source must be 'images' or 'fields', got {colour_source!r}")
    model.eval()
    box_min, box_max = model.box_min_np, model.box_max_np
    depth_z = (bank.depth_ray_m / bank.ray_scale[None]).reshape(-1, bank.height, bank.width).numpy()
    c2w = bank.c2w.double().numpy()

    def sdf_fn(pts: np.ndarray) -> np.ndarray:
        return _chunked(lambda x: model.sdf(x)[0], pts.astype(np.float32), device=model.device)

    def keep_fn(pts: np.ndarray) -> np.ndarray:
        return observed_mask(pts, bank.K, c2w, depth_z, s.mesh.cull_margin_m, s.mesh.cull_front_margin_m)

    verts, faces = extract_mesh(sdf_fn, box_min, box_max, s.mesh.voxel_size_m, chunk_voxels=s.mesh.chunk_voxels,
                                keep_fn=keep_fn, progress=progress)
    attrs = vertex_attributes(model, verts.astype(np.float32), s.mesh.label_offset_m, branch=branch,
                              head=s.panoptic.head)
    rgb = np.round(attrs["rgb"] * 255).astype(np.uint8) if len(verts) else np.zeros((0, 3), np.uint8)
    if gaussians is not None and len(verts):
        rgb = gaussian_colours_at(gaussians, verts)
    if colour_source == "images" and len(verts):
        rgb, seen = colour_vertices_from_images(verts, attrs["normals"], scene, bank.frame_index, colour_depth_tol_m,
                                                fallback_rgb=rgb, progress=progress)
        log.info(f"mesh colours: {seen.mean():.1%} of vertices from {len(bank.frame_index)} training images, "
                 f"the rest from the {'Gaussians' if gaussians is not None else 'fields'}")
    sem = attrs["semantic"].astype(np.int64) if scene.has_masks else np.zeros(len(verts), np.int64)
    if branch is not None:
        token_ids = token_id_map(branch.tokens.n, attrs["token"])
        inst = apply_ids(attrs["token"], token_ids)
        if s.panoptic.merge_fragments:
            _, lut = merge_fragment_ids(faces, inst, sem, token_ids, s.panoptic, log.info)
            if lut is not None:
                token_ids, inst = lut[token_ids], lut[inst]
        if s.panoptic.merge_by_masks and scene.has_masks:
            _, lut = merge_ids_by_masks(verts, inst, sem, token_ids, scene, list(bank.frame_index), s.panoptic,
                                        log.info, progress=progress)
            if lut is not None:
                token_ids, inst = lut[token_ids], lut[inst]
    else:
        token_ids, inst = np.zeros(0, np.int64), np.zeros(len(verts), np.int64)
    p = s.panoptic
    if (p.split_untokened and branch is not None) or p.fill_unmasked:
        sem_before, inst_before = sem, inst
        sem, inst, changed = relabel_mesh(verts, faces, sem, inst, scene, list(bank.frame_index),
                                          split=p.split_untokened and branch is not None, fill=p.fill_unmasked,
                                          params=relabel_params(s), log=log.info, progress=progress)
    else:
        changed = None
    if p.reclass_by_masks and branch is not None and scene.has_masks:
        # merged ids reach the fields' label images through token_ids; the class change through relabel.npz
        sem_r, inst_r = sem, inst
        sem, _, merges = reclass_mesh(verts, sem, inst, scene, list(bank.frame_index), reclass_params(s),
                                      mask_merge_params(p), log=log.info, progress=progress)
        moved = sem != sem_r
        if moved.any():
            if changed is None:
                sem_before, inst_before, changed = sem_r, inst_r, moved
            else:
                changed = changed | moved
        if merges:
            lut = merged_id_map(np.concatenate([token_ids, inst, inst_before]), merges)
            token_ids, inst, inst_before = lut[token_ids], lut[inst], lut[inst_before]   # one numbering
    if branch is not None and (p.dissolve_on_stuff or p.consistent_ids):
        sem_c, inst_c = sem, inst
        sem, inst, dissolved = consistent_mesh(verts, sem, inst, scene, list(bank.frame_index), p, log=log.info,
                                               progress=progress)
        if dissolved.any():                           # label images follow the dissolved vertices (relabel.npz)
            if changed is None:
                sem_before, inst_before, changed = sem_c, inst_c, dissolved
            else:
                changed = changed | dissolved
    if (run / RELABEL_FILE).is_file():
        (run / RELABEL_FILE).unlink()                     # from an earlier fit into this folder
    path = run / "mesh.ply"
    pal = class_palette(scene.n_classes)
    write_label_meshes(run, verts, faces, rgb, sem, inst, pal)
    if changed is not None:
        write_relabel(run, changed, sem_before, inst_before)     # after the mesh its indices refer to
    fault_point("meshing")
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
