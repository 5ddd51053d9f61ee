"""Implementations of the `run.py` commands. Each takes the parsed argparse namespace."""
from __future__ import annotations

import json

from recon.config import ConfigError, load_config


class UserError(Exception):
    """A problem the user can fix (bad input, bad settings); printed without a traceback."""


def _guard(fn):
    """Turn the project's input errors into UserError so run.py prints one clear message."""
    def wrapped(args):
        from recon.data.scene import SceneError
        try:
            return fn(args)
        except (ConfigError, SceneError, FileExistsError, FileNotFoundError) as exc:
            raise UserError(str(exc)) from exc
    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


def synth_settings_from_args(args):
    """YAML file <- key=value overrides <- explicit flags (flags win)."""
    from recon.schema import SynthSettings
    flags = {"preset": args.preset, "seed": args.seed, "noise": args.noise,
             "size": list(args.size) if args.size else None, "frames": args.frames}
    flag_overrides = [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    return load_config(SynthSettings, args.config, list(args.overrides) + flag_overrides)


@_guard
def cmd_synth(args) -> int:
    from recon.data.make_synth import make_synth_scene
    settings = synth_settings_from_args(args)
    make_synth_scene(settings, args.out, overwrite=args.force)
    return 0


@_guard
def cmd_segment(args) -> int:
    from recon.data.mask_source import SimMaskSource, run_mask_source
    if args.backend == "sim":
        source = SimMaskSource(args.noise, args.seed)
    else:
        from recon.data.grounded_sam import GroundedSamSource, GsamUnavailable
        try:
            source = GroundedSamSource(args.prompts, args.dino_config, args.dino_checkpoint, args.sam_checkpoint,
                                       sam_type=args.sam_type, text_encoder=getattr(args, "text_encoder", None),
                                       device=getattr(args, "device", "auto"),
                                       batch_size=getattr(args, "batch_size", 2))
        except GsamUnavailable as exc:
            raise UserError(str(exc)) from exc
    run_mask_source(args.scene, source, force=args.force)
    return 0


@_guard
def cmd_convert(args) -> int:
    from recon.data.readers import ReaderError, convert
    try:
        convert(args.kind, args.src, args.out, args.stride, args.max_frames, args.force,
                skip_bad_frames=args.skip_bad_frames, intrinsics=args.intrinsics,
                color_intrinsics=args.color_intrinsics, resolution=args.resolution, class_names=args.class_names,
                label_map=args.label_map, mesh=args.mesh, no_gt=args.no_gt, holdout_every=args.holdout_every)
    except ReaderError as exc:
        raise UserError(str(exc)) from exc
    return 0


@_guard
def cmd_fit(args) -> int:
    from recon.trainer import fit_command
    return fit_command(args)


@_guard
def cmd_eval(args) -> int:
    from eval.evaluate import eval_command
    return eval_command(args)


@_guard
def cmd_demo(args) -> int:
    from recon.trainer import demo_command
    return demo_command(args)


@_guard
def cmd_merge_fragments(args) -> int:
    from recon.fragments import merge_run_fragments
    merge_run_fragments(args.run, args.max_fraction, args.min_edges)
    return 0


@_guard
def cmd_cull_mesh(args) -> int:
    from recon.export_mesh import cull_run_mesh
    cull_run_mesh(args.run, args.front_margin)
    return 0


@_guard
def cmd_render(args) -> int:
    from recon.trainer import render_command
    return render_command(args)


@_guard
def cmd_export(args) -> int:
    from recon.export import ExportError, export_command
    try:
        return export_command(args)
    except ExportError as exc:
        raise UserError(str(exc)) from exc


@_guard
def cmd_bench(args) -> int:
    from eval.bench import bench_command
    return bench_command(args)
