"""Run-folder bookkeeping: the one-writer lock, refusal rules, text log, CSV/TensorBoard metrics, memory.

A run folder of ours holds the marker file `.recon-run` (runs from before the marker: config.yaml and
scene.txt). `--force` replaces only such folders, and never one that is, or holds, the scene.
"""
from __future__ import annotations

import csv
import fcntl
import functools
import os
import resource
import shutil
import socket
import sys
import time
from pathlib import Path

import yaml

from recon.core.io import check_replaceable, marker_path, pid_alive

LOCK_NAME = ".lock"

# train.* settings that --resume lets change: the length of the run and its bookkeeping
BOOKKEEPING_TRAIN_KEYS = ("iters", "checkpoint_every", "keep_checkpoints", "log_every", "monitor_every", "device")


def peak_rss_mb() -> float:
    """Peak resident memory of this process, MiB (Linux ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (falls back to 8 GiB where unreadable)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def with_defaults(saved: dict, defaults: dict) -> dict:
    """`saved` with every (nested) key it lacks taken from `defaults`."""
    out = dict(saved)
    for k, v in defaults.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = with_defaults(out[k], v)
    return out


def is_run_folder(folder: Path) -> bool:
    """A run folder written by this tool: the marker, or (older runs) config.yaml and scene.txt."""
    folder = Path(folder)
    return marker_path(folder, "run").is_file() or ((folder / "config.yaml").is_file()
                                                    and (folder / "scene.txt").is_file())


def may_hold_run(folder: Path) -> bool:
    """A run may be written into `folder`: it is a run folder of ours, or empty (a lock file aside)."""
    return is_run_folder(folder) or not _entries(Path(folder))


def _entries(run: Path) -> list[Path]:
    """What a folder holds besides the lock file."""
    return [p for p in run.iterdir() if p.name != LOCK_NAME] if run.is_dir() else []


def check_run_folder(run: Path, resolved: dict, resume: bool, force: bool, defaults: dict | None = None,
                     inputs: tuple[Path, ...] = ()) -> str:
    """Decide what to do with `run`: 'new', 'resume' or 'replace'; raise FileExistsError to refuse.

    A folder holding a run with a different config is never touched without --force;
    --resume needs a run with the same config (the iteration count may differ). `defaults`
    (the schema's default settings) fill the keys a run's config.yaml lacks because the setting
    was added later: that run used the default, so a new run with the default is the same run.
    --force replaces only a run folder of ours (is_run_folder), never one that is or holds one of
    `inputs` (the scene), never a file.
    """
    check_replaceable(run, "run", may_hold_run, inputs)
    cfg_path = run / "config.yaml"
    if not run.exists() or not _entries(run):
        if resume:
            raise FileExistsError(f"{run} holds no run to resume")
        return "new"
    if not cfg_path.is_file():
        if force:
            return "replace"
        raise FileExistsError(f"{run} holds a run that never got its settings written (no config.yaml); pass "
                              "--force to replace it")
    old = yaml.safe_load(cfg_path.read_text()) or {}
    if defaults is not None:
        old = with_defaults(old, defaults)
    if resume:
        a = {k: v for k, v in old.items() if k != "train"}
        b = {k: v for k, v in resolved.items() if k != "train"}
        old_train = {k: v for k, v in old.get("train", {}).items() if k not in BOOKKEEPING_TRAIN_KEYS}
        new_train = {k: v for k, v in resolved.get("train", {}).items() if k not in BOOKKEEPING_TRAIN_KEYS}
        if a != b or old_train != new_train:
            raise FileExistsError(f"{run} holds a run with different settings; --resume continues only the same run "
                                  f"(only train.iters and the bookkeeping settings "
                                  f"{', '.join(BOOKKEEPING_TRAIN_KEYS[1:])} may change). Compare {cfg_path}.")
        return "resume"
    if force:
        return "replace"
    same = old == resolved
    raise FileExistsError(f"{run} already holds a {'run with the same settings' if same else 'different run'}; "
                          "pass --resume to continue it or --force to replace it")


class RunLog:
    """Append-only text log, metrics CSV and (if installed) TensorBoard events in the run folder."""

    def __init__(self, run: Path, append: bool, resume_at: int | None = None):
        """append: continue the files of an earlier process. resume_at: the iteration training resumes
        from; rows logged after it (by a process killed before its next checkpoint) are dropped from
        metrics.csv and TensorBoard, so each iteration is logged once."""
        self.run = run
        self.text = open(run / "log.txt", "a" if append else "w", buffering=1)
        self.csv_path = run / "metrics.csv"
        self._csv_fields: list[str] | None = None
        if append and self.csv_path.is_file():
            with open(self.csv_path, newline="") as fh:
                rows = list(csv.reader(fh))
            self._csv_fields = rows[0] if rows else None
            if resume_at is not None and rows:
                kept = [r for r in rows[1:] if r and float(r[0]) <= resume_at]
                if len(kept) < len(rows) - 1:
                    self._rewrite_csv(rows[0], kept)
        self._csv = open(self.csv_path, "a" if append else "w", newline="", buffering=1)
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run / "tb"), purge_step=None if resume_at is None else resume_at + 1)
        except Exception:  # tensorboard missing: CSV only
            self.tb = None

    def _rewrite_csv(self, header: list[str], rows: list[list[str]]) -> None:
        tmp = self.csv_path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows(rows)
        tmp.replace(self.csv_path)

    def info(self, msg: str, echo: bool = True) -> None:
        line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {msg}"
        self.text.write(line + "\n")
        if echo:
            print(msg, file=sys.stderr)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        row = {"iter": step, **{k: float(v) for k, v in values.items()}}
        if self._csv_fields is None:
            self._csv_fields = list(row)
            csv.writer(self._csv).writerow(self._csv_fields)
        elif any(k not in self._csv_fields for k in row):
            self._widen_csv([k for k in row if k not in self._csv_fields])
        csv.writer(self._csv).writerow([f"{row.get(k, float('nan')):.6g}" for k in self._csv_fields])
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def _widen_csv(self, new_fields: list[str]) -> None:
        """Later training stages log new terms: rewrite the CSV with the wider header (temp file, rename);
        earlier rows get empty cells for the new columns."""
        self._csv.close()
        with open(self.csv_path, newline="") as fh:
            rows = list(csv.reader(fh))[1:]
        self._csv_fields = list(self._csv_fields) + new_fields
        self._rewrite_csv(self._csv_fields, [r + [""] * (len(self._csv_fields) - len(r)) for r in rows])
        self._csv = open(self.csv_path, "a", newline="", buffering=1)

    def close(self) -> None:
        self.text.close()
        self._csv.close()
        if self.tb is not None:
            self.tb.close()



def clear_run_folder(run: Path) -> None:
    """Empty a run folder that is being replaced, keeping the lock file its writer holds."""
    for p in _entries(run):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


class RunLocked(FileExistsError):
    """Another process is writing this run folder."""


class RunLock:
    """One writer per run folder: an exclusive lock (flock) on RUN/.lock, held by this process while it
    writes and released when it ends, however it ends (the kernel drops the lock of a dead process). The
    file says who holds it; a second writer is refused with that text. A lock file left by a process that
    died is noticed and taken over (`stale` then holds its text)."""

    def __init__(self, run: Path, what: str = "", create: bool = False):
        self.run = Path(run)
        self.create = create
        self.what = what or " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv[:4]))
        self.fd: int | None = None
        self.stale: str | None = None

    @property
    def path(self) -> Path:
        return self.run / LOCK_NAME

    def acquire(self) -> "RunLock":
        if self.create:
            self.run.mkdir(parents=True, exist_ok=True)
        elif not self.run.is_dir():
            raise FileNotFoundError(f"{self.run}: no such run folder")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "an unknown process"
            os.close(fd)
            raise RunLocked(f"{self.run} is being written by another process ({holder}); wait for it to end "
                            f"or stop it, then run this again") from None
        previous = os.read(fd, 4096).decode("utf-8", "replace").strip()
        if previous.startswith("pid "):
            pid = previous.split()[1]
            if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
                self.stale = previous
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                     f"{self.what}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)          # a writer that ends normally leaves no holder text: only one that
            fcntl.flock(self.fd, fcntl.LOCK_UN)   # died holding the lock is reported as stale by the next
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def writes_run(what: str):
    """Decorator for a function whose first argument is a run folder it writes: it runs under RunLock."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapped(run, *args, **kwargs):
            with RunLock(Path(run), f"{what} {run}"):
                return fn(run, *args, **kwargs)
        return wrapped
    return deco
