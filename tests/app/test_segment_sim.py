"""`segment --backend sim` replaces a scene's masks with simulated ones; the scene stays valid."""
import numpy as np
import pytest

from app.commands import UserError, cmd_segment
from recon.data.make_synth import make_synth_scene
from recon.data.scene import load_scene
from recon.core.settings import SynthSettings


class Args:
    def __init__(self, scene, noise="clean", force=True, backend="sim"):
        self.scene, self.noise, self.seed, self.force, self.backend = scene, noise, 3, force, backend
        self.prompts = self.dino_config = self.dino_checkpoint = self.sam_checkpoint = None
        self.sam_type = "vit_h"


def test_segment_sim_rewrites_masks(tmp_path):
    scene_dir = tmp_path / "room"
    make_synth_scene(SynthSettings(size=(40, 30), frames=4, noise="hard"), scene_dir, log=lambda *_: None)
    with pytest.raises(UserError, match="already exists"):
        cmd_segment(Args(scene_dir, force=False))
    cmd_segment(Args(scene_dir, noise="clean"))
    scene = load_scene(scene_dir)
    for i in range(len(scene)):
        inst, sem, scores = scene.load_masks(i)
        gt_sem, gt_inst = scene.load_gt(i)
        np.testing.assert_array_equal(sem, gt_sem)               # clean: semantic exact
        np.testing.assert_array_equal(inst > 0, gt_inst > 0)     # same instance support, ids shuffled
        assert set(np.unique(inst[inst > 0]).tolist()) == set(scores)
    with pytest.raises(UserError, match="needs --prompts"):
        cmd_segment(Args(scene_dir, backend="grounded-sam"))
