#!/usr/bin/env python3
"""The appearance branch's GPU check (issue 17): gsplat against the PyTorch rasteriser, and render speed.

Run on a machine with an NVIDIA GPU; prints one JSON document (and writes it with --json):
  * gsplat: whether it runs here and why not, its version and the seconds its first use took (the JIT
    compile of its CUDA kernels; nothing is installed unless --gsplat-wheel names wheel files, which are
    installed with pip --no-deps into a temporary folder for this process only);
  * agreement: PSNR between the gsplat and PyTorch renders of the same Gaussians (issue target >= 40 dB),
    mean |depth| difference, mean |alpha| difference, per camera; on a fitted run's Gaussians
    (--gaussians FILE from --export, or a run folder) or on random Gaussians; plus gsplat against the
    dense form of its rules (fields/raster_gsplat.render_gsplat_rules_dense) on a small random set;
  * speed: frames/s at each --sizes for gsplat and PyTorch on CUDA and PyTorch on the CPU.

  python scripts/gpu_appearance_check.py --gsplat-wheel .whl/gsplat-1.5.3-py3-none-any.whl --json out.json
  python scripts/gpu_appearance_check.py --export RUN gaussians.pt     # on the CPU: a run's Gaussians and
                                                                       # cameras in one small file
  python scripts/gpu_appearance_check.py --cpu-only                    # the PyTorch-on-CPU part alone

Only torch and the project's fields/ package are imported (besides --export, which reads the run).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GAUSSIAN_KEYS = ("means", "quats", "log_scales", "opacity_logits", "sh_dc", "sh_rest")


def parse_size(text: str) -> tuple[int, int]:
    """'640x480' -> (640, 480)."""
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not WIDTHxHEIGHT, e.g. 640x480") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size {text!r} must be positive")
    return w, h


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gaussians", type=Path, help="a file written by --export, or a run folder whose newest "
                    "checkpoint holds Gaussians; default: random Gaussians")
    ap.add_argument("--export", nargs=2, type=Path, metavar=("RUN", "OUT"),
                    help="write RUN's Gaussians and up to 8 of its training cameras to OUT (.pt) and stop")
    ap.add_argument("--gsplat-wheel", type=Path, nargs="+", default=[],
                    help="wheel files to pip-install (--no-deps) into a temporary folder before importing gsplat")
    ap.add_argument("--n-random", type=int, default=50000, help="random Gaussians when --gaussians is not given")
    ap.add_argument("--sizes", type=lambda s: [parse_size(x) for x in s.split(",")],
                    default=[(160, 120), (640, 480)], help="render sizes, comma-separated WxH (default 160x120,640x480)")
    ap.add_argument("--repeats", type=int, default=20, help="timed frames per backend and size on CUDA")
    ap.add_argument("--cpu-seconds", type=float, default=20.0, help="time budget of the CPU timing per size")
    ap.add_argument("--cpu-only", action="store_true", help="PyTorch on the CPU only (no CUDA, no gsplat)")
    ap.add_argument("--json", type=Path, help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.n_random <= 0 or args.repeats <= 0 or args.cpu_seconds <= 0:
        ap.error("--n-random, --repeats and --cpu-seconds must be positive")
    for w in args.gsplat_wheel:
        if not w.is_file():
            ap.error(f"--gsplat-wheel: {w} is not a file")
    if args.gaussians is not None and not args.gaussians.exists():
        ap.error(f"--gaussians: {args.gaussians} does not exist")
    if args.export is not None and not (args.export[0] / "checkpoints").is_dir():
        ap.error(f"--export: {args.export[0]} is not a run folder (no checkpoints/)")
    return args


def install_wheels(wheels: list[Path]) -> str | None:
    """pip install --no-deps the wheels into a temporary folder put first on sys.path; its path."""
    if not wheels:
        return None
    target = tempfile.mkdtemp(prefix="gsplat_site_")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--target", target, *map(str, wheels)], check=True)
    sys.path.insert(0, target)
    return target


# ----------------------------------------------------------------------------- Gaussians and cameras


def find_gaussian_state(state, prefix: str = ""):
    """The first {name: tensor} for GAUSSIAN_KEYS in a (nested) checkpoint dict, keys with any common
    prefix (e.g. 'gaussians.means'); None if there is none."""
    import torch
    if not isinstance(state, dict):
        return None
    for key in state:
        if isinstance(key, str) and key.endswith("means") and torch.is_tensor(state[key]):
            pre = key[: -len("means")]
            if all(torch.is_tensor(state.get(pre + k)) for k in GAUSSIAN_KEYS):
                out = {k: state[pre + k] for k in GAUSSIAN_KEYS}
                if torch.is_tensor(state.get(pre + "active_degree")):
                    out["active_degree"] = state[pre + "active_degree"]
                return out
    for value in state.values():
        found = find_gaussian_state(value)
        if found is not None:
            return found
    return None


def gaussian_model(state: dict):
    """A GaussianModel from {means, quats, ..., active_degree?}; SH degree from sh_rest's size."""
    import torch
    from fields.gaussians import GaussianModel
    k = state["sh_rest"].shape[1] + 1
    degree = int(round(math.sqrt(k))) - 1
    g = GaussianModel(*(state[n].float() for n in GAUSSIAN_KEYS), sh_degree=degree)
    g.active_degree.fill_(int(state.get("active_degree", torch.tensor(degree))))
    return g


def run_scene(run: Path):
    """The scene a run was fitted on (RUN/scene.txt)."""
    from recon.data.scene import load_scene
    txt = run / "scene.txt"
    if not txt.is_file():
        raise SystemExit(f"{run} does not say which scene it was fitted on ({txt} missing)")
    return load_scene(Path(txt.read_text().strip()), check_images=False)


def export_run(run: Path, out: Path, max_cameras: int = 8) -> dict:
    """Write RUN's Gaussians (from its newest checkpoint) and up to `max_cameras` training cameras to OUT."""
    import numpy as np
    import torch
    from recon.core.io import atomic_file
    from recon.train.checkpoint import load_checkpoint
    state, path = load_checkpoint(run)
    gs = find_gaussian_state(state)
    if gs is None:
        raise SystemExit(f"{path}: no Gaussians in this checkpoint (keys {', '.join(GAUSSIAN_KEYS)}); "
                         "was the run fitted with the appearance branch?")
    scene = run_scene(run)
    rows = scene.split_indices("train") or list(range(len(scene)))
    pick = [rows[int(i)] for i in np.linspace(0, len(rows) - 1, min(max_cameras, len(rows)))]
    doc = {"gaussians": {k: v.detach().cpu() for k, v in gs.items()},
           "cameras": {"K": torch.tensor(scene.K, dtype=torch.float32), "width": scene.width, "height": scene.height,
                       "c2w": torch.tensor(np.stack([scene.c2w[i] for i in pick]), dtype=torch.float32)},
           "source": {"run": str(run), "checkpoint": path.name, "frames": [scene.frame_ids[i] for i in pick]}}
    with atomic_file(out) as fh:
        torch.save(doc, fh)
    return {"exported": str(out), "n_gaussians": int(gs["means"].shape[0]), "cameras": len(pick)}


def load_gaussians(path: Path | None, n_random: int):
    """(GaussianModel on the CPU, cameras {K [3, 3], width, height, c2w [F, 4, 4]}, description)."""
    import torch
    if path is None:
        return (*random_scene(n_random), f"{n_random} random Gaussians")
    if path.is_dir():
        from recon.train.checkpoint import load_checkpoint
        state, ckpt = load_checkpoint(path)
        gs = find_gaussian_state(state)
        if gs is None:
            raise SystemExit(f"{ckpt}: no Gaussians in this checkpoint")
        scene = run_scene(path)
        rows = scene.split_indices("train")[:8]
        cams = {"K": torch.tensor(scene.K, dtype=torch.float32), "width": scene.width, "height": scene.height,
                "c2w": torch.tensor(scene.c2w[rows], dtype=torch.float32)}
        return gaussian_model(gs), cams, f"run {path} ({ckpt.name})"
    doc = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(doc, dict) or "gaussians" not in doc or "cameras" not in doc:
        raise SystemExit(f"{path}: not a file written by --export (no 'gaussians' and 'cameras')")
    return gaussian_model(doc["gaussians"]), doc["cameras"], f"{path} ({doc.get('source', {})})"


def random_scene(n: int, seed: int = 0):
    """n Gaussians in a 4 x 3 x 3 m box seen by 4 cameras at 160 x 120 (hfov ~84 degrees)."""
    import torch
    from fields.gaussians import GaussianModel
    gen = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=gen) - 0.5) * torch.tensor([4.0, 3.0, 3.0]) + torch.tensor([0.0, 0.0, 3.5])
    g = GaussianModel(means, torch.randn(n, 4, generator=gen), torch.log(0.01 + 0.05 * torch.rand(n, 3, generator=gen)),
                      torch.randn(n, generator=gen) * 2.0 + 1.0, torch.randn(n, 3, generator=gen) * 0.8,
                      torch.randn(n, 15, 3, generator=gen) * 0.05, sh_degree=3)
    g.active_degree.fill_(3)
    c2w = torch.eye(4).repeat(4, 1, 1)
    for i, (x, y) in enumerate([(0.0, 0.0), (0.3, 0.0), (-0.3, 0.1), (0.0, -0.2)]):
        c2w[i, :3, 3] = torch.tensor([x, y, 0.0])
    K = torch.tensor([[88.85, 0, 79.5], [0, 88.85, 59.5], [0, 0, 1]])
    return g, {"K": K, "width": 160, "height": 120, "c2w": c2w}


def scaled_K(K, from_wh: tuple[int, int], to_wh: tuple[int, int]):
    """Intrinsics of the same camera at another resolution (pixel centres at integer coordinates)."""
    K = K.clone().float()
    sx, sy = to_wh[0] / from_wh[0], to_wh[1] / from_wh[1]
    K[0, 0] *= sx
    K[1, 1] *= sy
    K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return K


# ----------------------------------------------------------------------------- measurements


def psnr(a, b) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def frames_per_second(render, n: int, budget_s: float | None, sync) -> dict:
    """Time `render()` after one warm-up: n frames, or as many as fit in budget_s."""
    render()
    sync()
    times = []
    start = time.perf_counter()
    while len(times) < n and (budget_s is None or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        render()
        sync()
        times.append(time.perf_counter() - t)
    times.sort()
    return {"fps": round(len(times) / sum(times), 2), "median_ms": round(1000 * times[len(times) // 2], 2),
            "frames": len(times)}


def speed(g, cams, sizes, backend_devices: list[tuple[str, str]], repeats: int, cpu_seconds: float) -> dict:
    import torch
    from fields.gaussians import render_gaussians
    out = {}
    base = (int(cams["width"]), int(cams["height"]))
    for w, h in sizes:
        K = scaled_K(cams["K"], base, (w, h))
        c2w = cams["c2w"][0]
        row = {}
        for backend, dev in backend_devices:
            gd = g.to(dev)
            sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

            def render():
                with torch.no_grad():
                    render_gaussians(gd, K, c2w, w, h, backend=backend)

            row[f"{backend}_{dev}"] = frames_per_second(render, repeats if dev == "cuda" else 10 ** 6,
                                                        None if dev == "cuda" else cpu_seconds, sync)
        out[f"{w}x{h}"] = row
    return out


def agreement(g, cams) -> dict:
    import torch
    from fields.gaussians import render_gaussians
    gd = g.to("cuda")
    w, h = int(cams["width"]), int(cams["height"])
    per = []
    for c2w in cams["c2w"]:
        with torch.no_grad():
            a = render_gaussians(gd, cams["K"], c2w, w, h, backend="torch")
            b = render_gaussians(gd, cams["K"], c2w, w, h, backend="gsplat")
        both = (a["depth_m"] > 0) & (b["depth_m"] > 0)
        per.append({"psnr_db": round(psnr(a["rgb"].clamp(0, 1), b["rgb"].clamp(0, 1)), 2),
                    "depth_abs_m": round(float((a["depth_m"][both] - b["depth_m"][both]).abs().mean()), 5)
                    if bool(both.any()) else None,
                    "alpha_abs": round(float((a["alpha"] - b["alpha"]).abs().mean()), 5)})
    return {"per_camera": per, "psnr_db_min": min(p["psnr_db"] for p in per),
            "psnr_db_mean": round(sum(p["psnr_db"] for p in per) / len(per), 2), "target_db": 40.0}


def rules_check() -> dict:
    """gsplat against the dense form of its rules on 400 random Gaussians at 64 x 48."""
    import torch
    import fields.raster_gsplat as rg
    g, cams = random_scene(400, seed=1)
    g = g.to("cuda")
    K = scaled_K(cams["K"], (160, 120), (64, 48))
    c2w = cams["c2w"][0]
    args = (g.means, g.quats, g.log_scales, g.opacity_logits, g.sh(), int(g.active_degree), K, c2w, 64, 48)
    with torch.no_grad():
        gs, ref = rg.render_gsplat(*args), rg.render_gsplat_rules_dense(*args)
    return {"psnr_db": round(psnr(gs["rgb"], ref["rgb"]), 2),
            "alpha_abs_max": round(float((gs["alpha"] - ref["alpha"]).abs().max()), 6)}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.export is not None:
        report = export_run(*args.export)
        print(json.dumps(report, indent=1))
        return report
    import torch
    report: dict = {"torch": torch.__version__, "cpu_threads": torch.get_num_threads()}
    g, cams, source = load_gaussians(args.gaussians, args.n_random)
    report["gaussians"] = {"source": source, "n": g.n, "sh_degree": g.sh_degree}
    backends = [("torch", "cpu")]
    if not args.cpu_only:
        report["wheel_site"] = install_wheels(args.gsplat_wheel)
        if not torch.cuda.is_available():
            raise SystemExit("CUDA is not available to torch here: run with --cpu-only, or on a GPU machine")
        report["device"] = torch.cuda.get_device_name()
        major, minor = torch.cuda.get_device_capability()
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")   # compile gsplat for this GPU only
        os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
        import fields.raster_gsplat as rg
        t = time.perf_counter()
        ok, why = rg.gsplat_available()
        report["gsplat"] = {"available": ok, "reason": why, "first_use_s": round(time.perf_counter() - t, 1)}
        backends = [("torch", "cuda")] + ([("gsplat", "cuda")] if ok else []) + backends
        if ok:
            report["rules_check"] = rules_check()
            report["agreement"] = agreement(g, cams)
    report["speed"] = speed(g, cams, args.sizes, backends, args.repeats, args.cpu_seconds)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json is not None:
        tmp = args.json.with_name(f".{args.json.name}.tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, args.json)                # atomic; recon.core.io is not imported on the GPU machine
    return report


if __name__ == "__main__":
    main()
