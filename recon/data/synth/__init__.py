"""Procedural synthetic indoor scenes with exact ground truth."""
from .classes import CLASSES, CONFUSABLE
from .generate import PRESETS, SynthFrame, SynthScene, generate_scene

__all__ = ["CLASSES", "CONFUSABLE", "PRESETS", "SynthFrame", "SynthScene", "generate_scene"]
