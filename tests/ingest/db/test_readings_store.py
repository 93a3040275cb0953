"""The readings store on ingest/db: the upgrade of the previous release's SQLite file, the
PostgreSQL partitions (made ahead, readings outside them refused and counted, retention by
partition), and redeliveries absorbed across two instances on one PostgreSQL."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest import store
from ingest.db import Location, dead_letters, gaps, migrate, readings, schema
from ingest.settings import IngestSettings
from vitalgate.config import load_settings
from vitalgate.contract import Reading, Source, Vitals

T0 = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC
DAY = readings.DAY_MS
DEV = "d061aed45894"
STREAM = "0123456789abcdef"
FIXTURES = Path(__file__).parent / "fixtures"


def _r(seq: int, ts: int, stream: str | None = STREAM, source: Source = Source.REALTIME,
       **vitals: float) -> Reading:
    return Reading(device_id=DEV, seq=seq, ts=ts, user_code="P1", stream=stream, source=source,
                   vitals=Vitals(**(vitals or {"heart_rate": 70.0})))


def _commit(db: store.Database, *readings_: Reading, now: int = T0,
            max_age_ms: int = store.MAX_READING_AGE_MS) -> store.CommitResult:
    item = store.ReadingsIn("gw", DEV, list(readings_), now, "vitals/v1/gw/dev/reading", b"{}")
    return db.write_sync(lambda c: store.commit_batch(c, [item], now=now, holder="RS",
                                                      max_age_ms=max_age_ms))


# ---------------------------------------------------------------- the previous release's file


def test_a_store_of_the_previous_release_opens_and_keeps_its_rows(tmp_path: Path) -> None:
    """SQLite only: a file made with 345d82a's DDL (tests/ingest/db/fixtures/store_345d82a.sql,
    copied from that release) and rows, at its ``PRAGMA user_version`` 1."""
    path = tmp_path / "ingest.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript((FIXTURES / "store_345d82a.sql").read_text())
        conn.execute("INSERT INTO dead_letter_stats (id, rows, bytes, evicted) VALUES (1, 0, 0, 0)")
        conn.executemany(
            "INSERT INTO readings (device_id, user_code, gateway_id, vital, value, ts, seq, source,"
            " received_at, stream, flags) VALUES (?, 'P1', 'gw', 'heart_rate', ?, ?, ?, 'realtime',"
            " ?, ?, 0)", [(DEV, 60.0 + i, T0 + i, i, T0, STREAM) for i in range(4)])
        conn.execute("INSERT INTO seq_streams (device_id, stream, gateway_id, contiguous, max_seq,"
                     " first_at, updated_at) VALUES (?, ?, 'gw', 3, 3, ?, ?)", (DEV, STREAM, T0, T0))
        conn.execute("INSERT INTO dead_letters (topic, payload, reason, detail, received_at, size,"
                     " sha256, repeats, last_at) VALUES ('t', x'00ff', 'json', 'bad', ?, 2, 'ab', 0, ?)",
                     (T0, T0))  # counted by the old release's trigger
        conn.execute("INSERT INTO devices (device_name, device_mac, device_type, device_holder,"
                     " created_at, updated_at) VALUES ('E86 5894', 'D0:61:AE:D4:58:94', 'CONSUMER',"
                     " 'RS', ?, ?)", (T0, T0))
        conn.execute("INSERT INTO api_keys (name, salt, hash, created_at) VALUES ('k', x'00',"
                     " x'00', ?)", (T0,))
        conn.execute("PRAGMA user_version = 1")
    db = store.Database(path, synchronous="NORMAL")
    try:
        assert db.read_sync(store.count_readings) == 4
        versions = db.read_sync(lambda c: {k: migrate.current(c, k) for k in
                                           ("readings", "ecg", "dead_letters", "gaps")})
        assert versions == {"readings": 1, "ecg": 0, "dead_letters": 1, "gaps": 1}
        # the old triggers are gone (this release counts in code): the stats stay exact
        triggers = db.read_sync(lambda c: c.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger'").fetchone()[0])
        assert triggers == 0
        assert db.read_sync(dead_letters.stats).rows == 1
        res = db.write_sync(lambda c: store.commit_batch(c, [store.DeadLetter(
            "t2", b"x", "json", "bad", T0 + 1)], now=T0 + 1, holder="RS"))
        assert res.dead_stats is not None and res.dead_stats.rows == 2
        exact = db.read_sync(lambda c: c.execute(
            "SELECT count(*), sum(length(payload) + length(topic) + length(detail))"
            " FROM dead_letters").fetchone())
        assert exact == (res.dead_stats.rows, res.dead_stats.bytes)
        # a redelivery of an old reading is absorbed; the stream's next seq closes no gap
        again = _commit(db, _r(2, T0 + 2), _r(4, T0 + 4))
        assert again.duplicates == 1 and len(again.readings) == 1
        assert db.read_sync(gaps.totals)["open_gaps"] == 0
        devices = db.read_sync(lambda c: c.execute("SELECT count(*) FROM devices").fetchone()[0])
        scopes = db.read_sync(lambda c: c.execute("SELECT scopes FROM api_keys").fetchone()[0])
        assert devices == 1 and scopes == "admin"
    finally:
        db.close()
    reopened = store.Database(path, synchronous="NORMAL")  # a second start changes nothing
    assert reopened.read_sync(store.count_readings) == 5
    reopened.close()


# -------------------------------------------------------------------------------- PostgreSQL


@pytest.fixture
def pg(postgres_db: str) -> Iterator[store.Database]:
    db = store.Database(Location.parse(postgres_db, default_path=Path("unused")),
                        synchronous="NORMAL", window=(T0 - 2 * DAY, T0 + DAY))
    yield db
    db.close()


def test_the_service_makes_the_accepted_window_ahead(postgres_db: str, tmp_path: Path) -> None:
    from ingest.service import IngestService

    settings = load_settings(IngestSettings, None, data_dir=tmp_path, database_url=postgres_db,
                             max_reading_age_days=3, max_future_skew_s=300)
    service = IngestService(settings, clock=lambda: T0)
    try:
        days = service.db.read_sync(readings.partition_days)
        # from the UTC day of now - 3 days to the day after now + 300 s (one ahead)
        assert days == [readings.day_of(T0 - 3 * DAY) + i * DAY for i in range(5)]
        names = service.db.read_sync(lambda c: [r[0] for r in c.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'readings'::regclass ORDER BY 1")])
        assert names[0] == "readings_p20231111" and names[-1] == "readings_p20231115"
        defaults = service.db.read_sync(lambda c: c.execute(
            "SELECT count(*) FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partdefid"
            ).fetchone()[0])
        assert defaults == 0  # no DEFAULT partition: nothing lands outside the window unseen
    finally:
        service.db.close()
        service.engine.close()
        service.outbox.close()


def test_readings_outside_the_window_are_counted_rejects(pg: store.Database) -> None:
    res = _commit(pg, _r(0, T0), _r(1, T0 - 3 * DAY), _r(2, T0 - 10 * DAY), now=T0,
                  max_age_ms=5 * DAY)
    assert [r.seq for r in res.readings] == [0]
    reasons = sorted((d.reason, d.detail.split(":")[0]) for d in res.dead)
    assert reasons == [("no_partition", "reading seq 1"), ("too_old", "reading seq 2")]
    assert res.dead_stats is not None and res.dead_stats.rows == 2
    # the maintenance task makes the day: the redelivery is stored, once
    pg.write_sync(lambda c: readings.ensure_partitions(c, T0 - 3 * DAY, T0 - 3 * DAY))
    again = _commit(pg, _r(1, T0 - 3 * DAY), max_age_ms=5 * DAY)
    assert [r.seq for r in again.readings] == [1]


def test_a_partition_another_instance_made_is_seen_by_the_next_commit(
        pg: store.Database, postgres_db: str) -> None:
    """The partition days are known from an earlier commit (not read every batch); a day made
    meanwhile by another process (its own connections) is found on the first reading that
    needs it, not refused as no_partition."""
    assert [r.seq for r in _commit(pg, _r(0, T0), max_age_ms=5 * DAY).readings] == [0]
    assert readings.day_of(T0 - 3 * DAY) not in pg.read_sync(readings.partition_days)
    other = store.Database(Location.parse(postgres_db, default_path=Path("unused")),
                           synchronous="NORMAL")
    try:
        other.write_sync(lambda c: readings.ensure_partitions(c, T0 - 3 * DAY, T0 - 3 * DAY))
    finally:
        other.close()
    res = _commit(pg, _r(1, T0 - 3 * DAY), max_age_ms=5 * DAY)
    assert [r.seq for r in res.readings] == [1] and res.dead == []


def test_too_old_is_the_same_rule_on_sqlite(tmp_path: Path) -> None:
    db = store.Database(tmp_path / "ingest.sqlite3", synchronous="NORMAL")
    try:
        res = _commit(db, _r(0, T0), _r(2, T0 - 10 * DAY), max_age_ms=5 * DAY)
        assert [r.seq for r in res.readings] == [0] and [d.reason for d in res.dead] == ["too_old"]
    finally:
        db.close()


def test_retention_drops_a_wholly_expired_partition_and_deletes_in_the_others(
        pg: store.Database) -> None:
    old_day = readings.day_of(T0 - 2 * DAY)
    # the old day: two readings measured and received then; one measured then, received now
    _commit(pg, _r(0, old_day + 1), _r(1, old_day + 2), now=old_day + 10)
    late = _commit(pg, _r(2, old_day + 3), now=T0 - 1000)
    _commit(pg, _r(3, T0 - DAY), now=T0 - DAY)  # yesterday: its partition also past the cutoff
    _commit(pg, _r(4, T0), now=T0)
    assert len(late.readings) == 1 and pg.read_sync(store.count_readings) == 5
    cutoff = readings.day_of(T0)  # everything before today's midnight
    # yesterday's partition is wholly past (both times): dropped; the old day keeps its partition
    # (the late row is still kept by its arrival) and loses its two expired rows by DELETE
    deleted = pg.write_sync(lambda c: store.retention_step(c, cutoff, 100))
    assert deleted == {"readings": 3}
    days = pg.read_sync(readings.partition_days)
    assert readings.day_of(T0 - DAY) not in days and old_day in days
    left = pg.read_sync(lambda c: sorted(r[0] for r in c.execute("SELECT seq FROM readings")))
    assert left == [2, 4]
    ids = pg.read_sync(lambda c: sorted(r[0] for r in c.execute("SELECT seq FROM reading_ids")))
    assert ids == [2, 4]  # the identities went with their readings
    # once the late row is past too, the old partition goes whole
    later = pg.write_sync(lambda c: store.retention_step(c, T0 - 500, 100))
    assert later == {"readings": 1}
    assert old_day not in pg.read_sync(readings.partition_days)


def test_a_partition_inside_the_accepted_window_is_kept_even_empty(pg: store.Database) -> None:
    pg.write_sync(lambda c: store.retention_step(c, T0, 100, accepted_from_ms=T0 - 2 * DAY))
    assert readings.day_of(T0 - DAY) in pg.read_sync(readings.partition_days)
    pg.write_sync(lambda c: store.retention_step(c, T0, 100))
    assert readings.day_of(T0 - DAY) not in pg.read_sync(readings.partition_days)


def test_a_redelivery_to_another_instance_with_another_ts_is_absorbed(postgres_db: str) -> None:
    """Two Database objects on one PostgreSQL (two instances): the identity (device, stream,
    seq, vital) holds across them and across partitions (a redelivery stamped another day)."""
    where = Location.parse(postgres_db, default_path=Path("unused"))
    a = schema.open_store(where, window=(T0 - 2 * DAY, T0 + DAY))
    b = schema.open_store(where, window=(T0 - 2 * DAY, T0 + DAY))
    try:
        first = _commit(a, _r(7, T0, heart_rate=70, spo2=97))
        assert len(first.readings) == 2
        moved = _commit(b, _r(7, T0 - DAY, heart_rate=71))  # another ts: another partition
        assert moved.readings == [] and moved.duplicates == 1
        same = _commit(b, _r(7, T0, heart_rate=70, spo2=97))
        assert same.readings == [] and same.duplicates == 1
        # the history identity (device, ts, vital) across instances too
        h1 = _commit(a, _r(100, T0 - 5, source=Source.HISTORY))
        h2 = _commit(b, _r(101, T0 - 5, source=Source.HISTORY))
        assert len(h1.readings) == 1 and h2.readings == [] and h2.duplicates == 1
        assert a.read_sync(store.count_readings) == 3
    finally:
        a.close()
        b.close()


def test_an_ecg_reading_is_stored_once_across_instances(postgres_db: str) -> None:
    where = Location.parse(postgres_db, default_path=Path("unused"))
    a = schema.open_store(where, window=(T0 - DAY, T0 + DAY))
    b = schema.open_store(where, window=(T0 - DAY, T0 + DAY))
    try:
        rec = store.CompletedRecording(1, DEV, "r1", "P1", "gw", T0, 250.0)
        for db, new in ((a, True), (b, False)):
            got = db.write_sync(lambda c, d=db: store.save_analysis(
                c, rec, {}, quality="good", mean_hr=61.0, now=T0))
            assert (got is not None) is new
    finally:
        a.close()
        b.close()


def test_the_database_url_is_a_secret_and_its_store_is_named_redacted(
        postgres_db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """VITALGATE_DATABASE_URL never appears in a log, a repr or an error; the store says at
    INFO where it is, with the password as ***."""
    import logging

    url = postgres_db.replace("vitalgate@", "vitalgate:s3cretpw@")  # trust auth ignores it
    settings = load_settings(IngestSettings, None, data_dir=tmp_path, database_url=url)
    assert "s3cretpw" not in repr(settings) and "s3cretpw" not in str(settings.model_dump())
    assert settings.readings_location.url == settings.ews_location.url == url  # one database
    caplog.set_level(logging.INFO, logger="ingest.db.engine")
    db = schema.open_store(settings.readings_location)
    db.close()
    opened = [r.getMessage() for r in caplog.records if "postgres at" in r.getMessage()]
    assert opened and all("vitalgate:***@" in m for m in opened)
    assert not any("s3cretpw" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError) as bad:
        load_settings(IngestSettings, None, data_dir=tmp_path,
                      database_url="mysql://u:s3cretpw@h/db")
    assert "s3cretpw" not in str(bad.value) and "scheme" in str(bad.value)
    sqlite = load_settings(IngestSettings, None, data_dir=tmp_path)
    assert sqlite.readings_location.path == tmp_path / "ingest.sqlite3"
    assert sqlite.ews_location.path == tmp_path / "ews.sqlite3"
