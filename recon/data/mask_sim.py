"""Simulated Grounded-SAM front-end: noisy per-frame 2D masks from ground-truth label images.

Given a frame's ground-truth semantic image and scene-consistent instance image,
produce what an open-vocabulary segmenter (GroundingDINO boxes + SAM masks) gives:
per-frame (not cross-frame aligned) instance ids, a semantic image, and a score
per mask, with the segmenter's typical failure modes:

- masks shrink inside object boundaries (per-mask erosion), leaving unlabelled gaps;
- missed detections, confused classes (chair <-> sofa), merged touching objects,
  objects split in two, small false-positive blobs, missed stuff regions;
- overlapping masks are resolved per pixel by the highest score.

Pipeline per frame (every random draw comes from the given `rng`, in a fixed order,
so a frame is a pure function of its inputs and the rng state):

1. stuff regions (one per stuff class present): missed with `p_stuff_miss`, else
   eroded (if `erode_stuff`) and scored from `score_true`;
2. thing instances (GT instance > 0 on a thing class): missed with `p_miss`,
   class confused with `p_confuse` (thing classes with confusable partners only);
3. merges: each 4-neighbour-touching pair of detected instances merges with
   `p_merge` (transitively); the merged mask takes the class of its largest part;
4. splits: each (possibly merged) mask is cut in two with `p_split` along a line
   through its centroid in a random direction;
5. erosion: each resulting mask by its own width (3x3 cross, `width` iterations,
   the image border does not erode); masks below `min_area_px` are dropped;
6. false-positive discs (Poisson count), random thing class, score from `score_wrong`;
7. per-pixel winner by highest score over all candidates (ties: earlier candidate,
   in the order stuff, things, blobs); instance masks whose visible area falls
   below `min_area_px` are dropped and the winner recomputed;
8. output ids: random distinct ids in 1..2n (n = surviving instance masks).

Conventions: thing pixels whose GT instance is 0 become unlabelled (0); pixels with
a GT instance id but a stuff class are treated as stuff (instance ignored).
`min_area_px` is in pixels at the frame's resolution (defaults tuned for 160x120).

Failure modes that persist over frames (all off in "clean", "realistic" and "hard", which
give the same masks as before they existed; the "-video" levels turn them on). A segmenter
run frame by frame on a video makes errors that stick to an object for a while:

- runs of missed detections (`p_miss_start`, `miss_run_frames`);
- runs of class swaps to one confusable partner (`p_swap_start`, `swap_run_frames`);
- over-segmentation: a large mask (>= `overseg_min_frac` of the image) cut into 2-3
  parts of equal area across its longest axis (`p_overseg_start`, `overseg_run_frames`,
  `overseg_parts`);
- bleeding: the mask dilated downwards by a few pixels into the surface it stands on
  (`p_bleed_start`, `bleed_run_frames`, `bleed_px`); the bled pixels take the surface's
  pixels whatever mask covers them.

Each (object, kind) has its own random stream, seeded by the scene seed, the kind and the
object's GT id (`object_states`): a run starts at a frame with probability p_*_start when
the object is not already in a run of that kind, and covers that frame and the next
length - 1 frames, in frame order, whether the object is in view or not. So the state of a
frame does not depend on the other objects nor on how the frames are batched, and the
per-frame draws (steps 1-8) are unchanged. Over-segmentation and bleeding apply to masks
of one object (not to merged masks); a run's swap replaces the per-frame confusion.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

_CROSS = ndimage.generate_binary_structure(2, 1)  # [3, 3] 4-neighbour cross


# run kinds -> their start-probability field; the order fixes each kind's stream tag (1, 2, 3, 4)
_RUN_KINDS = {"miss": "p_miss_start", "swap": "p_swap_start", "overseg": "p_overseg_start",
              "bleed": "p_bleed_start"}
_RANGE_FIELDS = ("miss_run_frames", "swap_run_frames", "overseg_run_frames", "overseg_parts",
                 "bleed_run_frames", "bleed_px")
_STATE_TAG = 0x51C4E7          # entropy word that separates the per-object streams from the per-frame ones


@dataclass(frozen=True)
class MaskNoiseConfig:
    """Failure-mode rates of the simulated segmenter. Defaults = the "realistic" level."""

    # True: output ids are random distinct ids in 1..2n per frame (n = masks in the frame);
    # False: ids 1..n in candidate order (GT-id order, then blobs); still not GT ids.
    shuffle_ids: bool = True
    # Per-mask erosion width in pixels (4-neighbour / city-block distance), drawn
    # uniformly from the integers [erode_px_min, erode_px_max]; 0/0 = no erosion.
    erode_px_min: int = 1
    erode_px_max: int = 3
    # Whether stuff regions are eroded too (same width distribution, one width per region).
    erode_stuff: bool = True
    # Probability that a visible GT thing instance is not detected in a frame.
    p_miss: float = 0.08
    # Probability that a detected thing gets a confusable class instead of its own
    # (only for classes with at least one confusable thing-class partner; partner uniform).
    p_confuse: float = 0.08
    # Probability, per pair of 4-neighbour-touching detected thing instances in a frame,
    # that the two come out as one mask (merges are transitive).
    p_merge: float = 0.05
    # Probability that a (possibly merged) thing mask is split in two along a straight
    # line through its centroid with a uniformly random direction.
    p_split: float = 0.05
    # Poisson mean of the number of false-positive disc blobs per frame.
    fp_blobs_per_frame: float = 0.3
    # Radius range of false-positive discs in pixels, uniform integer in [lo, hi].
    fp_blob_radius_px: tuple[int, int] = (3, 8)
    # Instance masks (things and blobs) with fewer pixels than this after all
    # perturbations (erosion, split, occlusion by higher-scored masks) are dropped.
    min_area_px: int = 30
    # Score range (uniform) of correct detections and of stuff regions.
    score_true: tuple[float, float] = (0.5, 0.95)
    # Score range (uniform) of confused-class masks and false-positive blobs.
    score_wrong: tuple[float, float] = (0.3, 0.6)
    # Probability that a stuff class region is left unlabelled in a frame.
    p_stuff_miss: float = 0.03
    # --- failure modes that persist over runs of frames (0 = off; see the module docstring).
    # Probability per frame that an object not in a miss run starts one; run length in frames [lo, hi].
    p_miss_start: float = 0.0
    miss_run_frames: tuple[int, int] = (3, 8)
    # Probability per frame of starting a run in which the object gets one confusable partner's class.
    p_swap_start: float = 0.0
    swap_run_frames: tuple[int, int] = (4, 12)
    # Probability per frame of starting a run in which the object's mask, where it covers at least
    # `overseg_min_frac` of the image, is cut into `overseg_parts` (drawn per run) equal-area parts.
    p_overseg_start: float = 0.0
    overseg_run_frames: tuple[int, int] = (5, 15)
    overseg_parts: tuple[int, int] = (2, 3)
    overseg_min_frac: float = 0.04
    # Probability per frame of starting a run in which the object's mask bleeds `bleed_px` (drawn per
    # run) pixels downwards into the surface below it (the class / instance most common right under it).
    p_bleed_start: float = 0.0
    bleed_run_frames: tuple[int, int] = (5, 15)
    bleed_px: tuple[int, int] = (2, 5)

    def __post_init__(self) -> None:
        for name in ("fp_blob_radius_px", "score_true", "score_wrong") + _RANGE_FIELDS:
            value = tuple(getattr(self, name))  # YAML gives lists
            if len(value) != 2 or value[0] > value[1]:
                raise ValueError(f"MaskNoiseConfig.{name} must be (lo, hi) with lo <= hi, got {value}")
            object.__setattr__(self, name, value)
        for name, least in zip(_RANGE_FIELDS, (1, 1, 1, 2, 1, 1)):
            if getattr(self, name)[0] < least:
                raise ValueError(f"MaskNoiseConfig.{name} must be (lo, hi) with lo >= {least}, "
                                 f"got {getattr(self, name)}")
        for name in ("p_miss", "p_confuse", "p_merge", "p_split", "p_stuff_miss", "overseg_min_frac") + \
                tuple(_RUN_KINDS.values()):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"MaskNoiseConfig.{name} must be a probability in [0, 1], got {p}")
        if not 0 <= self.erode_px_min <= self.erode_px_max:
            raise ValueError(
                f"MaskNoiseConfig erosion needs 0 <= erode_px_min <= erode_px_max, "
                f"got {self.erode_px_min}, {self.erode_px_max}")
        if self.fp_blobs_per_frame < 0:
            raise ValueError(f"MaskNoiseConfig.fp_blobs_per_frame must be >= 0, got {self.fp_blobs_per_frame}")
        if self.fp_blob_radius_px[0] < 0:
            raise ValueError(f"MaskNoiseConfig.fp_blob_radius_px must be >= 0, got {self.fp_blob_radius_px}")
        if self.min_area_px < 0:
            raise ValueError(f"MaskNoiseConfig.min_area_px must be >= 0, got {self.min_area_px}")


NOISE_LEVELS: dict[str, MaskNoiseConfig] = {
    # Ground truth up to a per-frame permutation of instance ids.
    "clean": MaskNoiseConfig(
        shuffle_ids=True, erode_px_min=0, erode_px_max=0, erode_stuff=False,
        p_miss=0.0, p_confuse=0.0, p_merge=0.0, p_split=0.0,
        fp_blobs_per_frame=0.0, fp_blob_radius_px=(3, 8), min_area_px=0,
        score_true=(0.5, 0.95), score_wrong=(0.3, 0.6), p_stuff_miss=0.0),
    # What Grounded-SAM typically shows on indoor scenes (at 160x120).
    "realistic": MaskNoiseConfig(),
    # Noticeably worse: more shrinkage, misses, confusions, merges, splits and blobs.
    "hard": MaskNoiseConfig(
        shuffle_ids=True, erode_px_min=2, erode_px_max=4, erode_stuff=True,
        p_miss=0.2, p_confuse=0.2, p_merge=0.15, p_split=0.15,
        fp_blobs_per_frame=1.0, fp_blob_radius_px=(3, 12), min_area_px=30,
        score_true=(0.4, 0.9), score_wrong=(0.3, 0.7), p_stuff_miss=0.1),
}
# The "-video" levels: a segmenter run frame by frame on a video. The share of frames in which an
# object is missed, or gets a confusable class, is about the same as in the base level (within one
# point, see run_fraction), but most of it comes in runs of frames that stick to the object; large
# masks are over-segmented and masks bleed onto their support for runs of frames as well.
NOISE_LEVELS["realistic-video"] = dataclasses.replace(
    NOISE_LEVELS["realistic"], p_miss=0.03, p_miss_start=0.01, miss_run_frames=(3, 8),
    p_confuse=0.02, p_swap_start=0.008, swap_run_frames=(4, 12),
    p_overseg_start=0.02, overseg_run_frames=(5, 15), overseg_parts=(2, 3), overseg_min_frac=0.04,
    p_bleed_start=0.02, bleed_run_frames=(5, 15), bleed_px=(2, 5))
NOISE_LEVELS["hard-video"] = dataclasses.replace(
    NOISE_LEVELS["hard"], p_miss=0.08, p_miss_start=0.02, miss_run_frames=(3, 12),
    p_confuse=0.08, p_swap_start=0.012, swap_run_frames=(5, 20),
    p_overseg_start=0.04, overseg_run_frames=(5, 20), overseg_parts=(2, 3), overseg_min_frac=0.03,
    p_bleed_start=0.04, bleed_run_frames=(5, 20), bleed_px=(3, 7))


def noise_config(level: str, **overrides) -> MaskNoiseConfig:
    """The named noise level (a key of NOISE_LEVELS), with field overrides."""
    if level not in NOISE_LEVELS:
        raise ValueError(f"unknown mask noise level {level!r}; valid levels: {', '.join(NOISE_LEVELS)}")
    valid = {f.name for f in dataclasses.fields(MaskNoiseConfig)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown MaskNoiseConfig field(s) {unknown}; valid fields: {', '.join(sorted(valid))}")
    return dataclasses.replace(NOISE_LEVELS[level], **overrides)


# ----------------------------------------------------------------------------- runs over frames


@dataclass(frozen=True)
class ObjectState:
    """One object's persistent failure modes in one frame: what its active runs say."""

    miss: bool = False  # not detected in this frame
    swap_pick: int = -1  # >= 0: the class becomes confusable partner number swap_pick % (partners)
    overseg_parts: int = 0  # >= 2: a large mask of the object is cut into this many parts
    bleed_px: int = 0  # >= 1: the mask bleeds this many pixels downwards into the surface below


_NO_STATE = ObjectState()


def run_starts(u: np.ndarray, p: float, lengths: np.ndarray) -> np.ndarray:
    """[N] int64: the frame at which the run covering each frame started, -1 where no run does.

    u [N] uniforms in [0, 1), lengths [N] ints >= 1. At a frame f that no run covers, a run
    starts when u[f] < p and covers frames f .. f + lengths[f] - 1 (cut at the last frame)."""
    assert u.shape == lengths.shape and u.ndim == 1, (u.shape, lengths.shape)
    out = np.full(len(u), -1, np.int64)
    f = 0
    while f < len(u):
        if u[f] < p:
            end = min(len(u), f + max(1, int(lengths[f])))
            out[f:end] = f
            f = end
        else:
            f += 1
    return out


def run_fraction(p: float, lo: int, hi: int) -> float:
    """Long-run share of frames inside a run when runs start with probability p at every frame
    outside one and last lo..hi frames (uniform): p m / (p m + 1 - p), m = (lo + hi) / 2."""
    m = (lo + hi) / 2.0
    return 0.0 if p <= 0 else p * m / (p * m + 1.0 - p)


def _uniform_int(u: np.ndarray | float, lo: int, hi: int):
    """Integers uniform in [lo, hi] from uniforms u in [0, 1)."""
    return np.minimum(lo + np.floor(np.asarray(u) * (hi - lo + 1)).astype(np.int64), hi)


def _has_runs(cfg: MaskNoiseConfig) -> bool:
    return any(getattr(cfg, f) > 0 for f in _RUN_KINDS.values())


def object_states(cfg: MaskNoiseConfig, seed: int, gt_ids, n_frames: int) -> list[dict[int, ObjectState]]:
    """Per frame 0 .. n_frames - 1: {GT id: ObjectState} of the ids in `gt_ids` that some run covers.

    Each (kind, id) draws one row of three uniforms per frame (start, run length, the run's
    parameter) from its own stream `default_rng([seed, _STATE_TAG, kind tag, id])`, so frame f
    depends on frames 0..f only: `object_states(..., n)[f] == object_states(..., f + 1)[f]`."""
    out: list[dict[int, dict]] = [{} for _ in range(n_frames)]
    if n_frames <= 0 or not _has_runs(cfg):
        return [{} for _ in range(max(n_frames, 0))]
    runs = {"miss": cfg.miss_run_frames, "swap": cfg.swap_run_frames, "overseg": cfg.overseg_run_frames,
            "bleed": cfg.bleed_run_frames}

    def run_value(kind: str, u_par: float):
        """The ObjectState field of a run of `kind` and its value, from the run's third uniform."""
        if kind == "miss":
            return "miss", True
        if kind == "swap":
            return "swap_pick", int(u_par * (1 << 30))
        if kind == "overseg":
            return "overseg_parts", int(_uniform_int(u_par, *cfg.overseg_parts))
        return "bleed_px", int(_uniform_int(u_par, *cfg.bleed_px))

    for gid in sorted({int(g) for g in gt_ids}):
        for tag, (kind, p_field) in enumerate(_RUN_KINDS.items(), start=1):
            p = getattr(cfg, p_field)
            if p <= 0:
                continue
            d = np.random.default_rng([int(seed), _STATE_TAG, tag, gid]).random((n_frames, 3))  # [N, 3]
            start = run_starts(d[:, 0], p, _uniform_int(d[:, 1], *runs[kind]))  # [N]
            for f in np.flatnonzero(start >= 0):
                name, value = run_value(kind, float(d[start[f], 2]))
                out[f].setdefault(gid, {})[name] = value
    return [{g: ObjectState(**kw) for g, kw in frame.items()} for frame in out]


def frame_object_states(cfg: MaskNoiseConfig, seed: int, gt_instance: np.ndarray,
                        frame_index: int) -> dict[int, ObjectState]:
    """The ObjectStates of frame `frame_index` for the GT ids in its instance image [H, W]: what
    `simulate_scene_masks` uses there (for simulating frames one batch at a time)."""
    if not _has_runs(cfg):
        return {}
    ids = [int(g) for g in np.unique(gt_instance) if g > 0]
    return object_states(cfg, seed, ids, frame_index + 1)[frame_index]


@dataclass
class FrameMasks:
    """One frame of simulated segmenter output (see SCENE_FORMAT.md, masks/)."""

    instance: np.ndarray  # [H, W] uint16, 0 = no instance; ids local to this frame
    semantic: np.ndarray  # [H, W] uint16 class id, 0 = unlabelled
    scores: dict[int, dict]  # {instance_id: {"class": class_id, "score": float}}
    # What was done (GT ids are the input's scene-consistent ids):
    #   missed: [gt id]                      things not detected
    #   confused: {gt id: new class}         class swaps (applied to detected things)
    #   merged: [(gt a, gt b)]               touching pairs merged into one mask
    #   split: [(gt ids of the cut mask)]    masks cut in two (1-tuple unless merged)
    #   fp_blobs: {out id: {"center_yx": (y, x), "radius_px": r}}   surviving blobs
    #   dropped: [{"kind": "thing"|"fp", "sources": (gt ids), "area_px": visible px}]
    #   erosion_px: {out id: width}          erosion width of each output mask
    #   sources: {out id: (gt ids)}          () for false-positive blobs
    #   gt_class: {gt id: class}             GT class of each visible thing instance
    #   stuff_missed: [class]; stuff_erosion_px: {class: width}; stuff_scores: {class: score}
    log: dict = field(default_factory=dict)


@dataclass
class _Candidate:
    """One candidate mask before per-pixel resolution."""

    sl: tuple[slice, slice]  # crop of the frame holding the mask
    mask: np.ndarray  # [h, w] bool, inside the crop
    score: float
    cls: int
    kind: str  # "stuff" | "thing" | "fp"
    sources: tuple[int, ...] = ()  # GT ids
    erosion_px: int = 0
    geom: dict | None = None  # fp blob centre / radius
    bleed: np.ndarray | None = None  # [h, w] bool, inside the crop: bled pixels, taken whatever covers them


def _pad_slice(sl: tuple[slice, slice], shape: tuple[int, int], pad: int = 1) -> tuple[slice, slice]:
    """Grow a 2D crop by `pad` pixels, clipped to the image."""
    return tuple(slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(sl, shape))


def _union_slice(slices: list[tuple[slice, slice]]) -> tuple[slice, slice]:
    return tuple(slice(min(s[d].start for s in slices), max(s[d].stop for s in slices)) for d in range(2))


def _erode(mask: np.ndarray, width_px: int) -> np.ndarray:
    """Erode a [h, w] bool mask by `width_px` 4-neighbour steps; outside the array counts as mask."""
    if width_px <= 0 or not mask.any():
        return mask
    return ndimage.binary_erosion(mask, structure=_CROSS, iterations=width_px, border_value=1)


def _touching_pairs(labels: np.ndarray) -> np.ndarray:
    """[P, 2] int64 pairs (a < b) of compact labels > 0 that are 4-neighbours in `labels` [H, W]."""
    pairs = []
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        touch = (a > 0) & (b > 0) & (a != b)
        pa, pb = a[touch].astype(np.int64), b[touch].astype(np.int64)
        pairs.append(np.stack([np.minimum(pa, pb), np.maximum(pa, pb)], axis=1))
    pairs = np.concatenate(pairs, axis=0)
    if len(pairs) == 0:
        return np.zeros((0, 2), np.int64)
    return np.unique(pairs, axis=0)


def _groups(n: int, pairs: list[tuple[int, int]]) -> list[list[int]]:
    """Connected components (union-find) of items 0..n-1 under `pairs`, ordered by smallest member."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    out: dict[int, list[int]] = {}
    for i in range(n):
        out.setdefault(find(i), []).append(i)
    return [out[r] for r in sorted(out)]


def _compose(cands: list[_Candidate], shape: tuple[int, int]) -> np.ndarray:
    """[H, W] int32 index of the highest-scored candidate covering each pixel, -1 where none.
    Then bled pixels go to their bleeding candidate whatever covers them (the higher score first)."""
    best = np.full(shape, -np.inf)  # [H, W] winning score so far
    winner = np.full(shape, -1, np.int32)  # [H, W]
    for k, c in enumerate(cands):
        b, w = best[c.sl], winner[c.sl]  # views into the crops
        upd = c.mask & (c.score > b)
        b[upd] = c.score
        w[upd] = k
    bleeders = sorted((k for k, c in enumerate(cands) if c.bleed is not None), key=lambda k: (-cands[k].score, k))
    claimed = np.zeros(shape, bool) if bleeders else None  # [H, W]
    for k in bleeders:
        c = cands[k]
        take = c.bleed & ~claimed[c.sl]
        winner[c.sl][take] = k
        claimed[c.sl] |= take
    return winner


def _cut_along_axis(mask: np.ndarray, k: int) -> list[np.ndarray]:
    """Cut a [h, w] bool mask into k parts of equal pixel count (up to one) across its longest axis.

    Pixels are ranked by their coordinate along the principal axis (the eigenvector of the pixel
    coordinates' covariance with the largest eigenvalue, signed so that its largest component is
    positive; ties in raster order) and dealt out in k consecutive blocks. Fewer than k pixels: [mask]."""
    ys, xs = np.nonzero(mask)
    n = len(ys)
    if n < k or k < 2:
        return [mask]
    pts = np.stack([ys, xs], 1).astype(np.float64)  # [n, 2] (row, column)
    pts -= pts.mean(0)
    _, vecs = np.linalg.eigh(pts.T @ pts / n)  # eigenvalues ascending
    axis = vecs[:, -1]
    if axis[np.argmax(np.abs(axis))] < 0:
        axis = -axis
    order = np.argsort(pts @ axis, kind="stable")  # [n]
    block = np.empty(n, np.int64)
    block[order] = np.arange(n) * k // n
    parts = []
    for j in range(k):
        part = np.zeros_like(mask)
        part[ys[block == j], xs[block == j]] = True
        parts.append(part)
    return parts


def _support(obj: np.ndarray, gt_semantic: np.ndarray, gt_instance: np.ndarray, stuff_px: np.ndarray,
             thing_px: np.ndarray) -> np.ndarray | None:
    """[H, W] bool: the surface an object [H, W] bool stands on in the image, the (class, instance)
    most common among the labelled pixels right under its lower boundary (ties: the smaller class,
    then instance); None when no labelled pixel is there."""
    under = np.zeros_like(obj)  # [H, W] pixels just below a lower-boundary pixel of obj
    under[1:] = obj[:-1] & ~obj[1:]
    labelled = under & (stuff_px | thing_px)
    if not labelled.any():
        return None
    code = gt_semantic[labelled].astype(np.int64) * 65536 + np.where(thing_px[labelled], gt_instance[labelled], 0)
    vals, counts = np.unique(code, return_counts=True)
    best = int(vals[np.argmax(counts)])
    cls, inst = best // 65536, best % 65536
    return thing_px & (gt_instance == inst) if inst > 0 else stuff_px & (gt_semantic == cls)


def _bleed(eroded: np.ndarray, part: np.ndarray, sl: tuple[slice, slice], support: np.ndarray,
           px: int) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """Dilate an (eroded) mask [h, w] in crop `sl` downwards by `px` pixels into the part's own
    pixels (refilling its eroded lower edge) and into `support` [H, W]. Returns the new crop, the
    new mask in it and the bled support pixels in it."""
    shape = support.shape
    e_full = np.zeros(shape, bool)  # [H, W]
    e_full[sl] = eroded
    p_full = np.zeros(shape, bool)  # [H, W]
    p_full[sl] = part
    down = e_full.copy()
    for k in range(1, px + 1):
        down[k:] |= e_full[:-k]
    over = down & support & ~p_full
    full = e_full | (down & p_full) | over
    if not full.any():
        return sl, eroded, np.zeros_like(eroded)
    new_sl = _pad_slice(ndimage.find_objects(full.astype(np.int8))[0], shape)
    return new_sl, full[new_sl], over[new_sl]


def simulate_frame_masks(gt_semantic: np.ndarray, gt_instance: np.ndarray, thing_class_ids: set[int],
                         confusable: dict[int, list[int]], cfg: MaskNoiseConfig,
                         rng: np.random.Generator, states: dict[int, ObjectState] | None = None) -> FrameMasks:
    """Noisy Grounded-SAM-like masks for one frame from GT semantic [H, W] and instance [H, W] images.

    `states`: {GT id: ObjectState} of the runs active in this frame (object_states); None = none."""
    assert gt_semantic.ndim == 2 and gt_semantic.shape == gt_instance.shape, (gt_semantic.shape, gt_instance.shape)
    assert np.issubdtype(gt_semantic.dtype, np.integer) and np.issubdtype(gt_instance.dtype, np.integer)
    shape = gt_semantic.shape  # (H, W)
    things = np.array(sorted(int(c) for c in thing_class_ids), np.int64)  # [T]
    is_thing_cls = np.isin(gt_semantic, things)  # [H, W]
    thing_px = is_thing_cls & (gt_instance > 0)  # [H, W]
    stuff_px = (gt_semantic > 0) & ~is_thing_cls  # [H, W]
    full = (slice(0, shape[0]), slice(0, shape[1]))
    lo_w, hi_w = cfg.erode_px_min, cfg.erode_px_max

    def score_of(correct: bool) -> float:
        lo, hi = cfg.score_true if correct else cfg.score_wrong
        return float(rng.uniform(lo, hi))

    log: dict = {"missed": [], "confused": {}, "merged": [], "split": [], "fp_blobs": {}, "dropped": [],
                 "erosion_px": {}, "sources": {}, "gt_class": {},
                 "stuff_missed": [], "stuff_erosion_px": {}, "stuff_scores": {},
                 "missed_run": [], "swapped_run": {}, "overseg": {}, "bleed": {}}
    states = states or {}
    cands: list[_Candidate] = []

    # 1. stuff regions, one per class
    stuff_classes = [int(c) for c in np.unique(gt_semantic[stuff_px])]
    for c in stuff_classes:
        miss = rng.random() < cfg.p_stuff_miss
        width = int(rng.integers(lo_w, hi_w + 1)) if cfg.erode_stuff else 0
        score = score_of(True)
        if miss:
            log["stuff_missed"].append(c)
            continue
        mask = _erode(stuff_px & (gt_semantic == c), width)  # [H, W]
        log["stuff_erosion_px"][c] = width
        log["stuff_scores"][c] = score
        if mask.any():
            cands.append(_Candidate(full, mask, score, c, "stuff", erosion_px=width))

    # 2. thing instances: compact labels 1..n, GT ids, classes, crops
    gt_ids, inv = np.unique(gt_instance[thing_px], return_inverse=True)  # [n], [P]
    n = len(gt_ids)
    labels = np.zeros(shape, np.int32)  # [H, W] compact label, 0 = not a thing
    labels[thing_px] = inv.reshape(-1) + 1
    slices = [_pad_slice(s, shape) for s in ndimage.find_objects(labels, max_label=n)]
    gt_cls = np.zeros(n, np.int64)  # [n] GT class (mode of the semantic under the instance)
    area = np.bincount(labels.ravel(), minlength=n + 1)[1:]  # [n] GT pixels
    for i, sl in enumerate(slices):
        vals, counts = np.unique(gt_semantic[sl][labels[sl] == i + 1], return_counts=True)
        gt_cls[i] = vals[np.argmax(counts)]
        log["gt_class"][int(gt_ids[i])] = int(gt_cls[i])

    u_miss = rng.random(n)  # [n]
    u_conf = rng.random(n)  # [n]
    pick = rng.integers(0, 1 << 30, n)  # [n] partner choice
    run_miss = np.array([states.get(int(g), _NO_STATE).miss for g in gt_ids], bool)  # [n]
    detected = (u_miss >= cfg.p_miss) & ~run_miss  # [n] bool
    cls = gt_cls.copy()  # [n] output class per GT instance
    thing_set = set(things.tolist())
    for i in range(n):
        gid = int(gt_ids[i])
        if not detected[i]:
            log["missed"].append(gid)
            if run_miss[i]:
                log["missed_run"].append(gid)
            continue
        partners = [int(p) for p in confusable.get(int(gt_cls[i]), []) if p in thing_set and p != gt_cls[i]]
        swap = states.get(gid, _NO_STATE).swap_pick
        if partners and swap >= 0:
            cls[i] = partners[swap % len(partners)]
            log["confused"][gid] = int(cls[i])
            log["swapped_run"][gid] = int(cls[i])
        elif partners and u_conf[i] < cfg.p_confuse:
            cls[i] = partners[pick[i] % len(partners)]
            log["confused"][gid] = int(cls[i])

    # 3. merges between touching detected instances
    pairs = _touching_pairs(labels) - 1  # [P, 2] 0-based
    u_merge = rng.random(len(pairs))  # [P]
    merge_pairs = [(int(a), int(b)) for (a, b), u in zip(pairs, u_merge)
                   if detected[a] and detected[b] and u < cfg.p_merge]
    log["merged"] = [(int(gt_ids[a]), int(gt_ids[b])) for a, b in merge_pairs]
    groups = [g for g in _groups(n, merge_pairs) if detected[g[0]]]

    # 4-5. splits, erosion, per-mask min area
    min_area = max(cfg.min_area_px, 1)
    for g in groups:
        main = max(g, key=lambda i: (area[i], -i))  # largest part decides the class
        g_cls = int(cls[main])
        correct = g_cls == int(gt_cls[main])
        sources = tuple(int(gt_ids[i]) for i in g)
        sl = _union_slice([slices[i] for i in g])
        mask = labels[sl] == g[0] + 1 if len(g) == 1 else np.isin(labels[sl], np.array(g) + 1)  # [h, w]
        parts = [mask]
        u_split, angle = rng.random(), rng.uniform(0.0, np.pi)
        state = states.get(sources[0], _NO_STATE) if len(g) == 1 else _NO_STATE  # runs: one-object masks only
        if state.overseg_parts >= 2 and area[g[0]] >= cfg.overseg_min_frac * shape[0] * shape[1]:
            parts = _cut_along_axis(mask, state.overseg_parts)
            if len(parts) > 1:
                log["overseg"][sources[0]] = len(parts)
        elif u_split < cfg.p_split:
            ys, xs = np.nonzero(mask)
            yy, xx = np.ogrid[0:mask.shape[0], 0:mask.shape[1]]
            side = (yy - ys.mean()) * np.sin(angle) + (xx - xs.mean()) * np.cos(angle) >= 0  # [h, w]
            a, b = mask & side, mask & ~side
            if a.any() and b.any():
                parts = [a, b]
                log["split"].append(sources)
        support = None
        if state.bleed_px > 0:
            support = _support(labels == g[0] + 1, gt_semantic, gt_instance, stuff_px, thing_px)
            if support is not None:
                log["bleed"][sources[0]] = state.bleed_px
        for part in parts:
            width = int(rng.integers(lo_w, hi_w + 1))
            score = score_of(correct)
            eroded = _erode(part, width)
            part_sl, bled = sl, None
            if support is not None:
                part_sl, eroded, bled = _bleed(eroded, part, sl, support, state.bleed_px)
            n_px = int(eroded.sum())
            if n_px < min_area:
                log["dropped"].append({"kind": "thing", "sources": sources, "area_px": n_px})
                continue
            cands.append(_Candidate(part_sl, eroded, score, g_cls, "thing", sources, width, bleed=bled))

    # 6. false-positive blobs
    n_fp = int(rng.poisson(cfg.fp_blobs_per_frame)) if len(things) else 0
    for _ in range(n_fp):
        cy, cx = int(rng.integers(0, shape[0])), int(rng.integers(0, shape[1]))
        r = int(rng.integers(cfg.fp_blob_radius_px[0], cfg.fp_blob_radius_px[1] + 1))
        c = int(things[rng.integers(0, len(things))])
        score = score_of(False)
        sl = (slice(max(cy - r, 0), min(cy + r + 1, shape[0])), slice(max(cx - r, 0), min(cx + r + 1, shape[1])))
        yy, xx = np.ogrid[sl[0], sl[1]]
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r  # [h, w]
        n_px = int(disc.sum())
        if n_px < min_area:
            log["dropped"].append({"kind": "fp", "sources": (), "area_px": n_px})
            continue
        cands.append(_Candidate(sl, disc, score, c, "fp", geom={"center_yx": (cy, cx), "radius_px": r}))

    # 7. per-pixel winner by score; drop instance masks left too small, then recompose
    winner = _compose(cands, shape)  # [H, W]
    visible = np.bincount(winner.ravel() + 1, minlength=len(cands) + 1)[1:]  # [K]
    small = [k for k, c in enumerate(cands) if c.kind != "stuff" and visible[k] < min_area]
    if small:
        for k in small:
            log["dropped"].append({"kind": cands[k].kind, "sources": cands[k].sources, "area_px": int(visible[k])})
        cands = [c for k, c in enumerate(cands) if k not in set(small)]
        winner = _compose(cands, shape)

    # 8. output ids and images
    inst_idx = [k for k, c in enumerate(cands) if c.kind != "stuff"]
    m = len(inst_idx)
    assert 2 * m < 65536, m
    if cfg.shuffle_ids:
        out_ids = rng.choice(2 * m, size=m, replace=False) + 1 if m else np.zeros(0, np.int64)
    else:
        out_ids = np.arange(1, m + 1)
    lut_inst = np.zeros(len(cands) + 1, np.uint16)  # [K + 1], entry 0 = no winner
    lut_sem = np.zeros(len(cands) + 1, np.uint16)  # [K + 1]
    for k, c in enumerate(cands):
        lut_sem[k + 1] = c.cls
    scores: dict[int, dict] = {}
    for k, oid in zip(inst_idx, out_ids):
        oid, c = int(oid), cands[k]
        lut_inst[k + 1] = oid
        scores[oid] = {"class": int(c.cls), "score": float(c.score)}
        log["erosion_px"][oid] = c.erosion_px
        log["sources"][oid] = c.sources
        if c.kind == "fp":
            log["fp_blobs"][oid] = c.geom
    instance = lut_inst[winner + 1]  # [H, W] uint16
    semantic = lut_sem[winner + 1]  # [H, W] uint16
    assert instance.shape == shape and semantic.shape == shape
    return FrameMasks(instance=instance, semantic=semantic, scores=scores, log=log)


def simulate_scene_masks(gt_semantics: list[np.ndarray], gt_instances: list[np.ndarray],
                         thing_class_ids: set[int], confusable: dict[int, list[int]],
                         cfg: MaskNoiseConfig, seed: int) -> list[FrameMasks]:
    """Simulated masks for every frame, in frame order; frame i uses its own rng stream spawned from
    `seed`, and the runs of each object (object_states) come from streams of their own."""
    assert len(gt_semantics) == len(gt_instances), (len(gt_semantics), len(gt_instances))
    streams = np.random.SeedSequence(seed).spawn(len(gt_semantics))
    ids: set[int] = set()
    if _has_runs(cfg):
        for ins in gt_instances:
            ids.update(int(g) for g in np.unique(ins) if g > 0)
    states = object_states(cfg, seed, ids, len(gt_semantics))
    return [simulate_frame_masks(sem, ins, thing_class_ids, confusable, cfg, np.random.default_rng(ss), st)
            for sem, ins, ss, st in zip(gt_semantics, gt_instances, streams, states)]
