"""Post-processes of a finished run folder that need no model: mesh culling, fragment merging, mask-evidence
merging and the relabelling where the masks are silent.

Both read the labelled mesh (mesh.ply, legend.json, instances.json), rewrite what changes atomically
and record the setting they applied in config.yaml and log.txt, so the run says how it was made.
`run.py cull-mesh` and `run.py merge-fragments` call them; the bench uses them to bring an older
finished fit up to new post-process settings without refitting.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from recon.core.config import ConfigError, load_config, save_config
from recon.core.io import atomic_write_bytes
from recon.core.runfolder import writes_run
from recon.core.settings import FitSettings
from recon.data.palette import class_palette
from recon.data.ply import read_ply
from recon.data.run_files import png16_bytes, read_label_images, write_label_images
from recon.data.scene import load_scene
from recon.postfit.fragments import merge_fragment_ids
from recon.postfit.labelled_mesh import write_instances, write_label_meshes
from recon.postfit.mask_merge import merge_ids_by_masks
from recon.postfit.mask_relabel import (RELABEL_FILE, LabelImageCorrector, cull_relabel, relabel_mesh,
                                        relabel_params, write_relabel)
from recon.postfit.meshing import cull_faces, observed_mask
from recon.train.runs import train_indices


def read_labelled_run(run: Path, what: str) -> dict:
    """A finished run's labelled mesh for a post-process (`what` names it in errors): vertices [V, 3],
    faces [F, 3], rgb [V, 3] uint8, semantic / instance [V], the settings (config.yaml), the legend
    palette and class names and, with an instance branch, token_ids and per-vertex confidence [V]
    (each instance's score from instances.json)."""
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
    save_config(settings, Path(run) / "config.yaml")
    with open(Path(run) / "log.txt", "a") as fh:
        fh.write(line + "\n")
    log(line)


@writes_run("cull-mesh")
def cull_run_mesh(run, front_margin_m: float | None = None, log=print) -> int:
    """Cull a finished run's mesh with the near-surface rule (observed_mask with mesh.cull_margin_m behind and
    `front_margin_m` in front of the training views' depth; default: the run's mesh.cull_front_margin_m),
    without its model: faces only go, vertex labels stay. Rewrites mesh.ply, mesh_semantic.ply,
    mesh_panoptic.ply and, with an instance branch, instances/ and instances.json, each atomically; records the
    margin in config.yaml and log.txt. Label images come from the fields and do not change. Culling twice with
    one margin removes nothing the second time. Returns the number of faces removed."""
    run = Path(run)
    lr = read_labelled_run(run, "mesh culling")
    s = lr["settings"]
    front = s.mesh.cull_front_margin_m if front_margin_m is None else float(front_margin_m)
    if front is not None and not (front >= 0):
        raise ConfigError(f"the front margin must be >=0 metres, got {front}")
    scene = run_scene(run)
    idx = train_indices(scene, s)
    depth_z = [scene.load_depth_m(i) for i in idx]                       # [H, W] each, z-depth in metres
    faces = lr["faces"]
    new_v, new_f, used = cull_faces(                          # the rule extract_mesh applies (keep_mode "all")
        lr["verts"], faces, lambda p: observed_mask(p, scene.K, scene.c2w[idx], depth_z, s.mesh.cull_margin_m, front),
        return_used=True)
    removed = len(faces) - len(new_f)
    rewrite_labelled_run(run, lr, new_v, new_f, used, lr["instance"][used], lr["token_ids"])
    cull_relabel(run, used)                           # its vertex indices follow the culled mesh
    s.mesh.cull_front_margin_m = front
    record_post_process(run, s, f"mesh culling (near-surface, {front} m in front / {s.mesh.cull_margin_m} m "
                                f"behind the training views' depth): removed {removed} of {len(faces)} faces", log)
    return removed


def apply_id_map(run: Path, lr: dict, lut: np.ndarray) -> None:
    """Remap a finished run's instance ids through lut (old id -> new id): mesh*.ply, instances/,
    instances.json (token_ids too) and every labels/instance/*.png, each file atomically."""
    inst, token_ids = lr["instance"], lr["token_ids"]
    rewrite_labelled_run(run, lr, lr["verts"], lr["faces"], None, lut[inst], lut[token_ids])
    for png in sorted((run / "labels" / "instance").glob("*.png")):
        ids = np.asarray(Image.open(png)).astype(np.int64)
        ext = np.arange(max(int(ids.max(initial=0)) + 1, len(lut)))
        ext[:len(lut)] = lut
        atomic_write_bytes(png, png16_bytes(ext[ids], png))


def run_scene(run: Path):
    """The scene a run was fitted on (RUN/scene.txt), loaded without reading its images."""
    scene_txt = Path(run) / "scene.txt"
    if not scene_txt.is_file():
        raise FileNotFoundError(f"{run} does not say which scene it was fitted on ({scene_txt} missing)")
    return load_scene(Path(scene_txt.read_text().strip()), check_images=False)


@writes_run("merge-by-masks")
def merge_run_by_masks(run, min_frames: int | None = None, min_share: float | None = None, log=print,
                       progress: bool = False) -> dict[int, int]:
    """Apply mask-evidence merging (recon/postfit/mask_merge.py) to a finished run folder, without its model:
    two same-class instances merge where the training frames' masks show them as one object. Rewrites the
    same files as merge_run_fragments through one id map; records panoptic.merge_by_masks and its parameters
    in config.yaml and log.txt. Parameters default to the run's config values. Returns the merges."""
    run = Path(run)
    if not (run / "instances.json").is_file():
        raise FileNotFoundError(f"{run} has no instances.json: mask-evidence merging needs a finished run with "
                                f"instances")
    lr = read_labelled_run(run, "mask-evidence merging")
    s = lr["settings"]
    p = s.panoptic
    p.mask_merge_min_frames = p.mask_merge_min_frames if min_frames is None else int(min_frames)
    p.mask_merge_min_share = p.mask_merge_min_share if min_share is None else float(min_share)
    if p.mask_merge_min_frames < 1 or not 0 <= p.mask_merge_min_share <= 1:
        raise ConfigError(f"--min-frames must be >= 1 and --min-share in [0, 1], got {p.mask_merge_min_frames} and "
                          f"{p.mask_merge_min_share}")
    scene = run_scene(run)
    if not scene.has_masks:
        raise ValueError(f"{scene.root} has no masks: mask-evidence merging needs the scene's 2D masks")
    merges, lut = merge_ids_by_masks(lr["verts"], lr["instance"], lr["semantic"], lr["token_ids"], scene,
                                     train_indices(scene, s), p, log, progress=progress)
    if lut is not None:
        apply_id_map(run, lr, lut)
    p.merge_by_masks = True
    record_post_process(run, s, f"mask-evidence merging (min_frames {p.mask_merge_min_frames}, min_share "
                                f"{p.mask_merge_min_share}): {len(merges)} merge(s) {dict(sorted(merges.items()))}",
                        log)
    return merges


@writes_run("merge-fragments")
def merge_run_fragments(run, max_fraction: float | None = None, min_shared_edges: int | None = None,
                        log=print) -> dict[int, int]:
    """Apply fragment merging to a finished run folder, without its model (ids only change).

    Rewrites RUN/mesh.ply, mesh_semantic.ply and mesh_panoptic.ply, instances/ and
    instances.json, and every labels/instance/*.png through one id map, each file atomically;
    records the settings in config.yaml (panoptic.merge_fragments and its parameters) and log.txt.
    Parameters default to the run's config values. Returns the merges (old id -> old id merged into)."""
    run = Path(run)
    if not (run / "instances.json").is_file():
        raise FileNotFoundError(f"{run} has no instances.json: fragment merging needs a finished run with instances")
    lr = read_labelled_run(run, "fragment merging")
    s = lr["settings"]
    p = s.panoptic
    p.fragment_max_fraction = p.fragment_max_fraction if max_fraction is None else float(max_fraction)
    p.fragment_min_shared_edges = p.fragment_min_shared_edges if min_shared_edges is None else int(min_shared_edges)
    if not 0 <= p.fragment_max_fraction <= 1 or p.fragment_min_shared_edges < 1:
        raise ConfigError(f"--max-fraction must be in [0, 1] and --min-edges >=1, got {p.fragment_max_fraction} and "
                          f"{p.fragment_min_shared_edges}")
    inst, token_ids = lr["instance"], lr["token_ids"]
    merges, lut = merge_fragment_ids(lr["faces"], inst, lr["semantic"], token_ids, p, log)
    if lut is not None:
        apply_id_map(run, lr, lut)
    p.merge_fragments = True
    record_post_process(run, s, f"fragment merging (max_fraction {p.fragment_max_fraction}, min_shared_edges "
                                f"{p.fragment_min_shared_edges}): {len(merges)} merge(s) "
                                f"{dict(sorted(merges.items()))}", log)
    return merges


def correct_label_images(run: Path, scene, corrector: LabelImageCorrector, lut: np.ndarray | None = None,
                         after=None) -> int:
    """Bring a finished run's label images (labels/semantic, labels/instance) to its post-processed mesh: instance
    ids through lut (old id -> new id; None: unchanged), then the corrector's changed vertices, then
    after(sem [H, W], inst [H, W]) -> inst (None: nothing). Each frame that changes is rewritten atomically.
    Returns the pixels the corrector and `after` changed."""
    n_px = 0
    if not (run / "labels" / "semantic").is_dir():
        return 0
    for i, fid in enumerate(scene.frame_ids):
        if not (run / "labels" / "semantic" / f"{fid}.png").is_file():
            continue
        sem_img, inst_img = read_label_images(run, fid, (scene.width, scene.height))
        if lut is not None:
            ext = np.arange(max(int(inst_img.max(initial=0)) + 1, len(lut)))
            ext[:len(lut)] = lut
            inst_img = ext[inst_img.astype(np.int64)]
        new_sem, new_inst, n = corrector.correct(scene.K, scene.c2w[i], scene.load_depth_m(i), sem_img, inst_img)
        if after is not None:
            fixed = after(new_sem, new_inst)
            n += int((fixed != new_inst).sum())
            new_inst = fixed
        if n or lut is not None:
            write_label_images(run, [fid], [new_sem], [new_inst])
        n_px += n
    return n_px


@writes_run("relabel")
def relabel_run(run, split: bool = True, fill: bool = True, log=print, progress: bool = False) -> int:
    """Apply the relabelling where the masks are silent (recon/postfit/mask_relabel.py: `split` untokened regions,
    `fill` unmasked vertices) to a finished run folder, without its model. Rewrites mesh*.ply, instances/,
    instances.json, RUN/relabel.npz and the label images that show changed vertices, each file atomically;
    records panoptic.split_untokened / fill_unmasked in config.yaml and log.txt (a rule the run had on stays on).
    Returns the number of vertices whose labels changed."""
    run = Path(run)
    lr = read_labelled_run(run, "relabelling")
    s = lr["settings"]
    p = s.panoptic
    scene = run_scene(run)
    if (run / RELABEL_FILE).is_file():
        log(f"{run}: relabelled already ({RELABEL_FILE}); the rules apply to the fields' labels, not to their own "
            f"output, so nothing changes")
        return 0
    if not scene.has_masks:
        raise ValueError(f"{scene.root} has no masks: the relabelling needs the scene's 2D masks")
    split = bool(split) and lr["token_ids"] is not None
    sem, inst, changed = relabel_mesh(lr["verts"], lr["faces"], lr["semantic"], lr["instance"], scene,
                                      train_indices(scene, s), split=split, fill=fill, params=relabel_params(s),
                                      log=log, progress=progress)
    sem_before, inst_before = lr["semantic"], lr["instance"]
    lr["semantic"] = sem
    rewrite_labelled_run(run, lr, lr["verts"], lr["faces"], None, inst, lr["token_ids"])
    write_relabel(run, changed, sem_before, inst_before)
    n_px = 0
    if changed.any():
        n_px = correct_label_images(run, scene, LabelImageCorrector(lr["verts"], sem, inst, changed,
                                                                    p.relabel_depth_tol_m, s.mesh.voxel_size_m))
    p.split_untokened = p.split_untokened or split
    p.fill_unmasked = p.fill_unmasked or bool(fill)
    record_post_process(run, s, f"relabelling where the masks are silent (split {split}, fill {bool(fill)}, depth "
                                f"tolerance {p.relabel_depth_tol_m} m): {int(changed.sum())} vertices and {n_px} "
                                f"label-image pixels changed", log)
    return int(changed.sum())


def _labels_before_relabel(run: Path, sem: np.ndarray, inst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(changed [V] bool, sem_before [V], inst_before [V]) of a run's mesh labels sem, inst [V]: the vertices
    RUN/relabel.npz lists as changed, with the labels it records from before (elsewhere sem, inst themselves), so a
    later post-process can add its own changed vertices and keep the earliest labels."""
    from recon.postfit.mask_relabel import _read_relabel_arrays

    earlier = _read_relabel_arrays(run, len(sem))
    changed = np.zeros(len(sem), bool)
    sem_b, inst_b = sem.copy(), inst.copy()
    if earlier is not None:
        changed[earlier["changed"]] = True
        if "semantic_before" in earlier:
            idx = earlier["changed"]
            sem_b[idx], inst_b[idx] = earlier["semantic_before"], earlier["instance_before"]
    return changed, sem_b, inst_b


def _raw_panoptic(run: Path) -> dict:
    """The panoptic section of RUN/config.yaml as written (a setting the run predates is absent)."""
    import yaml

    return (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("panoptic") or {}


@writes_run("reclass")
def reclass_run(run, log=print, progress: bool = False) -> int:
    """Apply the instance class from its masks (recon/postfit/mask_reclass.py) to a finished run folder, without
    its model. Rewrites mesh*.ply, instances/, instances.json, RUN/relabel.npz (the reclassed vertices added, with
    their earlier labels) and the label images (merged ids through the id map; pixels on reclassed vertices as the
    relabelling corrects them), each file atomically; records panoptic.reclass_by_masks in config.yaml and
    log.txt. Returns the number of vertices whose class changed."""
    from recon.postfit.fragments import merged_id_map
    from recon.postfit.mask_merge import mask_merge_params
    from recon.postfit.mask_reclass import reclass_mesh, reclass_params

    run = Path(run)
    if not (run / "instances.json").is_file():
        raise FileNotFoundError(f"{run} has no instances.json: the mask reclass needs a finished run with instances")
    lr = read_labelled_run(run, "mask reclass")
    s = lr["settings"]
    p = s.panoptic
    scene = run_scene(run)
    if not scene.has_masks:
        raise ValueError(f"{scene.root} has no masks: the mask reclass needs the scene's 2D masks")
    if _raw_panoptic(run).get("reclass_by_masks"):              # a run fitted before the setting existed had no reclass
        log(f"{run}: reclassed by masks already (panoptic.reclass_by_masks); nothing changes")
        return 0
    sem_r, inst_r = lr["semantic"], lr["instance"]
    sem, _, merges = reclass_mesh(lr["verts"], sem_r, inst_r, scene, train_indices(scene, s), reclass_params(s),
                                  mask_merge_params(p), log=log, progress=progress)
    moved = sem != sem_r
    changed, sem_b, inst_b = _labels_before_relabel(run, sem_r, inst_r)
    changed |= moved
    lut = merged_id_map(np.concatenate([lr["token_ids"], inst_r, inst_b]), merges) if merges else None
    inst = inst_r if lut is None else lut[inst_r]
    token_ids = lr["token_ids"] if lut is None else lut[lr["token_ids"]]
    lr["semantic"] = sem
    rewrite_labelled_run(run, lr, lr["verts"], lr["faces"], None, inst, token_ids)
    if changed.any():
        write_relabel(run, changed, sem_b, inst_b if lut is None else lut[inst_b])
    n_px = 0
    if moved.any() or lut is not None:
        n_px = correct_label_images(run, scene, LabelImageCorrector(lr["verts"], sem, inst, moved,
                                                                    p.relabel_depth_tol_m, s.mesh.voxel_size_m), lut)
    p.reclass_by_masks = True
    record_post_process(run, s, f"mask reclass (min_frames {p.reclass_min_frames}, min_share {p.reclass_min_share}):"
                                f" {int(moved.sum())} vertices changed class, {len(merges)} merge(s) "
                                f"{dict(sorted(merges.items()))}, {n_px} label-image pixels corrected", log)
    return int(moved.sum())


@writes_run("consistency")
def consistency_run(run, log=print, progress: bool = False) -> int:
    """Apply the last panoptic post-process (recon/postfit/panoptic_consistency.py: instances the masks call stuff
    dissolve; thing vertices and pixels keep an id only where it is an instance of their class) to a finished
    run folder, without its model. Rewrites mesh*.ply, instances/, instances.json, RUN/relabel.npz (the dissolved
    vertices added, with their earlier labels) and the label images, each file atomically; records
    panoptic.dissolve_on_stuff and consistent_ids in config.yaml and log.txt. Returns the number of vertices
    whose labels changed."""
    from recon.postfit.panoptic_consistency import consistent_ids, consistent_mesh, instances_json_classes

    run = Path(run)
    if not (run / "instances.json").is_file():
        raise FileNotFoundError(f"{run} has no instances.json: the consistency step needs a finished run with "
                                f"instances")
    lr = read_labelled_run(run, "panoptic consistency")
    s = lr["settings"]
    p = s.panoptic
    scene = run_scene(run)
    raw = _raw_panoptic(run)
    if raw.get("dissolve_on_stuff") or raw.get("consistent_ids"):   # a run fitted before the settings had neither
        log(f"{run}: made consistent already (panoptic.dissolve_on_stuff / consistent_ids); nothing changes")
        return 0
    p.dissolve_on_stuff, p.consistent_ids = scene.has_masks, True
    sem_r, inst_r = lr["semantic"], lr["instance"]
    sem, inst, dissolved = consistent_mesh(lr["verts"], sem_r, inst_r, scene, train_indices(scene, s), p, log=log,
                                           progress=progress)
    changed, sem_b, inst_b = _labels_before_relabel(run, sem_r, inst_r)
    changed |= dissolved
    lr["semantic"] = sem
    rewrite_labelled_run(run, lr, lr["verts"], lr["faces"], None, inst, lr["token_ids"])
    if changed.any():
        write_relabel(run, changed, sem_b, inst_b)
    id_class, things = instances_json_classes(run) or {}, scene.thing_ids()     # the instances just written
    n_px = correct_label_images(run, scene, LabelImageCorrector(lr["verts"], sem, inst, dissolved,
                                                                p.relabel_depth_tol_m, s.mesh.voxel_size_m),
                                after=lambda si, ii: consistent_ids(si, ii, id_class, things))
    n_changed = int(((sem != sem_r) | (inst != inst_r)).sum())
    record_post_process(run, s, f"panoptic consistency (dissolve on stuff {p.dissolve_on_stuff}: min_votes "
                                f"{p.dissolve_min_votes}, min_share {p.dissolve_min_share}; consistent ids "
                                f"{p.consistent_ids}): {int(dissolved.sum())} vertices dissolved, {n_changed} "
                                f"vertices changed, {n_px} label-image pixels changed", log)
    return n_changed
