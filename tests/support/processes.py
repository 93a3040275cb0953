"""Test tools for child processes (services a test starts as a user would)."""

from __future__ import annotations

import signal
import subprocess


def stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM a process still running and reap it; SIGKILL it if it has not exited within
    ``timeout`` seconds (a test that asserts on a clean exit waits for it itself)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
