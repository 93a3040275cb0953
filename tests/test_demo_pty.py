"""``vitalgate demo`` in a pseudo-terminal of 160×45, as in tmux: the live table shows the
ward and keeps redrawing while the demo runs (it once stayed at "ward · 0 patients" until the
demo exited: rich's refresh thread had died on a cell's markup, which a pipe never showed)."""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from vitalgate.broker import free_port

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-B]|\x1b[=>]")
#: bounds (s): start-up of broker, ingest and gateway on a loaded runner; stopping
REACH_S = 60.0
STOP_BOUND_S = 10.0
#: redraws of the full ward to see while the demo runs (one a second)
REDRAWS = 3
#: the sepsis patient's row with its label, user_code and a NEWS2 score
SCORED = re.compile(r"bed 1 · sepsis\s*│\s*\w{13}\s*│\s*\d+\s*│\s*(normal|rendah|sedang|tinggi)")


def last_frame(screen: str) -> str:
    at = screen.rfind("ward · 3 patients")
    return screen[at:] if at >= 0 else ""


def test_live_table_updates_while_the_demo_runs_in_a_terminal(tmp_path: Path) -> None:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 45, 160, 0, 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITALGATE_") and k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vitalgate", "demo", "--patients", "3", "--speed", "120",
         "--port", str(free_port()), "--data-dir", str(tmp_path / "demo")],
        cwd=ROOT, env={**env, "TERM": "xterm-256color"}, stdin=slave, stdout=slave, stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    screen = ""

    def read() -> None:
        nonlocal screen
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                screen += ANSI.sub("", os.read(master, 65536).decode(errors="replace"))
            except OSError:  # EIO: nobody holds the terminal any more
                time.sleep(0.2)

    try:
        deadline = time.monotonic() + REACH_S
        while screen.count("ward · 3 patients") < REDRAWS or not SCORED.search(last_frame(screen)):
            assert proc.poll() is None, f"the demo exited {proc.returncode}:\n{screen}"
            assert time.monotonic() < deadline, f"no live ward table in the terminal:\n{screen[-4000:]}"
            read()
        assert proc.poll() is None  # all of it drawn while the demo runs, not when it exits
        last = last_frame(screen)
        assert "bed 3 · respiratory" in last and "user_code" in last
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_BOUND_S
        while proc.poll() is None and time.monotonic() < deadline:
            read()  # keep the terminal drained: the demo draws its last table as it stops
        assert proc.returncode == 0, screen[-4000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)
