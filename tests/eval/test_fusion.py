"""Fusion peer baseline (eval/baselines/fusion.py): voting, association, mask transfer, and an end-to-end
run on a hand-made scene (two same-class boxes on a floor, exact ray-cast depth, GT-derived masks with
frame-local ids) scored by eval.evaluate.evaluate_run, which also checks the run-folder layout and the
2D / 3D panoptic blocks of metrics.json."""
import json
import time

import numpy as np
import pytest

from eval.baselines.fusion import (InstanceAssociator, VoteTable, fill_unvoted, filter_instances, majority_labels,
                                   panoptic_labels, run_fusion_baseline, seen_vertices)


def test_voting_picks_the_majority_class():
    table = VoteTable(compact_every=3)  # compacts while adding: the sums must survive compaction
    table.add(np.array([0, 0, 0, 1]), np.array([2, 2, 5, 7]))
    table.add(np.array([0, 1, 1]), np.array([5, 7, 3]))
    table.add(np.array([0, 3]), np.array([2, 4]))
    keys, labels, counts = table.reduce()
    # element 0: class 2 x3, class 5 x2 -> 2; element 1: 7 x2, 3 x1 -> 7; element 3: 4
    k, lab, c = majority_labels(keys, labels, counts)
    assert k.tolist() == [0, 1, 3] and lab.tolist() == [2, 7, 4] and c.tolist() == [3, 2, 1]
    # ties go to the smaller label
    assert majority_labels(np.array([9, 9]), np.array([6, 4]), np.array([1, 1]))[1].tolist() == [4]


def test_panoptic_labels_take_the_instance_of_the_majority_class():
    # elements 0..3. classes: e0 chair (5) x3 vs sofa (6) x1; e1 sofa; e2 wall (1); e3 no vote
    sem_votes = (np.array([0, 0, 1, 2]), np.array([5, 6, 6, 1]), np.array([3, 1, 2, 4]))
    # instances: 1 chair, 2 sofa, 3 chair but discarded (-1); e0 has votes for 2 (sofa, 5 votes),
    # 1 (chair, 2 votes) and 3 (discarded, 9 votes) -> instance 1 (the class must match, 3 is gone)
    inst_class = np.array([-1, 5, 6, -1])
    inst_votes = (np.array([0, 0, 0, 1]), np.array([2, 1, 3, 2]), np.array([5, 2, 9, 1]))
    sem, inst, voted = panoptic_labels(4, sem_votes, inst_votes, inst_class)
    assert sem.tolist() == [5, 6, 1, 0] and inst.tolist() == [1, 2, 0, 0]
    assert voted.tolist() == [True, True, True, False]
    pts = np.array([[0, 0, 0], [1, 0, 0], [5, 0, 0], [1.05, 0, 0]], float)
    s2, i2 = fill_unvoted(pts, sem, inst, voted, radius_m=0.1)
    assert s2.tolist() == [5, 6, 1, 6] and i2.tolist() == [1, 2, 0, 2]
    assert fill_unvoted(pts, sem, inst, voted, radius_m=0.01)[0].tolist() == [5, 6, 1, 0]


def test_association_merges_views_and_keeps_objects_apart():
    assoc = InstanceAssociator(overlap_threshold=0.25, min_mask_elements=3)
    chair_a_view1 = np.arange(0, 100)
    chair_a_view2 = np.arange(60, 140)       # 40 shared / min(80, 100) = 0.5 > 0.25 -> same object
    chair_b = np.arange(1000, 1060)          # same class, no overlap -> a new instance
    assert assoc.add_frame([(5, chair_a_view1)]) == [1]
    assert assoc.add_frame([(5, chair_a_view2), (5, chair_b)]) == [1, 2]
    assert assoc.sizes()[1:].tolist() == [140, 60] and assoc.elements(2).tolist() == chair_b.tolist()
    # same elements but another class -> its own instance; a 2-element mask is skipped
    assert assoc.add_frame([(6, np.arange(0, 50)), (5, np.array([7, 8]))]) == [3, 0]
    # two masks of one frame both overlapping instance 1 (scores 20 / 60 and 60 / 60): only the
    # better one joins it, the other starts instance 4
    assert assoc.add_frame([(5, np.r_[np.arange(0, 20), np.arange(500, 540)]), (5, np.arange(0, 60))]) == [4, 1]
    # a weak overlap with instance 1 (10 / min(100, 140) = 0.1) does not merge
    assert assoc.add_frame([(5, np.r_[np.arange(130, 140), np.arange(2000, 2090)])]) == [5]
    assert assoc.classes == [5, 5, 6, 5, 5] and assoc.n_masks == [3, 1, 1, 1, 1]


def test_seen_vertices_hand_case():
    K = np.array([[10.0, 0, 2.0], [0, 10.0, 1.0], [0, 0, 1]])  # 5 x 3 image
    c2w = np.eye(4)
    depth = np.full((3, 5), 2.0)
    depth[1, 4] = 0.0  # invalid pixel
    verts = np.array([[0.0, 0, 2.0],     # pixel (2, 1), on the surface -> seen
                      [0.0, 0, 3.0],     # same pixel, 1 m behind the observed surface -> occluded
                      [0.0, 0, -2.0],    # behind the camera
                      [2.0, 0, 2.0],     # u = 12 -> outside
                      [0.4, 0, 2.0],     # pixel (4, 1): invalid depth
                      [-0.2, 0.2, 2.03]])  # u = 1.01 -> 1, v = 1.99 -> 2; |2.03 - 2| <= tol -> seen
    ids, pix = seen_vertices(verts, depth, K, c2w, tol_m=0.04)
    assert ids.tolist() == [0, 5] and pix.tolist() == [1 * 5 + 2, 2 * 5 + 1]
    # a camera moved 1 m along +x sees vertex 0 at u = 2 - 10 * 1 / 2 = -3 -> outside
    c2w[0, 3] = 1.0
    assert 0 not in seen_vertices(verts, depth, K, c2w, tol_m=0.04)[0].tolist()


def test_filter_instances_renumbers():
    v_inst = np.array([0, 3, 3, 3, 1, 5, 5, 5, 5])
    new, old = filter_instances(v_inst, min_vertices=3)
    assert new.tolist() == [0, 1, 1, 1, 0, 2, 2, 2, 2] and old.tolist() == [0, 3, 5]


# ------------------------------------------------------------------------------------- end to end

W, H = 48, 36
K = np.array([[40.0, 0, (W - 1) / 2], [0, 40.0, (H - 1) / 2], [0, 0, 1]])
CLASSES = [{"id": 1, "name": "floor", "thing": False}, {"id": 2, "name": "box", "thing": True}]


def _look_at(position, target):
    z = np.asarray(target, float) - position
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, -1.0])
    x /= np.linalg.norm(x)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
    c2w[:3, 3] = position
    return c2w


def _make_scene(root):
    trimesh = pytest.importorskip("trimesh")
    from eval.mesh_utils import raycast_depth_and_labels
    from recon.data.scene import FrameRecord, write_scene
    from recon.data.ply import write_ply

    parts = [(trimesh.creation.box(extents=(2.4, 2.4, 0.1)), [0, 0, -0.05], 1, 0),
             (trimesh.creation.box(extents=(0.3, 0.3, 0.3)), [-0.4, 0.0, 0.15], 2, 1),
             (trimesh.creation.box(extents=(0.3, 0.3, 0.3)), [0.45, 0.1, 0.15], 2, 2)]
    verts, faces, f_sem, f_inst, v_sem, v_inst = [], [], [], [], [], []
    n = 0
    for mesh, offset, cls, inst in parts:
        verts.append(np.asarray(mesh.vertices) + offset)
        faces.append(np.asarray(mesh.faces) + n)
        n += len(mesh.vertices)
        f_sem += [cls] * len(mesh.faces)
        f_inst += [inst] * len(mesh.faces)
        v_sem += [cls] * len(mesh.vertices)
        v_inst += [inst] * len(mesh.vertices)
    verts, faces = np.concatenate(verts), np.concatenate(faces)
    f_sem, f_inst = np.array(f_sem), np.array(f_inst)
    frames = []
    for k, pos in enumerate([(-1.2, -1.0, 1.0), (0.0, -1.4, 1.1), (1.2, -1.0, 1.0), (0.2, -1.3, 1.4)]):
        c2w = _look_at(np.array(pos), [0.0, 0.0, 0.1])
        depth, tri = raycast_depth_and_labels(verts, faces, K, c2w, W, H)
        sem = np.where(tri >= 0, f_sem[tri], 0).astype(np.uint16)
        inst = np.where(tri >= 0, f_inst[tri], 0).astype(np.uint16)
        local = np.array([0, 3 + k, 9 - k], np.uint16)  # frame-local mask ids, not aligned across frames
        scores = {int(local[i]): {"class": 2, "score": 0.9} for i in (1, 2) if (inst == i).any()}
        color = np.full((H, W, 3), 90, np.uint8)
        frames.append(FrameRecord(color=color, c2w=c2w, depth_m=depth, mask_instance=local[inst],
                                  mask_semantic=sem, mask_scores=scores, gt_semantic=sem, gt_instance=inst))
    write_scene(root, K=K, frames=frames, classes=CLASSES,
                splits={"train": ["000000", "000001", "000002"], "eval": ["000000", "000001", "000002", "000003"]},
                gt_mesh_writer=lambda p: write_ply(p, verts, faces, vertex_props={
                    "semantic": np.array(v_sem, np.int32), "instance": np.array(v_inst, np.int32)}))
    return root


def test_end_to_end_run_folder_and_evaluation(tmp_path, monkeypatch):
    from eval.evaluate import evaluate_run
    from recon.core.runfolder import peak_rss_mb
    from recon.data.ply import read_ply

    monkeypatch.setattr("eval.evaluate.N_POINTS", 5000)  # geometry sampling: speed only

    scene = _make_scene(tmp_path / "scene")
    rss_before, t0 = peak_rss_mb(), time.perf_counter()
    run = run_fusion_baseline(scene, tmp_path / "run", voxel_size_m=0.04, min_instance_masks=2, progress=False,
                              log=lambda *a: None)
    wall_s, rss_after = time.perf_counter() - t0, peak_rss_mb()
    for name in ("mesh.ply", "instances.json", "timing.json", "config.yaml", "scene.txt"):
        assert (run / name).is_file(), name
    for fid in ("000000", "000001", "000002", "000003"):
        assert (run / "labels" / "semantic" / f"{fid}.png").is_file()
        assert (run / "labels" / "instance" / f"{fid}.png").is_file()
    timing = json.loads((run / "timing.json").read_text())
    assert timing["iterations"] == 0 and timing["n_frames_fused"] == 3      # the train split: 000000..000002
    # the geometry part lies inside the fit; fit, writing and label rendering follow one another inside the
    # call (each rounded to 0.01 s); the peak memory is this process's ru_maxrss when the run was written
    assert 0 <= timing["geometry_seconds"] <= timing["fit_seconds"] + 0.01 and timing["fit_seconds"] > 0
    assert timing["fit_seconds"] + timing["write_seconds"] + timing["render_seconds"] <= wall_s + 0.03
    assert rss_before - 0.05 <= timing["peak_rss_mb"] <= rss_after + 0.05
    inst = json.loads((run / "instances.json").read_text())["instances"]
    assert len(inst) == 2 and all(e["class"] == "box" for e in inst)  # two views merged, two boxes apart
    centroids_x = sorted(e["centroid"][0] for e in inst)
    assert centroids_x[0] == pytest.approx(-0.4, abs=0.08) and centroids_x[1] == pytest.approx(0.45, abs=0.08)
    assert all((run / e["file"]).is_file() for e in inst)
    v, _, _, props = read_ply(run / "mesh.ply")
    assert set(np.unique(props["semantic"]).tolist()) <= {0, 1, 2}

    with pytest.raises(FileExistsError):
        run_fusion_baseline(scene, run, voxel_size_m=0.04, progress=False, log=lambda *a: None)

    m = evaluate_run(run, baseline=False, log=lambda *a: None)
    assert m["panoptic_2d"]["iou_threshold"] == 0.5 and m["panoptic_2d_paper"]["iou_threshold"] == 0.3
    assert m["panoptic_2d"]["pq"] > 75.0 and m["panoptic_2d"]["fn"] == 0
    assert m["semantic_2d_paper"]["n_frames"] > 0 and 0 < m["semantic_2d_paper"]["miou"] <= 100
    assert m["semantic_2d"]["miou"] > 75.0  # 83.7 measured; TSDF holes at 48x36 leave pixels unlabelled
    assert m["instance_2d"]["mcov"] > 70.0 and m["instance_3d"]["mcov"] > 60.0
    assert m["frames_2d"] == 4 and m["heldout"]["n_frames"] == 1 and "panoptic_2d" in m["heldout"]

    # label images equal to the GT score 100 (checks the reading side and the label-image writer)
    from recon.data.run_files import write_label_images
    from recon.data.scene import load_scene
    sc = load_scene(scene)
    gts = [sc.load_gt(i) for i in range(len(sc))]
    write_label_images(run, sc.frame_ids, [g[0] for g in gts], [g[1] * 7 for g in gts])  # any instance ids
    m_gt = evaluate_run(run, baseline=False, log=lambda *a: None)
    for block in (m_gt, m_gt["heldout"]):
        assert block["panoptic_2d"]["pq"] == 100.0 and block["panoptic_2d_paper"]["pq"] == 100.0
        assert block["semantic_2d"]["miou"] == 100.0 and block["instance_2d"]["mcov"] == 100.0
        assert block["semantic_2d_paper"]["miou"] == 100.0
    assert m_gt["semantic_2d_paper"]["n_frames"] == len(sc) and m_gt["heldout"]["semantic_2d_paper"]["n_frames"] < len(sc)

    # a missing label image is an error naming the frame; no labels/ at all skips the 2D blocks
    (run / "labels" / "instance" / "000002.png").unlink()
    with pytest.raises(FileNotFoundError, match="000002"):
        evaluate_run(run, baseline=False, log=lambda *a: None)
    import shutil
    shutil.rmtree(run / "labels")
    logged = []
    m2 = evaluate_run(run, baseline=False, log=logged.append)
    assert "panoptic_2d" not in m2 and "instance_3d" in m2
    assert any("labels" in line for line in logged)


def test_refuses_a_scene_without_masks(tmp_path):
    from recon.data.scene import SceneError

    scene = _make_scene(tmp_path / "scene")
    import shutil
    shutil.rmtree(scene / "masks")
    with pytest.raises(SceneError, match="masks"):
        run_fusion_baseline(scene, tmp_path / "run", progress=False, log=lambda *a: None)
    assert not (tmp_path / "run").exists()
