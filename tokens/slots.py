"""Panoptic Lifting's instance and segment losses (Siddiqui et al., CVPR 2023), the baseline formulation
`tokens.formulation=slots`.

Panoptic Lifting gives every 3D point a SOFTMAX over a fixed number K of instance slots ("surrogate
identities", `slot_probs`: an MLP on the instance field's features whose last linear layer holds one
vector per slot); the rendered distribution of a pixel sums to its opacity (<= 1). The 2D thing masks
of a frame carry per-frame ids, so each frame is matched to the slots on its own:

* cost [L, K] of mask l and slot k = -(mean over the mask's pixels of the slot's rendered
  probability) (`slot_cost`), minimised by the Hungarian match (tokens.assign.hungarian);
* the pixels of a matched mask get its slot as the class target (`slot_targets`) and a
  cross-entropy over the K slots (`slot_ce`). Unmatched slots get no positive target (the softmax
  pushes them down where another slot is the target); pixels of no thing mask, and of masks left
  without a slot (L > K), are ignored.

Segment consistency (`segment_targets`): within each 2D segment of a frame (a thing mask, or the
region of one stuff class), the majority predicted class over the segment's sampled pixels becomes the
target of all of them (ties: the smallest class id); the caller applies a cross-entropy to it.

Shapes: K slots, L thing masks of one frame, P sampled pixels of that frame. pred [K, P] rendered slot
probabilities in [0, 1] (the layout of tokens.assign: one row per slot); targets [L, P] masks in {0, 1}.
"""
from __future__ import annotations

import torch
from torch import Tensor

from tokens.assign import LOG_CLAMP

IGNORE = -1   # target of a pixel that no loss term uses


def _check(pred: Tensor, targets: Tensor) -> None:
    assert pred.ndim == 2 and targets.ndim == 2 and pred.shape[1] == targets.shape[1], \
        f"pred [K, P] and targets [L, P] must share P, got {tuple(pred.shape)} and {tuple(targets.shape)}"


def slot_probs(keys: Tensor, slot_features: Tensor, temperature: float = 1.0) -> Tensor:
    """Per-point slot distribution [M, K] = softmax_k(f_k . q_k / temperature) from the instance field's
    features keys [M, d] and the slot vectors slot_features [K, d] (the instance head's last linear layer)."""
    assert keys.ndim == 2 and slot_features.ndim == 2 and keys.shape[1] == slot_features.shape[1], \
        f"keys [M, d] and slot_features [K, d] must share d, got {tuple(keys.shape)} and {tuple(slot_features.shape)}"
    return torch.softmax(keys @ slot_features.T / temperature, dim=-1)


def slot_cost(pred: Tensor, targets: Tensor) -> Tensor:
    """C [L, K] = -sum_p pred[k, p] targets[l, p] / sum_p targets[l, p]: minus the mean rendered probability
    of slot k over the pixels of mask l (0 for an empty mask). No gradient is needed (detach pred)."""
    _check(pred, targets)
    t = targets.to(pred.dtype)
    return -(t @ pred.T) / t.sum(1, keepdim=True).clamp_min(1.0)


def slot_targets(targets: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Slot index [P] long of every pixel: cols[k] on the pixels of mask rows[k], IGNORE elsewhere.

    targets [L, P] in {0, 1} (masks of one frame do not overlap; where they would, the later match wins);
    rows, cols [K'] the Hungarian match (mask rows[k] -> slot cols[k])."""
    assert targets.ndim == 2 and rows.shape == cols.shape
    out = torch.full((targets.shape[1],), IGNORE, dtype=torch.long, device=targets.device)
    for r, c in zip(rows.tolist(), cols.tolist()):
        out[targets[r] > 0] = int(c)
    return out


def slot_ce(pred: Tensor, target: Tensor, clamp: float = LOG_CLAMP) -> Tensor:
    """Cross-entropy over the slots: scalar = mean over pixels with target != IGNORE of -log pred[target, p]
    (pred clamped to >= clamp). pred [K, P] rendered slot probabilities, target [P] long. Zero (attached
    to the graph) when no pixel has a target."""
    assert pred.ndim == 2 and target.shape == (pred.shape[1],), \
        f"pred [K, P] and target [P], got {tuple(pred.shape)} and {tuple(target.shape)}"
    keep = torch.nonzero(target != IGNORE).reshape(-1)
    if keep.numel() == 0:
        return pred.sum() * 0.0
    p = pred[target[keep], keep]                                                   # [P'] probability of the target slot
    return -torch.log(p.clamp_min(clamp)).mean()


def frame_segments(instance: Tensor, semantic: Tensor, thing_class: Tensor) -> Tensor:
    """Segment index [P] long (0..S-1, IGNORE = in no segment) of one frame's sampled pixels.

    instance [P] per-frame mask ids (0 = none), semantic [P] class ids (0 = unlabelled), thing_class [C]
    bool per class id. Segments: each thing mask (by its id), and each stuff class's labelled region
    (stuff has no mask ids in the scene format). Thing pixels without a mask id are in no segment."""
    assert instance.shape == semantic.shape and instance.ndim == 1
    sem = semantic.long()
    inst = instance.long()
    thing = thing_class.to(sem.device)[sem.clamp(0, thing_class.shape[0] - 1)]   # [P] bool
    on_thing = thing & (inst > 0)
    on_stuff = (sem > 0) & ~thing
    key = torch.where(on_thing, inst, -sem)                                        # thing masks > 0, stuff < 0
    on = on_thing | on_stuff
    seg = torch.full(sem.shape, IGNORE, dtype=torch.long, device=sem.device)
    if bool(on.any()):
        _, inverse = torch.unique(key[on], return_inverse=True)
        seg[on] = inverse
    return seg


def segment_targets(pred_class: Tensor, segment: Tensor, min_pixels: int = 1) -> Tensor:
    """Segment-consistency targets [P] long: the majority of pred_class over each segment's pixels
    (ties: the smallest class id) for every pixel of that segment; IGNORE for pixels in no segment
    (segment == IGNORE) and in segments with fewer than min_pixels pixels.

    pred_class [P] long the predicted class of each pixel (argmax of the rendered semantics),
    segment [P] long segment index (`frame_segments`)."""
    assert pred_class.shape == segment.shape and pred_class.ndim == 1
    out = torch.full(segment.shape, IGNORE, dtype=torch.long, device=segment.device)
    for s in torch.unique(segment[segment != IGNORE]).tolist():
        sel = segment == s
        if int(sel.sum()) < min_pixels:
            continue
        out[sel] = int(torch.bincount(pred_class[sel].long()).argmax())            # first maximum = smallest id
    return out
