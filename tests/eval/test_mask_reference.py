"""The mask-vote reference for semantic_3d (eval/mask_reference.py) on hand-made cases."""
import numpy as np

from eval.mask_reference import frame_votes, vote_labels


def test_frame_votes_hand_case():
    K = np.array([[10.0, 0, 4.5], [0, 10.0, 4.5], [0, 0, 1]])
    depth = np.full((10, 10), 2.0)                   # a wall at z = 2 m
    label = np.zeros((10, 10), np.uint16)
    label[4, 4] = 3
    label[4, 6] = 5
    pts = np.array([[0.0, 0, 2.0],                   # pixel (4, 4) on the wall: class 3
                    [0.0, 0, 1.0],                   # same pixel, 1 m in front of the wall: not what it saw
                    [0.3, 0, 2.0],                   # pixel (6, 4): class 5
                    [0.1, 0, 2.0],                   # pixel (5, 4): unlabelled
                    [0.0, 0, -2.0],                  # behind the camera
                    [0.0, 0, 2.02]])                 # 2 cm behind the wall: within the 3 cm tolerance
    idx, lab = frame_votes(pts, K, np.eye(4), depth, label, 0.03)
    assert idx.tolist() == [0, 2, 5] and lab.tolist() == [3, 5, 3]
    idx, lab = frame_votes(pts, K, np.eye(4), depth, label, 0.01)
    assert idx.tolist() == [0, 2]


def test_vote_labels_majority_and_nearest_fill():
    pts = np.array([[0.0, 0, 0], [1.0, 0, 0], [0.9, 0, 0], [0.1, 0, 0]])
    votes = np.array([[0, 0, 0, 2],                  # class 3
                      [0, 1, 1, 0],                  # a tie: the lower id, 1
                      [0, 0, 0, 0],                  # no vote: nearest voted point is 1 -> 1
                      [0, 0, 0, 0]])                 # nearest voted point is 0 -> 3
    assert vote_labels(pts, votes).tolist() == [3, 1, 1, 3]
    assert vote_labels(pts, np.zeros_like(votes)).tolist() == [0, 0, 0, 0]
