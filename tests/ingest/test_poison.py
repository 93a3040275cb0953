"""Poison messages on real parts (Mosquitto, SQLite and PostgreSQL, HTTP on loopback): no
message, retained or not, stops ingestion, loops the consumer or costs the good data beside it
(issue 11). Every test runs on both engines (on PostgreSQL an error aborts the transaction
unless inside a savepoint: the isolation's savepoints are what keeps the good data).

Each test reproduces what stopped or flooded main: values SQLite cannot bind (2**70),
``[`` × 100 000, a 10 MB payload, future stamps, a store that refuses one item, a message
that fails the consumer at every delivery, oversized ECG recordings, unbounded junk.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from ingest.consumer import CONFLICT_RETRIES
from ingest.service import RunningService
from tests.support.ingest_service import (
    Api,
    connected,
    eventually,
    open_store,
    publish_all,
    reading,
    refuse_inserts,
    running,
    settings_for,
)
from vitalgate.broker import Mosquitto
from vitalgate.contract import QOS, EcgChunk, Topics, encode_readings

T0 = 1_700_000_000_000
NOW = T0 + 60_000  #: the service's (processing-time) clock
GOOD_GW = "gw-good"
GOOD_DEV = "d061aed45894"
BAD_GW = "gw-poison"
TOPICS = Topics()

pytestmark = pytest.mark.usefixtures("ingest_engine")  # on SQLite and on PostgreSQL


def _settings(tmp_path: Path, mosquitto: Mosquitto, **overrides: Any) -> Any:
    return settings_for(tmp_path / "data", mosquitto.url, mqtt_client_id="ingest-poison",
                        **overrides)



async def _letters(svc: RunningService) -> list[tuple[Any, ...]]:
    return await svc.service.db.read(lambda c: c.execute(
        "SELECT topic, reason, repeats, size, length(payload), sha256, detail FROM dead_letters"
        " ORDER BY id").fetchall())


async def _seqs(svc: RunningService, device_id: str) -> list[int]:
    rows = await svc.service.db.read(lambda c: c.execute(
        "SELECT DISTINCT seq FROM readings WHERE device_id = ? ORDER BY seq", (device_id,)).fetchall())
    return [int(r[0]) for r in rows]


def _good_stream(n: int, start: int = 0) -> list[tuple[str, bytes]]:
    return [(TOPICS.reading(GOOD_GW, GOOD_DEV),
             reading(GOOD_DEV, s, T0 + s, user_code="GOOD", heart_rate=60 + s % 40).to_bytes())
            for s in range(start, start + n)]


def _poison() -> dict[str, bytes]:
    """One retained poison per topic kind (and a few more on reading/status topics)."""
    dev = [f"c0ffee00{i:04x}" for i in range(8)]
    return {
        # values beyond int64: SQLite's OverflowError failed the whole batch on main
        TOPICS.gateway_status(BAD_GW): json.dumps(
            {"v": 1, "online": True, "devices": 2**70, "buffered": 2**70, "evicted": 2**70}).encode(),
        TOPICS.device_status(BAD_GW, dev[0]): json.dumps(
            {"v": 1, "device_id": dev[0], "connected": True, "rssi": 2**70}).encode(),
        TOPICS.ecg(BAD_GW, dev[1]): json.dumps(
            {"v": 1, "device_id": dev[1], "recording": "r1", "seq": 2**70, "ts": T0, "fs": 250,
             "samples": [1], "last": True}).encode(),
        # RecursionError inside json.loads on main
        TOPICS.reading(BAD_GW, dev[2]): b"[" * 100_000,
        # 10 MB: stored in full on main
        TOPICS.reading(BAD_GW, dev[3]): b'{"junk": "' + b"x" * (10 * 2**20) + b'"}',
        # a 200 000-character model, a trailing-newline user_code
        TOPICS.device_status(BAD_GW, dev[4]): json.dumps(
            {"v": 1, "device_id": dev[4], "connected": True, "model": "m" * 200_000}).encode(),
        TOPICS.device_status(BAD_GW, dev[5]): json.dumps(
            {"v": 1, "device_id": dev[5], "connected": True, "user_code": "P1\n"}).encode(),
        # a reading stamped an hour after processing time: "latest" and "fresh" forever on main
        TOPICS.reading(BAD_GW, dev[6]): reading(dev[6], 1, NOW + 3_600_000).to_bytes(),
        # the reading of the first reproduction
        TOPICS.reading(BAD_GW, dev[7]): json.dumps(
            {"v": 1, "device_id": dev[7], "seq": 2**70, "ts": T0, "vitals": {"spo2": 97}}).encode(),
    }


def _publish_retained(client: mqtt.Client, messages: dict[str, bytes]) -> None:
    infos = [client.publish(t, p, qos=QOS, retain=True) for t, p in messages.items()]
    for info in infos:
        info.wait_for_publish(30)


async def test_retained_poison_on_every_topic_kind_is_dead_lettered_once_across_restarts(
        tmp_path: Path, mosquitto: Mosquitto, pub: mqtt.Client) -> None:
    poison = _poison()
    _publish_retained(pub, poison)
    expected = {
        TOPICS.gateway_status(BAD_GW): "schema", TOPICS.reading(BAD_GW, "c0ffee000002"): "json",
        TOPICS.reading(BAD_GW, "c0ffee000003"): "oversize",
        TOPICS.reading(BAD_GW, "c0ffee000006"): "future",
    }
    for topic in poison:
        expected.setdefault(topic, "schema")
    n_good = 300
    for run in (1, 2):
        async with running(_settings(tmp_path, mosquitto), clock=lambda: NOW) as svc:
            await eventually(lambda s=svc: s.service.consumer.connected)
            publish_all(pub, _good_stream(n_good // 2, (run - 1) * n_good // 2))
            m = svc.service.metrics
            # every retained poison arrives again at each subscription (each restart)
            await eventually(lambda m=m: m.rejects.total() >= len(poison), timeout=30)
            await eventually(lambda s=svc, n=run * n_good // 2: _seq_count_is(s, n), timeout=30)
            letters = await _letters(svc)
            assert sorted(t for t, *_ in letters) == sorted(poison), "each poison exactly once"
            for topic, reason, repeats, size, stored, sha, detail in letters:
                assert reason == expected[topic], (topic, detail)
                assert repeats == run - 1  # the second delivery is counted, not stored again
                assert size == len(poison[topic]) and sha == hashlib.sha256(poison[topic]).hexdigest()
                assert stored == min(size, 4096)  # a capped prefix
            assert m.dead_letter_repeats.total() == (len(poison) if run == 2 else 0)
            assert m.errors.total() == 0, "no background task failed"
            async with Api(svc.url) as api:
                status, body = await api.get("/healthz")
                assert status == 200 and body["data"]["mqtt"]["connected"] is True
                _, body = await api.get("/api/medical-records/GOOD", type="HEART_RATE", size=500)
                assert body["data"]["totaldata"] == run * n_good // 2
                text = await _metrics(api)
                assert f"vitalgate_ingest_dead_letter_rows {len(poison)}" in text
            # and the future reading never became anyone's reading
            assert await _seqs(svc, "c0ffee000006") == []


async def _seq_count_is(svc: RunningService, n: int) -> bool:
    return len(await _seqs(svc, GOOD_DEV)) == n


async def _metrics(api: Api) -> str:
    status, text = await api.get("/metrics")
    assert status == 200
    return str(text)


@pytest.fixture
async def svc(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[RunningService]:
    async with connected(_settings(tmp_path, mosquitto, ecg_max_chunks=3, dead_letters_max_rows=20),
                         clock=lambda: NOW) as service:
        yield service


async def test_a_store_failure_of_one_item_costs_only_that_item(
        svc: RunningService, pub: mqtt.Client) -> None:
    # a real store refusal of one reading (what 2**70 caused on main: an error binding it)
    svc.service.db.write_sync(lambda c: refuse_inserts(c, "readings", "NEW.seq = 666",
                                                       "refuse_666"))
    array = encode_readings([reading(GOOD_DEV, s, T0 + s, user_code="GOOD") for s in (665, 666, 667)])
    stream = [*_good_stream(20), (TOPICS.reading(GOOD_GW, GOOD_DEV), array), *_good_stream(20, 20)]
    publish_all(pub, stream)
    m = svc.service.metrics
    await eventually(lambda: m.messages.total() >= len(stream))
    await eventually(lambda: _seq_count_is(svc, 42))
    assert await _seqs(svc, GOOD_DEV) == [*range(40), 665, 667]
    ((topic, reason, _, _, _, _, detail),) = await _letters(svc)
    assert reason == "store_error" and topic == TOPICS.reading(GOOD_GW, GOOD_DEV)
    assert "reading seq 666" in detail and "IntegrityError" in detail
    assert '"vitals"' not in detail  # names the exception, never the payload
    assert m.isolated_batches.total() >= 1
    assert m.errors.total() == 0 and svc.service.consumer.connected


async def test_a_message_failing_every_delivery_is_stopped_by_the_crash_loop_detector(
        svc: RunningService, pub: mqtt.Client, caplog: pytest.LogCaptureFixture) -> None:
    # the store refuses the reading AND its store_error dead letter: the consumer fails on the
    # message at every delivery (as a message that crashes the process would)
    for table, when, name in (("readings", "NEW.seq = 777", "refuse_777"),
                              ("dead_letters", "NEW.reason = 'store_error'", "refuse_777_letter")):
        svc.service.db.write_sync(lambda c, t=table, w=when, n=name: refuse_inserts(c, t, w, n))
    caplog.set_level(logging.WARNING, logger="ingest.consumer")
    publish_all(pub, [(TOPICS.reading(GOOD_GW, GOOD_DEV),
                       reading(GOOD_DEV, 777, T0, user_code="GOOD").to_bytes())])
    letters = await eventually(lambda: _letters(svc), timeout=30)
    ((_, reason, _, _, _, _, detail),) = letters
    assert reason == "redelivery_loop" and "3 times" in detail
    m = svc.service.metrics
    assert m.errors.value(task="consumer") == 3  # three failed deliveries, then it stopped
    # the consumer is healthy again: what follows is stored
    publish_all(pub, _good_stream(5))
    await eventually(lambda: _seq_count_is(svc, 5))
    loops = [r for r in caplog.records if "redelivery_loop" in r.getMessage()
             and "delivered" in r.getMessage()]
    assert len(loops) == 1, "said once"
    left = await svc.service.db.read(lambda c: c.execute("SELECT count(*) FROM deliveries").fetchone())
    assert left == (0,)


async def test_future_stamps_are_dead_lettered_and_good_items_beside_them_kept(
        svc: RunningService, pub: mqtt.Client) -> None:
    future = NOW + 301_000  # beyond the default 300 s skew
    dev = "c0ffee00aaaa"
    array = encode_readings([reading(dev, 1, T0, user_code="P1"), reading(dev, 2, future, user_code="P1"),
                             reading(dev, 3, NOW + 299_000, user_code="P1")])
    chunk = EcgChunk(device_id=dev, recording="rf", seq=0, ts=future, fs=250, samples=[1], last=True)
    status = json.dumps({"v": 1, "device_id": dev, "connected": True, "last_seen": future}).encode()
    publish_all(pub, [(TOPICS.reading(BAD_GW, dev), array), (TOPICS.ecg(BAD_GW, dev), chunk.to_bytes()),
                      (TOPICS.device_status(BAD_GW, dev), status)])
    await eventually(lambda: svc.service.metrics.rejects.value(reason="future") == 3)
    assert await _seqs(svc, dev) == [1, 3]  # within the skew is kept
    details = sorted(d.split(" ")[0] + d.split(" ")[1] for _, r, *_, d in await _letters(svc)
                     if r == "future")
    assert details == ["last_seen" + str(future), "reading1:", "ts" + str(future)]


async def test_ecg_recording_over_the_cap_is_dead_lettered_and_its_chunks_discarded(
        svc: RunningService, pub: mqtt.Client) -> None:
    dev = "c0ffee00bbbb"

    def chunk(rec: str, seq: int, last: bool) -> tuple[str, bytes]:
        c = EcgChunk(device_id=dev, recording=rec, seq=seq, ts=T0 + seq, fs=250,
                     samples=[seq] * 250, last=last)
        return TOPICS.ecg(BAD_GW, dev), c.to_bytes()

    big = [chunk("big", s, s == 4) for s in range(5)]  # 5 chunks, the cap is 3
    small = [chunk("small", s, s == 2) for s in range(3)]
    publish_all(pub, big + small)
    m = svc.service.metrics
    await eventually(lambda: m.ecg_recordings.total() >= 1 and m.rejects.value(reason="ecg_too_large") == 2)
    assert m.ecg_chunks_discarded.total() == 3
    names = await svc.service.db.read(lambda c: c.execute(
        "SELECT recording FROM ecg_recordings").fetchall())
    assert names == [("small",)]
    left = await svc.service.db.read(lambda c: c.execute(
        "SELECT count(*) FROM ecg_chunks WHERE recording = 'big'").fetchone())
    assert left == (0,)


async def test_dead_letters_are_bounded_with_counted_eviction_and_repeats(
        svc: RunningService, pub: mqtt.Client) -> None:
    topic = TOPICS.reading(BAD_GW, "c0ffee00cccc")
    junk = [(topic, f"junk {i}".encode()) for i in range(30)] + [(topic, b"junk 29")] * 3
    publish_all(pub, junk)
    m = svc.service.metrics
    await eventually(lambda: m.rejects.total() == 33)
    letters = await _letters(svc)
    assert len(letters) == 20  # dead_letters_max_rows
    assert m.dead_letters_evicted.total() == 10 and m.dead_letter_repeats.total() == 3
    assert letters[-1][2] == 3  # the newest row, "junk 29", seen three times more
    async with Api(svc.url) as api:
        text = await _metrics(api)
        assert "vitalgate_ingest_dead_letters_evicted_total 10" in text
        assert "vitalgate_ingest_dead_letter_rows 20" in text
        _, body = await api.get("/api/dead-letters", size=1)
        item = body["data"]["data"][0]
        assert item["repeats"] == 3 and item["size"] == len(b"junk 29")
    stats = await svc.service.db.read(lambda c: c.execute(
        "SELECT rows, evicted FROM dead_letter_stats").fetchone())
    assert stats == (20, 10)


async def test_the_redelivery_count_survives_a_restart_of_the_process(
        tmp_path: Path, mosquitto: Mosquitto, pub: mqtt.Client) -> None:
    """A message that kills the process has no in-memory trace: the broker's DUP flag and the
    count committed before processing are what stop it after the restart."""
    settings = _settings(tmp_path, mosquitto)
    async with connected(settings, clock=lambda: NOW) as first:
        for table, when, name in (("readings", "NEW.seq = 888", "refuse_888"),
                                  ("dead_letters", "NEW.reason = 'store_error'",
                                   "refuse_888_letter")):
            first.service.db.write_sync(
                lambda c, t=table, w=when, n=name: refuse_inserts(c, t, w, n))
        publish_all(pub, [(TOPICS.reading(GOOD_GW, GOOD_DEV),
                           reading(GOOD_DEV, 888, T0, user_code="GOOD").to_bytes())])
        await eventually(lambda: first.service.metrics.errors.value(task="consumer") >= 2)
    # the first process failed on it at least twice: its redeliveries are counted on disk
    stored = open_store(tmp_path / "data")
    ((counted,),) = stored.read_sync(lambda c: c.execute("SELECT attempts FROM deliveries").fetchall())
    stored.close()
    assert counted >= 1
    async with running(settings, clock=lambda: NOW) as second:
        m = second.service.metrics
        await eventually(lambda: m.rejects.value(reason="redelivery_loop") == 1, timeout=30)
        # a fresh count would fail twice more (counts 1 and 2) before stopping it at 3
        assert m.errors.value(task="consumer") == max(0, 2 - counted)
        (row,) = [r for r in await _letters(second) if r[1] == "redelivery_loop"]
        assert row[0] == TOPICS.reading(GOOD_GW, GOOD_DEV)


async def test_scoring_counts_are_on_metrics(svc: RunningService, pub: mqtt.Client) -> None:
    """What the EWS scorer did with every vital (EwsEngine.scoring_counts) is on /metrics."""
    batch = [reading(GOOD_DEV, i, T0 + i * 1000, user_code="GOOD", heart_rate=70.0 + i)
             for i in range(3)]
    publish_all(pub, [(TOPICS.reading(GOOD_GW, GOOD_DEV), encode_readings(batch))])
    await eventually(lambda: svc.service.engine.scoring_counts()["accepted"] >= 3)
    counts = svc.service.engine.scoring_counts()
    async with Api(svc.url) as api:
        text = await _metrics(api)
    assert "# TYPE vitalgate_ingest_ews_readings_total counter" in text
    for outcome, value in counts.items():
        assert f'vitalgate_ingest_ews_readings_total{{outcome="{outcome}"}} {value}' in text


def _conflict_on(conn: Any, seq: int, times: int) -> None:
    """PostgreSQL: inserting reading ``seq`` fails with a real deadlock_detected (40P01) error
    the first ``times`` times (a sequence counts them: it is not rolled back with the failed
    transaction), as a crossing commit of another instance makes it fail."""
    conn.script(
        "CREATE SEQUENCE conflict_n;"
        " CREATE FUNCTION conflict_once() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" IF NEW.seq = {seq} AND nextval('conflict_n') <= {times} THEN"
        " RAISE EXCEPTION 'deadlock staged by the test' USING ERRCODE = 'deadlock_detected';"
        " END IF; RETURN NEW; END $$;"
        " CREATE TRIGGER conflict_once BEFORE INSERT ON readings FOR EACH ROW"
        " EXECUTE FUNCTION conflict_once();")


async def test_a_deadlock_with_another_commit_is_retried_never_dead_lettered(
        svc: RunningService, pub: mqtt.Client) -> None:
    """Measured in the failover e2e: two instances committing the same redelivered readings
    deadlocked, the batch was isolated and a reading became a ``store_error`` dead letter.
    A conflict is the transactions' timing: the batch is committed again whole; one that
    keeps conflicting pauses consuming (the broker keeps it) and is stored once it clears."""
    if not svc.service.db.read_sync(lambda c: c.is_postgres):
        pytest.skip("deadlocks between instances' commits are PostgreSQL's")
    svc.service.db.write_sync(lambda c: _conflict_on(c, 777, 3))
    stream = [*_good_stream(10), (TOPICS.reading(GOOD_GW, GOOD_DEV),
                                  reading(GOOD_DEV, 777, T0 + 777, user_code="GOOD").to_bytes()),
              *_good_stream(10, 10)]
    publish_all(pub, stream)
    m = svc.service.metrics
    await eventually(lambda: _seq_count_is(svc, 21), timeout=30)
    assert await _seqs(svc, GOOD_DEV) == [*range(20), 777]
    assert await _letters(svc) == []
    assert m.commit_conflicts.total() >= 3 and m.isolated_batches.total() == 0
    # a conflict that outlasts every retry: nothing dead-lettered, nothing acknowledged
    svc.service.db.write_sync(lambda c: c.script(
        "DROP TRIGGER conflict_once ON readings; DROP FUNCTION conflict_once();"
        " DROP SEQUENCE conflict_n;"))
    svc.service.db.write_sync(lambda c: _conflict_on(c, 778, 10_000))
    publish_all(pub, [(TOPICS.reading(GOOD_GW, GOOD_DEV),
                       reading(GOOD_DEV, 778, T0 + 778, user_code="GOOD").to_bytes())])
    await eventually(lambda: m.store_failures.total() >= 1, timeout=60)  # consuming paused
    assert m.commit_conflicts.total() >= 3 + CONFLICT_RETRIES
    assert await _letters(svc) == [] and await _seqs(svc, GOOD_DEV) == [*range(20), 777]
    svc.service.db.write_sync(lambda c: c.script("DROP TRIGGER conflict_once ON readings;"))
    await eventually(lambda: _seq_count_is(svc, 22), timeout=60)  # redelivered, stored
    assert await _letters(svc) == [] and m.isolated_batches.total() == 0
