"""The fit pipeline: training, then the post-fit steps, composed from the library's pieces.

`fit_scene` is what `run.py fit` and the bench run: recon.train.loop.fit with the post-fit callbacks
of recon/postfit/ (labelled mesh -> held-out depth -> label images), plus any extra callbacks (the
bench's metric monitor). `demo` is the default job: synthetic room -> fit -> eval.
"""
from __future__ import annotations

from pathlib import Path

from app import CONFIGS
from recon.core.config import load_config
from recon.core.settings import FitSettings, SynthSettings
from recon.data.make_synth import make_synth_scene
from recon.postfit.callbacks import default_postfit
from recon.postfit.point_labels import run_point_labels
from recon.train.callbacks import Callback
from recon.train.loop import FitResult, fit
from eval.evaluate import evaluate_run



def fit_scene(scene_dir: Path, run: Path, s: FitSettings, *, resume: bool = False, force: bool = False,
              progress: bool = True, stop_at: int | None = None, extra_callbacks: list[Callback] = ()) -> FitResult:
    """Train on `scene_dir` into `run`, then mesh, label and render it (the post-fit callbacks).
    stop_at: stop after that iteration with a checkpoint (tests; `fit --resume` continues)."""
    return fit(scene_dir, run, s, resume=resume, force=force, progress=progress, stop_at=stop_at,
               callbacks=[*extra_callbacks, *default_postfit()])


def profile_fit(scene_dir: Path, out: Path, s: FitSettings, *, window: int = 10, force: bool = False,
                progress: bool = True, log=print) -> dict:
    """Fit `scene_dir` into OUT/run with the per-stage profiler (recon/train/profile.py) and the post-fit
    callbacks timed; writes OUT/profile.json and OUT/profile.png and returns the profile."""
    import json

    from recon.core.io import atomic_write_text
    from recon.train.profile import FitProfiler, TimedCallback, format_profile, summarise
    out = Path(out)
    prof = FitProfiler(s, window)
    post = [TimedCallback(cb) for cb in default_postfit()]
    res = fit(scene_dir, out / "run", s, force=force, progress=progress, callbacks=[prof, *post])
    p = summarise(prof, post, res.fit_seconds)
    p["scene"], p["run"] = str(Path(scene_dir).resolve()), str((out / "run").resolve())
    atomic_write_text(out / "profile.json", json.dumps(p, indent=1) + "\n")
    _profile_plot(p, out / "profile.png")
    log(format_profile(p))
    log(f"wrote {out / 'profile.json'} and {out / 'profile.png'}")
    return p


def _profile_plot(p: dict, path: Path) -> None:
    """Horizontal bars: the fit's estimated seconds per stage, post-fit callbacks in grey."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from recon.core.io import atomic_file
    items = list(p["stages_s"].items())[::-1]
    post = list(p["post_fit_s"].items())[::-1]
    fig, ax = plt.subplots(figsize=(8, 0.3 * (len(items) + len(post)) + 1.2))
    ax.barh([f"post-fit: {k}" for k, _ in post], [v for _, v in post], color="0.6")
    ax.barh([k for k, _ in items], [v for _, v in items], color="tab:blue")
    ax.set_xlabel("seconds (training: estimated from one profiled window per phase)")
    ax.set_title(f"fit profile: training {p['training_estimate_s']:.0f} s estimated")
    fig.tight_layout()
    with atomic_file(path) as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)


def evaluate(run: Path, scene_dir: Path | None = None, *, baseline: bool = True, fields: bool = True,
             rendering: bool = True, lpips_weights: Path | None = None, log=print) -> dict:
    """eval.evaluate.evaluate_run with the field query of recon/postfit (labels at the GT vertices) and the
    run's view renderer (recon/postfit/views.py: the Gaussians where the run has them, else the fields) for
    the `rendering` block (rendering=False skips it; runs with neither gaussians.ply nor a checkpoint skip it). lpips_weights: a
    local AlexNet / LPIPS weights file for the block's LPIPS (default: the RECON_LPIPS_WEIGHTS environment
    variable; neither: lpips null)."""
    import os
    from recon.train.checkpoint import has_checkpoint

    def view_renderer(r: Path):
        from recon.postfit.views import load_view_renderer
        usable = has_checkpoint(Path(r)) or (Path(r) / "gaussians.ply").is_file()   # the Gaussians need no checkpoint
        return load_view_renderer(Path(r), log=log) if usable else None

    env = os.environ.get("RECON_LPIPS_WEIGHTS")
    if lpips_weights is None and env:
        lpips_weights = Path(env)
        if not lpips_weights.is_file():
            raise FileNotFoundError(f"RECON_LPIPS_WEIGHTS={env}: no such file (the LPIPS weights; unset it to "
                                    f"evaluate without LPIPS)")
    elif lpips_weights is not None and not Path(lpips_weights).is_file():
        raise FileNotFoundError(f"--lpips-weights {lpips_weights}: no such file")
    return evaluate_run(run, scene_dir, baseline=baseline, log=log,
                        point_labeller=run_point_labels if fields else None,
                        view_renderer=view_renderer if rendering else None,
                        lpips_weights=lpips_weights if rendering else None)


def demo(out: Path, config: Path | None, overrides: list[str], force: bool = False) -> dict:
    """synth room -> fit -> eval under `out` (out/room, out/run), skipping the steps whose outputs
    exist (unless `force`); returns the metrics."""
    out = Path(out)
    scene_dir, run = out / "room", out / "run"
    if force or not (scene_dir / "classes.json").is_file():
        make_synth_scene(load_config(SynthSettings, CONFIGS / "synth.yaml"), scene_dir, overwrite=True)
    s = load_config(FitSettings, config, overrides)
    if force or not (run / "mesh.ply").is_file():
        fit_scene(scene_dir, run, s, force=True)
    return evaluate(run, scene_dir)
