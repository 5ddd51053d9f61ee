"""`run.py config`: every setting with its type, valid range, default, current value and one line of help."""
from __future__ import annotations

import json

from recon.core.config import SettingRow, settings_rows


def _text(v) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def settings_table(cfg) -> str:
    """The settings of `cfg` as aligned text columns; a value that differs from the default is marked *."""
    rows: list[SettingRow] = settings_rows(cfg)
    table = [("key", "type", "range", "default", "value", "help")]
    for r in rows:
        value = _text(r.value) + (" *" if r.value != r.default else "")
        table.append((r.key, r.type, r.range.replace(" ", "") or "-", _text(r.default), value, r.help))
    widths = [max(len(row[c]) for row in table) for c in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:5], widths)) + "  " + row[5] for row in table]
    n_changed = sum(r.value != r.default for r in rows)
    lines.append(f"\n{len(rows)} settings; {n_changed} differ from the default (*). Set any with key=value, "
                 "e.g. train.iters=2000, or in a YAML file passed with --config.")
    return "\n".join(lines)
