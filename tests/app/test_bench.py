"""Benchmark harness: resume skips finished cells, a crashing cell is recorded and the suite goes on,
results.json validates, report.md and its plots are written; the pure rules by hand-computed cases."""
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import eval.evaluate
from app.bench.cells import resolve_fit_settings, subset_scores
from app.bench.records import read_monitor_curve
from app.bench.results import publish, schema_problems
from app.bench.runner import run_cell_process, run_suite
from app.bench.suites import (FUSION, SUITES, MethodSpec, SceneSpec, Suite, evenly_spaced, monitor_every, scaled_schedule,
                              suite_cells)
from app.bench.report import instance_gaps, instance_gaps_section, panoptic_colors, time_to_reach

TINY = (
    "model.sdf_grid.n_levels=6", "model.sdf_grid.log2_hashmap_size=12", "model.sdf_grid.finest_cell_m=0.1",
    "model.semantic_grid.n_levels=4", "model.semantic_grid.log2_hashmap_size=10",
    "model.semantic_grid.finest_cell_m=0.2", "model.instance_grid.n_levels=4",
    "model.instance_grid.log2_hashmap_size=10", "model.instance_grid.finest_cell_m=0.2", "tokens.feat_dim=8",
    "tokens.class_dim=8", "model.sdf_hidden=16", "model.semantic_hidden=16", "model.instance_hidden=16",
    "model.color_hidden=16", "render.n_stratified=4", "render.n_surface=6", "train.rays_per_iter=128",
    "train.geometry_only_iters=4", "train.log_every=2", "mesh.voxel_size_m=0.12", "train.threads=1",
    "train.iters=8", "train.pan_start_iters=4", "train.dice_off_iters=6",
)


def tiny_suite() -> Suite:
    return Suite("tiny", scenes=(SceneSpec("room", "realistic", size=(40, 30), frames=8, holdout_every=4),),
                 methods=(MethodSpec("ours"), MethodSpec("broken", overrides=("data.split=nope",)), FUSION),
                 config=None, base_overrides=TINY, ref_train_frames=None, monitor_points=2, monitor_frames=2,
                 fusion_voxel_size_m=0.05)


def test_tiny_suite_end_to_end_and_resume(tmp_path, monkeypatch):
    monkeypatch.setattr(eval.evaluate, "N_POINTS", 20_000)  # geometry eval of a 8-iteration mesh is slow otherwise
    out = tmp_path / "bench"
    lines: list[str] = []
    res = run_suite(tiny_suite(), out, isolate=False, progress=False, log=lines.append)
    status = {c["method"]: c for c in res["cells"]}
    assert [c["cell_id"] for c in res["cells"]] == [
        "room-realistic-s0__ours", "room-realistic-s0__broken", "room-realistic-s0__fusion"]
    # the crashing cell is recorded with its error and the cell after it still ran
    assert status["broken"]["status"] == "failed"
    assert "nope" in status["broken"]["error"] and "Traceback" in status["broken"]["traceback"]
    assert status["ours"]["status"] == status["fusion"]["status"] == "done"
    from recon.core.runfolder import peak_rss_mb
    for m in ("ours", "fusion"):
        c = status[m]
        assert {"geometry", "panoptic_2d", "panoptic_2d_paper", "semantic_2d", "instance_2d"} <= set(c["metrics"])
        # the report's columns are the values of the cell's run folder: its metrics.json and timing.json
        run_dir = out / "cells" / c["cell_id"] / "run"
        disk = json.loads((run_dir / "metrics.json").read_text())
        timing = json.loads((run_dir / "timing.json").read_text())
        assert c["summary"]["f1"] is not None and c["summary"]["f1"] == disk["geometry"]["f1"]
        assert c["summary"]["pq50"] is not None and c["summary"]["pq50"] == disk["panoptic_2d"]["pq"]
        assert c["summary"]["pq30"] == disk["panoptic_2d_paper"]["pq"]
        assert c["summary"]["miou_3d"] == disk["semantic_3d"]["miou"]
        assert (c["fit_seconds"], c["peak_rss_mb"]) == (timing["fit_seconds"], timing["peak_rss_mb"])
        # the fit is part of the cell (both rounded to 0.01 s); isolate=False ran it in this process, so its
        # recorded peak memory (ru_maxrss, never decreasing) is at most this process's peak now
        assert 0 <= c["fit_seconds"] <= c["wall_seconds"] + 0.01
        assert 0 < c["peak_rss_mb"] <= peak_rss_mb() + 0.05
    assert status["ours"]["iterations"] == 8 and status["ours"]["config"]["train"]["monitor_every"] == 4
    assert [p["iter"] for p in status["ours"]["curve"]] == [4, 8]          # monitor/ rows of metrics.csv
    assert len(status["fusion"]["curve"]) == 1 and status["fusion"]["curve"][0]["iter"] == 0
    assert status["ours"]["config"]["train"]["seed"] == 0
    # a finished fit keeps its outputs but not its checkpoints
    ours_run = out / "cells" / "room-realistic-s0__ours" / "run"
    assert (ours_run / "mesh.ply").is_file() and not (ours_run / "checkpoints").exists()
    # results.json is strict JSON and matches its schema
    on_disk = json.loads((out / "results.json").read_text())
    assert schema_problems(on_disk) == []
    assert on_disk["git"]["commit"] is None or len(on_disk["git"]["commit"]) == 40
    # report with the three kinds of plots; ours and the baseline on the same scene rows
    report = (out / "report.md").read_text()
    for stem in ("curves", "class_iou", "panoptic"):
        png = out / f"{stem}_room-realistic-s0.png"
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG", png
        assert png.name in report
    assert "| room-realistic-s0 | ours |" in report and "|  | TSDF fusion + voting |" in report
    assert "room-realistic-s0__broken | failed" in report
    # provenance: the commit the cells were computed at and the fit's torch threads
    assert "- done cells computed at commit `" in report and "(2 cells)" in report
    assert status["ours"]["threads"] >= 1 and status["fusion"]["threads"] is None
    assert f"- torch threads per fit: {status['ours']['threads']} (1 fit)" in report
    # and where each fit ran: timing.json's device for ours, the CPU for the fusion baseline, none for a crash
    import torch
    assert status["ours"]["fit_device"].startswith("cuda" if torch.cuda.is_available() else "cpu (")
    assert status["fusion"]["fit_device"] == "cpu" and status["broken"]["fit_device"] is None
    assert f"- fit devices: {status['ours']['fit_device']} (1 fit)" in report and "| fit on |" in report
    assert res["notes"] is None and "## Notes" not in report
    # the scene's mask reference, cached in the bench folder, beside each method's 3D scores
    ref = res["references"]["room-realistic-s0"]
    assert 0 <= ref["semantic_3d_miou"] <= 100 and 0 <= ref["instance_3d_mcov"] <= 100
    assert (out / "references" / "room-realistic-s0.json").is_file()
    assert any(ln.startswith("mask reference of room-realistic-s0: semantic_3d") for ln in lines)
    assert "## What the masks carry in 3D" in report
    assert "| scene | semantic_3d mIoU: masks / ours / broken / TSDF fusion + voting |" in report
    row = next(ln for ln in report.splitlines() if ln.startswith("| room-realistic | "))
    assert row.split(" | ")[1].split(" / ")[0] == f"{ref['semantic_3d_miou']:.1f}"
    assert row.split(" | ")[1].split(" / ")[2] == "–"                           # the failed cell
    (out / "NOTES.md").write_text("The fits of this suite shared one machine.\n")

    # resume: the done cells are skipped untouched, the failed one is tried again
    stamps = {m: (out / "cells" / f"room-realistic-s0__{m}" / "cell.json").stat().st_mtime_ns
              for m in ("ours", "fusion")}
    lines.clear()
    res2 = run_suite(tiny_suite(), out, isolate=False, progress=False, log=lines.append)
    assert sum("skipped" in ln for ln in lines) == 2, lines
    assert not any(ln.startswith("mask reference of") for ln in lines)       # cached
    assert any("broken: FAILED" in ln for ln in lines)
    for m, t in stamps.items():
        assert (out / "cells" / f"room-realistic-s0__{m}" / "cell.json").stat().st_mtime_ns == t
    assert [c["status"] for c in res2["cells"]] == ["done", "failed", "done"]
    assert res2["notes"] == "The fits of this suite shared one machine."
    assert "## Notes\n\nThe fits of this suite shared one machine." in (out / "report.md").read_text()
    # a changed setting invalidates exactly the cells it touches; --only restricts the run
    changed = replace(tiny_suite(), fusion_voxel_size_m=0.06)
    lines.clear()
    run_suite(changed, out, isolate=False, progress=False, only="*__fusion", log=lines.append)
    assert len([ln for ln in lines if ln.startswith("[")]) == 2 and any("fusion: done in" in ln for ln in lines)
    # publishing: the standard suite is BENCHMARKS.md at the repository root with its plots and
    # results.json under docs/bench/ (the tiny suite stands in for it here)
    repo = tmp_path / "repo"
    publish({**res2, "suite": "standard"}, out, repo=repo, log=lambda *_: None)
    md = (repo / "BENCHMARKS.md").read_text()
    assert "](docs/bench/curves_room-realistic-s0.png)" in md and "--suite standard" in md and "--publish" in md
    assert (repo / "docs" / "bench" / "panoptic_room-realistic-s0.png").is_file()
    assert schema_problems(json.loads((repo / "docs" / "bench" / "results.json").read_text())) == []
    # another suite publishes beside it, not over it
    publish({**res2, "suite": "ablation"}, out, repo=repo, log=lambda *_: None)
    assert (repo / "BENCHMARKS.md").read_text() == md
    assert "](docs/bench_ablation/curves_room-realistic-s0.png)" in (repo / "BENCHMARKS_ablation.md").read_text()
    assert (repo / "docs" / "bench" / "panoptic_room-realistic-s0.png").is_file()
    # a changed mask invalidates the cached reference
    from app.bench.references import ensure_references
    mask = sorted((out / "scenes" / "room-realistic-s0" / "masks" / "instance").glob("*.png"))[0]
    os.utime(mask, ns=(mask.stat().st_atime_ns, mask.stat().st_mtime_ns + 10**9))
    lines.clear()
    assert ensure_references(tiny_suite(), out, lines.append) == res["references"]
    assert len(lines) == 1 and lines[0].startswith("mask reference of room-realistic-s0")
    # a suite with cells never run lists them as not run yet
    bigger = replace(tiny_suite(), seeds=(0, 1))
    res3 = run_suite(bigger, out, isolate=False, progress=False, only="*-s0__*", log=lines.append)
    assert [c["status"] for c in res3["cells"]][3:] == ["pending"] * 3
    report = (out / "report.md").read_text()
    assert "## Cells not run yet" in report and "`room-realistic-s1__ours`" in report


def test_dead_worker_is_recorded_as_failed(tmp_path):
    cell = tmp_path / "cell"
    cell.mkdir()
    (cell / "spec.json").write_text("{not json")   # the worker dies before it can write cell.json
    rec = run_cell_process(cell, echo=False, progress=False)
    assert rec["status"] == "failed" and "exited with code" in rec["error"]
    assert "JSONDecodeError" in rec["traceback"]
    assert json.loads((cell / "cell.json").read_text())["status"] == "failed"


def test_scaled_schedule_rule():
    quick = {"iters": 1100, "geometry_only_iters": 100, "pan_start_iters": 350, "dice_off_iters": 850, "lr": 1}
    assert scaled_schedule(quick, 48) == quick                       # the room: as tuned
    apt = scaled_schedule(quick, 144)                                # apartment, 3 rooms
    assert (apt["iters"], apt["geometry_only_iters"], apt["pan_start_iters"], apt["dice_off_iters"]) == \
        (3300, 300, 1050, 2550)
    assert scaled_schedule({**quick, "dice_off_iters": 0}, 96)["dice_off_iters"] == 0   # 0 = never stays never
    assert scaled_schedule(quick, 1)["geometry_only_iters"] == 2     # round(100 / 48)
    assert scaled_schedule(quick, 144, None) == quick
    assert monitor_every(1100, 5) == 220 and monitor_every(1101, 5) == 221 and monitor_every(1100, 0) == 0


def test_resolved_settings_of_the_shipped_suites():
    pl = next(m for m in SUITES["quick"].methods if m.name == "panoptic_lifting")
    s = resolve_fit_settings(SUITES["quick"], pl, 1, 144)
    assert (s.tokens.spatial_prior, s.tokens.adjust, s.panoptic.head) == (False, False, False)
    assert s.tokens.formulation == "slots" and s.tokens.n_slots == 25 and s.tokens.segment_consistency == 1.2
    ab = resolve_fit_settings(SUITES["quick"], next(m for m in SUITES["quick"].methods if m.name == "ours_ablated"), 0, 48)
    assert ab.tokens.formulation == "tokens" and (ab.tokens.spatial_prior, ab.tokens.adjust, ab.panoptic.head) == \
        (False, False, False)
    assert s.train.iters == 3300 and s.train.seed == 1 and s.train.monitor_every == 660
    assert s.tokens.adjust_rules.split_until_iters == 3 * 800                   # scaled like the stages
    abl = {m.name: resolve_fit_settings(SUITES["ablation"], m, 0, 48) for m in SUITES["ablation"].methods}
    assert [(v.tokens.spatial_prior, v.tokens.adjust, v.panoptic.head) for v in abl.values()] == \
        [(True, False, False), (True, True, False), (True, True, True), (False, True, True)]
    assert len(suite_cells(SUITES["standard"])) == (3 * 3 + 3) * 2 * 4                 # + the walk family
    assert {c.scene.group() for c in suite_cells(SUITES["walk"])} == {"walk-clean", "walk-realistic-video",
                                                                       "walk-hard-video"}


def test_fit_threads_reach_the_cell_settings_and_its_ray_resources(tmp_path):
    """`bench --threads N`: each fit cell's fit.yaml carries train.threads = N, its Ray task asks for N CPUs, and
    the cell hash changes with it (thread counts may change float sums); a fusion cell stays at one CPU."""
    from app.bench.cells import prepare_cell
    from app.bench.runner import cell_resources
    from recon.data.make_synth import make_synth_scene
    from recon.core.settings import SynthSettings
    scene = tmp_path / "scene"
    make_synth_scene(SynthSettings(preset="room", size=(40, 30), frames=4, holdout_every=2), scene, log=lambda m: None)
    suite = tiny_suite()
    cell = next(c for c in suite_cells(suite) if c.method.name == "ours")
    hashes = []
    for threads in (None, 1, 3):
        d = tmp_path / f"cell_{threads}"
        spec = prepare_cell(suite, cell, scene, d, fit_threads=threads)
        hashes.append(spec["config_hash"])
        want = 1 if threads is None else threads          # TINY sets train.threads=1
        assert spec["config"]["train"]["threads"] == want
        assert cell_resources(d)["cpus"] == float(want)
    assert hashes[0] == hashes[1] != hashes[2]            # None keeps the suite's own 1; 3 is another cell
    fusion = next(c for c in suite_cells(suite) if c.method.kind == "fusion")
    prepare_cell(suite, fusion, scene, tmp_path / "fusion", fit_threads=3)
    assert cell_resources(tmp_path / "fusion") == {"cpus": 1.0}


def test_subset_scores_by_hand():
    # 1 frame 2x4; class 1 stuff, class 2 thing. GT: left half stuff, right half thing instance 5.
    gt = (np.array([[1, 1, 2, 2], [1, 1, 2, 2]]), np.array([[0, 0, 5, 5], [0, 0, 5, 5]]))
    perfect = subset_scores([gt], [gt], [2], 3)
    assert perfect == {"pq50": 100.0, "pq30": 100.0, "miou": 100.0, "mcov": 100.0}
    # prediction: thing covers 3 of the 4 thing pixels plus nothing else; one thing pixel called stuff
    ps = np.array([[1, 1, 2, 2], [1, 1, 2, 1]])
    pi = np.array([[0, 0, 9, 9], [0, 0, 9, 0]])
    sc = subset_scores([(ps, pi)], [gt], [2], 3)
    # stuff IoU 4/5, thing IoU 3/4: both > 0.5 -> PQ = mean(80, 75); mIoU the same; mCov 75
    assert sc["pq50"] == pytest.approx(77.5) and sc["pq30"] == pytest.approx(77.5)
    assert sc["miou"] == pytest.approx(77.5) and sc["mcov"] == pytest.approx(75.0)


def test_small_helpers():
    assert evenly_spaced(list(range(10)), 3) == [0, 4, 9] and evenly_spaced([3, 4], 6) == [3, 4]
    curve = [{"fit_seconds": 10.0, "pq50": 20.0}, {"fit_seconds": 30.0, "pq50": None},
             {"fit_seconds": 20.0, "pq50": 40.0}]
    assert time_to_reach(curve, "pq50", 30.0) == 20.0 and time_to_reach(curve, "pq50", 41.0) is None
    sem = np.array([[0, 1], [2, 2]])
    inst = np.array([[0, 0], [3, 0]])
    col = panoptic_colors(sem, inst, [2], 3)
    assert col.shape == (2, 2, 3) and col.dtype == np.uint8
    from recon.data.palette import class_palette, instance_palette
    assert tuple(col[0, 0]) == (128, 128, 128)                        # unlabelled grey
    assert col[0, 1].tolist() == class_palette(3)[1].tolist()        # stuff (class 1): its class colour
    assert col[1, 0].tolist() == instance_palette(np.array([3]))[0].tolist()   # thing with id 3: the id's colour
    assert col[1, 1].tolist() == class_palette(3)[2].tolist()        # thing class without an id: class colour
    assert col[1, 0].tolist() != col[1, 1].tolist()


def test_instance_gaps_by_hand():
    ref = {"table#3": {"iou": 96.0, "mask_coverage": 99.0, "n_vertices": 900},
           "chair#1": {"iou": 80.0, "mask_coverage": 90.0, "n_vertices": 300},
           "chair#2": {"iou": 77.0, "mask_coverage": 85.0, "n_vertices": 280},
           "lamp#4": {"iou": 50.0, "mask_coverage": 40.0, "n_vertices": 50},
           "sofa#5": {"iou": 70.0, "mask_coverage": 80.0, "n_vertices": 500}}

    def per(iou, pred, share, purity, parts):
        return {"iou": iou, "n_vertices": 1, "pred": pred, "share": share, "purity": purity, "parts": parts}
    mine = {"table#3": per(65.0, 7, 66.0, 98.0, 2),     # 31 under: two predictions hold it -> split
            "chair#1": per(41.0, 2, 90.0, 45.0, 1),     # 39 under, its prediction is mostly something else -> merged
            "chair#2": per(70.0, 3, 75.0, 92.0, 1),     # 7 under: not listed
            "lamp#4": per(0.0, 0, 0.0, 0.0, 0),         # 50 under -> missed
            "sofa#5": per(58.0, 9, 60.0, 95.0, 1)}      # 12 under, one prediction, pure -> partial
    cell = {"scene": "walk-realistic-s0", "status": "done", "method_kind": "fit", "method_label": "ours",
            "metrics": {"instance_3d": {"per_instance": mine}}}
    fusion = {**cell, "method_kind": "fusion"}
    results = {"references": {"walk-realistic-s0": {"semantic_3d_miou": 1.0, "instance_3d_mcov": 1.0,
                                                    "instance_3d_per_instance": ref}},
               "cells": [cell, fusion]}
    rows = instance_gaps(results)
    assert [(r["instance"], r["reading"]) for r in rows] == [
        ("lamp#4", "missed"), ("chair#1", "merged"), ("table#3", "split"), ("sofa#5", "partial")]
    assert rows[2]["reference"] == 96.0 and rows[2]["iou"] == 65.0 and rows[2]["mask_coverage"] == 99.0
    text = "\n".join(instance_gaps_section(results))
    assert "| walk-realistic-s0 | ours | table#3 |" in text and "chair#2" not in text
    assert instance_gaps({"references": {}, "cells": [cell]}) == [] and instance_gaps_section({"cells": []}) == []


def test_read_monitor_curve_last_row_wins(tmp_path):
    p = tmp_path / "metrics.csv"
    p.write_text("iter,loss/sdf,monitor/fit_seconds,monitor/pq50,monitor/pq30,monitor/miou,monitor/mcov\n"
                 "2,0.5,,,,,\n4,,1.5,10,20,30,nan\n4,,1.7,11,21,31,41\n8,,3.0,12,22,32,42\n")
    assert read_monitor_curve(p) == [
        {"iter": 4, "fit_seconds": 1.7, "pq50": 11.0, "pq30": 21.0, "miou": 31.0, "mcov": 41.0},
        {"iter": 8, "fit_seconds": 3.0, "pq50": 12.0, "pq30": 22.0, "miou": 32.0, "mcov": 42.0}]
    assert read_monitor_curve(tmp_path / "absent.csv") == []


def test_git_info_ignores_the_published_reports(tmp_path):
    import shutil
    import subprocess
    from app.bench.records import git_info
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    (repo / "docs" / "bench").mkdir(parents=True)
    for name in ("code.py", "BENCHMARKS.md", "docs/bench/results.json"):
        (repo / name).write_text("v1\n")
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    assert git_info(repo)["dirty"] is False
    (repo / "BENCHMARKS.md").write_text("v2\n")
    (repo / "docs" / "bench" / "results.json").write_text("v2\n")
    assert git_info(repo)["dirty"] is False          # publishing rewrites these: not a code change
    (repo / "code.py").write_text("v2\n")
    info = git_info(repo)
    assert info["dirty"] is True and len(info["commit"]) == 40


def test_fit_reuse_decides_between_evaluate_postprocess_and_refit():
    from app.bench.reuse import fit_reuse
    from recon.core.config import to_dict
    from recon.core.settings import FitSettings
    new = to_dict(FitSettings())                                     # merge_fragments on by default
    assert new["panoptic"]["merge_fragments"] is True
    old = json.loads(json.dumps(new))
    assert fit_reuse(old, new) == "evaluate"
    assert fit_reuse(None, new) == "refit"
    old["train"]["device"] = "cuda"                                  # where it ran does not matter
    assert fit_reuse(old, new) == "evaluate"
    # a run from before fragment merging existed (no such keys): merge its ids, no refit
    for k in ("merge_fragments", "fragment_max_fraction", "fragment_min_shared_edges"):
        del old["panoptic"][k]
    assert fit_reuse(old, new) == "postprocess"
    off = json.loads(json.dumps(new))
    off["panoptic"]["merge_fragments"] = False
    assert fit_reuse(old, off) == "evaluate"                         # merging off = the old behaviour
    assert fit_reuse(new, off) == "refit"                            # merged ids cannot be un-merged
    changed = json.loads(json.dumps(new))
    changed["train"]["iters"] += 1
    assert fit_reuse(old, changed) == "refit"


def test_post_steps_cull_and_merge():
    from app.bench.reuse import fit_reuse, post_steps
    from recon.core.config import to_dict
    from recon.core.settings import FitSettings
    new = to_dict(FitSettings())
    assert new["mesh"]["cull_front_margin_m"] == 0.05 and new["panoptic"]["merge_fragments"] is True
    assert post_steps(new, new) == []
    old = json.loads(json.dumps(new))
    del old["mesh"]["cull_front_margin_m"]                           # meshed before the near-surface cull
    assert post_steps(old, new) == ["cull"] and fit_reuse(old, new) == "postprocess"
    for k in ("merge_fragments", "fragment_max_fraction", "fragment_min_shared_edges"):
        del old["panoptic"][k]
    assert post_steps(old, new) == ["cull", "merge"]
    tighter = json.loads(json.dumps(new))
    tighter["mesh"]["cull_front_margin_m"] = 0.02
    assert post_steps(new, tighter) == ["cull"]
    assert post_steps(tighter, new) is None and fit_reuse(tighter, new) == "refit"   # culled faces are gone
    loose = json.loads(json.dumps(new))
    loose["mesh"]["cull_front_margin_m"] = None
    assert post_steps(new, loose) is None
    # the blind split rule's keys (added later, off by default) do not make a cell new
    before_blind = json.loads(json.dumps(new))
    for k in ("blind_max_overlap", "blind_min_events", "blind_min_distance_m"):
        del before_blind["tokens"]["adjust_rules"][k]
    assert fit_reuse(before_blind, new) == "evaluate"
    blind_on = json.loads(json.dumps(new))
    blind_on["tokens"]["adjust_rules"]["blind_max_overlap"] = 0.1
    assert fit_reuse(before_blind, blind_on) == "refit"
    # the mask-evidence merge (added later, on by default since): a cell from before it (no keys) is the merge
    # switched off; switching it on is a post-process of the finished fit, switching it off again a refit
    assert new["panoptic"]["merge_by_masks"] is True
    mm_off = json.loads(json.dumps(new))
    mm_off["panoptic"]["merge_by_masks"] = False
    before_mm = json.loads(json.dumps(new))
    for k in ("merge_by_masks", "mask_merge_min_frames", "mask_merge_min_share"):
        del before_mm["panoptic"][k]
    assert fit_reuse(before_mm, mm_off) == "evaluate"
    mm_on = new
    assert post_steps(before_mm, mm_on) == ["maskmerge"] and fit_reuse(mm_off, mm_on) == "postprocess"
    assert post_steps(mm_on, mm_off) is None and fit_reuse(mm_on, mm_off) == "refit"
    # the reclass by masks (added later, on by default): a cell from before it (no keys) has it off; switching it on
    # is a post-process after the others, off again a refit
    assert new["panoptic"]["reclass_by_masks"] is True
    before_rc = json.loads(json.dumps(new))
    for k in ("reclass_by_masks", "reclass_min_frames", "reclass_min_share"):
        del before_rc["panoptic"][k]
    rc_off = json.loads(json.dumps(new))
    rc_off["panoptic"]["reclass_by_masks"] = False
    assert fit_reuse(before_rc, rc_off) == "evaluate"
    assert post_steps(before_rc, new) == ["reclass"] and fit_reuse(rc_off, new) == "postprocess"
    assert post_steps(new, rc_off) is None and fit_reuse(new, rc_off) == "refit"
    # the consistency step (added later, on by default): a cell from before it (no keys) has both rules off; switching
    # them on is a post-process after the others, switching one off again a refit
    assert new["panoptic"]["dissolve_on_stuff"] is True and new["panoptic"]["consistent_ids"] is True
    before_pc = json.loads(json.dumps(new))
    for k in ("dissolve_on_stuff", "dissolve_min_votes", "dissolve_min_share", "consistent_ids"):
        del before_pc["panoptic"][k]
    pc_off = json.loads(json.dumps(new))
    pc_off["panoptic"]["dissolve_on_stuff"] = pc_off["panoptic"]["consistent_ids"] = False
    assert fit_reuse(before_pc, pc_off) == "evaluate"
    assert post_steps(before_pc, new) == ["consistency"] and fit_reuse(pc_off, new) == "postprocess"
    both = json.loads(json.dumps(before_pc))
    for k in ("reclass_by_masks", "reclass_min_frames", "reclass_min_share"):
        del both["panoptic"][k]
    assert post_steps(both, new) == ["reclass", "consistency"]
    assert post_steps(new, pc_off) is None and fit_reuse(new, pc_off) == "refit"
    # the relabelling where the masks are silent (added later, on by default): a cell from before it (no keys) has
    # both rules off; switching them on is a post-process, off again a refit; with both off its keys are ignored
    assert new["panoptic"]["split_untokened"] is True and new["panoptic"]["fill_unmasked"] is True
    before_rl = json.loads(json.dumps(new))
    for k in ("split_untokened", "fill_unmasked", "relabel_depth_tol_m", "split_min_mask_share"):
        del before_rl["panoptic"][k]
    assert post_steps(before_rl, new) == ["relabel"] and fit_reuse(before_rl, new) == "postprocess"
    rl_off = json.loads(json.dumps(new))
    rl_off["panoptic"]["split_untokened"] = rl_off["panoptic"]["fill_unmasked"] = False
    rl_off["panoptic"]["relabel_depth_tol_m"] = 0.5
    assert fit_reuse(before_rl, rl_off) == "evaluate"
    assert post_steps(new, rl_off) is None and fit_reuse(new, rl_off) == "refit"
    both = json.loads(json.dumps(before_mm))
    for k in ("split_untokened", "fill_unmasked", "relabel_depth_tol_m", "split_min_mask_share"):
        del both["panoptic"][k]
    assert post_steps(both, new) == ["maskmerge", "relabel"]
    # a setting of the panoptic head's labels does not make a cell without the head new
    no_head = json.loads(json.dumps(new))
    no_head["panoptic"]["head"] = False
    before_keep = json.loads(json.dumps(no_head))
    del before_keep["panoptic"]["keep_untokened_classes"]
    assert fit_reuse(before_keep, no_head) == "evaluate"
    del before_keep["panoptic"]["head"]
    assert fit_reuse(before_keep, new) == "refit"
    # settings added later at their off values (the slot baseline, real-depth options) do not make a cell new
    older = json.loads(json.dumps(new))
    for sec, key in (("tokens", "formulation"), ("tokens", "n_slots"), ("tokens", "segment_consistency"),
                     ("loss", "noise_power"), ("loss", "noise_ref_m")):
        del older[sec][key]
    assert fit_reuse(older, new) == "evaluate"
    slots = json.loads(json.dumps(new))
    slots["tokens"]["formulation"] = "slots"
    assert fit_reuse(older, slots) == "refit"
    behind = json.loads(json.dumps(old))
    behind["mesh"]["cull_margin_m"] = 0.1                            # not a post-process setting
    assert post_steps(behind, new) is None and fit_reuse(behind, new) == "refit"


def test_schema_problems_name_the_broken_field():
    """The published results validate; a cell without its status and a string where a number belongs are
    each reported with their JSON path."""
    repo = Path(__file__).resolve().parents[2]
    good = json.loads((repo / "docs" / "bench" / "results.json").read_text())
    assert schema_problems(good) == []
    bad = json.loads(json.dumps(good))
    del bad["cells"][0]["status"]
    bad["suite_spec"]["monitor_points"] = "six"
    problems = schema_problems(bad)
    assert any(p.startswith("$.cells[0]:") and "'status' is a required property" in p for p in problems), problems
    assert any(p.startswith("$.suite_spec.monitor_points:") for p in problems), problems


def test_model_blocks_of_an_earlier_evaluation_are_found(tmp_path):
    """A finished fit whose checkpoints were dropped keeps, through a post-process and a new evaluation, the
    blocks only its model could compute (rendering, the fields' own 3D labels): _model_blocks reads them."""
    from app.bench.cells import MODEL_BLOCKS, _model_blocks

    assert _model_blocks(tmp_path) == {}                                  # no metrics.json
    (tmp_path / "metrics.json").write_text("{not json")
    assert _model_blocks(tmp_path) == {}
    doc = {"rendering": {"psnr": 25.0}, "semantic_3d_fields": {"miou": 70.0}, "instance_3d": {"mcov": 50.0},
           "instance_3d_fields": None}
    (tmp_path / "metrics.json").write_text(json.dumps(doc))
    assert _model_blocks(tmp_path) == {"rendering": {"psnr": 25.0}, "semantic_3d_fields": {"miou": 70.0}}
    assert "instance_3d" not in MODEL_BLOCKS                             # mesh labels are always re-evaluated
