"""Gateway benchmark: ``python -m benchmarks.gateway [--seconds 30] [--rows 20000]``.

1. Live: ``vitalgate gateway run --simulate 4`` as a child process for N seconds (real time,
   speed 1, a reading every second per watch) against a private Mosquitto; a subscriber
   measures publish latency (reading ts → received); the child's CPU time and max RSS come
   from ``getrusage(RUSAGE_CHILDREN)``. The virtual watches and the bumble link run inside the
   same process, so the figures include the simulated radio.
2. Replay: a buffer of R readings (written while "offline") drained by the publisher into the
   broker (until every PUBACK), vs a baseline: a bare paho QoS 1 publish loop of the same
   payloads to the same broker, also until every PUBACK.
3. Buffer writes: single-reading commits per second with synchronous=FULL vs NORMAL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from paho.mqtt.client import Client
from paho.mqtt.enums import CallbackAPIVersion

from gateway.buffer import Buffer, Measurement
from gateway.publisher import Publisher
from gateway.settings import GatewaySettings
from tests.support.probe import Probe
from vitalgate.broker import Mosquitto
from vitalgate.contract import Kind, Source, Vitals

ROOT = Path(__file__).resolve().parents[1]
DEV = "d061aed45894"


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def live(broker: Mosquitto, seconds: float, work: Path) -> dict[str, float]:
    probe = Probe(broker.host, broker.port, client_id="bench-live").start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITALGATE_")}
    cmd = [sys.executable, "-m", "vitalgate", "gateway", "run", "--simulate", "4", "--interval", "1",
           "--mqtt-url", broker.url, "--gateway-id", "bench", "--data-dir", str(work / "live"),
           "--status-port", "0"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(seconds)
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    time.sleep(0.5)
    probe.stop()
    received = [r for r in probe.snapshot() if r.kind is Kind.READING and r.message.source is Source.REALTIME]
    latency_ms = [r.at * 1000 - r.message.ts for r in received]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "seconds": seconds,
        "readings": len(received),
        "readings_per_s": len(received) / seconds,
        "cpu_s": cpu,
        "cpu_percent": 100 * cpu / seconds,
        "max_rss_mib": after.ru_maxrss / 1024,
        "latency_p50_ms": pct(latency_ms, 0.5),
        "latency_p99_ms": pct(latency_ms, 0.99),
    }


def fill(path: Path, rows: int) -> list[bytes]:
    with Buffer(path, max_rows=rows * 2, synchronous="NORMAL") as b:
        batch = [Measurement(DEV, 1_700_000_000_000 + i * 1000, Vitals(heart_rate=60 + i % 40, spo2=97),
                             Source.REALTIME, "AMSe5Sn8Gkxj7") for i in range(rows)]
        for i in range(0, rows, 1000):
            b.add_readings(batch[i : i + 1000])
        return [r.payload for r in b.pending(limit=rows)]


async def replay(broker: Mosquitto, path: Path, rows: int) -> float:
    st = GatewaySettings(gateway_id="bench-replay", mqtt_url=broker.url, data_dir=path.parent, status_port=0)
    buffer = Buffer(path, max_rows=rows * 2)
    pub = Publisher(st, buffer)
    t0 = time.perf_counter()
    task = asyncio.create_task(pub.run())
    while len(buffer) > 0:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - t0
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    buffer.close()
    return elapsed


def baseline(broker: Mosquitto, payloads: list[bytes], window: int) -> float:
    """Bare paho: publish every payload at QoS 1 (same in-flight window) until every PUBACK."""
    done = threading.Event()
    acked = 0
    lock = threading.Lock()

    def on_publish(*_args: object) -> None:
        nonlocal acked
        with lock:
            acked += 1
            if acked == len(payloads):
                done.set()

    client = Client(CallbackAPIVersion.VERSION2, client_id="bench-baseline")
    client.on_publish = on_publish
    client.max_inflight_messages_set(window)
    client.connect(broker.host, broker.port)
    client.loop_start()
    t0 = time.perf_counter()
    for p in payloads:
        client.publish(f"vitals/v1/bench-baseline/{DEV}/reading", p, qos=1)
    done.wait(300)
    elapsed = time.perf_counter() - t0
    client.disconnect()
    client.loop_stop()
    return elapsed


def writes(path: Path, sync: str, n: int) -> float:
    with Buffer(path, synchronous=sync) as b:  # type: ignore[arg-type]
        m = Measurement(DEV, 1_700_000_000_000, Vitals(heart_rate=70), Source.REALTIME)
        t0 = time.perf_counter()
        for _ in range(n):
            b.add_readings([m])
        return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rows", type=int, default=20_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d, Mosquitto() as broker:
        work = Path(d)
        lv = live(broker, args.seconds, work)
        print(f"live, 4 virtual watches, {lv['seconds']:.0f} s: {lv['readings']} realtime readings "
              f"({lv['readings_per_s']:.1f}/s); CPU {lv['cpu_s']:.1f} s ({lv['cpu_percent']:.1f} % of one core); "
              f"max RSS {lv['max_rss_mib']:.0f} MiB")
        print(f"publish latency (reading ts → subscriber): p50 {lv['latency_p50_ms']:.1f} ms, "
              f"p99 {lv['latency_p99_ms']:.1f} ms")
        payloads = fill(work / "replay" / "buffer.sqlite3", args.rows)
        t_replay = asyncio.run(replay(broker, work / "replay" / "buffer.sqlite3", args.rows))
        t_base = baseline(broker, payloads, GatewaySettings().inflight_window)
        r, b = args.rows / t_replay, args.rows / t_base
        print(f"replay of {args.rows} buffered readings: {r:,.0f} readings/s ({t_replay:.2f} s); "
              f"bare paho QoS 1 loop, same payloads: {b:,.0f}/s ({t_base:.2f} s); ratio {r / b:.2f}")
        full = writes(work / "w-full.sqlite3", "FULL", 500)
        normal = writes(work / "w-normal.sqlite3", "NORMAL", 500)
        print(f"buffer commits (one reading each): FULL {full:,.0f}/s, NORMAL {normal:,.0f}/s "
              f"(ratio {full / normal:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
