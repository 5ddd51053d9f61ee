"""Config loading: YAML + overrides, strict keys and types, resolved config round trip."""
from dataclasses import dataclass, field

import pytest

from recon.config import ConfigError, load_config, save_config, staged_dir, to_dict


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
    assert cfg.size == (64, 48) and cfg.frames == 30 and cfg.extra == {"a": 1}
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(Outer, tmp_path / "resolved.yaml")
    assert to_dict(again) == to_dict(cfg)


@pytest.mark.parametrize("override, message", [
    ("inner.lrr=1", "unknown config key 'inner.lrr'. Did you mean: lr?"),
    ("inner.levels=abc", "'inner.levels' must be an integer"),
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
