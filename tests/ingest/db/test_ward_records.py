"""The ward dashboard's and the medical-record API's reads (ingest/db/ward.py, ingest.store's
record reads) on both engines: the same rows give the same tiles, pages, series, alerts and
records."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ingest import registry
from ingest import store as records
from ingest.dashboard.ward import WardView, ews_reader
from ingest.db import Conn, Database, Location, gaps, schema

# The EWS history's columns that the ward reads (ingest/ews_engine.py's table); the readings
# store's tables are its own (ingest.db.schema).
EWS_DDL = """
CREATE TABLE IF NOT EXISTS ews_history (
  id {id}, user_code TEXT NOT NULL, point BIGINT NOT NULL, result TEXT NOT NULL,
  risk TEXT NOT NULL, cause TEXT NOT NULL, partial BIGINT NOT NULL, missing TEXT NOT NULL,
  components TEXT NOT NULL, produce_at BIGINT NOT NULL, emitted_at BIGINT NOT NULL,
  trigger TEXT NOT NULL, source TEXT NOT NULL
);
"""
NOW = 10_000_000
DEV = "d061aed45894"
MAC = "D0:61:AE:D4:58:94"
DEV2 = "d061aed40001"


class NoScores:
    """The ward's view of the EWS engine for patients it has not scored (its real answers)."""

    def current(self, user_code: str) -> Any:
        return None

    def get_context(self, user_code: str) -> dict[str, Any]:
        return {}


def _fill(c: Conn) -> None:
    schema.make_setup(window=(NOW - 1_000_000, NOW + 1_000))(c)  # readings partitions (PG)
    c.script(EWS_DDL)
    registry.create_devices(c, [
        registry.DeviceIn(device_name="A", device_mac=MAC, user_code="PA"),
        registry.DeviceIn(device_name="B", device_mac="D0:61:AE:D4:00:01", user_code="PA")], 1)
    # PA wears two devices: the one seen last (B) is the tile's; A was never seen (NULL)
    c.execute("UPDATE devices SET last_seen = ?, connected = 1, battery = 77 WHERE device_name = 'B'",
              (NOW - 5,))
    rows = [  # (device, vital, value, ts, seq)
        (DEV, "heart_rate", 70.0, NOW - 400_000, 1), (DEV, "heart_rate", 80.0, NOW - 1_000, 2),
        (DEV, "spo2", 97.0, NOW - 1_000, 2), (DEV, "systolic_bp", 120.0, NOW - 2_000, 3),
        (DEV, "diastolic_bp", 80.0, NOW - 2_000, 3), (DEV2, "heart_rate", 90.0, NOW - 200_000, 1),
    ]
    c.executemany("INSERT INTO readings (device_id, user_code, vital, value, ts, seq, source,"
                  " received_at) VALUES (?, 'PA', ?, ?, ?, ?, 'realtime', ?)",
                  [(d, v, x, t, s, t) for d, v, x, t, s in rows])
    samples = np.arange(600, dtype="<i4").tobytes()
    analysis = json.dumps({"beats": [10, 300], "mean_hr_bpm": 72.0, "quality": "good",
                           "irregular_rhythm": False})
    c.execute("INSERT INTO ecg_recordings (device_id, recording, user_code, ts, fs, n_samples,"
              " samples, analysis, quality, mean_hr, created_at)"
              " VALUES (?, 'r1', 'PA', ?, 125.0, 600, ?, ?, 'good', 72.0, ?)",
              (DEV, NOW - 3_000, samples, analysis, NOW - 2_500))
    c.execute("INSERT INTO seq_streams VALUES (?, 's1', 'gw', 1, 9, 0, 0)", (DEV,))
    c.execute("INSERT INTO seq_gaps (device_id, stream, from_seq, to_seq, detected_at)"
              " VALUES (?, 's1', 4, 5, 0)", (DEV,))
    for i, (point, risk) in enumerate([(1, "low"), (5, "medium"), (2, "low"), (7, "high")]):
        c.execute("INSERT INTO ews_history (user_code, point, result, risk, cause, partial,"
                  " missing, components, produce_at, emitted_at, trigger, source)"
                  " VALUES ('PA', ?, 'x', ?, '[]', 0, '[]', '{}', ?, ?, 'change', 'vitalgate')",
                  (point, risk, NOW - 10_000 + i, NOW - 10_000 + i))


@pytest.fixture
def view(database_url: str, tmp_path: Path) -> Iterator[WardView]:
    loc = Location.parse(database_url, default_path=tmp_path / "unused.sqlite3")
    store = Database(loc, setup=_fill, name="readings")
    ews = ews_reader(loc)  # read-only: on SQLite mode=ro, on PostgreSQL the same database
    try:
        yield WardView(db=store, engine=NoScores(), ews_db=ews, clock=lambda: NOW)
    finally:
        ews.close()
        store.close()


def test_the_ward_on_both_engines(view: WardView) -> None:
    ward = view.ward()
    [tile] = ward["patients"]
    assert tile["user_code"] == "PA" and tile["device"]["name"] == "B"
    assert tile["device"]["connected"] is True and tile["device"]["battery"] == 77
    assert tile["vitals"]["heart_rate"]["value"] == 80.0
    assert tile["vitals"]["heart_rate"]["ts"] == NOW - 1_000
    spark = tile["vitals"]["heart_rate"]["spark"]
    assert len(spark) == 3 and all(isinstance(b, int) for b, _ in spark)  # one per bucket
    assert [v for _, v in spark] == [70.0, 90.0, 80.0]
    assert tile["completeness"] == pytest.approx(3 / 5)  # hr, spo2, systolic are fresh
    # the alerts: each rise above the patient's previous risk, newest first
    assert [(a["point"], a["from_risk"]) for a in ward["alerts"]] == [(7, "low"), (5, "low")]


def test_the_patient_page_on_both_engines(view: WardView) -> None:
    page = view.patient("PA", 1.0)
    assert page is not None
    assert page["patient"]["vitals"]["heart_rate"]["value"] == 80.0
    assert page["patient"]["device"]["name"] == "B"
    assert [p for _, p in page["series"]["heart_rate"]] == [70.0, 90.0, 80.0]
    [strip] = page["ecg"]
    assert strip["recording"] == "r1" and strip["samples"][:3] == [0, 1, 2]
    assert strip["beats"] == [10, 300] and strip["summary"]["mean_hr"] == 72.0
    assert [h["point"] for h in page["ews_history"]] == [1, 5, 2, 7]
    assert view.patient("NOBODY", 1.0) is None


def test_sequence_completeness_on_both_engines(view: WardView) -> None:
    assert view.db.read_sync(gaps.completeness) == {DEV: pytest.approx(0.8)}


def test_medical_records_on_both_engines(view: WardView) -> None:
    db = view.db
    items, total = db.read_sync(lambda c: records.records(
        c, "PA", ["HEART_RATE", "BLOOD_PRESSURE", "ELECTROCARDIOGRAPH"], 0, NOW, 1, 10))
    assert total == 5
    assert [i["type"] for i in items] == ["HEART_RATE", "BLOOD_PRESSURE", "ELECTROCARDIOGRAPH",
                                          "HEART_RATE", "HEART_RATE"]
    assert items[1]["value"] == {"systole": 120.0, "diastole": 80.0}
    assert items[2]["value"] == {"recording": "r1", "mean_hr": 72.0, "quality": "good"}
    oldest, _ = db.read_sync(lambda c: records.records(c, "PA", ["HEART_RATE"], 0, NOW, 1, 1,
                                                        newest_first=False))
    assert oldest[0]["value"] == 70.0
    latest = db.read_sync(lambda c: records.latest(c, "PA"))
    assert latest["HEART_RATE"]["value"] == 80.0
    assert latest["ELECTROCARDIOGRAPH"]["recording"] == "r1"
    recs, n = db.read_sync(lambda c: records.list_recordings(c, "PA", 1, 10))
    assert n == 1 and recs[0]["duration_s"] == pytest.approx(4.8)
    one = db.read_sync(lambda c: records.get_recording(c, "r1"))
    assert one is not None and one["samples"][-1] == 599
    assert db.read_sync(lambda c: records.get_recording(c, "r2")) is None
