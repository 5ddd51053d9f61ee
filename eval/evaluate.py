"""`run.py eval`: metrics of a fitted run against the scene's ground truth -> RUN/metrics.json.

Geometry: points sampled uniformly on the predicted mesh and on the observed part of
the GT mesh (GT faces seen by at least one evaluation camera, occlusion by the GT mesh
itself), METHOD.md section 9. semantic_3d: the predicted class at the vertices of the observed
GT faces, taken from the nearest predicted mesh vertex (semantic_3d_area_sampled: the same at
points sampled area-uniformly on the observed GT surface, which weighs surfaces by area
rather than by tessellation); instance_3d: mCov / mWCov of the GT instances at those vertices,
labelled the same way; semantic_3d_fields / instance_3d_fields: the same scores with the labels
queried from the run's trained fields at those vertices (the paper's Sec. VI-C protocol; needs
RUN/checkpoints/last.pt, skipped without it; the query itself is passed in as `point_labeller`, since eval
knows no model). rendering: the run's novel views (RGB, depth) from the held-out poses against the
captured frames (eval/image_metrics.py: PSNR, SSIM, depth AbsRel, LPIPS where local weights are given) and
the renderer's frames per second; the renderer is passed in as `view_renderer` (RUN -> renderer or None)
for the same reason. 2D (eval/panoptic_metrics.py): the run's rendered label images
RUN/labels/semantic|instance/<fid>.png (recon/data/run_files.py) against gt/semantic|instance
over all frames of the scene concatenated into one image: panoptic_2d (PQ at IoU > 0.5),
panoptic_2d_paper (IoU > 0.3, the PanopticRecon++ threshold for Replica / ScanNet++),
semantic_2d, semantic_2d_paper (mIoU per frame, then averaged, as the PanopticRecon++ evaluation code does),
instance_2d; the same for the held-out frames ("eval" minus "train") under
"heldout". The TSDF-fusion
baseline fuses the same training depth at the same voxel size and is scored by the
same code, under "baselines".
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
import yaml
from scipy.spatial import cKDTree
from tqdm import tqdm

from eval.appearance_reference import appearance_reference
from eval.baselines.mesh_render import MeshColourRenderer
from eval.baselines.tsdf import tsdf_fusion
from eval.image_metrics import (LPIPS_MIN_SIZE, LPIPS_NOT_GIVEN, Lpips, LpipsWeightsError, depth_metrics, load_lpips,
                                psnr, ssim)
from eval.metrics import (confusion_matrix, geometry_metrics, sample_mesh_points, semantic_metrics,
                          visible_face_mask)
from eval.mesh_utils import raycast_depth
from eval.panoptic_metrics import instance_coverage, panoptic_quality, semantic_scores, semantic_scores_per_frame
from recon.core.faults import fault_point
from recon.core.io import atomic_write_text
from recon.core.runfolder import writes_run
from recon.data.ply import read_ply
from recon.data.run_files import (depth_pixel_grid, has_label_images, missing_label_frames, read_depth_npz,
                                   read_label_images)
from recon.data.scene import Scene, load_scene

# (run folder, world points [N, 3]) -> (class id [N], instance id [N]), or None when the run cannot be queried
PointLabeller = Callable[[Path, np.ndarray], "tuple[np.ndarray, np.ndarray] | None"]


class ViewRenderer(Protocol):
    """A trained run seen from any pose (recon/postfit/views.py): colour and depth of one camera."""
    has_gaussians: bool

    def render(self, K: np.ndarray, c2w: np.ndarray, width: int, height: int) -> dict:
        """K [3, 3] pixels, c2w [4, 4] OpenCV camera -> {"rgb": [H, W, 3] float 0..1, "depth_m": [H, W] z-depth
        (0 = none), "alpha": [H, W]}."""


# (run folder) -> its renderer, or None when the run cannot render (no checkpoint)
ViewRendererFactory = Callable[[Path], "ViewRenderer | None"]


class EvalError(ValueError):
    """A run folder cannot be evaluated as it is (the message names the file and why)."""


N_POINTS = 200_000
THRESHOLD_M = 0.05
PQ_THRESHOLD = 0.5        # standard PQ (Panoptic Lifting, PVLFF, PanSt3R)
PQ_THRESHOLD_PAPER = 0.3  # PanopticRecon++ evaluation code on Replica / ScanNet++ (0.1 on ScanNet)


def _run_scene(run: Path, scene_dir: Path | None) -> Path:
    if scene_dir is not None:
        return Path(scene_dir)
    p = run / "scene.txt"
    if not p.is_file():
        raise FileNotFoundError(f"{run} does not say which scene it was fitted on ({p} missing); pass --scene")
    scene = Path(p.read_text().strip())
    if not scene.is_dir():
        raise FileNotFoundError(f"{p} names the scene {scene}, which is not there (moved?); pass --scene")
    return scene


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
        out["vertex_instance"] = props["instance"][vert_idx].astype(np.int64)
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
    return tsdf_fusion(depths, colors, scene.K, [scene.c2w[i] for i in idx], voxel_size_m, progress=True)


def _pq_block(pq: dict, names: dict[int, str]) -> dict:
    return {"pq": round(pq["pq"], 3), "sq": round(pq["sq"], 3), "rq": round(pq["rq"], 3),
            "iou_threshold": pq["iou_threshold"], "pq_things": round(pq["pq_things"], 3),
            "pq_stuff": round(pq["pq_stuff"], 3), "tp": pq["tp"], "fp": pq["fp"], "fn": pq["fn"],
            "per_class_pq": {names.get(c, str(c)): round(v["pq"], 3) for c, v in pq["per_class"].items()}}


def panoptic_2d_scores(pred_sem: np.ndarray, pred_inst: np.ndarray, gt_sem: np.ndarray, gt_inst: np.ndarray,
                       scene: Scene, pixels_per_frame: int | None = None) -> dict:
    """panoptic_2d, panoptic_2d_paper, semantic_2d and instance_2d blocks over flattened [P] labels.

    pixels_per_frame: the frames' size when [P] is frames of that size end to end; then semantic_2d_paper
    (mIoU per frame, averaged: the PanopticRecon++ evaluation code) is added.
    """
    names = {c.id: c.name for c in scene.classes}
    things = scene.thing_ids()
    out = {key: _pq_block(panoptic_quality(pred_sem, pred_inst, gt_sem, gt_inst, things, thr), names)
           for key, thr in (("panoptic_2d", PQ_THRESHOLD), ("panoptic_2d_paper", PQ_THRESHOLD_PAPER))}
    sm = semantic_scores(pred_sem, gt_sem, scene.n_classes)
    out["semantic_2d"] = {"miou": round(sm["miou"], 3), "macc": round(sm["macc"], 3)}
    if pixels_per_frame:
        assert gt_sem.shape[0] % pixels_per_frame == 0, f"{gt_sem.shape[0]} pixels are not frames of {pixels_per_frame}"
        frames = zip(np.asarray(pred_sem).reshape(-1, pixels_per_frame), np.asarray(gt_sem).reshape(-1, pixels_per_frame))
        pf = semantic_scores_per_frame(frames, scene.n_classes)
        out["semantic_2d_paper"] = {"miou": round(pf["miou"], 3), "macc": round(pf["macc"], 3),
                                    "n_frames": pf["n_frames"]}
    cov = instance_coverage(pred_inst, gt_sem, gt_inst, things)
    out["instance_2d"] = {"mcov": round(cov["mcov"], 3), "mwcov": round(cov["mwcov"], 3),
                          "n_gt_instances": cov["n_gt_instances"], "n_pred_instances": cov["n_pred_instances"]}
    return out


def panoptic_2d_metrics(run: Path, scene: Scene) -> dict:
    """2D blocks over all frames of the scene, plus the held-out frames under "heldout" (if any).

    Reads RUN/labels/semantic|instance/<fid>.png and the scene's gt/ images; every frame is
    concatenated into one image (scene-level PQ, eval/panoptic_metrics.py).
    """
    size = (scene.width, scene.height)
    per_frame = []
    for i, fid in enumerate(scene.frame_ids):
        p_sem, p_inst = read_label_images(run, fid, size)
        g_sem, g_inst = scene.load_gt(i)
        per_frame.append([a.astype(np.uint16).reshape(-1) for a in (p_sem, p_inst, g_sem, g_inst)])

    def scores(idx: list[int]) -> dict:
        cat = [np.concatenate([per_frame[i][k] for i in idx]) for k in range(4)]
        return panoptic_2d_scores(*cat, scene, pixels_per_frame=scene.width * scene.height)

    out = scores(list(range(len(scene.frame_ids))))
    out["frames_2d"] = len(scene.frame_ids)
    held = scene.heldout_indices()
    if held:
        out["heldout"] = {**scores(held), "n_frames": len(held)}
    return out


def depth_errors(pred_m: np.ndarray, gt_m: np.ndarray, mask: np.ndarray, within_m: float = 0.05) -> dict:
    """Depth metrics over the pixels `mask` with valid ground truth (gt > 0): AbsRel = mean |p - g| / g
    over those where the prediction exists (p > 0); within = share of ALL such pixels with |p - g| <
    within_m (a missing prediction counts as wrong); coverage = share with a prediction
    (eval/image_metrics.py depth_metrics)."""
    assert pred_m.shape == gt_m.shape == mask.shape
    m = depth_metrics(pred_m, gt_m, mask, within_m)
    if m["n_pixels"] == 0:
        return {"absrel": float("nan"), "within_5cm": float("nan"), "coverage": 0.0, "n_pixels": 0}
    return {"absrel": m["absrel"], "within_5cm": m["within"], "coverage": 1.0 - m["missing"], "n_pixels": m["n_pixels"]}


def heldout_depth_metrics(run: Path, scene: Scene, stride: int, mesh: tuple | None = None) -> dict:
    """Novel-view depth on the held-out frames against the sensor depth, on the pixel grid the run
    rendered (every `stride`th pixel): the run's RUN/depth_heldout/<frame>.png, or, with `mesh`
    (vertices, faces), that mesh ray cast from the same poses (the TSDF baseline). The run's depth is
    read from <frame>.npz (float metres) where it exists, else from the PNG (1 mm steps)."""
    from PIL import Image
    H, W = scene.height, scene.width
    grid = depth_pixel_grid(H, W, stride)
    preds, gts, masks = [], [], []
    frames = sorted(p.stem for p in (run / "depth_heldout").glob("*.png"))
    for fid in frames:
        i = scene.index(fid)
        if mesh is None:
            exact = run / "depth_heldout" / f"{fid}.npz"     # float metres; runs before 2026-12-06 have the mm PNG only
            pred = (read_depth_npz(exact) if exact.is_file()
                    else np.asarray(Image.open(run / "depth_heldout" / f"{fid}.png")).astype(np.float64) / 1000.0)
        else:
            pred = raycast_depth(mesh[0], mesh[1], scene.K, scene.c2w[i], W, H).astype(np.float64)
        preds.append(pred)
        gts.append(scene.load_depth_m(i).astype(np.float64))
        masks.append(grid)
    m = depth_errors(np.stack(preds), np.stack(gts), np.stack(masks))
    return {"absrel": round(m["absrel"], 5), "within_5cm": round(100 * m["within_5cm"], 2),
            "coverage": round(100 * m["coverage"], 2), "n_frames": len(frames), "pixel_stride": stride}


PSNR_CAP_DB = 100.0       # a frame rendered exactly (MSE 0, PSNR inf) scores this, so that means stay finite
TRAIN_FRAMES_FIELDS = 4   # training frames the `rendering` block compares with when the fields render (~1 s a frame)


def rendering_frames(scene: Scene, split: str) -> tuple[list[int], list[int]]:
    """(held-out, trained) frame indices in scene order: held-out = the "eval" split minus the frames the
    run trained on (its data.split; every frame when the scene has no such split)."""
    train = scene.split_indices(split) if split in scene.splits else list(range(len(scene)))
    trained = set(train)
    return [i for i in scene.split_indices("eval") if i not in trained], train


def render_scores(renderer: ViewRenderer, scene: Scene, idx: list[int], lpips: Lpips | None = None,
                  desc: str = "render", progress: bool = True) -> dict:
    """Colour and depth of `renderer` from the poses of frames `idx` against the captured frames: mean
    per-frame PSNR (capped at PSNR_CAP_DB) and SSIM, depth AbsRel / within 5 cm / missing pooled over all
    pixels, mean LPIPS (with `lpips`), and the seconds spent inside renderer.render."""
    H, W = scene.height, scene.width
    psnrs, ssims, lps, preds, gts = [], [], [], [], []
    seconds = 0.0
    for i in tqdm(idx, desc=desc, dynamic_ncols=True, disable=not progress, mininterval=1.0):
        t = time.perf_counter()
        out = renderer.render(scene.K, scene.c2w[i], W, H)
        seconds += time.perf_counter() - t
        rgb, depth = np.asarray(out["rgb"], np.float32), np.asarray(out["depth_m"], np.float32)
        if rgb.shape != (H, W, 3) or depth.shape != (H, W):
            raise EvalError(f"the view renderer returned rgb {rgb.shape} and depth_m {depth.shape} for a {W}x{H} "
                            f"frame; expected ({H}, {W}, 3) and ({H}, {W})")
        gt_rgb = scene.load_color(i).astype(np.float32) / 255.0                       # [H, W, 3] 0..1
        psnrs.append(min(psnr(rgb, gt_rgb), PSNR_CAP_DB))
        ssims.append(ssim(rgb, gt_rgb))
        if lpips is not None:
            lps.append(lpips(rgb, gt_rgb))
        preds.append(depth)
        gts.append(scene.load_depth_m(i))
    d = depth_metrics(np.stack(preds), np.stack(gts), within_m=THRESHOLD_M)
    return {"psnr": round(float(np.mean(psnrs)), 2), "ssim": round(float(np.mean(ssims)), 4),
            "depth_absrel": round(d["absrel"], 4), "depth_within_5cm": round(100 * d["within"], 2),
            "depth_missing": round(100 * d["missing"], 2),
            "lpips": round(float(np.mean(lps)), 4) if lps else None, "n_frames": len(idx), "seconds": seconds}


def tsdf_rendering_metrics(b: dict, scene: Scene, split: str, block: dict, lpips: Lpips | None,
                           progress: bool = True) -> dict:
    """The TSDF-fusion mesh rendered with its fused vertex colours (eval/baselines/mesh_render.py) from the
    frames the run's `rendering` block scored, with the same scores: the novel-view baseline."""
    held, _ = rendering_frames(scene, split)
    idx = held if block["frames"] == "heldout" else scene.split_indices("eval")
    if b.get("colors") is None:
        return {"absent": "the TSDF mesh has no vertex colours"}
    r = render_scores(MeshColourRenderer(b["vertices"], b["faces"], b["colors"]), scene, idx, lpips, "render tsdf",
                      progress)
    out = {"frames": block["frames"], **{k: r[k] for k in ("n_frames", "psnr", "ssim", "depth_absrel",
                                                          "depth_within_5cm", "depth_missing", "lpips")}}
    out["render_fps"] = round(r["n_frames"] / max(r["seconds"], 1e-9), 2)
    return out


def rendering_metrics(run: Path, scene: Scene, split: str, view_renderer: ViewRendererFactory,
                      lpips: Lpips | None, log=print, progress: bool = True) -> dict | None:
    """The `rendering` block: the run's renders from the held-out poses (rendering_frames; every evaluation
    frame when none is held out) against the captured colour and depth, the renderer's frames per second
    (time inside render calls only, after one untimed warm-up render), and the same scores on as many
    evenly spaced training frames under "train" (at most TRAIN_FRAMES_FIELDS when the fields render, which is
    slow). None when `view_renderer` gives no renderer."""
    renderer = view_renderer(run)
    if renderer is None:
        log(f"{run} has no checkpoint: rendering skipped")
        return None
    held, train = rendering_frames(scene, split)
    idx, frames = (held, "heldout") if held else (scene.split_indices("eval"), "eval")
    if not held:
        log(f"{scene.root}: no held-out frames (every evaluation frame was trained on): rendering scores the "
            f"training views")
    if not idx:
        return None
    absent = LPIPS_NOT_GIVEN
    if lpips is not None and min(scene.width, scene.height) < LPIPS_MIN_SIZE:
        lpips, absent = None, (f"the frames ({scene.width}x{scene.height}) are smaller than the "
                               f"{LPIPS_MIN_SIZE}x{LPIPS_MIN_SIZE} pixels LPIPS' AlexNet needs")
    renderer.render(scene.K, scene.c2w[idx[0]], scene.width, scene.height)           # warm-up, untimed
    main = render_scores(renderer, scene, idx, lpips, "render held-out" if held else "render eval", progress)
    block = {"frames": frames, "n_frames": main["n_frames"], "width": scene.width, "height": scene.height,
             "source": "gaussians" if renderer.has_gaussians else "fields",
             **{k: main[k] for k in ("psnr", "ssim", "depth_absrel", "depth_within_5cm", "depth_missing", "lpips")}}
    if lpips is None:
        block["lpips_absent"] = absent
    block["render_fps"] = round(main["n_frames"] / max(main["seconds"], 1e-9), 2)
    if held and train:     # what the training images carry for these views (eval/appearance_reference.py)
        block["reference"] = appearance_reference(scene, held, train)
    block["torch_threads"] = torch.get_num_threads()
    if renderer.has_gaussians and getattr(renderer, "backend", None):
        block["backend"] = renderer.backend
        if renderer.backend == "numba":
            import numba
            block["numba_threads"] = numba.get_num_threads()
    if held and train:
        n = min(len(train), len(held), TRAIN_FRAMES_FIELDS if not renderer.has_gaussians else len(held))
        pick = [train[int(k)] for k in np.linspace(0, len(train) - 1, n).round()]
        t = render_scores(renderer, scene, sorted(set(pick)), lpips, "render train", progress)
        block["train"] = {k: t[k] for k in ("psnr", "ssim", "depth_absrel", "depth_within_5cm", "depth_missing",
                                            "lpips", "n_frames")}
    return block


def semantic_3d_block(pred: np.ndarray, gt_labels: np.ndarray, scene: Scene) -> dict:
    """{miou, macc, per_class_iou by class name} of predicted class ids [N] against GT class ids [N]."""
    names = {c.id: c.name for c in scene.classes}
    sm = semantic_metrics(confusion_matrix(pred, gt_labels, scene.n_classes, ignore_gt=0))
    return {"miou": round(sm["miou"], 3), "macc": round(sm["macc"], 3),
            "per_class_iou": {names.get(int(k), str(k)): round(v, 3) for k, v in sm["per_class_iou"].items()}}


def instance_3d_block(inst: np.ndarray, gt: dict, scene: Scene) -> dict:
    """{mcov, mwcov, n_gt_instances, n_pred_instances, per_instance} of predicted instance ids [N] at the observed
    GT vertices. per_instance: {"<class name>#<GT id>" (the keys of the mask reference's per_instance):
    {iou, n_vertices, pred, share, purity, parts}} (eval/panoptic_metrics.py instance_coverage)."""
    cov = instance_coverage(inst, gt["vertex_semantic"], gt["vertex_instance"], scene.thing_ids(), per_instance=True)
    names = {c.id: c.name for c in scene.classes}
    per = {f"{names.get(r['class'], str(r['class']))}#{r['instance']}":
           {"iou": round(r["iou"], 1), "n_vertices": r["size"], "pred": r["pred"], "share": round(r["share"], 1),
            "purity": round(r["purity"], 1), "parts": r["parts"]} for r in cov["per_instance"]}
    return {"mcov": round(cov["mcov"], 3), "mwcov": round(cov["mwcov"], 3),
            "n_gt_instances": cov["n_gt_instances"], "n_pred_instances": cov["n_pred_instances"],
            "per_instance": per}


def field_label_metrics(run: Path, scene: Scene, gt: dict, point_labeller: PointLabeller, log=print) -> dict:
    """semantic_3d_fields / instance_3d_fields: labels queried from the run's trained fields at the
    observed GT vertices (the paper's protocol, Sec. VI-C: "we query the ground truth point cloud ...
    to suppress the effect of reconstruction quality") by `point_labeller`; {} when it returns None
    (the run has no checkpoint)."""
    got = point_labeller(run, gt["observed_vertices"])
    if got is None:
        log(f"{run} has no checkpoint: semantic_3d_fields and instance_3d_fields skipped")
        return {}
    sem, inst = got
    out = {"semantic_3d_fields": semantic_3d_block(sem, gt["vertex_semantic"], scene)}
    if "vertex_instance" in gt:
        out["instance_3d_fields"] = instance_3d_block(inst, gt, scene)
    return out


@writes_run("eval")
def evaluate_run(run: Path, scene_dir: Path | None = None, baseline: bool = True, log=print,
                 point_labeller: PointLabeller | None = None, view_renderer: ViewRendererFactory | None = None,
                 lpips_weights: Path | None = None, progress: bool = True) -> dict:
    """Every metric of the run folder `run` against its scene's ground truth, written to RUN/metrics.json.
    point_labeller: the field query for semantic_3d_fields / instance_3d_fields (None: those are skipped);
    view_renderer: RUN -> its view renderer, for the `rendering` block (None: skipped); lpips_weights: a
    local AlexNet / LPIPS weights file (eval/image_metrics.py load_lpips) for its LPIPS (None: lpips null)."""
    run = Path(run)
    mesh_path = run / "mesh.ply"
    if not mesh_path.is_file():
        raise FileNotFoundError(f"{mesh_path} missing: fit the run first")
    lpips = None
    if view_renderer is not None and lpips_weights is not None:
        try:                                                   # a bad file fails here, before any long work
            lpips = load_lpips(Path(lpips_weights))
        except LpipsWeightsError as exc:
            raise EvalError(f"LPIPS weights: {exc}") from exc
    scene = load_scene(_run_scene(run, scene_dir), check_images=False)
    cfg = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    voxel = float(cfg.get("mesh", {}).get("voxel_size_m", 0.02))
    split = cfg.get("data", {}).get("split", "train")
    labels_2d = has_label_images(run)
    if labels_2d and scene.has_gt_images:
        missing = missing_label_frames(run, scene.frame_ids)
        if missing:
            raise FileNotFoundError(f"{run / 'labels'}: label images missing for {len(missing)} of "
                                    f"{len(scene.frame_ids)} frames (first: {', '.join(missing[:5])}); the fit "
                                    f"did not finish its post-fit steps: 'python run.py fit --scene SCENE --out "
                                    f"{run} --resume' (with the run's settings) makes them")
    pv, pf, _, pprops = read_ply(mesh_path)
    if len(pf) == 0:
        raise EvalError(f"{mesh_path} has no faces: the fit made an empty mesh (see {run / 'log.txt'}; a depth "
                         f"unit or pose mistake in the scene is the usual cause), so there is nothing to evaluate")
    pred = {"vertices": pv, "faces": pf, "props": pprops}
    metrics: dict = {}
    b = None
    t0 = time.perf_counter()
    if scene.gt_mesh_path is None:
        log(f"{scene.root} has no gt/mesh.ply: geometry and 3D semantic metrics skipped")
    else:
        gt = observed_gt(scene)
        metrics["geometry"] = mesh_geometry(pred["vertices"], pred["faces"], gt)
        metrics["geometry"]["gt_faces_observed"] = gt["n_faces_observed"]
        if "point_semantic" in gt and "semantic" in pred["props"]:
            for key, pts, labels in (("semantic_3d", gt["observed_vertices"], gt["vertex_semantic"]),
                                     ("semantic_3d_area_sampled", gt["points"], gt["point_semantic"])):
                lab = semantic_at_points(pred["vertices"], pred["props"]["semantic"], pts)
                metrics[key] = semantic_3d_block(lab, labels, scene)
        if "vertex_instance" in gt and "vertex_semantic" in gt and "instance" in pred["props"]:
            inst = semantic_at_points(pred["vertices"], pred["props"]["instance"], gt["observed_vertices"])
            metrics["instance_3d"] = instance_3d_block(inst, gt, scene)
        elif "vertex_instance" in gt:
            log(f"{mesh_path} has no 'instance' vertex property: instance_3d skipped")
        if "vertex_semantic" in gt and point_labeller is not None:
            metrics.update(field_label_metrics(run, scene, gt, point_labeller, log))
        if baseline:
            b = tsdf_baseline(scene, voxel, split if split in scene.splits else "train")
            metrics["baselines"] = {"tsdf_fusion": {"geometry": mesh_geometry(b["vertices"], b["faces"], gt),
                                                    "voxel_size_m": voxel, "seconds": round(b["seconds"], 2)}}
    depth_dir = run / "depth_heldout"
    if depth_dir.is_dir() and any(depth_dir.glob("*.png")):
        stride = int(cfg.get("mesh", {}).get("heldout_depth_stride", 4))
        metrics["depth_heldout"] = heldout_depth_metrics(run, scene, stride)
        if baseline:
            if b is None:
                b = tsdf_baseline(scene, voxel, split if split in scene.splits else "train")
            tb = metrics.setdefault("baselines", {}).setdefault(
                "tsdf_fusion", {"voxel_size_m": voxel, "seconds": round(b["seconds"], 2)})
            tb["depth_heldout"] = heldout_depth_metrics(run, scene, stride, mesh=(b["vertices"], b["faces"]))
    if view_renderer is not None:
        block = rendering_metrics(run, scene, split, view_renderer, lpips, log, progress)
        if block is not None:
            metrics["rendering"] = block
            if baseline:
                if b is None:
                    b = tsdf_baseline(scene, voxel, split if split in scene.splits else "train")
                tb = metrics.setdefault("baselines", {}).setdefault(
                    "tsdf_fusion", {"voxel_size_m": voxel, "seconds": round(b["seconds"], 2)})
                tb["rendering"] = tsdf_rendering_metrics(b, scene, split, block, lpips, progress)
    if not scene.has_gt_images:
        log(f"{scene.root} has no gt/ label images: 2D panoptic, semantic and instance metrics skipped")
    elif not labels_2d:
        log(f"{run} has no labels/semantic and labels/instance images (older run): 2D panoptic, semantic and "
            f"instance metrics skipped")
    else:
        metrics.update(panoptic_2d_metrics(run, scene))
    timing_path = run / "timing.json"
    if timing_path.is_file():
        t = json.loads(timing_path.read_text())
        metrics["timing"] = {"fit_seconds": t["fit_seconds"], "iterations": t["iterations"],
                             "peak_rss_mb": t["peak_rss_mb"]}
    metrics["eval_seconds"] = round(time.perf_counter() - t0, 2)
    fault_point("eval")
    atomic_write_text(run / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    log(f"wrote {run / 'metrics.json'}")
    return metrics
