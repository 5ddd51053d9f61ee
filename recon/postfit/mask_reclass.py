"""An instance's class from its masks (ours, not in the paper; `panoptic.reclass_by_masks`, on by default;
docs/method.md 12.5).

What it fixes: the walk family's realistic-video masks swap confusable classes (table / cabinet, chair / sofa)
over runs of consecutive frames. A token that sees such a run while it is young can learn the swapped class,
and with the panoptic head its vertices then carry it: on walk realistic-video seed 0 a third of a long table
came out as a separate "cabinet" instance, although 7 of the 8 training frames that show it with a clear mask
call it a table. Mask-evidence merging (recon/postfit/mask_merge.py) compares only instances of one class, so
the two parts of the table stayed apart (table IoU 43 against the masks' reference of 84).

The rule, on the labelled mesh after the other post-processes:

- In each training frame, an instance's *mask* is found as in mask-evidence merging (its seen vertices, the
  thing mask holding at least half of them; `frame_masks_of_instances`), and that mask's class is one vote.
- An instance whose votes name another thing class than its own (the majority class of its vertices) in at
  least `min_frames` frames and at least `min_share` of its votes takes that class: its vertices of the old
  class get the new one.
- Then mask-evidence merging runs again over the pairs that hold a reclassed instance, with its thresholds
  (panoptic.mask_merge_min_frames / min_share), so the table's two parts, one mask in 4 frames and two in 0,
  become one id.

Where no instance is reclassed nothing changes. Label images follow the mesh where it changed through
RUN/relabel.npz, as for the relabelling (recon/postfit/mask_relabel.py).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from recon.postfit.mask_merge import MaskMergeParams, frame_instance_masks, mask_merges, pair_votes


@dataclass(frozen=True)
class ReclassParams:
    min_frames: int = 3             # an instance takes another class with at least this many frames' masks of it
    min_share: float = 0.7          # ... that are at least this share of the frames where it has a clear mask


def reclass_params(s) -> ReclassParams:
    """The rule's parameters from fit settings `s` (panoptic.reclass_min_frames, reclass_min_share)."""
    return ReclassParams(min_frames=int(s.panoptic.reclass_min_frames),
                         min_share=float(s.panoptic.reclass_min_share))


def reclass_decisions(votes: dict[int, Counter], cls: dict[int, int], thing_ids, min_frames: int,
                      min_share: float) -> dict[int, int]:
    """{instance id: new class}: the instances (cls: id -> its class) whose masks' most frequent class (votes:
    id -> Counter(class -> frames); ties: the smaller class id) is another thing class, with at least
    min_frames frames and at least min_share of the instance's frames with a clear mask."""
    things = set(int(t) for t in thing_ids)
    out = {}
    for k, c in votes.items():
        total = sum(c.values())
        if total == 0 or k not in cls:
            continue
        top, n = min(c.items(), key=lambda kv: (-kv[1], kv[0]))
        if top != cls[k] and top in things and n >= min_frames and n / total >= min_share:
            out[int(k)] = int(top)
    return out


def reclass_mesh(verts: np.ndarray, sem: np.ndarray, inst: np.ndarray, scene, frame_index: list[int],
                 params: ReclassParams, merge_params: MaskMergeParams, log=print, progress: bool = False
                 ) -> tuple[np.ndarray, dict[int, int], dict[int, int]]:
    """The rule of the module docstring on a labelled mesh: (sem [V] with the reclassed instances' vertices of
    their old class given the new class, reclassed {id: (new class)}, merges {id: id it merges into} among the
    pairs holding a reclassed instance; apply them with fragments.merged_id_map)."""
    sem, inst = np.array(sem, np.int64), np.asarray(inst, np.int64)
    assert sem.shape == inst.shape == (len(verts),), (sem.shape, inst.shape, verts.shape)
    ids = np.unique(inst[inst > 0])
    if len(ids) == 0 or not scene.has_masks:
        return sem, {}, {}
    cls = {int(i): int(np.bincount(sem[inst == i]).argmax()) for i in ids}
    frames = list(frame_instance_masks(verts, inst, scene, frame_index, merge_params, "mask reclass", progress))
    votes: dict[int, Counter] = {}
    for fm, mask_cls in frames:                        # the class of each instance's mask, one vote per frame
        for k, m in fm.items():
            votes.setdefault(k, Counter())[mask_cls[m]] += 1
    new_cls = reclass_decisions(votes, cls, scene.thing_ids(), params.min_frames, params.min_share)
    names = {c.id: c.name for c in getattr(scene, "classes", [])}
    if not new_cls:
        log(f"mask reclass: none ({len(votes)} instances with a clear mask in some training frame)")
        return sem, {}, {}
    for k, c in sorted(new_cls.items()):
        mine = (inst == k) & (sem == cls[k])
        sem[mine] = c
        log(f"mask reclass: instance {k} ({int(mine.sum())} vertices) {names.get(cls[k], cls[k])} -> "
            f"{names.get(c, c)} (its masks: " + ", ".join(f"{names.get(a, a)} {b}" for a, b in
                                                             votes[k].most_common()) + " frames)")
    # mask-evidence merging's votes with the new classes, over the pairs that hold a reclassed instance (the
    # frames' instance masks do not depend on the classes, so they are not computed again)
    cls.update(new_cls)
    same, diff = Counter(), Counter()
    for fm, _ in frames:
        s, d = pair_votes(fm, cls)
        same.update({pair: n for pair, n in s.items() if pair[0] in new_cls or pair[1] in new_cls})
        diff.update({pair: n for pair, n in d.items() if pair[0] in new_cls or pair[1] in new_cls})
    sizes = {int(i): int((inst == i).sum()) for i in ids}
    merges = mask_merges(same, diff, sizes, merge_params.min_same_frames, merge_params.min_same_share)
    for k, v in sorted(merges.items()):
        pair = (min(k, v), max(k, v))
        log(f"mask reclass: instance {k} merges into {v}: one mask in {same.get(pair, 0)} frames, two in "
            f"{diff.get(pair, 0)}")
    return sem, new_cls, merges
