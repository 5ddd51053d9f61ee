"""The mask-vote references for semantic_3d and instance_3d (eval/mask_reference.py): hand-made
cases and a small synthetic scene."""
import numpy as np

from eval.mask_reference import frame_votes, mask_reference, oracle_instance_labels, vote_labels


def test_frame_votes_hand_case():
    K = np.array([[10.0, 0, 4.5], [0, 10.0, 4.5], [0, 0, 1]])
    depth = np.full((10, 10), 2.0)                   # a wall at z = 2 m
    label = np.zeros((10, 10), np.uint16)
    label[4, 4] = 3
    label[4, 6] = 5
    pts = np.array([[0.0, 0, 2.0],                   # pixel (4, 4) on the wall: class 3
                    [0.0, 0, 1.0],                   # same pixel, 1 m in front of the wall: not what it saw
                    [0.3, 0, 2.0],                   # pixel (6, 4): class 5
                    [0.1, 0, 2.0],                   # pixel (5, 4): unlabelled
                    [0.0, 0, -2.0],                  # behind the camera
                    [0.0, 0, 2.02]])                 # 2 cm behind the wall: within the 3 cm tolerance
    idx, lab = frame_votes(pts, K, np.eye(4), depth, label, 0.03)
    assert idx.tolist() == [0, 2, 5] and lab.tolist() == [3, 5, 3]
    idx, lab = frame_votes(pts, K, np.eye(4), depth, label, 0.01)
    assert idx.tolist() == [0, 2]


def test_vote_labels_majority_and_nearest_fill():
    pts = np.array([[0.0, 0, 0], [1.0, 0, 0], [0.9, 0, 0], [0.1, 0, 0]])
    votes = np.array([[0, 0, 0, 2],                  # class 3
                      [0, 1, 1, 0],                  # a tie: the lower id, 1
                      [0, 0, 0, 0],                  # no vote: nearest voted point is 1 -> 1
                      [0, 0, 0, 0]])                 # nearest voted point is 0 -> 3
    assert vote_labels(pts, votes).tolist() == [3, 1, 1, 3]
    assert vote_labels(pts, np.zeros_like(votes)).tolist() == [0, 0, 0, 0]


def test_oracle_instance_labels_hand_case():
    # GT: class 4 instance 1 in columns 0-1, class 5 instance 2 in columns 2-3, wall (class 1) in column 4
    gt_sem = np.array([[4, 4, 5, 5, 1]] * 2)
    gt_inst = np.array([[1, 1, 2, 2, 0]] * 2)
    key_index = {(4, 1): 0, (5, 2): 1}
    # masks: mask 7 covers columns 0-2 (mostly GT instance 1), mask 3 covers column 3 (GT instance 2),
    # mask 9 covers the wall (no GT thing: votes "no instance"); row 1 column 4 is a stuff-labelled pixel
    m_inst = np.array([[7, 7, 7, 3, 9], [0, 7, 7, 3, 0]])
    m_sem = np.array([[4, 4, 4, 5, 6], [0, 4, 4, 5, 1]])
    out = oracle_instance_labels(m_inst, m_sem, gt_sem, gt_inst, key_index)
    assert out.tolist() == [[2, 2, 2, 3, 1], [0, 2, 2, 3, 1]]


def test_mask_reference_instance_block_on_a_scene(tmp_path):
    """Clean masks cover every instance; with one instance's masks removed, its reference IoU and
    mask coverage fall to 0 and the other instances keep theirs."""
    from recon.data.make_synth import make_synth_scene
    from recon.data.scene import load_scene, replace_masks
    from recon.core.settings import SynthSettings
    root = tmp_path / "scene"
    make_synth_scene(SynthSettings(size=(64, 48), frames=8, noise="clean"), root, log=lambda *_: None)
    scene = load_scene(root, check_images=False)
    ref = mask_reference(scene)
    inst = ref["instance_3d"]
    assert inst["n_gt_instances"] == len(inst["per_instance"]) >= 2
    seen = {k: v for k, v in inst["per_instance"].items() if v["mask_coverage"] > 50}
    assert len(seen) >= 2 and all(v["iou"] > 50 for v in seen.values())
    # drop one well-covered GT instance from every frame's masks
    victim = max(seen, key=lambda k: seen[k]["n_vertices"])
    cname, gid = victim.split("#")
    cid = next(c.id for c in scene.classes if c.name == cname)
    masks = []
    for i, fid in enumerate(scene.frame_ids):
        m_inst, m_sem, scores = scene.load_masks(i)
        g_sem, g_inst = scene.load_gt(i)
        on = (g_sem == cid) & (g_inst == int(gid))
        for m in np.unique(m_inst[on]):
            if m > 0 and (m_inst == m)[on].sum() * 2 > (m_inst == m).sum():
                m_sem[m_inst == m] = 0
                m_inst[m_inst == m] = 0
                scores.pop(int(m), None)
        masks.append((fid, m_inst, m_sem, scores))
    replace_masks(root, masks)
    after = mask_reference(load_scene(root, check_images=False))["instance_3d"]
    assert after["per_instance"][victim]["mask_coverage"] == 0 and after["per_instance"][victim]["iou"] == 0
    assert after["mcov"] < inst["mcov"]
    others = [k for k in seen if k != victim]
    assert all(after["per_instance"][k]["iou"] > 50 for k in others)


def test_mask_reference_on_a_reconstructions_vertices(tmp_path):
    """Votes cast on other points (a reconstruction's vertices) and carried to the GT vertices by nearest
    neighbour: on the GT vertices themselves the result is the GT-geometry reference; with one instance's
    surface missing from the 'reconstruction', its GT vertices take the labels of the nearest remaining
    surface, so its IoU falls (only neighbours within the depth tolerance of its masks' pixels, such as the
    floor at its foot, still vote for it) while the instances still present keep theirs."""
    from eval.evaluate import observed_gt
    from recon.data.make_synth import make_synth_scene
    from recon.data.scene import load_scene
    from recon.core.settings import SynthSettings
    root = tmp_path / "scene"
    make_synth_scene(SynthSettings(size=(64, 48), frames=8, noise="clean"), root, log=lambda *_: None)
    scene = load_scene(root, check_images=False)
    base = mask_reference(scene)
    assert base["geometry"] == "gt"
    gt = observed_gt(scene)
    same = mask_reference(scene, on_vertices=gt["observed_vertices"])
    assert same["geometry"] == "reconstruction"
    assert same["semantic_3d"] == base["semantic_3d"] and same["instance_3d"] == base["instance_3d"]
    inst = base["instance_3d"]["per_instance"]
    seen = {k: v for k, v in inst.items() if v["iou"] > 50}
    victim = max(seen, key=lambda k: seen[k]["n_vertices"])
    cname, gid = victim.split("#")
    cid = next(c.id for c in scene.classes if c.name == cname)
    gone = (gt["vertex_semantic"] == cid) & (gt["vertex_instance"] == int(gid))
    lost = mask_reference(scene, on_vertices=gt["observed_vertices"][~gone])["instance_3d"]["per_instance"]
    assert lost[victim]["iou"] < 0.5 * inst[victim]["iou"], (lost[victim], inst[victim])
    assert any(lost[k]["iou"] > 50 for k in seen if k != victim)
