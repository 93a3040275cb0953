"""Run every benchmark and print one table of what each measured.

    python -m benchmarks            # all
    python -m benchmarks scorer ecg_speed

Each benchmark runs in its own process (so one's memory and threads never colour another's)
and prints its own figures and ratios against a baseline measured in the same run; this
runner collects the lines that carry figures ("ratio", "rows/s", "readings/s", ...) into a
summary. Figures belong in docs/benchmarks.md with the date and machine.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

#: every benchmark module, in the order of the data path
BENCHMARKS = (
    "scorer",         # vectorised NEWS2 vs per-row Python; stream update
    "e86_protocol",   # E86 frame/ECG/history codec vs pure-Python CRC and numpy
    "ecg_speed",      # one hour of 250 Hz ECG analysed vs a band-pass baseline
    "virtual_watches",  # virtual E86 watches sustained over bumble vs codec-only
    "fleet",          # fleet-mode readings/s onto Mosquitto vs raw paho publish
    "gateway",        # gateway CPU/RSS, publish latency, replay rate vs bare publish
    "gateway_devices",  # gateway CPU/RSS per device type (HR, PLX, BP, thermometer) vs the E86 watch
    "ingest",         # publish→committed with scoring vs bare paho subscriber; p99 to EWS
    "api_guards",     # REST body depth check vs json.loads; cached key check vs one SHA-256
    "postgres_baseline",  # PostgreSQL 15 batch inserts (multi-row, unnest, COPY) vs SQLite executemany
    "gap_tracking",   # group commit with vs without sequence-gap tracking (issue 12)
    "store_engines",  # commit_batch readings/s on PostgreSQL vs SQLite (issue 13)
    "ews_write",      # an EWS emission batch's history + outbox rows: multi-row vs row by row
    "hl7_out",        # HL7 ORU^R01 build (python-hl7 vs hl7apy), MLLP and outbox channel rates
)
#: a benchmark that takes longer than this is stopped and reported as such (s)
TIMEOUT_S = 600
FIGURE = re.compile(r"ratio|/s\b|\bms\b|p99|p50|×|x baseline|cpu|rss|target", re.IGNORECASE)


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    here = Path(__file__).parent
    summary: list[tuple[str, str, float, list[str]]] = []
    for name in names:
        if not (here / f"{name}.py").exists():
            summary.append((name, "missing", 0.0, []))
            continue
        sys.stdout.write(f"\n=== {name}\n")
        sys.stdout.flush()
        started = time.monotonic()
        try:
            proc = subprocess.run(
                [sys.executable, "-m", f"benchmarks.{name}"], capture_output=True, text=True,
                timeout=TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            summary.append((name, f"timeout after {TIMEOUT_S}s", time.monotonic() - started, []))
            continue
        sys.stdout.write(proc.stdout)
        if proc.returncode:
            sys.stdout.write(proc.stderr[-2000:])
        lines = [ln.strip() for ln in proc.stdout.splitlines() if FIGURE.search(ln)]
        status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
        summary.append((name, status, time.monotonic() - started, lines))
    sys.stdout.write("\n=== summary\n")
    for name, status, took, lines in summary:
        sys.stdout.write(f"{name:16s} {status:10s} {took:6.1f}s\n")
        for line in lines[:12]:
            sys.stdout.write(f"    {line}\n")
    return 0 if all(s == "ok" for _, s, _, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
