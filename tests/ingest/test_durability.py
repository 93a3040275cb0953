"""Issue 12 on real parts (Mosquitto, SQLite and PostgreSQL, HTTP): backpressure, gaps and
republish, a buffer reset's new stream (on both engines); a full disk and a read-only data dir
(SQLite files: SQLite only)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from ingest import store
from ingest.service import STORE_PROBE_BACKOFF, STORE_STABLE_S, StoreProbes, start_service
from ingest.settings import IngestSettings
from tests.support.ingest_service import (
    Api,
    connected,
    eventually,
    open_store,
    publish_all,
    publishing,
    reading,
    running,
    settings_for,
)
from vitalgate.broker import Mosquitto
from vitalgate.contract import Command, Kind, Reading, Topics, Vitals, decode

GW = "ward3-bed12"
DEV = "d061aed45894"
STREAM = "0123456789abcdef"
T0 = 1_700_000_000_000
TOPICS = Topics()


def _r(seq: int, stream: str | None = STREAM, ts: int = T0) -> Reading:
    return Reading(device_id=DEV, seq=seq, ts=ts + seq, user_code="P1", stream=stream,
                   vitals=Vitals(heart_rate=60 + seq % 40))


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def pub(mosquitto: Mosquitto) -> Iterator[mqtt.Client]:
    with publishing(mosquitto.host, mosquitto.port, "durability-pub") as client:
        yield client


@pytest.mark.usefixtures("ingest_engine")  # on SQLite and on PostgreSQL
async def test_backlog_larger_than_the_queue_drains_in_one_connection(
    tmp_path: Path, mosquitto: Mosquitto, pub: mqtt.Client
) -> None:
    """A broker backlog 40x ingest's queue: every message stored, no reconnect, backpressure
    engaged (paho's thread waited for room instead of dropping)."""
    settings = settings_for(tmp_path / "data", mosquitto.url, queue_max=50, batch_max=20,
                            mqtt_client_id="ingest-backlog")
    clock = Clock(T0 + 60_000)
    async with running(settings, clock=clock) as svc:  # registers the persistent session
        await eventually(lambda: svc.service.consumer.connected)
    n = 2000
    devices = [f"d061aed4{i:04x}" for i in range(4)]
    publish_all(pub, [(TOPICS.reading(GW, d), reading(d, s, T0 + s).to_bytes())
                      for s in range(n // 4) for d in devices], timeout=60)
    async with running(settings, clock=clock) as svc:
        consumer = svc.service.consumer
        await eventually(lambda: svc.service.db.read(lambda c: store.count_readings(c) == n),
                         timeout=60)
        assert consumer.connects == 1, "a reconnect was needed to drain the backlog"
        assert consumer.backpressure_waits > 0, "the queue never filled: no backpressure tested"
        assert svc.service.metrics.queue_full.total() == consumer.backpressure_waits
        totals = (await svc.service.gap_pass())[0], await svc.service.db.read(
            lambda c: c.execute("SELECT count(*) FROM seq_gaps").fetchone()[0])
        assert totals == ([], 0)


@pytest.mark.usefixtures("ingest_engine")  # on SQLite and on PostgreSQL
async def test_gap_detected_requested_and_closed_by_the_republish(
    tmp_path: Path, mosquitto: Mosquitto, pub: mqtt.Client
) -> None:
    clock = Clock(T0 + 60_000)
    settings = settings_for(tmp_path / "data", mosquitto.url, gap_grace_s=30, gap_retry_s=60,
                            gap_max_requests=2)
    commands: list[bytes] = []
    lock = threading.Lock()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gw-cmd-listener")

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with lock:
            commands.append(bytes(msg.payload))

    sub.on_message = on_message
    sub.connect(mosquitto.host, mosquitto.port)
    sub.subscribe(TOPICS.cmd(GW), qos=1)
    sub.loop_start()
    try:
        async with connected(settings, clock=clock) as svc:
            topic = TOPICS.reading(GW, DEV)
            # the broker "dropped" 3..6 and 10
            publish_all(pub, [(topic, _r(s).to_bytes()) for s in (0, 1, 2, 7, 8, 9, 11)])
            async with Api(svc.url) as api:
                async def gapped() -> Any:
                    status, body = await api.get(f"/api/devices/{DEV}/gaps")
                    return body["data"] if status == 200 and body["data"]["missing"] == 5 else None

                dev = await eventually(gapped)
                assert [(g["from_seq"], g["to_seq"]) for g in dev["gaps"]] == [(3, 6), (10, 10)]
                assert dev["streams"][0]["contiguous"] == 2 and dev["completeness"] == 0.583333
                # within the grace period nothing is asked
                assert (await svc.service.gap_pass())[0] == []
                clock.now += 30_000
                due, lost = await svc.service.gap_pass()
                assert [(r.from_seq, r.to_seq) for r in due] == [(3, 6), (10, 10)] and lost == []
                await eventually(lambda: len(commands) == 2)
                with lock:
                    cmds = [decode(Kind.CMD, c) for c in commands]
                assert all(isinstance(c, Command) and c.cmd == "republish" and c.stream == STREAM
                           and c.device_id == DEV for c in cmds)
                assert sorted((c.from_seq, c.to_seq) for c in cmds  # type: ignore[attr-defined]
                              ) == [(3, 6), (10, 10)]
                # the gateway answers with 3..6 (replayed); 10 it no longer holds
                publish_all(pub, [(topic, _r(s).model_copy(update={"replayed": True}).to_bytes())
                                  for s in range(3, 7)])

                async def one_left() -> Any:
                    _, body = await api.get("/api/gaps")
                    return body["data"] if body["data"]["missing"] == 1 else None

                summary = await eventually(one_left)
                assert summary["open_gaps"] == 1 and summary["streams_with_gaps"][0]["contiguous"] == 9
                # counted by the after-commit stage, which may run just after the API sees the
                # commit
                await eventually(lambda: svc.service.metrics.gaps_closed.total() == 1)
                # asked again after the retry interval, then reported once, never silently gone
                clock.now += 60_000
                assert [(r.from_seq, r.to_seq) for r in (await svc.service.gap_pass())[0]] == [(10, 10)]
                clock.now += 60_000
                due, lost = await svc.service.gap_pass()
                assert due == [] and [(u.from_seq, u.to_seq, u.requests) for u in lost] == [(10, 10, 2)]
                clock.now += 60_000
                assert await svc.service.gap_pass() == ([], [])
                status, body = await api.get("/api/gaps")
                assert body["data"]["reported_missing"] == 1
                status, body = await api.get("/api/devices/ffffffffffff/gaps")
                assert status == 404
                status, body = await api.get("/api/devices/NOT-A-DEVICE/gaps")
                assert status == 422 and "device_id" in body["message"]
                metrics = await api.get("/metrics")
                assert 'vitalgate_ingest_gaps{stat="reported_missing"} 1' in metrics[1]
                assert "vitalgate_ingest_republish_requested_total 3" in metrics[1]
    finally:
        sub.disconnect()
        sub.loop_stop()


@pytest.mark.usefixtures("ingest_engine")  # on SQLite and on PostgreSQL
async def test_a_reset_buffer_is_a_new_stream_not_duplicates(
    tmp_path: Path, mosquitto: Mosquitto, pub: mqtt.Client
) -> None:
    async with connected(settings_for(tmp_path / "data", mosquitto.url),
                         clock=lambda: T0 + 60_000) as svc:
        topic = TOPICS.reading(GW, DEV)
        publish_all(pub, [(topic, _r(s).to_bytes()) for s in range(5)])
        # the gateway's buffer file was deleted: a new stream, seq from 0 again
        publish_all(pub, [(topic, _r(s, "fedcba9876543210", T0 + 10_000).to_bytes())
                          for s in range(5)])
        await eventually(lambda: svc.service.db.read(lambda c: store.count_readings(c) == 10))
        assert svc.service.metrics.duplicates.total() == 0


@contextlib.contextmanager
def small_disk(path: Path, size: str = "2m") -> Iterator[Path]:
    """A tmpfs of ``size`` at ``path`` (the test is skipped where mounting is not allowed)."""
    path.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace')[:200]}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


async def test_full_disk_is_the_stores_failure_and_nothing_is_lost(
    tmp_path: Path, mosquitto: Mosquitto, pub: mqtt.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite only: the data dir's file system fills up."""
    with small_disk(tmp_path / "disk") as disk:
        settings = settings_for(disk / "data", mosquitto.url, store_retry_max_s=2,
                                mqtt_client_id="ingest-full-disk")
        async with connected(settings, clock=lambda: T0 + 60_000) as svc:
            topic = TOPICS.reading(GW, DEV)
            publish_all(pub, [(topic, _r(s).to_bytes()) for s in range(10)])
            await eventually(lambda: svc.service.db.read(lambda c: store.count_readings(c) == 10))
            # fill the disk to the last byte
            filler = disk / "filler"
            with filler.open("wb") as f, contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            with contextlib.suppress(OSError), filler.open("ab") as f:
                for _ in range(64):
                    f.write(b"\0" * 1024)
                    f.flush()
            publish_all(pub, [(topic, _r(s).to_bytes()) for s in range(10, 400)])
            async with Api(svc.url) as api:
                async def failing() -> Any:
                    status, body = await api.get("/healthz")
                    return body if status == 503 else None

                body = (await eventually(failing, timeout=30))["data"]
                assert body["status"] == "failing" and body["store"]["ok"] is False
                assert "full" in body["store"]["error"]
                connects = svc.service.consumer.connects
                # backed off: in 4 s at most a few reconnects (was: one per second forever)
                await asyncio.sleep(4)
                assert svc.service.consumer.connects - connects <= 3
                errors = [r for r in caplog.records if r.levelname == "ERROR"
                          and "store cannot write" in r.getMessage()]
                assert len(errors) == 1, [r.getMessage() for r in errors]
                assert not any(r.exc_info for r in caplog.records if r.name == "ingest.service")
                # space returns: everything the broker kept is stored, once
                filler.unlink()
                await eventually(lambda: svc.service.db.read(
                    lambda c: store.count_readings(c) == 400), timeout=30)
                status, body = await api.get("/healthz")
                assert status == 200 and body["data"]["store"]["ok"] is True
                assert svc.service.metrics.store_failures.value(error="disk_full") >= 1


def test_the_store_probe_backs_off_from_one_second_doubling_to_store_retry_max_s() -> None:
    """The paused consumer's probe schedule: 1, 2, 4 ... s, capped by the setting (its default
    is the constant's cap), never shortened by jitter."""
    default_cap = IngestSettings.model_fields["store_retry_max_s"].default
    assert STORE_PROBE_BACKOFF.max_s == default_cap == 60.0
    assert [STORE_PROBE_BACKOFF.delay(n, rand=lambda: 1.0) for n in range(8)] == [
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    capped = dataclasses.replace(STORE_PROBE_BACKOFF, max_s=5.0)
    assert [capped.delay(n, rand=lambda: 0.0) for n in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def _outage(probes: StoreProbes, failed_probes: int) -> list[float]:
    """The delays of an outage in which ``failed_probes`` probes fail and the next succeeds."""
    return [probes.next_delay() for _ in range(failed_probes + 1)]


def test_the_probe_delay_restarts_from_one_second_only_after_a_stable_period() -> None:
    """The reset rule, on given times (s): an outage grows the delay; a consumer that then ran
    STORE_STABLE_S before failing again starts from 1 s; a shorter run continues the growth."""
    probes = StoreProbes(STORE_PROBE_BACKOFF)
    # the consumer starts at 100 and fails at once: a long outage (7 failed probes)
    probes.failed(ran_from=100.0, now=100.5)
    assert _outage(probes, 7) == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    # resumed at 300; fails again just short of a stable period: no reset, still at the cap
    probes.failed(ran_from=300.0, now=300.0 + STORE_STABLE_S - 0.001)
    assert _outage(probes, 1) == [60.0, 60.0]
    # resumed at 500; healthy for exactly STORE_STABLE_S: the next outage is a new one
    probes.failed(ran_from=500.0, now=500.0 + STORE_STABLE_S)
    assert _outage(probes, 2) == [1.0, 2.0, 4.0]
    # resumed at 700; a short healthy period continues from where that outage was
    probes.failed(ran_from=700.0, now=705.0)
    assert probes.next_delay() == 8.0
    # the setting's cap applies as in the service (dataclasses.replace of the constant)
    capped = StoreProbes(dataclasses.replace(STORE_PROBE_BACKOFF, max_s=5.0))
    capped.failed(ran_from=0.0, now=1.0)
    assert _outage(capped, 4) == [1.0, 2.0, 4.0, 5.0, 5.0]
    capped.failed(ran_from=10.0, now=10.0 + STORE_STABLE_S)
    assert capped.next_delay() == 1.0


def test_a_read_only_data_dir_is_named_at_start(tmp_path: Path) -> None:
    """SQLite only. A store on a read-only filesystem: one clear error naming the file, not a traceback
    from deep inside SQLite (the service logs it and exits 1)."""
    with small_disk(tmp_path / "disk") as disk:
        path = disk / "data" / "ingest.sqlite3"
        store.Database(path, synchronous="NORMAL").close()
        done = subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True,
                              check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot remount read-only: {done.stderr.decode(errors='replace')[:200]}")
        with pytest.raises(store.StoreOpenError, match=r"ingest\.sqlite3 cannot be opened for writing"):
            store.Database(path, synchronous="NORMAL")


@pytest.mark.usefixtures("ingest_engine")  # on SQLite and on PostgreSQL
async def test_stopping_while_backpressure_holds_paho_loses_nothing(
    tmp_path: Path, mosquitto: Mosquitto, pub: mqtt.Client
) -> None:
    """Shut down while paho's thread waits for queue room: the stop completes (the waiting
    thread lets go) and what was not committed is redelivered to the next run."""
    settings = settings_for(tmp_path / "data", mosquitto.url, queue_max=10, batch_max=5,
                            mqtt_client_id="ingest-stop-under-pressure")
    clock = Clock(T0 + 60_000)
    async with running(settings, clock=clock) as svc:
        await eventually(lambda: svc.service.consumer.connected)
    n = 1500
    publish_all(pub, [(TOPICS.reading(GW, DEV), _r(s).to_bytes()) for s in range(n)], timeout=60)
    svc = await start_service(settings, clock=clock)
    try:
        await eventually(lambda: svc.service.consumer.backpressure_waits > 0, timeout=30)
    finally:
        # bounded: a network thread stuck in on_message would hang loop_stop() here
        await asyncio.wait_for(svc.stop(), 30)
    stored = open_store(tmp_path / "data")
    first = stored.read_sync(store.count_readings)
    stored.close()
    assert first < n, "everything was committed before the stop: nothing tested"
    async with running(settings, clock=clock) as svc:
        await eventually(lambda: svc.service.db.read(lambda c: store.count_readings(c) == n),
                         timeout=60)
        totals = await svc.service.db.read(lambda c: c.execute(
            "SELECT count(*) FROM seq_gaps").fetchone()[0])
        assert totals == 0
