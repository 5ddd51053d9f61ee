"""Implementations of the `run.py` commands. Each takes the parsed argparse namespace."""
from __future__ import annotations

import json
from pathlib import Path

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
    if args.backend != "sim":
        raise UserError("the Grounded-SAM backend is not available yet (real-data issue); "
                        "use --backend sim to simulate masks from the scene's gt/ images")
    from recon.data.make_synth import simulate_masks_for_scene
    simulate_masks_for_scene(args.scene, args.noise, args.seed, overwrite=args.force)
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
def cmd_render(args) -> int:
    from recon.trainer import render_command
    return render_command(args)


def cmd_export(args) -> int:
    raise UserError("export is not available yet (simulation-export issue); the run's mesh.ply is the "
                    "panoptic mesh in PLY form")


def cmd_bench(args) -> int:
    raise UserError("bench is not available yet (benchmark issue); use 'run.py fit' and 'run.py eval'")
