"""Implementations of the `run.py` commands. Each takes the parsed argparse namespace.

The library raises exceptions of the layer that finds the problem (ConfigError, SceneError,
ReaderError, ExportError, ...); here they become UserError, which run.py prints as one line
without a traceback. Imports are inside the handlers so that a command loads only what it uses.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from app import CONFIGS



class UserError(Exception):
    """A problem the user can fix (bad input, bad settings); printed without a traceback."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """The library's exceptions that describe a problem with the user's input or settings."""
    from app.bench.suites import BenchError
    from app.fit_many import FitManyError
    from eval.evaluate import EvalError
    from recon.core.config import ConfigError
    from recon.core.device import DeviceError
    from recon.data.grounded_sam import GsamUnavailable
    from recon.data.readers.common import ReaderError
    from recon.data.scene import SceneError
    from recon.export.run_data import ExportError
    from recon.postfit.language import LanguageError
    from recon.postfit.query import QueryError
    from recon.postfit.renders import RenderError
    from recon.train.memory import FitMemoryError
    from recon.train.profile import ProfileError
    return (ConfigError, SceneError, ReaderError, ExportError, DeviceError, FitMemoryError, BenchError, EvalError,
            GsamUnavailable, RenderError, QueryError, LanguageError, FitManyError, ProfileError,
            OSError)   # OSError: missing / unwritable paths, a full disk (path named)


def _guard(fn):
    """Turn the library's input errors into UserError so run.py prints one clear message."""
    def wrapped(args):
        try:
            return fn(args)
        except _user_errors() as exc:
            raise UserError(str(exc)) from exc
    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


def synth_settings_from_args(args):
    """YAML file <- key=value overrides <- explicit flags (flags win)."""
    from recon.core.config import load_config
    from recon.core.settings import SynthSettings
    flags = {"preset": args.preset, "seed": args.seed, "noise": args.noise,
             "size": list(args.size) if args.size else None, "frames": args.frames}
    flag_overrides = [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    return load_config(SynthSettings, args.config, list(args.overrides) + flag_overrides)


@_guard
def cmd_synth(args) -> int:
    from recon.data.make_synth import make_synth_scene
    make_synth_scene(synth_settings_from_args(args), args.out, overwrite=args.force)
    return 0


@_guard
def cmd_segment(args) -> int:
    from recon.data.mask_source import SimMaskSource, run_mask_source
    if args.backend == "sim":
        source = SimMaskSource(args.noise, args.seed)
    else:
        from recon.data.grounded_sam import GroundedSamSource
        source = GroundedSamSource(args.prompts, args.dino_config, args.dino_checkpoint, args.sam_checkpoint,
                                   sam_type=args.sam_type, text_encoder=getattr(args, "text_encoder", None),
                                   device=getattr(args, "device", "auto"), batch_size=getattr(args, "batch_size", 2))
    run_mask_source(args.scene, source, force=args.force)
    return 0


@_guard
def cmd_convert(args) -> int:
    from recon.data.readers.convert import convert
    convert(args.kind, args.src, args.out, args.stride, args.max_frames, args.force,
            skip_bad_frames=args.skip_bad_frames, intrinsics=args.intrinsics,
            color_intrinsics=args.color_intrinsics, resolution=args.resolution, class_names=args.class_names,
            label_map=args.label_map, mesh=args.mesh, no_gt=args.no_gt, holdout_every=args.holdout_every,
            size=args.size, max_depth_m=args.max_depth_m, depth_unit_scale_factor=args.depth_unit_scale_factor,
            min_confidence=args.min_confidence)
    return 0


@_guard
def cmd_fit(args) -> int:
    from app.pipeline import fit_scene
    from recon.core.config import load_config
    from recon.core.settings import FitSettings
    s = load_config(FitSettings, args.config, args.overrides)
    if args.skip_bad_frames:
        s.data.skip_bad_frames = True
    fit_scene(args.scene, args.out, s, resume=args.resume, force=args.force)
    return 0


@_guard
def cmd_profile(args) -> int:
    from app.pipeline import profile_fit
    from recon.core.config import load_config
    from recon.core.settings import FitSettings
    if args.window < 1:
        raise UserError(f"--window must be at least 1, got {args.window}")
    profile_fit(args.scene, args.out, load_config(FitSettings, args.config, args.overrides), window=args.window,
                force=args.force)
    return 0


@_guard
def cmd_grid_speed(args) -> int:
    import json

    import torch

    from fields.hashgrid import HashGridConfig, benchmark_hash_grid
    from fields.numba_jit import numba_available
    from recon.core.io import atomic_write_text
    for name in ("levels", "log2_table", "features", "finest", "points", "reps"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    backends = ["torch", "numba"] if args.backend == "both" else [args.backend]
    if "numba" in backends and not numba_available()[0]:
        if args.backend == "numba":
            raise UserError(f"the numba backend cannot run: {numba_available()[1]}")
        backends.remove("numba")
        print(f"numba: skipped ({numba_available()[1]})")
    cfg = HashGridConfig(n_levels=args.levels, n_features_per_level=args.features,
                         log2_hashmap_size=args.log2_table, finest_resolution=args.finest)
    threads_before = torch.get_num_threads()
    try:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        threads = torch.get_num_threads()
        print(f"hash grid {args.levels} levels x 2^{args.log2_table} rows x {args.features} features, finest "
              f"{args.finest} cells, {args.points} uniform points, {threads} threads, best of {args.reps}")
        results = {}
        for backend in backends:
            r = results[backend] = benchmark_hash_grid(cfg, n_points=args.points, reps=args.reps, backend=backend)
            print(f"{backend:>6}: {r['points_per_s'] / 1e6:.3f} M points/s (best {1e3 * r['seconds_best']:.1f} ms, "
                  f"median {1e3 * r['seconds_median']:.1f} ms per pass; {r['points_per_cpu_s'] / 1e6:.3f} M per CPU s)")
    finally:
        torch.set_num_threads(threads_before)     # in-process callers (tests) keep their thread count
    if args.json is not None:
        payload = {"config": vars(cfg), "points": args.points, "threads": threads, "results": results}
        atomic_write_text(args.json, json.dumps(payload, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


@_guard
def cmd_fit_many(args) -> int:
    from app.fit_many import fit_many
    summary = fit_many(args.scenes, args.out, args.config, args.overrides, ray_address=args.ray,
                       ray_cpus=args.ray_cpus, force=args.force)
    return 0 if all(r["status"] == "done" for r in summary["scenes"].values()) else 1


@_guard
def cmd_eval(args) -> int:
    from app.pipeline import evaluate
    m = evaluate(args.run, args.scene, baseline=not args.no_baseline, fields=not args.no_fields,
                 rendering=not args.no_rendering, lpips_weights=args.lpips_weights)
    print(json.dumps(m, indent=1))
    return 0


@_guard
def cmd_demo(args) -> int:
    """synth room -> fit -> eval, skipping the steps whose outputs exist (unless --force)."""
    from app.pipeline import demo
    metrics = demo(args.out, args.config, args.overrides, force=args.force)
    print(json.dumps(metrics, indent=1))
    return 0


@_guard
def cmd_config(args) -> int:
    from app.settings_help import settings_table
    from recon.core.config import load_config
    from recon.core.settings import FitSettings, SynthSettings
    cls, default_file = {"fit": (FitSettings, "quick.yaml"), "synth": (SynthSettings, "synth.yaml")}[args.command_settings]
    config = args.config if args.config is not None else CONFIGS / default_file
    print(settings_table(load_config(cls, config, args.overrides)))
    return 0


@_guard
def cmd_merge_fragments(args) -> int:
    from recon.postfit.post_process import merge_run_fragments
    merge_run_fragments(args.run, args.max_fraction, args.min_edges)
    return 0


@_guard
def cmd_merge_by_masks(args) -> int:
    from recon.postfit.post_process import merge_run_by_masks
    merge_run_by_masks(args.run, args.min_frames, args.min_share, progress=True)
    return 0


@_guard
def cmd_relabel(args) -> int:
    from recon.postfit.post_process import relabel_run
    relabel_run(args.run, split=not args.no_split, fill=not args.no_fill, progress=True)
    return 0


@_guard
def cmd_reclass(args) -> int:
    from recon.postfit.post_process import reclass_run
    reclass_run(args.run, progress=True)
    return 0


@_guard
def cmd_consistency(args) -> int:
    from recon.postfit.post_process import consistency_run
    consistency_run(args.run, progress=True)
    return 0


@_guard
def cmd_cull_mesh(args) -> int:
    from recon.postfit.post_process import cull_run_mesh
    cull_run_mesh(args.run, args.front_margin)
    return 0


@_guard
def cmd_query(args) -> int:
    from recon.postfit.language import text_similarity
    from recon.postfit.query import (format_hits, parse_point, prompt_tables, query_instances, read_instances,
                                     synonym_table)
    near = parse_point(args.near) if args.near is not None else None
    tables = args.prompts if args.prompts else sorted((CONFIGS / "prompts").glob("*.yaml"))
    synonyms = synonym_table(prompt_tables(tables))
    instances = read_instances(args.run)
    sims = text_similarity(args.run, args.text, args.clip_checkpoint, args.device)
    hits = query_instances(instances, args.text, synonyms, near=near, similarity=sims, top=args.top)
    if args.json:
        print(json.dumps({"query": args.text, "near": None if near is None else near.tolist(),
                          "language_features": sims is not None, "instances": [h.to_dict() for h in hits]}, indent=1))
    else:
        print(format_hits(hits, args.text))
    return 0


@_guard
def cmd_embed(args) -> int:
    from recon.postfit.language import embed_run
    embed_run(args.run, args.clip_checkpoint, args.clip_model, args.crops, args.device)
    return 0


@_guard
def cmd_render(args) -> int:
    from recon.postfit.renders import render_run_images
    render_run_images(args.run, args.frames, poses_file=args.poses, orbit=args.orbit, path=args.path, what=args.what,
                      size=args.size, out=args.out, video=args.video, labels=args.labels, n_frames=args.n_frames,
                      fps=args.fps, fields_surface=args.fields_surface)
    return 0


@_guard
def cmd_view(args) -> int:
    from app.viewer import ViewerError, serve
    try:
        return serve(args.run, host=args.host, port=args.port)
    except ViewerError as exc:
        raise UserError(str(exc)) from exc


@_guard
def cmd_export(args) -> int:
    from recon.export.run_export import export_run
    export_run(args.run, args.format, args.out, args.collision_faces, args.color_by, collision=args.collision,
               rigid_bodies=args.rigid_bodies)
    return 0


@_guard
def cmd_bench(args) -> int:
    from app.bench.references import ensure_references
    from app.bench.report import write_report
    from app.bench.results import collect_results, publish, write_results
    from app.bench.runner import run_suite
    from app.bench.suites import SUITES
    if args.suite not in SUITES:
        raise UserError(f"unknown suite {args.suite!r}; choose one of {', '.join(SUITES)}")
    suite = SUITES[args.suite]
    if args.threads is not None and args.threads < 0:
        raise UserError(f"--threads must be 0 (every core) or more, got {args.threads}")
    out = Path(args.out) if args.out is not None else Path("runs") / "bench" / suite.name
    say = lambda m: print(m, file=sys.stderr, flush=True)      # noqa: E731
    if args.report_only:
        if not (out / "cells").is_dir():
            raise FileNotFoundError(f"{out} holds no bench cells ({out / 'cells'} missing); run the suite first")
        results = collect_results(suite, out, ensure_references(suite, out, say))
        write_results(results, out)
        write_report(results, out, out)
        say(f"wrote {out / 'results.json'} and {out / 'report.md'}")
    else:
        try:
            results = run_suite(suite, out, force=args.force, only=args.only, keep_checkpoints=args.keep_checkpoints,
                                ray_address=args.ray, ray_cpus=args.ray_cpus, fit_threads=args.threads,
                                log=say)
        except KeyboardInterrupt:
            say(f"interrupted: finished cells are kept in {out / 'cells'}; run the same command again to "
                f"continue (an interrupted fit resumes from its checkpoint)")
            return 130
    if args.publish:
        publish(results, out, log=say)
    failed = [c["cell_id"] for c in results["cells"] if c["status"] == "failed"]
    return 1 if failed else 0
