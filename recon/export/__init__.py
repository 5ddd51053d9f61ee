"""Export a fitted run for simulators and 3D tools (entry point: recon/export/run_export.py)."""
