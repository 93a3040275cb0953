"""The gateway as a real process (``python -m vitalgate gateway run --simulate 2``): SIGKILL
mid-stream, restart on the same buffer, nothing lost; SIGTERM stops it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from gateway.buffer import Buffer, RowKind
from gateway.probe import Probe, unique_seqs
from vitalgate.broker import Mosquitto, free_port
from vitalgate.contract import Kind

ROOT = Path(__file__).resolve().parents[2]


def start(mosquitto: Mosquitto, data: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITALGATE_")}
    cmd = [sys.executable, "-m", "vitalgate", "-v", "gateway", "run", "--simulate", "2", "--speed", "30", "--interval", "0.2",
           "--mqtt-url", mosquitto.url, "--gateway-id", "gw-kill", "--data-dir", str(data),
           "--status-port", "0"]
    with log.open("ab") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


async def test_sigkill_then_restart_loses_nothing(mosquitto: Mosquitto, tmp_path: Path) -> None:
    probe = Probe(mosquitto.host, mosquitto.port).start()
    data, log = tmp_path / "gw", tmp_path / "gateway.log"
    proc = start(mosquitto, data, log)
    try:
        await probe.until(lambda: len({r.device_id for r in probe.readings()}) == 2
                          and min(len(probe.readings(d)) for d in {r.device_id for r in probe.readings()}) >= 10,
                          timeout=40, what="readings from both watches")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
        devices = sorted({r.device_id for r in probe.readings()})
        before = {d: max(unique_seqs(probe.readings(d))) for d in devices}
        proc = start(mosquitto, data, log)  # same buffer, same watches (same seed)
        await probe.until(lambda: all(max(unique_seqs(probe.readings(d))) > before[d] + 10 for d in devices),
                          timeout=40, what="readings after the restart")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        await probe.until(lambda: probe.latest(Kind.GATEWAY_STATUS) is not None
                          and probe.latest(Kind.GATEWAY_STATUS).online is False, what="offline status")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        probe.stop()
    with Buffer(data / "buffer.sqlite3") as b:
        left = {d: {r.seq for r in b.pending(limit=10**6) if r.kind is RowKind.READING and r.device_id == d}
                for d in devices}
        next_seq = {d: b.next_seq(d) for d in devices}
    assert probe.errors == []
    for d in devices:
        got = set(unique_seqs(probe.readings(d)))
        assert got | left[d] == set(range(next_seq[d])), d  # contiguous: nothing lost across the kill
        assert next_seq[d] > before[d] + 10
    # the state file tells what the stopped gateway did last
    out = subprocess.run([sys.executable, "-m", "vitalgate", "gateway", "status", "--data-dir", str(data),
                          "--port", str(free_port())], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 3, out.stderr
    assert "gw-kill" in out.stdout and "stopped" in out.stdout and devices[0] in out.stdout
