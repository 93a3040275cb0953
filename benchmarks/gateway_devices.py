"""CPU and memory of the gateway per device type: ``python -m benchmarks.gateway_devices
[--seconds 10] [--devices 4] [--repeats 3]``.

For each type (the E86 watch as the baseline, then the heart-rate strap, pulse oximeter,
blood-pressure cuff and thermometer), ``vitalgate gateway run`` runs as a child process for
``--seconds`` (real time) with ``--devices`` virtual devices of that one type, one measurement
per second each, against a private Mosquitto. The child's CPU time (user + system) and max RSS
come from ``os.wait4`` of that child. The virtual devices and the bumble link run inside the
gateway process, so the figures include the simulated radio and the devices' own work (an
E86 also synthesises its patient's physiology). Each type is run ``--repeats`` times,
interleaved (so a load spike of the shared machine hits all types alike); medians are reported,
with the ratio against the E86 watch of the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vitalgate.broker import Mosquitto

ROOT = Path(__file__).resolve().parents[1]
#: "idle": the same gateway with the simulated radio and no device (start-up, MQTT, scanner):
#: subtracted, so that "per device" is what one more device of the type costs.
TYPES = ("idle", "e86", "hr", "plx", "bp", "thermometer")


def readings_in(data_dir: Path) -> int:
    """Readings the run numbered (the buffer's per-device seq counters)."""
    db = data_dir / "buffer.sqlite3"
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
        return int(c.execute("SELECT COALESCE(SUM(next_seq), 0) FROM device_seq").fetchone()[0])


def run_once(broker: Mosquitto, kind: str, devices: int, seconds: float, work: Path) -> tuple[float, float, int]:
    """(CPU seconds, max RSS MiB, readings) of one gateway run."""
    select = (["--simulate", str(devices)] if kind == "e86"
              else ["--simulate", "0", "--simulate-link", "127.0.0.1:0"] if kind == "idle"
              else ["--simulate", "0", "--simulate-devices", ",".join([kind] * devices)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITALGATE_")}
    cmd = [sys.executable, "-m", "vitalgate", "gateway", "run", *select, "--interval", "1",
           "--mqtt-url", broker.url, "--gateway-id", f"bench-{kind}", "--data-dir", str(work / kind),
           "--status-port", "0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(seconds)
    proc.send_signal(signal.SIGTERM)
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"gateway with {kind} exited {proc.returncode}")
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, readings_in(work / kind)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--devices", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    cpu: dict[str, list[float]] = {k: [] for k in TYPES}
    rss: dict[str, list[float]] = {k: [] for k in TYPES}
    got: dict[str, list[int]] = {k: [] for k in TYPES}
    with tempfile.TemporaryDirectory() as tmp, Mosquitto() as broker:
        for r in range(args.repeats):
            for kind in TYPES:
                c, m, n = run_once(broker, kind, args.devices, args.seconds, Path(tmp) / f"r{r}")
                cpu[kind].append(c)
                rss[kind].append(m)
                got[kind].append(n)
    print(f"gateway run, {args.devices} devices of one type, 1 measurement/s each, "
          f"{args.seconds:g} s, median of {args.repeats} (CPU includes the simulated devices)")
    idle_cpu, idle_rss = statistics.median(cpu["idle"]), statistics.median(rss["idle"])

    def per_device(kind: str) -> tuple[float, float]:
        """(CPU % of one core, RSS MiB) one device of ``kind`` adds over the idle gateway."""
        c, m = statistics.median(cpu[kind]), statistics.median(rss[kind])
        return 100 * (c - idle_cpu) / args.seconds / args.devices, (m - idle_rss) / args.devices

    base_cpu, base_rss = per_device("e86")
    print(f"idle gateway: {idle_cpu:.2f} cpu s, {idle_rss:.1f} MiB rss")
    print(f"{'type':12s} {'readings':>8s} {'cpu s':>7s} {'rss MiB':>8s} {'cpu %/device':>13s} "
          f"{'MiB/device':>11s} {'cpu ratio vs e86':>17s} {'rss ratio':>10s}")
    for kind in TYPES[1:]:
        c, m = per_device(kind)
        print(f"{kind:12s} {statistics.median(got[kind]):8.0f} {statistics.median(cpu[kind]):7.2f} "
              f"{statistics.median(rss[kind]):8.1f} {c:13.2f} {m:11.2f} {c / base_cpu:15.2f} x "
              f"{m / base_rss if base_rss else float('nan'):8.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
