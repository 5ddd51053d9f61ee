"""The application layer: commands, the fit pipeline, the settings listing and the benchmark harness."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]      # the repository
CONFIGS = ROOT / "configs"                      # shipped YAML settings and prompt tables
