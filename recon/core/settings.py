"""Settings schemas: one dataclass tree per command, loaded by recon.core.config.load_config."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from fields.densify import DensifyConfig
from tokens.adjust import AdjustConfig


@dataclass
class SynthSettings:
    """`run.py synth`: procedural scene + simulated Grounded-SAM masks."""
    RANGES = {"seed": ">=0", "size": "[8, 16384]", "frames": ">=2", "holdout_every": ">=0"}   # valid values, checked when the settings are loaded
    preset: Literal["room", "apartment", "clutter", "walk"] = "room"  # the kind of scene (walk: a walk-through of 2-3 rooms, recon/data/synth/walkthrough.py)
    seed: int = 0                        # one seed drives geometry, trajectory and masks
    size: tuple[int, int] = (160, 120)   # image width, height in pixels
    frames: int | None = None            # total frames; None = the preset's default
    noise: Literal["clean", "realistic", "hard", "realistic-video", "hard-video"] = "realistic"  # mask noise level of the simulated Grounded-SAM masks (-video: errors that persist over runs of frames)
    holdout_every: int = 5               # every Nth frame is held out of training (0 = none); eval uses all frames
    masks: dict[str, Any] = field(default_factory=dict)  # overrides of the level's rates, e.g. {p_miss: 0.2}

    def __post_init__(self) -> None:
        if self.holdout_every == 1:                      # the range (RANGES) checks the rest
            raise ValueError("holdout_every must be 0 (none) or >= 2")


@dataclass
class GridSettings:
    """A multiresolution hash grid (instant-NGP), sized to the scene by its finest cell."""
    RANGES = {"n_levels": "[1, 32]", "n_features_per_level": "[1, 8]", "log2_hashmap_size": "[4, 32]",
              "base_resolution": ">=2", "finest_cell_m": ">0"}   # valid values, checked when the settings are loaded
    n_levels: int = 16                   # resolution levels of the grid
    n_features_per_level: int = 2        # features stored per level and table entry
    log2_hashmap_size: int = 19          # entries per level = 2^this (the memory knob)
    base_resolution: int = 16            # cells per axis of the coarsest level
    finest_cell_m: float = 0.02          # finest level's cell size in metres; resolution = box extent / this
    backend: Literal["auto", "torch", "numba", "tcnn"] = "auto"  # auto: tiny-cuda-nn where it imports and CUDA runs, else numba (CPU kernels), else torch


@dataclass
class ModelSettings:
    RANGES = {"sdf_hidden": ">=1", "sdf_layers": ">=1", "geo_feat_dim": ">=1", "semantic_hidden": ">=1",
              "instance_hidden": ">=1", "color_hidden": ">=1", "box_margin_m": ">=0"}   # valid values, checked when the settings are loaded
    sdf_grid: GridSettings = field(default_factory=GridSettings)  # the SDF field's hash grid
    sdf_hidden: int = 64                 # width of the SDF MLP
    sdf_layers: int = 2                  # hidden layers of the SDF MLP
    geo_feat_dim: int = 15               # geometry features the SDF MLP passes to the colour head
    semantic_grid: GridSettings = field(default_factory=lambda: GridSettings(
        n_levels=12, log2_hashmap_size=17, finest_cell_m=0.04))   # the semantic field's hash grid
    semantic_hidden: int = 64            # width of the semantic MLP
    instance_grid: GridSettings = field(default_factory=lambda: GridSettings(
        n_levels=12, log2_hashmap_size=17, finest_cell_m=0.04))   # the instance-key field's hash grid
    instance_hidden: int = 64            # width of the instance-key MLP
    color_hidden: int = 64               # width of the colour head
    box_margin_m: float = 0.2            # scene box = back-projected depth bounds + this margin


@dataclass
class RenderSettings:
    RANGES = {"n_stratified": ">=0", "n_surface": ">=0", "band_m": ">0", "near_m": ">=0", "far_m": ">=0",
              "xi": ">0", "chunk_rays": ">=1", "surface_step_m": ">=0",
              "surface_min_solid_m": ">=0", "surface_observed_m": ">=0", "surface_free_ratio": ">=0"}   # valid values, checked when the settings are loaded
    n_stratified: int = 12               # samples spread over [near, min(far, depth + band)]
    n_surface: int = 20                  # samples in [depth - band, depth + band] (rays with valid depth)
    band_m: float = 0.10                 # half width of the near-surface band, metres
    near_m: float = 0.05                 # rays start this far in front of the camera, metres
    far_m: float = 0.0                   # 0 = the largest observed depth + box margin
    xi: float = 100.0                    # sharpness of sig(s) = 1/(1+exp(-xi s)) in Eq. 11, 1/metres
    chunk_rays: int = 4096               # rays per chunk when rendering whole images
    surface_step_m: float = 0.0          # held-out depth (the SDF surface without observed depth): search step along the ray,
                                         # metres; 0 = 96 samples over [near, far] (recon/postfit/heldout_depth.py)
    surface_min_solid_m: float = 0.0     # ... a + to - crossing counts only if the SDF stays <= 0 this far behind it
                                         # (skips thin negative shells left in free space by noisy depth); 0 = the first crossing
    surface_observed_m: float = 0.0      # ... and only where some training frame observed a surface within this distance of it
                                         # (as the mesh cull; no surface in space no training ray reached); 0 = anywhere
    surface_free_ratio: float = 0.0      # ... and (with surface_observed_m) only where at most this many training views saw free space
                                         # beyond it per view that saw it as surface (a TSDF-like vote); 0 = no vote

    def __post_init__(self) -> None:
        if self.n_stratified + self.n_surface < 1:
            raise ValueError("n_stratified + n_surface must be at least 1 (samples per ray)")


@dataclass
class LossSettings:
    RANGES = {"trunc_m": ">0", "beta": ">=0", "w_sdf": ">=0", "w_free": ">=0", "w_eik": ">=0", "w_depth": ">=0",
              "w_rgb": ">=0", "w_sem": ">=0", "eik_fraction": "[0, 1]", "w_ins": ">=0", "w_cls": ">=0",
              "w_pan": ">=0", "noise_ref_m": ">=0", "noise_power": ">=0",
              "edge_rel_jump": ">=0"}   # valid values, checked when the settings are loaded
    trunc_m: float = 0.08                # tau of Eq. 24
    beta: float = 5.0                    # free-space term exp(-beta s) - 1 of Eq. 24
    w_sdf: float = 10.0                  # truncated region |s - b|
    w_free: float = 1.0                  # free-space region
    w_eik: float = 0.1                   # eikonal term (Eq. 25): |grad s| = 1
    w_depth: float = 0.1                 # rendered vs. observed depth (Eq. 26)
    w_rgb: float = 1.0                   # rendered vs. observed colour (L1)
    w_sem: float = 0.1                   # L_s (Eq. 32): rendered semantics vs. the masks' classes
    eik_fraction: float = 0.25           # share of samples on which the eikonal term is evaluated
    w_ins: float = 1.0                   # L_ins (Eq. 30): dice + BCE of the matched rendered token masks
    w_cls: float = 0.1                   # L_c (Eq. 31): token class head vs. the class of its matched mask
    w_pan: float = 0.5                   # L_pan (Eq. 33): rendered panoptic head vs. panoptic targets
    noise_power: float = 0.0             # real depth: weight the sdf-band and depth terms per ray by min(1, (noise_ref_m / D)^this)
                                         # (sensor noise ~ D^2: 2 gives an L1 weight 1/sigma); 0 = off (configs/real.yaml)
    noise_ref_m: float = 1.0             # ... depth (metres) below which a ray weighs 1
    edge_rel_jump: float = 0.0           # real depth: a pixel whose depth jumps by more than this share of it to a 4-neighbour
                                         # (flying pixels at occlusion edges) keeps only free space up to the nearest
                                         # neighbour depth, no surface term; 0 = off (recon/model/sampling.py depth_edge_rays)


@dataclass
class TrainSettings:
    RANGES = {"iters": ">=1", "rays_per_iter": ">=1", "frames_per_iter": ">=1", "mask_ray_fraction": "[0, 1]",
              "lr_grid": ">0", "lr_mlp": ">0", "lr_final_factor": "(0, 1]", "geometry_only_iters": ">=0",
              "pan_start_iters": ">=0", "dice_off_iters": ">=0", "checkpoint_every": ">=1",
              "keep_checkpoints": ">=0", "monitor_every": ">=0", "log_every": ">=1", "seed": ">=0",
              "threads": ">=0"}   # valid values, checked when the settings are loaded
    iters: int = 2000                    # optimisation steps of the whole fit
    rays_per_iter: int = 1024            # rays per step
    frames_per_iter: int = 4             # rays of a step come from this many frames (the instance assignment needs it)
    mask_ray_fraction: float = 0.0       # after the geometry stage, this share of a frame's rays is drawn with equal mass per thing mask
    mask_ray_stuff: bool = False         # ... and per stuff class region (small stuff such as a ceiling strip gets its share)
    lr_grid: float = 1e-2                # Adam learning rate of the hash tables
    lr_mlp: float = 2e-3                 # Adam learning rate of the MLPs and the token class head
    lr_final_factor: float = 0.1         # exponential decay to lr * this at the last iteration
    geometry_only_iters: int = 200       # stage 1 (Sec. V-D): depth + sdf + eikonal + rgb only
    pan_start_iters: int = 600           # stage 3: L_pan joins from this iteration (needs panoptic.head)
    dice_off_iters: int = 1400           # stage 4: L_ins keeps only its BCE term from here (0 = never)
    detach_semantic_weights: bool = True # semantic loss does not move the geometry
    checkpoint_every: int = 500          # write checkpoints/ckpt_<iteration>.pt every this many steps
    keep_checkpoints: int = 2            # numbered checkpoints kept besides last.pt (oldest deleted); 0 = all
    monitor_every: int = 0               # call fit's monitor hook (metric-vs-time) every N iterations; 0 = never
    log_every: int = 20                  # losses to metrics.csv / TensorBoard every this many steps
    seed: int = 0                        # one seed for initialisation and every random draw
    threads: int = 0                     # torch threads; 0 = all cores
    device: str = "auto"                 # auto (CUDA when available, else CPU) | cpu | cuda | cuda:N

    def __post_init__(self) -> None:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(self.device).strip().lower()):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass
class MeshSettings:
    RANGES = {"voxel_size_m": ">0", "chunk_voxels": ">=1", "cull_margin_m": ">=0", "cull_front_margin_m": ">=0",
              "label_offset_m": ">=0", "heldout_depth_stride": ">=1", "colour_depth_tol_m": ">0"}   # valid values, checked when the settings are loaded
    voxel_size_m: float = 0.02           # marching-cubes voxel edge, metres
    chunk_voxels: int = 64               # voxels per axis meshed at once (bounds memory, not the result)
    cull_margin_m: float = 0.05          # a vertex counts as observed if in some train view it lies at most this far behind the observed depth
    cull_front_margin_m: float | None = 0.05  # ... and at most this far in front of it (an observed surface is near); null:
                                         # anywhere in front (the view's whole free space; meshes before 2026-11-23)
    label_offset_m: float = 0.01         # labels/colours are queried this far inside the surface, along -normal
    heldout_depth_stride: int = 4        # SDF depth of held-out views (novel-view depth eval) on every Nth pixel
    colour_source: Literal["images", "fields"] = "images"  # vertex colours: from the training images where a vertex is
                                         # seen (else the Gaussians / colour head), or from the Gaussians / colour head only
    colour_depth_tol_m: float = 0.05     # a training image sees a vertex when its depth agrees within this


@dataclass
class TokenSettings:
    """The instance branch: Gaussian-modulated query tokens (METHOD.md sections 4, 5, 7)."""
    RANGES = {"n_init": ">=0", "feat_dim": ">=1", "class_dim": ">=1", "init_scale_m": ">=0", "init_frames": ">=1",
              "min_mask_pixels": ">=1", "temperature": ">0", "lr_means": ">=0", "lr_shape": ">=0",
              "lr_features": ">=0", "adjust_points": ">=1", "n_slots": ">=1",
              "segment_consistency": ">=0"}   # valid values, checked when the settings are loaded
    enabled: bool = True                 # off, or a scene without thing masks: no instance branch
    formulation: Literal["tokens", "slots"] = "tokens"  # tokens: ours (Gaussian-modulated sigmoid tokens, dice + BCE);
                                         # slots: the Panoptic Lifting baseline (a softmax over n_slots fixed slots per point,
                                         # Hungarian on -mean probability, cross-entropy; tokens/slots.py). With slots the
                                         # spatial prior, the token adjustment and the panoptic head do not apply
    n_slots: int = 25                    # slots: the number K of instance slots (Panoptic Lifting: 25)
    segment_consistency: float = 0.0     # Panoptic Lifting's segment-consistency loss on the semantic field, weight
                                         # relative to loss.w_sem (Panoptic Lifting: 1.2), from train.pan_start_iters; 0 = off
    n_init: int = 0                      # initial tokens; 0 = auto (enough for every 3D mask cluster, >= 2x the
                                         # largest number of thing masks in one frame), capped at adjust_rules.max_tokens
    feat_dim: int = 16                   # instance feature / key dimension d
    class_dim: int = 16                  # class feature dimension of F_i
    init_scale_m: float = 0.0            # initial isotropic Gaussian scale; 0 = median half-size of the 3D masks
    init_frames: int = 40                # training frames whose masks seed the tokens (evenly spaced)
    min_mask_pixels: int = 4             # sampled pixels a 2D mask needs in a step to enter the assignment
    spatial_prior: bool = True           # ablation switch: off = G = 1 (feature similarity only)
    adjust: bool = True                  # ablation switch: off = a fixed token set
    temperature: float = 1.0             # S = sigmoid(f_q . f_k / temperature) (slots: softmax(f_q . f_k / temperature))
    lr_means: float = 2e-3               # Adam learning rates of the token parameters
    lr_shape: float = 5e-3               # quaternions and log-scales
    lr_features: float = 1e-2            # instance and class features
    adjust_points: int = 4096            # surface points (back-projected depth) for the duplicate rule
    adjust_rules: AdjustConfig = field(default_factory=AdjustConfig)  # thresholds of the adjustment (Sec. 7)


@dataclass
class PanopticSettings:
    RANGES = {"min_instance_vertices": ">=0", "fragment_max_fraction": "[0, 1]",
              "fragment_min_shared_edges": ">=1", "mask_merge_min_frames": ">=1",
              "mask_merge_min_share": "[0, 1]", "relabel_depth_tol_m": ">0",
              "reclass_min_frames": ">=1", "reclass_min_share": "[0, 1]",
              "split_min_mask_share": "[0, 1]", "dissolve_min_votes": ">=1",
              "dissolve_min_share": "[0, 1)"}   # valid values, checked when the settings are loaded
    head: bool = True                    # ablation switch: off = semantic field for classes, argmax token for ids
    keep_untokened_classes: bool = True  # labels with the head: where the semantic field's most likely class is a
                                         # thing class that no token carries (a small object whose tokens were
                                         # pruned or took another class), keep that class (the instance: the head's)
    min_instance_vertices: int = 30      # instances with fewer mesh vertices are left out of instances.json
    merge_fragments: bool = True         # post-process: a small instance merges into the same-class instance it
                                         # touches on the mesh (recon/postfit/fragments.py; ours, not in the paper)
    fragment_max_fraction: float = 0.2   # ... if it has fewer than this share of that instance's vertices
    fragment_min_shared_edges: int = 3   # ... and shares at least this many mesh edges with it
    merge_by_masks: bool = True          # post-process: two same-class instances merge where the training frames'
                                         # masks show them as one object (recon/postfit/mask_merge.py; ours)
    mask_merge_min_frames: int = 3       # ... in at least this many frames where both are in view
    mask_merge_min_share: float = 0.7    # ... and in at least this share of those frames
    split_untokened: bool = True         # post-process: a connected region of a thing class no instance carries, that
                                         # the masks mostly call that class, gets an id of its own (bottles that
                                         # carried their table's id; recon/postfit/mask_relabel.py; ours)
    fill_unmasked: bool = True           # post-process: a mesh vertex whose class no training mask confirms takes
                                         # the class and id of the nearest vertex whose class one does
                                         # (recon/postfit/mask_relabel.py; ours)
    relabel_depth_tol_m: float = 0.03    # ... a vertex is seen in a frame within this of the observed depth
    split_min_mask_share: float = 0.5    # ... share of the masks' votes on a split region that must be its class
    reclass_by_masks: bool = True        # post-process: an instance whose training masks call it another thing
                                         # class takes that class, then merges by mask evidence with its new
                                         # class (recon/postfit/mask_reclass.py; ours)
    reclass_min_frames: int = 3          # ... with at least this many frames' masks of that class
    reclass_min_share: float = 0.7       # ... that are at least this share of its frames with a clear mask
    dissolve_on_stuff: bool = True       # post-process: an instance whose training masks call it wall / floor /
                                         # ceiling (stuff) more than any thing class is no object: its vertices take
                                         # the nearest stuff labels (recon/postfit/panoptic_consistency.py; ours)
    dissolve_min_votes: int = 20         # ... with at least this many stuff mask votes (seen vertices x frames)
    dissolve_min_share: float = 0.5      # ... more than this share of its stuff + top thing-class votes
    consistent_ids: bool = True          # post-process: a thing vertex or label pixel whose id is no instance of
                                         # instances.json, or one of another class, loses the id (class kept)


@dataclass
class AppearanceSettings:
    """The appearance branch (method Sec. 6): 3D Gaussians rasterised, trained with the fields."""
    RANGES = {"init_voxel_m": ">0", "footprint_factor": ">0", "init_opacity": "(0, 1)", "thin_ratio": "(0, 1]",
              "sh_degree": "[0, 3]", "sh_degree_every": ">=1", "patch_px": ">=8", "steps_per_iter": ">=0",
              "lambda_ssim": "[0, 1]", "lambda_depth": ">=0", "w_sdf_tie": ">=0", "lr_means_m": ">=0",
              "lr_means_final_factor": "(0, 1]", "lr_scales": ">=0", "lr_quats": ">=0", "lr_opacity": ">=0",
              "lr_sh": ">=0", "tile_px": ">=0", "max_init_gaussians": ">=0"}   # valid values, checked when the settings are loaded
    branch: Literal["both", "gaussians", "colour_head"] = "both"  # both: the Gaussians give colour, the colour head's L1 still
                                         # shapes the SDF (labels need it: README); gaussians: the colour head off (colour never
                                         # shapes the SDF); colour_head: the NeuS-style colour head alone, no Gaussians (ablation)
    init_voxel_m: float = 0.01           # finest voxel edge of the initial Gaussians (back-projected depth), metres
    footprint_factor: float = 1.5        # voxel edge >= this x the pixel footprint z/fx where the surface is seen finest
    init_opacity: float = 0.7            # initial opacity of every Gaussian
    thin_ratio: float = 0.1              # initial normal sigma / tangential sigma (surface-aligned discs)
    max_init_gaussians: int = 0          # keep at most this many initial Gaussians (random subset); 0 = all
    sh_degree: int = 3                   # spherical-harmonic degree of the colour
    sh_degree_every: int = 250           # the active SH degree rises by one every this many Gaussian steps
    patch_px: int = 96                   # each step renders a random window of at most this many pixels square
    steps_per_iter: int = 1              # Gaussian steps per fit iteration (0 = the branch is not trained)
    lambda_ssim: float = 0.2             # lambda1 of Eq. 34: L_rgb = (1 - l1) L1 + l1 (1 - SSIM) + l2 L_d
    lambda_depth: float = 0.1            # lambda2 of Eq. 34: splatted vs observed depth (L1, metres)
    w_sdf_tie: float = 0.1               # |sdf(mean)| of the Gaussians (SDF detached): ties them to the surface
    lr_means_m: float = 5e-4             # Adam learning rates: means (metres), decayed to lr x lr_means_final_factor
    lr_means_final_factor: float = 0.01  # ... at the last iteration
    lr_scales: float = 1e-2              # log-scales
    lr_quats: float = 1e-3               # quaternions
    lr_opacity: float = 5e-2             # opacity logits
    lr_sh: float = 1e-2                  # SH degree 0; higher degrees use lr / 20 (3DGS's rates x 2-4: ~1000 steps, not 30k)
    tile_px: int = 0                     # rasteriser tile edge in pixels; 0 = the default (4, fields/gaussians.pick_tile)
    backend: Literal["auto", "torch", "numba", "gsplat"] = "auto"  # rasteriser: auto = gsplat on CUDA where it works, else numba (CPU), else torch
    densify: DensifyConfig = field(default_factory=DensifyConfig)  # clone / split / prune (fields/densify.py)


@dataclass
class DataSettings:
    RANGES = {"max_memory_gb": ">=0"}   # valid values, checked when the settings are loaded
    split: str = "train"                 # frames to train on (splits.json); all frames when absent
    skip_bad_frames: bool = False        # drop frames with bad poses (with a warning) instead of refusing the scene
    max_memory_gb: float = 0.0           # refuse settings estimated above this; 0 = 80% of available memory


@dataclass
class FitSettings:
    """`run.py fit`: everything a reconstruction run needs; saved as RUN/config.yaml."""
    data: DataSettings = field(default_factory=DataSettings)              # which frames, memory limit
    model: ModelSettings = field(default_factory=ModelSettings)           # fields: grids and MLPs
    render: RenderSettings = field(default_factory=RenderSettings)        # samples along rays, volume rendering
    loss: LossSettings = field(default_factory=LossSettings)              # loss terms and their weights
    train: TrainSettings = field(default_factory=TrainSettings)           # schedule, optimiser, bookkeeping
    tokens: TokenSettings = field(default_factory=TokenSettings)          # the instance branch
    panoptic: PanopticSettings = field(default_factory=PanopticSettings)  # panoptic head, instances
    mesh: MeshSettings = field(default_factory=MeshSettings)              # meshing, culling, labels
    appearance: AppearanceSettings = field(default_factory=AppearanceSettings)  # 3D Gaussian splatting colour
