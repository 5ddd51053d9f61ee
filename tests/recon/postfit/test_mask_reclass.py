"""The instance class from its masks (recon/postfit/mask_reclass.py): the decision by hand-computed cases (trigger
and non-trigger), then the rule on a tiny scene where one table mask covers a table piece and a piece the fields
called cabinet (it takes the class table and merges), or where the masks agree with the fields (nothing changes)."""
from collections import Counter

import numpy as np
import pytest

from recon.postfit.mask_merge import MaskMergeParams
from recon.postfit.mask_reclass import ReclassParams, reclass_decisions, reclass_mesh
from tests.recon.postfit.wall_scene import Named, WallScene, wall_vertices


def test_reclass_decisions_by_hand():
    votes = {1: Counter({4: 7, 8: 1}),     # cabinet instance, 7 of 8 frames' masks say table: reclassed
             2: Counter({4: 2}),           # only 2 frames: too few
             3: Counter({5: 6, 6: 4}),     # 6 of 10 frames: share 0.6 < 0.7
             4: Counter({1: 5}),           # the masks' class is not a thing class
             5: Counter({4: 5}),           # its own class
             6: Counter({5: 3, 8: 3}),     # a tie goes to the smaller class id (5), which is its own
             7: Counter({4: 3})}           # exactly at both thresholds: reclassed
    cls = {1: 8, 2: 8, 3: 6, 4: 4, 5: 4, 6: 5, 7: 5}
    assert reclass_decisions(votes, cls, [4, 5, 6, 8], 3, 0.7) == {1: 4, 7: 4}
    assert reclass_decisions(votes, cls, [4, 5, 6, 8], 4, 0.7) == {1: 4}
    assert reclass_decisions({9: Counter({4: 5})}, cls, [4], 3, 0.7) == {}          # an id without a class


def _tiny_scene(mask_class: int) -> WallScene:
    """Three frames of a wall; one mask over the whole wall, of class `mask_class` (3 = table, 5 = cabinet; both
    things)."""
    return WallScene(np.ones((20, 20)), np.full((20, 20), mask_class), [3, 5],
                     classes=[Named(3, "table"), Named(5, "cabinet")])


@pytest.mark.parametrize("mask_class", [3, 5])
def test_the_rule_on_a_tiny_scene(mask_class):
    verts = wall_vertices()                                                        # [900, 3] on the wall
    inst = np.where(verts[:, 0] < -0.2, 1, 2)                                      # 1: table (240), 2: cabinet (660)
    sem = np.where(inst == 1, 3, 5)
    lines = []
    new_sem, new_cls, merges = reclass_mesh(verts, sem, inst, _tiny_scene(mask_class), [0, 1, 2], ReclassParams(),
                                            MaskMergeParams(), log=lines.append)
    if mask_class == 3:                   # the masks call the cabinet piece a table in all 3 frames
        assert new_cls == {2: 3} and (new_sem == 3).all()
        assert merges == {1: 2}                                     # one mask in 3 frames; the larger id stays
        assert "cabinet -> table" in lines[0] and "one mask in 3 frames, two in 0" in lines[1]
    else:                                 # cabinet masks over both: the table piece is reclassed, cabinet stays
        assert new_cls == {1: 5} and (new_sem == 5).all() and merges == {1: 2}
    assert (sem == np.where(inst == 1, 3, 5)).all()                                # the input is not changed


def test_nothing_changes_where_the_masks_agree():
    verts = wall_vertices()
    inst = np.ones(len(verts), np.int64)
    sem = np.full(len(verts), 3)
    lines = []
    new_sem, new_cls, merges = reclass_mesh(verts, sem, inst, _tiny_scene(3), [0, 1, 2], ReclassParams(),
                                            MaskMergeParams(), log=lines.append)
    assert new_cls == {} and merges == {} and (new_sem == sem).all() and "mask reclass: none" in lines[0]
