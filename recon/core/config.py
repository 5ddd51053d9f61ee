"""Typed configuration: nested dataclasses loaded from YAML with `key=value` overrides.

One mechanism for every command: a dataclass tree describes the settings and their
defaults; `load_config` reads a YAML file (which may set any subset), applies dotted
overrides from the command line (`train.iters=2000 model.sdf.hidden=32`) and checks
every key and type, so a typo fails at once with the nearest valid names.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import io
import math
import re
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from recon.core.io import atomic_write_text

T = TypeVar("T")
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # scientific notation without a dot


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message says which key and why."""


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown_key_message(key: str, where: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return f"unknown config key '{where}{key}'.{hint} Valid keys here: {', '.join(sorted(valid))}"


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type `tp`, or raise ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"'{where}': {value!r} does not fit {tp}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"'{where}' must be a mapping, got {value!r}")
        return _build(tp, value, where + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{where}' must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"'{where}' must have {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        out = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{where}' must be a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, where): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if typing.get_origin(tp) is typing.Literal:
        if value not in args:
            raise ConfigError(f"'{where}' must be one of {list(args)}, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"'{where}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"'{where}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            return float(value)             # YAML 1.1 reads 1e-2 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{where}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"'{where}' must be a string, got {value!r}")
        return value
    return value


def _build(cls: type[T], data: dict, prefix: str = "") -> T:
    types_ = _field_types(cls)
    unknown = [k for k in data if k not in types_]
    if unknown:
        raise ConfigError(_unknown_key_message(unknown[0], prefix, list(types_)))
    kwargs = {k: _coerce(v, types_[k], prefix + k) for k, v in data.items()}
    for k, v in kwargs.items():
        _check_value(v, getattr(cls, "RANGES", {}).get(k), prefix + k)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid settings in '{prefix.rstrip('.') or 'config'}': {exc}") from exc
    return obj


_BOUND = re.compile(r"^(>=|>|<=|<)\s*(\S+)$")
_INTERVAL = re.compile(r"^([\[(])\s*([^,]+),\s*([^\])]+)([\])])$")


def in_range(value: float, spec: str) -> bool:
    """Whether `value` satisfies a range spec: ">=1", ">0", "<=5", "[0, 1]", "(0, 1]" (brackets closed, parentheses
    open)."""
    m = _BOUND.match(spec.strip())
    if m:
        op, bound = m[1], float(m[2])
        return {">=": value >= bound, ">": value > bound, "<=": value <= bound, "<": value < bound}[op]
    m = _INTERVAL.match(spec.strip())
    assert m, f"bad range spec {spec!r}"
    lo, hi = float(m[2]), float(m[3])
    return (value >= lo if m[1] == "[" else value > lo) and (value <= hi if m[4] == "]" else value < hi)


def _check_value(value: Any, spec: str | None, where: str) -> None:
    """Numbers must be finite and, where the settings class gives a range (its RANGES), inside it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, (list, tuple)) and spec is not None:
            for i, v in enumerate(value):
                _check_value(v, spec, f"{where}[{i}]")
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"'{where}' must be a finite number, got {value}")
    if spec is not None and not in_range(value, spec):
        raise ConfigError(f"'{where}' must be {'in ' if spec.strip()[0] in '[(' else ''}{spec}, got {value}")


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (tuples become lists) for YAML/JSON output."""
    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v
    return conv(cfg)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b.c=VALUE' -> (['a','b','c'], yaml-parsed VALUE)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({exc})") from exc
    return key.split("."), value


def _set_path(data: dict, path: list[str], value: Any, cls: type) -> None:
    """Set data[path] = value, checking each key against the dataclass tree `cls`."""
    node, node_cls, done = data, cls, []
    for i, part in enumerate(path):
        types_ = _field_types(node_cls)
        if part not in types_:
            raise ConfigError(_unknown_key_message(part, "".join(p + "." for p in done), list(types_)))
        tp = types_[part]
        if i == len(path) - 1:
            node[part] = value
            return
        if typing.get_origin(tp) is dict:                   # a free mapping (e.g. synth masks.p_miss=0.2)
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"'{'.'.join(path[:i + 1])}' must be a mapping")
            for key in path[i + 1:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = value
            return
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"'{'.'.join(path[:i + 1])}' is a value, not a section")
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"'{'.'.join(path[:i + 1])}' must be a mapping")
        node_cls, done = tp, done + [part]


def load_config(cls: type[T], yaml_path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: dict | None = None) -> T:
    """Build `cls` from defaults <- `base` <- YAML file <- overrides, validating every key and type.

    The defaults are the whole default tree of `cls`, so a partial section (`model.semantic_grid.backend=torch`)
    keeps the other keys of that section's own default rather than taking its class's defaults."""
    data: dict = to_dict(cls())

    def merge(dst: dict, src: dict) -> None:
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict):
                merge(dst[k], v)
            else:
                dst[k] = v

    if base:
        merge(data, base)
    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        try:
            _build(cls, loaded)  # validate keys of the file itself, so the message names the file
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        merge(data, loaded)
    for text in overrides:
        path_, value = parse_override(text)
        _set_path(data, path_, value, cls)
    return _build(cls, data)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML atomically (temp file + rename)."""
    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))


# ----------------------------------------------------------------------------- discoverable settings

def field_help(cls: type) -> dict[str, str]:
    """Each field's one-line help: the comment on the field's line(s) in the class source, joined with
    the comment-only lines that directly follow it (continuations). Fields without a comment map to ""."""
    src = textwrap.dedent(inspect.getsource(cls))
    lines = src.splitlines()
    comments: dict[int, str] = {}                                            # 1-based line -> comment text
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    cls_node = ast.parse(src).body[0]
    out: dict[str, str] = {}
    for node in cls_node.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        parts = [comments[i] for i in range(node.lineno, node.end_lineno + 1) if i in comments]
        i = node.end_lineno + 1
        while i <= len(lines) and i in comments and lines[i - 1].lstrip().startswith("#"):
            parts.append(comments[i])
            i += 1
        out[node.target.id] = " ".join(p for p in parts if p)
    return out


def _type_text(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_text(a) for a in args)
    if tp is type(None):
        return "None"
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_text(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp))


@dataclasses.dataclass(frozen=True)
class SettingRow:
    key: str           # dotted path, e.g. train.iters
    type: str          # e.g. "int", "float | None", "auto | torch | tcnn"
    default: Any
    value: Any         # the value in the settings described
    help: str
    range: str = ""    # e.g. ">=1", "[0, 1]" (the settings class's RANGES), "" = any


def settings_rows(cfg: Any) -> list[SettingRow]:
    """Every leaf setting of the dataclass tree `cfg` (a loaded settings object) with its type, its default
    (the schema's), its value in `cfg` and its help text, in declaration order."""
    rows: list[SettingRow] = []

    def walk(obj: Any, default: Any, prefix: str) -> None:
        cls = type(obj)
        hints, helps = _field_types(cls), field_help(cls)
        for f in dataclasses.fields(cls):
            v, d = getattr(obj, f.name), getattr(default, f.name)
            if dataclasses.is_dataclass(v):
                walk(v, d, prefix + f.name + ".")
            else:
                rows.append(SettingRow(prefix + f.name, _type_text(hints[f.name]), to_dict(d), to_dict(v),
                                       helps.get(f.name, ""), getattr(cls, "RANGES", {}).get(f.name, "")))

    walk(cfg, type(cfg)(), "")
    return rows
