"""Inference of a scene model: volume-render rays, and read panoptic labels at points and pixels.

The one forward pass (`render_rays`) that training, label images and renders share; the label rule
(docs/method.md, inference): with the panoptic head, label = argmax of l_P; a stuff column gives that
stuff class and no instance, token column i gives token i with class argmax l_SI(Q_i), so semantic
and instance labels agree by construction. With the head off (`panoptic.head=false`, as in the bench's
`ours_ablated`) the class is the argmax of the semantic field and thing points take the
argmax token. The Panoptic Lifting baseline (`tokens.formulation=slots`) has no panoptic head whatever
`panoptic.head` says: class = argmax of the semantic field, a thing point's instance = its argmax slot.
Token (slot) indices are returned here (-1 = none); the scene-consistent instance ids are assigned when
the mesh is labelled (recon/postfit/labelled_mesh.py).

Also: colour / depth / semantic images of a frame, and the SDF's first surface along rays
(novel-view depth without observed depth).
"""
from __future__ import annotations

import numpy as np
import torch

from fields.stages import stage
from recon.core.settings import FitSettings
from recon.model.instance_branch import InstanceBranch
from recon.model.panoptic_head import panoptic_probs
from recon.model.sampling import FrameBank, RayBatch, build_frame_bank, rays_for_pixels, sample_along_rays
from recon.model.scene_model import SceneModel
from recon.model.volume_rendering import accumulated_opacity, render, render_depth, sdf_to_alpha, transmittance_weights


SEM_MIN_WEIGHT = 1e-3  # samples with a smaller rendering weight are skipped by the semantic branch


def render_rays(model: SceneModel, rays: RayBatch, z: torch.Tensor, s: FitSettings, *, with_grad: bool,
                with_semantic: bool, eik_fraction: float = 0.0, gen: torch.Generator | None = None,
                detach_sem_weights: bool = True, branch: InstanceBranch | None = None,
                with_panoptic: bool = False, with_rgb: bool = True) -> dict[str, torch.Tensor]:
    """Query the fields at the samples `z` [R, S] of `rays` and volume-render them.
    with_rgb False: the colour head is not evaluated (rgb is zero; the Gaussians give colour).

    Returns depth [R], rgb [R, 3], acc [R], sdf [R, S], weights [R, S], optionally sem_probs
    [R, C], the rendered token masks token_masks [R, N] (with `branch`), the rendered panoptic
    distribution pan_probs [R, C_stuff + N] (with_panoptic, Eq. 18 per point then Eq. 10) and the
    SDF gradient [M, 3] at a random `eik_fraction` of the samples (for the eikonal term).
    """
    R, S = z.shape
    dev = model.device
    rays, z = rays.to(dev), z.to(dev)                                               # no-op when already there
    pts = rays.origins[:, None, :] + rays.dirs[:, None, :] * z[..., None]          # [R, S, 3]
    flat = pts.reshape(-1, 3)
    out: dict[str, torch.Tensor] = {}
    if with_grad and eik_fraction > 0:
        n_eik = max(1, int(round(eik_fraction * R * S)))
        pick = torch.randperm(R * S, generator=gen)[:n_eik].to(dev)                # CPU generator: same stream on any device
        with stage("eikonal gradient"):
            _, grad = model.sdf_and_grad(flat[pick])
        out["grad"] = grad                                                          # [M, 3]
    sdf, geo = model.sdf(flat)
    sdf = sdf.reshape(R, S)
    with stage("rendering"):
        alpha = sdf_to_alpha(sdf, s.render.xi)                                      # [R, S]
        w = transmittance_weights(alpha)                                            # [R, S]
        out["sdf"] = sdf
        out["weights"] = w
        out["depth"] = render_depth(w, z)
        out["acc"] = accumulated_opacity(w)
        out["rgb"] = render(w, model.color(geo).reshape(R, S, 3)) if with_rgb else torch.zeros(R, 3, device=dev)
    with_panoptic = with_panoptic and branch is not None and with_semantic and not branch.slots
    if with_semantic or branch is not None:
        w_lab = w.detach() if detach_sem_weights else w
        if detach_sem_weights:
            # only samples that carry weight contribute to the rendered distributions: query the
            # semantic and instance fields there alone (a few samples per ray instead of all S)
            keep = torch.nonzero((w_lab > SEM_MIN_WEIGHT).reshape(-1)).reshape(-1)  # [M]
        else:
            keep = torch.arange(R * S, device=dev)
        pts_k = flat[keep]                                                          # [M, 3]

        def scatter(vals: torch.Tensor) -> torch.Tensor:                            # [M, K] -> [R, S, K]
            full = vals.new_zeros(R * S, vals.shape[1])
            full[keep] = vals
            return full.reshape(R, S, -1)

        probs_k = torch.softmax(model.semantic_logits(pts_k), -1) if with_semantic else None   # [M, C]
        if with_semantic:
            out["sem_probs"] = render(w_lab, scatter(probs_k))                      # [R, C]
        if branch is not None:
            keys_k = model.instance_keys(pts_k)
            with stage("token branch"):
                A_k = branch.probs(keys_k, pts_k)                                   # [M, N]
            out["token_masks"] = render(w_lab, scatter(A_k))                        # [R, N]
            if with_panoptic:
                lp_k = panoptic_probs(probs_k, A_k, branch.thing_mask)              # [M, C_stuff + N]
                out["pan_probs"] = render(w_lab, scatter(lp_k))                     # [R, C_stuff + N]
    return out


def far_plane(bank: FrameBank, s: FitSettings) -> float:
    return s.render.far_m if s.render.far_m > 0 else float(bank.depth_ray_m.max()) + s.model.box_margin_m


# ----------------------------------------------------------------------------- labels


MIN_ACC = 0.5  # pixels whose rendered opacity is below this are left unlabelled


def labels_from_distributions(branch: InstanceBranch | None, head: bool, sem_probs: torch.Tensor | None,
                              token_probs: torch.Tensor | None = None, pan_probs: torch.Tensor | None = None
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(class id [M] long, token index [M] long, -1 = no instance) from per-point or rendered
    distributions: sem_probs [M, C], token_probs [M, N] (A or rendered token masks), pan_probs
    [M, C_stuff + N] (l_P or its rendering; used with the head; slots have no head)."""
    if branch is None:
        assert sem_probs is not None
        return sem_probs.argmax(-1), torch.full(sem_probs.shape[:1], -1, dtype=torch.long, device=sem_probs.device)
    if head and not branch.slots:
        assert pan_probs is not None and pan_probs.shape[-1] == branch.n_stuff + branch.tokens.n
        k = pan_probs.argmax(-1)                                                   # [M]
        tok_cls, _ = branch.token_classes()                                        # [N]
        column_class = torch.cat([branch.stuff_ids, tok_cls])                      # [C_stuff + N]
        token = torch.where(k >= branch.n_stuff, k - branch.n_stuff, torch.full_like(k, -1))
        cls = column_class[k]
        if branch.keep_untokened_classes and sem_probs is not None:
            # l_P can only name the classes tokens carry: a thing class the semantic field still holds but no
            # token does (tokens of small objects pruned or swayed) would vanish. Keep the field's class there;
            # the instance stays the head's (the token that covers the object, of another class, is still the
            # best instance evidence there is; dropping it measured worse, docs/method.md 12.1).
            carried = torch.zeros_like(branch.thing_mask)                          # [C] bool
            carried[tok_cls] = True
            sem = sem_probs.argmax(-1)                                             # [M]
            lost = branch.thing_mask[sem] & ~carried[sem]
            cls = torch.where(lost, sem, cls)
        return cls, token
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
    pan = panoptic_probs(sem_probs, A, branch.thing_mask) if head and not branch.slots else None
    sem, tok = labels_from_distributions(branch, head, sem_probs, A, pan)
    conf = pan.max(-1).values if pan is not None else sem_probs.max(-1).values
    return sem, tok, conf


def vertex_attributes(model, vertices: np.ndarray, offset_m: float, chunk: int = 32768, branch=None,
                      head: bool = True) -> dict[str, np.ndarray]:
    """Normals, colours and panoptic labels at mesh vertices, queried `offset_m` inside the surface.

    semantic [V] class id; token [V] token index (-1 = none; only with an instance branch);
    confidence [V] the winning probability."""
    normals, rgb, sem, tok, conf = [], [], [], [], []
    for i in range(0, len(vertices), chunk):
        x = torch.from_numpy(vertices[i:i + chunk]).float().to(model.device)
        _, grad = model.sdf_and_grad(x)
        n = torch.nn.functional.normalize(grad.detach(), dim=-1)
        with torch.no_grad():
            xin = x - offset_m * n
            _, geo = model.sdf(xin)
            rgb.append(model.color(geo).clamp(0, 1).cpu().numpy())
            c, t, p = point_labels(model, branch, head, xin)
            sem.append(c.cpu().numpy())
            tok.append(t.cpu().numpy())
            conf.append(p.cpu().numpy())
        normals.append(n.cpu().numpy())
    if not normals:
        return {"normals": np.zeros((0, 3)), "rgb": np.zeros((0, 3)), "semantic": np.zeros((0,), np.int64),
                "token": np.zeros((0,), np.int64), "confidence": np.zeros((0,))}
    return {"normals": np.concatenate(normals), "rgb": np.concatenate(rgb), "semantic": np.concatenate(sem),
            "token": np.concatenate(tok), "confidence": np.concatenate(conf)}


@torch.no_grad()
def render_frame_labels(model, branch: InstanceBranch | None, head: bool, bank, row: int, s, far: float
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(semantic [H, W] class ids, token [H, W], -1 = none) rendered for bank row `row`."""
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


def frame_labels(model, branch: InstanceBranch | None, scene, s, i: int) -> tuple[np.ndarray, np.ndarray]:
    """(semantic [H, W], token [H, W], -1 = none) rendered for scene frame i (its own depth guides the samples)."""
    bank = build_frame_bank(scene, [i], with_masks=False)
    return render_frame_labels(model, branch, bool(s.panoptic.head), bank, 0, s, far_plane(bank, s))


# ----------------------------------------------------------------------------- images and depth


@torch.no_grad()
def render_frame(model, bank: FrameBank, row: int, s, far: float) -> dict[str, np.ndarray]:
    """Render every pixel of bank row `row`: rgb [H, W, 3] uint8, depth_m [H, W] (z-depth), semantic [H, W]."""
    H, W = bank.height, bank.width
    rgb, depth, sem = [], [], []
    for start in range(0, H * W, s.render.chunk_rays):
        pix = torch.arange(start, min(start + s.render.chunk_rays, H * W))
        rays = rays_for_pixels(bank, torch.full_like(pix, row), pix)
        z = sample_along_rays(rays.depth, s.render.near_m, far, s.render.n_stratified, s.render.n_surface,
                              s.render.band_m, gen=None)
        out = render_rays(model, rays, z, s, with_grad=False, with_semantic=True)
        rgb.append(out["rgb"].cpu())
        depth.append(out["depth"].cpu() / bank.ray_scale[pix])           # along-ray -> z-depth
        sem.append(out["sem_probs"].argmax(-1).cpu())
    return {"rgb": (torch.cat(rgb).clamp(0, 1).reshape(H, W, 3).numpy() * 255).round().astype(np.uint8),
            "depth_m": torch.cat(depth).reshape(H, W).numpy(),
            "semantic": torch.cat(sem).reshape(H, W).numpy().astype(np.int64)}


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


# ----------------------------------------------------------------------------- labels at any pose


@torch.no_grad()
def render_pose_labels(model, branch: InstanceBranch | None, head: bool, K: np.ndarray, c2w: np.ndarray, width: int,
                       height: int, s, far_m: float, depth_ray_m: torch.Tensor | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(semantic [H, W] class ids, token [H, W] (-1 = none), depth_ray_m [H, W] distance along the unit ray to the
    surface used, 0 = unlabelled ray) rendered by the fields for a pinhole camera K [3, 3] at c2w [4, 4] (OpenCV axes),
    with no observed depth: the surface is `depth_ray_m` [H*W] where given and finite (e.g. a mesh's hit distance,
    0 = no surface), else the SDF's first zero crossing (sdf_surface_depth over [render.near_m, far_m]) found for
    those rays (all of them when depth_ray_m is None; NaN entries = search this ray). The labels are then
    rendered as in render_frame_labels: render.n_surface samples in the band of +-render.band_m around the
    surface (render.n_stratified of them when n_surface is 0). Rays that find no surface, or whose rendered
    opacity is below MIN_ACC, are unlabelled (class 0, token -1)."""
    from recon.model.sampling import camera_dirs

    K, c2w = np.asarray(K, np.float64), np.asarray(c2w, np.float64)
    assert K.shape == (3, 3) and c2w.shape == (4, 4), (K.shape, c2w.shape)
    H, W = height, width
    d_cam = camera_dirs(K, W, H)                                                  # [P, 3], z = 1
    d_unit = d_cam / np.linalg.norm(d_cam, axis=1, keepdims=True)
    dirs = torch.from_numpy(d_unit @ c2w[:3, :3].T).float()                       # [P, 3] world, unit
    origins = torch.from_numpy(np.broadcast_to(c2w[:3, 3], dirs.shape).copy()).float()
    near = s.render.near_m
    if depth_ray_m is None:
        depth = torch.full((H * W,), float("nan"))
    else:
        depth = torch.as_tensor(depth_ray_m, dtype=torch.float32).reshape(-1).clone()
        assert depth.shape[0] == H * W, depth.shape
    search = torch.nonzero(torch.isnan(depth)).reshape(-1)                        # rays whose surface is unknown
    if len(search):
        depth[search] = sdf_surface_depth(model, origins[search], dirs[search], near, far_m,
                                          chunk=s.render.chunk_rays).to(depth.dtype)
    n_band = s.render.n_surface if s.render.n_surface > 0 else s.render.n_stratified
    sems, toks, labelled = [], [], []
    for a in range(0, H * W, s.render.chunk_rays):
        b = min(a + s.render.chunk_rays, H * W)
        pix = torch.arange(a, b)
        rays = RayBatch(frame=torch.zeros_like(pix), pixel=pix, origins=origins[a:b], dirs=dirs[a:b],
                        depth=depth[a:b], rgb=torch.zeros(b - a, 3), semantic=None, instance=None)
        z = sample_along_rays(rays.depth, near, far_m, 0, n_band, s.render.band_m, gen=None)
        out = render_rays(model, rays, z, s, with_grad=False, with_semantic=True, branch=branch,
                          with_panoptic=head and branch is not None, with_rgb=False)
        sem, tok = labels_from_distributions(branch, head, out["sem_probs"], out.get("token_masks"),
                                             out.get("pan_probs"))
        empty = (out["acc"] < MIN_ACC) | (rays.depth.to(sem.device) <= 0)
        sem[empty] = 0
        tok[empty] = -1
        sems.append(sem.cpu())
        toks.append(tok.cpu())
        labelled.append(~empty.cpu())
    keep = torch.cat(labelled)
    return (torch.cat(sems).reshape(H, W).numpy().astype(np.int64),
            torch.cat(toks).reshape(H, W).numpy().astype(np.int64),
            torch.where(keep, depth.cpu(), torch.zeros_like(depth.cpu())).reshape(H, W).numpy())


def sdf_and_gradient(model, points: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """SDF [M] and its spatial gradient [M, 3] at points [M, 3], both detached; no gradient reaches the
    fields' parameters (autograd.grad is taken with respect to the points only)."""
    assert points.ndim == 2 and points.shape[1] == 3
    sdfs, grads = [], []
    for a in range(0, len(points), chunk):
        x = points[a:a + chunk].detach().to(model.device).requires_grad_(True)
        with torch.enable_grad():
            s = model.sdf(x)[0]
            (gx,) = torch.autograd.grad(s.sum(), x)
        sdfs.append(s.detach())
        grads.append(gx.detach())
    if not sdfs:
        return torch.zeros(0), torch.zeros(0, 3)
    return torch.cat(sdfs), torch.cat(grads)
