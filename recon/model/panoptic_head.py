"""Parameter-free panoptic head (PanopticRecon++ Eq. 18-21, 33) and panoptic inference (Fig. 5).

Column layout of the panoptic distribution [..., C_stuff + N]:
  * columns 0 .. C_stuff-1: the stuff columns = every semantic column that is NOT a thing
    class, in increasing semantic column order. With the project's semantic layout (column c =
    class id c, column 0 = "unlabelled") column 0 is a stuff column too; it maps back to class
    id 0 (unlabelled) at inference and never gets a training target;
  * columns C_stuff .. C_stuff+N-1: token i at column C_stuff + i.

Instance ids at inference: stuff -> instance 0 ("no instance"); token i -> instance id i + 1.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor

IGNORE = -1


def panoptic_layout(n_sem_columns: int, thing_class_ids: Sequence[int]) -> tuple[Tensor, Tensor, dict[int, int]]:
    """For a semantic field whose column c is class id c: (thing_mask [C] bool,
    stuff_class_ids [C_stuff] long (class id of each stuff column), stuff_class_index {class id: column})."""
    thing_mask = torch.zeros(n_sem_columns, dtype=torch.bool)
    thing_mask[list(thing_class_ids)] = True
    stuff_ids = torch.nonzero(~thing_mask).reshape(-1)
    return thing_mask, stuff_ids, {int(c): k for k, c in enumerate(stuff_ids.tolist())}


def panoptic_probs(sem_probs: Tensor, inst_probs: Tensor, thing_mask: Tensor, eps: float = 1e-6) -> Tensor:
    """Eq. 18: l_P [..., C_stuff + N] = [ l_stuff , (sum l_thing) * l_I / sum_i l_I ].

    sem_probs [..., C] a distribution over the semantic columns (softmax), inst_probs [..., N]
    the token mask probabilities A in [0, 1], thing_mask [C] bool. Eps handling: the instance
    part uses (l_I + eps / N) / (sum_i l_I + eps), i.e. a mixture with a uniform distribution of
    weight eps / (sum l_I + eps); it is a distribution over tokens for any l_I >= 0 (uniform where
    every l_I ~ 0, so the thing mass is spread evenly), is smooth, and changes l_I / sum l_I by
    at most ~eps / sum l_I. Hence the output sums to sum(sem_probs) = 1 exactly (Eq. 19-21).
    """
    C, N = sem_probs.shape[-1], inst_probs.shape[-1]
    assert thing_mask.shape == (C,) and thing_mask.dtype == torch.bool, f"thing_mask must be [{C}] bool"
    assert sem_probs.shape[:-1] == inst_probs.shape[:-1], \
        f"sem_probs [..., C] and inst_probs [..., N] need the same leading shape, got {tuple(sem_probs.shape)}, " \
        f"{tuple(inst_probs.shape)}"
    assert N >= 1, "need at least one token"
    stuff = sem_probs[..., ~thing_mask]                                            # [..., C_stuff]
    thing_mass = sem_probs[..., thing_mask].sum(-1, keepdim=True)                  # [..., 1] P(thing)
    inst_cond = (inst_probs + eps / N) / (inst_probs.sum(-1, keepdim=True) + eps)  # [..., N] P(token | thing)
    return torch.cat([stuff, thing_mass * inst_cond], dim=-1)


def panoptic_loss(rendered_pan_probs: Tensor, target: Tensor, ignore: int = IGNORE, clamp: float = 1e-6) -> Tensor:
    """Eq. 33: mean over non-ignored rays of -log(clamp(u_lP(x)[target])).

    rendered_pan_probs [R, C_stuff + N] volume-rendered l_P (sums to the ray's accumulated
    opacity, <= 1; not renormalised), target [R] long column index or `ignore`. Zero (still
    attached to the graph) when every ray is ignored."""
    assert rendered_pan_probs.ndim == 2 and target.shape == (rendered_pan_probs.shape[0],)
    valid = target != ignore
    if not bool(valid.any()):
        return rendered_pan_probs.sum() * 0.0
    t = target[valid].long()
    assert int(t.min()) >= 0 and int(t.max()) < rendered_pan_probs.shape[1], "panoptic target out of range"
    p = rendered_pan_probs[valid].gather(1, t[:, None]).squeeze(1)                # [R_valid]
    return -torch.log(p.clamp_min(clamp)).mean()


def panoptic_targets(sem: Tensor, inst: Tensor, stuff_class_index: Mapping[int, int],
                     mask_to_token: Mapping[int, int], n_stuff: int | None = None, ignore: int = IGNORE) -> Tensor:
    """Per-ray panoptic target [R] long from the 2D masks of the ray's frame and that frame's match.

    sem [R] class id (0 = unlabelled), inst [R] per-frame mask id (0 = none),
    stuff_class_index {stuff class id: stuff column}, mask_to_token {mask id: token index} (this
    frame's Hungarian match), n_stuff = C_stuff (default len(stuff_class_index)).
    Rules: mask pixel (inst > 0) of a matched mask -> C_stuff + token; of an unmatched mask ->
    ignore; else a stuff class (id != 0) -> its stuff column; anything else (unlabelled, thing
    class without a mask) -> ignore. Rays from several frames: call once per frame.
    """
    assert sem.ndim == 1 and inst.shape == sem.shape
    n_stuff = len(stuff_class_index) if n_stuff is None else n_stuff
    out = torch.full(sem.shape, ignore, dtype=torch.long)
    for cid, col in stuff_class_index.items():
        if int(cid) != 0:
            out[(sem == int(cid)) & (inst <= 0)] = int(col)
    for mid, tok in mask_to_token.items():
        out[inst == int(mid)] = n_stuff + int(tok)
    return out


def panoptic_inference(pan_probs: Tensor, stuff_class_ids: Tensor | Sequence[int],
                       token_class: Tensor | Sequence[int]) -> tuple[Tensor, Tensor]:
    """Fig. 5: (semantic [...] long class id, instance [...] long) from l_P [..., C_stuff + N].

    argmax column k: k < C_stuff -> semantic stuff_class_ids[k], instance 0; k = C_stuff + i ->
    semantic token_class[i] (a class id, e.g. thing_class_ids[argmax h_SI(F_i)]), instance i + 1.
    Semantic and instance labels are consistent by construction."""
    stuff_ids = torch.as_tensor(stuff_class_ids, dtype=torch.long).reshape(-1)
    tok_cls = torch.as_tensor(token_class, dtype=torch.long).reshape(-1)
    C_stuff, N = stuff_ids.shape[0], tok_cls.shape[0]
    assert pan_probs.shape[-1] == C_stuff + N, f"pan_probs last dim {pan_probs.shape[-1]} != {C_stuff} + {N}"
    k = torch.argmax(pan_probs, dim=-1)                                            # [...]
    column_class = torch.cat([stuff_ids, tok_cls])                                 # [C_stuff + N]
    column_inst = torch.cat([torch.zeros(C_stuff, dtype=torch.long), torch.arange(1, N + 1)])
    return column_class[k], column_inst[k]
