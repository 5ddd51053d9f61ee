"""Named stages of a training step, for the per-stage profile (`run.py profile`, recon/train/profile.py).

`with stage("hash grid"): ...` marks a region for torch.profiler (a `record_function` named
"stage:hash grid"). The profile attributes every operator to the innermost stage around it, and the
backward of an operator to "<its forward stage> backward". Outside a profile a mark costs about a
microsecond, against tens of milliseconds for a training step.
"""
from __future__ import annotations

import torch

PREFIX = "stage:"


def stage(name: str) -> torch.profiler.record_function:
    """A profiler region named PREFIX + name (a context manager)."""
    return torch.profiler.record_function(PREFIX + name)
