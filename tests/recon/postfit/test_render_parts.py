"""The pieces of `run.py render` without a run: options, label colours, the agreement count, the video writer."""
from __future__ import annotations

import json

import numpy as np
import pytest

from recon.data.palette import class_palette, instance_palette
from recon.postfit.renders import (LabelAgreement, RenderError, check_pose_source, color_labels, legend_colors,
                                   parse_size, parse_what)
from recon.postfit.video import Mp4Writer, captioned, count_frames, even_pad, side_by_side


def test_options():
    assert parse_what("panoptic, rgb,depth") == ["rgb", "depth", "panoptic"]             # canonical order
    assert parse_what(["semantic", "semantic"]) == ["semantic"]
    with pytest.raises(RenderError, match="unknown items 'normal', 'x'"):
        parse_what("rgb,normal,x")
    with pytest.raises(RenderError, match="--what is empty"):
        parse_what(" , ")
    assert parse_size("320X240") == (320, 240) and parse_size(None) is None and parse_size((64, 48)) == (64, 48)
    for bad in ("320", "axb", "0x10", "10x-3", "9000x10"):
        with pytest.raises(RenderError, match="--size"):
            parse_size(bad)
    assert check_pose_source(None, None, False, None, None) == "frames"
    assert check_pose_source(None, None, True, None, 12) == "orbit"
    assert check_pose_source(None, None, False, "interpolate", 2) == "interpolate"
    with pytest.raises(RenderError, match="--frames and --poses and --orbit conflict"):
        check_pose_source("eval", "p.txt", True, None, None)
    with pytest.raises(RenderError, match="the only path is 'interpolate'"):
        check_pose_source(None, None, False, "spiral", None)
    with pytest.raises(RenderError, match="at least 2"):
        check_pose_source(None, None, False, "interpolate", 1)


def test_label_colours_by_hand(tmp_path):
    (tmp_path / "legend.json").write_text(json.dumps([{"id": 0, "name": "unlabelled", "color": [128, 128, 128]},
                                                      {"id": 1, "name": "wall", "color": [10, 20, 30]},
                                                      {"id": 3, "name": "chair", "color": [200, 0, 0]}]))
    lut = legend_colors(tmp_path, n_classes=3)
    assert lut.shape == (4, 3)
    assert lut[1].tolist() == [10, 20, 30] and lut[3].tolist() == [200, 0, 0]
    assert lut[2].tolist() == class_palette(4)[2].tolist()                 # not in the legend: the palette's
    assert legend_colors(tmp_path / "none", 5).tolist() == class_palette(5).tolist()
    sem = np.array([[1, 3], [3, 0]])
    inst = np.array([[0, 2], [5, 0]])
    ilut = instance_palette(np.arange(6))
    pan = color_labels("panoptic", sem, inst, lut, ilut)
    assert pan[0, 0].tolist() == [10, 20, 30] and pan[1, 1].tolist() == [128, 128, 128]    # stuff / nothing: class
    assert pan[0, 1].tolist() == ilut[2].tolist() and pan[1, 0].tolist() == ilut[5].tolist()  # things: instance
    ins = color_labels("instance", sem, inst, lut, ilut)
    assert ins[0, 0].tolist() == [0, 0, 0] and ins[1, 0].tolist() == ilut[5].tolist()
    assert color_labels("semantic", sem, inst, lut, ilut)[0, 1].tolist() == [200, 0, 0]
    # the instance colours are those of mesh_panoptic.ply, whatever the largest id in view
    assert instance_palette(np.arange(300))[5].tolist() == ilut[5].tolist()


def test_label_agreement_by_hand():
    a = LabelAgreement()
    sem_a = np.array([[1, 1, 2, 2]])
    inst_a = np.array([[0, 0, 4, 4]])
    ok_a = np.array([[True, True, True, False]])
    sem_b = np.array([[1, 2, 2, 2]])
    inst_b = np.array([[0, 7, 4, 4]])
    ok_b = np.array([[True, True, True, True]])
    a.add(sem_a, inst_a, ok_a, sem_b, inst_b, ok_b)
    # both labelled: pixels 0-2; classes equal at 0 and 2 -> 2/3; an instance at 1 (b) and 2 (both), equal at 2
    assert a.both == 3 and a.semantic == pytest.approx(2 / 3) and a.instance_pixels == 2
    assert a.instance == pytest.approx(1 / 2)
    a.add(sem_a, inst_a, ok_a, sem_a, inst_a, ok_a)                      # a view where they agree everywhere
    assert a.semantic == pytest.approx(5 / 6) and a.instance == pytest.approx(2 / 3)
    s = a.summary()
    assert s["labelled_mesh"] == pytest.approx(6 / 8) and s["labelled_fields"] == pytest.approx(7 / 8)
    assert np.isnan(LabelAgreement().semantic)


def test_video_writer_and_captions(tmp_path):
    assert even_pad(np.zeros((5, 7, 3), np.uint8)).shape == (6, 8, 3)
    img = np.full((30, 40, 3), 200, np.uint8)
    cap = captioned(img, "depth")
    assert cap.shape[1] == 40 and cap.shape[0] > 30
    np.testing.assert_array_equal(cap[-30:], img)                                   # the picture under its bar
    assert cap[: cap.shape[0] - 30].max() > 150                                     # light text on the bar
    sbs = side_by_side([img, img, img], ["rgb", "depth", "panoptic"])
    assert sbs.shape == (cap.shape[0], 120, 3)
    w = Mp4Writer(tmp_path / "v.mp4", fps=4)
    for k in range(7):
        w.append(np.full((31, 41, 3), 30 * k, np.uint8))                         # odd sizes: padded
    assert w.close() == tmp_path / "v.mp4"
    assert count_frames(tmp_path / "v.mp4") == 7
    assert not list(tmp_path.glob(".*.tmp"))
    broken = Mp4Writer(tmp_path / "b.mp4", fps=4)
    broken.append(img)
    broken.abort()
    assert not (tmp_path / "b.mp4").exists() and not list(tmp_path.glob(".*.tmp"))
