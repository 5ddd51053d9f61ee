"""Fragment merging on hand-made labelled meshes (recon/postfit/fragments.py)."""
from __future__ import annotations

import numpy as np

from recon.postfit.fragments import fragment_merges, instance_adjacency, merged_id_map


def strip_mesh(n: int) -> tuple[np.ndarray, np.ndarray]:
    """A 2 x (n + 1) vertex strip: vertices 0..n on the bottom row, n+1..2n+1 on top; 2n triangles."""
    bottom = np.stack([np.arange(n + 1), np.zeros(n + 1), np.zeros(n + 1)], 1)
    top = bottom + [0.0, 1.0, 0.0]
    faces = []
    for k in range(n):
        a, b, c, d = k, k + 1, n + 1 + k, n + 2 + k
        faces += [[a, b, d], [a, d, c]]
    return np.concatenate([bottom, top]), np.asarray(faces)


def labels(n: int, spans: list[tuple[int, int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(instance [V], semantic [V]) of strip_mesh(n): columns [lo, hi) get (instance, class)."""
    inst = np.zeros(2 * (n + 1), np.int64)
    sem = np.zeros(2 * (n + 1), np.int64)
    for lo, hi, i, c in spans:
        for col in range(lo, hi):
            inst[[col, n + 1 + col]] = i
            sem[[col, n + 1 + col]] = c
    return inst, sem


def test_adjacency_counts_each_shared_edge_once():
    _, faces = strip_mesh(4)
    inst, _ = labels(4, [(0, 2, 1, 5), (2, 5, 2, 5)])        # columns 0-1 | 2-4
    adj = instance_adjacency(faces, inst)
    # edges between column 1 and column 2: bottom (1,2), top (6,7) and the diagonal (1,7) of that quad
    assert adj == {(1, 2): 3}


def test_small_same_class_neighbour_merges_into_the_large_one():
    _, faces = strip_mesh(20)
    # instance 3 (2 columns = 4 vertices) touches instance 1 (16 columns = 32 vertices), same class 5;
    # instance 7 is a lone small object of another class at the far end, touching 1 as well
    inst, sem = labels(20, [(0, 16, 1, 5), (16, 18, 3, 5), (18, 21, 7, 6)])
    assert fragment_merges(faces, inst, sem, max_fraction=0.2, min_shared_edges=3) == {3: 1}
    # not small enough relative to its neighbour: kept
    assert fragment_merges(faces, inst, sem, max_fraction=0.1, min_shared_edges=3) == {}
    # too few shared edges: kept
    assert fragment_merges(faces, inst, sem, max_fraction=0.2, min_shared_edges=4) == {}


def test_two_touching_objects_of_similar_size_stay_apart_and_chains_resolve():
    _, faces = strip_mesh(30)
    inst, sem = labels(30, [(0, 14, 1, 5), (14, 28, 2, 5)])  # two equal chairs side by side
    assert fragment_merges(faces, inst, sem, 0.2, 1) == {}
    # 9 (1 column) touches 8 (2 columns), which touches 1 (20 columns): 9 -> 8 first, then 8 (+9) -> 1
    inst, sem = labels(30, [(0, 20, 1, 5), (20, 22, 8, 5), (22, 23, 9, 5)])
    assert fragment_merges(faces, inst, sem, 0.6, 1) == {9: 1, 8: 1}


def test_merged_id_map_renumbers_in_order():
    lut = merged_id_map(np.array([1, 2, 3, 4, 5]), {2: 4, 5: 1})
    assert lut.tolist() == [0, 1, 3, 2, 3, 1]                # survivors 1, 3, 4 -> 1, 2, 3


def test_merge_run_fragments_rewrites_every_output_with_one_id_map(tmp_path):
    import json

    from PIL import Image

    from recon.core.config import save_config
    from recon.data.run_files import png16_bytes
    from recon.postfit.post_process import merge_run_fragments
    from recon.data.ply import read_ply, write_ply
    from recon.core.settings import FitSettings

    run = tmp_path / "run"
    (run / "labels" / "instance").mkdir(parents=True)
    save_config(FitSettings(), run / "config.yaml")
    verts, faces = strip_mesh(60)
    # ids 1 (class 5, 30 columns), 2 (class 5, 2 columns, touching 1: a fragment), 3 (class 6, 29 columns)
    inst, sem = labels(60, [(0, 30, 1, 5), (30, 32, 2, 5), (32, 61, 3, 6)])
    write_ply(run / "mesh.ply", verts, faces, vertex_props={"semantic": sem.astype(np.int32),
                                                            "instance": inst.astype(np.int32)},
              colors=np.full((len(verts), 3), 100, np.uint8))
    (run / "instances.json").write_text(json.dumps({"instances": [
        {"id": 1, "score": 0.9}, {"id": 2, "score": 0.5}, {"id": 3, "score": 0.8}], "token_ids": [3, 1, 2, 4]}))
    (run / "legend.json").write_text(json.dumps([{"id": 0, "name": "unlabelled", "color": [128, 128, 128]},
                                                 {"id": 5, "name": "sofa", "color": [1, 2, 3]},
                                                 {"id": 6, "name": "box", "color": [4, 5, 6]}]))
    img = np.array([[0, 1, 2], [3, 4, 2]])
    (run / "labels" / "instance" / "000000.png").write_bytes(png16_bytes(img))

    merges = merge_run_fragments(run, log=lambda m: None)
    assert merges == {2: 1}
    # ids 1, 3, 4 survive and become 1, 2, 3; 2 joins 1
    _, _, _, props = read_ply(run / "mesh.ply")
    assert set(np.unique(props["instance"])) == {1, 2}
    assert (props["instance"][inst == 2] == 1).all() and (props["instance"][inst == 3] == 2).all()
    assert json.loads((run / "instances.json").read_text())["token_ids"] == [2, 1, 1, 3]
    assert np.asarray(Image.open(run / "labels" / "instance" / "000000.png")).tolist() == [[0, 1, 1], [2, 3, 1]]
    assert sorted(p.name for p in (run / "instances").glob("*.ply")) == ["1_sofa.ply", "2_box.ply"]
    assert "merge_fragments: true" in (run / "config.yaml").read_text()
    # a second pass finds nothing more to merge and changes nothing
    assert merge_run_fragments(run, log=lambda m: None) == {}


def test_fit_time_merge_maps_tokens_and_vertices_alike():
    from recon.postfit.fragments import merge_fragment_ids
    from recon.core.settings import PanopticSettings
    _, faces = strip_mesh(20)
    inst, sem = labels(20, [(0, 16, 1, 5), (16, 18, 3, 5), (18, 21, 2, 6)])
    token_ids = np.array([2, 3, 1, 4])                       # token k -> instance id (4: owns no vertex)
    msgs: list[str] = []
    merges, lut = merge_fragment_ids(faces, inst, sem, token_ids, PanopticSettings(), msgs.append)
    tok, vert = lut[token_ids], lut[inst]
    assert merges == {3: 1}
    assert tok.tolist() == [2, 1, 1, 3] and set(vert.tolist()) == {1, 2}
    assert (vert[inst == 3] == 1).all() and len(msgs) == 1 and "instance 3" in msgs[0]
    off = PanopticSettings(fragment_max_fraction=0.05)
    assert merge_fragment_ids(faces, inst, sem, token_ids, off, msgs.append) == ({}, None)
