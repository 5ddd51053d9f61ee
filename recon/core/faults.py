"""Fault injection for the crash tests and the soak run: `fault_point(name)` kills this process with
SIGKILL (no cleanup, like a power cut or the out-of-memory killer) when the environment variable
RECON_KILL_AT equals `name`, and does nothing otherwise.

Points: "training" (right after a periodic checkpoint), "meshing" (mesh.ply written, instances.json not
yet), "labels" (after the first label image), "export" (parts written, manifest not yet), "eval"
(metrics computed, metrics.json not yet written).
"""
from __future__ import annotations

import os
import signal

POINTS = ("training", "meshing", "labels", "export", "eval")


def fault_point(name: str) -> None:
    assert name in POINTS, name
    if os.environ.get("RECON_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
