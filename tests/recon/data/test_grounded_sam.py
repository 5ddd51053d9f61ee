"""Grounded-SAM front-end: prompt tables, detection selection, per-pixel merging, the resumable
writer, and (when torchvision, segment_anything and groundingdino import) the real models with
random weights and a tiny local text encoder, from colour images to validated masks/."""
import contextlib
import io
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from app.commands import UserError, cmd_segment
from recon.core.config import ConfigError
from recon.data.grounded_sam import (SAM_SPECS, GroundedSamSource, SamSpec, boxes_cxcywh_to_xyxy_px,
                                     dino_resize_hw, nms_per_class, select_detections)
from recon.data.make_synth import make_synth_scene
from recon.data.mask_sim import noise_config, simulate_scene_masks
from recon.data.mask_source import WORK_DIR, SimMaskSource, merge_masks, run_mask_source
from recon.data.prompts import (PromptClass, PromptTableFile, build_caption, build_prompt_table, load_prompt_table,
                                resolve_classes, split_keywords, token_spans)
from recon.data.scene import ClassInfo, load_scene
from recon.core.settings import SynthSettings

ROOT = Path(__file__).resolve().parents[3]
quiet = lambda *_: None  # noqa: E731


# ----------------------------------------------------------------------------- merging

def _hand_masks():
    """4 candidates on a 3x4 image: chair 0.9 (top-left 2x2), wall 0.5 (all), table 0.7, chair 0.7."""
    m = np.zeros((4, 3, 4), bool)
    m[0, 0:2, 0:2] = True
    m[1] = True
    m[2, 1:3, 1:4] = True
    m[3, 2, 0] = True
    m[3, 2, 3] = True          # ties with the table (0.7) at (2, 3): the lower index wins
    return m, np.array([0.9, 0.5, 0.7, 0.7]), np.array([5, 1, 4, 5]), np.array([True, False, True, True])


def test_merge_masks_highest_score_wins_per_pixel():
    fm = merge_masks(*_hand_masks())
    np.testing.assert_array_equal(fm.instance, [[1, 1, 0, 0], [1, 1, 2, 2], [3, 2, 2, 2]])
    np.testing.assert_array_equal(fm.semantic, [[5, 5, 1, 1], [5, 5, 4, 4], [5, 4, 4, 4]])
    assert fm.instance.dtype == np.uint16 and fm.semantic.dtype == np.uint16
    assert fm.scores == {1: {"class": 5, "score": 0.9}, 2: {"class": 4, "score": 0.7},
                         3: {"class": 5, "score": 0.7}}


def test_merge_masks_drops_small_masks_and_recomputes():
    fm = merge_masks(*_hand_masks(), min_area_px=2)
    # candidate 3 is visible on 1 pixel only: dropped, the wall below shows through
    np.testing.assert_array_equal(fm.instance, [[1, 1, 0, 0], [1, 1, 2, 2], [0, 2, 2, 2]])
    np.testing.assert_array_equal(fm.semantic, [[5, 5, 1, 1], [5, 5, 4, 4], [1, 4, 4, 4]])
    assert set(fm.scores) == {1, 2} and fm.log["dropped_small"] == [3]
    empty = merge_masks(np.zeros((0, 3, 4), bool), [], [], [])
    assert not empty.instance.any() and not empty.semantic.any() and empty.scores == {}


# ----------------------------------------------------------------------------- prompt tables

def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_prompt_table_ids_keywords_and_defaults(tmp_path):
    t = load_prompt_table(_write(tmp_path / "p.yaml", """
classes:
  - {name: wall, thing: false, prompts: [Wall]}
  - {id: 2, name: chair, thing: true, prompts: [chair, "Office  Chair"]}
  - {name: lamp, thing: true}
"""))
    assert [(c.id, c.name, c.thing) for c in t.classes] == [(1, "wall", False), (2, "chair", True), (3, "lamp", True)]
    assert t.keywords == ("wall", "chair", "office chair", "lamp")       # normalised; name is the default prompt
    assert t.keyword_class == (1, 2, 2, 3)
    assert (t.box_threshold, t.text_threshold, t.max_box_frac) == (0.25, 0.25, 0.7)
    assert t.thing_ids() == {2, 3}
    for name in ("replica", "scannet", "indoor", "synth"):
        table = load_prompt_table(ROOT / "configs" / "prompts" / f"{name}.yaml")
        assert len(table.classes) >= 10 and any(not c.thing for c in table.classes)


@pytest.mark.parametrize("body, fragment", [
    ("classes:\n  - {name: a, thing: true, prompts: [x]}\n  - {name: b, thing: true, prompts: [X]}\n",
     "keyword 'x' already belongs to class 'a'"),
    ("box_threshold: 1.5\nclasses:\n  - {name: a, thing: true}\n", "box_threshold must lie in [0, 1]"),
    ("classes:\n  - {name: a, thing: true, prompt: [x]}\n", "Did you mean: prompts"),
    ("classes:\n  - {name: a, thing: true, prompts: [a.b]}\n", "contains '.'"),
    ("classes:\n  - {id: 3, name: a, thing: true}\n  - {id: 3, name: b, thing: true}\n", "id 3 is used twice"),
    ("classes: []\n", "no classes"),
])
def test_prompt_table_errors_name_the_file(tmp_path, body, fragment):
    path = _write(tmp_path / "bad.yaml", body)
    with pytest.raises(ConfigError) as info:
        load_prompt_table(path)
    assert fragment in str(info.value) and "bad.yaml" in str(info.value)


def test_caption_token_spans_and_chunks():
    caption, spans = build_caption(["chair", "floor lamp"])
    assert caption == "chair . floor lamp ." and spans == [(0, 5), (8, 18)]
    # BERT-style offsets: [CLS] chair . floor lamp . [SEP]; then 'armchair' as two word pieces
    assert token_spans([(0, 0), (0, 5), (6, 7), (8, 13), (14, 18), (19, 20), (0, 0)], spans) == [[1], [3, 4]]
    assert token_spans([(0, 0), (0, 3), (3, 8), (9, 10), (0, 0)], [(0, 8)]) == [[1, 2]]
    n_tokens = lambda cap: len(cap.split()) + 2  # noqa: E731  (words and dots, plus [CLS] and [SEP])
    assert split_keywords(n_tokens, ["a", "b c", "d"], 6) == [[0], [1], [2]]
    assert split_keywords(n_tokens, ["a", "b c", "d"], 7) == [[0, 1], [2]]
    assert split_keywords(n_tokens, ["a", "b c", "d"], 20) == [[0, 1, 2]]
    with pytest.raises(ConfigError, match="alone is longer"):
        split_keywords(n_tokens, ["a"], 3)


def test_resolve_classes_keeps_scene_ids_when_it_has_ground_truth():
    table = build_prompt_table(PromptTableFile(classes=[
        PromptClass("wall", False, ["wall"], 1), PromptClass("chair", True, ["chair"], 2),
        PromptClass("Table", True, ["table", "desk"], 3), PromptClass("book", True, ["book"], 4)]))
    scene = [ClassInfo(1, "wall", False, ("wall",)), ClassInfo(4, "table", True, ("table",)),
             ClassInfo(7, "lamp", True, ("lamp",))]
    out, id_map = resolve_classes(table, scene, has_gt=True, scene_dir=Path("s"))
    assert [(c.id, c.name) for c in out] == [(1, "wall"), (2, "chair"), (3, "book"), (4, "table"), (7, "lamp")]
    assert id_map == {1: 1, 2: 2, 3: 4, 4: 3} and out[3].prompts == ("table", "desk")
    out, id_map = resolve_classes(table, scene, has_gt=False, scene_dir=Path("s"))
    assert [c.id for c in out] == [1, 2, 3, 4] and id_map == {1: 1, 2: 2, 3: 3, 4: 4}
    with pytest.raises(ConfigError, match="'wall' is stuff in the table but a thing in the scene"):
        resolve_classes(table, [ClassInfo(1, "wall", True)], has_gt=True, scene_dir=Path("s"))


# ----------------------------------------------------------------------------- boxes and detections

def test_dino_resize_follows_the_official_rule():
    assert dino_resize_hw(480, 640) == (800, 1066)
    assert dino_resize_hw(640, 480) == (1066, 800)
    assert dino_resize_hw(968, 1296) == (800, 1071)
    assert dino_resize_hw(400, 1000) == (533, 1332)   # long side capped at 1333: short side 533


def test_box_conversion_iou_and_nms():
    xyxy = boxes_cxcywh_to_xyxy_px(np.array([[0.5, 0.5, 0.2, 0.4], [0.95, 0.1, 0.2, 0.4]]), 100, 50)
    np.testing.assert_allclose(xyxy, [[40, 15, 60, 35], [85, 0, 100, 15]])    # second one clipped
    # IoU of boxes 0 and 1 is 90 / 110 = 0.82: 1 goes at threshold 0.5 (same class), stays at 0.85;
    # box 2 is box 1 in another class: kept; box 3 overlaps nothing
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [1, 0, 11, 10], [20, 20, 30, 30]], float)
    keep = nms_per_class(boxes, np.array([0.9, 0.8, 0.7, 0.95]), np.array([1, 1, 2, 1]), 0.5)
    assert keep.tolist() == [3, 0, 2]
    assert nms_per_class(boxes, np.array([0.9, 0.8, 0.7, 0.95]), np.array([1, 1, 2, 1]), 0.85).tolist() == [3, 0, 1, 2]
    assert nms_per_class(boxes[:2], np.array([0.5, 0.5]), np.array([1, 1]), 0.5).tolist() == [0]  # tie: lower index


def test_select_detections_thresholds_and_big_thing_boxes():
    table = build_prompt_table(PromptTableFile(classes=[PromptClass("chair", True, ["chair"], 5),
                                                        PromptClass("wall", False, ["wall"], 1)],
                                               box_threshold=0.3, text_threshold=0.25))
    spans, kw_class = [[1], [3, 4]], [5, 1]
    p = np.full((7, 6), 0.01)
    boxes = np.tile([0.5, 0.5, 0.2, 0.2], (7, 1))
    p[0, 1], p[0, 3], p[0, 4] = 0.9, 0.2, 0.4                  # chair 0.9
    p[1, 1], p[1, 3], p[1, 4] = 0.1, 0.5, 0.3                  # wall 0.4, whole-image box (stuff: kept)
    boxes[1] = [0.5, 0.5, 1.0, 1.0]
    p[2, 1] = 0.8                                               # chair box > 70% of width and height: skipped
    boxes[2] = [0.5, 0.5, 0.8, 0.9]
    p[3, 1], p[3, 3], p[3, 4] = 0.2, 0.35, 0.05                # box passes (0.35), best keyword 0.2 fails
    p[4, 1] = 0.28                                              # box probability 0.28 < 0.3
    p[5, 0], p[5, 2] = 0.99, 0.99                               # only [CLS] and '.' fire: not a keyword
    p[6, 1] = 0.6                                               # wide but not tall chair box: kept
    boxes[6] = [0.5, 0.5, 0.8, 0.4]
    det = select_detections(p, boxes, spans, kw_class, {5}, table, width=100, height=50)
    np.testing.assert_allclose(det.boxes_px, [[40, 20, 60, 30], [0, 0, 100, 50], [10, 15, 90, 35]])
    assert det.classes.tolist() == [5, 1, 5]
    np.testing.assert_allclose(det.scores, [0.9, 0.4, 0.6])


# ----------------------------------------------------------------------------- the resumable writer

@pytest.fixture
def synth_scene(tmp_path):
    out = tmp_path / "room"
    make_synth_scene(SynthSettings(size=(40, 30), frames=4), out, log=quiet)
    return out


class ColourSource:
    """A deterministic MaskSource: thing 'chair' (5) where red > green, stuff 'wall' (1) elsewhere."""
    name = "test"
    batch_size = 3

    def __init__(self, fail_at: int | None = None, tag: str = "a"):
        self.fail_at, self.tag, self.calls, self.prepared = fail_at, tag, [], 0

    def fingerprint(self):
        return {"tag": self.tag}

    def output_classes(self):
        return None

    def check_scene(self, scene):
        pass

    def prepare(self):
        self.prepared += 1

    def masks(self, scene, indices):
        out = []
        for i in indices:
            if i == self.fail_at:
                raise RuntimeError("crash")
            self.calls.append(i)
            rgb = scene.load_color(i).astype(int)
            red = rgb[..., 0] > rgb[..., 1]
            fm = merge_masks(np.stack([red, ~red]), [0.8, 0.6], [5, 1], [True, False])
            out.append(fm)
        return out


def test_run_mask_source_resumes_after_a_crash(synth_scene):
    with pytest.raises(FileExistsError, match="already exists"):
        run_mask_source(synth_scene, ColourSource(), log=quiet)
    with pytest.raises(RuntimeError, match="crash"):
        run_mask_source(synth_scene, ColourSource(fail_at=3), force=True, log=quiet)
    work = synth_scene / WORK_DIR
    assert sorted(p.stem for p in (work / "scores").glob("*.json")) == ["000000", "000001", "000002"]
    before = load_scene(synth_scene).load_masks(0)            # the old masks/ is untouched so far
    with pytest.raises(FileExistsError, match="different settings"):
        run_mask_source(synth_scene, ColourSource(tag="b"), log=quiet)
    src = ColourSource()
    stats = run_mask_source(synth_scene, src, log=quiet)      # resume: only frame 3 is computed
    assert src.calls == [3] and stats == {"frames": 4, "resumed": 3, "computed": 1}
    assert not work.exists()
    scene = load_scene(synth_scene)
    for i in range(4):
        inst, sem, scores = scene.load_masks(i)
        red = scene.load_color(i)[..., 0] > scene.load_color(i)[..., 1]
        np.testing.assert_array_equal(sem, np.where(red, 5, 1))
        assert set(np.unique(inst[inst > 0]).tolist()) == set(scores) <= {1}
    assert not np.array_equal(before[1], scene.load_masks(0)[1])
    src = ColourSource()
    run_mask_source(synth_scene, src, force=True, log=quiet)  # --force: everything again
    assert src.calls == [0, 1, 2, 3] and src.prepared == 1


def test_sim_source_matches_the_simulator(synth_scene):
    run_mask_source(synth_scene, SimMaskSource("hard", 7), force=True, log=quiet)
    scene = load_scene(synth_scene)
    gts = [scene.load_gt(i) for i in range(len(scene))]
    from recon.data.make_synth import confusable_ids
    want = simulate_scene_masks([g[0] for g in gts], [g[1] for g in gts], set(scene.thing_ids()),
                                confusable_ids({c.name: c.id for c in scene.classes}), noise_config("hard"), seed=7)
    for i, w in enumerate(want):
        inst, sem, scores = scene.load_masks(i)
        np.testing.assert_array_equal(inst, w.instance)
        np.testing.assert_array_equal(sem, w.semantic)
        assert {k: v["class"] for k, v in scores.items()} == {k: v["class"] for k, v in w.scores.items()}


class Args:
    def __init__(self, scene, **kw):
        self.scene, self.backend, self.noise, self.seed, self.force = scene, "grounded-sam", "clean", 0, True
        self.prompts = self.dino_config = self.dino_checkpoint = self.sam_checkpoint = self.text_encoder = None
        self.sam_type, self.device, self.batch_size = "vit_h", "auto", 2
        self.__dict__.update(kw)


def test_segment_command_checks_inputs_before_work(synth_scene, tmp_path):
    with pytest.raises(UserError, match="needs --prompts"):
        cmd_segment(Args(synth_scene))
    prompts = ROOT / "configs" / "prompts" / "synth.yaml"
    with pytest.raises(UserError, match="needs --dino-config"):
        cmd_segment(Args(synth_scene, prompts=prompts))
    cfg = _write(tmp_path / "dino.py", "modelname = 'groundingdino'\n")
    with pytest.raises(UserError, match=r"--dino-checkpoint .*missing.pth: no such file"):
        cmd_segment(Args(synth_scene, prompts=prompts, dino_config=cfg, dino_checkpoint=tmp_path / "missing.pth"))
    junk = _write(tmp_path / "junk.pth", "not a checkpoint")
    with pytest.raises(UserError, match=r"--dino-checkpoint .*junk.pth: not a PyTorch checkpoint"):
        cmd_segment(Args(synth_scene, prompts=prompts, dino_config=cfg, dino_checkpoint=junk))


# ----------------------------------------------------------------------------- real models, random weights

TINY_SAM = SamSpec(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), img_size=128, window_size=4,
                   prompt_dim=32, decoder_mlp_dim=64, decoder_heads=2, iou_head_hidden=32)


def _need_models():
    """Skip (with the reason) unless the backend's packages import; a torchvision built for another
    torch raises RuntimeError rather than ImportError, so both count as 'not installed'."""
    import importlib
    for mod in ("torchvision.ops", "transformers", "segment_anything", "groundingdino.models"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importlib.import_module(mod)
        except Exception as exc:
            pytest.skip(f"the Grounded-SAM backend's packages are not installed or broken ({mod}: "
                        f"{type(exc).__name__}); see the README to install them")


def test_sam_specs_match_the_official_builders():
    _need_models()
    import torch
    from segment_anything import sam_model_registry
    from recon.data.grounded_sam import build_sam
    for name, spec in SAM_SPECS.items():
        with torch.device("meta"):
            ours = {k: tuple(v.shape) for k, v in build_sam(spec).state_dict().items()}
            theirs = {k: tuple(v.shape) for k, v in sam_model_registry[name]().state_dict().items()}
        assert ours == theirs, name


def _tiny_text_encoder(folder: Path) -> Path:
    """A 1-layer BERT with a small vocabulary, written locally (config.json, vocab.txt, weights)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast
    folder.mkdir()
    words = ["wall", "floor", "ceiling", "table", "desk", "chair", "arm", "##chair", "sofa", "lamp", "box", "book"]
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?"]
    (folder / "vocab.txt").write_text("\n".join(special + words) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=7 + len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=256)).save_pretrained(folder)
    return folder


def _tiny_dino_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(config, checkpoint, text encoder folder): the official SwinT-OGC config with 1 encoder and
    1 decoder layer, 16 queries and the tiny local text encoder; random weights."""
    import groundingdino
    import torch
    from groundingdino.models import build_model
    from groundingdino.util.slconfig import SLConfig
    bert = _tiny_text_encoder(tmp_path / "bert")
    text = (Path(groundingdino.__file__).parent / "config" / "GroundingDINO_SwinT_OGC.py").read_text()
    for key, value in (("enc_layers", "1"), ("dec_layers", "1"), ("num_queries", "16"),
                       ("dim_feedforward", "64"), ("text_encoder_type", repr(str(bert)))):
        text, n = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, flags=re.M)
        assert n == 1, key
    cfg = _write(tmp_path / "dino_tiny.py", text)
    args = SLConfig.fromfile(str(cfg))
    args.device = "cpu"
    torch.manual_seed(1)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(args)
    ckpt = tmp_path / "dino_tiny.pth"
    torch.save({"model": model.state_dict()}, ckpt)
    return cfg, ckpt, bert


def test_grounded_sam_random_weights_end_to_end(synth_scene, tmp_path):
    """Colour images -> GroundingDINO -> SAM -> merged masks -> masks/ + classes.json that validate."""
    _need_models()
    import torch
    from recon.data.grounded_sam import build_sam
    cfg, dino_ckpt, bert = _tiny_dino_files(tmp_path)
    torch.manual_seed(2)
    sam_ckpt = tmp_path / "sam_tiny.pth"
    torch.save(build_sam(TINY_SAM).state_dict(), sam_ckpt)
    prompts = _write(tmp_path / "prompts.yaml", (ROOT / "configs" / "prompts" / "synth.yaml").read_text()
                     .replace("box_threshold: 0.25", "box_threshold: 0.0")
                     .replace("text_threshold: 0.25", "text_threshold: 0.0"))
    specs = {**SAM_SPECS, "tiny": TINY_SAM}

    def source(**kw):
        # a small DINO input size keeps the test fast (the official 800 px short side is the default)
        base = dict(prompts=prompts, dino_config=cfg, dino_checkpoint=dino_ckpt, sam_checkpoint=sam_ckpt,
                    sam_type="tiny", text_encoder=str(bert), device="cpu", batch_size=3, short_side=64,
                    max_side=128, sam_specs=specs)
        return GroundedSamSource(**{**base, **kw})

    stats = run_mask_source(synth_scene, source(), force=True, log=quiet)
    assert stats["computed"] == 4
    scene = load_scene(synth_scene)                         # masks/ and classes.json validate
    assert [(c.id, c.name) for c in scene.classes][:3] == [(1, "wall"), (2, "floor"), (3, "ceiling")]
    labelled = 0
    for i in range(len(scene)):
        inst, sem, scores = scene.load_masks(i)
        labelled += int((sem > 0).sum())
        assert set(np.unique(inst[inst > 0]).tolist()) == set(scores) == set(range(1, len(scores) + 1))
        assert all(0.0 < v["score"] <= 1.0 for v in scores.values())
    assert labelled > 0, "random weights with zero thresholds must still produce masks"
    # a wrong --sam-type names the right one; a truncated checkpoint is named (both before any frame)
    with pytest.raises(ConfigError, match="pass --sam-type tiny"):
        run_mask_source(synth_scene, source(sam_type="vit_b"), force=True, log=quiet)
    sam_ckpt.write_bytes(sam_ckpt.read_bytes()[:5000])
    with pytest.raises(ConfigError, match=r"sam_tiny.pth: (cannot be read|not a PyTorch checkpoint)"):
        run_mask_source(synth_scene, source(), force=True, log=quiet)
