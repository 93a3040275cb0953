"""SIGKILL mid-stream: every QoS 1 reading published ends up stored exactly once.

The ingest service runs as a real subprocess (``python -m vitalgate ingest``) with a fixed MQTT
client id. A publisher keeps publishing while the service is killed with SIGKILL and started
again: the broker's persistent session redelivers what was not acknowledged (manual ack after
commit), and the store's (device_id, seq) identity drops what was committed but not acked.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.ingest_service import TEST_KEY, publisher, reading
from vitalgate.broker import Mosquitto, free_port, wait_port
from vitalgate.contract import QOS, Topics

N_DEVICES = 4
PER_DEVICE = 600
#: a device published until ingest stores it, before the stream starts: until ingest's first
#: SUBACK the broker has no session for it, and what is published then is (rightly) nobody's
WARMUP_DEVICE = "d061aed4ffff"


def _start(data_dir: Path, broker: Mosquitto, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ,
               VITALGATE_DATA_DIR=str(data_dir), VITALGATE_MQTT_URL=broker.url,
               VITALGATE_HTTP_HOST="127.0.0.1", VITALGATE_HTTP_PORT=str(port),
               VITALGATE_API_KEY=TEST_KEY, VITALGATE_MQTT_CLIENT_ID="ingest-crash-test")
    env.pop("VITALGATE_CONFIG", None)
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vitalgate", "ingest"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    wait_port("127.0.0.1", port, timeout=30)
    return proc


def _stored(db: Path) -> tuple[int, int]:
    """(rows, distinct readings) of the stream, without the warm-up device."""
    if not db.exists():
        return 0, 0
    with sqlite3.connect(db, timeout=30) as conn:
        rows, ids = conn.execute(
            "SELECT count(*), count(DISTINCT device_id || ':' || seq) FROM readings"
            " WHERE device_id != ?", (WARMUP_DEVICE,)).fetchone()
    return int(rows), int(ids)


def _warm_up(db: Path, pub: Any, topics: Topics, t0: int) -> None:
    """Publish the warm-up device until ingest stored one of its readings: from then on the
    broker holds ingest's persistent session and queues everything for it."""
    deadline = time.monotonic() + 60
    seq = 0
    while time.monotonic() < deadline:
        r = reading(WARMUP_DEVICE, seq, t0, user_code="PWARM", heart_rate=70)
        pub.publish(topics.reading("gw-crash", WARMUP_DEVICE), r.to_bytes(), qos=QOS).wait_for_publish(10)
        seq += 1
        time.sleep(0.1)
        if not db.exists():
            continue
        with sqlite3.connect(db, timeout=30) as conn:
            if conn.execute("SELECT 1 FROM readings WHERE device_id = ?", (WARMUP_DEVICE,)).fetchone():
                return
    raise AssertionError("ingest never stored the warm-up device")


@pytest.mark.e2e
def test_sigkill_mid_stream_loses_and_duplicates_nothing(tmp_path: Path, mosquitto: Mosquitto) -> None:
    data_dir = tmp_path / "data"
    db = data_dir / "ingest.sqlite3"
    port = free_port()
    log = tmp_path / "ingest.log"
    proc = _start(data_dir, mosquitto, port, log)
    topics = Topics()
    devices = [f"d061aed4{i:04x}" for i in range(N_DEVICES)]
    total = N_DEVICES * PER_DEVICE
    pub = publisher(mosquitto.host, mosquitto.port, client_id="crash-test-publisher")
    published: list[int] = []
    done = threading.Event()

    def publish() -> None:
        infos = []
        for seq in range(PER_DEVICE):
            for dev in devices:
                r = reading(dev, seq, t0 + seq * 1000, user_code=f"P{dev[-4:]}", heart_rate=60 + seq % 40)
                infos.append(pub.publish(topics.reading("gw-crash", dev), r.to_bytes(), qos=QOS))
            if seq % 20 == 0:
                time.sleep(0.02)  # a steady stream rather than one burst
        for info in infos:
            info.wait_for_publish(60)
        published.append(len(infos))
        done.set()

    # readings of the last PER_DEVICE seconds: older ones would be removed by retention
    # (30 days) at startup, later ones are in the future (dead-lettered beyond 300 s)
    t0 = time.time_ns() // 1_000_000 - PER_DEVICE * 1000
    thread = threading.Thread(target=publish, daemon=True)
    try:
        _warm_up(db, pub, topics, t0)
        thread.start()
        # wait until the stream is being stored, then kill the service mid-stream
        deadline = time.monotonic() + 60
        while _stored(db)[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _stored(db)[0] > 0, log.read_text()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert not done.is_set() or _stored(db)[0] < total, "stream ended before the kill"
        proc = _start(data_dir, mosquitto, port, log)
        assert done.wait(120), "publisher did not finish"
        deadline = time.monotonic() + 60
        while _stored(db)[0] < total and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # anything extra (a duplicate) would have landed by now too
        rows, ids = _stored(db)
        assert published == [total]
        assert ids == total, f"{total - ids} readings lost"
        assert rows == total, f"{rows - total} duplicate rows"
    finally:
        pub.disconnect()
        pub.loop_stop()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
