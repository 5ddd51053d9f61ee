"""Labels by ray casting a labelled mesh (recon/postfit/mesh_raycast.py) on a hand-made two-triangle mesh."""
from __future__ import annotations

import numpy as np
import pytest

from recon.data.ply import write_ply
from recon.postfit.mesh_raycast import LabelledMeshCaster, load_mesh_caster

# the unit square at z = 1, split along its diagonal 0-2: triangle 0 = (0, 1, 2) below the diagonal (y < x),
# triangle 1 = (0, 2, 3) above it; every vertex has its own labels
VERTS = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
FACES = np.array([[0, 1, 2], [0, 2, 3]])
SEM = np.array([1, 2, 3, 4])
INST = np.array([0, 5, 6, 7])


def cast_down(caster: LabelledMeshCaster, xy: list[tuple[float, float]], dir_len: float = 1.0):
    """Rays from (x, y, 0) along +z (direction length dir_len)."""
    o = np.array([[x, y, 0.0] for x, y in xy])
    d = np.tile([0.0, 0.0, dir_len], (len(xy), 1))
    return caster.cast(o, d)


def test_each_hit_takes_the_labels_of_its_dominant_vertex():
    caster = LabelledMeshCaster(VERTS, FACES, SEM, INST)
    # (x, y) -> dominant vertex, by the barycentric weights of the hit triangle:
    # (0.9, 0.1) in triangle 0: weights v0 0.1, v1 0.8, v2 0.1 -> vertex 1
    # (0.1, 0.05) in triangle 0: v0 0.9 -> vertex 0;  (0.9, 0.8) in triangle 0: v2 0.8 -> vertex 2
    # (0.1, 0.9) in triangle 1 (0, 2, 3): v0 0.1, v2 0.1, v3 0.8 -> vertex 3
    # (0.6, 0.45) in triangle 0: v0 0.4, v1 0.15, v2 0.45 -> vertex 2 (nearest vertex by distance would be 1
    #   at 0.60 m vs 2 at 0.68 m: the rule is the largest weight, not the Euclidean distance)
    t, hit, sem, inst = cast_down(caster, [(0.9, 0.1), (0.1, 0.05), (0.9, 0.8), (0.1, 0.9), (0.6, 0.45), (1.5, 0.5)])
    assert hit.tolist() == [True] * 5 + [False]
    assert sem.tolist() == [2, 1, 3, 4, 3, 0]
    assert inst.tolist() == [5, 0, 6, 7, 6, 0]
    np.testing.assert_allclose(t, [1, 1, 1, 1, 1, 0], atol=1e-6)
    # the hit distance is in units of the direction's length (z-depth for camera rays with z = 1)
    t2, *_ = cast_down(caster, [(0.5, 0.2)], dir_len=2.0)
    assert t2[0] == pytest.approx(0.5, abs=1e-6)


def test_a_camera_view_by_hand():
    caster = LabelledMeshCaster(VERTS, FACES, SEM, INST)
    # a 4 x 4 camera at (0.5, 0.5, 0) looking along +z, f = 8 px: pixel u looks at x = 0.5 + (u - 1.5) / 8 on the
    # square (z-depth 1), i.e. x in {0.3125, 0.4375, 0.5625, 0.6875}; y likewise with v
    K = np.array([[8.0, 0, 1.5], [0, 8.0, 1.5], [0, 0, 1]])
    c2w = np.eye(4)
    c2w[:3, 3] = [0.5, 0.5, 0.0]
    lab = caster.render(K, c2w, 4, 4)
    assert lab.hit.all()
    np.testing.assert_allclose(lab.depth_m, 1.0, atol=1e-6)
    xs = 0.5 + (np.arange(4) - 1.5) / 8
    expect = np.zeros((4, 4), np.int64)
    for v, y in enumerate(xs):
        for u, x in enumerate(xs):
            if y < x:                                                    # triangle 0 (0, 1, 2)
                w = {0: 1 - x, 1: x - y, 2: y}
            else:                                                        # triangle 1 (0, 2, 3)
                w = {0: 1 - y, 2: x, 3: y - x}
            expect[v, u] = SEM[max(w, key=w.get)]
    np.testing.assert_array_equal(lab.semantic, expect)
    np.testing.assert_array_equal(lab.instance, INST[expect - 1])
    # a camera looking away sees nothing
    away = c2w.copy()
    away[:3, :3] = np.diag([1.0, -1.0, -1.0])
    lab = caster.render(K, away, 4, 4)
    assert not lab.hit.any() and (lab.semantic == 0).all() and (lab.depth_m == 0).all()


def test_load_from_a_run_mesh_and_refusals(tmp_path):
    write_ply(tmp_path / "mesh.ply", VERTS, FACES, vertex_props={"semantic": SEM.astype(np.int32),
                                                                  "instance": INST.astype(np.int32)})
    caster = load_mesh_caster(tmp_path / "mesh.ply")
    _, _, sem, inst = cast_down(caster, [(0.9, 0.1)])
    assert sem.tolist() == [2] and inst.tolist() == [5]
    write_ply(tmp_path / "plain.ply", VERTS, FACES)
    with pytest.raises(ValueError, match="plain.ply has no vertex properties semantic, instance"):
        load_mesh_caster(tmp_path / "plain.ply")
    with pytest.raises(FileNotFoundError, match="none.ply does not exist"):
        load_mesh_caster(tmp_path / "none.ply")
    empty = LabelledMeshCaster(np.zeros((0, 3)), np.zeros((0, 3), np.int64), np.zeros(0, np.int64),
                               np.zeros(0, np.int64))
    t, hit, sem, _ = cast_down(empty, [(0.5, 0.5)])
    assert not hit.any() and t[0] == 0 and sem[0] == 0
