"""Tests of the mask simulator's failure modes that persist over frames (recon/data/mask_sim.py):
runs of misses and class swaps, over-segmentation of large masks, masks bleeding onto their
support, the "-video" levels, and that the older levels still give the same masks bit for bit.

Each kind is checked by hand on tiny frames (a few rows and columns) whose expected output is
written out below, and the runs by their lengths over longer sequences.
"""
import hashlib
import json

import numpy as np
import pytest

from recon.data.mask_sim import (NOISE_LEVELS, MaskNoiseConfig, ObjectState, frame_object_states, noise_config,
                                 object_states, run_fraction, run_starts, simulate_frame_masks,
                                 simulate_scene_masks)

WALL, FLOOR, TABLE, CHAIR, SOFA, CABINET, LAMP, BOX, BOTTLE = 1, 2, 4, 5, 6, 8, 9, 10, 11
THINGS = {TABLE, CHAIR, SOFA, CABINET, LAMP, BOX, BOTTLE}
CONFUSABLE = {CHAIR: [SOFA], SOFA: [CHAIR], TABLE: [CABINET], CABINET: [TABLE]}


def clean(**kw) -> MaskNoiseConfig:
    """The clean level with ids 1..n in GT-id order (readable expected images), plus overrides."""
    return noise_config("clean", shuffle_ids=False, **kw)


def paint(shape, floor_cls, objects):
    """GT semantic and instance images [H, W] uint16: `floor_cls` everywhere, then each
    (gt id, class, (row0, row1, col0, col1) inclusive) painted in order."""
    sem = np.full(shape, floor_cls, np.uint16)
    ins = np.zeros(shape, np.uint16)
    for gid, cls, (r0, r1, c0, c1) in objects:
        sem[r0:r1 + 1, c0:c1 + 1] = cls
        ins[r0:r1 + 1, c0:c1 + 1] = gid
    return sem, ins


def blocks(frames: list[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive frame indices as (first, length)."""
    out = []
    for f in sorted(frames):
        if out and out[-1][0] + out[-1][1] == f:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((f, 1))
    return out


# ----------------------------------------------------------------------------- the old levels are unchanged

# Digests of the masks of the levels below on HASH_FRAMES, recorded with mask_sim.py as it was before the
# persistent failure modes were added (git b9e146b). They must never change.
OLD_DIGESTS = {
    "clean": "fbfe8966e379c9ed1f76f64704c74193649989b1e59d3bec76fd790cbdfb81b3",
    "realistic": "6c83150c90d5a2c98bca8f32c372a467adacb68ee1a0e18ec26b12ede324be5e",
    "hard": "fbba3cd3df29d9171b8ce21d00a4fff9d2a11c6daffc055ed2970ad7ae944e90",
}
HASH_OBJECTS = [(11, 5, (30, 50, 5, 20)), (12, 6, (32, 50, 20, 38)), (13, 4, (35, 48, 42, 62)),
                (14, 8, (25, 50, 62, 75)), (15, 9, (5, 20, 5, 16)), (16, 10, (10, 22, 28, 40)),
                (17, 5, (8, 24, 45, 58)), (18, 10, (50, 57, 22, 30))]   # (gt id, class, [y0, y1) x [x0, x1))


def hash_frames(n: int = 24) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """24 jittered 60x80 frames of wall / floor and 8 things (several touching)."""
    rng = np.random.default_rng(20240519)
    yy, xx = np.mgrid[0:60, 0:80]
    sems, inss = [], []
    for _ in range(n):
        sem = np.where(yy < 28 + int(rng.integers(-2, 3)), 1, 2).astype(np.uint16)
        ins = np.zeros((60, 80), np.uint16)
        for gid, cls, (y0, y1, x0, x1) in HASH_OBJECTS:
            dy, dx = (int(v) for v in rng.integers(-2, 3, 2))
            m = (yy >= y0 + dy) & (yy < y1 + dy) & (xx >= x0 + dx) & (xx < x1 + dx)
            sem[m], ins[m] = cls, gid
        sems.append(sem)
        inss.append(ins)
    return sems, inss


@pytest.mark.parametrize("level", sorted(OLD_DIGESTS))
def test_old_levels_give_bit_identical_masks(level):
    sems, inss = hash_frames()
    h = hashlib.sha256()
    for fm in simulate_scene_masks(sems, inss, {4, 5, 6, 8, 9, 10}, {5: [6], 6: [5], 4: [8], 8: [4]},
                                   NOISE_LEVELS[level], seed=7):
        h.update(fm.instance.tobytes())
        h.update(fm.semantic.tobytes())
        h.update(json.dumps(fm.scores, sort_keys=True).encode())
    assert h.hexdigest() == OLD_DIGESTS[level]


def test_new_kinds_off_by_default_and_validated():
    for cfg in (MaskNoiseConfig(), NOISE_LEVELS["clean"], NOISE_LEVELS["realistic"], NOISE_LEVELS["hard"]):
        assert cfg.p_miss_start == cfg.p_swap_start == cfg.p_overseg_start == cfg.p_bleed_start == 0.0
        assert object_states(cfg, 0, [1, 2], 5) == [{}] * 5
    assert {"realistic-video", "hard-video"} <= set(NOISE_LEVELS)
    assert noise_config("clean", bleed_px=[1, 2]).bleed_px == (1, 2)              # YAML lists
    with pytest.raises(ValueError, match="p_swap_start"):
        noise_config("clean", p_swap_start=1.5)
    with pytest.raises(ValueError, match="overseg_parts"):
        noise_config("clean", overseg_parts=(1, 3))                               # a cut needs >= 2 parts
    with pytest.raises(ValueError, match="miss_run_frames"):
        noise_config("clean", miss_run_frames=(0, 3))
    with pytest.raises(ValueError, match="bleed_px"):
        noise_config("clean", bleed_px=(4, 2))
    with pytest.raises(ValueError, match="realistic-video"):
        noise_config("loud")                                                      # the error lists the levels


# ----------------------------------------------------------------------------- runs


def test_run_starts_by_hand():
    u = np.array([0.9, 0.1, 0.5, 0.05, 0.9, 0.3, 0.01, 0.9])
    lengths = np.array([1, 3, 1, 2, 1, 1, 4, 1])
    # frame 1 starts a run of 3 (frames 1-3; u[3] < p is inside it and starts nothing); frame 6 one
    # of 4, cut at the last frame
    np.testing.assert_array_equal(run_starts(u, 0.2, lengths), [-1, 1, 1, 1, -1, -1, 6, 6])
    np.testing.assert_array_equal(run_starts(u, 0.0, lengths), [-1] * 8)
    np.testing.assert_array_equal(run_starts(u, 1.0, np.full(8, 3)), [0, 0, 0, 3, 3, 3, 6, 6])


def test_run_fraction_by_hand_and_measured():
    assert run_fraction(0.1, 4, 4) == pytest.approx(0.4 / 1.3)                    # p m / (p m + 1 - p)
    assert run_fraction(0.0, 3, 8) == 0.0 and run_fraction(1.0, 2, 2) == 1.0
    rng = np.random.default_rng(0)
    n = 40000
    start = run_starts(rng.random(n), 0.05, rng.integers(3, 9, n))
    assert abs((start >= 0).mean() - run_fraction(0.05, 3, 8)) < 0.01


@pytest.mark.parametrize("video,base", [("realistic-video", "realistic"), ("hard-video", "hard")])
def test_video_levels_keep_the_base_rates(video, base):
    """The share of frames with a miss or a class swap stays within one point of the base level."""
    v, b = NOISE_LEVELS[video], NOISE_LEVELS[base]
    miss = 1 - (1 - v.p_miss) * (1 - run_fraction(v.p_miss_start, *v.miss_run_frames))
    swap = 1 - (1 - v.p_confuse) * (1 - run_fraction(v.p_swap_start, *v.swap_run_frames))
    assert abs(miss - b.p_miss) < 0.01 and abs(swap - b.p_confuse) < 0.01, (miss, swap)
    assert min(v.p_miss_start, v.p_swap_start, v.p_overseg_start, v.p_bleed_start) > 0
    # and measured on a sequence of one chair, 400 frames: misses come in runs
    sem, ins = paint((12, 16), FLOOR, [(3, CHAIR, (2, 9, 3, 12))])
    outs = simulate_scene_masks([sem] * 400, [ins] * 400, THINGS, CONFUSABLE, v, seed=3)
    missed = [f for f, fm in enumerate(outs) if 3 in fm.log["missed"]]
    assert abs(len(missed) / 400 - b.p_miss) < 0.06
    assert max(length for _, length in blocks(missed)) >= v.miss_run_frames[0]


def test_object_states_depend_on_nothing_else():
    cfg = noise_config("hard-video")
    full = object_states(cfg, 5, [3, 7], 60)
    assert any(full)                                                              # some run somewhere
    for f in (0, 17, 59):
        assert object_states(cfg, 5, [3, 7], f + 1)[f] == full[f]                 # later frames change nothing
    with_more = object_states(cfg, 5, [3, 7, 9], 60)
    assert [{g: s for g, s in st.items() if g != 9} for st in with_more] == full  # other objects change nothing
    assert object_states(cfg, 6, [3, 7], 60) != full                              # the seed does
    # frame_object_states: the states of the ids in one frame's instance image
    ins = np.zeros((4, 4), np.uint16)
    ins[0, 0], ins[1, 1] = 7, 9
    assert frame_object_states(cfg, 5, ins, 17) == {g: s for g, s in with_more[17].items() if g in (7, 9)}


def test_scene_equals_frame_by_frame():
    """simulate_scene_masks == simulate_frame_masks on each frame with its stream and states (what a
    batched, resumable segmenter run has to do)."""
    cfg = noise_config("hard-video")
    sems, inss = hash_frames(12)
    scene = simulate_scene_masks(sems, inss, THINGS, CONFUSABLE, cfg, seed=4)
    streams = np.random.SeedSequence(4).spawn(12)
    for i in (0, 5, 11):
        fm = simulate_frame_masks(sems[i], inss[i], THINGS, CONFUSABLE, cfg, np.random.default_rng(streams[i]),
                                  states=frame_object_states(cfg, 4, inss[i], i))
        np.testing.assert_array_equal(fm.instance, scene[i].instance)
        np.testing.assert_array_equal(fm.semantic, scene[i].semantic)
        assert fm.scores == scene[i].scores


# ----------------------------------------------------------------------------- each kind by hand


def test_miss_runs_by_hand():
    # 6x8 frames: floor and one chair (id 5, rows 1-3, columns 2-5) in every frame
    sem, ins = paint((6, 8), FLOOR, [(5, CHAIR, (1, 3, 2, 5))])
    # p = 1: the chair is missed in every frame; its pixels are unlabelled, the floor stays
    outs = simulate_scene_masks([sem] * 4, [ins] * 4, THINGS, CONFUSABLE,
                                clean(p_miss_start=1.0, miss_run_frames=(2, 2)), seed=0)
    want_sem = np.where(ins > 0, 0, FLOOR)
    for fm in outs:
        assert not fm.instance.any() and fm.scores == {}
        np.testing.assert_array_equal(fm.semantic, want_sem)
        assert fm.log["missed_run"] == [5]
    # p = 0.3, runs of exactly 3 frames: the chair is missed in whole runs, exactly as object_states says
    cfg = clean(p_miss_start=0.3, miss_run_frames=(3, 3))
    outs = simulate_scene_masks([sem] * 60, [ins] * 60, THINGS, CONFUSABLE, cfg, seed=2)
    states = object_states(cfg, 2, [5], 60)
    missed = [f for f, fm in enumerate(outs) if not fm.instance.any()]
    assert missed == [f for f in range(60) if 5 in states[f] and states[f][5].miss]
    assert 5 <= len(missed) <= 55
    for first, length in blocks(missed):
        assert length % 3 == 0 or first + length == 60                           # back-to-back runs of 3
    for f, fm in enumerate(outs):
        if f not in missed:
            np.testing.assert_array_equal(fm.instance, (ins > 0).astype(np.uint16))
            np.testing.assert_array_equal(fm.semantic, sem)


def test_swap_runs_by_hand():
    # a chair (id 5) whose confusable partners are the sofa and the lamp
    sem, ins = paint((6, 8), FLOOR, [(5, CHAIR, (1, 3, 2, 5))])
    conf = {CHAIR: [SOFA, LAMP]}
    cfg = clean(p_swap_start=1.0, swap_run_frames=(3, 3))
    outs = simulate_scene_masks([sem] * 6, [ins] * 6, THINGS, conf, cfg, seed=1)
    states = object_states(cfg, 1, [5], 6)
    for f, fm in enumerate(outs):
        want = [SOFA, LAMP][states[f][5].swap_pick % 2]
        np.testing.assert_array_equal(fm.semantic, np.where(ins > 0, want, FLOOR))
        assert fm.scores[1]["class"] == want and fm.log["swapped_run"] == {5: want}
    # frames 0-2 and 3-5 are one run each: one partner per run
    assert len({int(outs[f].semantic[2, 3]) for f in (0, 1, 2)}) == 1
    assert len({int(outs[f].semantic[2, 3]) for f in (3, 4, 5)}) == 1
    # with p = 0.25 and runs of 4 over 80 frames: the chair is swapped in blocks of whole runs, exactly
    # where object_states says, and the class changes only where a new run may start (every 4 frames)
    cfg = clean(p_swap_start=0.25, swap_run_frames=(4, 4))
    outs = simulate_scene_masks([sem] * 80, [ins] * 80, THINGS, conf, cfg, seed=9)
    states = object_states(cfg, 9, [5], 80)
    cls = [int(fm.semantic[2, 3]) for fm in outs]
    swapped = [f for f in range(80) if cls[f] != CHAIR]
    assert swapped == [f for f in range(80) if 5 in states[f]]
    assert 10 <= len(swapped) <= 75 and set(cls) == {CHAIR, SOFA, LAMP}
    for first, length in blocks(swapped):
        assert length % 4 == 0 or first + length == 80
        for f in range(first + 1, first + length):
            assert cls[f] == cls[f - 1] or (f - first) % 4 == 0


def test_overseg_by_hand():
    # 8x12: a sofa (id 4) over rows 1-4 and all 12 columns (half the image), a 2x2 chair (id 9) below
    sem, ins = paint((8, 12), FLOOR, [(4, SOFA, (1, 4, 0, 11)), (9, CHAIR, (6, 7, 5, 6))])
    cfg = clean(p_overseg_start=1.0, overseg_run_frames=(5, 5), overseg_parts=(3, 3), overseg_min_frac=0.1)
    fm = simulate_scene_masks([sem], [ins], THINGS, CONFUSABLE, cfg, seed=0)[0]
    # the sofa is cut across its long (horizontal) axis into three 4x4 masks, left to right; the chair
    # covers 4 px < 0.1 of the image and stays whole
    want = np.zeros((8, 12), np.uint16)
    want[1:5, 0:4], want[1:5, 4:8], want[1:5, 8:12] = 1, 2, 3
    want[6:8, 5:7] = 4
    np.testing.assert_array_equal(fm.instance, want)
    np.testing.assert_array_equal(fm.semantic, sem)
    assert {k: v["class"] for k, v in fm.scores.items()} == {1: SOFA, 2: SOFA, 3: SOFA, 4: CHAIR}
    assert fm.log["overseg"] == {4: 3} and fm.log["sources"] == {1: (4,), 2: (4,), 3: (4,), 4: (9,)}
    # a tall object is cut across its vertical axis: top and bottom halves
    sem, ins = paint((8, 6), FLOOR, [(2, CABINET, (0, 7, 1, 3))])
    fm = simulate_scene_masks([sem], [ins], THINGS, CONFUSABLE, clean(p_overseg_start=1.0, overseg_parts=(2, 2)),
                              seed=0)[0]
    want = np.zeros((8, 6), np.uint16)
    want[0:4, 1:4], want[4:8, 1:4] = 1, 2
    np.testing.assert_array_equal(fm.instance, want)


def test_bleed_by_hand():
    # 8x10: floor; a chair (id 3, rows 2-3, cols 3-5) on the floor; a table (id 8) along the bottom
    # (rows 6-7); a bottle (id 12, rows 4-5, cols 7-8) standing on the table
    sem, ins = paint((8, 10), FLOOR, [(3, CHAIR, (2, 3, 3, 5)), (8, TABLE, (6, 7, 0, 9)),
                                     (12, BOTTLE, (4, 5, 7, 8))])
    fm = simulate_scene_masks([sem], [ins], THINGS, CONFUSABLE,
                              clean(p_bleed_start=1.0, bleed_run_frames=(3, 3), bleed_px=(2, 2)), seed=0)[0]
    # the chair bleeds 2 rows into the floor (rows 4-5), the bottle 2 rows into the table below it
    # (taking those table pixels); the table stands on the image border: nothing below, no bleed
    want = np.zeros((8, 10), np.uint16)
    want[2:6, 3:6] = 1                       # chair (ids in GT-id order: 3, 8, 12 -> 1, 2, 3)
    want[6:8, :] = 2                         # table
    want[4:8, 7:9] = 3                       # bottle and its bleed
    np.testing.assert_array_equal(fm.instance, want)
    want_sem = np.full((8, 10), FLOOR, np.uint16)
    want_sem[want == 1], want_sem[want == 2], want_sem[want == 3] = CHAIR, TABLE, BOTTLE
    np.testing.assert_array_equal(fm.semantic, want_sem)
    assert fm.log["bleed"] == {3: 2, 12: 2}
    # with erosion: a 4x5 chair eroded by 1 px bleeds 2 px down from its eroded lower edge, which
    # refills its own eroded bottom row and takes one floor row
    sem, ins = paint((8, 9), FLOOR, [(3, CHAIR, (1, 4, 2, 6))])
    fm = simulate_scene_masks([sem], [ins], THINGS, CONFUSABLE,
                              clean(erode_px_min=1, erode_px_max=1, p_bleed_start=1.0, bleed_px=(2, 2)),
                              seed=0)[0]
    want = np.zeros((8, 9), np.uint16)
    want[2:6, 3:6] = 1                       # eroded rows 2-3, refilled row 4, floor row 5
    np.testing.assert_array_equal(fm.instance, want)


def test_bleed_and_overseg_only_on_one_object_masks():
    # two touching chairs merged into one mask: neither over-segmentation nor bleeding applies
    sem, ins = paint((8, 12), FLOOR, [(1, CHAIR, (1, 4, 0, 5)), (2, CHAIR, (1, 4, 6, 11))])
    cfg = clean(p_merge=1.0, p_overseg_start=1.0, overseg_min_frac=0.0, p_bleed_start=1.0, bleed_px=(2, 2))
    fm = simulate_frame_masks(sem, ins, THINGS, CONFUSABLE, cfg, np.random.default_rng(0),
                              states={1: ObjectState(overseg_parts=2, bleed_px=2),
                                      2: ObjectState(overseg_parts=2, bleed_px=2)})
    np.testing.assert_array_equal(fm.instance, (ins > 0).astype(np.uint16))
    assert fm.log["merged"] == [(1, 2)] and not fm.log["overseg"] and not fm.log["bleed"]
