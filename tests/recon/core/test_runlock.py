"""RunLock (recon/core/runfolder.py): one writer per run folder; a lock file left by a writer that died is
reported as stale, one released normally is not."""
import os
import subprocess
import sys

from pathlib import Path

import pytest

from recon.core.runfolder import LOCK_NAME, RunLock, RunLocked

ROOT = Path(__file__).resolve().parents[3]


def test_normal_release_leaves_no_stale_holder(tmp_path):
    with RunLock(tmp_path, "eval RUN"):
        assert (tmp_path / LOCK_NAME).read_text().startswith(f"pid {os.getpid()} ")
        with pytest.raises(RunLocked, match="eval RUN"):
            RunLock(tmp_path, "fit").acquire()               # a second writer in the meantime is refused
    assert (tmp_path / LOCK_NAME).read_text() == ""
    lock = RunLock(tmp_path, "fit").acquire()
    try:
        assert lock.stale is None
    finally:
        lock.release()


def test_a_writer_that_died_is_reported_as_stale(tmp_path):
    # a child takes the lock and exits without releasing it (os._exit: no cleanup); the kernel drops the flock
    code = ("import os, sys; from pathlib import Path; from recon.core.runfolder import RunLock; "
            f"RunLock(Path({str(tmp_path)!r}), 'fit (killed)').acquire(); os._exit(0)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    lock = RunLock(tmp_path, "fit --resume").acquire()
    try:
        assert lock.stale is not None and "fit (killed)" in lock.stale
    finally:
        lock.release()
