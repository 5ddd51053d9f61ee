"""The instance branch as the trainer uses it (METHOD.md sections 4, 5 and 7).

`InstanceBranch` holds the Gaussian-modulated query tokens, the token class head h_SI and the
panoptic column layout of the scene's classes. The maths lives in tokens/ (attention,
assignment, adjustment) and recon/model/panoptic_head.py (Bayes head); this module glues them to the
frame bank and the rendered quantities:

* `init_tokens_from_bank`: initial token means from 2D thing masks back-projected with depth;
* `assignment_losses`: per frame of a step, the 2D thing masks on the sampled pixels, the
  dice + BCE cost against the rendered token masks, the Hungarian match, L_ins, L_c and the
  panoptic targets of Eq. 33;
* `surface_points`: back-projected depth points for the token-adjustment checks.

The Panoptic Lifting baseline (`tokens.formulation=slots`; maths in tokens/slots.py) uses the same
branch: its `tokens` are the K = tokens.n_slots slots, of which only the features are used, as the
last linear layer of the instance head (slot distribution = softmax(f_k . q_k / temperature) over the
instance field's features f_k); the Gaussians, the class features and the class head are unused, and
the count never changes (no adjustment). `slot_losses` replaces `assignment_losses` for it, and
`segment_consistency_loss` adds Panoptic Lifting's segment-consistency term on the semantic field.
Keeping the slots in an InstanceTokens lets the optimiser, the checkpoints and the token -> instance id
map of the labelled mesh serve both formulations unchanged.

Semantic column c is class id c (column 0 = "unlabelled"), as in the semantic field.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from recon.model.losses import semantic_loss
from recon.model.panoptic_head import IGNORE, panoptic_layout, panoptic_targets
from recon.model.sampling import FrameBank, RayBatch
from recon.core.settings import TokenSettings
from fields.stages import stage
from tokens.adjust import TokenAdjustStrategy
from tokens.assign import assignment_cost, class_loss, hungarian, instance_loss, masks_from_frame, match_coverage
from tokens.attention import instance_probs
from tokens.slots import IGNORE as SLOT_IGNORE, frame_segments, segment_targets, slot_ce, slot_cost, slot_probs, \
    slot_targets
from tokens.tokens import InstanceTokens, TokenClassHead


class InstanceBranch(nn.Module):
    """Tokens + class head + the panoptic layout (stuff columns, thing mask) of one scene."""

    def __init__(self, tokens: InstanceTokens, thing_ids: list[int], n_sem_columns: int, s: TokenSettings,
                 class_hidden: int = 32, keep_untokened_classes: bool = False):
        super().__init__()
        assert thing_ids, "the instance branch needs at least one thing class"
        self.tokens = tokens
        self.class_head = TokenClassHead(tokens.class_dim, len(thing_ids), hidden=class_hidden)
        self.thing_ids = [int(c) for c in thing_ids]
        thing_mask, stuff_ids, stuff_index = panoptic_layout(n_sem_columns, self.thing_ids)
        self.register_buffer("thing_mask", thing_mask, persistent=False)          # [C] bool
        self.register_buffer("stuff_ids", stuff_ids, persistent=False)            # [C_stuff] class id per stuff column
        self.stuff_index = stuff_index                                             # {stuff class id: column}
        self.spatial_prior = bool(s.spatial_prior)
        self.temperature = float(s.temperature)
        self.slots = s.formulation == "slots"                                     # Panoptic Lifting's softmax slots
        # labelling with the head: a point whose semantic field names a thing class no token carries keeps that
        # class (panoptic.keep_untokened_classes; recon/model/inference.py)
        self.keep_untokened_classes = bool(keep_untokened_classes)

    @property
    def n_stuff(self) -> int:
        return int(self.stuff_ids.shape[0])

    def probs(self, keys: Tensor, points: Tensor) -> Tensor:
        """A [M, N] = S * G (Eq. 6-8; G = 1 with the spatial prior off) at points [M, 3] with keys [M, d];
        with slots: the softmax over the N slots at each point (rows sum to 1; points unused)."""
        if self.slots:
            return slot_probs(keys, self.tokens.features, self.temperature)
        return instance_probs(keys, points, self.tokens, spatial_prior=self.spatial_prior,
                              temperature=self.temperature)

    def class_logits(self) -> Tensor:
        """l_SI(Q_i) [N, C_thing] (Eq. 22)."""
        return self.class_head(self.tokens.class_features)

    @torch.no_grad()
    def token_classes(self) -> tuple[Tensor, Tensor]:
        """(class id [N] long of each token = thing_ids[argmax l_SI], its sigmoid probability [N])."""
        logits = self.class_logits()
        best = logits.argmax(-1)
        ids = torch.tensor(self.thing_ids, dtype=torch.long, device=best.device)[best]
        return ids, torch.sigmoid(logits.gather(1, best[:, None]).squeeze(1))


# ----------------------------------------------------------------------------- initialisation

def _frame_rows(n_frames: int, n_pick: int) -> list[int]:
    """Evenly spaced bank rows (all of them when n_pick >= n_frames)."""
    if n_pick <= 0 or n_pick >= n_frames:
        return list(range(n_frames))
    return sorted({int(round(x)) for x in np.linspace(0, n_frames - 1, n_pick)})


def backproject(bank: FrameBank, row: int, pixels: Tensor) -> Tensor:
    """World points [P, 3] (m) of bank row `row` at flat pixels [P] with valid depth."""
    c2w = bank.c2w[row]                                                            # [4, 4]
    d = bank.depth_ray_m[row, pixels]                                              # [P] along-ray distance, m
    dirs = bank.dirs_cam_unit[pixels] @ c2w[:3, :3].T                              # [P, 3] world, unit
    return c2w[:3, 3] + dirs * d[:, None]


def mask_point_sets(bank: FrameBank, thing_ids: list[int], rows: list[int], max_points: int,
                    gen: torch.Generator) -> tuple[list[Tensor], list[int], int]:
    """Back-projected points of every thing mask in the bank rows `rows`.

    Returns (point sets [K_m, 3] m, class id of each, the largest number of thing masks in one frame)."""
    assert bank.instance is not None and bank.semantic is not None, "the frame bank has no masks"
    things = set(thing_ids)
    sets, classes, most = [], [], 0
    for row in rows:
        inst = bank.instance[row].long()                                           # [P]
        sem = bank.semantic[row].long()
        valid = bank.depth_ray_m[row] > 0
        n_here = 0
        for mid in torch.unique(inst[inst > 0]).tolist():
            sel = inst == mid
            cls = int(torch.mode(sem[sel]).values)
            if cls not in things:
                continue
            n_here += 1
            pix = torch.nonzero(sel & valid).reshape(-1)
            if pix.numel() < 3:
                continue
            if pix.numel() > max_points:
                pix = pix[torch.randperm(pix.numel(), generator=gen)[:max_points]]
            sets.append(backproject(bank, row, pix))
            classes.append(cls)
        most = max(most, n_here)
    return sets, classes, most


def count_clusters(centroids: np.ndarray, classes: list[int], radius_m: float) -> int:
    """Greedy count of 3D objects: a mask centroid [K, 3] starts a new cluster unless it lies
    within radius_m of an existing cluster centre of the same class."""
    centres: list[tuple[int, np.ndarray]] = []
    for c, p in zip(classes, centroids):
        if not any(cc == c and np.linalg.norm(p - q) <= radius_m for cc, q in centres):
            centres.append((c, p))
    return len(centres)


def init_tokens_from_bank(bank: FrameBank, thing_ids: list[int], s: TokenSettings, gen: torch.Generator,
                          log=lambda msg: None) -> InstanceTokens:
    """Initial tokens (METHOD.md section 4 "Initialisation"): means from back-projected thing masks.

    Count (tokens.n_init = 0): max(2 x the largest number of thing masks in one frame, 1.5 x
    the number of same-class mask clusters in 3D), capped at adjust_rules.max_tokens; scale: the
    median half-size of the masks' 3D extents (or tokens.init_scale_m).

    tokens.formulation=slots: tokens.n_slots slots with features ~ N(0, 0.1^2) (the means, unused,
    at the origin); the masks are not read."""
    if s.formulation == "slots":
        log(f"slots: {s.n_slots} instance slots (the Panoptic Lifting formulation)")
        return InstanceTokens(torch.zeros(s.n_slots, 3), 1.0, s.feat_dim, s.class_dim, generator=gen)
    rows = _frame_rows(bank.n_frames, s.init_frames)
    sets, classes, most = mask_point_sets(bank, thing_ids, rows, max_points=256, gen=gen)
    if not sets:
        raise ValueError("no thing mask has valid depth in the training frames: cannot place instance tokens "
                         "(switch the branch off with tokens.enabled=false)")
    half = [0.5 * float(np.linalg.norm(np.percentile(p.numpy(), 95, 0) - np.percentile(p.numpy(), 5, 0)))
            for p in sets]
    scale = s.init_scale_m if s.init_scale_m > 0 else float(np.clip(np.median(half), 0.05, 1.0))
    centroids = np.stack([p.mean(0).numpy() for p in sets])
    clusters = count_clusters(centroids, classes, radius_m=scale)
    cap = s.adjust_rules.max_tokens
    n = s.n_init if s.n_init > 0 else max(2 * most, int(math.ceil(1.5 * clusters)))
    n = max(1, min(n, cap))
    log(f"tokens: {n} initial tokens from {len(sets)} thing masks in {len(rows)} frames (at most {most} per "
        f"frame, about {clusters} objects in 3D), scale {scale:.2f} m")
    return InstanceTokens.init_from_points(sets, n, scale, s.feat_dim, s.class_dim, generator=gen)


def surface_points(bank: FrameBank, n_points: int, gen: torch.Generator) -> Tensor:
    """[M, 3] world points back-projected from random valid depth pixels of the bank (M <= n_points)."""
    rows = torch.randint(bank.n_frames, (n_points,), generator=gen)
    pix = torch.randint(bank.n_pixels, (n_points,), generator=gen)
    ok = bank.depth_ray_m[rows, pix] > 0
    rows, pix = rows[ok], pix[ok]
    c2w = bank.c2w[rows]                                                           # [M, 4, 4]
    dirs = torch.einsum("mij,mj->mi", c2w[:, :3, :3], bank.dirs_cam_unit[pix])
    return c2w[:, :3, 3] + dirs * bank.depth_ray_m[rows, pix][:, None]


# ----------------------------------------------------------------------------- per-step losses

def blind_matches(pred: Tensor, targets: Tensor, rows: Tensor, cols: Tensor, rays: RayBatch, ray_index: Tensor,
                  max_overlap: float) -> list[tuple[int, tuple[float, float, float]]]:
    """(token, 3D centroid in m of the mask's sampled pixels with valid depth) for each match of one frame
    whose token covers less than max_overlap of the mask (tokens.assign.match_coverage).
    pred [N, P], targets [L, P] over the frame's P labelled rays, ray_index [P] their rows in `rays`."""
    cover = match_coverage(pred, targets, rows, cols)                              # [K]
    out = []
    for k in torch.nonzero(cover < max_overlap).reshape(-1).tolist():
        sel = ray_index[targets[int(rows[k])].cpu() > 0]                           # [S] rays of the mask
        sel = sel[rays.depth[sel] > 0]
        if sel.numel() == 0:
            continue
        pts = rays.origins[sel] + rays.dirs[sel] * rays.depth[sel][:, None]        # [S, 3] world m
        out.append((int(cols[k]), tuple(pts.mean(0).tolist())))
    return out


@dataclass
class AssignmentResult:
    l_ins: Tensor               # scalar, mean over the frames with masks
    l_cls: Tensor               # scalar
    pan_target: Tensor          # [R] long panoptic column or IGNORE
    n_masks: int                # 2D thing masks seen in the step
    n_matched: int              # of which matched to a token
    mean_cost: float            # mean matched cost (dice + bce)


def assignment_losses(branch: InstanceBranch, token_masks: Tensor, rays: RayBatch, *, use_dice: bool,
                      min_pixels: int, strategy: TokenAdjustStrategy | None, it: int) -> AssignmentResult:
    """Eq. 27-31 and the targets of Eq. 33 for a step whose rays come from a few frames.

    token_masks [R, N] rendered token masks Mbar. Per frame: the labelled pixels (semantic > 0)
    enter the cost and L_ins (unlabelled gaps between shrunken masks are left out); Hungarian
    match; matched masks give the token targets of the panoptic loss.

    The mask bookkeeping runs on the rays' device (the trainer passes the CPU batch); targets
    move to token_masks' device, and pan_target [R] comes back there."""
    assert rays.semantic is not None and rays.instance is not None, "the rays carry no masks"
    R, N = token_masks.shape
    assert rays.semantic.shape == (R,), f"token_masks [R, N] and rays must agree, got {tuple(token_masks.shape)}"
    dev = token_masks.device
    pan_target = torch.full((R,), IGNORE, dtype=torch.long, device=rays.semantic.device)
    l_ins, l_cls = token_masks.sum() * 0.0, token_masks.sum() * 0.0
    n_frames, n_masks, n_matched, costs = 0, 0, 0, []
    logits = branch.class_logits()                                                 # [N, C_thing]
    for f in torch.unique(rays.frame).tolist():
        in_f = torch.nonzero(rays.frame == f).reshape(-1)                          # [R_f]
        sem, inst = rays.semantic[in_f], rays.instance[in_f]
        lab = torch.nonzero(sem > 0).reshape(-1)
        targets, classes, mask_ids = masks_from_frame(inst[lab], sem[lab], {}, branch.thing_ids, min_pixels)
        targets, classes = targets.to(dev), classes.to(dev)
        mask_to_token: dict[int, int] = {}
        if lab.numel() > 0:
            pred = token_masks[in_f[lab].to(dev)].T                                # [N, P]
            with stage("hungarian"):
                cost = assignment_cost(pred.detach(), targets).cpu()               # [L, N] (small; one copy)
                rows, cols = hungarian(cost)                                       # [K] each, on the CPU
            if strategy is not None:
                blind = blind_matches(pred, targets, rows, cols, rays, in_f[lab],
                                      strategy.cfg.blind_max_overlap) if strategy.cfg.blind_max_overlap > 0 else None
                strategy.after_assignment(it, rows, cols, cost, N, blind=blind)
            l_ins = l_ins + instance_loss(pred, targets, rows, cols, use_dice=use_dice)
            l_cls = l_cls + class_loss(logits, classes[rows], cols)
            mask_to_token = {int(mask_ids[r]): int(c) for r, c in zip(rows.tolist(), cols.tolist())}
            n_frames += 1
            n_masks += int(targets.shape[0])
            n_matched += int(rows.numel())
            if rows.numel():
                costs.append(float(cost[rows, cols].mean()))
        pan_target[in_f] = panoptic_targets(sem, inst, branch.stuff_index, mask_to_token, n_stuff=branch.n_stuff)
    k = max(n_frames, 1)
    return AssignmentResult(l_ins / k, l_cls / k, pan_target.to(dev), n_masks, n_matched,
                            float(np.mean(costs)) if costs else float("nan"))


# ----------------------------------------------------------------------------- the Panoptic Lifting baseline


def slot_losses(branch: InstanceBranch, slot_masks: Tensor, rays: RayBatch, *, min_pixels: int) -> AssignmentResult:
    """Panoptic Lifting's instance loss for a step whose rays come from a few frames (tokens/slots.py).

    slot_masks [R, K] rendered slot probabilities. Per frame: the thing masks on the labelled sampled
    pixels (as in `assignment_losses`), the cost -mean probability of each slot over each mask, the
    Hungarian match, then the cross-entropy over the K slots on the matched masks' pixels (other pixels
    ignored). l_ins is the mean over the frames with masks; l_cls is 0 and pan_target all IGNORE (no class
    head, no panoptic head)."""
    assert rays.semantic is not None and rays.instance is not None, "the rays carry no masks"
    R, K = slot_masks.shape
    assert rays.semantic.shape == (R,), f"slot_masks [R, K] and rays must agree, got {tuple(slot_masks.shape)}"
    dev = slot_masks.device
    l_ins = slot_masks.sum() * 0.0
    n_frames, n_masks, n_matched, costs = 0, 0, 0, []
    for f in torch.unique(rays.frame).tolist():
        in_f = torch.nonzero(rays.frame == f).reshape(-1)                          # [R_f]
        sem, inst = rays.semantic[in_f], rays.instance[in_f]
        lab = torch.nonzero(sem > 0).reshape(-1)
        if lab.numel() == 0:
            continue
        targets, _, _ = masks_from_frame(inst[lab], sem[lab], {}, branch.thing_ids, min_pixels)
        if targets.shape[0] == 0:
            continue
        targets = targets.to(dev)
        pred = slot_masks[in_f[lab].to(dev)].T                                     # [K, P]
        with stage("hungarian"):
            cost = slot_cost(pred.detach(), targets).cpu()                         # [L, K]
            rows, cols = hungarian(cost)
        l_ins = l_ins + slot_ce(pred, slot_targets(targets, rows, cols))
        n_frames += 1
        n_masks += int(targets.shape[0])
        n_matched += int(rows.numel())
        if rows.numel():
            costs.append(float(cost[rows, cols].mean()))
    pan_target = torch.full((R,), IGNORE, dtype=torch.long, device=dev)
    return AssignmentResult(l_ins / max(n_frames, 1), slot_masks.sum() * 0.0, pan_target, n_masks, n_matched,
                            float(np.mean(costs)) if costs else float("nan"))


def segment_consistency_loss(sem_probs: Tensor, rays: RayBatch, thing_class: Tensor, *, min_pixels: int) -> Tensor:
    """Panoptic Lifting's segment-consistency loss: per frame of the step, each 2D segment (a thing mask,
    or a stuff class's region; tokens.slots.frame_segments) of at least min_pixels sampled pixels takes the
    majority of the predicted classes (argmax of the rendered semantics) over those pixels as the target
    of all of them; the loss is the cross-entropy of the rendered semantics against these targets, mean
    over the pixels with one (column 0 "unlabelled" is never a target). sem_probs [R, C]; thing_class [C]
    bool per class id. Zero (attached to the graph) when no pixel has a target."""
    assert rays.semantic is not None and rays.instance is not None, "the rays carry no masks"
    R, C = sem_probs.shape
    assert rays.semantic.shape == (R,), f"sem_probs [R, C] and rays must agree, got {tuple(sem_probs.shape)}"
    pred_class = sem_probs.detach().argmax(-1).cpu()                               # [R]
    target = torch.full((R,), SLOT_IGNORE, dtype=torch.long)
    for f in torch.unique(rays.frame).tolist():
        in_f = torch.nonzero(rays.frame == f).reshape(-1).cpu()
        seg = frame_segments(rays.instance[in_f].cpu(), rays.semantic[in_f].cpu(), thing_class.cpu())
        target[in_f] = segment_targets(pred_class[in_f], seg, min_pixels)
    return semantic_loss(sem_probs, target.clamp_min(0).to(sem_probs.device))     # IGNORE -> 0 = skipped
