"""Per-frame assignment of 2D thing masks to tokens and the instance / class losses (Eq. 27-31).

Shapes: N tokens, L 2D thing masks of one frame, P sampled pixels of that frame, K = number
of matched (mask, token) pairs = min(L, N). pred [N, P] are the rendered token masks
Mbar_i(x) in (0, 1); target [L, P] the 2D masks in {0, 1}.

Pixels: every function uses all P columns it is given. To leave unlabelled pixels (semantic
id 0, e.g. the gaps between shrunken masks) out of the cost and the loss, select the columns
before calling (``pred[:, labelled]``, ``targets[:, labelled]``, labelled = semantic > 0).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

LOG_CLAMP = 1e-6  # probabilities are clamped to [LOG_CLAMP, 1 - LOG_CLAMP] before the logs (max 13.8 nats)


def _check(pred: Tensor, target: Tensor) -> None:
    assert pred.ndim == 2 and target.ndim == 2 and pred.shape[1] == target.shape[1], \
        f"pred [N, P] and target [L, P] must share P, got {tuple(pred.shape)} and {tuple(target.shape)}"


def dice_cost(pred: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """Eq. 28 for every (mask l, token i): C [L, N] = 1 - (2 sum(Mbar_i M_l) + eps) / (sum Mbar_i + sum M_l + eps)."""
    _check(pred, target)
    target = target.to(pred.dtype)
    inter = target @ pred.T                                                        # [L, N]
    denom = target.sum(-1)[:, None] + pred.sum(-1)[None, :]                        # [L, N]
    return 1.0 - (2.0 * inter + eps) / (denom + eps)


def bce_cost(pred: Tensor, target: Tensor, clamp: float = LOG_CLAMP) -> Tensor:
    """Eq. 29 for every pair: C [L, N] = -mean_x( M_l log Mbar_i + (1 - M_l) log(1 - Mbar_i) )."""
    _check(pred, target)
    target = target.to(pred.dtype)
    p = pred.clamp(clamp, 1.0 - clamp)
    log_p, log_q = torch.log(p), torch.log1p(-p)                                   # [N, P] each
    P = pred.shape[1]
    return -(target @ log_p.T + (1.0 - target) @ log_q.T) / max(P, 1)              # [L, N]


def assignment_cost(pred: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """Eq. 27: C [L, N] = dice + bce (no gradient needed; detach pred before calling if you like)."""
    return dice_cost(pred, target, eps) + bce_cost(pred, target)


def hungarian(cost: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """Minimum-cost matching of masks (rows) to tokens (cols): rows [K], cols [K] long, K = min(L, N).

    Rows come back sorted. L > N is allowed (only N masks get a token). NaN / inf costs are
    replaced by a large finite value so that scipy never fails."""
    c = cost.detach().cpu().double().numpy() if torch.is_tensor(cost) else np.asarray(cost, dtype=np.float64)
    assert c.ndim == 2, f"cost must be [L, N], got {c.shape}"
    if c.size == 0:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    finite = np.isfinite(c)
    if not finite.all():
        big = (np.abs(c[finite]).max() if finite.any() else 0.0) * 10 + 1e6
        c = np.where(finite, c, big)
    r, k = linear_sum_assignment(c)
    return torch.as_tensor(r, dtype=torch.long), torch.as_tensor(k, dtype=torch.long)


def matched_targets(targets: Tensor, n_tokens: int, rows: Tensor, cols: Tensor) -> tuple[Tensor, Tensor]:
    """(M' [N, P] float: token cols[k] gets mask rows[k], others all zero;  matched [N] bool)."""
    assert targets.ndim == 2 and rows.shape == cols.shape
    dev = targets.device
    rows, cols = rows.to(dev), cols.to(dev)
    out = torch.zeros(n_tokens, targets.shape[1], dtype=torch.float32, device=dev)
    out[cols] = targets[rows].float()
    matched = torch.zeros(n_tokens, dtype=torch.bool, device=dev)
    matched[cols] = True
    return out, matched


def instance_loss(pred: Tensor, targets: Tensor, rows: Tensor, cols: Tensor, use_dice: bool = True,
                  eps: float = 1.0, unmatched_weight: float = 1.0) -> Tensor:
    """Eq. 30 over one frame: scalar = (1/N) sum_i [ bce_i + use_dice * matched_i * dice_i ].

    pred [N, P] rendered token masks, targets [L, P] 2D masks, (rows, cols) the Hungarian match.
    Matched tokens get their mask as target; unmatched tokens get an all-zero target and only
    the BCE term (times unmatched_weight): the dice of an empty target is ~1 regardless of the
    prediction's shape, so it would only add noise. bce_i is the mean over the P pixels; the
    mean over all N tokens follows (so the matched part weighs K/N; scale with the loss weight).
    use_dice=False drops the dice term (late training, Sec. V-D).
    """
    _check(pred, targets)
    N, P = pred.shape
    tgt, matched = matched_targets(targets, N, rows, cols)                        # [N, P], [N]
    tgt = tgt.to(pred.dtype)
    p = pred.clamp(LOG_CLAMP, 1.0 - LOG_CLAMP)
    bce = -(tgt * torch.log(p) + (1.0 - tgt) * torch.log1p(-p)).mean(-1)          # [N]
    w = torch.where(matched, torch.ones_like(bce), torch.full_like(bce, unmatched_weight))
    per_token = w * bce
    if use_dice and matched.any():
        inter = (pred * tgt).sum(-1)                                               # [N]
        dice = 1.0 - (2.0 * inter + eps) / (pred.sum(-1) + tgt.sum(-1) + eps)     # [N]
        per_token = per_token + torch.where(matched, dice, torch.zeros_like(dice))
    return per_token.mean()


def class_loss(class_logits: Tensor, target_class: Tensor, cols: Tensor) -> Tensor:
    """Eq. 31: BCE(sigmoid(l_SI(Q_i)), one-hot class of its mask) for the matched tokens.

    class_logits [N, C_thing] (h_SI output), target_class [K] index into the thing classes of
    the mask matched to token cols[k] (i.e. classes[rows]). Sigmoid per class (a binary
    prediction per thing class, as Eq. 31 writes it), summed over classes, mean over the K
    matched tokens. Zero (still attached to the graph) when nothing is matched.
    """
    assert class_logits.ndim == 2 and target_class.shape == cols.shape, "class_logits [N, C], target [K], cols [K]"
    if cols.numel() == 0:
        return class_logits.sum() * 0.0
    logits = class_logits[cols.to(class_logits.device)]                            # [K, C_thing]
    onehot = F.one_hot(target_class.long(), class_logits.shape[1]).to(logits)
    return F.binary_cross_entropy_with_logits(logits, onehot, reduction="none").sum(-1).mean()


def masks_from_frame(instance_ids: Tensor, semantic: Tensor, scores: Mapping, thing_class_ids: Sequence[int],
                     min_pixels: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """The thing masks of one frame, restricted to its P sampled pixels.

    instance_ids [P] long (per-frame mask id, 0 = none), semantic [P] long (class id, 0 =
    unlabelled), scores {mask id (int or str): {"class": c, "score": s}}. A mask's class is
    scores[id]["class"] when present, else the most common semantic id among its pixels; masks
    whose class is not a thing class, and masks with fewer than min_pixels samples, are dropped.
    Returns targets [L, P] float in {0, 1}, classes [L] long (index into thing_class_ids),
    mask_ids [L] long (ascending).
    """
    assert instance_ids.ndim == 1 and semantic.shape == instance_ids.shape, "instance_ids and semantic must be [P]"
    thing_index = {int(c): k for k, c in enumerate(thing_class_ids)}
    ids, counts = torch.unique(instance_ids[instance_ids > 0], return_counts=True)
    rows, classes, mask_ids = [], [], []
    for mid, cnt in zip(ids.tolist(), counts.tolist()):
        if cnt < min_pixels:
            continue
        sel = instance_ids == mid                                                  # [P]
        entry = scores.get(mid, scores.get(str(mid))) if scores else None
        if entry is not None and "class" in entry:
            cls = int(entry["class"])
        else:
            cls = int(torch.mode(semantic[sel]).values)
        if cls not in thing_index:
            continue
        rows.append(sel.float())
        classes.append(thing_index[cls])
        mask_ids.append(mid)
    P = instance_ids.shape[0]
    targets = torch.stack(rows) if rows else torch.zeros(0, P, device=instance_ids.device)
    return targets, torch.tensor(classes, dtype=torch.long), torch.tensor(mask_ids, dtype=torch.long)


def assignment_stats(cost: Tensor, rows: Tensor, cols: Tensor) -> list[tuple[int, int, int]]:
    """Split evidence of one frame: (token i, mask a, mask b) for every mask b whose minimum-cost
    token i was assigned by the Hungarian match to another mask a (so b got a non-optimal
    token, or none when L > N). cost [L, N]; rows, cols [K] the match."""
    assert cost.ndim == 2 and rows.shape == cols.shape
    if cost.shape[0] == 0 or cost.shape[1] == 0:
        return []
    best = torch.argmin(cost.detach(), dim=1)                                      # [L] best token per mask
    owner = {int(c): int(r) for r, c in zip(rows.tolist(), cols.tolist())}         # token -> mask
    out = []
    for b in range(cost.shape[0]):
        i = int(best[b])
        a = owner.get(i)
        if a is not None and a != b:
            out.append((i, a, b))
    return out


def match_coverage(pred: Tensor, targets: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Share of each matched 2D mask that its token's rendered mask covers: [K] with
    sum_p pred[cols[k], p] * targets[rows[k], p] / sum_p targets[rows[k], p] (0 for an empty mask).
    pred [N, P] rendered token masks in [0, 1], targets [L, P] in {0, 1}; rows, cols [K] the match."""
    assert pred.ndim == 2 and targets.ndim == 2 and pred.shape[1] == targets.shape[1], \
        f"pred [N, P] and targets [L, P] must share P, got {tuple(pred.shape)} and {tuple(targets.shape)}"
    assert rows.shape == cols.shape
    if rows.numel() == 0:
        return torch.zeros(0)
    t = targets[rows.to(targets.device)].float()                                   # [K, P]
    inter = (pred[cols.to(pred.device)].float().detach() * t).sum(1)              # [K]
    return (inter / t.sum(1).clamp_min(1.0)).cpu()
