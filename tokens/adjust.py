"""Dynamic token adjustment (PanopticRecon++ Sec. IV-C; METHOD.md Sec. 7) as a trainer strategy.

Trainer protocol
----------------
Every training step, for every frame of the step after its Hungarian match::

    strategy.after_assignment(it, rows, cols, cost, tokens.n)

and once per step (cheap unless a check is due)::

    if strategy.due(it):
        pts, probs = <surface points [M, 3] m>, <token probabilities there [M, N]>
        change = strategy.step(it, tokens, pts, probs, optimizer=opt)

When ``change`` is not None the tokens were resized in place (new nn.Parameter objects); with
``optimizer=`` given the Adam state was patched too (``resize_adam_state``), otherwise the
trainer must do it with ``change["index_map"]``. Anything else the trainer keeps per token
(e.g. an EMA) must be re-indexed with ``change["index_map"]`` (old row per new row, -1 none).

Rules (our defaults where the paper is silent; all in AdjustConfig)
-------------------------------------------------------------------
* useless: assigned fewer than n_min times (frame matches) in the last window_iters
  iterations. A token younger than window_iters (cloned, or the first observation was less
  than a window ago) is never useless, so a check right after the instance stage starts does
  not wipe out every token.
* duplicate: 3D mask M_i = surface points whose argmax token is i (and whose max probability
  is >= argmax_min_prob, so that stuff points with ~0 probability everywhere do not count) or
  where prob_i > mask_prob_threshold. IoM_ij = |M_i & M_j| / |M_i| (Eq. 9). Going through the
  tokens from the largest mask to the smallest (ties: lower index first), a token is removed
  when its IoM with an already kept (so at least as large) token is >= iom_threshold. Equal
  masks keep the lower index. Tokens with an empty 3D mask are left to the useless rule.
  Duplicates are looked for among the tokens that survive the useless rule.
* split: a token i whose assignment was "stolen" (assign.assignment_stats: some mask b had
  its minimum cost at i but i went to mask a) in at least split_min_events frames of the
  window, at split_persist_checks consecutive checks, is cloned; the clone's mean is moved by
  split_offset_m along the token's longest axis. Clones are appended after the kept tokens;
  the total never exceeds max_tokens. Pruned tokens are never cloned. With split_max_cost > 0
  a frame is evidence only if the lost mask b costs less than that at token i, i.e. the token's
  rendered mask really overlaps b (dice + BCE < 1 needs some overlap); a mask that no token
  covers (a rarely seen object) otherwise "loses" the biggest token and clones it in place.
  From split_until_iters on
  (when > 0) checks only prune: a late clone has too few iterations left to find its object and
  mostly splits one object into two ids.
* blind split (ours, not in the paper; off unless blind_max_overlap > 0): a match is blind when
  the token's rendered mask covers less than blind_max_overlap of the 2D mask's sampled pixels
  (match_coverage); the trainer reports such matches with the 3D centroid of the mask's pixels.
  A kept token with at least blind_min_events blind matches in the window, making up at least
  half of its matches, whose blind centroids have their median at least blind_min_distance_m
  from the token's mean, is cloned there (the clone keeps the class and instance features): a
  rarely seen object whose masks all went to a token elsewhere in the scene (no token renders
  it, so the match was the least bad one) gets a token where its masks are. The far token then
  loses those matches to the clone and is pruned as useless if nothing else needs it. Same
  split_until_iters and max_tokens as the split rule.
* at least min_tokens tokens are always kept (the most assigned ones).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from tokens.assign import assignment_stats
from tokens.tokens import InstanceTokens, resize_adam_state


@dataclass
class AdjustConfig:
    RANGES = {"every_iters": ">=1", "window_iters": ">=1", "n_min": ">=0", "iom_threshold": "[0, 1]",
              "mask_prob_threshold": "[0, 1]", "argmax_min_prob": "[0, 1]", "split_persist_checks": ">=1",
              "split_min_events": ">=1", "split_offset_m": ">=0", "max_tokens": ">=1", "split_until_iters": ">=0",
              "split_max_cost": ">=0", "min_tokens": ">=0", "blind_max_overlap": "[0, 1]", "blind_min_events": ">=1",
              "blind_min_distance_m": ">=0"}   # valid values, checked when the settings are loaded (recon/core/config.py)
    every_iters: int = 200            # a check runs when this many iterations passed since the last one
    window_iters: int = 200           # sliding window of assignment history (iterations)
    n_min: int = 2                    # useless: fewer frame assignments than this in the window
    iom_threshold: float = 0.8        # duplicate: IoM with a larger kept token at least this
    mask_prob_threshold: float = 0.5  # 3D mask: point prob above this ...
    argmax_min_prob: float = 0.1      # ... or argmax token, if the max prob is at least this
    split_persist_checks: int = 2     # split: evidence at this many consecutive checks
    split_min_events: int = 1         # evidence at a check = at least this many frames in the window
    split_offset_m: float = 0.02      # clone mean offset along the longest axis (m)
    max_tokens: int = 64              # splits stop at this many tokens
    split_until_iters: int = 0        # no splits at checks from this iteration on (0 = no limit; prunes go on)
    split_max_cost: float = 0.0       # split evidence only where the lost mask's cost at the token is below this (0 = any)
    min_tokens: int = 1               # pruning never goes below this many tokens
    blind_max_overlap: float = 0.0    # blind split: a match covering less than this share of the mask is blind (0 = off)
    blind_min_events: int = 3         # blind split: blind matches in the window a token needs (and half its matches)
    blind_min_distance_m: float = 0.3  # blind split: only if the blind masks' median centroid is this far from the token
    enabled: bool = True              # the rules run at all (tokens.adjust=false switches them off too)


# ----------------------------------------------------------------------------- pure functions

def iom_matrix(masks: Tensor) -> Tensor:
    """IoM [N, N] (Eq. 9): IoM[i, j] = |M_i & M_j| / |M_i| for masks [N, M] bool; rows with an
    empty mask are 0."""
    assert masks.ndim == 2
    m = masks.to(torch.float64)
    inter = m @ m.T                                                                # [N, N] |M_i & M_j|
    size = m.sum(1, keepdim=True)                                                  # [N, 1] |M_i|
    return torch.where(size > 0, inter / size.clamp_min(1.0), torch.zeros_like(inter))


def duplicate_pairs(masks: Tensor, threshold: float) -> list[tuple[int, int, float]]:
    """(removed token, enclosing kept token, IoM) for the enclosing rule (see module docstring)."""
    assert masks.ndim == 2
    iom = iom_matrix(masks)
    size = masks.sum(1).tolist()
    order = sorted(range(masks.shape[0]), key=lambda i: (-size[i], i))
    kept: list[int] = []
    removed: list[tuple[int, int, float]] = []
    for i in order:
        if size[i] == 0:
            continue
        enclosing = next((j for j in kept if float(iom[i, j]) >= threshold), None)
        if enclosing is None:
            kept.append(i)
        else:
            removed.append((i, enclosing, float(iom[i, enclosing])))
    return removed


def duplicate_tokens(masks: Tensor, threshold: float) -> set[int]:
    """Indices of the tokens to remove as duplicates, masks [N, M] bool."""
    return {i for i, _, _ in duplicate_pairs(masks, threshold)}


def token_masks_3d(probs: Tensor, prob_threshold: float = 0.5, argmax_min_prob: float = 0.1) -> Tensor:
    """3D masks [N, M] bool from token probabilities probs [M, N] at M surface points:
    point j is in M_i if argmax_k probs[j, k] = i (and max >= argmax_min_prob) or probs[j, i] > prob_threshold."""
    assert probs.ndim == 2
    M, N = probs.shape
    if M == 0 or N == 0:
        return torch.zeros(N, M, dtype=torch.bool)
    top, arg = probs.max(dim=1)                                                    # [M]
    by_argmax = torch.zeros(M, N, dtype=torch.bool)
    by_argmax[torch.arange(M), arg] = top >= argmax_min_prob
    return (by_argmax | (probs > prob_threshold)).T


# ----------------------------------------------------------------------------- the strategy

class TokenAdjustStrategy:
    """Counts assignments, records split evidence and prunes / splits the tokens every few iterations."""

    def __init__(self, cfg: AdjustConfig | None = None, log: Callable[[str], None] | None = None):
        self.cfg = cfg or AdjustConfig()
        self.log = log or (lambda msg: None)
        self.n: int | None = None                  # token count the history refers to
        self.born: list[int] = []                  # [N] iteration each token started being observed
        self.persist: list[int] = []               # [N] consecutive checks with split evidence
        self.events: deque = deque()               # (it, assigned tokens, split-evidence tokens) per frame
        self.last_check: int | None = None

    # -- hooks
    def after_assignment(self, it: int, rows: Tensor, cols: Tensor, cost: Tensor, n_tokens: int,
                         blind: list[tuple[int, tuple[float, float, float]]] | None = None) -> None:
        """Record one frame's match: rows, cols [K] (Hungarian), cost [L, N_tokens]; blind: (token,
        3D centroid of the mask in m) per blind match (see the blind split rule), if the trainer checks."""
        if not self.cfg.enabled:
            return
        assert cost.ndim == 2 and cost.shape[1] == n_tokens, f"cost must be [L, {n_tokens}], got {tuple(cost.shape)}"
        if self.n is None:
            self.n, self.born, self.persist, self.last_check = n_tokens, [it] * n_tokens, [0] * n_tokens, it
        if n_tokens != self.n:
            raise ValueError(f"the strategy tracks {self.n} tokens but the frame was matched against {n_tokens}: "
                             "tokens were resized outside step(); call strategy.remap(index_map, it) after that")
        lim = self.cfg.split_max_cost
        split = sorted({i for i, _, b in assignment_stats(cost, rows, cols) if lim <= 0 or float(cost[b, i]) < lim})
        blind_ev = [(int(i), tuple(float(x) for x in p)) for i, p in (blind or [])]
        self.events.append((int(it), [int(c) for c in cols.tolist()], split, blind_ev))
        self._trim(it)

    def due(self, it: int) -> bool:
        """Whether step(it) would run a check (lets the trainer skip computing surface probabilities)."""
        return self.cfg.enabled and self.last_check is not None and it - self.last_check >= self.cfg.every_iters

    def step(self, it: int, tokens: InstanceTokens, surface_points: Tensor, surface_probs: Tensor,
             optimizer: torch.optim.Optimizer | None = None) -> dict | None:
        """Run a check when due: prune useless and duplicate tokens, clone split candidates.

        surface_points [M, 3] (m; only the count is used, kept for logs / future rules),
        surface_probs [M, N] per-token probabilities at those points (instance_probs A, or the
        token columns of the panoptic probabilities). Applies the change to `tokens` (and to
        `optimizer`'s state when given). Returns None when nothing changed, else
        {"keep": [N_old] bool, "clone_of": [old index per appended clone], "log": [str],
         "index_map": [N_new] long (old row of each new row)}.
        """
        if not self.due(it):
            return None
        cfg, N = self.cfg, tokens.n
        assert self.n == N, f"strategy tracks {self.n} tokens, tokens has {N}"
        assert surface_probs.ndim == 2 and surface_probs.shape[1] == N, \
            f"surface_probs must be [M, {N}], got {tuple(surface_probs.shape)}"
        assert surface_points.ndim == 2 and surface_points.shape == (surface_probs.shape[0], 3)
        self.last_check = it
        self._trim(it)
        msgs: list[str] = []

        counts = [0] * N
        split_events = [0] * N
        blind_at: list[list[tuple[float, float, float]]] = [[] for _ in range(N)]
        for _, cols, split, blind in self.events:
            for c in cols:
                counts[c] += 1
            for i in split:
                split_events[i] += 1
            for i, p in blind:
                blind_at[i].append(p)

        # useless
        keep = torch.ones(N, dtype=torch.bool)
        reason: dict[int, str] = {}
        for i in range(N):
            if it - self.born[i] >= cfg.window_iters and counts[i] < cfg.n_min:
                keep[i] = False
                reason[i] = (f"useless: assigned {counts[i]} < n_min={cfg.n_min} times in the last "
                             f"{cfg.window_iters} iterations")
        # duplicates among the survivors
        alive = torch.nonzero(keep).reshape(-1)
        masks = token_masks_3d(surface_probs.detach()[:, alive], cfg.mask_prob_threshold, cfg.argmax_min_prob)
        sizes = masks.sum(1).tolist()
        for r, e, iom in duplicate_pairs(masks, cfg.iom_threshold):
            i, j = int(alive[r]), int(alive[e])
            keep[i] = False
            reason[i] = (f"duplicate: IoM={iom:.2f} >= {cfg.iom_threshold} inside token {j} "
                         f"(|M_{i}|={sizes[r]}, |M_{j}|={sizes[e]} of {surface_points.shape[0]} points)")
        # never below min_tokens: restore the most assigned removed tokens
        while int(keep.sum()) < min(cfg.min_tokens, N):
            back = max((i for i in range(N) if not keep[i]), key=lambda i: (counts[i], -i))
            keep[back] = True
            reason.pop(back)
        for i in sorted(reason):
            msgs.append(f"it {it}: prune token {i} ({reason[i]})")

        # split
        for i in range(N):
            self.persist[i] = self.persist[i] + 1 if split_events[i] >= cfg.split_min_events else 0
        late = cfg.split_until_iters > 0 and it >= cfg.split_until_iters
        candidates = [i for i in range(N) if keep[i] and self.persist[i] >= cfg.split_persist_checks and not late]
        candidates.sort(key=lambda i: (-split_events[i], i))
        room = max(0, cfg.max_tokens - int(keep.sum()))
        clone_of = candidates[:room]
        n_kept = int(keep.sum())
        for k, i in enumerate(clone_of):
            msgs.append(f"it {it}: split token {i} -> new token {n_kept + k} (non-optimal assignment at "
                        f"{self.persist[i]} consecutive checks, {split_events[i]} frames in the window)")
            self.persist[i] = 0
        for i in candidates[room:]:
            msgs.append(f"it {it}: split of token {i} skipped (max_tokens={cfg.max_tokens} reached)")
        # blind split: a clone where the token's blind masks are
        blind_of, blind_pos = [], []
        if cfg.blind_max_overlap > 0 and not late:
            means = tokens.means.detach().cpu()
            for i in sorted(range(N), key=lambda i: (-len(blind_at[i]), i)):
                n_b = len(blind_at[i])
                if not keep[i] or i in clone_of or n_b < max(cfg.blind_min_events, 1) or 2 * n_b < counts[i]:
                    continue
                target = torch.tensor(blind_at[i]).median(dim=0).values                  # [3] m
                dist = float(torch.linalg.norm(target - means[i]))
                if dist < cfg.blind_min_distance_m:
                    continue
                if n_kept + len(clone_of) + len(blind_of) >= cfg.max_tokens:
                    msgs.append(f"it {it}: blind split of token {i} skipped (max_tokens={cfg.max_tokens} reached)")
                    continue
                blind_of.append(i)
                blind_pos.append(target)
                msgs.append(f"it {it}: blind split token {i} -> new token {n_kept + len(clone_of) + len(blind_of) - 1} "
                            f"at ({', '.join(f'{x:.2f}' for x in target.tolist())}) m, {dist:.2f} m from it "
                            f"({n_b} of its {counts[i]} matches in the window were blind)")

        if bool(keep.all()) and not clone_of and not blind_of:
            for m in msgs:
                self.log(m)
            return None

        index_map = torch.cat([torch.nonzero(keep).reshape(-1), torch.tensor(clone_of + blind_of, dtype=torch.long)])
        offset = torch.zeros(index_map.shape[0], 3)
        if clone_of:
            with torch.no_grad():
                src = torch.tensor(clone_of, dtype=torch.long)
                R = tokens.rotations().detach().cpu()[src]                         # [C, 3, 3]
                longest = torch.argmax(tokens.log_scales.detach().cpu()[src], dim=1)  # [C]
                axis = R[torch.arange(src.shape[0]), :, longest]                  # [C, 3] unit column
                offset[n_kept:n_kept + len(clone_of)] = axis * cfg.split_offset_m
        if blind_of:
            src = torch.tensor(blind_of, dtype=torch.long)
            offset[n_kept + len(clone_of):] = torch.stack(blind_pos) - tokens.means.detach().cpu()[src]
        old_params = tokens.state_for_optimizer()
        tokens.reindex(index_map, mean_offset_m=offset)
        if optimizer is not None:
            resize_adam_state(optimizer, old_params, tokens.state_for_optimizer(), index_map)
        self.remap(index_map, it)
        for m in msgs:
            self.log(m)
        return {"keep": keep, "clone_of": list(clone_of) + list(blind_of), "log": msgs, "index_map": index_map}

    # -- bookkeeping
    def remap(self, index_map: Tensor, it: int) -> None:
        """Re-index the per-token history after a resize (index_map [N_new]: old row or -1 = new token)."""
        index_map = torch.as_tensor(index_map, dtype=torch.long).tolist()
        if self.n is None:
            return
        old_to_new: dict[int, int] = {}
        for new, old in enumerate(index_map):
            if old >= 0 and old not in old_to_new:     # a clone (second occurrence) starts with no history
                old_to_new[old] = new
        born, persist = [], []
        for new, old in enumerate(index_map):
            first = old >= 0 and old_to_new[old] == new
            born.append(self.born[old] if first else it)
            persist.append(self.persist[old] if first else 0)
        self.born, self.persist, self.n = born, persist, len(index_map)
        self.events = deque((e_it, [old_to_new[c] for c in cols if c in old_to_new],
                             [old_to_new[i] for i in split if i in old_to_new],
                             [(old_to_new[i], p) for i, p in blind if i in old_to_new])
                            for e_it, cols, split, blind in self.events)

    def _trim(self, it: int) -> None:
        while self.events and self.events[0][0] <= it - self.cfg.window_iters:
            self.events.popleft()

    def state_dict(self) -> dict:
        return {"n": self.n, "born": list(self.born), "persist": list(self.persist),
                "events": [(a, list(b), list(c), [(i, list(p)) for i, p in d]) for a, b, c, d in self.events],
                "last_check": self.last_check}

    def load_state_dict(self, state: dict) -> None:
        self.n, self.born, self.persist = state["n"], list(state["born"]), list(state["persist"])
        # checkpoints from before the blind split rule hold 3-tuples
        self.events = deque((e[0], list(e[1]), list(e[2]), [(int(i), tuple(p)) for i, p in (e[3] if len(e) > 3 else [])])
                            for e in state["events"])
        self.last_check = state["last_check"]


class NoAdjust(TokenAdjustStrategy):
    """Ablation `tokens.adjust = off`: the hooks do nothing and the token count never changes."""

    def after_assignment(self, it: int, rows: Tensor, cols: Tensor, cost: Tensor, n_tokens: int,
                         blind: list | None = None) -> None:
        return None

    def due(self, it: int) -> bool:
        return False

    def step(self, it: int, tokens: InstanceTokens, surface_points: Tensor, surface_probs: Tensor,
             optimizer: torch.optim.Optimizer | None = None) -> dict | None:
        return None


def make_strategy(cfg: AdjustConfig, log: Callable[[str], None] | None = None) -> TokenAdjustStrategy:
    """TokenAdjustStrategy, or NoAdjust when cfg.enabled is False."""
    return TokenAdjustStrategy(cfg, log) if cfg.enabled else NoAdjust(cfg, log)
