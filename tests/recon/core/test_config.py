"""Config loading: YAML + overrides, strict keys and types, resolved config round trip."""
from dataclasses import dataclass, field

import pytest

from recon.core.config import ConfigError, load_config, save_config, to_dict
from recon.core.io import staged_dir


@dataclass
class Inner:
    lr: float = 1e-2
    levels: int = 16


@dataclass
class Outer:
    name: str = "x"
    size: tuple[int, int] = (160, 120)
    frames: int | None = None
    inner: Inner = field(default_factory=Inner)
    extra: dict = field(default_factory=dict)


def test_defaults_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: y\ninner: {levels: 8}\n")
    cfg = load_config(Outer, f, ["inner.lr=0.5", "size=[64, 48]", "frames=30", "extra={a: 1}"])
    assert cfg.name == "y" and cfg.inner.levels == 8 and cfg.inner.lr == 0.5
    assert load_config(Outer, None, ["inner.lr=1e-3"]).inner.lr == 0.001      # YAML 1.1 reads 1e-3 as text
    assert cfg.size == (64, 48) and cfg.frames == 30 and cfg.extra == {"a": 1}
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(Outer, tmp_path / "resolved.yaml")
    assert to_dict(again) == to_dict(cfg)


@pytest.mark.parametrize("override, message", [
    ("inner.lrr=1", "unknown config key 'inner.lrr'. Did you mean: lr?"),
    ("inner.levels=abc", "'inner.levels' must be an integer"),
    ("inner.lr=1e", "'inner.lr' must be a number"),
    ("size=[1, 2, 3]", "'size' must have 2 items"),
    ("name.sub=1", "'name' is a value, not a section"),
    ("noequals", "is not of the form key=value"),
])
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("?", r"\?")):
        load_config(Outer, None, [override])


def test_bad_yaml_key_names_the_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("inner: {levls: 3}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'inner.levls'"):
        load_config(Outer, f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "missing.yaml")


def test_staged_dir_replaces_only_when_complete(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    # a failure inside the block: the old folder is untouched and no temporary folder is left
    with pytest.raises(RuntimeError, match="boom"):
        with staged_dir(out) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    # success: the new folder replaces the old one, nothing else remains
    with staged_dir(out) as tmp:
        assert tmp.parent == tmp_path and tmp != out
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    # a folder that did not exist is created (parents too)
    with staged_dir(tmp_path / "a" / "b") as tmp:
        (tmp / "x").write_text("x")
    assert (tmp_path / "a" / "b" / "x").read_text() == "x"


@dataclass
class Helped:
    a: int = 1                 # the first
    b: float | None = None     # the second,
                               # on two lines
    c: Inner = field(default_factory=lambda: Inner(
        levels=4))             # a section
    d: str = "x"


def test_field_help_reads_line_and_continuation_comments():
    from recon.core.config import field_help
    assert field_help(Helped) == {"a": "the first", "b": "the second, on two lines", "c": "a section", "d": ""}


def test_settings_rows_types_defaults_values():
    from recon.core.config import settings_rows
    cfg = load_config(Helped, None, ["a=5", "c.lr=0.5"])
    rows = {r.key: r for r in settings_rows(cfg)}
    assert list(rows) == ["a", "b", "c.lr", "c.levels", "d"]
    assert (rows["a"].type, rows["a"].default, rows["a"].value, rows["a"].help) == ("int", 1, 5, "the first")
    assert rows["b"].type == "float | None" and rows["b"].value is None
    assert rows["c.levels"].default == 4 and rows["c.levels"].value == 4        # the section's own default
    assert rows["c.lr"].default == 0.01 and rows["c.lr"].value == 0.5


def test_every_shipped_setting_has_help_and_checked_choices():
    from recon.core.config import settings_rows
    from recon.core.settings import FitSettings, SynthSettings
    for cls in (FitSettings, SynthSettings):
        missing = [r.key for r in settings_rows(cls()) if not r.help]
        assert missing == [], f"{cls.__name__}: settings without a help comment: {missing}"
    rows = {r.key: r for r in settings_rows(FitSettings())}
    assert rows["model.sdf_grid.backend"].type == "auto | torch | numba | tcnn"
    with pytest.raises(ConfigError, match=r"must be one of \['auto', 'torch', 'numba', 'tcnn'\], got 'cuda'"):
        load_config(FitSettings, None, ["model.sdf_grid.backend=cuda"])
    with pytest.raises(ConfigError, match="device must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        load_config(FitSettings, None, ["train.device=gpu"])
    assert load_config(FitSettings, None, ["train.device=cuda:1"]).train.device == "cuda:1"
    with pytest.raises(ConfigError, match=r"'noise' must be one of \['clean', 'realistic', 'hard', 'realistic-video', 'hard-video'\]"):
        load_config(SynthSettings, None, ["noise=loud"])
