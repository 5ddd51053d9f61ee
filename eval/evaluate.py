"""`run.py eval`: metrics of a fitted run against the scene's ground truth -> RUN/metrics.json.

Geometry: points sampled uniformly on the predicted mesh and on the observed part of
the GT mesh (GT faces seen by at least one evaluation camera, occlusion by the GT mesh
itself), METHOD.md section 9. semantic_3d: the predicted class at the vertices of the observed
GT faces, taken from the nearest predicted mesh vertex (semantic_3d_area_sampled: the same at
points sampled area-uniformly on the observed GT surface, which weighs surfaces by area
rather than by tessellation). The TSDF-fusion
baseline fuses the same training depth at the same voxel size and is scored by the
same code, under "baselines".
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import yaml
from scipy.spatial import cKDTree

from eval.baselines.tsdf import tsdf_fusion
from eval.metrics import (confusion_matrix, geometry_metrics, sample_mesh_points, semantic_metrics,
                          visible_face_mask)
from recon.config import atomic_write_text
from recon.meshing import read_ply
from recon.data.scene import Scene, load_scene

N_POINTS = 200_000
THRESHOLD_M = 0.05


def _run_scene(run: Path, scene_dir: Path | None) -> Path:
    if scene_dir is not None:
        return Path(scene_dir)
    p = run / "scene.txt"
    if not p.is_file():
        raise FileNotFoundError(f"{run} does not say which scene it was fitted on ({p} missing); pass --scene")
    return Path(p.read_text().strip())


def observed_gt(scene: Scene, seed: int = 0) -> dict:
    """GT mesh restricted to faces seen from the scene's evaluation cameras, with sample points and labels."""
    v, f, _, props = read_ply(scene.gt_mesh_path)
    idx = scene.split_indices("eval")
    vis = visible_face_mask(v, f, scene.K, scene.c2w[idx], scene.width, scene.height)
    fv = f[vis]
    pts, face = sample_mesh_points(v, fv, N_POINTS, seed=seed + 1, return_face_index=True)
    vert_idx = np.unique(fv)
    out = {"vertices": v, "faces": fv, "points": pts, "n_faces_total": int(len(f)), "n_faces_observed": int(vis.sum()),
           "observed_vertices": v[vert_idx]}
    if "semantic" in props:
        out["point_semantic"] = props["semantic"][fv[face, 0]].astype(np.int64)
        out["vertex_semantic"] = props["semantic"][vert_idx].astype(np.int64)
    if "instance" in props:
        out["point_instance"] = props["instance"][fv[face, 0]].astype(np.int64)
    return out


def mesh_geometry(vertices: np.ndarray, faces: np.ndarray, gt: dict, seed: int = 0) -> dict:
    """Geometry metrics of a predicted mesh against the observed GT (points from observed_gt)."""
    if len(faces) == 0:
        return geometry_metrics(np.zeros((0, 3)), gt["points"], THRESHOLD_M)
    pred_pts = sample_mesh_points(vertices, faces, N_POINTS, seed=seed)
    m = geometry_metrics(pred_pts, gt["points"], THRESHOLD_M, pred_mesh=(vertices, faces),
                         gt_mesh=(gt["vertices"], gt["faces"]))
    return {k: round(float(v), 4) for k, v in m.items()}


def semantic_at_points(pred_vertices: np.ndarray, pred_semantic: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Class of the nearest predicted vertex for each query point [N, 3] -> [N]."""
    if len(pred_vertices) == 0:
        return np.zeros(len(points), np.int64)
    _, nn = cKDTree(pred_vertices).query(points, k=1, workers=-1)
    return pred_semantic[nn].astype(np.int64)


def tsdf_baseline(scene: Scene, voxel_size_m: float, split: str) -> dict:
    idx = scene.split_indices(split)
    depths = [scene.load_depth_m(i) for i in idx]
    colors = [scene.load_color(i) for i in idx]
    return tsdf_fusion(depths, colors, scene.K, [scene.c2w[i] for i in idx], voxel_size_m)


def evaluate_run(run: Path, scene_dir: Path | None = None, baseline: bool = True, log=print) -> dict:
    run = Path(run)
    mesh_path = run / "mesh.ply"
    if not mesh_path.is_file():
        raise FileNotFoundError(f"{mesh_path} missing: fit the run first")
    scene = load_scene(_run_scene(run, scene_dir), check_images=False)
    cfg = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    voxel = float(cfg.get("mesh", {}).get("voxel_size_m", 0.02))
    split = cfg.get("data", {}).get("split", "train")
    pv, pf, _, pprops = read_ply(mesh_path)
    pred = {"vertices": pv, "faces": pf, "props": pprops}
    metrics: dict = {}
    t0 = time.perf_counter()
    if scene.gt_mesh_path is None:
        log(f"{scene.root} has no gt/mesh.ply: geometry and 3D semantic metrics skipped")
    else:
        gt = observed_gt(scene)
        metrics["geometry"] = mesh_geometry(pred["vertices"], pred["faces"], gt)
        metrics["geometry"]["gt_faces_observed"] = gt["n_faces_observed"]
        if "point_semantic" in gt and "semantic" in pred["props"]:
            names = {c.id: c.name for c in scene.classes}
            for key, pts, labels in (("semantic_3d", gt["observed_vertices"], gt["vertex_semantic"]),
                                     ("semantic_3d_area_sampled", gt["points"], gt["point_semantic"])):
                lab = semantic_at_points(pred["vertices"], pred["props"]["semantic"], pts)
                sm = semantic_metrics(confusion_matrix(lab, labels, scene.n_classes, ignore_gt=0))
                metrics[key] = {"miou": round(sm["miou"], 3), "macc": round(sm["macc"], 3),
                                "per_class_iou": {names.get(int(k), str(k)): round(v, 3)
                                                  for k, v in sm["per_class_iou"].items()}}
        if baseline:
            b = tsdf_baseline(scene, voxel, split if split in scene.splits else "train")
            metrics["baselines"] = {"tsdf_fusion": {"geometry": mesh_geometry(b["vertices"], b["faces"], gt),
                                                    "voxel_size_m": voxel, "seconds": round(b["seconds"], 2)}}
    timing_path = run / "timing.json"
    if timing_path.is_file():
        t = json.loads(timing_path.read_text())
        metrics["timing"] = {"fit_seconds": t["fit_seconds"], "iterations": t["iterations"],
                             "peak_rss_mb": t["peak_rss_mb"]}
    metrics["eval_seconds"] = round(time.perf_counter() - t0, 2)
    atomic_write_text(run / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    log(f"wrote {run / 'metrics.json'}")
    return metrics


def eval_command(args) -> int:
    m = evaluate_run(args.run, args.scene, baseline=not args.no_baseline)
    print(json.dumps(m, indent=1))
    return 0
