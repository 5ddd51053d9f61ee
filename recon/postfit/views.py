"""Images of a run from any camera: colour and depth from the Gaussians (the appearance branch), or,
for a run without them, from the fields' volume rendering.

`load_view_renderer(run)` loads a run once; `.render(K, c2w, width, height)` renders one pose. Used by
`run.py render` (recon/postfit/renders.py) and by the rendering block of `run.py eval`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fields.gaussians import render_gaussians, resolve_backend
from recon.model.inference import render_rays, sdf_surface_depth
from recon.model.sampling import RayBatch, camera_dirs, sample_along_rays
from recon.core.config import load_config
from recon.core.device import resolve_device
from recon.core.settings import FitSettings
from recon.data.scene import load_scene
from recon.model.appearance import load_gaussians_ply
from recon.postfit.mesh_raycast import load_mesh_caster
from recon.train.runs import load_run_full, load_run_gaussians


class ViewRenderer:
    """A loaded run that renders colour and depth from arbitrary poses."""

    def __init__(self, run: Path, device: str = "cpu", backend: str | None = None, log=print):
        self.run = Path(run)
        self.device = device
        self._log = log
        self._fields = None
        self._scene = None
        self._raycaster = None                                 # RUN/mesh.ply's ray caster, built at first use
        self.settings = load_config(FitSettings, self.run / "config.yaml")
        if (self.run / "gaussians.ply").is_file():            # written at the end of a fit: no checkpoint needed
            self.gaussians = load_gaussians_ply(self.run / "gaussians.ply", device=resolve_device(device))
        else:
            self.gaussians = load_run_gaussians(self.run, device=device, log=lambda m: None)
        dev = self.gaussians.means.device if self.gaussians is not None else "cpu"
        self.backend = resolve_backend(backend or self.settings.appearance.backend, dev)

    def _load_fields(self):
        if self._fields is None:
            self._fields = load_run_full(self.run, device=self.device, log=self._log)
        return self._fields

    @property
    def model(self):
        """The fields (SceneModel), loaded from the newest checkpoint at first use."""
        return self._load_fields()[1]

    @property
    def branch(self):
        return self._load_fields()[2]

    @property
    def scene(self):
        if self._fields is not None:
            return self._fields[3]
        if self._scene is None:
            self._scene = load_scene(Path((self.run / "scene.txt").read_text().strip()),
                                     skip_bad_frames=self.settings.data.skip_bad_frames, check_images=False)
        return self._scene

    @property
    def has_gaussians(self) -> bool:
        return self.gaussians is not None

    @property
    def source(self) -> str:
        return "gaussians" if self.has_gaussians else "fields"

    @torch.no_grad()
    def render(self, K: np.ndarray, c2w: np.ndarray, width: int, height: int) -> dict[str, np.ndarray]:
        """rgb float32 [H, W, 3] in [0, 1], depth_m float32 [H, W] (z-depth, 0 = nothing), alpha [H, W]."""
        K = np.asarray(K, np.float64)
        c2w = np.asarray(c2w, np.float64)
        assert K.shape == (3, 3) and c2w.shape == (4, 4), (K.shape, c2w.shape)
        if self.gaussians is not None:
            dev = self.gaussians.means.device
            out = render_gaussians(self.gaussians, torch.from_numpy(K).float().to(dev),
                                   torch.from_numpy(c2w).float().to(dev), width, height, backend=self.backend,
                                   tile=self.settings.appearance.tile_px or None)
            return {"rgb": out["rgb"].clamp(0, 1).cpu().numpy().astype(np.float32),
                    "depth_m": out["depth_m"].cpu().numpy().astype(np.float32),
                    "alpha": out["alpha"].cpu().numpy().astype(np.float32)}
        return self._render_fields(K, c2w, width, height)

    def _surface_distance(self, origins: torch.Tensor, dirs: torch.Tensor, far: float) -> torch.Tensor:
        """Distance [R] along each unit ray to the surface (0 = none): ray casting RUN/mesh.ply where the run
        has it (fast), else the SDF's first zero crossing."""
        mesh = self.run / "mesh.ply"
        if self._raycaster is None and mesh.is_file():
            self._raycaster = load_mesh_caster(mesh)
        if self._raycaster is not None:
            t, hit, _, _ = self._raycaster.cast(origins.numpy(), dirs.numpy())          # unit dirs: t in metres
            t = torch.from_numpy(t).float()
            return torch.where(torch.from_numpy(hit) & (t < far), t, torch.zeros_like(t))
        s = self.settings
        return sdf_surface_depth(self.model, origins, dirs, s.render.near_m, far, chunk=s.render.chunk_rays)

    def _render_fields(self, K: np.ndarray, c2w: np.ndarray, width: int, height: int) -> dict[str, np.ndarray]:
        """Colour: volume rendering of the fields' colour head around the surface; depth: the surface itself
        (mesh ray cast or SDF zero crossing), which is what the held-out depth evaluation scores."""
        s, model = self.settings, self.model
        dirs_cam = camera_dirs(K, width, height)                                     # [P, 3], z = 1
        scale = np.linalg.norm(dirs_cam, axis=1)
        dirs = torch.from_numpy((dirs_cam / scale[:, None]) @ c2w[:3, :3].T).float()  # [P, 3] unit, world
        origins = torch.from_numpy(np.broadcast_to(c2w[:3, 3], dirs.shape).copy()).float()
        far = float(np.linalg.norm(model.box_max_np - model.box_min_np))
        depth = self._surface_distance(origins, dirs, far)
        rgb, acc = [], []
        for a in range(0, len(dirs), s.render.chunk_rays):
            b = min(a + s.render.chunk_rays, len(dirs))
            pix = torch.arange(a, b)
            rays = RayBatch(frame=torch.zeros_like(pix), pixel=pix, origins=origins[a:b], dirs=dirs[a:b],
                            depth=depth[a:b], rgb=torch.zeros(b - a, 3), semantic=None, instance=None)
            z = sample_along_rays(rays.depth, s.render.near_m, far, s.render.n_stratified, s.render.n_surface,
                                  s.render.band_m, gen=None)
            out = render_rays(model, rays, z, s, with_grad=False, with_semantic=False)
            rgb.append(out["rgb"].cpu())
            acc.append(out["acc"].cpu())
        z_depth = (depth.numpy() / scale).reshape(height, width)                      # along-ray -> z-depth
        hit = depth.numpy().reshape(height, width) > 0
        return {"rgb": torch.cat(rgb).clamp(0, 1).reshape(height, width, 3).numpy().astype(np.float32),
                "depth_m": np.where(hit, z_depth, 0).astype(np.float32),
                "alpha": torch.cat(acc).reshape(height, width).numpy().astype(np.float32)}


def load_view_renderer(run: Path, device: str = "cpu", backend: str | None = None, log=print) -> ViewRenderer:
    """Load `run` (settings, fields, instance branch, Gaussians where it has them) for rendering views."""
    return ViewRenderer(run, device=device, backend=backend, log=log)
