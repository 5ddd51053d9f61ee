"""The panoptic consistency step (recon/postfit/panoptic_consistency.py): each piece by hand-computed cases (the
dissolve decision's trigger and non-trigger cases, the nearest-stuff labels, ids that lose their instance), then
both rules on a tiny scene: a "cabinet" instance on a wall whose masks say wall, beside a real cabinet."""
from types import SimpleNamespace

import numpy as np

from recon.postfit.panoptic_consistency import (consistent_ids, consistent_mesh, dissolve_decisions,
                                                dissolve_instances, instance_classes, kept_instance_classes,
                                                mask_class_votes)
from tests.recon.postfit.wall_scene import Named, WallScene, wall_vertices

WALL, FLOOR, CABINET, BOOK = 1, 2, 5, 7


def test_instance_classes_by_hand():
    sem = np.array([5, 5, 7, 7, 7, 1, 5, 7])
    inst = np.array([1, 1, 1, 2, 2, 0, 3, 3])
    assert instance_classes(sem, inst) == {1: 5, 2: 7, 3: 5}        # id 3: a 1-1 tie goes to the smaller class


def test_dissolve_decisions_by_hand():
    def v(**kw):
        out = np.zeros(8, np.int64)
        for k, n in kw.items():
            out[{"wall": WALL, "floor": FLOOR, "cabinet": CABINET, "book": BOOK}[k]] = n
        return out
    votes = {1: v(wall=30, cabinet=10),          # stuff 30 of 40 > 0.5, >= 20 votes: dissolved into wall
             2: v(wall=10, floor=15, book=20),   # stuff 25 of 45 (0.56): dissolved, floor the most voted
             3: v(wall=19, cabinet=1),           # 19 stuff votes: too few
             4: v(wall=20, cabinet=20),          # share exactly 0.5: not more than it
             5: v(wall=40, cabinet=5, book=100),  # another thing class beats stuff: 40 of 140, an object, kept
             6: v(cabinet=50),                   # no stuff vote
             7: v(wall=60, cabinet=10, book=20),  # against the top thing class (book): 60 of 80, dissolved
             8: v(wall=25, cabinet=15, book=15),  # 25 of 40 (0.63), dissolved; all thing votes together: 0.45
             9: v(wall=50)}                      # an id without a class
    votes[10] = v(wall=30, cabinet=10)
    votes[10][0] = 1000                          # class 0 (no mask) never votes: still 30 of 40, dissolved
    cls = {1: CABINET, 2: BOOK, 3: CABINET, 4: CABINET, 5: CABINET, 6: CABINET, 7: CABINET, 8: CABINET,
           10: CABINET}
    assert dissolve_decisions(votes, cls, [WALL, FLOOR], 20, 0.5) == {1: WALL, 2: FLOOR, 7: WALL, 8: WALL,
                                                                       10: WALL}
    assert dissolve_decisions(votes, cls, [WALL, FLOOR], 20, 0.7) == {1: WALL, 7: WALL, 10: WALL}  # 0.56, 0.63 not
    assert dissolve_decisions(votes, cls, [], 20, 0.5) == {}                     # a scene without stuff classes


def test_dissolve_instances_take_the_nearest_stuff_labels():
    verts = np.array([[0, 0, 0], [1, 0, 0], [0.1, 0, 0], [0.9, 0, 0], [5, 0, 0], [0.2, 0, 0]], float)
    sem = np.array([WALL, FLOOR, CABINET, CABINET, CABINET, BOOK])
    inst = np.array([0, 0, 4, 4, 6, 8])
    new_sem, new_inst = dissolve_instances(verts, sem, inst, {4: WALL}, [WALL, FLOOR])
    assert new_sem.tolist() == [WALL, FLOOR, WALL, FLOOR, CABINET, BOOK]       # nearest stuff vertex each
    assert new_inst.tolist() == [0, 0, 0, 0, 6, 8]
    assert inst.tolist() == [0, 0, 4, 4, 6, 8]                                  # the input is not changed
    # with no stuff vertex to take labels from: the decision's stuff class
    s2, i2 = dissolve_instances(verts[2:], sem[2:], inst[2:], {4: FLOOR}, [WALL, FLOOR])
    assert s2.tolist() == [FLOOR, FLOOR, CABINET, BOOK] and i2.tolist() == [0, 0, 6, 8]
    s3, i3 = dissolve_instances(verts, sem, inst, {}, [WALL])
    assert (s3 == sem).all() and (i3 == inst).all()


def test_consistent_ids_by_hand():
    sem = np.array([[CABINET, CABINET, BOOK], [WALL, BOOK, CABINET]])
    inst = np.array([[3, 4, 3], [3, 9, 0]])
    out = consistent_ids(sem, inst, {3: CABINET, 4: BOOK}, [CABINET, BOOK])
    # (cabinet, 3) keeps; (cabinet, 4): 4 is a book; (book, 3): 3 is a cabinet; a wall pixel is no thing and
    # keeps what it has; (book, 9): 9 is no instance
    assert out.tolist() == [[3, 0, 0], [3, 0, 0]]
    assert inst.tolist() == [[3, 4, 3], [3, 9, 0]]


def test_kept_instance_classes_leave_out_small_instances():
    sem = np.array([5] * 30 + [7] * 29 + [1])
    inst = np.array([1] * 30 + [2] * 29 + [0])
    assert kept_instance_classes(sem, inst, 30) == {1: 5}
    assert kept_instance_classes(sem, inst, 29) == {1: 5, 2: 7}


def _tiny_scene() -> WallScene:
    """Two frames of a wall; the masks: wall on the left half, a cabinet mask on the right half."""
    sem = np.full((20, 20), WALL)
    sem[:, 10:] = CABINET
    return WallScene(np.where(sem == CABINET, 1, 2), sem, [CABINET, BOOK], n_frames=2,
                     classes=[Named(WALL, "wall", False), Named(FLOOR, "floor", False), Named(CABINET, "cabinet"),
                              Named(BOOK, "book")])


def test_both_rules_on_a_tiny_scene():
    verts = wall_vertices()                                                            # [900, 3]
    left = verts[:, 0] < 0.0                                                           # the masks' wall half
    patch = left & (verts[:, 0] > -0.3)                                                # a "cabinet" on the wall
    sem = np.where(left & ~patch, WALL, CABINET)
    inst = np.where(patch, 2, np.where(left, 0, 1))
    tiny = (verts[:, 0] > 0.4) & (verts[:, 1] > 0.4)                                   # 4 "book" vertices in it
    sem[tiny], inst[tiny] = BOOK, 5
    votes = mask_class_votes(verts, inst, _tiny_scene(), [0, 1], 0.05)
    assert votes[2][WALL] > 0 and votes[2][CABINET] == 0 and votes[1][WALL] == 0 and votes[1][CABINET] > 0
    p = SimpleNamespace(dissolve_on_stuff=True, dissolve_min_votes=20, dissolve_min_share=0.5, consistent_ids=True,
                        min_instance_vertices=30)
    lines = []
    new_sem, new_inst, dissolved = consistent_mesh(verts, sem, inst, _tiny_scene(), [0, 1], p, log=lines.append)
    assert (dissolved == patch).all()                              # the wall "cabinet" is gone, labelled wall
    assert (new_sem[patch] == WALL).all() and (new_inst[patch] == 0).all()
    assert (new_inst[tiny] == 0).all() and (new_sem[tiny] == BOOK).all()        # 4 vertices: no instance
    assert (new_inst[~patch & ~tiny] == inst[~patch & ~tiny]).all()             # the real cabinet keeps its id
    assert any("instance 2 (cabinet" in ln and "-> wall" in ln for ln in lines)
    # switched off, nothing changes
    off = SimpleNamespace(**{**vars(p), "dissolve_on_stuff": False, "consistent_ids": False})
    s2, i2, d2 = consistent_mesh(verts, sem, inst, _tiny_scene(), [0, 1], off, log=lines.append)
    assert (s2 == sem).all() and (i2 == inst).all() and not d2.any()
