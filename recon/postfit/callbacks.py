"""The post-fit steps as training-loop callbacks (recon/train/callbacks.py): each runs in
`on_fit_end`, once the fit has reached train.iters, on the trained model. app/pipeline.py composes
them in this order: the labelled mesh (its token -> id map is what the label images use), held-out
depth, label images."""
from __future__ import annotations

import time

from recon.postfit.heldout_depth import write_heldout_depth
from recon.postfit.label_images import write_run_labels
from recon.postfit.labelled_mesh import label_run_mesh
from recon.train.callbacks import Callback, FitContext


class LabelledMesh(Callback):
    """RUN/mesh.ply, mesh_semantic.ply, mesh_panoptic.ply, legend.json, instances/ and instances.json;
    adds mesh_seconds to timing.json."""

    def on_fit_end(self, ctx: FitContext) -> None:
        t0 = time.perf_counter()
        m = ctx.settings.mesh
        path = label_run_mesh(ctx.run, ctx.model, ctx.scene, ctx.bank, ctx.settings, ctx.log, branch=ctx.branch,
                              progress=ctx.progress, colour_source=m.colour_source,
                              colour_depth_tol_m=m.colour_depth_tol_m, gaussians=ctx.gaussians)
        ctx.timing["mesh_seconds"] = round(time.perf_counter() - t0, 2)
        ctx.log.info(f"wrote {path} (meshing {ctx.timing['mesh_seconds']:.1f} s)")


class GaussiansPly(Callback):
    """RUN/gaussians.ply: the appearance branch's Gaussians in the 3DGS layout (renders and splat viewers
    need no checkpoint). Nothing without the branch."""

    def on_fit_end(self, ctx: FitContext) -> None:
        if ctx.gaussians is not None:
            from recon.model.appearance import save_gaussians_ply
            save_gaussians_ply(ctx.gaussians, ctx.run / "gaussians.ply")
            ctx.log.info(f"wrote {ctx.run / 'gaussians.ply'} ({ctx.gaussians.n} Gaussians)")


class HeldoutDepth(Callback):
    """RUN/depth_heldout/: the SDF's depth seen from every held-out pose (none without held-out frames)."""

    def on_fit_end(self, ctx: FitContext) -> None:
        write_heldout_depth(ctx.run, ctx.model, ctx.scene, ctx.settings, log=ctx.log.info, progress=ctx.progress)


class LabelImages(Callback):
    """RUN/labels/semantic|instance/ of every frame (scenes with masks only; needs the labelled mesh's
    instances.json for the ids, so it runs after LabelledMesh)."""

    def on_fit_end(self, ctx: FitContext) -> None:
        if not ctx.scene.has_masks:
            return
        t0 = time.perf_counter()
        write_run_labels(ctx.run, ctx.model, ctx.branch, ctx.scene, ctx.settings, log=ctx.log.info,
                         progress=ctx.progress)
        ctx.log.info(f"label images of all {len(ctx.scene)} frames in {time.perf_counter() - t0:.1f} s")


def default_postfit() -> list[Callback]:
    """The post-fit steps every `run.py fit` runs, in order."""
    return [GaussiansPly(), LabelledMesh(), HeldoutDepth(), LabelImages()]
