"""Warm start on event time (real Mosquitto, real SQLite and PostgreSQL, a real restart of the service): a
patient whose readings were measured hours before they arrived (a replay, a late history) is
restored with its valid score, as a live one is."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest import store
from ingest.db import Conn, Location, schema
from tests.support.ingest_service import (
    eventually,
    publish_all,
    publisher,
    reading,
    running,
    settings_for,
)
from vitalgate.broker import Mosquitto
from vitalgate.contract import Topics, encode_readings

TOPICS = Topics()

pytestmark = pytest.mark.usefixtures("ingest_engine")  # on SQLite and on PostgreSQL
HOUR = 3_600_000
ILL = {"heart_rate": 125.0, "spo2": 91.0, "systolic_bp": 95.0, "temperature": 38.6,
       "respiratory_rate": 26.0}
WELL = {"heart_rate": 72.0, "spo2": 98.0, "systolic_bp": 120.0, "temperature": 36.8,
        "respiratory_rate": 16.0}


async def test_a_replayed_patient_is_warm_started_with_its_score(tmp_path: Path,
                                                                  mosquitto: Mosquitto) -> None:
    settings = settings_for(tmp_path / "data", mosquitto.url)
    async with running(settings) as svc:
        await eventually(lambda: svc.service.consumer.connected)
        now = svc.service.clock()
        replayed = [reading("aaaaaaaaaaa1", i, now - 2 * HOUR + i * 60_000, user_code="REPLAYED",
                            **ILL) for i in range(3)]
        live = [reading("bbbbbbbbbbb2", 0, now - 60_000, user_code="LIVE", **WELL)]
        pub = publisher(mosquitto.host, mosquitto.port)
        try:
            publish_all(pub, [(TOPICS.reading("gw", "aaaaaaaaaaa1"), encode_readings(replayed)),
                              (TOPICS.reading("gw", "bbbbbbbbbbb2"), encode_readings(live))])
        finally:
            pub.disconnect()
            pub.loop_stop()
        before = {}
        for code in ("REPLAYED", "LIVE"):
            before[code] = await eventually(lambda c=code: svc.service.engine.current(c))
            assert before[code].valid
        assert before["REPLAYED"].point >= 7
    async with running(settings) as svc:
        for code in ("REPLAYED", "LIVE"):
            after = svc.service.engine.current(code)
            assert after is not None and after.valid, (code, after)
            assert (after.point, after.result) == (before[code].point, before[code].result)


def test_warm_items_are_per_patient_event_time_and_bounded(database_url: str) -> None:
    """Kept: each live patient's vitals within the window of ITS newest reading; bounded
    (on SQLite and PostgreSQL)."""
    now = 10 * HOUR
    db = schema.open_store(Location.parse(database_url, default_path=Path("unused")),
                           window=(0, now))
    db.write_sync(lambda c: _warm_rows(c, now))
    warm = db.read_sync(lambda c: store.warm_items(c, now - 15 * 60_000, 15 * 60_000))
    got = sorted(zip(warm.items, warm.arrived, strict=True))
    assert got == [(("L", "heart_rate", 70.0, now - 60_000), now - 60_000),
                   (("R", "heart_rate", 120.0, now - 2 * HOUR), now - 60_000)]
    assert not warm.truncated
    assert db.read_sync(lambda c: store.warm_items(c, now - 15 * 60_000, 15 * 60_000,
                                                   max_rows=1)).truncated
    db.close()


def _warm_rows(conn: Conn, now: int) -> None:
    rows = [  # (user_code, vital, value, ts, received_at)
        ("R", "heart_rate", 120.0, now - 2 * HOUR, now - 60_000),  # replayed: measured 2 h ago
        ("R", "spo2", 90.0, now - 2 * HOUR - 20 * 60_000, now - 60_000),  # 20 min older: out
        ("L", "heart_rate", 70.0, now - 60_000, now - 60_000),
        ("GONE", "heart_rate", 80.0, now - 5 * HOUR, now - 5 * HOUR),  # neither recent
    ]
    for i, (u, v, x, t, r) in enumerate(rows):
        conn.execute("INSERT INTO readings (device_id, ts, user_code, vital, value, seq, source,"
                     " replayed, received_at, flags) VALUES (?, ?, ?, ?, ?, ?, 'realtime', 0, ?, 0)",
                     (f"{i:012x}", t, u, v, x, i, r))
