"""The SQLite store on its own: identities, ECG assembly, retention, keys (real SQLite files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest import keys, registry, store
from vitalgate.contract import EcgChunk, Reading, Source, Vitals

DEV = "d061aed45894"
T0 = 1_700_000_000_000


@pytest.fixture
def db(tmp_path: Path) -> store.Database:
    return store.Database(tmp_path / "ingest.sqlite3", synchronous="NORMAL")


def _commit(db: store.Database, *items: store.Item) -> store.CommitResult:
    return db.write_sync(lambda c: store.commit_batch(c, list(items), now=T0, holder="RS"))


def _r(seq: int, ts: int, source: Source = Source.REALTIME, **vitals: float) -> Reading:
    return Reading(device_id=DEV, seq=seq, ts=ts, source=source, user_code="P1",
                   vitals=Vitals(**(vitals or {"heart_rate": 70.0})))


def test_identity_and_history_dedup(db: store.Database) -> None:
    first = _commit(db, store.ReadingsIn("gw", DEV, [_r(1, T0, heart_rate=70, spo2=97)], T0))
    assert len(first.readings) == 2 and first.duplicates == 0
    again = _commit(db, store.ReadingsIn("gw", DEV, [_r(1, T0, heart_rate=71)], T0))
    assert again.readings == [] and again.duplicates == 1
    hist = _commit(db, store.ReadingsIn("gw", DEV, [_r(5, T0 - 10, Source.HISTORY),
                                                     _r(6, T0 - 10, Source.HISTORY)], T0))
    assert len(hist.readings) == 1 and hist.duplicates == 1
    assert db.read_sync(store.count_readings) == 3
    device = db.read_sync(lambda c: registry.list_devices(c, 1, 10))[0][0]
    assert device["device_holder"] == "RS" and device["user_code"] == "P1"


def test_ecg_assembled_once_from_out_of_order_chunks(db: store.Database) -> None:
    def chunk(seq: int, last: bool = False) -> store.EcgChunkIn:
        return store.EcgChunkIn("gw", EcgChunk(device_id=DEV, recording="r1", seq=seq, ts=T0 + seq,
                                               fs=250, samples=[seq, -seq, 2**23 - 1], last=last), T0)

    assert _commit(db, chunk(2, last=True), chunk(0)).recordings == []
    done = _commit(db, chunk(1), chunk(1)).recordings
    assert len(done) == 1 and done[0].ts == T0 and done[0].fs == 250
    assert _commit(db, chunk(1)).recordings == []  # a redelivery after assembly
    signal = db.read_sync(lambda c: store.recording_signal(c, done[0].id))
    assert signal.tolist() == [0, 0, 2**23 - 1, 1, -1, 2**23 - 1, 2, -2, 2**23 - 1]
    stored = db.write_sync(lambda c: store.save_analysis(c, done[0], {"quality": "good"},
                                                           quality="good", mean_hr=61.5, now=T0))
    assert stored is not None and stored.source == "ecg" and stored.value == 61.5
    again = db.write_sync(lambda c: store.save_analysis(c, done[0], {"quality": "good"},
                                                          quality="good", mean_hr=61.5, now=T0))
    assert again is None  # the recording's heart rate is stored once


def test_retention_deletes_old_rows_in_batches(db: store.Database) -> None:
    old = [_r(i, T0 - 10_000 + i) for i in range(7)]
    new = [_r(100 + i, T0 + i) for i in range(3)]
    _commit(db, store.ReadingsIn("gw", DEV, old + new, T0),
            store.DeadLetter("t", b"x", "json", "bad", T0 - 10_000))
    first = db.write_sync(lambda c: store.retention_step(c, T0, 5))
    assert first == {"readings": 5, "dead_letters": 1}
    second = db.write_sync(lambda c: store.retention_step(c, T0, 5))
    assert second == {"readings": 2}
    assert db.write_sync(lambda c: store.retention_step(c, T0, 5)) == {}
    assert db.read_sync(store.count_readings) == 3


def test_keys_hashed_and_revocable(db: store.Database) -> None:
    key = db.write_sync(lambda c: keys.create(c, "console", T0))
    assert len(key) > 40
    raw = db.read_sync(lambda c: c.execute("SELECT hash FROM api_keys").fetchone()[0])
    assert key.encode() not in raw
    found = db.read_sync(lambda c: keys.find(c, key))
    assert found is not None and found.name == "console" and found.scopes == {"read"}
    assert db.read_sync(lambda c: keys.find(c, key + "x")) is None
    with pytest.raises(keys.ApiKeyError, match="already exists"):
        db.write_sync(lambda c: keys.create(c, "console", T0))
    assert db.write_sync(lambda c: keys.revoke(c, "console", T0))
    assert db.read_sync(lambda c: keys.find(c, key)) is None
