"""Scene-level PQ, 2D semantic scores and instance coverage (eval/panoptic_metrics.py).

Hand-computed cases, plus a cross-check of panoptic_quality against torchmetrics'
PanopticQuality on random single images (threshold 0.5, no predicted void, so both use the
same conventions).
"""
import numpy as np
import pytest

from eval.panoptic_metrics import instance_coverage, panoptic_quality, semantic_scores, semantic_scores_per_frame


def _scene_case():
    """Two 10-pixel frames, concatenated. Classes: 1 wall (stuff), 2 chair (thing), 3 floor (stuff)."""
    gt_sem = [1, 1, 1, 1, 2, 2, 2, 2, 3, 3] + [1, 1, 1, 0, 0, 2, 2, 2, 2, 3]
    gt_inst = [0, 0, 0, 0, 5, 5, 5, 5, 0, 0] + [0, 0, 0, 0, 0, 7, 7, 7, 7, 0]
    pr_sem = [1, 1, 1, 2, 2, 2, 2, 2, 3, 3] + [1, 1, 1, 1, 2, 2, 1, 1, 1, 3]
    pr_inst = [0, 0, 0, 1, 1, 1, 1, 1, 0, 0] + [0, 0, 0, 0, 2, 2, 0, 0, 0, 0]
    return [np.array(a) for a in (pr_sem, pr_inst, gt_sem, gt_inst)]


def test_scene_pq_hand_computed():
    # wall (split across both frames, one segment): GT 7 px, pred 10 px of which 1 on GT void,
    #   intersection 6 -> IoU = 6 / (10 - 1 + 7 - 6) = 0.6 -> TP.              PQ_wall = 60
    # chair: pred 1 (5 px) vs GT 5 (4 px): IoU 4 / 5 = 0.8 -> TP.
    #   pred 2 (2 px, 1 on void, 1 on GT 7): IoU 1 / (2 - 1 + 4 - 1) = 0.25 -> no match;
    #   void fraction 1/2 is not > 0.5 -> FP. GT 7 unmatched -> FN.
    #   SQ 80, RQ 1 / (1 + 0.5 + 0.5) = 50, PQ 40
    # floor: identical, 3 px -> PQ 100
    pq = panoptic_quality(*_scene_case(), thing_ids=[2], threshold=0.5)
    assert pq["per_class"][1] == pytest.approx({"pq": 60.0, "sq": 60.0, "rq": 100.0, "tp": 1, "fp": 0, "fn": 0})
    assert pq["per_class"][2] == pytest.approx({"pq": 40.0, "sq": 80.0, "rq": 50.0, "tp": 1, "fp": 1, "fn": 1})
    assert pq["per_class"][3] == pytest.approx({"pq": 100.0, "sq": 100.0, "rq": 100.0, "tp": 1, "fp": 0, "fn": 0})
    assert pq["pq"] == pytest.approx(200.0 / 3)
    assert pq["sq"] == pytest.approx(80.0)
    assert pq["rq"] == pytest.approx(250.0 / 3)
    assert pq["pq_things"] == pytest.approx(40.0) and pq["pq_stuff"] == pytest.approx(80.0)
    assert (pq["tp"], pq["fp"], pq["fn"], pq["n_classes"]) == (3, 1, 1, 3)
    # at 0.7 the wall (IoU 0.6) becomes one FP (void fraction 1/10) + one FN -> PQ_wall 0
    pq7 = panoptic_quality(*_scene_case(), thing_ids=[2], threshold=0.7)
    assert pq7["per_class"][1] == pytest.approx({"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 1, "fn": 1})
    assert pq7["pq"] == pytest.approx(140.0 / 3)


def test_frames_order_and_instance_ids_do_not_matter():
    pr_sem, pr_inst, gt_sem, gt_inst = _scene_case()
    perm = np.random.default_rng(0).permutation(pr_sem.shape[0])
    relabel = np.array([0, 9, 4])  # predicted instance ids 1 -> 9, 2 -> 4
    a = panoptic_quality(pr_sem, pr_inst, gt_sem, gt_inst, [2])
    b = panoptic_quality(pr_sem[perm], relabel[pr_inst][perm], gt_sem[perm], gt_inst[perm], [2])
    assert a["pq"] == pytest.approx(b["pq"]) and a["per_class"] == b["per_class"]


def test_mostly_void_prediction_is_not_fp_and_classes_must_agree():
    # class 2 thing; pred 1 lies 3 of 4 px on GT void -> not a FP; pred 2 has the GT chair's
    # pixels but the class 4 -> a FP of class 4 and a FN of class 2.
    gt_sem = np.array([0, 0, 0, 1, 2, 2, 1, 1])
    gt_inst = np.array([0, 0, 0, 0, 3, 3, 0, 0])
    pr_sem = np.array([2, 2, 2, 2, 4, 4, 1, 1])
    pr_inst = np.array([1, 1, 1, 1, 2, 2, 0, 0])
    pq = panoptic_quality(pr_sem, pr_inst, gt_sem, gt_inst, thing_ids=[2, 4])
    # wall: GT 3 px {3, 6, 7}, pred {6, 7} -> IoU 2/3 -> TP
    assert pq["per_class"][1]["tp"] == 1 and pq["per_class"][1]["sq"] == pytest.approx(200.0 / 3)
    assert pq["per_class"][2] == pytest.approx({"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 1})
    assert pq["per_class"][4] == pytest.approx({"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 1, "fn": 0})
    assert pq["pq"] == pytest.approx(200.0 / 9)


def test_low_threshold_matches_one_to_one():
    # one GT chair of 6 px, two predicted chairs of 3 px each: both IoU 0.5
    gt_sem = np.full(6, 2)
    gt_inst = np.full(6, 1)
    pr_inst = np.array([1, 1, 1, 2, 2, 2])
    pq = panoptic_quality(gt_sem, pr_inst, gt_sem, gt_inst, thing_ids=[2], threshold=0.3)
    # one TP (IoU 0.5) + one FP: SQ 50, RQ 1 / 1.5
    assert pq["per_class"][2] == pytest.approx({"pq": 100.0 / 3, "sq": 50.0, "rq": 200.0 / 3,
                                                "tp": 1, "fp": 1, "fn": 0})
    # at 0.5 neither matches (IoU must exceed the threshold)
    assert panoptic_quality(gt_sem, pr_inst, gt_sem, gt_inst, thing_ids=[2], threshold=0.5)["pq"] == 0.0


def test_void_conventions_and_empty():
    # thing pixels with instance 0 are void on both sides; class 0 predictions form no segment
    gt_sem = np.array([2, 2, 2, 1])
    gt_inst = np.array([4, 4, 0, 0])
    pr_sem = np.array([2, 2, 2, 0])
    pr_inst = np.array([1, 1, 0, 0])
    pq = panoptic_quality(pr_sem, pr_inst, gt_sem, gt_inst, thing_ids=[2])
    assert pq["per_class"][2]["tp"] == 1 and pq["per_class"][2]["sq"] == pytest.approx(100.0)
    assert pq["per_class"][1] == pytest.approx({"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 1})
    empty = panoptic_quality(np.zeros(3, int), np.zeros(3, int), np.zeros(3, int), np.zeros(3, int), [2])
    assert np.isnan(empty["pq"]) and empty["n_classes"] == 0


def test_bad_input_is_refused():
    with pytest.raises(AssertionError, match="gt_inst"):
        panoptic_quality(np.zeros(4, int), np.zeros(4, int), np.zeros(4, int), np.zeros(3, int), [2])
    with pytest.raises(AssertionError, match="integer"):
        panoptic_quality(np.zeros(4), np.zeros(4, int), np.zeros(4, int), np.zeros(4, int), [2])


def _random_case(rng, h=12, w=12, stuffs=(1, 2), things=(3, 4)):
    """GT of stuff blocks + thing rectangles + a few void pixels; a perturbed prediction without void."""
    gt_sem = rng.choice(stuffs, size=(h // 4, w // 4)).repeat(4, 0).repeat(4, 1)
    gt_inst = np.zeros((h, w), np.int64)
    for k in range(1, rng.integers(1, 5)):
        y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
        dy, dx = rng.integers(2, 6), rng.integers(2, 6)
        gt_sem[y:y + dy, x:x + dx] = rng.choice(things)
        gt_inst[y:y + dy, x:x + dx] = k
    pr_sem, pr_inst = gt_sem.copy(), gt_inst.copy()
    # shift the prediction by up to one pixel, relabel instances, flip some pixels at random
    shift, axis = int(rng.integers(-1, 2)), int(rng.integers(0, 2))
    pr_sem = np.roll(pr_sem, shift, axis=axis)
    pr_inst = rng.permutation(8)[np.roll(pr_inst, shift, axis=axis)] + 1
    flip = rng.random((h, w)) < rng.uniform(0.05, 0.4)
    pr_sem[flip] = rng.choice(list(stuffs) + list(things), size=int(flip.sum()))
    pr_inst[flip] = rng.integers(1, 4, size=int(flip.sum()))
    thing_px = np.isin(pr_sem, things)
    pr_inst = np.where(thing_px, np.maximum(pr_inst, 1), 0)
    void = rng.random((h, w)) < 0.1
    gt_sem[void] = 0
    gt_inst[void] = 0
    gt_inst = np.where(np.isin(gt_sem, things), gt_inst, 0)
    return pr_sem, pr_inst, gt_sem, gt_inst


def test_matches_torchmetrics_on_single_images():
    torch = pytest.importorskip("torch")
    detection = pytest.importorskip("torchmetrics.detection", reason="torchmetrics (cross-check only) not installed")
    rng = np.random.default_rng(1)
    n_checked = 0
    for _ in range(40):
        pr_sem, pr_inst, gt_sem, gt_inst = _random_case(rng)
        metric = detection.PanopticQuality(things={3, 4}, stuffs={1, 2}, return_sq_and_rq=True)
        preds = torch.from_numpy(np.stack([pr_sem, pr_inst], -1)[None])
        target = torch.from_numpy(np.stack([gt_sem, gt_inst], -1)[None])
        metric.update(preds, target)
        ref = metric.compute().numpy() * 100.0  # [pq, sq, rq]
        ours = panoptic_quality(pr_sem.ravel(), pr_inst.ravel(), gt_sem.ravel(), gt_inst.ravel(), [3, 4], 0.5)
        # torchmetrics computes the IoU in float32
        assert [ours["pq"], ours["sq"], ours["rq"]] == pytest.approx(ref.tolist(), abs=1e-4)
        n_checked += ours["tp"] > 0
    assert n_checked >= 10  # the random cases do contain matches


def test_semantic_scores():
    # GT [1 1 2 2 0], pred [1 2 2 2 1]: class 1 IoU 1/2, acc 1/2; class 2 IoU 2/3, acc 1 (void ignored)
    s = semantic_scores(np.array([1, 2, 2, 2, 1]), np.array([1, 1, 2, 2, 0]), n_classes=3)
    assert s["miou"] == pytest.approx(100.0 * (0.5 + 2 / 3) / 2)
    assert s["macc"] == pytest.approx(75.0)


def test_semantic_scores_per_frame_hand_computed():
    # frame A: GT [1 1 1 2], pred [1 1 2 2] -> class 1 IoU 2/3 acc 2/3; class 2 IoU 1/2 acc 1
    # frame B: GT [1 1 0 0], pred [1 2 2 2] -> class 1 IoU 1/2 acc 1/2 (void ignored); class 2 is not in
    #          B's GT, so its predicted pixel in B costs nothing
    # frame C: GT all void -> no frame
    frames = [(np.array([1, 1, 2, 2]), np.array([1, 1, 1, 2])), (np.array([1, 2, 2, 2]), np.array([1, 1, 0, 0])),
              (np.array([1, 2]), np.array([0, 0]))]
    s = semantic_scores_per_frame(frames, n_classes=3)
    assert s["n_frames"] == 2
    assert s["per_class_iou"] == pytest.approx({1: 100.0 * 7 / 12, 2: 50.0})
    assert s["miou"] == pytest.approx(100.0 * 13 / 24)
    assert s["macc"] == pytest.approx(100.0 * 19 / 24)
    # the scene-level score of the same pixels differs: class 1 IoU 3/5, class 2 IoU 1/3
    pred = np.concatenate([f[0] for f in frames])
    gt = np.concatenate([f[1] for f in frames])
    assert semantic_scores(pred, gt, n_classes=3)["miou"] == pytest.approx(100.0 * (3 / 5 + 1 / 3) / 2)
    assert np.isnan(semantic_scores_per_frame([], n_classes=3)["miou"])


def test_instance_coverage_hand_computed():
    # px:        0  1  2  3  4  5  6  7  8
    gt_sem = np.array([2, 2, 2, 2, 2, 2, 1, 1, 0])
    gt_inst = np.array([1, 1, 1, 1, 2, 2, 0, 0, 0])
    pr_inst = np.array([1, 1, 1, 2, 2, 0, 1, 0, 1])
    # pixel 8 is GT void and dropped. pred 1 = {0,1,2,6}, pred 2 = {3,4}.
    # GT A = {0..3}: IoU with pred 1 = 3 / (4 + 4 - 3) = 0.6, with pred 2 = 1 / 5 -> 0.6
    # GT B = {4,5}:  IoU with pred 2 = 1 / (2 + 2 - 1) = 1/3
    cov = instance_coverage(pr_inst, gt_sem, gt_inst, thing_ids=[2])
    assert cov["mcov"] == pytest.approx(100.0 * (0.6 + 1 / 3) / 2)
    assert cov["mwcov"] == pytest.approx(100.0 * (4 * 0.6 + 2 / 3) / 6)
    assert (cov["n_gt_instances"], cov["n_pred_instances"]) == (2, 2) and "per_instance" not in cov
    # per instance: A's best is pred 1 (3 of A's 4, 3 of pred 1's 4), and pred 1 and pred 2 both hold >= 10 % of A
    # -> 2 parts; B's best is pred 2 (1 of B's 2, 1 of pred 2's 2), the only part
    per = instance_coverage(pr_inst, gt_sem, gt_inst, thing_ids=[2], per_instance=True)["per_instance"]
    assert per[0] == pytest.approx({"class": 2, "instance": 1, "size": 4, "iou": 60.0, "pred": 1, "share": 75.0,
                                    "purity": 75.0, "parts": 2})
    assert per[1] == pytest.approx({"class": 2, "instance": 2, "size": 2, "iou": 100 / 3, "pred": 2, "share": 50.0,
                                    "purity": 50.0, "parts": 1})
    missed = instance_coverage(np.zeros(9, int), gt_sem, gt_inst, [2], per_instance=True)["per_instance"]
    assert [(r["iou"], r["pred"], r["parts"]) for r in missed] == [(0.0, 0, 0), (0.0, 0, 0)]
    none = instance_coverage(np.zeros(9, int), gt_sem, gt_inst, [2])
    assert none["mcov"] == 0.0 and none["mwcov"] == 0.0
    assert np.isnan(instance_coverage(pr_inst, gt_sem, np.zeros(9, int), [2])["mcov"])
