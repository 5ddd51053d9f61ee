"""`recon.model.inference.render_rays` on hand-computed rays (stub fields, no network).

Guards the glue between the fields and the volume renderer:
  * the SDF rendering weights (sdf_to_alpha with render.xi, transmittance weights) are the ones applied
    to the token masks, the semantic probabilities and the panoptic distribution;
  * l_P (the Bayes panoptic head, Eq. 18) is formed per point BEFORE rendering, not from the rendered
    semantic probabilities and the rendered token masks;
  * with detach_sem_weights=True the semantic / instance fields are queried only at samples whose weight
    exceeds SEM_MIN_WEIGHT, and the result equals the full computation up to those tiny weights.

The stub model's fields are tables indexed by the sample: ray r starts at (0, r, 0) and runs along +x,
its samples sit at x = z = 1, 2, 3, 4, so a point (x, y) is sample j = x - 1 of ray r = y.
"""
from __future__ import annotations

import math

import torch

from recon.core.config import load_config
from recon.core.settings import FitSettings
from recon.model.inference import SEM_MIN_WEIGHT, render_rays
from recon.model.sampling import RayBatch

XI = 10.0  # render.xi used by every test here (1/m)


def _sdf_for_sigmoid(p: float) -> float:
    """The SDF value s with sig(XI s) = p: s = logit(p) / XI."""
    return math.log(p / (1.0 - p)) / XI


# Ray 0: sig(XI s_j) = [3/4, 1/2, 1/4, 1/8]
#   alpha_1 = 1 - (1/2)/(3/4) = 1/3, alpha_2 = 1 - (1/4)/(1/2) = 1/2, alpha_3 = 1 - (1/8)/(1/4) = 1/2, alpha_4 = 0
#   T = [1, 2/3, 2/3 * 1/2 = 1/3, 1/3 * 1/2 = 1/6]
#   w = T * alpha = [1/3, 1/3, 1/6, 0]                    (sum 5/6)
# Ray 1: sig(XI s_j) = [1/2, 0.4998, 0.2499, 0.12495]
#   alpha = [1 - 0.4998/0.5 = 0.0004, 1 - 0.2499/0.4998 = 1/2, 1/2, 0]
#   T = [1, 0.9996, 0.4998, 0.2499]
#   w = [0.0004, 0.4998, 0.2499, 0]                       (w_1 = 4e-4 < SEM_MIN_WEIGHT = 1e-3)
SIGMOIDS = [[0.75, 0.5, 0.25, 0.125], [0.5, 0.4998, 0.2499, 0.12495]]
W_RAY0 = [1 / 3, 1 / 3, 1 / 6, 0.0]
W_RAY1 = [0.0004, 0.4998, 0.2499, 0.0]

# per-sample semantic probabilities over columns [0 unlabelled (stuff), 1 wall (stuff), 2 chair (thing)]
# and token mask probabilities A over N = 2 tokens; the same for both rays (sample j of either ray)
SEM = [[0.1, 0.1, 0.8], [0.1, 0.1, 0.8], [0.2, 0.6, 0.2], [0.2, 0.2, 0.6]]
A = [[0.8, 0.2], [0.1, 0.3], [0.5, 0.5], [0.9, 0.9]]
THING_MASK = torch.tensor([False, False, True])


class StubModel:
    """Exposes what render_rays calls: device, sdf, sdf_and_grad, color, semantic_logits, instance_keys.
    Records the points at which the semantic and instance fields were queried."""

    def __init__(self):
        self.sdf_table = torch.tensor([[_sdf_for_sigmoid(p) for p in row] for row in SIGMOIDS])   # [2, 4]
        self.sem_queries: list[torch.Tensor] = []
        self.key_queries: list[torch.Tensor] = []

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @staticmethod
    def _index(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ray r, sample j) of points x [M, 3]."""
        return x[:, 1].round().long(), x[:, 0].round().long() - 1

    def sdf(self, x):
        r, j = self._index(x)
        return self.sdf_table[r, j], x.clone()                         # geo = the point itself, [M, 3]

    def sdf_and_grad(self, x):
        raise AssertionError("not called without the eikonal term")

    def color(self, geo):
        return geo / 10.0                                              # [M, 3]

    def semantic_logits(self, x):
        self.sem_queries.append(x.clone())
        _, j = self._index(x)
        return torch.log(torch.tensor(SEM))[j]                         # softmax(log p) = p (p sums to 1)

    def instance_keys(self, x):
        self.key_queries.append(x.clone())
        return 2.0 * x                                                 # keys [M, 3]: checked by the branch


class StubBranch:
    """Exposes what render_rays calls on the instance branch: probs(keys, pts), thing_mask and slots (False:
    our tokens, not the Panoptic Lifting slots)."""
    thing_mask = THING_MASK
    slots = False

    def probs(self, keys, pts):
        assert torch.equal(keys, 2.0 * pts), "keys must come from model.instance_keys at the same points"
        j = pts[:, 0].round().long() - 1
        return torch.tensor(A)[j]                                      # [M, 2]


def _rays() -> tuple[RayBatch, torch.Tensor]:
    R = 2
    origins = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    dirs = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    z = torch.tensor([[1.0, 2.0, 3.0, 4.0]] * R)
    rays = RayBatch(frame=torch.zeros(R, dtype=torch.long), pixel=torch.arange(R), origins=origins, dirs=dirs,
                    depth=torch.zeros(R), rgb=torch.zeros(R, 3), semantic=None, instance=None)
    return rays, z


def _settings() -> FitSettings:
    return load_config(FitSettings, None, [f"render.xi={XI}"])


def _render(detach: bool, model=None):
    rays, z = _rays()
    model = model or StubModel()
    return render_rays(model, rays, z, _settings(), with_grad=False, with_semantic=True, branch=StubBranch(),
                       with_panoptic=True, detach_sem_weights=detach)


def _t(x):
    return torch.tensor(x, dtype=torch.float32)


def test_weights_depth_and_opacity_by_hand():
    out = _render(detach=False)
    torch.testing.assert_close(out["weights"], _t([W_RAY0, W_RAY1]), atol=1e-6, rtol=0)
    # depth = sum_j w_j z_j: ray 0: 1/3*1 + 1/3*2 + 1/6*3 = 1.5; ray 1: 0.0004*1 + 0.4998*2 + 0.2499*3 = 1.7497
    torch.testing.assert_close(out["depth"], _t([1.5, 1.7497]), atol=1e-6, rtol=0)
    # acc = sum_j w_j: 5/6 and 0.0004 + 0.4998 + 0.2499 = 0.7501
    torch.testing.assert_close(out["acc"], _t([5 / 6, 0.7501]), atol=1e-6, rtol=0)
    # rgb = sum_j w_j x_j / 10 with x_j = (z_j, r, 0): ray 0 -> (1.5/10, 0, 0); ray 1 -> (0.17497, 0.07501, 0)
    torch.testing.assert_close(out["rgb"], _t([[0.15, 0.0, 0.0], [0.17497, 0.07501, 0.0]]), atol=1e-6, rtol=0)


def test_token_masks_are_weighted_sums_of_A():
    out = _render(detach=False)
    # ray 0: token 0 = 1/3*0.8 + 1/3*0.1 + 1/6*0.5 + 0*0.9 = 0.266667 + 0.033333 + 0.083333 = 0.383333
    #        token 1 = 1/3*0.2 + 1/3*0.3 + 1/6*0.5 + 0*0.9 = 0.066667 + 0.1 + 0.083333 = 0.25
    # ray 1: token 0 = 0.0004*0.8 + 0.4998*0.1 + 0.2499*0.5 = 0.00032 + 0.04998 + 0.12495 = 0.17525
    #        token 1 = 0.0004*0.2 + 0.4998*0.3 + 0.2499*0.5 = 0.00008 + 0.14994 + 0.12495 = 0.27497
    expected = _t([[23 / 60, 0.25], [0.17525, 0.27497]])
    torch.testing.assert_close(out["token_masks"], expected, atol=1e-6, rtol=0)
    # semantic probabilities: the same weights.
    # ray 0: col 0 = 1/3*0.1 + 1/3*0.1 + 1/6*0.2 = 0.1; col 1 = 1/3*0.1 + 1/3*0.1 + 1/6*0.6 = 1/6;
    #        col 2 = 1/3*0.8 + 1/3*0.8 + 1/6*0.2 = 17/30
    # ray 1: col 0 = 0.0004*0.1 + 0.4998*0.1 + 0.2499*0.2 = 0.00004 + 0.04998 + 0.04998 = 0.1
    #        col 1 = 0.0004*0.1 + 0.4998*0.1 + 0.2499*0.6 = 0.00004 + 0.04998 + 0.14994 = 0.19996
    #        col 2 = 0.0004*0.8 + 0.4998*0.8 + 0.2499*0.2 = 0.00032 + 0.39984 + 0.04998 = 0.45014
    torch.testing.assert_close(out["sem_probs"], _t([[0.1, 1 / 6, 17 / 30], [0.1, 0.19996, 0.45014]]),
                               atol=1e-6, rtol=0)


def test_panoptic_distribution_is_formed_per_point_before_rendering():
    out = _render(detach=False)
    # per point (Eq. 18): l_P = [p_0, p_1, p_2 * A_i / (A_0 + A_1)]   (the head's eps = 1e-6 moves these by < 2e-6)
    #   sample 1: [0.1, 0.1, 0.8 * 0.8/1.0 = 0.64, 0.8 * 0.2/1.0 = 0.16]
    #   sample 2: [0.1, 0.1, 0.8 * 0.1/0.4 = 0.2,  0.8 * 0.3/0.4 = 0.6]
    #   sample 3: [0.2, 0.6, 0.2 * 0.5/1.0 = 0.1,  0.2 * 0.5/1.0 = 0.1]
    #   sample 4: [0.2, 0.2, 0.6 * 0.5 = 0.3,      0.3]                      (weight 0 on both rays)
    # ray 0 (w = 1/3, 1/3, 1/6, 0):
    #   token 0 = 1/3*0.64 + 1/3*0.2 + 1/6*0.1 = 0.28 + 0.016667 = 0.296667
    #   token 1 = 1/3*0.16 + 1/3*0.6 + 1/6*0.1 = 0.253333 + 0.016667 = 0.27
    #   stuff columns = the rendered semantic columns 0 and 1: 0.1, 1/6    (total 5/6 = acc)
    # ray 1 (w = 0.0004, 0.4998, 0.2499, 0):
    #   token 0 = 0.0004*0.64 + 0.4998*0.2 + 0.2499*0.1 = 0.000256 + 0.09996 + 0.02499 = 0.125206
    #   token 1 = 0.0004*0.16 + 0.4998*0.6 + 0.2499*0.1 = 0.000064 + 0.29988 + 0.02499 = 0.324934
    per_point = _t([[0.1, 1 / 6, 0.296667, 0.27], [0.1, 0.19996, 0.125206, 0.324934]])
    torch.testing.assert_close(out["pan_probs"], per_point, atol=3e-6, rtol=0)
    # the other order (head on the RENDERED semantics and token masks) gives, for ray 0,
    #   thing mass 17/30 split by the rendered masks 23/60 : 1/4 (sum 19/30):
    #   token 0 = 17/30 * (23/60) / (19/30) = 391/1140 = 0.342982, token 1 = 17/30 * (15/60) / (19/30) = 0.223684
    # which is what pan_probs must NOT be
    rendered_first = _t([0.1, 1 / 6, 391 / 1140, 255 / 1140])
    assert (out["pan_probs"][0] - rendered_first).abs().max() > 0.04
    # the rendered panoptic distribution keeps the ray's mass: sum = acc
    torch.testing.assert_close(out["pan_probs"].sum(1), out["acc"], atol=2e-6, rtol=0)


def test_samples_below_min_weight_are_skipped_when_weights_are_detached():
    assert SEM_MIN_WEIGHT == 1e-3          # the hand case puts ray 1's first sample (w = 4e-4) just below it
    full_model, skip_model = StubModel(), StubModel()
    full = _render(detach=False, model=full_model)
    skip = _render(detach=True, model=skip_model)
    # queried points: all 8 samples without skipping; with it only the samples with w > 1e-3:
    # ray 0 samples 1-3 (x = 1, 2, 3; y = 0) and ray 1 samples 2-3 (x = 2, 3; y = 1)
    assert full_model.sem_queries[0].shape == (8, 3) and full_model.key_queries[0].shape == (8, 3)
    kept = _t([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [3.0, 0.0, 0.0], [2.0, 1.0, 0.0], [3.0, 1.0, 0.0]])
    assert len(skip_model.sem_queries) == 1 and len(skip_model.key_queries) == 1
    torch.testing.assert_close(skip_model.sem_queries[0], kept, atol=0, rtol=0)
    torch.testing.assert_close(skip_model.key_queries[0], kept, atol=0, rtol=0)
    # ray 0: nothing skipped except a zero weight: identical results
    for k in ("sem_probs", "token_masks", "pan_probs"):
        torch.testing.assert_close(skip[k][0], full[k][0], atol=1e-7, rtol=0)
    # ray 1: the skipped sample's share is missing: w_1 * f_1 with w_1 = 0.0004
    #   sem:    full [0.1, 0.19996, 0.45014] - 0.0004*[0.1, 0.1, 0.8] = [0.09996, 0.19992, 0.44982]
    #   tokens: full [0.17525, 0.27497] - 0.0004*[0.8, 0.2] = [0.17493, 0.27489]
    #   pan:    full [0.1, 0.19996, 0.125206, 0.324934] - 0.0004*[0.1, 0.1, 0.64, 0.16]
    #           = [0.09996, 0.19992, 0.12495, 0.32487]
    torch.testing.assert_close(skip["sem_probs"][1], _t([0.09996, 0.19992, 0.44982]), atol=1e-6, rtol=0)
    torch.testing.assert_close(skip["token_masks"][1], _t([0.17493, 0.27489]), atol=1e-6, rtol=0)
    torch.testing.assert_close(skip["pan_probs"][1], _t([0.09996, 0.19992, 0.12495, 0.32487]), atol=3e-6, rtol=0)
    # the geometry outputs do not depend on the switch
    for k in ("weights", "depth", "acc", "rgb", "sdf"):
        torch.testing.assert_close(skip[k], full[k], atol=0, rtol=0)


def test_xi_sets_the_sharpness():
    # the same SDF values with xi = 5 instead of 10: sig(5 s) with 5 s = logit(p) / 2; ray 0 sample 1:
    # logit(3/4) = ln 3 -> sig(ln(3)/2) = 1/(1 + 3^-0.5) = 0.633975; sample 2: sig(0) = 1/2
    # alpha_1 = 1 - 0.5/0.633975 = 0.211325 = w_1 (and not 1/3)
    rays, z = _rays()
    s = load_config(FitSettings, None, ["render.xi=5.0"])
    out = render_rays(StubModel(), rays, z, s, with_grad=False, with_semantic=False)
    assert abs(float(out["weights"][0, 0]) - 0.211325) < 1e-6
    assert "sem_probs" not in out and "token_masks" not in out and "pan_probs" not in out
