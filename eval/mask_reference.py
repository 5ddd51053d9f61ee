"""How much 3D semantics and instances the 2D masks carry: references for semantic_3d and
instance_3d, with no reconstruction.

The masks' class labels are lifted onto the observed GT mesh vertices (the points semantic_3d
scores) using the GT geometry: in every training frame a vertex takes the mask class at the pixel
it projects to, if the frame's depth there is within `depth_tol_m` of the vertex's own z (the
vertex is what that pixel saw) and the pixel is labelled; its class is the majority over frames;
vertices no mask labels take the class of the nearest labelled vertex. This is what lifting the
labels by a plain vote gets with perfect geometry: a learned field may do better (it smooths and
extrapolates) or worse (it must also find the geometry), so it is a reference, not a bound.

instance_3d reference: the same vote with the masks' instances instead of their classes, each
mask associated by an oracle with the GT thing instance it overlaps most in its frame (the GT
instance image; a mask that overlaps no GT thing votes "no instance", as do stuff pixels). The
association is perfect here, which no method has, so this reference is optimistic about
association and says only what the masks cover: a GT instance the masks hardly ever cover stays
uncovered unless a method extrapolates to it.

Also reported per class, `label_coverage`: the share (%) of the class's observed GT vertices that
at least one mask labels with their own class. A class the masks hardly ever label (a thin lamp
eroded away at 160x120) cannot be expected to score well in 3D.

    python -m eval.mask_reference --scene DIR [--split train] [--out FILE.json] [--mesh RUN/mesh.ply]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from eval.metrics import confusion_matrix, project_points, semantic_metrics


def frame_votes(points: np.ndarray, K: np.ndarray, c2w: np.ndarray, depth_m: np.ndarray, label: np.ndarray,
                depth_tol_m: float) -> tuple[np.ndarray, np.ndarray]:
    """(point index [M], class [M]) of the points [N, 3] that frame (c2w [4, 4], depth_m [H, W], label
    [H, W], 0 = unlabelled) sees with a label: in front of the camera, inside the image, the depth at
    the nearest pixel valid and within depth_tol_m of the point's z."""
    assert points.ndim == 2 and points.shape[1] == 3, f"points must be [N, 3], got {points.shape}"
    assert depth_m.shape == label.shape, f"depth {depth_m.shape} and label {label.shape} differ in size"
    H, W = depth_m.shape
    u, v, z = project_points(points, K, c2w)                                  # [N] each
    ok = np.isfinite(u) & np.isfinite(v) & (z > 1e-3)
    ui = np.full(len(points), -1, np.int64)
    vi = np.full(len(points), -1, np.int64)
    ui[ok], vi[ok] = np.round(u[ok]).astype(np.int64), np.round(v[ok]).astype(np.int64)
    ok &= (ui >= 0) & (ui < W) & (vi >= 0) & (vi < H)
    idx = np.flatnonzero(ok)
    d = depth_m[vi[idx], ui[idx]]
    lab = label[vi[idx], ui[idx]].astype(np.int64)
    seen = (d > 0) & (np.abs(z[idx] - d) <= depth_tol_m) & (lab > 0)
    return idx[seen], lab[seen]


def vote_labels(points: np.ndarray, votes: np.ndarray) -> np.ndarray:
    """Per point [N] the class with the most votes (votes [N, C]; ties: the lower class id); points
    without a vote take the class of the nearest voted point (all 0 if none is voted)."""
    assert votes.shape[0] == points.shape[0]
    labels = votes.argmax(axis=1).astype(np.int64)                                 # 0 where nothing voted
    has = votes.sum(axis=1) > 0
    if has.any() and not has.all():
        _, nn = cKDTree(points[has]).query(points[~has], k=1)
        labels[~has] = labels[has][nn]
    return labels


def oracle_instance_labels(mask_inst: np.ndarray, mask_sem: np.ndarray, gt_sem: np.ndarray, gt_inst: np.ndarray,
                           key_index: dict[tuple[int, int], int]) -> np.ndarray:
    """Per-pixel instance vote [H, W] of one frame's masks under oracle association: 0 = no vote
    (unlabelled pixel), 1 = no instance (a stuff pixel, or a mask overlapping no GT thing instance),
    2 + k = GT thing instance k, where key_index maps (GT class, GT instance) -> k. Each mask id
    > 0 is associated with the GT instance (among key_index) it shares most pixels with."""
    assert mask_inst.shape == mask_sem.shape == gt_sem.shape == gt_inst.shape, "label images differ in size"
    out = np.zeros(mask_inst.shape, np.int64)
    out[(mask_sem > 0) & (mask_inst == 0)] = 1
    gk = np.full(gt_sem.shape, -1, np.int64)                                       # [H, W] GT instance index
    for (c, i), k in key_index.items():
        gk[(gt_sem == c) & (gt_inst == i)] = k
    for m in np.unique(mask_inst):
        if m == 0:
            continue
        sel = mask_inst == m
        ks = gk[sel]
        ks = ks[ks >= 0]
        out[sel] = 2 + int(np.bincount(ks).argmax()) if ks.size else 1
    return out


def mask_reference(scene, split: str = "train", depth_tol_m: float = 0.03,
                   on_vertices: np.ndarray | None = None) -> dict:
    """semantic_3d of the masks' labels lifted onto the observed GT vertices by vote (see the module
    docstring), with per-class IoU and label coverage (%), keyed by class name; with GT instances
    (vertex and image) also instance_3d of the masks' instances under oracle association.

    on_vertices [M, 3] (a reconstruction's mesh vertices): the votes are cast on these points instead and
    carried to the GT vertices by nearest neighbour, the transfer semantic_3d and instance_3d apply to a
    predicted mesh. The result is what the masks carry given that geometry: a GT part the reconstruction
    lost (a thin leg, the back of a table against a wall) takes the label of whatever surface is nearest,
    as it does for the method. The gap between the two references is the geometry's share of a method's
    gap to the first."""
    from eval.evaluate import observed_gt
    from eval.panoptic_metrics import instance_coverage
    if scene.gt_mesh_path is None or not scene.has_masks:
        raise ValueError(f"{scene.root}: the mask reference needs masks/ and gt/mesh.ply")
    gt = observed_gt(scene)
    if "vertex_semantic" not in gt:
        raise ValueError(f"{scene.gt_mesh_path} has no 'semantic' vertex property")
    pts, gt_sem = gt["observed_vertices"], gt["vertex_semantic"]                 # [N, 3], [N]
    if on_vertices is not None:
        assert on_vertices.ndim == 2 and on_vertices.shape[1] == 3 and len(on_vertices), \
            f"on_vertices must be [M, 3] with M > 0, got {on_vertices.shape}"
        vpts = np.asarray(on_vertices, np.float64)                                # [M, 3] the points that vote
        _, to_v = cKDTree(vpts).query(pts, k=1)                                   # [N] GT vertex -> voting point
    else:
        vpts, to_v = pts, np.arange(len(pts))
    names = {c.id: c.name for c in scene.classes}
    n_cls = max([int(gt_sem.max(initial=0))] + list(names)) + 1
    votes = np.zeros((len(vpts), n_cls), np.int64)                                # [M, C]
    with_inst = "vertex_instance" in gt and scene.has_gt_images
    if with_inst:
        things = set(scene.thing_ids())
        keys = sorted({(int(c), int(i)) for c, i in zip(gt_sem, gt["vertex_instance"]) if c in things and i > 0})
        key_index = {k: n for n, k in enumerate(keys)}
        inst_votes = np.zeros((len(vpts), 2 + len(keys)), np.int64)               # [M, 2 + K]
    split = split if split in scene.splits else "train"
    for i in scene.split_indices(split):
        m_inst, sem, _ = scene.load_masks(i)
        depth_m = scene.load_depth_m(i)
        idx, lab = frame_votes(vpts, scene.K, scene.c2w[i], depth_m, sem, depth_tol_m)
        if lab.size and int(lab.max()) >= n_cls:
            raise ValueError(f"{scene.root / 'masks' / 'semantic' / (scene.frame_ids[i] + '.png')}: class id "
                             f"{int(lab.max())} is not in classes.json")
        np.add.at(votes, (idx, lab), 1)
        if with_inst:
            g_sem, g_inst = scene.load_gt(i)
            ivote = oracle_instance_labels(m_inst, sem, g_sem, g_inst, key_index)
            idx, lab = frame_votes(vpts, scene.K, scene.c2w[i], depth_m, ivote, depth_tol_m)
            np.add.at(inst_votes, (idx, lab), 1)
    pred = vote_labels(vpts, votes)[to_v]                                          # [N]
    votes = votes[to_v]                                                            # [N, C]
    sm = semantic_metrics(confusion_matrix(pred, gt_sem, n_cls, ignore_gt=0))
    coverage = {names.get(int(c), str(c)): round(100.0 * float((votes[gt_sem == c, c] > 0).mean()), 1)
                for c in np.unique(gt_sem) if c > 0}
    out = {"semantic_3d": {"miou": round(sm["miou"], 3), "macc": round(sm["macc"], 3),
                           "per_class_iou": {names.get(k, str(k)): round(v, 3)
                                             for k, v in sm["per_class_iou"].items()}}}
    if with_inst:
        # vote 1 = no instance -> id 0; vote 2 + k -> id k + 1 (one predicted id per GT instance)
        pred_inst = np.maximum(vote_labels(vpts, inst_votes) - 1, 0)[to_v]        # [N]
        inst_votes = inst_votes[to_v]                                              # [N, 2 + K]
        cov = instance_coverage(pred_inst, gt_sem, gt["vertex_instance"], scene.thing_ids())
        gt_key = np.array([key_index.get((int(c), int(i)), -1) for c, i in zip(gt_sem, gt["vertex_instance"])])
        per = {}
        for (c, i), k in key_index.items():
            g, p = gt_key == k, pred_inst == k + 1
            per[f"{names.get(c, str(c))}#{i}"] = {
                "iou": round(100.0 * float((g & p).sum() / max((g | p).sum(), 1)), 1),
                "mask_coverage": round(100.0 * float((inst_votes[g, 2 + k] > 0).mean()), 1),
                "n_vertices": int(g.sum())}
        out["instance_3d"] = {"mcov": round(cov["mcov"], 3), "mwcov": round(cov["mwcov"], 3),
                              "n_gt_instances": cov["n_gt_instances"], "per_instance": per}
    return {**out, "label_coverage": coverage, "split": split, "depth_tol_m": depth_tol_m,
            "n_vertices": int(len(pts)), "geometry": "gt" if on_vertices is None else "reconstruction"}


def main(argv: list[str] | None = None) -> int:
    from recon.core.io import atomic_write_text
    from recon.data.scene import load_scene
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scene", type=Path, required=True)
    p.add_argument("--split", default="train", help="frames whose masks vote (default: train)")
    p.add_argument("--depth-tol", type=float, default=0.03, help="visibility tolerance in metres")
    p.add_argument("--out", type=Path, default=None, help="also write the result as JSON here")
    p.add_argument("--mesh", type=Path, default=None,
                   help="a reconstruction's mesh (RUN/mesh.ply): vote on its vertices, carried to the GT vertices "
                        "by nearest neighbour (what the masks carry given that geometry)")
    args = p.parse_args(argv)
    on = None
    if args.mesh is not None:
        from recon.data.ply import read_ply
        if not args.mesh.is_file():
            p.error(f"{args.mesh}: no such mesh")
        on = read_ply(args.mesh)[0]
        if len(on) == 0:
            p.error(f"{args.mesh}: the mesh has no vertices")
    ref = mask_reference(load_scene(args.scene, check_images=False), args.split, args.depth_tol, on)
    text = json.dumps(ref, indent=1) + "\n"
    if args.out is not None:
        atomic_write_text(args.out, text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
