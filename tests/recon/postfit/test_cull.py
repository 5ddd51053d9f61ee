"""The near-surface mesh cull of a finished run (recon/postfit/post_process.py cull_run_mesh), without a model."""
import json

import numpy as np

from recon.core.config import save_config
from recon.data.scene import FrameRecord, write_scene
from recon.data.ply import read_ply, write_ply
from recon.core.settings import FitSettings


def quad(z: float, v0: int) -> tuple[np.ndarray, np.ndarray]:
    """A 0.6 m square at depth z facing the camera: 4 vertices, 2 faces (indices from v0)."""
    v = np.array([[-0.3, -0.3, z], [0.3, -0.3, z], [0.3, 0.3, z], [-0.3, 0.3, z]])
    return v, np.array([[0, 1, 2], [0, 2, 3]]) + v0


def test_cull_run_mesh_drops_free_space_surfaces_and_keeps_labels(tmp_path):
    from recon.postfit.post_process import cull_run_mesh
    K = np.array([[10.0, 0, 4.5], [0, 10.0, 4.5], [0, 0, 1]])
    frame = FrameRecord(color=np.zeros((10, 10, 3), np.uint8), c2w=np.eye(4), depth_m=np.full((10, 10), 2.0),
                        mask_instance=np.zeros((10, 10), np.uint16), mask_semantic=np.ones((10, 10), np.uint16),
                        mask_scores={})
    scene = write_scene(tmp_path / "scene", K=K, frames=[frame],
                        classes=[{"id": 1, "name": "wall", "thing": False}, {"id": 2, "name": "box", "thing": True}])
    run = tmp_path / "run"
    run.mkdir()
    save_config(FitSettings(), run / "config.yaml")
    (run / "scene.txt").write_text(str(scene) + "\n")
    wall_v, wall_f = quad(2.0, 0)            # the surface the camera saw: kept
    float_v, float_f = quad(1.0, 4)          # a surface in the view's free space, 1 m in front of it: culled
    verts, faces = np.vstack([wall_v, float_v]), np.vstack([wall_f, float_f])
    sem = np.array([1, 1, 1, 1, 2, 2, 2, 2])
    inst = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    rgb = np.arange(24, dtype=np.uint8).reshape(8, 3)
    write_ply(run / "mesh.ply", verts, faces, vertex_props={"semantic": sem.astype(np.int32),
                                                            "instance": inst.astype(np.int32)}, colors=rgb)
    (run / "legend.json").write_text(json.dumps([{"id": 0, "name": "unlabelled"}, {"id": 1, "name": "wall"},
                                                 {"id": 2, "name": "box"}]))
    (run / "instances.json").write_text(json.dumps({"instances": [{"id": 1, "score": 0.7}], "token_ids": [1]}))
    (run / "instances").mkdir()
    (run / "instances" / "1_box.ply").write_bytes(b"old")

    # with no front margin (the rule before 2026-11-23) the free-space quad counts as observed
    assert cull_run_mesh(run, front_margin_m=float("inf"), log=lambda m: None) == 0
    assert "cull_front_margin_m: .inf" in (run / "config.yaml").read_text()     # what it did is recorded
    save_config(FitSettings(), run / "config.yaml")
    assert cull_run_mesh(run, log=lambda m: None) == 2                  # the run's setting: 0.05 m
    v, f, c, props = read_ply(run / "mesh.ply")
    np.testing.assert_allclose(v, wall_v)
    assert len(f) == 2 and props["semantic"].tolist() == [1, 1, 1, 1] and props["instance"].tolist() == [0] * 4
    assert c.tolist() == rgb[:4].tolist()
    for name in ("mesh_semantic.ply", "mesh_panoptic.ply"):
        assert len(read_ply(run / name)[1]) == 2
    assert json.loads((run / "instances.json").read_text())["instances"] == []      # the box was all floater
    assert not (run / "instances" / "1_box.ply").exists()
    assert "cull_front_margin_m: 0.05" in (run / "config.yaml").read_text()
    assert "removed 2 of 4 faces" in (run / "log.txt").read_text()
    assert cull_run_mesh(run, log=lambda m: None) == 0                  # culling again removes nothing
