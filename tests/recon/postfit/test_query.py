"""Object queries (recon/postfit/query.py) and CLIP language features (recon/postfit/language.py).

The text rules and the box distance by hand; the query and embed commands end to end on a run folder built
here (a 4-frame scene of coloured rectangles, its instance label images and instances.json: no fit needed),
with a randomly initialised tiny CLIP model saved to a checkpoint and loaded back through the real loading
code, as a user's ViT-B-32 weights would be.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import run as run_py
from recon.data.run_files import write_label_images
from recon.data.scene import FrameRecord, write_scene
from recon.postfit.language import (LanguageError, View, best_views, crop_box, embed_run, encode_images,
                                    encode_texts, instance_views, load_clip, read_language, text_similarity)
from recon.postfit.query import (QueryError, box_distance, match_classes, normalise_text, parse_point,
                                 query_instances, read_instances, singular, synonym_table)

ROOT = Path(__file__).resolve().parents[3]


# ------------------------------------------------------------------------------------------------
# pure rules by hand
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("word,want", [("chairs", "chair"), ("shelves", "shelf"), ("boxes", "box"),
                                       ("benches", "bench"), ("libraries", "library"), ("lamps", "lamp"),
                                       ("glass", "glass"), ("bus", "bus"), ("sofa", "sofa"), ("tv", "tv")])
def test_singular(word, want):
    assert singular(word) == want


def test_normalise_text():
    assert normalise_text("  Office_Chairs ") == "office chair"
    assert normalise_text("tv-screen") == "tv screen"
    assert normalise_text("COFFEE   tables") == "coffee table"


def test_match_classes_own_name_wins_over_synonyms():
    syn = synonym_table([[("table", ["table", "desk"]), ("sofa", ["couch"])], [("desk", ["desk"])]])
    names = ["table", "sofa", "chair"]
    assert match_classes("Tables", names, syn) == {"table": "class"}
    assert match_classes("desk", names, syn) == {"table": "synonym"}      # no class 'desk' in this run
    assert match_classes("desk", names + ["desk"], syn) == {"desk": "class"}
    assert match_classes("couches", names, syn) == {"sofa": "synonym"}
    assert match_classes("lamp", names, syn) == {}


def test_box_distance_by_hand():
    lo, hi = np.array([0.0, 0, 0]), np.array([1.0, 2, 3])
    assert box_distance([0.5, 1, 1], lo, hi) == 0.0                     # inside
    assert box_distance([2.0, 1, 1], lo, hi) == pytest.approx(1.0)      # 1 m beyond x = 1
    assert box_distance([-3.0, 6, 1.5], lo, hi) == pytest.approx(5.0)   # (3, 4, 0) outside: 5 m


def test_parse_point():
    assert parse_point("1.5,2,-0.25").tolist() == [1.5, 2.0, -0.25]
    for bad in ("1,2", "a,b,c", "1,2,nan"):
        with pytest.raises(QueryError, match="--near"):
            parse_point(bad)


def test_instance_views_and_best_views_by_hand():
    inst = np.zeros((6, 8), np.int64)
    inst[1:3, 2:5] = 7            # 6 pixels, box (2, 1, 5, 3), inside
    inst[3:6, 0:2] = 9            # 6 pixels touching the left and bottom border
    v = instance_views(inst, frame=4)
    assert v[7] == View(4, (2, 1, 5, 3), 6, True)
    assert v[9] == View(4, (0, 3, 2, 6), 6, False)
    views = [View(0, (0, 0, 1, 1), 500, False), View(1, (1, 1, 2, 2), 100, True), View(2, (1, 1, 2, 2), 300, True),
             View(3, (1, 1, 2, 2), 5, True)]
    assert [w.frame for w in best_views(views, 3, min_pixels=20)] == [2, 1, 0]   # whole first, then by size


def test_crop_box_by_hand():
    # box 10 x 4 at (20..30, 10..14): side 10 * 1.2 = 12, centred on (25, 12) -> x 19..31, y 6..18
    assert crop_box((20, 10, 30, 14), (64, 48), 0.1) == (19, 6, 31, 18)
    # near the top-left corner: shifted inside, not shrunk
    assert crop_box((0, 0, 10, 10), (64, 48), 0.1) == (0, 0, 12, 12)
    # larger than the image height: the side is cut to the image along that axis only
    assert crop_box((0, 0, 60, 40), (64, 48), 0.1) == (0, 0, 64, 48)


# ------------------------------------------------------------------------------------------------
# a run folder by hand: 4 frames 48x32, instances 1 (red chair), 2 (green chair), 3 (blue table)
# ------------------------------------------------------------------------------------------------
CLASSES = [{"id": 1, "name": "wall", "thing": False}, {"id": 5, "name": "chair", "thing": True},
           {"id": 6, "name": "table", "thing": True}]
INSTANCES = [(1, "chair", 5, (255, 0, 0)), (2, "chair", 5, (0, 255, 0)), (3, "table", 6, (0, 0, 255))]
W, H = 48, 32


def _label_images(k: int) -> np.ndarray:
    inst = np.zeros((H, W), np.int64)
    inst[4:12, 4 + k:14 + k] = 1                    # whole in every frame, 80 px
    inst[14:30, 20:30] = 2 if k < 3 else 0          # 160 px, absent from the last frame
    inst[0:10, 34:48] = 3                           # touches the border
    return inst


@pytest.fixture(scope="module")
def hand_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("query")
    K = np.array([[40.0, 0, W / 2], [0, 40.0, H / 2], [0, 0, 1]])
    frames = []
    for k in range(4):
        inst = _label_images(k)
        color = np.full((H, W, 3), 128, np.uint8)
        for iid, _, _, rgb in INSTANCES:
            color[inst == iid] = rgb
        c2w = np.eye(4)
        c2w[0, 3] = 0.1 * k
        frames.append(FrameRecord(color=color, c2w=c2w, depth_m=np.full((H, W), 2.0)))
    scene = write_scene(root / "scene", K=K, frames=frames, classes=CLASSES)
    run = root / "run"
    (run / "instances").mkdir(parents=True)
    entries = []
    for iid, name, cid, _ in INSTANCES:
        lo = np.array([iid, 0.0, 0.0])
        entries.append({"id": iid, "class_id": cid, "class": name, "score": 0.9 - 0.1 * iid, "n_vertices": 10,
                        "n_faces": 10, "bbox_min": lo.tolist(), "bbox_max": (lo + [0.5, 0.5, 1.0]).tolist(),
                        "centroid": (lo + [0.25, 0.25, 0.5]).tolist(), "file": f"instances/{iid}_{name}.ply"})
    (run / "instances.json").write_text(json.dumps({"instances": entries}))
    (run / "scene.txt").write_text(str(scene.resolve()) + "\n")
    ids = [f"{k:06d}" for k in range(4)]
    write_label_images(run, ids, [np.zeros((H, W), np.int64)] * 4, [_label_images(k) for k in range(4)])
    return run


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> tuple[str, Path]:
    """A randomly initialised small CLIP registered with open_clip, saved as a checkpoint file."""
    import open_clip
    import torch
    d = tmp_path_factory.mktemp("clip")
    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16,
                                           "head_width": 32},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
    (d / "TinyCLIP-recon-test.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(d / "TinyCLIP-recon-test.json")
    torch.manual_seed(0)
    model = open_clip.create_model("TinyCLIP-recon-test")
    torch.save(model.state_dict(), d / "tiny_clip.pt")
    return "TinyCLIP-recon-test", d / "tiny_clip.pt"


def _cli(capsys, *argv) -> tuple[int, str, str]:
    rc = run_py.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_query_by_class_synonym_and_near(hand_run, capsys):
    rc, out, _ = _cli(capsys, "query", "--run", hand_run, "chairs", "--json")
    assert rc == 0
    hits = json.loads(out)["instances"]
    assert [h["id"] for h in hits] == [1, 2] and {h["match"] for h in hits} == {"class"}
    assert hits[0]["size_m"] == [0.5, 0.5, 1.0] and hits[0]["file"] == str((hand_run / "instances/1_chair.ply").resolve())
    # 'desk' is a prompt-table keyword of 'table' (configs/prompts/indoor.yaml)
    rc, out, _ = _cli(capsys, "query", "--run", hand_run, "desk", "--json")
    hits = json.loads(out)["instances"]
    assert [(h["id"], h["match"]) for h in hits] == [(3, "synonym")]
    # --near sorts by the distance to the box: point (2.6, 0.25, 0.5) is 0.1 m from box 2, 1.1 m from box 1
    rc, out, _ = _cli(capsys, "query", "--run", hand_run, "chair", "--near", "2.6,0.25,0.5", "--json")
    hits = json.loads(out)["instances"]
    assert [(h["id"], h["distance_m"]) for h in hits] == [(2, 0.1), (1, 1.1)]


def test_query_unknown_word_without_language_features(hand_run, capsys):
    rc, _, err = _cli(capsys, "query", "--run", hand_run, "giraffe")
    assert rc == 2 and "giraffe" in err and "vocabulary" in err and "run.py embed" in err
    rc, _, err = _cli(capsys, "query", "--run", hand_run.parent, "chair")
    assert rc == 2 and "instances.json" in err


def test_embed_picks_best_views_and_ranks_free_text(hand_run, tiny_clip, capsys, monkeypatch):
    name, ck = tiny_clip
    rc, _, err = _cli(capsys, "embed", "--run", hand_run, "--clip-checkpoint", ck, "--clip-model", name, "--crops", "2")
    assert rc == 0, err
    ids, emb, info = read_language(hand_run)
    assert ids.tolist() == [1, 2, 3] and emb.shape == (3, 32)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # instance 1 is whole everywhere with 80 px: the first two frames; instance 2 is absent from frame 3;
    # instance 3 touches the border: still embedded (no whole view exists)
    assert info["instances"]["1"]["frames"] == ["000000", "000001"]
    assert info["instances"]["2"]["frames"] == ["000000", "000001"]
    assert info["instances"]["3"]["whole"] == [False, False]
    # the embedding of instance 2 is the normalised mean of CLIP on its two crops, computed here directly
    model, pre, tok = load_clip(name, ck)
    img = np.full((H, W, 3), 128, np.uint8)
    for iid, _, _, rgb in INSTANCES:
        img[_label_images(0) == iid] = rgb
    x0, y0, x1, y1 = crop_box((20, 14, 30, 30), (W, H))
    e = encode_images(model, pre, [img[y0:y1, x0:x1]] * 2).mean(0)
    assert np.allclose(emb[1], e / np.linalg.norm(e), atol=1e-5)
    # free text: ranked by the cosine similarity with the text encoder's embedding of the template
    t = encode_texts(model, tok, ["something to sit on"])[0]
    want = [int(i) for i in ids[np.argsort(-(emb @ t))]][:2]
    rc, out, _ = _cli(capsys, "query", "--run", hand_run, "something to sit on", "--json", "--top", "2")
    hits = json.loads(out)["instances"]
    assert json.loads(out)["language_features"] is True
    assert [h["id"] for h in hits] == want and all(h["match"] == "clip" for h in hits)
    assert hits[0]["similarity"] == pytest.approx(float(emb[ids.tolist().index(want[0])] @ t), abs=1e-3)
    # a class word still matches by name; the CLIP score orders and is reported
    sims = text_similarity(hand_run, "chair")
    hits = query_instances(read_instances(hand_run), "chair", {}, similarity=sims)
    assert sorted(h.id for h in hits) == [1, 2] and all(h.similarity is not None for h in hits)
    assert hits[0].similarity >= hits[1].similarity


def test_embed_bad_inputs(hand_run, tiny_clip, tmp_path):
    name, ck = tiny_clip
    with pytest.raises(LanguageError, match="no such CLIP checkpoint"):
        embed_run(hand_run, tmp_path / "missing.pt", name)
    with pytest.raises(LanguageError, match="unknown CLIP model"):
        embed_run(hand_run, ck, "ViT-Q-99")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(LanguageError, match="junk.pt: cannot load it"):
        load_clip(name, junk)
    with pytest.raises(LanguageError, match="instances.json: missing"):
        embed_run(tmp_path, ck, name)
