"""Writes that never leave a half-written file or folder: temporary file (or folder) + rename.

Every file a command writes goes through these, so an interrupted run leaves either the old
content or the new one, never a mix.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def swap_dir_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder `tmp` to `out`. An existing `out` is moved aside first, restored if the
    rename fails, and removed only after the new folder is in place."""
    tmp, out = Path(tmp), Path(out)
    backup = None
    if out.exists():
        backup = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, backup)
    try:
        os.replace(tmp, out)
    except BaseException:
        if backup is not None:
            os.replace(backup, out)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


@contextmanager
def staged_dir(out: Path):
    """Build a folder that replaces `out` only once it is complete.

    Yields a new empty temporary folder beside `out`. When the block ends normally the folder is
    swapped into place (swap_dir_into_place); when it raises, the temporary folder is deleted and
    `out`, if it existed, is left as it was.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        swap_dir_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder and os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
