"""SIGKILL mid-stream: every QoS 1 reading published ends up stored exactly once.

The ingest service runs as a real subprocess (``python -m vitalgate ingest``) with a fixed MQTT
client id. A publisher keeps publishing while the service is killed with SIGKILL and started
again: the broker's persistent session redelivers what was not acknowledged (manual ack after
commit), and the store's (device_id, seq) identity drops what was committed but not acked.
On SQLite and on PostgreSQL (``VITALGATE_DATABASE_URL``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ingest.db import Database, DatabaseError, Location
from tests.support.ingest_service import TEST_KEY, publisher, reading
from vitalgate.broker import Mosquitto, free_port, wait_port
from vitalgate.contract import QOS, Topics

N_DEVICES = 4
PER_DEVICE = 600
#: a device published until ingest stores it, before the stream starts: until ingest's first
#: SUBACK the broker has no session for it, and what is published then is (rightly) nobody's
WARMUP_DEVICE = "d061aed4ffff"


def _start(data_dir: Path, broker: Mosquitto, port: int, log: Path,
           database_url: str | None) -> subprocess.Popen[bytes]:
    env = dict(os.environ,
               VITALGATE_DATA_DIR=str(data_dir), VITALGATE_MQTT_URL=broker.url,
               VITALGATE_HTTP_HOST="127.0.0.1", VITALGATE_HTTP_PORT=str(port),
               VITALGATE_API_KEY=TEST_KEY, VITALGATE_MQTT_CLIENT_ID="ingest-crash-test",
               VITALGATE_MAX_READING_AGE_DAYS="2")
    env.pop("VITALGATE_CONFIG", None)
    env.pop("VITALGATE_DATABASE_URL", None)
    if database_url is not None:
        env["VITALGATE_DATABASE_URL"] = database_url
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vitalgate", "ingest"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    wait_port("127.0.0.1", port, timeout=30)
    return proc


def _query(db: Location, sql: str, params: tuple[Any, ...] = ()) -> Any:
    """One row of a read-only query on the service's store (None before the service made it)."""
    if db.path is not None and not db.path.exists():
        return None
    try:
        store = Database(db, readonly=True, name="crash-test-reader")
    except Exception:  # the service has not created it yet
        return None
    try:
        return store.read_sync(lambda c: c.execute(sql, params).fetchone())
    except DatabaseError:  # not set up yet (no readings table)
        return None
    finally:
        store.close()


def _stored(db: Location) -> tuple[int, int]:
    """(rows, distinct readings) of the stream, without the warm-up device."""
    row = _query(db, "SELECT count(*), count(DISTINCT device_id || ':' || CAST(seq AS TEXT))"
                     " FROM readings WHERE device_id <> ?", (WARMUP_DEVICE,))
    return (0, 0) if row is None else (int(row[0]), int(row[1]))


def _warm_up(db: Location, pub: Any, topics: Topics, t0: int) -> None:
    """Publish the warm-up device until ingest stored one of its readings: from then on the
    broker holds ingest's persistent session and queues everything for it."""
    deadline = time.monotonic() + 60
    seq = 0
    while time.monotonic() < deadline:
        r = reading(WARMUP_DEVICE, seq, t0, user_code="PWARM", heart_rate=70)
        pub.publish(topics.reading("gw-crash", WARMUP_DEVICE), r.to_bytes(), qos=QOS).wait_for_publish(10)
        seq += 1
        time.sleep(0.1)
        if _query(db, "SELECT 1 FROM readings WHERE device_id = ?", (WARMUP_DEVICE,)):
            return
    raise AssertionError("ingest never stored the warm-up device")


@pytest.mark.e2e
def test_sigkill_mid_stream_loses_and_duplicates_nothing(tmp_path: Path, mosquitto: Mosquitto,
                                                         database_url: str) -> None:
    data_dir = tmp_path / "data"
    url = None if database_url.startswith("sqlite:") else database_url
    db = Location.parse(url, default_path=data_dir / "ingest.sqlite3")
    port = free_port()
    log = tmp_path / "ingest.log"
    proc = _start(data_dir, mosquitto, port, log, url)
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
        proc = _start(data_dir, mosquitto, port, log, url)
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
