"""Writes that never leave a half-written file or folder: temporary file (or folder) + rename.

Every file a command writes goes through these, so an interrupted run leaves either the old
content or the new one, never a mix.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
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
    remove_stale_temporaries(out.parent, out.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        swap_dir_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (atomic_file)."""
    with atomic_file(path) as fh:
        fh.write(data)


@contextmanager
def atomic_file(path: Path):
    """A binary file object whose content replaces `path` only when the block ends normally: it is a temporary
    file in the same folder (named after this process, so leftovers of a killed one can be told apart),
    fsynced and renamed onto `path`. A reader sees the old content or the new one, never a part, even after
    a crash; on an exception the temporary file is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------- folders of ours

class ReplaceRefused(FileExistsError):
    """A folder may not be replaced: it is, or holds, an input, or this tool did not write it."""


def marker_path(folder: Path, kind: str) -> Path:
    """The file that says `folder` is a `kind` folder ("run", "scene") written by this tool."""
    return Path(folder) / f".recon-{kind}"


def write_marker(folder: Path, kind: str) -> None:
    atomic_write_text(marker_path(folder, kind), f"{kind} folder written by panoptic-recon; --force may replace it\n")


def check_replaceable(out: Path, kind: str, is_ours: Callable[[Path], bool], inputs: Sequence[Path | str] = (),
                      flag: str = "--force") -> None:
    """Refuse (ReplaceRefused) to replace or write into `out` when it is a file, when it is or holds one of
    `inputs`, or when it is a non-empty folder that `is_ours` does not recognise as a `kind` folder of this
    tool. Nothing is touched; called before any work."""
    out = Path(out)
    out_r = out.resolve()
    for inp in inputs:
        inp_r = Path(inp).resolve()
        if inp_r == out_r or out_r in inp_r.parents:
            what = "is the input" if inp_r == out_r else "holds the input"
            raise ReplaceRefused(f"{out} {what} {inp}: {flag} never deletes an input; choose another output folder")
    if out.exists() and not out.is_dir():
        raise ReplaceRefused(f"{out} exists and is a file, not a folder; choose another output folder")
    if out.is_dir() and any(out.iterdir()) and not is_ours(out):
        raise ReplaceRefused(f"{out} is not empty and is not a {kind} folder written by this tool (no "
                             f"{marker_path(out, kind).name}); {flag} only replaces those: choose another output "
                             f"folder, or remove this one yourself")


_LEFTOVER = re.compile(r"^\.(?P<name>.+?)\.(?:old-(?P<old>\d+)|(?P<pid>\d+)\..*\.tmp|[^.]+\.tmp)$")


def remove_stale_temporaries(parent: Path, name: str | None = None, recursive: bool = False,
                             log: Callable[[str], None] = print) -> int:
    """Delete what killed processes left of their atomic writes in `parent` (of `name` only, if given):
    temporary folders / files `.<name>.<pid>.*.tmp` and moved-aside folders `.<name>.old-<pid>` whose process
    is gone. Leftovers without a process id (older versions) count as stale after an hour. Returns how many
    were removed."""
    parent = Path(parent)
    if not parent.is_dir():
        return 0
    n = 0
    for p in (parent.rglob(".*") if recursive else parent.glob(".*")):
        m = _LEFTOVER.match(p.name)
        if m is None or (name is not None and m["name"] != name):
            continue
        pid = m["old"] or m["pid"]
        if pid is not None:
            stale = int(pid) != os.getpid() and not pid_alive(int(pid))
        else:
            try:
                stale = time.time() - p.stat().st_mtime > 3600
            except OSError:
                continue
        if stale:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            n += 1
    if n:
        log(f"removed {n} leftover(s) of an interrupted earlier write in {parent}")
    return n


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
