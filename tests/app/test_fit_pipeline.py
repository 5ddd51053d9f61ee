"""Trainer: run-folder outputs, exact resume, refusals before any work, observed-space culling, eval keys."""
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from recon.core.config import ConfigError, load_config
from recon.data.make_synth import make_synth_scene
from recon.core.settings import FitSettings, SynthSettings
from app.pipeline import fit_scene as fit
from recon.train.memory import FitMemoryError

TINY = [
    "model.sdf_grid.n_levels=6", "model.sdf_grid.log2_hashmap_size=12", "model.sdf_grid.finest_cell_m=0.1",
    "model.semantic_grid.n_levels=4", "model.semantic_grid.log2_hashmap_size=10", "model.semantic_grid.finest_cell_m=0.2",
    "model.instance_grid.n_levels=4", "model.instance_grid.log2_hashmap_size=10",
    "model.instance_grid.finest_cell_m=0.2", "tokens.feat_dim=8", "tokens.class_dim=8",
    "model.sdf_hidden=16", "model.semantic_hidden=16", "model.instance_hidden=16", "model.color_hidden=16",
    "render.n_stratified=4", "render.n_surface=6", "train.rays_per_iter=128", "train.geometry_only_iters=4",
    "train.log_every=2", "mesh.voxel_size_m=0.12", "train.threads=1",
]


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scenes") / "room"
    make_synth_scene(SynthSettings(size=(40, 30), frames=8, holdout_every=4), out, log=lambda *_: None)
    return out


def _settings(*extra: str) -> FitSettings:
    return load_config(FitSettings, None, TINY + list(extra))


def test_fit_writes_run_folder(tiny_scene, tmp_path):
    from recon.core.runfolder import peak_rss_mb
    run = tmp_path / "run"
    rss_before, t0 = peak_rss_mb(), time.perf_counter()
    res = fit(tiny_scene, run, _settings("train.iters=8", "train.checkpoint_every=2", "train.keep_checkpoints=2"),
              progress=False)
    wall_s, rss_after = time.perf_counter() - t0, peak_rss_mb()
    assert res.iterations == 8
    for name in ("config.yaml", "log.txt", "metrics.csv", "mesh.ply", "mesh_semantic.ply", "legend.json",
                 "timing.json", "checkpoints/last.pt"):
        assert (run / name).is_file(), name
    # checkpoints at 2, 4, 6 and the final 8: only the newest two numbered ones are kept
    assert sorted(p.name for p in (run / "checkpoints").glob("ckpt_*.pt")) == ["ckpt_000006.pt", "ckpt_000008.pt"]
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("iter,loss/sdf") and len(rows) == 1 + 4
    again = load_config(FitSettings, run / "config.yaml")
    assert again.train.iters == 8 and again.model.sdf_grid.n_levels == 6
    timing = json.loads((run / "timing.json").read_text())
    assert timing["iterations"] == 8
    # the training time is the result's, rounded to 0.01 s, and lies inside the call's wall time; the final
    # checkpoint carries the same (unrounded) value
    assert timing["fit_seconds"] == round(res.fit_seconds, 2) and 0 < res.fit_seconds <= wall_s
    last = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert last["fit_seconds"] == res.fit_seconds and last["iter"] == 8
    # peak_rss_mb is this process's peak resident memory (ru_maxrss, never decreasing) when the fit ended:
    # between the peaks before and after the call (rounded to 0.1 MiB)
    assert rss_before - 0.05 <= timing["peak_rss_mb"] <= rss_after + 0.05


def test_resume_continues_with_identical_state(tiny_scene, tmp_path):
    # all stages run and a token-adjustment check changes the token count before the stop
    cfg = ("train.iters=12", "train.pan_start_iters=6", "train.dice_off_iters=9",
           "tokens.adjust_rules.every_iters=2", "tokens.adjust_rules.window_iters=2")
    straight = fit(tiny_scene, tmp_path / "a", _settings(*cfg), progress=False)
    stopped = fit(tiny_scene, tmp_path / "b", _settings(*cfg), progress=False, stop_at=7)
    assert stopped.iterations == 7 and not stopped.finished
    mid = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=False)
    fit(tiny_scene, tmp_path / "b", _settings(*cfg), resume=True, progress=False)
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=False)
    assert a["iter"] == b["iter"] == straight.iterations == 12
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=1e-6, msg=k)
    # the appearance branch's Gaussians (count, parameters, Adam moments) resume exactly too
    assert a["appearance"]["steps"] == b["appearance"]["steps"] == 12
    for k in a["appearance"]["model"]:
        torch.testing.assert_close(a["appearance"]["model"][k], b["appearance"]["model"][k], rtol=0, atol=1e-6, msg=k)
    n_start = int(mid["instance"]["strategy"]["n"]) if mid["instance"]["strategy"]["n"] is not None else None
    for k in a["instance"]["tokens"]:
        torch.testing.assert_close(a["instance"]["tokens"][k], b["instance"]["tokens"][k], rtol=0, atol=1e-6, msg=k)
    assert a["instance"]["strategy"] == b["instance"]["strategy"]
    assert n_start is not None, "the instance stage ran before the stop"
    log = (tmp_path / "b" / "log.txt").read_text()
    assert "resuming" in log and "tokens:" in log
    # before the work: the memory estimate; after 10 iterations: their time and the time left (2 iterations)
    straight_log = (tmp_path / "a" / "log.txt").read_text()
    assert "estimated peak memory" in straight_log
    assert re.search(r"the first 10 iterations took \d+\.\d+ s each: about \d+\.\d min for the 2 left", straight_log)


def test_numba_hash_grid_fits_the_same_as_torch(tiny_scene, tmp_path):
    """The default hash-grid backend on the CPU (numba) trains to the same parameters as the PyTorch one."""
    torch_grids = [f"model.{g}_grid.backend=torch" for g in ("sdf", "semantic", "instance")]
    numba_grids = [f"model.{g}_grid.backend=numba" for g in ("sdf", "semantic", "instance")]
    for name, extra in (("torch", torch_grids), ("numba", numba_grids)):
        fit(tiny_scene, tmp_path / name, _settings("train.iters=8", *extra), progress=False, stop_at=6)
    a = torch.load(tmp_path / "torch" / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "numba" / "checkpoints" / "last.pt", weights_only=False)
    assert a["iter"] == b["iter"] == 6
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=0, atol=1e-6, msg=k)


def test_refusals_before_any_work(tiny_scene, tmp_path):
    run = tmp_path / "run"
    fit(tiny_scene, run, _settings("train.iters=2"), progress=False)
    before = (run / "mesh.ply").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a different run"):
        fit(tiny_scene, run, _settings("train.iters=2", "render.xi=50"), progress=False)
    with pytest.raises(FileExistsError, match="different settings"):
        fit(tiny_scene, run, _settings("train.iters=4", "render.xi=50"), resume=True, progress=False)
    assert (run / "mesh.ply").read_bytes() == before  # nothing lost
    with pytest.raises(ConfigError, match="unknown config key 'train.itres'"):
        _settings("train.itres=5")
    with pytest.raises(FitMemoryError, match=r"need about [\d.]+ GiB"):
        fit(tiny_scene, tmp_path / "huge", _settings("model.sdf_grid.log2_hashmap_size=30",
                                                      "model.sdf_grid.n_levels=32"), progress=False)
    assert not (tmp_path / "huge").exists()
    with pytest.raises(FileExistsError, match="no run to resume"):
        fit(tiny_scene, tmp_path / "empty", _settings(), resume=True, progress=False)


def test_observed_mask_hand_case():
    from recon.postfit.meshing import observed_mask
    K = np.array([[10.0, 0, 4.5], [0, 10.0, 4.5], [0, 0, 1]])
    c2w = np.eye(4)[None]                    # camera at origin looking down +z
    depth = np.full((1, 10, 10), 2.0)        # a wall at z = 2
    depth[0, :, :2] = 0                      # left columns: no measurement
    pts = np.array([[0.0, 0, 1.0],           # in front of the wall: observed
                    [0.0, 0, 2.04],          # just behind, within the 5 cm margin: observed
                    [0.0, 0, 2.5],           # far behind the wall: unobserved
                    [0.0, 0, -1.0],          # behind the camera
                    [-0.4, 0, 1.0],          # projects to u = 0.5 -> column 0, no depth there
                    [5.0, 0, 1.0]])          # outside the image
    np.testing.assert_array_equal(observed_mask(pts, K, c2w, depth, 0.05), [True, True, False, False, False, False])
    # with a front margin only points near the wall count: z = 1.0 is in free space, 1.97 is 3 cm in front
    near = np.vstack([pts, [[0.0, 0, 1.97]]])
    np.testing.assert_array_equal(observed_mask(near, K, c2w, depth, 0.05, front_margin_m=0.05),
                                  [False, True, False, False, False, False, True])
    # a second view that sees a surface at z = 1.0 of the first view's frame keeps that point
    c2w2 = np.stack([np.eye(4), np.eye(4)])
    depth2 = np.concatenate([depth, np.full((1, 10, 10), 1.0)])
    np.testing.assert_array_equal(observed_mask(near, K, c2w2, depth2, 0.05, front_margin_m=0.05),
                                  [True, True, False, False, True, False, True])


def test_eval_writes_metric_keys(tiny_scene, tmp_path):
    from app.pipeline import evaluate as evaluate_run
    run = tmp_path / "run"
    fit(tiny_scene, run, _settings("train.iters=6"), progress=False)
    m = evaluate_run(run, log=lambda *_: None)
    assert set(m["geometry"]) >= {"acc_cm", "comp_cm", "chamfer_l1_cm", "precision", "recall", "f1"}
    assert set(m["semantic_3d"]) >= {"miou", "macc"}
    assert set(m["timing"]) == {"fit_seconds", "iterations", "peak_rss_mb"}
    assert set(m["baselines"]["tsdf_fusion"]["geometry"]) >= {"f1", "chamfer_l1_cm"}
    assert m["baselines"]["tsdf_fusion"]["geometry"]["f1"] > 50  # fusion of exact depth is good even here
    assert json.loads((run / "metrics.json").read_text()) == json.loads(json.dumps(m))
    assert set(m["semantic_3d_fields"]) >= {"miou", "macc"} and set(m["instance_3d_fields"]) >= {"mcov", "mwcov"}
    # queried at the run's own mesh vertices, the fields give the mesh's labels (same query, same id map)
    from recon.postfit.point_labels import run_point_labels
    from recon.data.ply import read_ply
    v, _, _, props = read_ply(run / "mesh.ply")
    sem, inst = run_point_labels(run, v)
    np.testing.assert_array_equal(sem, props["semantic"])
    np.testing.assert_array_equal(inst, props["instance"])
    # without a checkpoint the field metrics are skipped, with a message
    import shutil
    shutil.rmtree(run / "checkpoints")
    logged = []
    m2 = evaluate_run(run, baseline=False, log=logged.append)
    assert "semantic_3d_fields" not in m2 and "instance_3d_fields" not in m2 and "semantic_3d" in m2
    assert any("has no checkpoint: semantic_3d_fields and instance_3d_fields skipped" in line for line in logged)


def test_render_command_writes_images(tiny_scene, tmp_path):
    from PIL import Image
    from recon.postfit.renders import render_run_images
    run = tmp_path / "run"
    fit(tiny_scene, run, _settings("train.iters=4"), progress=False)
    out = render_run_images(run, "000001,000003", log=lambda *_: None)
    from recon.data.palette import class_palette
    from recon.data.scene import load_scene
    scene = load_scene(tiny_scene)
    palette = {tuple(c) for c in class_palette(scene.n_classes).tolist()}
    overview = np.asarray(Image.open(out / "overview.png"))
    # overview: one row per frame, 5 panels of 40 x 30: observed colour | rendered colour | observed depth |
    # rendered depth | rendered semantics -> 2 * 30 rows, 5 * 40 columns
    assert overview.shape == (60, 200, 3)
    for row, fid in enumerate(("000001", "000003")):
        img = {kind: np.asarray(Image.open(out / f"{fid}_{kind}.png")) for kind in ("rgb", "depth", "semantic")}
        for kind in img:
            assert img[kind].shape == (30, 40, 3)
        # every semantic pixel is painted with a class's palette colour
        assert {tuple(c) for c in img["semantic"].reshape(-1, 3).tolist()} <= palette
        panels = [overview[30 * row:30 * (row + 1), 40 * k:40 * (k + 1)] for k in range(5)]
        np.testing.assert_array_equal(panels[0], scene.load_color(scene.index(fid)))   # the scene's own image
        for k, kind in ((1, "rgb"), (3, "depth"), (4, "semantic")):
            np.testing.assert_array_equal(panels[k], img[kind])                        # the same renders
    with pytest.raises(FileNotFoundError, match="not in"):
        render_run_images(run, "999999")
