#!/usr/bin/env python
"""The one command line: `python run.py <command> --help`.

Argument parsing and dispatch only; each command's work lives in the package that owns it.
Settings come from YAML files in configs/ plus `key=value` overrides.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app import CONFIGS
DATASET_KINDS = ("replica-nice-slam", "replica-semantic-nerf", "scannet", "scannetpp", "7scenes",
                 "nerfstudio", "record3d", "realsense")  # readers.READERS


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 160x120, got {text!r}") from None
    if w < 8 or h < 8:
        raise argparse.ArgumentTypeError(f"size {text} is too small (at least 8x8)")
    return w, h


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("synth", help="generate a synthetic scene with exact ground truth and simulated masks",
                       description="Generate a procedural indoor scene (colour, exact depth, poses, GT labels, GT "
                                   "mesh) and simulated Grounded-SAM masks, written in the scene format.")
    s.add_argument("--preset", default=None, help="room | apartment | clutter | walk (default: room)")
    s.add_argument("--out", required=True, type=Path, help="scene folder to write")
    s.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    s.add_argument("--noise", default=None, help="mask noise level: clean | realistic | hard | realistic-video | hard-video (default realistic)")
    s.add_argument("--size", type=_size, default=None, help="image size WxH (default 160x120)")
    s.add_argument("--frames", type=int, default=None, help="number of frames (default: the preset's)")
    s.add_argument("--config", type=Path, default=CONFIGS / "synth.yaml", help="YAML settings file")
    s.add_argument("--force", action="store_true", help="replace an existing scene folder")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="settings overrides, e.g. masks.p_miss=0.2")

    f = sub.add_parser("fit", help="reconstruct a scene (train the fields and tokens, mesh it)",
                       description="Train the panoptic reconstruction of a scene folder and write RUN/config.yaml, "
                                   "RUN/log, RUN/checkpoints/ and RUN/mesh.ply.")
    f.add_argument("--scene", type=Path, required=True, help="scene folder")
    f.add_argument("--out", type=Path, required=True, help="run folder")
    f.add_argument("--config", type=Path, default=CONFIGS / "quick.yaml", help="YAML settings file")
    f.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    f.add_argument("--force", action="store_true",
                   help="replace the run already in --out (only a run folder of this tool; never the scene)")
    f.add_argument("--skip-bad-frames", action="store_true", help="drop frames with bad poses (with a warning)")
    f.add_argument("overrides", nargs="*", metavar="key=value", help="settings overrides, e.g. train.iters=2000")

    pr = sub.add_parser("profile", help="fit a scene with a per-stage profile (where the training time goes)",
                        description="Fit SCENE into OUT/run while profiling one window of iterations per phase of "
                                    "the schedule (torch.profiler; stages: ray sampling, hash grid, mlp, rendering, "
                                    "token branch, hungarian, losses, backward per stage, optimizer, python, ...) "
                                    "and timing the post-fit steps; prints the table and writes OUT/profile.json "
                                    "and OUT/profile.png. See recon/train/profile.py.")
    pr.add_argument("--scene", type=Path, required=True, help="scene folder")
    pr.add_argument("--out", type=Path, required=True, help="folder for the profile and its run")
    pr.add_argument("--config", type=Path, default=CONFIGS / "quick.yaml", help="YAML settings file")
    pr.add_argument("--window", type=int, default=10, help="iterations profiled per phase (as many timed before)")
    pr.add_argument("--force", action="store_true", help="replace OUT/run")
    pr.add_argument("overrides", nargs="*", metavar="key=value", help="settings overrides")

    gs = sub.add_parser("grid-speed", help="measure the hash grid alone: forward + backward points per second",
                        description="Forward + backward throughput of the hash grid's CPU backends (PyTorch and "
                                    "Numba) on uniform random points, best of --reps after a warm-up; prints one "
                                    "line per backend and, with --json, writes the numbers. See "
                                    "fields.hashgrid.benchmark_hash_grid.")
    gs.add_argument("--levels", type=int, default=16, help="levels (default 16)")
    gs.add_argument("--log2-table", type=int, default=19, help="log2 of the rows per level (default 19)")
    gs.add_argument("--features", type=int, default=2, help="features per level (default 2)")
    gs.add_argument("--finest", type=int, default=512, help="finest level's cells per axis (default 512)")
    gs.add_argument("--points", type=int, default=65536, help="points per pass (default 65536)")
    gs.add_argument("--reps", type=int, default=10, help="timed passes per backend (default 10)")
    gs.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    gs.add_argument("--backend", choices=["torch", "numba", "both"], default="both")
    gs.add_argument("--json", type=Path, default=None, help="also write the numbers to this file")

    fm = sub.add_parser("fit-many", help="fit many scene folders with the same settings (optionally on Ray)",
                        description="Fit every scene folder a glob matches into OUT/<scene name>/, one `fit` process "
                                    "each, sequentially or as Ray tasks (--ray: a local Ray instance, or a cluster "
                                    "ADDRESS). Resumable; OUT/fit_many.json lists each scene's status. See "
                                    "app/fit_many.py.")
    fm.add_argument("--scenes", required=True, metavar="GLOB", help="scene folders, e.g. 'data/scenes/*' (quote it)")
    fm.add_argument("--out", type=Path, required=True, help="folder for the run folders")
    fm.add_argument("--config", type=Path, default=CONFIGS / "quick.yaml", help="YAML settings file")
    fm.add_argument("--force", action="store_true", help="refit scenes already done and replace runs with other settings")
    fm.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                    help="run the fits as Ray tasks: without ADDRESS on a local Ray instance, else on that cluster")
    fm.add_argument("--ray-cpus", type=int, default=None,
                    help="local Ray: CPUs to offer (default all); each fit asks for train.threads of them")
    fm.add_argument("overrides", nargs="*", metavar="key=value", help="settings overrides, e.g. train.threads=1")

    e = sub.add_parser("eval", help="evaluate a run against the scene's ground truth (RUN/metrics.json)",
                       description="Evaluate a fitted run: geometry against the GT mesh (and the TSDF baseline), "
                                   "semantics at the GT mesh vertices, 2D panoptic labels, and the rendering block "
                                   "(colour and depth rendered from the held-out poses: PSNR, SSIM, depth AbsRel, "
                                   "LPIPS with local weights, render frames/s); writes RUN/metrics.json.")
    e.add_argument("--run", type=Path, required=True, help="run folder")
    e.add_argument("--scene", type=Path, default=None, help="scene folder (default: the run's)")
    e.add_argument("--no-baseline", action="store_true", help="skip the TSDF-fusion baseline")
    e.add_argument("--no-fields", action="store_true",
                   help="skip semantic_3d_fields / instance_3d_fields (labels queried from the run's checkpoint "
                        "at the GT vertices)")
    e.add_argument("--no-rendering", action="store_true",
                   help="skip the rendering block (novel views of the held-out frames: PSNR, SSIM, depth AbsRel, "
                        "LPIPS, render fps)")
    e.add_argument("--lpips-weights", type=Path, default=None, metavar="PATH",
                   help="local weights for the rendering block's LPIPS: a torchvision AlexNet state dict "
                        "(alexnet-owt-7be5be79.pth) or a full LPIPS 'alex' checkpoint (default: the "
                        "RECON_LPIPS_WEIGHTS environment variable; without either, lpips is null). Never downloads")

    x = sub.add_parser("export", help="export a run (gazebo | usd | urdf | ply | glb | obj)",
                       description="Export a fitted run: 'gazebo' writes an SDFormat world with one static model per "
                                   "thing instance plus 'environment'; 'usd' one OpenUSD stage for Isaac Sim (a prim "
                                   "per instance with semantic class labels and PhysX colliders); 'urdf' one fixed "
                                   "robot with a link per instance; 'ply', 'glb', 'obj' write the panoptic mesh "
                                   "and one file per instance. See recon/export/.")
    x.add_argument("--run", type=Path, required=True, help="run folder")
    x.add_argument("--format", choices=["gazebo", "usd", "urdf", "ply", "glb", "obj"], required=True)
    x.add_argument("--out", type=Path, default=None, help="output folder (default RUN/export/FORMAT)")
    x.add_argument("--collision-faces", type=int, default=2000,
                   help="gazebo, usd, urdf: face budget of each object's collision shape(s)")
    x.add_argument("--collision", choices=["auto", "coacd"], default="auto",
                   help="gazebo, usd, urdf: collision shapes of the objects: 'auto' one simplified mesh (closed "
                        "surface, voxel shell or convex hull; recon/export/collision.py), 'coacd' a convex "
                        "decomposition by CoACD (slower: seconds per object)")
    x.add_argument("--rigid-bodies", action="store_true",
                   help="usd: make the objects dynamic rigid bodies (default: a static scene)")
    x.add_argument("--color-by", choices=["rgb", "semantic", "instance"], default="rgb",
                   help="vertex colours: appearance, class colour, or instance colour (stuff by class)")

    r = sub.add_parser("render", help="render novel views (RGB, depth, semantic, instance, panoptic) of a run",
                       description="Render a fitted run from any camera path into RUN/renders/ (or --out): "
                                   "<name>_<what>.png per view, raw depth (mm) and label ids, poses.txt, "
                                   "overview.png, render.json, and with --video one MP4 per branch and a "
                                   "captioned side_by_side.mp4. One pose source: --frames (default eval), "
                                   "--poses, --orbit or --path interpolate. See recon/postfit/renders.py.")
    r.add_argument("--run", type=Path, required=True, help="run folder")
    r.add_argument("--frames", default=None,
                   help="the scene's poses: 'eval' (default), 'train', 'all' or a comma list of frame ids")
    r.add_argument("--poses", type=Path, default=None, metavar="FILE",
                   help="a file of 4x4 camera-to-world matrices (OpenCV axes, metres): .txt (4 rows per pose, "
                        "'#' comments), .npy [N, 4, 4] or .json (list, or {\"poses\": [...]})")
    r.add_argument("--orbit", action="store_true", help="an orbit inside the scene box, looking at its centre")
    r.add_argument("--path", choices=["interpolate"], default=None,
                   help="interpolate: a smooth path through the training poses (spline + rotation spline)")
    r.add_argument("--n-frames", type=int, default=None,
                   help="views on --orbit (default 90) or --path (default 4 per pair of training poses)")
    r.add_argument("--what", default="rgb,depth,semantic,instance,panoptic",
                   help="comma list of rgb, depth, semantic, instance, panoptic (default: all)")
    r.add_argument("--size", default=None, metavar="WxH",
                   help="image size (default the scene's; the intrinsics are scaled to it)")
    r.add_argument("--out", type=Path, default=None, help="output folder (default RUN/renders; replaced whole)")
    r.add_argument("--video", action="store_true", help="also write <what>.mp4 and side_by_side.mp4")
    r.add_argument("--fps", type=float, default=15.0, help="video frames per second (default 15)")
    r.add_argument("--labels", choices=["mesh", "fields", "compare"], default="mesh",
                   help="mesh: ray-cast RUN/mesh.ply's labels (fast, default); fields: the fields' label renders "
                        "(slow on a CPU); compare: images from the mesh, plus label_agreement.json against the fields")
    r.add_argument("--fields-surface", choices=["mesh", "sdf"], default="mesh",
                   help="fields / compare: find each ray's surface on the mesh where it hits (default), or search "
                        "the SDF for every ray (independent of the mesh, about 4x slower)")

    w = sub.add_parser("view", help="browse a run in the web browser (mesh, cameras, instances, legend)",
                       description="Serve an interactive 3D viewer of a run folder (viser): the panoptic mesh coloured "
                                   "by RGB / class / instance, the scene's cameras with their images, the instance "
                                   "list (click to highlight and frame one), the legend, and where RUN/gaussians.ply "
                                   "exists a render of the Gaussians from the viewer's camera. Prints the URL and "
                                   "runs until Ctrl-C. See app/viewer.py.")
    w.add_argument("--run", type=Path, required=True, help="run folder")
    w.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080; the next free one if busy)")
    w.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only, reach it from elsewhere with "
                        "ssh -L; 0.0.0.0: every interface)")

    m = sub.add_parser("merge-fragments", help="merge small same-class fragment instances of a finished run",
                       description="Post-process a finished run (no model needed): a small instance merges into the "
                                   "same-class instance it touches on the mesh (recon/postfit/fragments.py); rewrites "
                                   "mesh.ply, instances/, instances.json and labels/instance/ with one id map. "
                                   "Runs fitted with panoptic.merge_fragments=true have it applied already.")
    m.add_argument("--run", type=Path, required=True)
    m.add_argument("--max-fraction", type=float, default=None,
                   help="merge only below this share of the neighbour's vertices (default: the run's setting, 0.2)")
    m.add_argument("--min-edges", type=int, default=None,
                   help="shared mesh edges needed (default: the run's setting, 3)")

    mm = sub.add_parser("merge-by-masks", help="merge same-class instances the masks show as one object (finished run)",
                        description="Post-process a finished run (no model needed): two same-class instances merge "
                                    "where, in the training frames that show both, one 2D mask covers both (a long "
                                    "table or a cabinet owned by two tokens; recon/postfit/mask_merge.py). Rewrites "
                                    "mesh.ply, instances/, instances.json and labels/instance/ with one id map. Runs "
                                    "fitted with panoptic.merge_by_masks=true (the default) have it applied already.")
    mm.add_argument("--run", type=Path, required=True)
    mm.add_argument("--min-frames", type=int, default=None,
                    help="frames where one mask covers both, at least (default: the run's setting, 3)")
    mm.add_argument("--min-share", type=float, default=None,
                    help="... as a share of the frames showing both, at least (default: the run's setting, 0.7)")

    rl = sub.add_parser("relabel", help="labels where the masks are silent, from the masks' neighbours (finished run)",
                        description="Post-process a finished run (no model needed; recon/postfit/mask_relabel.py): a "
                                    "connected region of a thing class no instance carries gets an id of its own (a "
                                    "bottle that carried its table's id), and a mesh vertex whose class no training "
                                    "mask confirms takes the labels of the nearest vertex whose class one does. "
                                    "Rewrites mesh.ply, instances/, instances.json, relabel.npz and the label images "
                                    "that show changed vertices. "
                                    "Runs fitted with panoptic.split_untokened / fill_unmasked (the defaults) have it "
                                    "applied already.")
    rl.add_argument("--run", type=Path, required=True)
    rl.add_argument("--no-split", action="store_true", help="leave untokened regions with the id they have")
    rl.add_argument("--no-fill", action="store_true",
                    help="leave the vertices no mask confirms as the fields label them")

    rc = sub.add_parser("reclass", help="an instance takes the class its masks give it (finished run)",
                        description="Post-process a finished run (no model needed; recon/postfit/mask_reclass.py): an "
                                    "instance whose training masks call it another thing class (at least "
                                    "panoptic.reclass_min_frames frames and panoptic.reclass_min_share of its frames "
                                    "with a clear mask) takes that class, then merges with a same-class instance one "
                                    "mask covers with it (mask-evidence merging). Rewrites mesh.ply, instances/, "
                                    "instances.json, relabel.npz and the label images. Runs fitted with "
                                    "panoptic.reclass_by_masks (the default) have it applied already.")
    rc.add_argument("--run", type=Path, required=True)

    pc = sub.add_parser("consistency", help="no object on a wall, one class per id (finished run)",
                        description="Post-process a finished run (no model needed; "
                                    "recon/postfit/panoptic_consistency.py): an instance whose training masks call it "
                                    "a stuff class (wall, floor, ...) more "
                                    "than its own class is dissolved into the stuff around it (panoptic."
                                    "dissolve_min_votes, dissolve_min_share); then a thing vertex or label pixel whose "
                                    "id is no instance of its class in instances.json loses the id. Rewrites mesh.ply, "
                                    "instances/, instances.json, relabel.npz and the label images. Runs fitted with "
                                    "panoptic.dissolve_on_stuff / consistent_ids (the defaults) have it applied "
                                    "already.")
    pc.add_argument("--run", type=Path, required=True)

    c = sub.add_parser("cull-mesh", help="cull a finished run's mesh to observed surfaces (no model needed)",
                       description="Post-process a finished run: keep only mesh faces that some training view "
                                   "saw near its depth (mesh.cull_front_margin_m in front, mesh.cull_margin_m "
                                   "behind), dropping surfaces left in observed free space; rewrites mesh.ply, "
                                   "mesh_semantic.ply, mesh_panoptic.ply, instances/ and instances.json. Runs "
                                   "fitted since 2026-11-23 are culled this way already.")
    c.add_argument("--run", type=Path, required=True)
    c.add_argument("--front-margin", type=float, default=None,
                   help="metres in front of the observed depth (default: the run's setting, 0.05)")

    q = sub.add_parser("query", help="find objects of a run by name: 'where are the chairs?'",
                       description="List the instances of a finished run that a text names: by class name, by the "
                                   "prompt tables' synonyms (configs/prompts/), and, after `run.py embed`, by CLIP "
                                   "similarity for free text. Reads the run folder only. See recon/postfit/query.py.")
    q.add_argument("--run", type=Path, required=True)
    q.add_argument("text", help="what to look for, e.g. chair, couch, 'something to sit on' (free text needs embed)")
    q.add_argument("--near", default=None, metavar="X,Y,Z", help="sort by distance from this point (metres, scene frame)")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.add_argument("--top", type=int, default=5, help="free-text (CLIP) queries: how many instances to list")
    q.add_argument("--prompts", type=Path, action="append", default=None,
                   help="prompt table(s) for synonyms (default: every table in configs/prompts/)")
    q.add_argument("--clip-checkpoint", type=Path, default=None,
                   help="CLIP weights (default: the path RUN/language.json recorded)")
    q.add_argument("--device", default="cpu", help="cpu | cuda[:N] for the CLIP text encoder")

    em = sub.add_parser("embed", help="CLIP language features of a run's instances (for free-text queries)",
                        description="Embed each instance's best-seen crops of the training frames with CLIP "
                                    "(open-clip-torch, weights from a path you give; nothing is downloaded) into "
                                    "RUN/language.npz. See recon/postfit/language.py.")
    em.add_argument("--run", type=Path, required=True)
    em.add_argument("--clip-checkpoint", type=Path, required=True, help="CLIP weights file (e.g. ViT-B-32.pt)")
    em.add_argument("--clip-model", default="ViT-B-32", help="open_clip model name of the weights (default ViT-B-32)")
    em.add_argument("--crops", type=int, default=3, help="best-seen crops averaged per instance (default 3)")
    em.add_argument("--device", default="cpu", help="cpu | cuda[:N]")

    g = sub.add_parser("segment", help="make 2D masks for a scene (Grounded-SAM or the simulator)",
                       description="Make masks/ (and classes.json) for a scene folder with Grounded-SAM "
                                   "(GroundingDINO boxes from a prompt table, a SAM mask per box), or with "
                                   "--backend sim the mask simulator on the scene's GT images. Finished frames "
                                   "are kept in SCENE/.segment-work/, so an interrupted run resumes.")
    g.add_argument("--scene", type=Path, required=True)
    g.add_argument("--backend", choices=["grounded-sam", "sim"], default="grounded-sam")
    g.add_argument("--noise", default="realistic", help="with --backend sim: clean | realistic | hard | realistic-video | hard-video")
    g.add_argument("--seed", type=int, default=0, help="with --backend sim: random seed")
    g.add_argument("--prompts", type=Path, default=None, help="prompt table, e.g. configs/prompts/indoor.yaml")
    g.add_argument("--dino-config", type=Path, default=None, help="GroundingDINO config (GroundingDINO_SwinT_OGC.py)")
    g.add_argument("--dino-checkpoint", type=Path, default=None,
                   help="GroundingDINO weights (groundingdino_swint_ogc.pth)")
    g.add_argument("--sam-checkpoint", type=Path, default=None, help="SAM weights (sam_vit_h_4b8939.pth, ...)")
    g.add_argument("--sam-type", default="vit_h", help="vit_h | vit_l | vit_b (must match --sam-checkpoint)")
    g.add_argument("--text-encoder", default=None,
                   help="local folder of GroundingDINO's BERT (default: the config's, from the Hugging Face cache)")
    g.add_argument("--device", default="auto", help="auto (CUDA if available) | cpu | cuda[:N]")
    g.add_argument("--batch-size", type=int, default=2, help="frames per model call")
    g.add_argument("--force", action="store_true", help="replace existing masks/ and discard a partial run")

    c = sub.add_parser("convert", help="convert a dataset (Replica, ScanNet, ScanNet++, 7-Scenes) or your own capture "
                                       "(nerfstudio, Record3D, RealSense) into a scene folder",
                       description="Convert one sequence of a public RGB-D dataset, or your own capture, into the "
                                   "scene format. Each reader's layout and conventions: "
                                   "recon/data/readers/<kind>.py.")
    c.add_argument("--from", dest="kind", required=True, choices=DATASET_KINDS, help="dataset kind")
    c.add_argument("src", type=Path, help="the dataset's scene / sequence folder (record3d: .r3d file or folder; "
                                          "realsense: .bag / .db3 file; nerfstudio: folder or its transforms.json)")
    c.add_argument("--out", type=Path, required=True, help="scene folder to write")
    c.add_argument("--stride", type=int, default=1, help="keep every Nth frame (default 1)")
    c.add_argument("--max-frames", type=int, default=None, help="stop after N frames")
    c.add_argument("--force", action="store_true", help="replace an existing scene folder")
    c.add_argument("--skip-bad-frames", action="store_true",
                   help="drop frames with bad poses, missing files or (realsense) lost tracking, with a warning")
    c.add_argument("--intrinsics", type=float, nargs=4, metavar=("FX", "FY", "CX", "CY"), default=None,
                   help="override the (depth) camera intrinsics")
    c.add_argument("--color-intrinsics", type=float, nargs=4, metavar=("FX", "FY", "CX", "CY"), default=None,
                   help="7scenes: the colour camera's intrinsics (default 525 525 320 240)")
    c.add_argument("--resolution", default=None, help="scannet/scannetpp: depth | color | WxH")
    c.add_argument("--class-names", type=Path, default=None, help="replica-semantic-nerf: info_semantic.json")
    c.add_argument("--label-map", type=Path, default=None, help="scannet: scannetv2-labels.combined.tsv")
    c.add_argument("--mesh", type=Path, default=None, help="replica kinds: GT mesh in the same world frame")
    c.add_argument("--no-gt", action="store_true", help="write no ground truth (labels, mesh)")
    c.add_argument("--holdout-every", type=int, default=0,
                   help="hold every Nth frame out of training (splits.json; e.g. 5); 0 = train on all")
    c.add_argument("--size", default=None, metavar="WxH",
                   help="resize the written frames (colour area / bilinear, depth nearest, K scaled)")
    c.add_argument("--max-depth-m", type=float, default=None, metavar="M",
                   help="treat depth beyond M metres as invalid")
    c.add_argument("--depth-unit-scale-factor", type=float, default=None, metavar="S",
                   help="nerfstudio: metres per stored depth unit (default 0.001, millimetre PNGs)")
    c.add_argument("--min-confidence", type=int, default=None, choices=(0, 1, 2),
                   help="record3d: keep depth of at least this ARKit confidence (0 low, 1 medium, 2 high; default 2)")

    b = sub.add_parser("bench", help="run a benchmark suite (scenes x methods x seeds)",
                       description="Run a benchmark suite end to end and write DIR/results.json and DIR/report.md.")
    b.add_argument("--suite", default="quick", help="quick | standard | ablation | walk (app/bench/suites.py SUITES)")
    b.add_argument("--out", type=Path, default=None, help="bench folder (default runs/bench/SUITE)")
    b.add_argument("--force", action="store_true", help="recompute cells that are done")
    b.add_argument("--only", default=None, metavar="PATTERN",
                   help="run only cells whose id matches (glob, comma separated), e.g. 'room-*__ours'")
    b.add_argument("--keep-checkpoints", action="store_true",
                   help="keep finished fits' checkpoints/ (by default deleted once a cell is done)")
    b.add_argument("--report-only", action="store_true",
                   help="compute nothing: rebuild results.json and report.md from the cells in --out")
    b.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run the cells as Ray tasks: without ADDRESS on a local Ray instance, else on that cluster")
    b.add_argument("--threads", type=int, default=None,
                   help="torch threads of each fit cell (train.threads; default the suite's config, 0 = every core); "
                        "with --ray each fit asks for that many CPUs, so --threads 1 runs one fit per CPU at once")
    b.add_argument("--ray-cpus", type=int, default=None,
                   help="local Ray: CPUs to offer (default all); each fit cell asks for its train.threads")
    b.add_argument("--publish", action="store_true",
                   help="also write BENCHMARKS.md and docs/bench/ (plots, results.json) in the repository")

    k = sub.add_parser("config", help="list every setting: type, default, current value, help",
                       description="Print every setting of `fit` (or `synth`) with its type, default, the value that "
                                   "--config and the key=value overrides give, and one line of help. The same "
                                   "checks as the command itself apply, so it also validates a settings file.")
    k.add_argument("--for", dest="command_settings", choices=["fit", "synth"], default="fit",
                   help="whose settings (default: fit)")
    k.add_argument("--config", type=Path, default=None,
                   help="YAML settings file (default: the command's own, configs/quick.yaml or configs/synth.yaml)")
    k.add_argument("overrides", nargs="*", metavar="key=value", help="settings overrides, e.g. train.iters=2000")

    d = sub.add_parser("demo", help="the default job: synth room -> fit -> eval (needs no download)",
                       description="Generate the synthetic 'room' scene, reconstruct it, evaluate it and export it.")
    d.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder for the scene and the run")
    d.add_argument("--config", type=Path, default=CONFIGS / "quick.yaml")
    d.add_argument("--force", action="store_true", help="start over even if outputs exist")
    d.add_argument("overrides", nargs="*", metavar="key=value")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from app import commands  # imported late so that --help stays fast
    handler = getattr(commands, f"cmd_{args.command.replace('-', '_')}")
    try:
        return int(handler(args) or 0)
    except commands.UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:                # output piped into a reader that stopped early (| head): not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:              # what was finished is kept (a fit saves a checkpoint first)
        print("interrupted; what was finished is kept (a fit resumes with 'fit --resume')", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
