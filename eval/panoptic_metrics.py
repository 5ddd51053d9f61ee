"""Scene-level panoptic quality, 2D semantic metrics and instance coverage (METHOD.md section 9).

Pure numpy functions on flattened label arrays: all evaluated frames are concatenated into one
"image" of P pixels (or P points in 3D), so segments are matched once over the whole scene.

Conventions (COCO panoptic, Kirillov et al. 2019, with the scene-level reading of Panoptic Lifting):
- Segments. A stuff class forms ONE segment over the whole scene (its instance id is ignored);
  a thing segment is a (class, instance id) pair, so instance ids must be scene-consistent.
- Void. GT pixels with class 0 (unlabelled), and GT thing pixels with instance 0, belong to no
  segment and are ignored. On the prediction side, class 0 and thing pixels with instance 0 are
  "no prediction": they form no segment (they still count as misses inside the GT segment they lie in).
- IoU of a predicted segment p and a GT segment g of the SAME class (different classes never match):
      IoU = |p n g| / (|p| - |p n void_gt| + |g| - |p n g|)
  i.e. the predicted pixels that fall on GT void are left out of the union.
- Matching: pairs with IoU > threshold, taken greedily in decreasing IoU, one-to-one. For a
  threshold >= 0.5 such pairs are unique anyway (the standard PQ); for lower thresholds (the
  PanopticRecon++ evaluation uses 0.3 / 0.1) the greedy rule keeps the matching one-to-one.
- FP: an unmatched predicted segment, unless more than half of its pixels lie on GT void (COCO rule).
  FN: an unmatched GT segment.
- Per class c with TP_c + FP_c + FN_c > 0:
      SQ_c = sum_TP IoU / TP_c (0 if TP_c = 0),   RQ_c = TP_c / (TP_c + FP_c/2 + FN_c/2),   PQ_c = SQ_c RQ_c
  and PQ, SQ, RQ are the means over those classes (as COCO and torchmetrics do; so PQ != SQ * RQ in
  general). Values are reported in percent [0, 100].

Instance coverage (mCov, mWCov): over GT thing instances, the best IoU with any predicted instance
(class-agnostic: predicted instance ids > 0), plain mean and mean weighted by GT instance size; GT-void
elements (class 0) are left out of every count.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from eval.metrics import confusion_matrix, semantic_metrics


def _flat_labels(name: str, arr, n: int | None = None) -> np.ndarray:
    a = np.asarray(arr)
    assert a.ndim == 1, f"{name} must be a flat [P] array, got shape {a.shape}"
    assert np.issubdtype(a.dtype, np.integer), f"{name} must be integer labels, got {a.dtype}"
    if n is not None:
        assert a.shape[0] == n, f"{name} has {a.shape[0]} elements, expected {n}"
    if a.size:
        assert a.min() >= 0, f"{name} has negative labels"
    return a.astype(np.int64)


def _segment_index(sem: np.ndarray, inst: np.ndarray, is_thing: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-element segment index [P] (-1 = void) and each segment's (class [S], instance [S]).

    Stuff elements get instance 0 (one segment per stuff class); thing elements with instance 0
    and class-0 elements are void.
    """
    thing = is_thing[sem]  # [P] bool
    inst = np.where(thing, inst, 0)
    valid = (sem > 0) & ~(thing & (inst == 0))
    seg = np.full(sem.shape[0], -1, np.int64)
    if not valid.any():
        return seg, np.zeros(0, np.int64), np.zeros(0, np.int64)
    stride = int(inst[valid].max()) + 1
    key = sem[valid] * stride + inst[valid]  # [P_valid]
    ukey, inv = np.unique(key, return_inverse=True)
    seg[valid] = inv
    return seg, ukey // stride, ukey % stride


def _thing_lookup(thing_ids: Iterable[int], max_class: int) -> np.ndarray:
    thing_ids = [int(t) for t in thing_ids]
    assert all(t > 0 for t in thing_ids), f"thing ids must be positive class ids, got {thing_ids}"
    is_thing = np.zeros(max(max_class, max(thing_ids, default=0)) + 1, bool)
    is_thing[thing_ids] = True
    return is_thing


def panoptic_quality(pred_sem, pred_inst, gt_sem, gt_inst, thing_ids: Iterable[int],
                     threshold: float = 0.5, void_fraction: float = 0.5) -> dict:
    """Scene-level PQ / SQ / RQ (percent) over flattened labels of all evaluated frames.

    pred_sem, pred_inst, gt_sem, gt_inst: [P] non-negative integer arrays (class ids, instance ids).
    thing_ids: the thing class ids (every other class id > 0 is stuff).
    threshold: a pair is a TP if IoU > threshold (0.5 standard; 0.3 / 0.1 as in PanopticRecon++).
    void_fraction: an unmatched predicted segment with more than this fraction of its pixels on
    GT void is not a FP (COCO: 0.5).

    Returns {"pq", "sq", "rq", "pq_things", "pq_stuff" (NaN if no such class is evaluated),
             "tp", "fp", "fn" (totals), "n_classes" (classes evaluated), "iou_threshold",
             "per_class": {class_id: {"pq", "sq", "rq", "tp", "fp", "fn"}}}.
    NaN scores if no class has any segment.
    """
    gt_sem = _flat_labels("gt_sem", gt_sem)
    n = gt_sem.shape[0]
    gt_inst = _flat_labels("gt_inst", gt_inst, n)
    pred_sem = _flat_labels("pred_sem", pred_sem, n)
    pred_inst = _flat_labels("pred_inst", pred_inst, n)
    assert 0.0 <= threshold < 1.0, f"threshold must lie in [0, 1), got {threshold}"
    max_class = int(max(gt_sem.max(initial=0), pred_sem.max(initial=0)))
    is_thing = _thing_lookup(thing_ids, max_class)

    p_seg, p_cls, _ = _segment_index(pred_sem, pred_inst, is_thing)  # [P], [Sp]
    g_seg, g_cls, _ = _segment_index(gt_sem, gt_inst, is_thing)  # [P], [Sg]
    n_p, n_g = p_cls.shape[0], g_cls.shape[0]
    p_area = np.bincount(p_seg[p_seg >= 0], minlength=n_p)  # [Sp]
    g_area = np.bincount(g_seg[g_seg >= 0], minlength=n_g)  # [Sg]
    on_void = (p_seg >= 0) & (g_seg < 0)  # pixels of a predicted segment on GT void
    p_void = np.bincount(p_seg[on_void], minlength=n_p)  # [Sp]

    both = (p_seg >= 0) & (g_seg >= 0)
    pair, inter = np.unique(p_seg[both] * max(n_g, 1) + g_seg[both], return_counts=True)
    pi, gi = pair // max(n_g, 1), pair % max(n_g, 1)  # [M] candidate pairs
    same = p_cls[pi] == g_cls[gi]
    pi, gi, inter = pi[same], gi[same], inter[same].astype(np.float64)
    iou = inter / (p_area[pi] - p_void[pi] + g_area[gi] - inter)  # [M]
    cand = np.flatnonzero(iou > threshold)
    order = cand[np.lexsort((gi[cand], pi[cand], -iou[cand]))]  # decreasing IoU, ties by index
    p_matched = np.zeros(n_p, bool)
    g_matched = np.zeros(n_g, bool)
    tp_iou: list[tuple[int, float]] = []
    for k in order:
        if p_matched[pi[k]] or g_matched[gi[k]]:
            continue
        p_matched[pi[k]] = g_matched[gi[k]] = True
        tp_iou.append((int(g_cls[gi[k]]), float(iou[k])))

    fp_seg = ~p_matched & (p_void <= void_fraction * p_area)
    classes = sorted(set(g_cls.tolist()) | set(p_cls[fp_seg].tolist()) | {c for c, _ in tp_iou})
    per_class: dict[int, dict] = {}
    for c in classes:
        tp = sum(1 for cc, _ in tp_iou if cc == c)
        iou_sum = sum(v for cc, v in tp_iou if cc == c)
        fp = int(np.count_nonzero(fp_seg & (p_cls == c)))
        fn = int(np.count_nonzero(~g_matched & (g_cls == c)))
        sq = iou_sum / tp if tp else 0.0
        rq = tp / (tp + 0.5 * fp + 0.5 * fn)
        per_class[int(c)] = {"pq": 100.0 * sq * rq, "sq": 100.0 * sq, "rq": 100.0 * rq, "tp": tp, "fp": fp, "fn": fn}

    def mean(key: str, which=lambda c: True) -> float:
        vals = [v[key] for c, v in per_class.items() if which(c)]
        return float(np.mean(vals)) if vals else float("nan")

    thing = lambda c: c < is_thing.shape[0] and bool(is_thing[c])  # noqa: E731
    return {"pq": mean("pq"), "sq": mean("sq"), "rq": mean("rq"),
            "pq_things": mean("pq", thing), "pq_stuff": mean("pq", lambda c: not thing(c)),
            "tp": sum(v["tp"] for v in per_class.values()), "fp": sum(v["fp"] for v in per_class.values()),
            "fn": sum(v["fn"] for v in per_class.values()), "n_classes": len(per_class),
            "iou_threshold": float(threshold), "per_class": per_class}


def semantic_scores(pred_sem, gt_sem, n_classes: int) -> dict:
    """mIoU / mAcc (percent) over all elements whose GT class is not 0 (eval.metrics conventions)."""
    gt_sem = _flat_labels("gt_sem", gt_sem)
    pred_sem = _flat_labels("pred_sem", pred_sem, gt_sem.shape[0])
    return semantic_metrics(confusion_matrix(pred_sem, gt_sem, n_classes, ignore_gt=0))


def semantic_scores_per_frame(frames: Iterable[tuple[np.ndarray, np.ndarray]], n_classes: int) -> dict:
    """mIoU / mAcc (percent) the way the PanopticRecon++ evaluation code computes them: per frame, then averaged.

    frames: (pred_sem, gt_sem) label images of each frame (any shape, flattened). In each frame, over the
    pixels whose GT class is not 0, every class c present in that frame's GT gets
        IoU_c,f = TP / (TP + FP + FN),   Acc_c,f = TP / (TP + FN).
    A class's score is the mean over the frames whose GT holds it, and mIoU / mAcc are the means over the
    classes present in some frame. Unlike `semantic_scores` (one confusion matrix over the scene), a class
    weighs the same in a frame where it covers 10 pixels as in one where it covers 10,000, and a prediction
    of c in a frame whose GT lacks c costs nothing there.

    Returns {"miou", "macc", "n_frames" (frames with a GT class), "per_class_iou": {class: %}}.
    """
    iou_sum = np.zeros(int(n_classes))      # [C] sum over frames of IoU_c,f
    acc_sum = np.zeros(int(n_classes))      # [C]
    n_seen = np.zeros(int(n_classes))       # [C] frames whose GT holds c
    n_frames = 0
    for pred_sem, gt_sem in frames:
        gt = _flat_labels("gt_sem", gt_sem)
        pred = _flat_labels("pred_sem", pred_sem, gt.shape[0])
        conf = confusion_matrix(pred, gt, n_classes, ignore_gt=0).astype(np.float64)  # [C, C] rows GT
        gt_count, pred_count, tp = conf.sum(axis=1), conf.sum(axis=0), np.diag(conf)
        present = gt_count > 0
        if not present.any():
            continue
        n_frames += 1
        iou_sum[present] += tp[present] / (gt_count[present] + pred_count[present] - tp[present])
        acc_sum[present] += tp[present] / gt_count[present]
        n_seen[present] += 1
    seen = np.flatnonzero(n_seen > 0)
    iou = 100.0 * iou_sum[seen] / n_seen[seen]
    acc = 100.0 * acc_sum[seen] / n_seen[seen]
    return {"miou": float(iou.mean()) if seen.size else float("nan"),
            "macc": float(acc.mean()) if seen.size else float("nan"),
            "n_frames": n_frames, "per_class_iou": {int(c): float(x) for c, x in zip(seen, iou)}}


def instance_coverage(pred_inst, gt_sem, gt_inst, thing_ids: Iterable[int], per_instance: bool = False) -> dict:
    """mCov and mWCov (percent) of GT thing instances by predicted instances.

    GT instances: elements with a thing class and instance > 0, keyed by (class, instance).
    Predicted instances: elements with pred_inst > 0 (class-agnostic). Elements with GT class 0
    are dropped first. For GT instance g: Cov_g = max_p |g n p| / |g u p| (0 if nothing overlaps);
    mCov = mean_g Cov_g, mWCov = sum_g |g| Cov_g / sum_g |g|.
    Returns {"mcov", "mwcov" (NaN if no GT instance), "n_gt_instances", "n_pred_instances"}, and with
    per_instance=True also "per_instance": one dict per GT instance, in (class, instance) order:
        class, instance, size |g|, iou (Cov_g, percent), pred (the best-IoU predicted id, 0 if none),
        share = |g n p| / |g| of that prediction (how much of g it holds), purity = |g n p| / |p| (how
        much of it is g: low = merged with other things or with stuff), parts = the number of predicted ids
        holding at least 10 % of g (2 or more = g was split).
    """
    gt_sem = _flat_labels("gt_sem", gt_sem)
    n = gt_sem.shape[0]
    gt_inst = _flat_labels("gt_inst", gt_inst, n)
    pred_inst = _flat_labels("pred_inst", pred_inst, n)
    keep = gt_sem > 0
    gt_sem, gt_inst, pred_inst = gt_sem[keep], gt_inst[keep], pred_inst[keep]
    is_thing = _thing_lookup(thing_ids, int(gt_sem.max(initial=0)))
    g_mask = is_thing[gt_sem] & (gt_inst > 0)
    stride = int(gt_inst.max(initial=0)) + 1
    g_key = np.where(g_mask, gt_sem * stride + gt_inst, -1)
    g_ids, g_seg = np.unique(g_key[g_mask], return_inverse=True)
    g_full = np.full(g_key.shape[0], -1, np.int64)
    g_full[g_mask] = g_seg
    p_ids, p_seg = np.unique(pred_inst[pred_inst > 0], return_inverse=True)
    p_full = np.full(pred_inst.shape[0], -1, np.int64)
    p_full[pred_inst > 0] = p_seg
    n_g, n_p = g_ids.shape[0], p_ids.shape[0]
    if n_g == 0:
        return {"mcov": float("nan"), "mwcov": float("nan"), "n_gt_instances": 0, "n_pred_instances": int(n_p),
                **({"per_instance": []} if per_instance else {})}
    g_area = np.bincount(g_seg, minlength=n_g).astype(np.float64)  # [Sg]
    p_area = np.bincount(p_seg, minlength=n_p).astype(np.float64)  # [Sp]
    best = np.zeros(n_g)  # [Sg]
    both = (g_full >= 0) & (p_full >= 0)
    gi = pi = inter = iou = np.zeros(0, np.int64)
    if both.any():
        pair, inter = np.unique(g_full[both] * n_p + p_full[both], return_counts=True)
        gi, pi = pair // n_p, pair % n_p
        iou = inter / (g_area[gi] + p_area[pi] - inter)
        np.maximum.at(best, gi, iou)
    out = {"mcov": 100.0 * float(best.mean()), "mwcov": 100.0 * float((best * g_area).sum() / g_area.sum()),
           "n_gt_instances": int(n_g), "n_pred_instances": int(n_p)}
    if per_instance:
        rows = []
        for g in range(n_g):
            mine = np.flatnonzero(gi == g)                     # the predicted segments overlapping g
            row = {"class": int(g_ids[g] // stride), "instance": int(g_ids[g] % stride), "size": int(g_area[g]),
                   "iou": 100.0 * float(best[g]), "pred": 0, "share": 0.0, "purity": 0.0,
                   "parts": int((inter[mine] >= 0.1 * g_area[g]).sum())}
            if mine.size:
                k = mine[np.argmax(iou[mine])]
                row.update(pred=int(p_ids[pi[k]]), share=100.0 * float(inter[k] / g_area[g]),
                           purity=100.0 * float(inter[k] / p_area[pi[k]]))
            rows.append(row)
        out["per_instance"] = rows
    return out
