"""The readings store on its own: identities, ECG assembly, retention, keys, on SQLite and
PostgreSQL (the ``db`` fixture runs once per engine); the upgrade of a SQLite file of an
earlier schema is SQLite-only (such files exist only on SQLite)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest import keys, registry, store
from ingest.db import Location, migrate, readings
from ingest.db import gaps as gaps
from vitalgate.contract import MAX_REPUBLISH, EcgChunk, Reading, Source, Vitals

DEV = "d061aed45894"
T0 = 1_700_000_000_000
DAY = 86_400_000


@pytest.fixture
def db(database_url: str) -> Iterator[store.Database]:
    """The store on this test's engine; on PostgreSQL with the partitions of T0's day and its
    neighbours (a test stamping other days makes theirs)."""
    db = store.Database(Location.parse(database_url, default_path=Path("unused")),
                        synchronous="NORMAL", window=(T0 - DAY, T0 + DAY))
    yield db
    db.close()


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
    _commit(db, store.ReadingsIn("gw", DEV, old, T0 - 10_000),
            store.ReadingsIn("gw", DEV, new, T0),
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


# ------------------------------------------------------- stream identity, gaps, late, migration

#: the readings table and identity of main before the stream identity (schema version 0)
V0_READINGS = """
CREATE TABLE readings (
  id INTEGER PRIMARY KEY, device_id TEXT NOT NULL, user_code TEXT, gateway_id TEXT,
  vital TEXT NOT NULL, value REAL NOT NULL, ts INTEGER NOT NULL, seq INTEGER,
  source TEXT NOT NULL, replayed INTEGER NOT NULL DEFAULT 0, received_at INTEGER NOT NULL,
  recording TEXT);
CREATE UNIQUE INDEX readings_identity ON readings (device_id, seq, vital);
CREATE UNIQUE INDEX readings_history ON readings (device_id, ts, vital) WHERE source = 'history';
CREATE UNIQUE INDEX readings_ecg ON readings (device_id, recording, vital) WHERE recording IS NOT NULL;
CREATE INDEX readings_patient ON readings (user_code, vital, ts);
CREATE INDEX readings_ts ON readings (ts);
"""

STREAM_A = "0123456789abcdef"
STREAM_B = "fedcba9876543210"


def _rs(seq: int, stream: str | None, ts: int = T0, **kw: object) -> Reading:
    return Reading(device_id=DEV, seq=seq, ts=ts, user_code="P1", stream=stream,
                   vitals=Vitals(heart_rate=70.0), **kw)  # type: ignore[arg-type]


def test_migration_from_main_schema_keeps_rows_and_takes_streams(tmp_path: Path) -> None:
    """SQLite only: a file of the schema before stream identities."""
    path = tmp_path / "ingest.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(V0_READINGS)
        conn.executemany(
            "INSERT INTO readings (device_id, user_code, gateway_id, vital, value, ts, seq, source,"
            " received_at) VALUES (?, 'P1', 'gw', 'heart_rate', 70, ?, ?, 'realtime', ?)",
            [(DEV, T0 + i, i, T0) for i in range(5)])
    db = store.Database(path, synchronous="NORMAL")
    try:
        version = db.read_sync(lambda c: migrate.current(c, "readings"))
        assert version == readings.MIGRATIONS[-1].version
        assert db.read_sync(store.count_readings) == 5
        # the old rows are the legacy stream: a legacy redelivery is still a duplicate...
        again = _commit(db, store.ReadingsIn("gw", DEV, [_rs(3, None)], T0))
        assert again.duplicates == 1 and again.readings == []
        # ...and they were seeded as contiguous: no gap for history before the upgrade
        assert db.read_sync(lambda c: gaps.totals(c))["open_gaps"] == 0
        # a stream-carrying reading with the same seq is a different reading
        fresh = _commit(db, store.ReadingsIn("gw", DEV, [_rs(3, STREAM_A)], T0))
        assert len(fresh.readings) == 1 and fresh.duplicates == 0
        indexes = db.read_sync(lambda c: {r[1] for r in c.execute("PRAGMA index_list(readings)")})
        assert "readings_identity" not in indexes and "readings_stream_identity" in indexes
    finally:
        db.close()
    # a second start is a no-op (version already current)
    db = store.Database(path, synchronous="NORMAL")
    assert db.read_sync(store.count_readings) == 6
    db.close()


def test_a_new_stream_restarting_at_seq_0_is_not_a_duplicate(db: store.Database) -> None:
    first = _commit(db, store.ReadingsIn("gw", DEV, [_rs(i, STREAM_A) for i in range(3)], T0))
    assert len(first.readings) == 3
    # the buffer was deleted: a new stream starts at 0 again
    reset = _commit(db, store.ReadingsIn("gw", DEV, [_rs(i, STREAM_B, T0 + 10) for i in range(3)], T0))
    assert len(reset.readings) == 3 and reset.duplicates == 0
    redelivered = _commit(db, store.ReadingsIn("gw", DEV, [_rs(1, STREAM_B, T0 + 10)], T0))
    assert redelivered.duplicates == 1
    assert db.read_sync(store.count_readings) == 6


def test_gaps_open_split_and_close_in_the_commit(db: store.Database) -> None:
    # 0, 1, then 5, then 9: gaps 2..4 and 6..8
    res = _commit(db, store.ReadingsIn("gw", DEV, [_rs(s, STREAM_A) for s in (0, 1, 5, 9)], T0))
    assert (res.gaps.opened, res.gaps.opened_seqs) == (2, 6)
    dev = db.read_sync(lambda c: gaps.device_gaps(c, DEV))
    assert dev is not None
    assert [(g["from_seq"], g["to_seq"]) for g in dev["gaps"]] == [(2, 4), (6, 8)]
    assert dev["streams"][0]["contiguous"] == 1 and dev["streams"][0]["max_seq"] == 9
    assert dev["missing"] == 6 and dev["completeness"] == 0.4
    # 3 splits the first gap; 6, 7, 8 close the second (a duplicate seq counts as arrived)
    res = _commit(db, store.ReadingsIn("gw", DEV, [_rs(s, STREAM_A) for s in (3, 6, 7, 8, 9)], T0))
    assert res.gaps.filled_seqs == 4 and res.gaps.closed == 1 and res.duplicates == 1
    dev = db.read_sync(lambda c: gaps.device_gaps(c, DEV))
    assert dev is not None
    assert [(g["from_seq"], g["to_seq"]) for g in dev["gaps"]] == [(2, 2), (4, 4)]
    res = _commit(db, store.ReadingsIn("gw", DEV, [_rs(s, STREAM_A) for s in (2, 4)], T0))
    assert res.gaps.closed == 2
    dev = db.read_sync(lambda c: gaps.device_gaps(c, DEV))
    assert dev is not None and dev["gaps"] == [] and dev["streams"][0]["contiguous"] == 9
    assert db.read_sync(gaps.completeness) == {DEV: 1.0}


def test_gap_requests_rate_limited_then_reported(db: store.Database) -> None:
    _commit(db, store.ReadingsIn("gw-1", DEV, [_rs(0, STREAM_A), _rs(20_005, STREAM_A)], T0))
    _commit(db, store.ReadingsIn("gw-1", DEV, [_rs(0, None), _rs(4, None)], T0))

    def due(now: int) -> list[gaps.Request]:
        return db.write_sync(lambda c: gaps.due(c, now, grace_ms=1000, retry_ms=5000,
                                                 max_requests=2, limit=10))

    assert due(T0 + 500) == []  # within the grace period: out-of-order delivery is normal
    first = due(T0 + 1000)
    assert [(r.gateway_id, r.stream, r.from_seq, r.to_seq) for r in first] == [
        ("gw-1", STREAM_A, 1, MAX_REPUBLISH)]  # one command covers at most MAX_REPUBLISH seqs
    db.write_sync(lambda c: gaps.mark_requested(c, first, T0 + 1000))
    assert due(T0 + 2000) == []  # asked already: wait for the retry interval
    second = due(T0 + 6000)
    assert len(second) == 1
    db.write_sync(lambda c: gaps.mark_requested(c, second, T0 + 6000))
    assert due(T0 + 20_000) == []  # out of requests

    def unrec(now: int) -> list[gaps.Unrecovered]:
        return db.write_sync(lambda c: gaps.unrecovered(c, now, grace_ms=1000, retry_ms=5000,
                                                         max_requests=2))

    got = unrec(T0 + 20_000)
    # the stream's gap after its requests, the legacy stream's (not requestable) at once
    assert sorted((u.stream, u.from_seq, u.to_seq) for u in got) == [("", 1, 3), (STREAM_A, 1, 20_004)]
    assert unrec(T0 + 30_000) == []  # reported once
    totals = db.read_sync(gaps.totals)
    assert totals == {"open_gaps": 2, "missing": 20_007, "reported_missing": 20_007, "streams": 2}


def test_late_readings_are_flagged_and_kept_by_arrival_time(db: store.Database) -> None:
    day = 86_400_000
    received = T0 + 40 * day
    db.write_sync(lambda c: readings.ensure_partitions(c, received - day, received))
    late = [_rs(0, STREAM_A, T0),  # a clock 40 days behind: live, so suspect
            _rs(1, STREAM_A, T0 + 1, replayed=True),  # buffered: late, not suspect
            _rs(2, STREAM_A, received - 1000)]  # on time
    res = _commit(db, store.ReadingsIn("gw", DEV, late, received))
    assert res.late == {DEV: store.FLAG_LATE | store.FLAG_CLOCK_SUSPECT}
    assert res.late_counts == {"late": 2, "clock_suspect": 1}
    flags = db.read_sync(lambda c: [r[0] for r in c.execute("SELECT flags FROM readings ORDER BY seq")])
    assert flags == [store.FLAG_LATE | store.FLAG_CLOCK_SUSPECT, store.FLAG_LATE, 0]
    # a 30-day retention right after arrival keeps all three (measured 40 days ago or not)...
    assert db.write_sync(lambda c: store.retention_step(c, received - 30 * day, 100)) == {}
    # ...and deletes them 30 days after they arrived
    deleted = db.write_sync(lambda c: store.retention_step(c, received + 30 * day, 100))
    assert deleted == {"readings": 3}


@pytest.mark.parametrize("seed", range(20))
def test_gap_tracking_matches_a_set_model(db: store.Database, seed: int) -> None:
    """Random arrivals (duplicates, reordering, two streams) in random batches: the gap rows
    are exactly the seqs below each stream's highest that have not arrived."""
    import random

    rng = random.Random(seed)
    arrived: dict[str, set[int]] = {STREAM_A: set(), STREAM_B: set()}
    for _ in range(rng.randint(1, 12)):
        batch = []
        for _ in range(rng.randint(1, 15)):
            stream = rng.choice((STREAM_A, STREAM_B))
            seq = rng.randint(0, 60)
            arrived[stream].add(seq)
            batch.append(_rs(seq, stream))
        _commit(db, store.ReadingsIn("gw", DEV, batch, T0))
        dev = db.read_sync(lambda c: gaps.device_gaps(c, DEV))
        assert dev is not None
        for stream, seqs in arrived.items():
            if not seqs:
                continue
            want = set(range(max(seqs) + 1)) - seqs
            got = {s for g in dev["gaps"] if g["stream"] == stream
                   for s in range(g["from_seq"], g["to_seq"] + 1)}
            assert got == want
            info = next(s for s in dev["streams"] if s["stream"] == stream)
            assert info["max_seq"] == max(seqs)
            assert info["contiguous"] == (min(want) - 1 if want else max(seqs))


def test_hostile_seqs_cannot_overflow_the_gap_sums(db: store.Database) -> None:
    """Seqs go to 2**53: 1,100 devices each jumping there from 0 open gaps whose sizes add up
    past 2**63; the totals and summaries still answer (float sums), and stay huge."""
    items: list[store.Item] = []
    for i in range(1100):
        dev = f"d061ae{i:06x}"
        items.append(store.ReadingsIn("gw", dev, [
            Reading(device_id=dev, seq=s, ts=T0, vitals=Vitals(heart_rate=70.0)) for s in (0, 2**53)
        ], T0))
    db.write_sync(lambda c: store.commit_batch(c, items, now=T0, holder="RS"))
    totals = db.read_sync(gaps.totals)
    assert totals["open_gaps"] == 1100 and totals["missing"] > 2**63
    assert len(db.read_sync(lambda c: gaps.summary(c, 5))["streams_with_gaps"]) == 5
    assert 0 <= min(db.read_sync(gaps.completeness).values()) < 1e-9


def test_a_status_names_a_device_its_readings_registered_first(db: store.Database) -> None:
    # readings and a status may be committed in either order: the status's name replaces the
    # placeholder, never a name given through the API
    from ingest import registry
    from vitalgate.contract import DeviceStatus

    dev, api_dev = "d061aed45801", "d061aed45802"

    def seen(device_id: str, status: DeviceStatus | None) -> None:
        db.write_sync(lambda c: registry.seen_on_mqtt(c, device_id, gateway_id="ward1", now=T0,
                                                      holder="RS", status=status))

    def name_of(device_id: str) -> str:
        mac = registry.mac_from_device_id(device_id)
        return str(db.read_sync(lambda c: c.execute(
            "SELECT device_name FROM devices WHERE device_mac = ?", (mac,)).fetchone()[0]))

    seen(dev, None)  # a reading first: the placeholder
    assert name_of(dev) == registry.default_name(dev)
    seen(dev, DeviceStatus(device_id=dev, name="E86-01", connected=True))
    assert name_of(dev) == "E86-01"
    seen(dev, DeviceStatus(device_id=dev, name="renamed by a gateway", connected=True))
    assert name_of(dev) == "E86-01"  # only the placeholder is replaced

    db.write_sync(lambda c: registry.create_devices(c, [registry.DeviceIn(
        device_name="Bed 2 watch", device_mac=registry.mac_from_device_id(api_dev))], T0))
    seen(api_dev, DeviceStatus(device_id=api_dev, name="E86-02", connected=True))
    assert name_of(api_dev) == "Bed 2 watch"
