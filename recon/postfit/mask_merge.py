"""Mask-evidence merging: a post-process of the panoptic mesh (ours; not in the paper).

What it fixes: a large object (a long table, a wardrobe, an L-sofa) or an object seen from two sides can end
up owned by two tokens of the same class. The fragment rule (recon/postfit/fragments.py) only merges a piece
far smaller than its neighbour (20 %), so two halves of one cabinet stay apart, and two pieces that do not
touch on the mesh (a chair's seat and its back, split by a gap in the mesh) are never even compared.

The evidence is in the 2D masks: where both pieces are in view, does one mask cover both, or does each have
its own? Two chairs side by side get two masks; the two halves of one table get one.

The rule, on the labelled mesh and the training frames:
- In each training frame, a mesh vertex is *seen* at the pixel it projects to (nearest pixel) if it lies in
  front of the camera and within `depth_tol_m` of the frame's observed depth there (not occluded).
- A predicted instance *shows* in the frame when at least `min_visible` of its vertices are seen. Its mask
  there is the thing mask id that holds the most of those seen vertices, if that mask holds at least
  `min_mask_share` of them (else the instance has no clear mask in that frame).
- Two instances of the same class (majority vertex class) that both show with a clear mask in a frame get a
  *same* vote if their masks are one mask, else a *different* vote.
- A pair merges when it has at least `min_same_frames` same votes and same / (same + different) is at least
  `min_same_share`. Pairs are merged from the best-supported down (union-find); a group keeps the id of its
  largest member.

Masks that miss an object in some frames cast no vote there (the instance shows no clear mask), and an
over-segmented mask that splits one object in a few frames only adds different votes in those frames, which
the share threshold tolerates. Merging maps instance ids onto other ids of the same class only, so semantic
labels do not change; the id map goes to the mesh, instances/, the token -> id map and the label images alike
(as the fragment rule's does).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from recon.data.scene import Scene


@dataclass(frozen=True)
class MaskMergeParams:
    depth_tol_m: float = 0.05        # a vertex is seen in a frame if within this of the observed depth
    min_visible: int = 20            # an instance shows in a frame with at least this many seen vertices
    min_mask_share: float = 0.5      # ... and its mask is the thing mask holding this share of them
    min_same_frames: int = 3         # a pair merges with at least this many frames of one shared mask
    min_same_share: float = 0.7      # ... that are at least this share of the frames where both show


def seen_pixels(points: np.ndarray, K: np.ndarray, c2w: np.ndarray, depth_z_m: np.ndarray,
                depth_tol_m: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The points [N, 3] (world, m) a frame sees: in front of the camera (OpenCV c2w [4, 4], K [3, 3]), at a
    nearest pixel inside the image with valid depth (depth_z_m [H, W], 0 = invalid) within depth_tol_m of the
    point's own z. -> (point index [M], row v [M], column u [M])."""
    assert points.ndim == 2 and points.shape[1] == 3, f"points must be [N, 3], got {points.shape}"
    H, W = depth_z_m.shape
    w2c = np.linalg.inv(c2w)
    pc = points @ w2c[:3, :3].T + w2c[:3, 3]                                     # [N, 3] camera frame
    z = pc[:, 2]
    front = np.flatnonzero(z > 1e-3)
    u = np.round(K[0, 0] * pc[front, 0] / z[front] + K[0, 2]).astype(np.int64)
    v = np.round(K[1, 1] * pc[front, 1] / z[front] + K[1, 2]).astype(np.int64)
    inside = (u >= 0) & (u < W) & (v >= 0) & (v < H)
    idx, u, v = front[inside], u[inside], v[inside]
    d = depth_z_m[v, u]
    ok = (d > 0) & (np.abs(z[idx] - d) <= depth_tol_m)
    return idx[ok], v[ok], u[ok]


def frame_masks_of_instances(inst_seen: np.ndarray, mask_seen: np.ndarray, min_visible: int,
                             min_mask_share: float) -> dict[int, int]:
    """{instance id: its mask id} in one frame. inst_seen [M]: the predicted instance id of each seen vertex
    (0 = none); mask_seen [M]: the thing mask id at its pixel (0 = none). An instance with at least
    min_visible seen vertices gets the mask holding the most of them if that is at least min_mask_share of
    them (ties: the smaller mask id); otherwise it gets none."""
    assert inst_seen.shape == mask_seen.shape and inst_seen.ndim == 1
    out: dict[int, int] = {}
    ids, counts = np.unique(inst_seen[inst_seen > 0], return_counts=True)
    for i, n in zip(ids, counts):
        if n < min_visible:
            continue
        m = mask_seen[inst_seen == i]
        m = m[m > 0]
        if m.size == 0:
            continue
        mids, mc = np.unique(m, return_counts=True)
        k = int(np.argmax(mc))
        if mc[k] >= min_mask_share * n:
            out[int(i)] = int(mids[k])
    return out


def pair_votes(frame_masks: dict[int, int], cls: dict[int, int]) -> tuple[Counter, Counter]:
    """(same, different) votes of one frame: for each pair i < j of instances of one class (cls: id -> class)
    that both have a mask in the frame (frame_masks: id -> mask id), same[(i, j)] = 1 if the masks are one
    mask, else different[(i, j)] = 1."""
    same, diff = Counter(), Counter()
    ids = sorted(frame_masks)
    for a in range(len(ids)):
        for b in range(a + 1, len(ids)):
            i, j = ids[a], ids[b]
            if cls.get(i) != cls.get(j):
                continue
            (same if frame_masks[i] == frame_masks[j] else diff)[(i, j)] += 1
    return same, diff


def mask_merges(same: Counter, diff: Counter, size: dict[int, int], min_same_frames: int,
                min_same_share: float) -> dict[int, int]:
    """{id: id it merges into} from the votes summed over frames (chains resolved): pairs with at least
    min_same_frames same votes and a same share >= min_same_share, best-supported first (more same votes,
    then the higher share, then the smaller ids); each group keeps the id of its largest member (size: id ->
    vertices; ties: the smaller id)."""
    ok = []
    for pair, s in same.items():
        d = diff.get(pair, 0)
        if s >= min_same_frames and s / (s + d) >= min_same_share:
            ok.append((-s, -s / (s + d), pair))
    parent: dict[int, int] = {}

    def find(i: int) -> int:
        while i in parent:
            i = parent[i]
        return i

    for _, _, (i, j) in sorted(ok):
        ri, rj = find(i), find(j)
        if ri == rj:
            continue
        keep, gone = (ri, rj) if (size.get(ri, 0), -ri) >= (size.get(rj, 0), -rj) else (rj, ri)
        parent[gone] = keep
        size[keep] = size.get(keep, 0) + size.get(gone, 0)
    return {i: find(i) for i in parent}


def mask_evidence_merges(verts: np.ndarray, inst: np.ndarray, sem: np.ndarray, scene: Scene,
                         frame_index: list[int], params: MaskMergeParams = MaskMergeParams(),
                         progress: bool = False) -> tuple[dict[int, int], Counter, Counter]:
    """The rule of the module docstring over the scene's frames `frame_index` (the training frames):
    (merges {id: id it merges into}, same votes, different votes). verts [V, 3] world m; inst [V] predicted
    instance ids (0 = none); sem [V] predicted class ids."""
    inst = np.asarray(inst, np.int64)
    sem = np.asarray(sem, np.int64)
    assert verts.shape == (len(inst), 3) and sem.shape == inst.shape, (verts.shape, inst.shape, sem.shape)
    ids, sizes = np.unique(inst[inst > 0], return_counts=True)
    if len(ids) < 2 or not scene.has_masks:
        return {}, Counter(), Counter()
    cls = {int(i): int(np.bincount(sem[inst == i]).argmax()) for i in ids}
    same, diff = Counter(), Counter()
    for fm, _ in frame_instance_masks(verts, inst, scene, frame_index, params, "mask-evidence merge", progress):
        s, d = pair_votes(fm, cls)
        same.update(s)
        diff.update(d)
    merges = mask_merges(same, diff, {int(i): int(n) for i, n in zip(ids, sizes)}, params.min_same_frames,
                         params.min_same_share)
    return merges, same, diff


def frame_instance_masks(verts: np.ndarray, inst: np.ndarray, scene, frame_index: list[int],
                         params: MaskMergeParams, desc: str = "instance masks", progress: bool = False):
    """For each of the frames `frame_index`: ({instance id: its thing mask id} (frame_masks_of_instances with
    params' depth tolerance, min_visible and min_mask_share), {mask id: its class}). verts [V, 3] world m;
    inst [V] (0 = none). A generator: one frame's images are read at a time."""
    from tqdm import tqdm

    things = np.zeros(max(scene.thing_ids(), default=0) + 2, bool)
    things[scene.thing_ids()] = True
    for i in tqdm(frame_index, desc=desc, disable=not progress, leave=False):
        idx, v, u = seen_pixels(verts, scene.K, scene.c2w[i], scene.load_depth_m(i), params.depth_tol_m)
        m_inst, m_sem, _ = scene.load_masks(i)
        m_sem = m_sem.astype(np.int64)
        thing_px = things[np.minimum(m_sem, len(things) - 1)] & (m_sem > 0)
        mask_id = np.where(thing_px, m_inst.astype(np.int64), 0)                       # [H, W] thing masks only
        fm = frame_masks_of_instances(inst[idx], mask_id[v, u], params.min_visible, params.min_mask_share)
        mask_cls = {m: int(np.bincount(m_sem[mask_id == m]).argmax()) for m in set(fm.values())}  # majority class
        yield fm, mask_cls


def mask_merge_params(p) -> MaskMergeParams:
    """The rule's parameters from the panoptic settings p (mask_merge_min_frames, mask_merge_min_share)."""
    return MaskMergeParams(min_same_frames=int(p.mask_merge_min_frames), min_same_share=float(p.mask_merge_min_share))


def merge_ids_by_masks(verts: np.ndarray, inst: np.ndarray, sem: np.ndarray, token_ids: np.ndarray, scene: Scene,
                       frame_index: list[int], p, log=print, progress: bool = False
                       ) -> tuple[dict[int, int], np.ndarray | None]:
    """The rule applied to a labelled mesh (vertex ids inst [V], token -> id map token_ids [N]): (merges, old
    id -> new id lookup, or None without merges; apply it to inst, token_ids and label images alike, as
    fragments.merge_fragment_ids). p = the panoptic settings (mask_merge_min_frames, mask_merge_min_share).
    Logs every merge with its votes."""
    from recon.postfit.fragments import merged_id_map

    merges, same, diff = mask_evidence_merges(verts, inst, sem, scene, frame_index, mask_merge_params(p),
                                              progress=progress)
    if not merges:
        log(f"mask-evidence merge: none ({sum(same.values())} same-mask and {sum(diff.values())} different-mask "
            f"votes over {len(set(same) | set(diff))} same-class pairs)")
        return merges, None
    sizes = np.bincount(np.asarray(inst, np.int64))
    for k, v in sorted(merges.items()):
        pair = (min(k, v), max(k, v))
        why = (f"one mask in {same[pair]} frames, two in {diff.get(pair, 0)}" if pair in same
               else "through another member of its group")
        log(f"mask-evidence merge: instance {k} ({sizes[k]} vertices) into {v} ({sizes[v]} vertices): {why}")
    return merges, merged_id_map(np.concatenate([token_ids, inst]), merges)
