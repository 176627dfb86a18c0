"""One writer per run directory.

    with RunLock(run_dir):          # raises RunLocked if another live process trains there
        ...train...

The lock is an exclusive `flock` on `<run_dir>/.lock`, and the file records who holds
it (pid, host, start time) for the message a second writer sees. The kernel releases a
flock when its process dies, however it dies (kill -9 included), so a lock is never
left behind by a dead trainer. What a dead trainer does leave is its record in the
file: the next writer takes the lock over and warns that the previous holder is gone.

flock works on local file systems; on a network file system that ignores it the lock
does nothing, and the record is still written (see README, "Reliability").
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
import warnings
from pathlib import Path

LOCK_FILE = ".lock"


class RunLocked(RuntimeError):
    """Another live process is writing this run directory."""


class RunDirUnwritable(OSError):
    """The run directory cannot be created or written."""


class RunLockWarning(UserWarning):
    """A lock left by a process that is no longer running was taken over."""


def _record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def _read_record(path: Path) -> dict | None:
    try:
        text = path.read_text().strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


def describe(record: dict | None) -> str:
    if not record:
        return "another process"
    host = f" on {record['host']}" if record.get("host") and record["host"] != socket.gethostname() else ""
    return f"pid {record.get('pid', '?')}{host} since {record.get('since', '?')}"


def holder(run_dir: str | Path) -> dict | None:
    """Who holds the lock on `run_dir` now (their record), or None when nobody does.
    Takes and drops the lock to find out, so it never reports a dead process."""
    path = Path(run_dir) / LOCK_FILE
    if not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return _read_record(path) or {}
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class RunLock:
    """Exclusive, process-lifetime lock on a run directory (see the module docstring)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunDirUnwritable(e.errno, f"cannot write the run directory {self.run_dir} "
                                            f"({e.strerror}); choose another train.run_dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunLocked(f"{self.run_dir} is being written by {describe(_read_record(self.path))}; "
                            "wait for it, stop it, or train into another train.run_dir") from None
        previous = _read_record(self.path)
        if previous and previous.get("pid") != os.getpid():
            warnings.warn(f"took over the lock of {self.run_dir} from {describe(previous)}, "
                          "which is no longer running", RunLockWarning, stacklevel=2)
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(_record()) + "\n").encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)      # an empty record: the last writer exited cleanly
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
