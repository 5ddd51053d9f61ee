"""Mask-evidence merging (recon/postfit/mask_merge.py): each step by a hand-computed case, then the rule on a
tiny scene where one mask covers two pieces (they merge) or each piece has its own mask (they stay apart)."""
from collections import Counter

import numpy as np
import pytest

from recon.postfit.mask_merge import (MaskMergeParams, frame_masks_of_instances, mask_evidence_merges, mask_merges,
                                      merge_ids_by_masks, pair_votes, seen_pixels)
from tests.recon.postfit.wall_scene import WallScene, wall_vertices

K = np.array([[10.0, 0.0, 2.0], [0.0, 10.0, 2.0], [0.0, 0.0, 1.0]])       # 5 x 5 image, centre pixel (2, 2)


def test_seen_pixels_by_hand():
    depth = np.ones((5, 5), np.float32)
    depth[0, 2] = 0.0                                                       # invalid depth at row 0, column 2
    pts = np.array([[0.0, 0.0, 1.0],       # -> (v 2, u 2), depth 1: seen
                    [0.0, 0.0, 2.0],       # same pixel, 1 m behind the observed surface: occluded
                    [0.1, 0.0, 1.0],       # u = 10 * 0.1 + 2 = 3: seen at (2, 3)
                    [-1.0, 0.0, 1.0],      # u = -8: outside
                    [0.0, 0.0, -1.0],      # behind the camera
                    [0.0, -0.2, 1.0],      # v = 0, u = 2: depth invalid there
                    [0.0, 0.1, 1.04]])     # v = round(10 * 0.1 / 1.04 + 2) = 3, u = 2; |1.04 - 1| <= 0.05: seen
    idx, v, u = seen_pixels(pts, K, np.eye(4), depth, depth_tol_m=0.05)
    assert idx.tolist() == [0, 2, 6] and v.tolist() == [2, 2, 3] and u.tolist() == [2, 3, 2]
    # a camera moved 1 m back along z sees the first point at depth 2
    c2w = np.eye(4)
    c2w[2, 3] = -1.0
    idx, _, _ = seen_pixels(pts[:1], K, c2w, np.full((5, 5), 2.0, np.float32), 0.05)
    assert idx.tolist() == [0]


def test_frame_masks_of_instances_by_hand():
    inst = np.array([1] * 25 + [2] * 25 + [3] * 5 + [4] * 20 + [0] * 3)
    mask = np.array([7] * 20 + [0] * 5          # instance 1: 20 of 25 on mask 7 -> 7
                    + [7] * 13 + [8] * 12       # instance 2: 13 of 25 on mask 7 (0.52 >= 0.5) -> 7
                    + [7] * 5                   # instance 3: 5 seen vertices < min_visible -> none
                    + [0] * 20                  # instance 4: on no mask -> none
                    + [9] * 3)                  # instance 0 (unlabelled vertices) -> ignored
    assert frame_masks_of_instances(inst, mask, min_visible=20, min_mask_share=0.5) == {1: 7, 2: 7}
    # a stricter share: instance 2's best mask holds 52 % only
    assert frame_masks_of_instances(inst, mask, min_visible=20, min_mask_share=0.6) == {1: 7}


def test_pair_votes_by_hand():
    same, diff = pair_votes({1: 7, 2: 7, 4: 9, 5: 7}, cls={1: 3, 2: 3, 4: 3, 5: 6})
    assert same == Counter({(1, 2): 1})                 # 5 is of another class: no vote with 1 or 2
    assert diff == Counter({(1, 4): 1, (2, 4): 1})


def test_mask_merges_threshold_and_order():
    same = Counter({(1, 2): 3, (2, 3): 5, (4, 5): 2})
    diff = Counter({(1, 2): 1, (2, 3): 3})
    # (1, 2): 3 same of 4 = 0.75 -> merges, 1 (100 vertices) into 2 (300); (2, 3): 5 of 8 = 0.625 < 0.7;
    # (4, 5): 2 same frames < 3
    assert mask_merges(same, diff, {1: 100, 2: 300, 3: 50, 4: 10, 5: 10}, 3, 0.7) == {1: 2}
    # a chain: (1, 2) first (4 votes): 2 (40) into 1 (50), the group has 90; then (2, 3): group 90 < 100 -> into 3
    assert mask_merges(Counter({(1, 2): 4, (2, 3): 3}), Counter(), {1: 50, 2: 40, 3: 100}, 3, 0.7) == {1: 3, 2: 3}
    assert mask_merges(Counter(), Counter(), {1: 5}, 3, 0.7) == {}


def _tiny_scene(one_mask: bool) -> WallScene:
    """Three frames of a wall covered by two same-class pieces (left half: instance 1, right half: instance 2;
    class 3 = table, a thing). masks: one mask over both halves or one each."""
    inst = np.zeros((20, 20), np.uint16)
    inst[:, :10] = 1
    inst[:, 10:] = 1 if one_mask else 2
    return WallScene(inst, np.full((20, 20), 3), [3])


def _wall():
    verts = wall_vertices()
    inst = np.where(verts[:, 0] < 0, 1, 2)
    return verts, inst, np.full(len(verts), 3)


@pytest.mark.parametrize("one_mask", [True, False])
def test_the_rule_on_a_tiny_scene(one_mask):
    verts, inst, sem = _wall()
    merges, same, diff = mask_evidence_merges(verts, inst, sem, _tiny_scene(one_mask), [0, 1, 2], MaskMergeParams())
    if one_mask:
        assert same == Counter({(1, 2): 3}) and not diff and merges == {2: 1}    # equal sizes: the smaller id stays
    else:
        assert diff == Counter({(1, 2): 3}) and not same and merges == {}
    token_ids = np.array([0, 1, 2, 2])                                              # 4 tokens -> instance ids
    lines = []
    _, lut = merge_ids_by_masks(verts, inst, sem, token_ids, _tiny_scene(one_mask), [0, 1, 2],
                                type("P", (), {"mask_merge_min_frames": 3, "mask_merge_min_share": 0.7})(),
                                log=lines.append)
    if one_mask:
        assert lut[token_ids].tolist() == [0, 1, 1, 1] and set(lut[inst].tolist()) == {1}
        assert "one mask in 3 frames, two in 0" in lines[0]
    else:
        assert lut is None and "none" in lines[0]
