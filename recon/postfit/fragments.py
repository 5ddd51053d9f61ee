"""Fragment merging: a post-process of the panoptic mesh (ours; not in the paper).

What it fixes: after training, a few small tokens can own a piece of a large object (a sofa
arm, a table corner) beside the token that owns the rest. The paper's duplicate rule (IoM
with the enclosing rule, tokens/adjust.py) cannot see them: the argmax masks of the fragment
and of its parent are disjoint, so their IoM is 0. Each such fragment is a false-positive
segment for PQ.

The rule, on the labelled mesh: instance i (|i| vertices, majority class c_i) merges into the
instance j it shares the most mesh edges with, if c_j = c_i, they share at least
`min_shared_edges` edges and |i| < max_fraction * |j|. Instances are visited from the smallest
up (a merged fragment adds to its parent's size). Two objects of one class that touch are
kept apart unless one is far smaller than the other.

Merging only maps instance ids onto other ids of the same class, so the semantic labels do not
change and semantic / instance labels stay consistent; the same id map goes into
RUN/instances.json ("token_ids"), so the mesh, instances/ and every label image agree.
"""
from __future__ import annotations

from collections import Counter

import numpy as np


def instance_adjacency(faces: np.ndarray, instance: np.ndarray) -> Counter:
    """{(i, j): number of mesh edges with one end in instance i and the other in j} for i < j,
    both > 0. faces [F, 3] vertex indices, instance [V] ids (0 = none). Each undirected edge counts once."""
    assert faces.ndim == 2 and faces.shape[1] == 3, f"faces must be [F, 3], got {faces.shape}"
    if len(faces) == 0:
        return Counter()
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])      # [3F, 2]
    e = np.unique(np.sort(e, axis=1), axis=0)                                       # undirected, once
    a, b = instance[e[:, 0]], instance[e[:, 1]]
    cross = (a != b) & (a > 0) & (b > 0)
    pairs = np.sort(np.stack([a[cross], b[cross]], 1), axis=1)
    if len(pairs) == 0:
        return Counter()
    uniq, counts = np.unique(pairs, axis=0, return_counts=True)
    return Counter({(int(p), int(q)): int(c) for (p, q), c in zip(uniq, counts)})


def fragment_merges(faces: np.ndarray, instance: np.ndarray, semantic: np.ndarray, max_fraction: float,
                    min_shared_edges: int) -> dict[int, int]:
    """{fragment id: id it merges into} (chains resolved) by the rule of the module docstring.

    faces [F, 3]; instance [V] ids (0 = none); semantic [V] class ids."""
    instance = np.asarray(instance, np.int64)
    semantic = np.asarray(semantic, np.int64)
    assert instance.shape == semantic.shape and instance.ndim == 1
    ids, sizes = np.unique(instance[instance > 0], return_counts=True)
    if len(ids) < 2:
        return {}
    size = {int(i): int(n) for i, n in zip(ids, sizes)}
    cls = {int(i): int(np.bincount(semantic[instance == i]).argmax()) for i in ids}
    adj = instance_adjacency(faces, instance)
    parent: dict[int, int] = {}

    def find(i: int) -> int:
        while i in parent:
            i = parent[i]
        return i

    for i in sorted(size, key=lambda k: (size[k], k)):
        if find(i) != i:
            continue
        shared: Counter = Counter()
        for (p, q), c in adj.items():
            rp, rq = find(p), find(q)
            if rp == i and rq != i:
                shared[rq] += c
            elif rq == i and rp != i:
                shared[rp] += c
        best = None
        for j, c in shared.items():
            if cls[j] != cls[i] or c < min_shared_edges or not size[i] < max_fraction * size[j]:
                continue
            if best is None or (c, size[j], -j) > (best[1], size[best[0]], -best[0]):
                best = (j, c)
        if best is not None:
            parent[i] = best[0]
            size[best[0]] += size[i]
    return {i: find(i) for i in parent}


def merged_id_map(ids: np.ndarray, merges: dict[int, int]) -> np.ndarray:
    """Old id -> new id lookup [max id + 1]: merged ids take their target's id, then the surviving ids
    are renumbered 1..K in their old order (0 stays 0)."""
    ids = np.asarray(ids, np.int64)
    top = int(max(ids.max(initial=0), max(merges.values(), default=0), max(merges, default=0)))
    lut = np.arange(top + 1, dtype=np.int64)
    for k, v in merges.items():
        lut[k] = v
    survivors = sorted({int(v) for v in lut[1:]})
    renumber = np.zeros(top + 1, np.int64)
    renumber[survivors] = np.arange(1, len(survivors) + 1)
    return renumber[lut]


def merge_fragment_ids(faces: np.ndarray, inst: np.ndarray, sem: np.ndarray, token_ids: np.ndarray, p,
                       log=print) -> tuple[dict[int, int], np.ndarray | None]:
    """The rule applied to a labelled mesh (vertex ids inst [V], token -> id map token_ids [N]):
    (merges, old id -> new id lookup, or None without merges; apply it to inst, token_ids and label
    images alike). p = the panoptic settings (fragment_max_fraction, fragment_min_shared_edges).
    Logs every merge."""
    merges = fragment_merges(faces, inst, sem, p.fragment_max_fraction, p.fragment_min_shared_edges)
    if not merges:
        return merges, None
    sizes = np.bincount(inst)
    for k, v in sorted(merges.items()):
        log(f"fragment merge: instance {k} ({sizes[k]} vertices, class {np.bincount(sem[inst == k]).argmax()}) "
            f"into {v} ({sizes[v]} vertices)")
    return merges, merged_id_map(np.concatenate([token_ids, inst]), merges)
