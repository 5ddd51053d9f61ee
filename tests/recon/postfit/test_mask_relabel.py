"""The relabelling where the masks are silent (recon/postfit/mask_relabel.py): each rule by hand-computed cases
(trigger and non-trigger), the mask votes on a tiny scene, and the label-image correction by hand."""
import numpy as np
import pytest

from recon.postfit.mask_relabel import (LabelImageCorrector, RelabelParams, cull_relabel, fill_unmasked,
                                        instance_classes, labels_before_relabel, mask_class_votes, read_relabel,
                                        relabel_mesh, untokened_regions, write_relabel)

WALL, TABLE, BOTTLE = 1, 2, 3           # class ids: 1 stuff, 2 and 3 things


def test_fill_takes_the_nearest_supported_vertex():
    verts = np.array([[0.0, 0, 0], [1, 0, 0], [2.6, 0, 0], [4, 0, 0]])
    sem = np.array([TABLE, WALL, WALL, WALL])
    inst = np.array([5, 0, 0, 0])
    supported = np.array([True, False, False, True])
    s, i, filled = fill_unmasked(verts, sem, inst, supported)
    # vertex 1 is 1 m from vertex 0 (table, id 5) and 3 m from vertex 3; vertex 2 is 1.4 m from vertex 3
    assert s.tolist() == [TABLE, TABLE, WALL, WALL] and i.tolist() == [5, 5, 0, 0]
    assert filled.tolist() == [False, True, False, False]     # vertex 2 took the labels it had: not counted
    assert sem.tolist() == [TABLE, WALL, WALL, WALL]          # the inputs are not modified


@pytest.mark.parametrize("supported", [[True] * 3, [False] * 3])
def test_fill_changes_nothing_when_all_or_no_vertices_are_supported(supported):
    verts = np.eye(3)
    s, i, filled = fill_unmasked(verts, np.array([1, 2, 3]), np.array([0, 4, 5]), np.array(supported))
    assert s.tolist() == [1, 2, 3] and i.tolist() == [0, 4, 5] and not filled.any()


def _strip(n: int = 40):
    """A strip of 2 x n vertices (x = 0..n-1, y = 0 / 1) triangulated into 2 (n - 1) faces."""
    x = np.arange(n, dtype=float)
    verts = np.concatenate([np.stack([x, np.zeros(n), np.zeros(n)], 1), np.stack([x, np.ones(n), np.zeros(n)], 1)])
    faces = []
    for k in range(n - 1):
        a, b, c, d = k, k + 1, n + k, n + k + 1
        faces += [[a, b, c], [b, d, c]]
    return verts, np.array(faces)


def _table_with_bottles(n: int = 40):
    """One table instance (id 7) over the strip; columns 5..19 (30 vertices) and 30..31 (4 vertices) are
    semantically 'bottle' but carry the table's id: the situation the split rule is for."""
    verts, faces = _strip(n)
    col = np.concatenate([np.arange(n), np.arange(n)])
    sem = np.full(2 * n, TABLE)
    sem[(col >= 5) & (col < 20)] = BOTTLE
    sem[(col >= 30) & (col < 32)] = BOTTLE
    inst = np.full(2 * n, 7)
    return verts, faces, sem, inst, col


def test_split_finds_the_untokened_region_the_masks_call_its_class():
    verts, faces, sem, inst, col = _table_with_bottles()
    votes = np.zeros((len(sem), 4), np.int32)
    votes[sem == BOTTLE, BOTTLE] = 2
    votes[sem == BOTTLE, WALL] = 1                            # bottle 2 of 3 votes (0.67 >= 0.5)
    regions = untokened_regions(faces, sem, inst, votes, [TABLE, BOTTLE], min_vertices=30, min_mask_share=0.5)
    assert len(regions) == 1                                  # the 4-vertex region is under min_vertices
    assert sorted(col[regions[0]].tolist()) == sorted(list(range(5, 20)) * 2)
    # a looser size bound finds the small one too
    assert len(untokened_regions(faces, sem, inst, votes, [TABLE, BOTTLE], 4, 0.5)) == 2


def test_split_does_not_fire_without_mask_support_or_when_an_instance_carries_the_class():
    verts, faces, sem, inst, _ = _table_with_bottles()
    votes = np.zeros((len(sem), 4), np.int32)
    votes[sem == BOTTLE, BOTTLE] = 1
    votes[sem == BOTTLE, WALL] = 3                            # the masks mostly call it wall (0.25 < 0.5)
    assert untokened_regions(faces, sem, inst, votes, [TABLE, BOTTLE], 30, 0.5) == []
    assert untokened_regions(faces, sem, inst, np.zeros_like(votes), [TABLE, BOTTLE], 30, 0.5) == []   # no votes
    votes[sem == BOTTLE, WALL] = 0
    inst2 = inst.copy()
    inst2[:3] = 9
    sem2 = sem.copy()
    sem2[:3] = BOTTLE                                         # instance 9 is a bottle: the class is carried
    assert instance_classes(sem2, inst2) == {7: TABLE, 9: BOTTLE}
    assert untokened_regions(faces, sem2, inst2, votes, [TABLE, BOTTLE], 30, 0.5) == []


class _Scene:
    """One frame, a camera at the origin looking down +z at a plane 2 m ahead (10 x 10 pixels). masks: class
    `TABLE` on the left half of the image, unlabelled on the right."""
    has_masks = True

    def __init__(self):
        self.K = np.array([[10.0, 0.0, 4.5], [0.0, 10.0, 4.5], [0.0, 0.0, 1.0]])
        self.c2w = np.stack([np.eye(4)])
        self.classes = [type("C", (), {"id": c, "name": n})() for c, n in ((WALL, "wall"), (TABLE, "table"),
                                                                           (BOTTLE, "bottle"))]
        self.root = "scene"
        self.frame_ids = ["f0"]

    def thing_ids(self):
        return [TABLE, BOTTLE]

    def load_depth_m(self, i):
        return np.full((10, 10), 2.0, np.float32)

    def load_masks(self, i):
        sem = np.zeros((10, 10), np.uint16)
        sem[:, :5] = TABLE
        return np.zeros((10, 10), np.uint16), sem, {}


def test_mask_votes_and_both_rules_on_a_tiny_scene():
    scene = _Scene()
    # vertices on the plane at pixel columns u = 1, 3 (masked), 6, 8 (unmasked); one 1 m behind the plane
    u = np.array([1, 3, 6, 8, 1])
    z = np.array([2.0, 2.0, 2.0, 2.0, 3.0])
    verts = np.stack([(u - 4.5) / 10 * z, np.zeros(5), z], 1)
    votes = mask_class_votes(verts, scene, [0], depth_tol_m=0.03)
    assert votes.shape == (5, 4) and votes[:, TABLE].tolist() == [1, 1, 0, 0, 0] and votes.sum() == 2
    sem = np.array([TABLE, TABLE, WALL, WALL, WALL])
    inst = np.array([4, 4, 0, 0, 0])
    lines = []
    s, i, changed = relabel_mesh(verts, np.zeros((0, 3), int), sem, inst, scene, [0], split=True, fill=True,
                                 params=RelabelParams(depth_tol_m=0.03), log=lines.append)
    # every unmasked vertex takes the labels of the nearest masked one (vertex 1 for 2 and 3, vertex 0 for 4)
    assert s.tolist() == [TABLE] * 5 and i.tolist() == [4] * 5 and changed.tolist() == [False, False, True, True,
                                                                                          True]
    assert any("3 of 5 vertices have a class no mask confirms" in m and "3 no mask labels at all" in m for m in lines)
    s, i, changed = relabel_mesh(verts, np.zeros((0, 3), int), sem, inst, scene, [0], split=True, fill=False)
    assert s.tolist() == sem.tolist() and not changed.any()
    # a vertex the masks label only with another class is not confirmed either: vertex 0 called wall by the
    # fields, table by the mask, takes the labels of its nearest confirmed vertex (1: table, id 4)
    sem2 = np.array([WALL, TABLE, WALL, WALL, WALL])
    s, i, changed = relabel_mesh(verts, np.zeros((0, 3), int), sem2, np.array([0, 4, 0, 0, 0]), scene, [0],
                                 split=False, fill=True)
    assert s.tolist() == [TABLE] * 5 and i.tolist() == [4] * 5 and changed.tolist() == [True, False, True, True, True]


def test_relabel_file_round_trip_and_a_stale_file(tmp_path):
    changed = np.array([False, True, False, True])
    write_relabel(tmp_path, changed)
    assert read_relabel(tmp_path, 4).tolist() == changed.tolist()
    with pytest.raises(ValueError, match="relabel.npz"):
        read_relabel(tmp_path, 3)                             # index 3 does not fit a 3-vertex mesh
    assert read_relabel(tmp_path / "nowhere", 4) is None
    assert labels_before_relabel(tmp_path, np.zeros(4), np.zeros(4)) is None      # no earlier labels stored


def test_earlier_labels_come_back_and_follow_a_cull(tmp_path):
    sem_before, inst_before = np.array([1, 2, 2, 3, 1]), np.array([0, 5, 5, 6, 0])
    sem_after, inst_after = np.array([1, 1, 2, 2, 1]), np.array([0, 0, 5, 5, 0])
    write_relabel(tmp_path, np.array([False, True, False, True, False]), sem_before, inst_before)
    s, i = labels_before_relabel(tmp_path, sem_after, inst_after)
    assert s.tolist() == sem_before.tolist() and i.tolist() == inst_before.tolist()
    # the cull keeps vertices 0, 3, 4 (new indices 0, 1, 2): changed vertex 3 becomes 1, vertex 1 is gone
    cull_relabel(tmp_path, np.array([True, False, False, True, True]))
    assert read_relabel(tmp_path, 3).tolist() == [False, True, False]
    s, i = labels_before_relabel(tmp_path, np.array([1, 2, 1]), np.array([0, 5, 0]))
    assert s.tolist() == [1, 3, 1] and i.tolist() == [0, 6, 0]


def test_label_image_correction_by_hand():
    K = np.array([[10.0, 0.0, 2.0], [0.0, 10.0, 2.0], [0.0, 0.0, 1.0]])     # 5 x 5, centre pixel (2, 2)
    # vertex 0 (changed) sits where pixel (v 2, u 3) back-projects at depth 1; vertex 1 (unchanged) at (2, 1)
    verts = np.array([[0.1, 0.0, 1.0], [-0.1, 0.0, 1.0]])
    corr = LabelImageCorrector(verts, np.array([TABLE, TABLE]), np.array([6, 6]), np.array([True, False]),
                               tol_m=0.02)
    depth = np.ones((5, 5), np.float32)
    depth[0, 0] = 0.0
    sem_img = np.full((5, 5), WALL)
    inst_img = np.zeros((5, 5), np.int64)
    s, i, n = corr.correct(K, np.eye(4), depth, sem_img, inst_img)
    assert n == 1 and s[2, 3] == TABLE and i[2, 3] == 6
    assert (s == WALL).sum() == 24 and s[2, 1] == WALL                     # the unchanged vertex's pixel stays
    assert (sem_img == WALL).all()                                          # inputs untouched
    # the same pixel seen 5 cm further away is not on the vertex (tolerance 2 cm)
    _, _, n = corr.correct(K, np.eye(4), depth + 0.05, sem_img, inst_img)
    assert n == 0
    # with a 6 cm meshing voxel a surface point may lie up to sqrt(3)/2 x 6 = 5.2 cm from its nearest vertex:
    # the bound is 2 + 5.2 cm, so the pixel 5 cm off now lands on vertex 0 ((0.105, 0, 1.05) is 5.0 cm from it),
    # and pixel (2, 4), 10 cm from vertex 0, still does not
    corr6 = LabelImageCorrector(verts, np.array([TABLE, TABLE]), np.array([6, 6]), np.array([True, False]),
                                tol_m=0.02, voxel_m=0.06)
    assert abs(corr6.max_dist_m - (0.02 + 0.03 * np.sqrt(3.0))) < 1e-12
    s6, _, n = corr6.correct(K, np.eye(4), depth + 0.05, sem_img, inst_img)
    assert n == 1 and s6[2, 3] == TABLE
    s6, _, n = corr6.correct(K, np.eye(4), depth, sem_img, inst_img)
    assert n == 1 and s6[2, 4] == WALL
