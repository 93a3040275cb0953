"""A small disk a test can fill and free: a tmpfs where the test may mount one (root, a kernel
that allows it), otherwise SQLite's ``max_page_count`` on the buffer, which fails the same way
("database or disk is full", SQLITE_FULL)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from gateway.buffer import Buffer


class SmallDisk:
    def __init__(self, root: Path, size_mb: int = 8) -> None:
        self.dir = root / "small-disk"
        self.dir.mkdir(parents=True)
        self.mounted = False
        self._filler = self.dir / "filler"
        mount = shutil.which("mount")
        # SMALL_DISK_NO_MOUNT=1 tries the fallback where mounting would work
        if mount and os.geteuid() == 0 and not os.environ.get("SMALL_DISK_NO_MOUNT"):
            try:
                done = subprocess.run([mount, "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(self.dir)],
                                      capture_output=True, timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.mounted = False
            else:
                self.mounted = done.returncode == 0

    @property
    def how(self) -> str:
        return "tmpfs" if self.mounted else "max_page_count"

    def fill(self, buffer: Buffer) -> None:
        """From now on the buffer's writes fail for want of space (new pages / WAL frames)."""
        if not self.mounted:
            buffer.set_page_limit(buffer.page_count())
            return
        fd = os.open(self._filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            block = b"\0" * 65536
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, block)
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * 512)
        finally:
            os.close(fd)

    def free(self, buffer: Buffer) -> None:
        if not self.mounted:
            buffer.set_page_limit(None)
            return
        self._filler.unlink(missing_ok=True)

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.dir)], capture_output=True, timeout=10)
            self.mounted = False


@contextlib.contextmanager
def small_disk(root: Path, size_mb: int = 8) -> Iterator[SmallDisk]:
    disk = SmallDisk(root, size_mb)
    try:
        yield disk
    finally:
        disk.close()
