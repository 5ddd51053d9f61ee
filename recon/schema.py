"""Settings schemas: one dataclass tree per command, loaded by recon.config.load_config."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SynthSettings:
    """`run.py synth`: procedural scene + simulated Grounded-SAM masks."""
    preset: str = "room"                 # room | apartment | clutter
    seed: int = 0                        # one seed drives geometry, trajectory and masks
    size: tuple[int, int] = (160, 120)   # image width, height in pixels
    frames: int | None = None            # total frames; None = the preset's default
    noise: str = "realistic"             # mask noise level: clean | realistic | hard
    holdout_every: int = 5               # every Nth frame is held out of training (0 = none); eval uses all frames
    masks: dict[str, Any] = field(default_factory=dict)  # overrides of the level's rates, e.g. {p_miss: 0.2}

    def __post_init__(self) -> None:
        if self.holdout_every < 0 or self.holdout_every == 1:
            raise ValueError("holdout_every must be 0 (none) or >= 2")
        if self.frames is not None and self.frames < 2:
            raise ValueError("frames must be at least 2")
