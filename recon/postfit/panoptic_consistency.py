"""One class per object and no object on a wall: the last post-process of the panoptic labels (ours, not in the
paper; `panoptic.dissolve_on_stuff` and `panoptic.consistent_ids`, both on by default; docs/method.md 12.6).

What it fixes, measured on the walk family's realistic-video fits of 2026-12-07 (PQ@0.5 counts every
(class, id) segment of the label images; a segment that matches no ground-truth object is a false positive,
and with one or two objects of a class in the scene one false positive halves that class's PQ):

- Thing instances on stuff surfaces. A few hundred vertices along a wall / floor junction came out as a
  "sofa", "cabinet" or "shelf" instance, a patch of ceiling as a "book" instance. The training masks there
  say wall, floor or ceiling far more often than the instance's class (a ceiling "book": ceiling 1,046 and
  wall 85 mask pixels against 619). Seed 1 lost about 5 PQ points to such segments of the sofa and the shelf.
- Label pixels whose class and id disagree. The label images are rendered from the semantic and the instance
  field; where the two disagree a pixel can carry class "cabinet" and the id of a table. That (cabinet, table
  id) segment is a false positive of the cabinet class (seed 0: 1,910 such pixels, 3 PQ points). Ids of
  instances too small for instances.json (`min_instance_vertices`) also stay in the images as segments.

The rules, on the labelled mesh after every other post-process, and then on each label image:

1. *Dissolve on stuff* (`dissolve_on_stuff`): in each training frame, every seen vertex of an instance (as in
   mask-evidence merging, recon/postfit/mask_merge.py) votes with the class of the mask at its pixel (stuff
   masks included; pixels with no mask do not vote). An instance whose stuff votes are at least
   `dissolve_min_votes` and more than `dissolve_min_share` of its stuff votes + those of its most-voted thing
   class (its own or another: an object the masks give another class is still an object) is no object: its
   vertices take the labels of the nearest stuff vertex (instance 0) outside it, or, with none, its most-voted
   stuff class. They join RUN/relabel.npz, so label images follow the mesh there.
2. *Consistent ids* (`consistent_ids`): an instance's class is the majority class of its vertices; a vertex or
   pixel of a thing class whose id is no instance of instances.json (fewer than `min_instance_vertices`) or an
   instance of another class loses the id (instance 0, its class kept). Semantics never change here, and every
   (class, id) pair left is one object of instances.json.

Where nothing fires, nothing changes.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from recon.postfit.mask_merge import MaskMergeParams, seen_pixels


def instance_classes(sem: np.ndarray, inst: np.ndarray) -> dict[int, int]:
    """{instance id > 0: the majority class of its elements (ties: the smaller class id)}. sem, inst [N]."""
    sem, inst = np.asarray(sem, np.int64), np.asarray(inst, np.int64)
    assert sem.shape == inst.shape and sem.ndim == 1, (sem.shape, inst.shape)
    return {int(i): int(np.bincount(sem[inst == i]).argmax()) for i in np.unique(inst[inst > 0])}


def mask_class_votes(verts: np.ndarray, inst: np.ndarray, scene, frame_index: list[int], depth_tol_m: float,
                     progress: bool = False) -> dict[int, np.ndarray]:
    """{instance id: votes [C]}: over the frames `frame_index`, each seen vertex (seen_pixels) of an instance adds
    one vote for the mask class at its pixel (class ids 1..C-1; pixels with no mask, class 0, do not vote).
    verts [V, 3] world m; inst [V] (0 = none). C = the scene's largest class id + 1."""
    from tqdm import tqdm

    inst = np.asarray(inst, np.int64)
    assert verts.shape == (len(inst), 3), (verts.shape, inst.shape)
    n_cls = max([c.id for c in scene.classes] + [0]) + 1
    n_id = int(inst.max(initial=0)) + 1
    votes = np.zeros((n_id, n_cls), np.int64)                                  # [ids, C]
    has = np.flatnonzero(inst > 0)
    for i in tqdm(frame_index, desc="stuff votes", disable=not progress, leave=False):
        idx, v, u = seen_pixels(verts[has], scene.K, scene.c2w[i], scene.load_depth_m(i), depth_tol_m)
        _, m_sem, _ = scene.load_masks(i)
        c = np.minimum(m_sem[v, u].astype(np.int64), n_cls - 1)
        ok = c > 0
        np.add.at(votes, (inst[has[idx[ok]]], c[ok]), 1)
    return {int(k): votes[k] for k in np.unique(inst[has])}


def dissolve_decisions(votes: dict[int, np.ndarray], cls: dict[int, int], stuff_ids, min_votes: int,
                       min_share: float) -> dict[int, int]:
    """{instance id: its most-voted stuff class (ties: the smaller id)} for the instances (cls: id -> class)
    whose stuff votes (votes: id -> [C] counts per mask class; class 0, no mask, never counts) are at least
    min_votes and more than min_share of their stuff votes + the votes of their most-voted thing class (their
    own class or another one).

    The most-voted thing class, not only the instance's own: an instance the masks call cabinet 4,385 times,
    table 4,037, wall 2,513 and lamp (its class) 381 is an object whose class is wrong, not a wall (apartment-hard
    seed 0 of 2026-12-07 lost its cabinet that way while only the own class counted). Not all thing votes
    together: a stray patch on a wall / floor junction collects votes of several objects beside it (wall 1,743,
    shelf 1,406, bottle 206, cabinet 168), and counting them all kept such patches, measured on the walk family
    (README, "Dissolving counts the strongest thing class")."""
    stuff = np.array(sorted(int(c) for c in stuff_ids), np.int64)
    out = {}
    for k, vo in votes.items():
        if k not in cls or stuff.size == 0:
            continue
        vo = np.asarray(vo, np.int64)
        in_range = stuff[stuff < len(vo)]
        st = vo[in_range]
        thing = np.ones(len(vo), bool)
        thing[0] = False
        thing[in_range] = False
        n_stuff = int(st.sum())
        n_thing = int(vo[thing].max(initial=0))                     # the most-voted thing class's votes
        if n_stuff >= min_votes and n_stuff > min_share * (n_stuff + n_thing):
            out[int(k)] = int(stuff[int(np.argmax(st))])
    return out


def dissolve_instances(verts: np.ndarray, sem: np.ndarray, inst: np.ndarray, dissolved: dict[int, int],
                       stuff_ids) -> tuple[np.ndarray, np.ndarray]:
    """(sem, inst) [V] with the vertices of the `dissolved` instances ({id: fallback stuff class}) given the
    labels of their nearest vertex (verts [V, 3]) that has a stuff class, instance 0 and is not dissolved;
    without such a vertex, the fallback class and instance 0."""
    from scipy.spatial import cKDTree

    sem, inst = np.array(sem, np.int64), np.array(inst, np.int64)
    assert verts.shape == (len(sem), 3) and inst.shape == sem.shape
    if not dissolved:
        return sem, inst
    gone = np.isin(inst, list(dissolved))
    donor = np.flatnonzero(~gone & (inst == 0) & np.isin(sem, list(stuff_ids)))
    idx = np.flatnonzero(gone)
    if donor.size:
        _, nn = cKDTree(verts[donor]).query(verts[idx], k=1)
        sem[idx] = sem[donor[nn]]
    else:
        sem[idx] = [dissolved[int(k)] for k in inst[idx]]
    inst[idx] = 0
    return sem, inst


def consistent_ids(sem: np.ndarray, inst: np.ndarray, id_class: dict[int, int], thing_ids) -> np.ndarray:
    """inst [...] where every element of a thing class (sem [...]) whose id is not in id_class (id -> class) or
    names an instance of another class gets id 0; other elements keep theirs."""
    sem, inst = np.asarray(sem, np.int64), np.array(inst, np.int64)
    assert sem.shape == inst.shape, (sem.shape, inst.shape)
    n = max(int(inst.max(initial=0)), max(id_class, default=0)) + 1
    lut = np.full(n, -1, np.int64)                                   # id -> its class, -1 = no instance
    for k, c in id_class.items():
        lut[k] = c
    thing = np.isin(sem, list(thing_ids))
    bad = thing & (inst > 0) & (lut[inst] != sem)
    inst[bad] = 0
    return inst


def kept_instance_classes(sem: np.ndarray, inst: np.ndarray, min_vertices: int) -> dict[int, int]:
    """{id: class} of the instances instances.json lists: at least min_vertices vertices (sem, inst [V])."""
    cls = instance_classes(sem, inst)
    sizes = np.bincount(np.asarray(inst, np.int64), minlength=1)
    return {k: c for k, c in cls.items() if sizes[k] >= min_vertices}


def instances_json_classes(run) -> dict[int, int] | None:
    """{id: class id} of RUN/instances.json's instances; None without the file."""
    path = Path(run) / "instances.json"
    if not path.is_file():
        return None
    return {int(e["id"]): int(e["class_id"]) for e in json.loads(path.read_text()).get("instances", [])}


def consistent_mesh(verts: np.ndarray, sem: np.ndarray, inst: np.ndarray, scene, frame_index: list[int], p,
                    log=print, progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both rules of the module docstring on a labelled mesh, as the panoptic settings `p` switch them
    (dissolve_on_stuff with dissolve_min_votes / dissolve_min_share; consistent_ids with min_instance_vertices):
    (sem [V], inst [V], dissolved [V] bool: the vertices whose labels the first rule changed)."""
    sem, inst = np.asarray(sem, np.int64), np.asarray(inst, np.int64)
    dissolved_v = np.zeros(len(sem), bool)
    names = {c.id: c.name for c in getattr(scene, "classes", [])}
    things = set(int(t) for t in scene.thing_ids())
    stuff = [c.id for c in scene.classes if c.id not in things and c.id > 0]
    if p.dissolve_on_stuff and scene.has_masks and (inst > 0).any():
        cls = instance_classes(sem, inst)
        votes = mask_class_votes(verts, inst, scene, frame_index, MaskMergeParams().depth_tol_m, progress)
        gone = dissolve_decisions(votes, cls, stuff, int(p.dissolve_min_votes), float(p.dissolve_min_share))
        if gone:
            sem_new, inst_new = dissolve_instances(verts, sem, inst, gone, stuff)
            dissolved_v = (sem_new != sem) | (inst_new != inst)
            for k in sorted(gone):
                vo = votes[k]
                top = ", ".join(f"{names.get(int(c), int(c))} {int(vo[c])}" for c in np.argsort(-vo)[:4] if vo[c])
                log(f"dissolve on stuff: instance {k} ({names.get(cls[k], cls[k])}, {int((inst == k).sum())} "
                    f"vertices) -> {names.get(gone[k], gone[k])} etc. (mask votes: {top})")
            sem, inst = sem_new, inst_new
        else:
            log(f"dissolve on stuff: none ({len(votes)} instances seen in the training frames)")
    if p.consistent_ids:
        new = consistent_ids(sem, inst, kept_instance_classes(sem, inst, int(p.min_instance_vertices)), things)
        n = int((new != inst).sum())
        if n:
            log(f"consistent ids: {n} vertices lost an id that is no instance of their class")
        inst = new
    return sem, inst, dissolved_v
