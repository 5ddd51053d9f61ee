"""Procedural synthetic indoor scenes with exact ground truth."""
from .classes import CLASSES, CONFUSABLE
from .generate import PRESETS, SynthFrame, SynthScene, default_frames, generate_scene

__all__ = ["CLASSES", "CONFUSABLE", "PRESETS", "SynthFrame", "SynthScene", "default_frames", "generate_scene"]
