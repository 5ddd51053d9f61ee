"""Scene format: the writer's output validates; each kind of broken folder fails with its own message."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recon.data.scene import FrameRecord, SceneError, load_scene, replace_masks, write_scene

CLASSES = [
    {"id": 1, "name": "wall", "thing": False, "prompts": ["wall"]},
    {"id": 2, "name": "chair", "thing": True, "prompts": ["chair", "armchair"]},
]
W, H = 16, 12
K = np.array([[20.0, 0, 7.5], [0, 20.0, 5.5], [0, 0, 1]])


def _frame(n: int) -> FrameRecord:
    rng = np.random.default_rng(n)
    c2w = np.eye(4)
    c2w[:3, 3] = [0.1 * n, 0, 0]
    inst = np.zeros((H, W), np.uint16)
    sem = np.ones((H, W), np.uint16)
    inst[2:6, 3:8] = 7
    sem[2:6, 3:8] = 2
    return FrameRecord(color=rng.integers(0, 255, (H, W, 3), dtype=np.uint8), c2w=c2w,
                       depth_m=np.full((H, W), 1.5, np.float32), mask_instance=inst, mask_semantic=sem,
                       mask_scores={7: {"class": 2, "score": 0.9}}, gt_semantic=sem, gt_instance=inst)


@pytest.fixture
def scene_dir(tmp_path: Path) -> Path:
    return write_scene(tmp_path / "scene", K=K, frames=[_frame(n) for n in range(3)], classes=CLASSES,
                       meta={"name": "tiny"})


def _expect(root: Path, *fragments: str) -> SceneError:
    with pytest.raises(SceneError) as info:
        load_scene(root)
    text = str(info.value)
    for frag in fragments:
        assert frag in text, f"expected {frag!r} in:\n{text}"
    return info.value


def test_written_scene_round_trips(scene_dir: Path):
    scene = load_scene(scene_dir)
    assert scene.frame_ids == ["000000", "000001", "000002"]
    assert (scene.width, scene.height) == (W, H)
    np.testing.assert_allclose(scene.K, K)
    np.testing.assert_allclose(scene.c2w[2, :3, 3], [0.2, 0, 0])
    np.testing.assert_allclose(scene.load_depth_m(1), 1.5)
    inst, sem, scores = scene.load_masks(0)
    assert inst.dtype == np.uint16 and inst[3, 4] == 7 and sem[3, 4] == 2 and scores == {7: {"class": 2, "score": 0.9}}
    assert [c.name for c in scene.classes] == ["wall", "chair"] and scene.thing_ids() == [2]
    assert scene.meta["name"] == "tiny" and scene.has_masks and scene.has_gt_images


def test_writer_refuses_existing_and_is_atomic(scene_dir: Path):
    with pytest.raises(FileExistsError):
        write_scene(scene_dir, K=K, frames=[_frame(0)], classes=CLASSES)
    before = sorted(p.name for p in (scene_dir / "color").iterdir())

    def broken_frames():
        yield _frame(0)
        raise RuntimeError("producer crashed")

    with pytest.raises(RuntimeError):
        write_scene(scene_dir, K=K, frames=broken_frames(), classes=CLASSES, overwrite=True)
    assert sorted(p.name for p in (scene_dir / "color").iterdir()) == before  # old scene intact
    assert not [p for p in scene_dir.parent.iterdir() if p.name.endswith(".tmp")]  # no leftovers


def test_missing_and_extra_frames(scene_dir: Path):
    (scene_dir / "depth" / "000001.png").unlink()
    Image.fromarray(np.zeros((H, W), np.uint16)).save(scene_dir / "masks" / "instance" / "000009.png")
    _expect(scene_dir, "depth: missing frame(s) 000001", "color: missing frame(s) 000009")


def test_size_mismatch(scene_dir: Path):
    Image.fromarray(np.full((H + 2, W, 1), 1000, np.uint16)[..., 0]).save(scene_dir / "depth" / "000002.png")
    _expect(scene_dir, "000002.png: depth size 16x14 differs from colour 000002.png size 16x12")


def test_non_finite_and_non_rigid_pose(scene_dir: Path):
    (scene_dir / "pose" / "000000.txt").write_text("inf 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n")
    (scene_dir / "pose" / "000001.txt").write_text("2 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n")
    err = _expect(scene_dir, "pose/000000.txt: pose has non-finite values", "pose/000001.txt: pose is not a rigid")
    assert len(err.problems) == 2
    with pytest.warns(UserWarning, match="skipping frame 000000"):
        scene = load_scene(scene_dir, skip_bad_frames=True)
    assert scene.frame_ids == ["000002"] and scene.skipped == ["000000", "000001"]


def test_unreadable_image(scene_dir: Path):
    (scene_dir / "color" / "000001.png").write_bytes(b"not a png at all")
    _expect(scene_dir, "color/000001.png: unreadable image")


def test_depth_all_zero(scene_dir: Path):
    Image.fromarray(np.zeros((H, W), np.uint16)).save(scene_dir / "depth" / "000000.png")
    _expect(scene_dir, "depth/000000.png: depth is all zero")


def test_class_id_not_in_classes(scene_dir: Path):
    sem = np.ones((H, W), np.uint16)
    sem[0, 0] = 9
    Image.fromarray(sem).save(scene_dir / "masks" / "semantic" / "000001.png")
    scores = {"7": {"class": 5, "score": 0.5}}
    (scene_dir / "masks" / "scores" / "000002.json").write_text(json.dumps(scores))
    _expect(scene_dir, "masks/semantic/000001.png: class id(s) [9] not in classes.json",
            "scores/000002.json: instance 7 has class id 5, which is not in classes.json")


def test_lossy_label_image(scene_dir: Path):
    (scene_dir / "masks" / "instance" / "000000.png").unlink()
    Image.fromarray(np.zeros((H, W), np.uint8)).save(scene_dir / "masks" / "instance" / "000000.jpg", quality=90)
    Image.fromarray(np.ones((H, W), np.uint8)).save(scene_dir / "gt" / "semantic" / "000001.png")
    _expect(scene_dir, "masks/instance/000000.jpg: label image is JPEG, a lossy",
            "gt/semantic/000001.png: label image has mode L; label images must be 16-bit")


def test_instance_on_stuff_and_missing_score(scene_dir: Path):
    inst = np.zeros((H, W), np.uint16)
    inst[8:10, 8:10] = 3  # on wall (stuff) pixels, and id 3 has no score entry
    Image.fromarray(inst).save(scene_dir / "masks" / "instance" / "000001.png")
    _expect(scene_dir, "instance/000001.png: 4 pixels carry an instance id but semantic class(es) [1]",
            "scores/000001.json: instance id(s) [3] present in 000001.png have no score entry")


def test_bad_intrinsics_and_classes(scene_dir: Path):
    (scene_dir / "intrinsics.txt").write_text("1 2 3\n4 5 6\n")
    (scene_dir / "classes.json").write_text(json.dumps([{"id": 0, "name": "x", "thing": True}]))
    _expect(scene_dir, "intrinsics.txt: expected 3x3 = 9 numbers, found 6", "classes.json: entry 0 has id 0")


def test_principal_point_outside_image(scene_dir: Path):
    (scene_dir / "intrinsics.txt").write_text("20 0 70\n0 20 5.5\n0 0 1\n")
    _expect(scene_dir, "principal point (70, 5.5) lies outside the 16x12 colour images")


def test_replace_masks_keeps_old_on_invalid(scene_dir: Path):
    good = load_scene(scene_dir).load_masks(0)
    bad_sem = np.full((H, W), 42, np.uint16)  # class 42 is unknown
    with pytest.raises(SceneError):
        replace_masks(scene_dir, [(f"{n:06d}", good[0], bad_sem, good[2]) for n in range(3)])
    inst, sem, _ = load_scene(scene_dir).load_masks(0)
    np.testing.assert_array_equal(sem, good[1])  # old masks restored
    new_inst = np.zeros((H, W), np.uint16)
    replace_masks(scene_dir, [(f"{n:06d}", new_inst, np.ones((H, W), np.uint16), {}) for n in range(3)])
    inst, _, scores = load_scene(scene_dir).load_masks(2)
    assert inst.max() == 0 and scores == {}
    assert not [p for p in os.listdir(scene_dir) if p.startswith(".masks")]


def _many_frames(tmp_path: Path, n: int = 12) -> Path:
    return write_scene(tmp_path / "many", K=K, frames=[_frame(k) for k in range(n)], classes=CLASSES)


def test_one_message_per_root_cause(tmp_path):
    """A missing masks/scores/ is one problem, not one per frame; a broken classes.json does not make every
    label image of every frame a problem too; a problem repeated over frames is shown once with a count."""
    root = _many_frames(tmp_path)
    import shutil
    shutil.rmtree(root / "masks" / "scores")
    err = _expect(root, "masks/scores: missing folder")
    assert len(err.problems) == 1
    root = _many_frames(tmp_path / "b")
    (root / "classes.json").write_text("[{")
    err = _expect(root, "classes.json: not valid JSON")
    assert len(err.problems) == 1
    root = _many_frames(tmp_path / "c")
    for p in (root / "masks" / "scores").glob("*.json"):
        p.write_text(json.dumps({"7": {"class": 2, "score": 7.0}}))
    err = _expect(root, "scores are confidences in [0, 1]")
    assert len(err.problems) == 12                                          # every frame is listed ...
    assert str(err).count("scores are confidences") == 1                   # ... and shown once
    assert "... and 11 more frame(s) with the same problem" in str(err)


def test_skip_bad_frames_drops_an_all_zero_depth_frame(tmp_path):
    root = _many_frames(tmp_path, 4)
    Image.fromarray(np.zeros((H, W), np.uint16)).save(root / "depth" / "000002.png")
    _expect(root, "depth/000002.png: depth is all zero")
    with pytest.warns(UserWarning, match="skipping frame 000002: .*depth is all zero"):
        scene = load_scene(root, skip_bad_frames=True)
    assert scene.frame_ids == ["000000", "000001", "000003"] and scene.skipped == ["000002"]


def test_depth_unit_is_checked_and_can_be_declared(tmp_path):
    """1.5 m stored as 1 (metres as integers) is refused naming the fix; 1.5 m stored in 0.2 mm units (7500)
    with scene.json depth_unit_m = 0.0002 loads as 1.5 m."""
    root = _many_frames(tmp_path, 3)
    for p in (root / "depth").glob("*.png"):
        Image.fromarray(np.full((H, W), 2, np.uint16)).save(p)                 # "2" = 2 m written as integers
    err = _expect(root, "median valid depth over 3 frame(s) is 0.002 m", "too close for an indoor scene",
                  "depth_unit_m")
    assert len(err.problems) == 1
    for p in (root / "depth").glob("*.png"):
        Image.fromarray(np.full((H, W), 7500, np.uint16)).save(p)
    assert load_scene(root).load_depth_m(0)[0, 0] == pytest.approx(7.5)         # as millimetres: 7.5 m, plausible
    (root / "scene.json").write_text(json.dumps({"depth_unit_m": 0.0002}))
    scene = load_scene(root)
    np.testing.assert_allclose(scene.load_depth_m(0), 1.5, rtol=1e-6)
    (root / "scene.json").write_text(json.dumps({"depth_unit_m": 1e-6}))    # 7500 units = 7.5 mm: too close
    _expect(root, "0.0075 m", "depth_unit_m")
