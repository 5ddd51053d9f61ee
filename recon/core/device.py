"""Where a fit runs: `train.device` -> torch.device, checked before any work.

"auto" picks the first CUDA device when PyTorch sees one and the CPU otherwise. The pure-PyTorch
code is the same on both; the CPU path is the reference (tests/recon/test_cuda.py compares them
where a GPU exists). The frame bank and every random draw stay on the CPU (one torch.Generator),
so a run's random stream does not depend on the device; the fields, tokens and per-step tensors
live on the device.
"""
from __future__ import annotations

import torch


class DeviceError(ValueError):
    """train.device names a device this machine does not have (raised before any work)."""


def resolve_device(name: str) -> torch.device:
    """torch.device for a train.device setting: "auto", "cpu", "cuda" or "cuda:N"."""
    name = str(name).strip().lower()
    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(f"train.device={name!r} but PyTorch sees no CUDA device (torch {torch.__version__}, "
                              f"built for CUDA {torch.version.cuda}); use train.device=cpu or auto")
        dev = torch.device(name)
        if dev.index is None:
            return torch.device("cuda", torch.cuda.current_device())
        if dev.index >= torch.cuda.device_count():
            raise DeviceError(f"train.device={name!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
        return dev
    raise DeviceError(f"train.device={name!r} is not one of auto, cpu, cuda, cuda:N")


def describe(dev: torch.device) -> str:
    """One line for the log: the device and, for CUDA, its name and memory."""
    if dev.type != "cuda":
        return f"cpu ({torch.get_num_threads()} torch threads)"
    props = torch.cuda.get_device_properties(dev)
    return f"{dev} ({props.name}, {props.total_memory / (1 << 30):.0f} GiB)"


def synchronize(dev: torch.device) -> None:
    """Wait for queued CUDA work (so wall-clock timings are real); no-op on the CPU."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
