"""report.md and its PNG plots from a bench results dict (app/bench/results.py).

Per scene (cells grouped by scene key):
    curves_<scene>.png     PQ@0.5, mIoU and mCov on the monitor frames vs. fit time (one line per method;
                           the fusion baseline is one point at its fusion time)
    class_iou_<scene>.png  per-class IoU at the GT mesh vertices (metrics.json semantic_3d.per_class_iou)
    panoptic_<scene>.png   two evaluation frames (held-out ones first): RGB | GT | each method's rendered
                           panoptic labels (stuff in its class colour, things in an instance colour)
Tables: one row per cell grouped by scene, the mean over seeds (when a suite has several), the
fit time each method needs to reach a share of the best PQ in its scene, and the failed / pending cells.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from recon.core.io import atomic_write_bytes, atomic_write_text

COLUMNS = (("pq50", "PQ@0.5", 1), ("pq30", "PQ@0.3", 1), ("miou_2d", "mIoU 2D", 1),
           ("miou_2d_paper", "mIoU 2D/frame", 1), ("mcov_2d", "mCov 2D", 1),
           ("mcov_3d", "mCov 3D", 1), ("miou_3d", "mIoU 3D", 1), ("f1", "F1", 2), ("chamfer_l1_cm", "C-L1 cm", 2),
           ("psnr", "PSNR dB", 2), ("ssim", "SSIM", 3), ("depth_absrel", "depth AbsRel", 3),
           ("render_fps", "render fps", 1), ("fit_seconds", "fit s", 1), ("peak_rss_mb", "peak MB", 0))
REACH_SHARES = (0.5, 0.8, 0.95)


def _fmt(v, digits: int) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}"


def panoptic_colors(sem: np.ndarray, inst: np.ndarray, thing_ids, n_classes: int) -> np.ndarray:
    """[H, W] class ids + instance ids -> [H, W, 3] uint8: things with an instance id get the instance's
    colour, everything else (stuff, things without id) its class colour; class 0 is grey."""
    from recon.data.palette import class_palette, instance_palette
    assert sem.shape == inst.shape and sem.ndim == 2, (sem.shape, inst.shape)
    sem = np.asarray(sem, np.int64)
    inst = np.asarray(inst, np.int64)
    pal = class_palette(max(n_classes, int(sem.max(initial=0)) + 1))
    out = pal[sem]
    is_thing = np.isin(sem, list(thing_ids)) & (inst > 0)
    if is_thing.any():
        out[is_thing] = instance_palette(inst[is_thing])
    return out


def time_to_reach(curve: list[dict], key: str, level: float) -> float | None:
    """Fit seconds of the first curve point with curve[key] >= level (None if never)."""
    for p in sorted(curve, key=lambda p: p["fit_seconds"]):
        if p.get(key) is not None and p[key] >= level:
            return float(p["fit_seconds"])
    return None


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def device_label(cell: dict) -> str:
    """Short 'where the fit ran' for the tables: 'H100' (the GPU's model), 'CPU x1' (torch threads), '–'."""
    dev = cell.get("fit_device")
    if not dev:
        return "–"
    if dev.startswith("cuda"):
        name = dev.split("(", 1)[1].split(",", 1)[0] if "(" in dev else "GPU"
        words = [w for w in name.replace("NVIDIA", "").replace("GeForce", "").split() if w]
        return words[0] if words else "GPU"
    return f"CPU x{cell['threads']}" if cell.get("threads") else "CPU"


def _scenes(results: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for c in results["cells"]:
        out.setdefault(c["scene"], []).append(c)
    return out


def plot_curves(cells: list[dict], path: Path, title: str) -> bool:
    import matplotlib.pyplot as plt
    cells = [c for c in cells if c["status"] == "done" and c["curve"]]
    if not cells:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (key, name) in zip(axes, (("pq50", "PQ@0.5"), ("miou", "mIoU"), ("mcov", "mCov"))):
        for c in cells:
            pts = [(p["fit_seconds"], p[key]) for p in c["curve"] if p.get(key) is not None]
            if not pts:
                continue
            x, y = zip(*pts)
            style = "*" if len(pts) == 1 else "o-"
            ax.plot(x, y, style, label=c["method_label"], markersize=10 if len(pts) == 1 else 4)
        ax.set_xlabel("fit time (s)")
        ax.set_ylabel(f"{name} (monitor frames, %)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title}: metric vs. fit time")
    _save(fig, path)
    plt.close(fig)
    return True


def plot_class_iou(cells: list[dict], path: Path, title: str) -> bool:
    import matplotlib.pyplot as plt
    cells = [c for c in cells if c["status"] == "done"
             and c["metrics"].get("semantic_3d", {}).get("per_class_iou")]
    if not cells:
        return False
    names: list[str] = []
    for c in cells:
        for n in c["metrics"]["semantic_3d"]["per_class_iou"]:
            if n not in names:
                names.append(n)
    width = 0.8 / len(cells)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(names) * max(1, len(cells) / 2)), 3.6))
    x = np.arange(len(names))
    for k, c in enumerate(cells):
        per = c["metrics"]["semantic_3d"]["per_class_iou"]
        y = [per.get(n) if per.get(n) is not None else 0.0 for n in names]
        ax.bar(x + (k - (len(cells) - 1) / 2) * width, y, width, label=c["method_label"])
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("IoU at GT vertices (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title(f"{title}: per-class IoU (3D)")
    _save(fig, path)
    plt.close(fig)
    return True


def _pick_frames(scene, cells: list[dict], n: int = 2) -> list[int]:
    frames = next((c["monitor_frames"] for c in cells if c.get("monitor_frames")), None) or \
        list(range(len(scene)))
    train = set(scene.split_indices("train")) if "train" in scene.splits else set()
    held = [i for i in frames if i not in train]
    pick = held[:n] if len(held) >= n else (held + [i for i in frames if i in train])[:n]
    return sorted(pick)


def plot_panoptic(cells: list[dict], bench_dir: Path, path: Path, title: str) -> bool:
    import matplotlib.pyplot as plt
    from recon.data.run_files import read_label_images
    from recon.data.scene import load_scene
    cells = [c for c in cells if c["status"] == "done"]
    if not cells:
        return False
    scene_txt = bench_dir / cells[0]["run"] / "scene.txt"
    if not scene_txt.is_file():
        return False
    scene = load_scene(Path(scene_txt.read_text().strip()), check_images=False)
    if not scene.has_gt_images:
        return False
    frames = _pick_frames(scene, cells)
    things, n_cls = scene.thing_ids(), scene.n_classes
    cols = ["RGB", "GT"] + [c["method_label"] for c in cells]
    fig, axes = plt.subplots(len(frames), len(cols), figsize=(2.6 * len(cols), 2.1 * len(frames)), squeeze=False)
    for r, i in enumerate(frames):
        fid = scene.frame_ids[i]
        imgs = [scene.load_color(i), panoptic_colors(*scene.load_gt(i), things, n_cls)]
        for c in cells:
            try:
                imgs.append(panoptic_colors(*read_label_images(bench_dir / c["run"], fid), things, n_cls))
            except (OSError, ValueError):
                imgs.append(np.zeros((scene.height, scene.width, 3), np.uint8))
        for k, img in enumerate(imgs):
            ax = axes[r, k]
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[k], fontsize=8)
            if k == 0:
                held = "train" in scene.splits and i not in set(scene.split_indices("train"))
                ax.set_ylabel(f"{fid}{' (held out)' if held else ''}", fontsize=8)
    fig.suptitle(f"{title}: panoptic labels", fontsize=10)
    _save(fig, path)
    plt.close(fig)
    return True


def _mean(vals: list) -> float | None:
    v = [x for x in vals if x is not None]
    return float(np.mean(v)) if v else None


def _settings_text(spec: dict) -> str:
    cfg = f"configs/{spec['config']}" if spec["config"] else "the schema defaults"
    if spec["base_overrides"]:
        cfg += f" with `{' '.join(spec['base_overrides'])}`"
    if spec["ref_train_frames"]:
        cfg += (f"; iterations and stage boundaries scaled by training frames / {spec['ref_train_frames']} "
                f"(app/bench/suites.py `scaled_schedule`)")
    return cfg


def provenance_lines(cells: list[dict]) -> list[str]:
    """Report lines saying at which commits the done cells were computed and with how many fit threads."""
    commits: dict[str, int] = {}
    threads: dict[str, int] = {}
    devices: dict[str, int] = {}
    for c in cells:
        if c["status"] != "done":
            continue
        git = c.get("git") or {}
        key = f"`{(git.get('commit') or 'unknown')[:10]}`" + (" (uncommitted changes)" if git.get("dirty") else "")
        commits[key] = commits.get(key, 0) + 1
        if c["method_kind"] == "fit":
            t = str(c.get("threads")) if c.get("threads") else "unknown"
            threads[t] = threads.get(t, 0) + 1
            d = c.get("fit_device") or "unknown"
            devices[d] = devices.get(d, 0) + 1
    out = []
    if commits:
        out.append("- done cells computed at commit " + ", ".join(f"{k} ({n} cell{'s' * (n != 1)})" for k, n in commits.items()))
    if threads:
        out.append("- torch threads per fit: " + ", ".join(f"{k} ({n} fit{'s' * (n != 1)})" for k, n in threads.items())
                   + "; fit s is that process's training time, so compare fits run with the same threads")
    if devices:
        out.append("- fit devices: " + "; ".join(f"{k} ({n} fit{'s' * (n != 1)})" for k, n in devices.items())
                   + "; the tables' \"fit on\" column says which, and fit s compares only within one device")
    return out


def references_section(results: dict) -> list[str]:
    """Markdown lines: the scenes' mask references next to each method's 3D scores, per scene group
    (means over the seeds that have both); [] without references."""
    refs = results.get("references") or {}
    if not refs:
        return []
    methods = [m["label"] for m in results["methods"]]
    groups: dict[str, dict] = {}
    for c in results["cells"]:
        if c["scene"] not in refs:
            continue
        g = groups.setdefault(c["scene_group"], {"scenes": set(), "cells": {}})
        g["scenes"].add(c["scene"])
        if c["status"] == "done":
            g["cells"].setdefault(c["method_label"], []).append(c)

    def cell(ref_key: str, sum_key: str, g: dict) -> str:
        vals = [_fmt(_mean([refs[sc][ref_key] for sc in sorted(g["scenes"])]), 1)]
        vals += [_fmt(_mean([c["summary"].get(sum_key) for c in g["cells"].get(m, [])]), 1) for m in methods]
        return " / ".join(vals)

    who = " / ".join(["masks"] + methods)
    lines = ["", "## What the masks carry in 3D", "",
             "A reference with no reconstruction (eval/mask_reference.py): the masks' class labels voted onto the "
             "observed GT vertices with the GT geometry (semantic_3d), and the masks' instances voted the same way "
             "after an oracle associates each mask with the GT instance it overlaps most (instance_3d). A method "
             "can beat it by extrapolating, but it says what the masks cover. Means over the scene's seeds.", "",
             f"| scene | semantic_3d mIoU: {who} | instance_3d mCov: {who} |", "|---|---|---|"]
    for name, g in groups.items():
        lines.append(f"| {name} | {cell('semantic_3d_miou', 'miou_3d', g)} | {cell('instance_3d_mcov', 'mcov_3d', g)} |")
    return lines


INSTANCE_GAP_POINTS = 10.0   # an instance is listed when a method's IoU is this far under the masks' reference


def instance_gaps(results: dict, gap: float = INSTANCE_GAP_POINTS) -> list[dict]:
    """GT thing instances where a fit method's instance_3d IoU is at least `gap` points under the masks'
    reference IoU for that instance (metrics.json instance_3d.per_instance against the reference's), largest
    gap first: {scene, method, instance, n_vertices, iou, reference, mask_coverage, parts, share, purity,
    reading}. reading: "split" (2+ predicted ids hold >= 10 % of it each), "merged" (its best prediction
    is mostly something else: purity < 60 %), "missed" (no prediction), else "partial"."""
    refs = results.get("references") or {}
    rows = []
    for c in results["cells"]:
        ref = (refs.get(c["scene"]) or {}).get("instance_3d_per_instance") or {}
        mine = ((c.get("metrics") or {}).get("instance_3d") or {}).get("per_instance") or {}
        if c["status"] != "done" or c["method_kind"] != "fit" or not ref or not mine:
            continue
        for name, r in ref.items():
            m = mine.get(name)
            if m is None or r["iou"] - m["iou"] < gap:
                continue
            reading = ("missed" if m["pred"] == 0 else "split" if m["parts"] >= 2
                       else "merged" if m["purity"] < 60.0 else "partial")
            rows.append({"scene": c["scene"], "method": c["method_label"], "instance": name,
                         "n_vertices": m["n_vertices"], "iou": m["iou"], "reference": r["iou"],
                         "mask_coverage": r.get("mask_coverage"), "parts": m["parts"], "share": m["share"],
                         "purity": m["purity"], "reading": reading})
    return sorted(rows, key=lambda r: r["iou"] - r["reference"])


def instance_gaps_section(results: dict) -> list[str]:
    """Markdown lines listing instance_gaps (at most 40 rows); [] when there is none."""
    rows = instance_gaps(results)
    if not rows:
        return []
    lines = ["", "## Instances furthest under the masks' reference", "",
             f"GT thing instances whose instance_3d IoU is {INSTANCE_GAP_POINTS:.0f}+ points under what the masks carry "
             "for that instance (the reference above, per instance). parts: predicted ids holding >= 10 % of it; "
             "share: how much of it the best prediction holds; purity: how much of that prediction is it. "
             "Reading: split (2+ parts), merged (purity < 60 %), missed, else partial.", "",
             "| scene | method | instance | vertices | IoU | reference | mask coverage | parts | share | purity | reading |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows[:40]:
        lines.append(f"| {r['scene']} | {r['method']} | {r['instance']} | {r['n_vertices']} | {r['iou']:.1f} | "
                     f"{r['reference']:.1f} | {_fmt(r['mask_coverage'], 1)} | {r['parts']} | {r['share']:.1f} | "
                     f"{r['purity']:.1f} | {r['reading']} |")
    if len(rows) > 40:
        lines.append(f"| ... {len(rows) - 40} more in results.json's cells | | | | | | | | | | |")
    return lines


def report_markdown(results: dict, figures: dict[str, list[str]], image_prefix: str = "",
                    regenerate: str | None = None) -> str:
    """The report text; figures: scene key -> PNG file names (relative to image_prefix)."""
    cells = results["cells"]
    git, mach = results["git"], results["machine"]
    n = {s: sum(1 for c in cells if c["status"] == s) for s in ("done", "failed", "pending")}
    lines = [f"# Benchmark: suite `{results['suite']}`", ""] + \
        ([results["description"], ""] if results.get("description") else []) + [
             f"- report generated {results['created']} by commit `{git.get('commit') or 'unknown'}`"
             f"{' (with uncommitted changes)' if git.get('dirty') else ''}",
             f"- machine: {mach.get('cpu') or '?'}, {mach.get('cpu_count')} cores, {mach.get('memory_gb')} GB, "
             f"GPU {mach.get('gpu') or 'none'}; Python {mach.get('python')}, torch {mach.get('torch')}",
             f"- cells: {n['done']} done, {n['failed']} failed, {n['pending']} not run"] + \
        provenance_lines(cells) + [
             "- methods: " + "; ".join(f"`{m['name']}` = {m['label']}"
                                       + (f" (`{' '.join(m['overrides'])}`)" if m["overrides"] else "")
                                       for m in results["methods"]),
             f"- fit settings: {_settings_text(results['suite_spec'])}",
             "- metric definitions, thresholds and how they relate to the papers: eval/README.md"]
    if regenerate:
        lines.append(f"- regenerate: `{regenerate}`")
    if results.get("notes"):
        lines += ["", "## Notes", "", results["notes"]]
    lines += ["", "## Results", "",
              "2D metrics over all frames of the scene (one concatenated image); 3D at the observed GT mesh "
              "vertices; F1 at 5 cm and C-L1 against the observed GT surface; fit s = training (ours) or "
              "fusion (baseline) time; peak MB = peak resident memory of the cell's process. PSNR, SSIM, depth AbsRel "
              "and render fps: the run's renders from the held-out poses against the captured frames (metrics.json "
              "`rendering`; – for methods that do not render, like the fusion baseline, and for cells evaluated "
              "before the block existed); render fps is measured on the machine that ran the evaluation.", "",
              "| scene | method | fit on | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
              "|---|---|---|" + "---:|" * len(COLUMNS)]
    for scene, group in _scenes(results).items():
        first = True
        for c in group:
            if c["status"] != "done":
                continue
            row = [scene if first else "", c["method_label"], device_label(c)] + \
                [_fmt(c["summary"].get(k), d) for k, _, d in COLUMNS]
            lines.append("| " + " | ".join(row) + " |")
            first = False
    seeds = results["suite_spec"]["seeds"]
    if len(seeds) > 1:
        lines += ["", f"### Mean over seeds {', '.join(map(str, seeds))}", "",
                  "| scene | method | fit on | n | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
                  "|---|---|---|---:|" + "---:|" * len(COLUMNS)]
        groups: dict[tuple[str, str], list[dict]] = {}
        for c in cells:
            if c["status"] == "done":
                groups.setdefault((c["scene_group"], c["method_label"]), []).append(c)
        last = None
        for (sg, ml), cs in groups.items():
            row = [sg if sg != last else "", ml, ", ".join(sorted({device_label(c) for c in cs})), str(len(cs))] + \
                [_fmt(_mean([c["summary"].get(k) for c in cs]), d) for k, _, d in COLUMNS]
            lines.append("| " + " | ".join(row) + " |")
            last = sg
    lines += references_section(results)
    lines += instance_gaps_section(results)
    lines += ["", "## Speed: fit time to reach a share of the scene's best PQ@0.5", "",
              "On the monitor frames (a fixed subset of evaluation frames rendered during the fit). Target = "
              "share x the best final PQ@0.5 of any method on that scene; – = not reached.", "",
              "| scene | method | " + " | ".join(f"{int(s * 100)}% (s)" for s in REACH_SHARES) + " |",
              "|---|---|" + "---:|" * len(REACH_SHARES)]
    for scene, group in _scenes(results).items():
        done = [c for c in group if c["status"] == "done" and c["curve"]]
        finals = [max((p["pq50"] for p in c["curve"] if p.get("pq50") is not None), default=None) for c in done]
        best = max((f for f in finals if f is not None), default=None)
        if not best:
            continue
        for k, c in enumerate(done):
            row = [scene if k == 0 else "", c["method_label"]] + \
                [_fmt(time_to_reach(c["curve"], "pq50", s * best), 0) for s in REACH_SHARES]
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Plots", ""]
    for scene, names in figures.items():
        if names:
            lines += [f"### {scene}", ""] + [f"![{n}]({image_prefix}{n})" for n in names] + [""]
    failed = [c for c in cells if c["status"] == "failed"]
    pending = [c for c in cells if c["status"] == "pending"]
    if failed:
        lines += ["## Failed cells", "", "| cell | status | error |", "|---|---|---|"]
        for c in failed:
            err = (c.get("error") or "").splitlines()[0][:200] if c.get("error") else ""
            lines.append(f"| {c['cell_id']} | {c['status']} | {err.replace('|', '/')} |")
        lines.append("")
    if pending:
        lines += ["## Cells not run yet", "", f"{len(pending)} cells; the same bench command computes them "
                  "(done cells are kept): " + ", ".join(f"`{c['cell_id']}`" for c in pending), ""]
    return "\n".join(lines) + "\n"


def write_report(results: dict, bench_dir: Path, fig_dir: Path, md_path: Path | None = None,
                 image_prefix: str = "", regenerate: str | None = None) -> Path:
    """Write the PNGs into fig_dir and the markdown to md_path (default fig_dir/report.md)."""
    import matplotlib
    matplotlib.use("Agg")
    bench_dir, fig_dir = Path(bench_dir), Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, list[str]] = {}
    for scene, group in _scenes(results).items():
        names = []
        for stem, fn in (("curves", lambda p: plot_curves(group, p, scene)),
                         ("class_iou", lambda p: plot_class_iou(group, p, scene)),
                         ("panoptic", lambda p: plot_panoptic(group, bench_dir, p, scene))):
            name = f"{stem}_{scene}.png"
            if fn(fig_dir / name):
                names.append(name)
        figures[scene] = names
    md_path = Path(md_path) if md_path is not None else fig_dir / "report.md"
    atomic_write_text(md_path, report_markdown(results, figures, image_prefix, regenerate))
    return md_path
