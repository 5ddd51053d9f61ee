"""`run.py grid-speed`: the hash grid alone, both CPU backends, on a small grid (the speed itself is not a test;
that it measures forward + backward of the named sizes and writes what it prints is)."""
from __future__ import annotations

import json

import pytest

import run as run_py
from fields.numba_jit import numba_available


def test_grid_speed_measures_both_backends_and_writes_json(tmp_path, capsys):
    out = tmp_path / "speed.json"
    rc = run_py.main(["grid-speed", "--levels", "4", "--log2-table", "10", "--finest", "32", "--points", "256",
                      "--reps", "2", "--threads", "1", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "4 levels x 2^10 rows x 2 features, finest 32 cells, 256 uniform points, 1 threads" in text
    data = json.loads(out.read_text())
    want = {"torch", "numba"} if numba_available()[0] else {"torch"}
    assert set(data["results"]) == want
    for name, r in data["results"].items():
        assert f"{name:>6}: {r['points_per_s'] / 1e6:.3f} M points/s" in text
        assert r["points_per_s"] == pytest.approx(256 / r["seconds_best"])
        assert r["seconds_best"] <= r["seconds_median"]
    assert data["config"]["n_levels"] == 4 and data["config"]["log2_hashmap_size"] == 10 and data["points"] == 256


def test_grid_speed_refuses_bad_sizes(capsys):
    assert run_py.main(["grid-speed", "--points", "0"]) == 2
    assert "--points must be at least 1, got 0" in capsys.readouterr().err
