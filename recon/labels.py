"""Panoptic labels of a trained run: at 3D points (mesh vertices) and in rendered images.

Inference (METHOD.md Fig. 5): with the panoptic head, label = argmax of l_P; a stuff column
gives that stuff class and no instance, token column i gives instance i with class
argmax l_SI(Q_i), so semantic and instance labels agree by construction. With the head
switched off (ablation `panoptic.head=false`, the Panoptic Lifting formulation) the class
is the argmax of the semantic field and thing pixels/points take the argmax token.

Instance ids: tokens are numbered into scene-consistent ids 1..K once, when the mesh is
labelled (tokens that own mesh vertices first, in token order, then the rest), and the map is
stored in RUN/instances.json ("token_ids"); the label images use the same map, so an id means
the same object in the mesh, in instances/ and in every image.

Label images: RUN/labels/semantic/<frame>.png and RUN/labels/instance/<frame>.png (uint16,
0 = unlabelled / no instance) for every frame of the scene, training and held-out.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from recon.config import atomic_write_bytes
from recon.data.run_labels import png16_bytes, write_label_images
from recon.instance import InstanceBranch
from recon.panoptic import panoptic_probs
from recon.sampling import build_frame_bank, rays_for_pixels, sample_along_rays

MIN_ACC = 0.5  # pixels whose rendered opacity is below this are left unlabelled


def labels_from_distributions(branch: InstanceBranch | None, head: bool, sem_probs: torch.Tensor | None,
                              token_probs: torch.Tensor | None = None, pan_probs: torch.Tensor | None = None
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(class id [M] long, token index [M] long, -1 = no instance) from per-point or rendered
    distributions: sem_probs [M, C], token_probs [M, N] (A or rendered token masks), pan_probs
    [M, C_stuff + N] (l_P or its rendering; used with the head)."""
    if branch is None:
        assert sem_probs is not None
        return sem_probs.argmax(-1), torch.full(sem_probs.shape[:1], -1, dtype=torch.long, device=sem_probs.device)
    if head:
        assert pan_probs is not None and pan_probs.shape[-1] == branch.n_stuff + branch.tokens.n
        k = pan_probs.argmax(-1)                                                   # [M]
        tok_cls, _ = branch.token_classes()                                        # [N]
        column_class = torch.cat([branch.stuff_ids, tok_cls])                      # [C_stuff + N]
        token = torch.where(k >= branch.n_stuff, k - branch.n_stuff, torch.full_like(k, -1))
        return column_class[k], token
    assert sem_probs is not None and token_probs is not None
    sem = sem_probs.argmax(-1)
    is_thing = branch.thing_mask[sem]
    token = torch.where(is_thing, token_probs.argmax(-1), torch.full_like(sem, -1))
    return sem, token


@torch.no_grad()
def point_labels(model, branch: InstanceBranch | None, head: bool, x_world: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(class id [M], token [M] (-1 none), confidence [M]) at world points [M, 3]."""
    assert x_world.ndim == 2 and x_world.shape[1] == 3
    sem_probs = torch.softmax(model.semantic_logits(x_world), -1)                  # [M, C]
    if branch is None:
        sem, tok = labels_from_distributions(None, head, sem_probs)
        return sem, tok, sem_probs.max(-1).values
    A = branch.probs(model.instance_keys(x_world), x_world)                        # [M, N]
    pan = panoptic_probs(sem_probs, A, branch.thing_mask) if head else None
    sem, tok = labels_from_distributions(branch, head, sem_probs, A, pan)
    conf = pan.max(-1).values if pan is not None else sem_probs.max(-1).values
    return sem, tok, conf


def token_id_map(n_tokens: int, vertex_tokens: np.ndarray) -> np.ndarray:
    """Scene-consistent instance id of every token [N] (1..N): tokens owning mesh vertices first
    (in token order), then the others."""
    owning = sorted(set(int(t) for t in np.unique(vertex_tokens) if t >= 0))
    rest = [t for t in range(n_tokens) if t not in set(owning)]
    ids = np.zeros(n_tokens, np.int64)
    for k, t in enumerate(owning + rest):
        ids[t] = k + 1
    return ids


def apply_ids(token: np.ndarray, token_ids: np.ndarray) -> np.ndarray:
    """Instance ids [...] from token indices [...] (-1 -> 0)."""
    out = np.zeros(token.shape, np.int64)
    has = token >= 0
    out[has] = token_ids[token[has]]
    return out


@torch.no_grad()
def render_frame_labels(model, branch: InstanceBranch | None, head: bool, bank, row: int, s, far: float
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(semantic [H, W] class ids, token [H, W], -1 = none) rendered for bank row `row`."""
    from recon.trainer import render_rays
    H, W = bank.height, bank.width
    sems, toks = [], []
    for start in range(0, H * W, s.render.chunk_rays):
        pix = torch.arange(start, min(start + s.render.chunk_rays, H * W))
        rays = rays_for_pixels(bank, torch.full_like(pix, row), pix)
        # rays with observed depth: the near-surface band alone (the fields are only queried where the
        # surface is; free space in front of it has ~zero weight after training); others: stratified
        z = sample_along_rays(rays.depth, s.render.near_m, far, 0, s.render.n_surface,
                              s.render.band_m, gen=None)
        out = render_rays(model, rays, z, s, with_grad=False, with_semantic=True, branch=branch,
                          with_panoptic=head and branch is not None)
        sem, tok = labels_from_distributions(branch, head, out["sem_probs"], out.get("token_masks"),
                                             out.get("pan_probs"))
        empty = out["acc"] < MIN_ACC
        sem[empty] = 0
        tok[empty] = -1
        sems.append(sem)
        toks.append(tok)
    return (torch.cat(sems).reshape(H, W).cpu().numpy().astype(np.int64),
            torch.cat(toks).reshape(H, W).cpu().numpy().astype(np.int64))


def read_token_ids(run: Path, n_tokens: int) -> np.ndarray:
    """The token -> instance id map stored with the mesh (identity + 1 when absent)."""
    p = Path(run) / "instances.json"
    if p.is_file():
        ids = json.loads(p.read_text()).get("token_ids")
        if ids is not None and len(ids) == n_tokens:
            return np.asarray(ids, np.int64)
    return np.arange(1, n_tokens + 1, dtype=np.int64)


def run_point_labels(run: Path, points: np.ndarray, device: str | None = "cpu"
                     ) -> tuple[np.ndarray, np.ndarray] | None:
    """(class id [N], instance id [N]) queried from a run's trained fields at world points [N, 3]
    (e.g. the GT mesh's vertices), the way the mesh's vertices are labelled: l_P (or, without the
    panoptic head, the semantic field and the tokens) `mesh.label_offset_m` inside the surface along
    the SDF gradient, instance ids through the run's token -> id map (so fragment merges apply).
    None when the run has no checkpoint to query."""
    from recon.export_mesh import vertex_attributes
    from recon.trainer import load_run_full
    run = Path(run)
    points = np.asarray(points, np.float32)
    assert points.ndim == 2 and points.shape[1] == 3, f"points must be [N, 3], got {points.shape}"
    if not (run / "checkpoints" / "last.pt").is_file():
        return None
    s, model, branch, scene = load_run_full(run, device)
    attrs = vertex_attributes(model, points, s.mesh.label_offset_m, branch=branch, head=bool(s.panoptic.head))
    sem = attrs["semantic"].astype(np.int64) if scene.has_masks else np.zeros(len(points), np.int64)
    if branch is None:
        return sem, np.zeros(len(points), np.int64)
    return sem, apply_ids(attrs["token"].astype(np.int64), read_token_ids(run, branch.tokens.n))


def frame_labels(model, branch: InstanceBranch | None, scene, s, i: int) -> tuple[np.ndarray, np.ndarray]:
    """(semantic [H, W], token [H, W], -1 = none) rendered for scene frame i (its own depth guides the samples)."""
    from recon.trainer import far_plane
    bank = build_frame_bank(scene, [i], with_masks=False)
    return render_frame_labels(model, branch, bool(s.panoptic.head), bank, 0, s, far_plane(bank, s))


def write_run_labels(run: Path, model, branch: InstanceBranch | None, scene, s, frames: list[int] | None = None,
                     log=print, progress: bool = True) -> Path:
    """Render and write RUN/labels/{semantic,instance}/<frame>.png for `frames` (default: every frame),
    instance ids through the mesh's token -> id map (RUN/instances.json)."""
    run = Path(run)
    idx = list(range(len(scene))) if frames is None else list(frames)
    token_ids = read_token_ids(run, branch.tokens.n) if branch is not None else np.zeros(0, np.int64)
    for sub in ("semantic", "instance"):
        (run / "labels" / sub).mkdir(parents=True, exist_ok=True)
    model.eval()
    for i in tqdm(idx, desc="labels", dynamic_ncols=True, disable=not progress, mininterval=1.0):
        sem, tok = frame_labels(model, branch, scene, s, i)
        write_label_images(run, [scene.frame_ids[i]], [sem], [apply_ids(tok, token_ids)])
    log(f"wrote label images of {len(idx)} frames to {run / 'labels'}")
    return run / "labels"


# ----------------------------------------------------------------------------- novel-view depth

@torch.no_grad()
def sdf_surface_depth(model, origins: torch.Tensor, dirs: torch.Tensor, near_m: float, far_m: float,
                      n_coarse: int = 96, n_refine: int = 3, chunk: int = 4096) -> torch.Tensor:
    """Distance [R] along unit rays (origins, dirs [R, 3]) to the first SDF zero crossing from + to -,
    without any observed depth (novel views): n_coarse uniform samples over [near, far], then
    regula-falsi refinement inside the bracketing interval. 0 where the ray crosses no surface."""
    assert origins.shape == dirs.shape and origins.ndim == 2 and origins.shape[1] == 3
    dev = getattr(model, "device", origins.device)                                # SceneModel: where its fields are
    origins, dirs = origins.to(dev), dirs.to(dev)
    z = torch.linspace(near_m, far_m, n_coarse, device=dev)                        # [S]
    out = []
    for a in range(0, origins.shape[0], chunk):
        o, d = origins[a:a + chunk], dirs[a:a + chunk]
        R = o.shape[0]
        pts = o[:, None, :] + d[:, None, :] * z[None, :, None]                     # [R, S, 3]
        sdf = model.sdf(pts.reshape(-1, 3))[0].reshape(R, n_coarse)
        cross = (sdf[:, :-1] > 0) & (sdf[:, 1:] <= 0)                              # [R, S-1]
        hit = cross.any(1)
        j = torch.argmax(cross.to(torch.int8), dim=1)                              # first crossing
        lo, hi = z[j], z[(j + 1).clamp(max=n_coarse - 1)]
        s_lo = sdf.gather(1, j[:, None])[:, 0]
        s_hi = sdf.gather(1, (j + 1).clamp(max=n_coarse - 1)[:, None])[:, 0]
        for _ in range(n_refine):
            t = lo + (hi - lo) * s_lo / (s_lo - s_hi).clamp_min(1e-9)
            s_t = model.sdf(o + d * t[:, None])[0]
            pos = s_t > 0
            lo, s_lo = torch.where(pos, t, lo), torch.where(pos, s_t, s_lo)
            hi, s_hi = torch.where(pos, hi, t), torch.where(pos, s_hi, s_t)
        t = lo + (hi - lo) * s_lo / (s_lo - s_hi).clamp_min(1e-9)
        out.append(torch.where(hit, t, torch.zeros_like(t)))
    return torch.cat(out).cpu() if out else torch.zeros(0)


def depth_pixel_grid(height: int, width: int, stride: int) -> np.ndarray:
    """[H, W] bool: the pixels on which held-out depth is rendered and evaluated (every stride-th, centred)."""
    grid = np.zeros((height, width), bool)
    grid[stride // 2::stride, stride // 2::stride] = True
    return grid


@torch.no_grad()
def write_heldout_depth(run: Path, model, scene, s, log=print, progress: bool = True) -> int:
    """RUN/depth_heldout/<frame>.png: uint16 mm z-depth of the SDF surface seen from every held-out
    pose, found without the frame's observed depth, on a pixel grid of stride
    mesh.heldout_depth_stride (full-size image; pixels off the grid are 0 = not evaluated).
    Returns the number of frames written."""
    from recon.sampling import camera_dirs
    idx = scene.heldout_indices()
    if not idx:
        return 0
    stride = max(1, int(s.mesh.heldout_depth_stride))
    H, W = scene.height, scene.width
    pix = np.nonzero(depth_pixel_grid(H, W, stride).reshape(-1))[0]
    dirs_cam = camera_dirs(scene.K, W, H)[pix]                                      # [P, 3], z = 1
    scale = np.linalg.norm(dirs_cam, axis=1)
    far = s.render.far_m if s.render.far_m > 0 else float(np.linalg.norm(model.box_max_np - model.box_min_np))
    out = Path(run) / "depth_heldout"
    out.mkdir(exist_ok=True)
    for i in tqdm(idx, desc="held-out depth", dynamic_ncols=True, disable=not progress, mininterval=1.0):
        c2w = scene.c2w[i]
        d_world = torch.from_numpy((dirs_cam / scale[:, None]) @ c2w[:3, :3].T).float()
        o = torch.from_numpy(np.broadcast_to(c2w[:3, 3], d_world.shape).copy()).float()
        t = sdf_surface_depth(model, o, d_world, s.render.near_m, far).numpy()     # along-ray m
        img = np.zeros(H * W, np.float64)
        img[pix] = t / scale                                                       # z-depth m
        mm = np.clip(np.round(img * 1000.0), 0, 65535).astype(np.int64).reshape(H, W)
        atomic_write_bytes(out / f"{scene.frame_ids[i]}.png", png16_bytes(mm))
    log(f"wrote SDF depth of {len(idx)} held-out frames to {out} (every {stride}th pixel)")
    return len(idx)
