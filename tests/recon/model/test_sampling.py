"""Ray sampling: mask-balanced weights (hand case) and the mask share of a step's rays."""
import numpy as np
import pytest
import torch

from recon.model.sampling import FrameBank, mask_balanced_weights, sample_rays, thing_lut

torch.set_num_threads(1)


def test_mask_balanced_weights_hand_case():
    inst = torch.tensor([0, 1, 1, 2, 2, 2, 3, 4])
    sem = torch.tensor([1, 2, 2, 3, 3, 3, 1, 0])                      # classes 2, 3 are things; mask 3 is stuff
    w = mask_balanced_weights(inst, sem, thing_lut([2, 3], 4))
    torch.testing.assert_close(w, torch.tensor([0, 0.5, 0.5, 1 / 3, 1 / 3, 1 / 3, 0, 0]))
    # every thing mask carries the same total mass
    assert float(w[1:3].sum()) == pytest.approx(float(w[3:6].sum()))
    assert float(mask_balanced_weights(torch.zeros(5, dtype=torch.long), torch.ones(5, dtype=torch.long),
                                       thing_lut([2], 3)).sum()) == 0.0


def _bank(n_frames=2, P=400, small=(5, 6)):
    """Frames of P pixels: a large thing mask (id 1) over half the image, a 2-pixel one (id 2)."""
    inst = torch.zeros(n_frames, P, dtype=torch.int16)
    sem = torch.ones(n_frames, P, dtype=torch.int16)                   # class 1 = stuff
    inst[:, P // 2:] = 1
    sem[:, P // 2:] = 2
    inst[:, list(small)] = 2
    sem[:, list(small)] = 2
    return FrameBank(K=np.eye(3), width=P, height=1, frame_index=list(range(n_frames)),
                     c2w=torch.eye(4).repeat(n_frames, 1, 1), dirs_cam_unit=torch.tensor([[0.0, 0.0, 1.0]]).repeat(P, 1),
                     ray_scale=torch.ones(P), depth_ray_m=torch.ones(n_frames, P),
                     rgb=torch.zeros(n_frames, P, 3, dtype=torch.uint8), semantic=sem, instance=inst,
                     thing_class=thing_lut([2], 3))


def test_mask_fraction_gives_small_masks_their_share():
    bank = _bank()
    gen = torch.Generator().manual_seed(0)
    uniform = sample_rays(bank, 400, 2, gen)
    balanced = sample_rays(bank, 400, 2, gen, mask_fraction=0.5)
    assert uniform.pixel.shape == balanced.pixel.shape == (400,)
    n_small = lambda r: int((r.instance == 2).sum())
    # uniform: 2 of 400 pixels -> about 2 rays; balanced: half of 100 mask rays per frame -> about 100
    assert n_small(uniform) < 12
    assert 70 < n_small(balanced) < 130
    # the uniform half still covers the unlabelled stuff part of the image
    assert int((balanced.instance == 0).sum()) > 60
    with pytest.raises(AssertionError, match="mask_fraction"):
        sample_rays(bank, 10, 1, gen, mask_fraction=1.5)


def test_mask_fraction_without_thing_masks_is_uniform():
    bank = _bank()
    bank.instance.zero_()
    a = sample_rays(bank, 64, 2, torch.Generator().manual_seed(3), mask_fraction=0.5)
    b = sample_rays(bank, 64, 2, torch.Generator().manual_seed(3))
    assert torch.equal(a.pixel, b.pixel)


def test_stuff_regions_as_segments():
    inst = torch.tensor([0, 1, 1, 0, 0, 0, 0])
    sem = torch.tensor([0, 2, 2, 1, 1, 1, 3])                          # 2 = thing; 1, 3 = stuff classes
    w = mask_balanced_weights(inst, sem, thing_lut([2], 4), with_stuff=True)
    torch.testing.assert_close(w, torch.tensor([0, 0.5, 0.5, 1 / 3, 1 / 3, 1 / 3, 1.0]))
    assert float(mask_balanced_weights(inst, sem, thing_lut([2], 4))[3:].sum()) == 0.0


def test_mask_ids_use_the_whole_uint16_range(tmp_path):
    """Mask ids 32768-65535 are valid in the format: the frame bank keeps them (once int16, they became
    negative and their masks were ignored), rays carry them, and tokens are seeded from them."""
    from recon.core.settings import TokenSettings
    from recon.data.scene import FrameRecord, load_scene, write_scene
    from recon.model.instance_branch import init_tokens_from_bank
    from recon.model.sampling import build_frame_bank
    W, H = 16, 12
    K = np.array([[20.0, 0, 7.5], [0, 20.0, 5.5], [0, 0, 1]])
    frames = []
    for n in range(2):
        inst = np.zeros((H, W), np.uint16)
        sem = np.ones((H, W), np.uint16)
        inst[1:5, 1:6], inst[6:11, 8:15] = 65534, 40000            # every mask id above 32767
        sem[inst > 0] = 2
        c2w = np.eye(4)
        c2w[:3, 3] = [0.05 * n, 0, 0]
        frames.append(FrameRecord(color=np.zeros((H, W, 3), np.uint8), c2w=c2w, depth_m=np.full((H, W), 1.5),
                                  mask_instance=inst, mask_semantic=sem,
                                  mask_scores={65534: {"class": 2, "score": 0.9}, 40000: {"class": 2, "score": 0.8}}))
    classes = [{"id": 1, "name": "wall", "thing": False}, {"id": 2, "name": "chair", "thing": True}]
    scene = load_scene(write_scene(tmp_path / "s", K=K, frames=frames, classes=classes))
    bank = build_frame_bank(scene, [0, 1], with_masks=True)
    assert sorted(torch.unique(bank.instance).tolist()) == [0, 40000, 65534]
    rays = sample_rays(bank, 256, 2, torch.Generator().manual_seed(0), mask_fraction=0.5)
    assert {40000, 65534} <= set(rays.instance.tolist())
    tokens = init_tokens_from_bank(bank, [2], TokenSettings(n_init=2), torch.Generator().manual_seed(0))
    assert tokens.n == 2
