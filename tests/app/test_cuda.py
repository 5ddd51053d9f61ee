"""train.device: resolution and refusal everywhere; the CUDA path against the CPU reference where a GPU exists.

The CUDA comparison fits the same tiny two-box scene on the CPU and on the GPU with the whole
instance branch on (assignment, panoptic head, token adjustment), then compares the first
losses (same random stream: the generator stays on the CPU), the fitted SDF, the meshes and
the label images. The scene is ray-cast here with numpy (boxes only), so this file needs
neither Open3D nor a synthetic-scene generator and runs on a bare GPU machine too.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recon.core.config import load_config
from recon.data.scene import FrameRecord, write_scene
from recon.core.device import DeviceError, resolve_device
from recon.data.ply import read_ply
from recon.core.settings import FitSettings
from app.pipeline import fit_scene as fit
from recon.train.runs import load_run_full
from tests.tiny_settings import TINY_FIELDS

CUDA = torch.cuda.is_available()

# (min corner, max corner, class id, instance id): a floor slab and two 0.6 m cubes of class "box"
BOXES = [((-3.0, -3.0, -0.1), (3.0, 3.0, 0.0), 1, 0),
         ((-1.2, -0.3, 0.0), (-0.6, 0.3, 0.6), 2, 1),
         ((0.6, -0.3, 0.0), (1.2, 0.3, 0.6), 2, 2)]
CLASSES = [{"id": 1, "name": "floor", "thing": False, "prompts": ["floor"]},
           {"id": 2, "name": "box", "thing": True, "prompts": ["box"]}]


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """c2w [4, 4], OpenCV camera (x right, y down, z forward), world z up."""
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


def cast_boxes(K: np.ndarray, c2w: np.ndarray, W: int, H: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z-depth [H, W] m (0 = miss), semantic [H, W], instance [H, W]) of BOXES by slab intersection."""
    u, v = np.meshgrid(np.arange(W) + 0.0, np.arange(H) + 0.0)
    d_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
    d = d_cam @ c2w[:3, :3].T                                         # [P, 3], camera z = 1: t is z-depth
    o = c2w[:3, 3]
    best = np.full(len(d), np.inf)
    sem = np.zeros(len(d), np.uint16)
    inst = np.zeros(len(d), np.uint16)
    with np.errstate(divide="ignore", invalid="ignore"):
        for lo, hi, cls, iid in BOXES:
            t1 = (np.asarray(lo) - o) / d
            t2 = (np.asarray(hi) - o) / d
            t_near = np.nanmax(np.minimum(t1, t2), axis=1)
            t_far = np.nanmin(np.maximum(t1, t2), axis=1)
            hit = (t_near <= t_far) & (t_near > 1e-3) & (t_near < best)
            best[hit], sem[hit], inst[hit] = t_near[hit], cls, iid
    depth = np.where(np.isfinite(best), best, 0.0)
    return depth.reshape(H, W), sem.reshape(H, W), inst.reshape(H, W)


def make_box_scene(out: Path, n_frames: int = 12, W: int = 48, H: int = 36) -> Path:
    f = 0.5 * W / np.tan(np.radians(35.0))
    K = np.array([[f, 0.0, W / 2.0], [0.0, f, H / 2.0], [0.0, 0.0, 1.0]])
    palette = {0: (0, 0, 0), 1: (150, 140, 120), 2: (200, 60, 40), 3: (40, 80, 200)}
    frames = []
    for k in range(n_frames):
        a = 2 * np.pi * k / n_frames
        c2w = look_at(np.array([2.8 * np.cos(a), 2.8 * np.sin(a), 1.6]), np.array([0.0, 0.0, 0.2]))
        depth, sem, inst = cast_boxes(K, c2w, W, H)
        key = np.where(inst > 0, inst + 1, sem)
        color = np.zeros((H, W, 3), np.uint8)
        for c, rgb in palette.items():
            color[key == c] = rgb
        scores = {int(i): {"class": 2, "score": 0.9} for i in np.unique(inst) if i > 0}
        frames.append(FrameRecord(color=color, c2w=c2w, depth_m=depth, mask_instance=inst, mask_semantic=sem,
                                  mask_scores=scores, gt_semantic=sem, gt_instance=inst))
    return write_scene(out, K=K, frames=frames, classes=CLASSES, meta={"name": "boxes", "source": "test"})


TINY = TINY_FIELDS + [
    "train.iters=240", "train.geometry_only_iters=20", "train.pan_start_iters=80", "train.dice_off_iters=200",
    "train.log_every=1", "train.checkpoint_every=1000", "tokens.n_init=4", "tokens.adjust_rules.every_iters=30",
    "tokens.adjust_rules.window_iters=30",
]


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    with pytest.raises(DeviceError, match="not one of"):
        resolve_device("tpu")
    if not CUDA:
        with pytest.raises(DeviceError, match="no CUDA device"):
            resolve_device("cuda")
        with pytest.raises(DeviceError, match="no CUDA device"):
            resolve_device("cuda:1")
    else:
        assert resolve_device("cuda").index is not None   # "cuda" means the current device, with its index
        with pytest.raises(DeviceError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_missing_device_is_refused_before_any_work(tmp_path):
    scene = make_box_scene(tmp_path / "scene", n_frames=4, W=16, H=12)
    run = tmp_path / "run"
    bad = "tpu" if CUDA else "cuda"
    with pytest.raises(DeviceError):
        fit(scene, run, load_config(FitSettings, None, TINY + [f"train.device={bad}"]), progress=False)
    assert not run.exists(), "nothing may be written when the device is refused"


def _losses(run: Path) -> dict[int, dict[str, float]]:
    """metrics.csv -> {iteration: {loss name: value}} (rows of loss/* columns)."""
    rows: dict[int, dict[str, float]] = {}
    with open(run / "metrics.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            vals = {k[5:]: float(v) for k, v in r.items() if k and k.startswith("loss/") and v not in ("", None)}
            vals = {k: v for k, v in vals.items() if np.isfinite(v)}
            if vals:
                rows.setdefault(int(float(r["iter"])), {}).update(vals)
    return rows


@pytest.fixture(scope="module")
def cpu_and_cuda_runs(tmp_path_factory):
    if not CUDA:
        pytest.skip("no CUDA device: the CUDA path is compared with the CPU reference on a GPU machine")
    root = tmp_path_factory.mktemp("devices")
    scene = make_box_scene(root / "scene")
    runs = {}
    for dev in ("cpu", "cuda"):
        runs[dev] = root / f"run_{dev}"
        fit(scene, runs[dev], load_config(FitSettings, None, TINY + [f"train.device={dev}"]), progress=False)
    return scene, runs


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_fit_matches_cpu_reference(cpu_and_cuda_runs):
    scene, runs = cpu_and_cuda_runs
    timing = {d: json.loads((runs[d] / "timing.json").read_text()) for d in runs}
    assert timing["cuda"]["device"].startswith("cuda") and timing["cpu"]["device"].startswith("cpu")
    assert timing["cuda"]["iterations"] == timing["cpu"]["iterations"] == 240
    loss = {d: _losses(runs[d]) for d in runs}
    # step 1: same parameters, same rays and samples (CPU generator) -> same losses up to float rounding
    for k in ("sdf", "free", "depth", "rgb", "total"):
        a, b = loss["cpu"][1][k], loss["cuda"][1][k]
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), f"first-step {k}: cpu {a} vs cuda {b}"
    # the instance branch ran on the GPU: instance, class and panoptic losses were logged and are finite
    last = loss["cuda"][240]
    for k in ("ins", "cls", "pan"):
        assert k in last and np.isfinite(last[k]), f"loss/{k} missing or not finite on CUDA: {last}"

    # the fitted SDFs agree near the surface (both evaluated on the CPU)
    _, m_cpu, _, _ = load_run_full(runs["cpu"], device="cpu")
    _, m_gpu, b_gpu, _ = load_run_full(runs["cuda"], device="cpu")
    assert b_gpu is not None and m_gpu.device.type == "cpu"
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(4000, 3, generator=g) * torch.tensor([4.0, 2.0, 1.0]) - torch.tensor([2.0, 1.0, 0.2])
    with torch.no_grad():
        d_cpu, d_gpu = m_cpu.sdf(pts)[0], m_gpu.sdf(pts)[0]
    near = d_cpu.abs() < 0.1
    assert int(near.sum()) > 100
    assert float((d_cpu[near] - d_gpu[near]).abs().median()) < 0.02

    # meshes of similar size whose nearby vertices carry the same class (a 240-iteration fit is not
    # finished: this compares the two devices, not the quality of either)
    from scipy.spatial import cKDTree
    v_cpu, _, _, p_cpu = read_ply(runs["cpu"] / "mesh.ply")
    v_gpu, _, _, p_gpu = read_ply(runs["cuda"] / "mesh.ply")
    assert abs(len(v_cpu) - len(v_gpu)) <= 0.1 * len(v_cpu), (len(v_cpu), len(v_gpu))
    dist, nn = cKDTree(v_cpu).query(v_gpu)
    close = dist < 0.03
    assert np.mean(close) > 0.9, f"only {np.mean(close):.2f} of the CUDA mesh lies within 3 cm of the CPU mesh"
    assert np.mean(p_gpu["semantic"][close] == p_cpu["semantic"][nn[close]]) > 0.9
    n_inst = {d: len(json.loads((runs[d] / "instances.json").read_text())["instances"]) for d in runs}
    assert n_inst["cuda"] >= 1 and abs(n_inst["cuda"] - n_inst["cpu"]) <= 1, n_inst

    # label images of every frame, semantic agreement on the pixels either run labels
    pngs = sorted((runs["cpu"] / "labels" / "semantic").glob("*.png"))
    assert len(pngs) == 12 and len(list((runs["cuda"] / "labels" / "instance").glob("*.png"))) == 12
    for png in pngs[::4]:
        a = np.asarray(Image.open(png))
        b = np.asarray(Image.open(runs["cuda"] / "labels" / "semantic" / png.name))
        lab = (a > 0) | (b > 0)
        assert lab.any() and np.mean(a[lab] == b[lab]) > 0.9


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_resume_and_cpu_resume_of_a_cuda_run(tmp_path, cpu_and_cuda_runs):
    scene, _ = cpu_and_cuda_runs
    run = tmp_path / "run"
    s = load_config(FitSettings, None, TINY + ["train.device=cuda"])
    r = fit(scene, run, s, progress=False, stop_at=100)
    assert r.iterations == 100 and not r.finished
    # a run started on the GPU continues on the CPU (the device is a bookkeeping setting)
    s_cpu = load_config(FitSettings, None, TINY + ["train.device=cpu"])
    r = fit(scene, run, s_cpu, resume=True, progress=False, stop_at=140)
    assert r.iterations == 140
    r = fit(scene, run, s, resume=True, progress=False)
    assert r.iterations == 240 and (run / "mesh.ply").is_file()
