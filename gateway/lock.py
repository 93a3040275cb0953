"""One gateway per data directory: an exclusive ``flock`` on ``<data_dir>/gateway.lock``.

Two processes on one buffer would hand out the same sequence numbers and evict each other's
rows, so the second one must not start at all. ``flock`` is released by the kernel when the
process ends in any way (SIGKILL, power cut: the lock file stays, the lock does not), so a
stale lock never blocks a restart. The file holds the owner's pid, for the error message only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import IO


class DataDirLocked(RuntimeError):
    """Another process holds the data directory."""


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "gateway.lock"
        self._file: IO[str] | None = None

    def acquire(self) -> DataDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = self.path.open("a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            owner = f.read(32).strip() or "?"
            f.close()
            raise DataDirLocked(
                f"another gateway (pid {owner}) is running on data directory {self.path.parent}; "
                f"one gateway per data directory (stop it, or give this one its own data_dir)"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.truncate(0)
            self._file.close()  # closing the descriptor releases the flock
            self._file = None

    def __enter__(self) -> DataDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
