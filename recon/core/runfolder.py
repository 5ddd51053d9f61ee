"""Run-folder bookkeeping: refusal rules, text log, CSV/TensorBoard metrics, memory reading."""
from __future__ import annotations

import csv
import resource
import sys
import time
from pathlib import Path

import yaml

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


def check_run_folder(run: Path, resolved: dict, resume: bool, force: bool, defaults: dict | None = None) -> str:
    """Decide what to do with `run`: 'new', 'resume' or 'replace'; raise FileExistsError to refuse.

    A folder holding a run with a different config is never touched without --force;
    --resume needs a run with the same config (the iteration count may differ). `defaults`
    (the schema's default settings) fill the keys a run's config.yaml lacks because the setting
    was added later: that run used the default, so a new run with the default is the same run.
    """
    cfg_path = run / "config.yaml"
    if not run.exists() or not any(run.iterdir()):
        if resume:
            raise FileExistsError(f"{run} holds no run to resume")
        return "new"
    if not cfg_path.is_file():
        if force:
            return "replace"
        raise FileExistsError(f"{run} exists and is not a run folder (no config.yaml); choose another --out or "
                              "pass --force to replace its contents")
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

    def __init__(self, run: Path, append: bool):
        self.run = run
        self.text = open(run / "log.txt", "a" if append else "w", buffering=1)
        self.csv_path = run / "metrics.csv"
        self._csv_fields: list[str] | None = None
        if append and self.csv_path.is_file():
            with open(self.csv_path) as fh:
                self._csv_fields = next(csv.reader(fh), None)
        self._csv = open(self.csv_path, "a" if append else "w", newline="", buffering=1)
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run / "tb"))
        except Exception:  # tensorboard missing: CSV only
            self.tb = None

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
        tmp = self.csv_path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(self._csv_fields)
            for r in rows:
                w.writerow(r + [""] * (len(self._csv_fields) - len(r)))
        tmp.replace(self.csv_path)
        self._csv = open(self.csv_path, "a", newline="", buffering=1)

    def close(self) -> None:
        self.text.close()
        self._csv.close()
        if self.tb is not None:
            self.tb.close()

