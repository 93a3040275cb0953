"""Readings (one row per vital), gateways' statuses and the write probe, on both engines.

Identities that make QoS 1 redeliveries harmless, on either engine and across instances:

* ``(device_id, stream, seq, vital)``: a contract reading is stored once however often it
  arrives (``stream`` ``''`` when a reading carries none: one legacy stream per device);
* ``(device_id, ts, vital)`` for ``source = history``: a history record synced twice (under
  two seqs) is stored once;
* ``(device_id, recording, vital)`` for readings derived from an ECG recording.

SQLite: one ``readings`` table with a unique index per identity.

PostgreSQL: ``readings`` is partitioned by event time (``PARTITION BY RANGE (ts)``, one
partition per UTC day, ``readings_pYYYYMMDD``, no DEFAULT partition; see :func:`ensure_partitions`).
A unique index of a partitioned table must contain the partition key, so:

* the stream identity lives in ``reading_ids`` (unpartitioned, primary key
  ``(device_id, stream, seq, vital)``), filled in the same transaction as the readings: the
  ``INSERT … ON CONFLICT DO NOTHING RETURNING`` into it decides which rows are new, whatever
  their ``ts`` (a redelivery with a different ts, to any instance, is absorbed there; two
  instances inserting the same identity at once are serialised by the index: the second
  waits for the first's commit and then conflicts). Retention trims it with the readings;
* the history identity contains ``ts`` already: a partial unique index on the partitioned
  table (``(device_id, ts, vital) WHERE source = 'history'``);
* the ECG identity: a unique index on ``(device_id, recording, vital, ts)``. It is equivalent
  to ``(device_id, recording, vital)`` because an ECG-derived reading's ts is its recording's
  (``ecg_recordings.ts``, one row per ``(device_id, recording)``): every insert of one identity
  carries the same ts, so it lands in the same partition and meets the same index entry.
"""

from __future__ import annotations

import bisect
import datetime as dt
import logging
import re
import threading
from collections.abc import Sequence
from typing import Any, Final, NamedTuple

from ingest.db import migrate
from ingest.db.engine import Conn

log = logging.getLogger(__name__)

DAY_MS: Final = 86_400_000

SQLITE_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS readings (
  id INTEGER PRIMARY KEY,
  device_id TEXT NOT NULL,
  user_code TEXT,
  gateway_id TEXT,
  vital TEXT NOT NULL,
  value DOUBLE PRECISION NOT NULL,
  ts BIGINT NOT NULL,
  seq BIGINT,                        -- NULL for readings derived from an ECG recording
  source TEXT NOT NULL,
  replayed BIGINT NOT NULL DEFAULT 0,
  received_at BIGINT NOT NULL,
  recording TEXT,                    -- the ECG recording a derived reading comes from
  stream TEXT NOT NULL DEFAULT '',   -- the buffer's stream ('' = none given: legacy stream)
  flags BIGINT NOT NULL DEFAULT 0    -- FLAG_LATE | FLAG_CLOCK_SUSPECT
);
CREATE UNIQUE INDEX IF NOT EXISTS readings_stream_identity
  ON readings (device_id, stream, seq, vital);
CREATE UNIQUE INDEX IF NOT EXISTS readings_history ON readings (device_id, ts, vital)
  WHERE source = 'history';
CREATE UNIQUE INDEX IF NOT EXISTS readings_ecg ON readings (device_id, recording, vital)
  WHERE recording IS NOT NULL;
CREATE INDEX IF NOT EXISTS readings_patient ON readings (user_code, vital, ts);
CREATE INDEX IF NOT EXISTS readings_ts ON readings (ts);
CREATE INDEX IF NOT EXISTS readings_kept ON readings (max(ts, received_at));
"""

POSTGRES_SCHEMA: Final = """
CREATE SEQUENCE IF NOT EXISTS readings_id_seq AS BIGINT;
CREATE TABLE IF NOT EXISTS readings (
  id BIGINT NOT NULL DEFAULT nextval('readings_id_seq'),
  device_id TEXT NOT NULL,
  user_code TEXT,
  gateway_id TEXT,
  vital TEXT NOT NULL,
  value DOUBLE PRECISION NOT NULL,
  ts BIGINT NOT NULL,
  seq BIGINT,
  source TEXT NOT NULL,
  replayed BIGINT NOT NULL DEFAULT 0,
  received_at BIGINT NOT NULL,
  recording TEXT,
  stream TEXT NOT NULL DEFAULT '',
  flags BIGINT NOT NULL DEFAULT 0,
  PRIMARY KEY (id, ts)
) PARTITION BY RANGE (ts);
ALTER SEQUENCE readings_id_seq OWNED BY readings.id;
CREATE UNIQUE INDEX IF NOT EXISTS readings_history ON readings (device_id, ts, vital)
  WHERE source = 'history';
CREATE UNIQUE INDEX IF NOT EXISTS readings_ecg ON readings (device_id, recording, vital, ts)
  WHERE recording IS NOT NULL;
CREATE INDEX IF NOT EXISTS readings_stream ON readings (device_id, stream, seq);
CREATE INDEX IF NOT EXISTS readings_patient ON readings (user_code, vital, ts);
CREATE INDEX IF NOT EXISTS readings_kept ON readings (GREATEST(ts, received_at));

-- the stream identity across partitions (see the module's docstring)
CREATE TABLE IF NOT EXISTS reading_ids (
  device_id TEXT NOT NULL,
  stream TEXT NOT NULL,
  seq BIGINT NOT NULL,
  vital TEXT NOT NULL,
  kept_at BIGINT NOT NULL,           -- GREATEST(ts, received_at) of its reading (retention)
  PRIMARY KEY (device_id, stream, seq, vital)
);
CREATE INDEX IF NOT EXISTS reading_ids_kept ON reading_ids (kept_at);
"""

#: both engines: gateways' statuses and the health check's write probe.
COMMON_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS store_probe (   -- one row, rewritten by the health check's write probe
  id BIGINT PRIMARY KEY CHECK (id = 1),
  at BIGINT NOT NULL,
  pad {blob}                         -- a fresh page's worth, so a full disk fails the probe too
);

CREATE TABLE IF NOT EXISTS gateways (
  gateway_id TEXT PRIMARY KEY,
  online BIGINT NOT NULL,
  version TEXT,
  devices BIGINT,
  buffered BIGINT,
  evicted BIGINT,
  ts BIGINT,
  updated_at BIGINT NOT NULL
);
"""


def _v1_stream_identity(conn: Conn) -> None:
    """v0 → v1: readings gain ``stream`` ('' for every existing row: the legacy stream) and
    ``flags``; the identity becomes (device_id, stream, seq, vital)."""
    cols = conn.columns("readings")
    if not cols or conn.is_postgres:
        return  # a new database: the schema creates everything
    if "stream" not in cols:
        conn.execute("ALTER TABLE readings ADD COLUMN stream TEXT NOT NULL DEFAULT ''")
    if "flags" not in cols:
        conn.execute("ALTER TABLE readings ADD COLUMN flags INTEGER NOT NULL DEFAULT 0")
    conn.execute("DROP INDEX IF EXISTS readings_identity")


MIGRATIONS: Final = (migrate.Migration(1, "stream identity (device_id, stream, seq, vital), flags",
                                       _v1_stream_identity),)


def _legacy(conn: Conn) -> int:
    """A SQLite store of a release before ``schema_versions``: its ``PRAGMA user_version``
    (0 or 1) when it has readings; otherwise it is new."""
    if conn.is_postgres or not conn.table_exists("readings"):
        return MIGRATIONS[-1].version
    return int(conn.sqlite.execute("PRAGMA user_version").fetchone()[0])


def setup(conn: Conn, now: int = 0) -> None:
    schema = (POSTGRES_SCHEMA if conn.is_postgres else SQLITE_SCHEMA) + COMMON_SCHEMA
    migrate.apply(conn, "readings", schema=schema, migrations=MIGRATIONS, now=now, legacy=_legacy)


# ------------------------------------------------------------------------------ partitions

_PART_RE: Final = re.compile(r"readings_p(\d{8})")


def day_of(ts_ms: int) -> int:
    """The UTC day (epoch ms at its midnight) of an event time."""
    return ts_ms - ts_ms % DAY_MS


def partition_name(day_ms: int) -> str:
    return "readings_p" + dt.datetime.fromtimestamp(day_ms / 1000, dt.UTC).strftime("%Y%m%d")


def _day_of_name(name: str) -> int | None:
    m = _PART_RE.fullmatch(name)
    if m is None:
        return None
    d = dt.datetime.strptime(m.group(1), "%Y%m%d").replace(tzinfo=dt.UTC)
    return int(d.timestamp() * 1000)


def partition_days(conn: Conn) -> list[int]:
    """The days (epoch ms at UTC midnight) that have a readings partition, in order
    (PostgreSQL; empty on SQLite)."""
    if not conn.is_postgres:
        return []
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = to_regclass('readings')").fetchall()
    return sorted(d for d in (_day_of_name(str(r[0])) for r in rows) if d is not None)


def ensure_partitions(conn: Conn, first_ms: int, last_ms: int) -> list[str]:
    """Create every missing daily partition covering event times ``first_ms..last_ms``
    (PostgreSQL; nothing on SQLite); returns the names created. Idempotent, and safe with
    several instances (``CREATE TABLE IF NOT EXISTS … PARTITION OF``, under an advisory lock)."""
    if not conn.is_postgres:
        return []
    conn.execute("SELECT pg_advisory_xact_lock(?)", (0x76677274,))  # 'vgrt': one creator at a time
    have = set(partition_days(conn))
    made = []
    day = day_of(first_ms)
    while day <= last_ms:
        if day not in have:
            name = partition_name(day)
            conn.execute(f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF readings"
                         f" FOR VALUES FROM ({day}) TO ({day + DAY_MS})")
            made.append(name)
        day += DAY_MS
    return made


#: the partition days of each PostgreSQL database as this process last read them, so that a
#: commit does not read the catalogue every batch. A day found here has a partition: retention
#: drops only days before the accepted event-time window, whose readings are refused as
#: ``too_old`` before this is asked. A day not found is read again before anything is
#: refused, so a partition another instance made is seen by the first reading that needs it.
_KNOWN_DAYS: dict[tuple[str, str, str], list[int]] = {}
_KNOWN_LOCK = threading.Lock()


def _database_key(conn: Conn) -> tuple[str, str, str]:
    info = conn.pg.info
    return (str(info.host), str(info.port), str(info.dbname))


class Partitions:
    """The days with a partition (PostgreSQL), or None (SQLite: every event time is
    storable). Starts from what this process knew; re-reads once on a miss."""

    __slots__ = ("_conn", "_reread", "days")

    def __init__(self, days: list[int] | None, conn: Conn | None = None) -> None:
        self.days = days
        self._conn = conn
        self._reread = conn is not None

    def _has(self, day: int) -> bool:
        days = self.days or []
        i = bisect.bisect_left(days, day)
        return i < len(days) and days[i] == day

    def covers(self, ts_ms: int) -> bool:
        if self.days is None:
            return True
        day = day_of(ts_ms)
        if self._has(day):
            return True
        if self._reread and self._conn is not None:
            self._reread = False  # once per commit: a missing day stays missing meanwhile
            self.days = _read_days(self._conn)
            return self._has(day)
        return False


def _read_days(conn: Conn) -> list[int]:
    days = partition_days(conn)
    with _KNOWN_LOCK:
        _KNOWN_DAYS[_database_key(conn)] = days
    return days


def partitions(conn: Conn) -> Partitions:
    """The readings partitions, as known (PostgreSQL: the catalogue is read on the first use in
    this process and again whenever a day is not found)."""
    if not conn.is_postgres:
        return Partitions(None)
    with _KNOWN_LOCK:
        known = _KNOWN_DAYS.get(_database_key(conn))
    if known is None:
        return Partitions(_read_days(conn))
    return Partitions(known, conn)


# ---------------------------------------------------------------------------------- writes


class StoredReading(NamedTuple):
    """One vital of a reading, one row of ``readings``: what the store writes, what a commit
    returns and what is read back, and what the FHIR and HL7 exports build from (a NamedTuple:
    one is made per vital on the ingest path, at the cost of a tuple).

    ``ts`` is the event time (measured), ``received_at`` the processing time (the consumer's
    clock at commit), both epoch ms. ``seq`` is None for a reading derived from an ECG
    recording; ``stream`` is ``''`` when the reading carried none (the device's legacy
    stream); ``flags`` are ``FLAG_LATE | FLAG_CLOCK_SUSPECT`` (:mod:`ingest.store`)."""

    device_id: str
    user_code: str | None
    gateway_id: str | None
    vital: str
    value: float
    ts: int
    seq: int | None
    source: str
    replayed: bool
    received_at: int
    stream: str = ""
    flags: int = 0

    def columns(self) -> tuple[str, str | None, str | None, str, float, int, int | None, str,
                               int, int, str, int]:
        """The row's values in :data:`_COLS` order (``replayed`` as 0/1)."""
        return (self.device_id, self.user_code, self.gateway_id, self.vital, float(self.value),
                self.ts, self.seq, self.source, int(self.replayed), self.received_at,
                self.stream, self.flags)


def known_seqs(conn: Conn, keys: Sequence[tuple[str, str, int]]) -> set[tuple[str, str, int]]:
    """Which ``(device_id, stream, seq)`` already have a stored vital."""
    if not keys:
        return set()
    if conn.is_postgres:
        rows = conn.pg.execute(
            "SELECT DISTINCT r.device_id, r.stream, r.seq FROM reading_ids r JOIN"
            " unnest(%b::text[], %b::text[], %b::bigint[]) AS k(device_id, stream, seq)"
            " ON r.device_id = k.device_id AND r.stream = k.stream AND r.seq = k.seq",
            ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]),
            prepare=True).fetchall()
        return {(str(d), str(s), int(q)) for d, s, q in rows}
    found = set()
    for key in keys:
        if conn.execute("SELECT 1 FROM readings WHERE device_id = ? AND stream = ? AND seq = ?"
                        " LIMIT 1", key).fetchone():
            found.add(key)
    return found


_COLS: Final = ("device_id, user_code, gateway_id, vital, value, ts, seq, source, replayed,"
                " received_at, stream, flags")


def insert(conn: Conn, rows: Sequence[StoredReading]) -> list[bool]:
    """Insert ``rows`` with ON CONFLICT DO NOTHING; returns, aligned with them, which were new
    (a row whose identity is stored already, in this batch or before, is not)."""
    if not rows:
        return []
    if not conn.is_postgres:
        out = []
        for r in rows:
            cur = conn.execute(f"INSERT INTO readings ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?,"
                               " ?, ?, ?) ON CONFLICT DO NOTHING", r.columns())
            out.append(bool(cur.rowcount))
        return out
    # 1. the stream identity: which (device, stream, seq, vital) are new, whatever their ts.
    #    Two instances committing the same readings never wait for each other's keys here in
    #    a cycle: the commit locked the readings' device rows first (store.commit_batch)
    new_ids = conn.pg.execute(
        "INSERT INTO reading_ids (device_id, stream, seq, vital, kept_at)"
        " SELECT * FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::text[], %b::bigint[])"
        " ON CONFLICT DO NOTHING RETURNING device_id, stream, seq, vital",
        ([r.device_id for r in rows], [r.stream for r in rows], [r.seq for r in rows],
         [r.vital for r in rows], [max(r.ts, r.received_at) for r in rows]),
        prepare=True).fetchall()
    fresh: set[tuple[str, str, int | None, str]] = {(str(d), str(s), int(q), str(v))
                                                    for d, s, q, v in new_ids}
    # 2. the readings whose identity is new (first of each in the batch); the history
    #    identity (a partial unique index with ts) may still absorb some
    picked: list[int] = []
    for i, r in enumerate(rows):
        key = (r.device_id, r.stream, r.seq, r.vital)
        if key in fresh:
            fresh.discard(key)
            picked.append(i)
    if not picked:
        return [False] * len(rows)
    # 3. rows that only the stream identity could refuse (every source but history: the ECG
    #    identity needs a recording, which these have not) are all stored: COPY straight into
    #    the partitioned table, no conflict arbitration (speculative insertion) and no
    #    RETURNING; history rows go through ON CONFLICT (their identity includes ts)
    plain = [rows[i] for i in picked if rows[i].source != "history"]
    if plain:
        with conn.pg.cursor() as cur, cur.copy(
                f"COPY readings ({_COLS}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(_COPY_TYPES)
            for r in plain:
                copy.write_row(r.columns())
    done = {(r.device_id, r.stream, r.seq, r.vital) for r in plain}
    sel = [rows[i] for i in picked if rows[i].source == "history"]
    if sel:
        done |= _insert_on_conflict(conn, sel)
    out = [False] * len(rows)
    for i in picked:
        r = rows[i]
        out[i] = (r.device_id, r.stream, r.seq, r.vital) in done
    return out


#: the binary COPY's column types, in :data:`_COLS` order.
_COPY_TYPES: Final = ("text", "text", "text", "text", "float8", "int8", "int8", "text", "int8",
                      "int8", "text", "int8")


def _insert_on_conflict(conn: Conn, sel: Sequence[StoredReading]
                        ) -> set[tuple[str, str, int | None, str]]:
    """PostgreSQL: insert ``sel`` with ON CONFLICT DO NOTHING; the identities stored."""
    c = list(zip(*(r.columns() for r in sel), strict=True))
    stored = conn.pg.execute(
        f"INSERT INTO readings ({_COLS}) SELECT * FROM unnest(%b::text[], %b::text[], %b::text[],"
        " %b::text[], %b::float8[], %b::bigint[], %b::bigint[], %b::text[], %b::bigint[],"
        " %b::bigint[], %b::text[], %b::bigint[]) ON CONFLICT DO NOTHING"
        " RETURNING device_id, stream, seq, vital",
        [list(col) for col in c], prepare=True).fetchall()
    return {(str(d), str(s), int(q), str(v)) for d, s, q, v in stored}


def insert_ecg_reading(conn: Conn, device_id: str, user_code: str | None, gateway_id: str | None,
                       vital: str, value: float, ts: int, source: str, now: int,
                       recording: str) -> bool:
    """A reading derived from an ECG recording (identity (device_id, recording, vital));
    False when stored already, or (PostgreSQL) when no partition holds its ts."""
    if conn.is_postgres and not partitions(conn).covers(ts):
        return False
    cur = conn.execute(
        "INSERT INTO readings (device_id, user_code, gateway_id, vital, value, ts, seq,"
        " source, replayed, received_at, recording) VALUES (?, ?, ?, ?, ?, ?, NULL, ?, 0, ?, ?)"
        " ON CONFLICT DO NOTHING",
        (device_id, user_code, gateway_id, vital, value, ts, source, now, recording))
    return bool(cur.rowcount)


def upsert_gateway(conn: Conn, gateway_id: str, online: bool, version: str | None,
                   devices: int | None, buffered: int | None, evicted: int | None,
                   ts: int | None, now: int) -> None:
    conn.execute(
        "INSERT INTO gateways (gateway_id, online, version, devices, buffered, evicted, ts,"
        " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (gateway_id) DO UPDATE"
        " SET online=excluded.online, version=coalesce(excluded.version, gateways.version),"
        " devices=coalesce(excluded.devices, gateways.devices),"
        " buffered=coalesce(excluded.buffered, gateways.buffered),"
        " evicted=coalesce(excluded.evicted, gateways.evicted),"
        " ts=coalesce(excluded.ts, gateways.ts), updated_at=excluded.updated_at",
        (gateway_id, int(online), version, devices, buffered, evicted, ts, now))


def write_probe(conn: Conn, now: int) -> None:
    """A small real write (inside the caller's transaction): fails as a commit would on a full
    or read-only store. It rewrites a row with a page-sized blob, so the commit needs new
    pages (WAL frames), as a batch of readings does."""
    conn.execute("INSERT INTO store_probe (id, at, pad) VALUES (1, ?, ?) ON CONFLICT (id) DO"
                 " UPDATE SET at = excluded.at, pad = excluded.pad", (now, bytes(4096)))


def count(conn: Conn) -> int:
    return int(conn.execute("SELECT count(*) FROM readings").fetchone()[0])


# ----------------------------------------------------------------------------------- reads


def warm_rows(conn: Conn, since_ms: int, limit: int) -> list[tuple[Any, ...]]:
    """Each patient's newest reading per vital (by ts), for patients with a reading measured
    or received at or after ``since_ms``: (user_code, vital, value, ts, received_at)."""
    kept = conn.greatest("ts", "received_at")
    return conn.execute(
        "SELECT user_code, vital, value, ts, received_at FROM (SELECT user_code, vital, value, ts,"
        " received_at, ROW_NUMBER() OVER (PARTITION BY user_code, vital ORDER BY ts DESC, id DESC)"
        " AS n FROM readings WHERE user_code IN (SELECT DISTINCT user_code FROM readings"
        f"  WHERE {kept} >= ? AND user_code IS NOT NULL)) AS newest WHERE n = 1"
        " ORDER BY user_code, vital LIMIT ?", (since_ms, limit)).fetchall()


def record_rows(conn: Conn, user_code: str, vitals: Sequence[str], start: int, end: int,
                with_ecg: bool, page: int, size: int, newest_first: bool
                ) -> tuple[list[tuple[Any, ...]], int]:
    """A patient's rows (readings of ``vitals``, diastolic paired with systolic; ECG recordings
    when ``with_ecg``) with ``start <= ts < end``, paged, and their total."""
    parts: list[str] = []
    args: list[Any] = []
    if vitals:
        marks = ",".join("?" * len(vitals))
        parts.append(
            "SELECT r.id, r.device_id, r.user_code, r.vital, r.value, d.value AS dia, r.ts,"
            " r.source, r.recording, CAST(NULL AS TEXT) AS quality FROM readings r LEFT JOIN readings d ON r.vital = 'systolic_bp'"
            " AND d.device_id = r.device_id AND d.stream = r.stream AND d.seq = r.seq"
            " AND d.vital = 'diastolic_bp'"
            f" WHERE r.user_code = ? AND r.vital IN ({marks}) AND r.ts >= ? AND r.ts < ?")
        args += [user_code, *vitals, start, end]
    if with_ecg:
        parts.append(
            "SELECT id, device_id, user_code, 'ecg', mean_hr, CAST(NULL AS DOUBLE PRECISION), ts,"
            " 'ecg', recording, quality FROM ecg_recordings WHERE user_code = ? AND ts >= ? AND ts < ?")
        args += [user_code, start, end]
    if not parts:
        return [], 0
    union = " UNION ALL ".join(parts)
    total = conn.execute(f"SELECT count(*) FROM ({union}) AS u", args).fetchone()[0]
    order = "DESC" if newest_first else "ASC"
    rows = conn.execute(
        f"SELECT * FROM ({union}) AS u ORDER BY 7 {order}, 1 {order} LIMIT ? OFFSET ?",
        [*args, size, (page - 1) * size],
    ).fetchall()
    return list(rows), int(total)


def latest_row(conn: Conn, user_code: str, vital: str) -> tuple[Any, ...] | None:
    row = conn.execute(
        "SELECT r.id, r.device_id, r.user_code, r.vital, r.value, d.value, r.ts, r.source,"
        " r.recording, NULL FROM readings r LEFT JOIN readings d ON r.vital = 'systolic_bp'"
        " AND d.device_id = r.device_id AND d.stream = r.stream AND d.seq = r.seq"
        " AND d.vital = 'diastolic_bp'"
        " WHERE r.user_code = ? AND r.vital = ? ORDER BY r.ts DESC, r.id DESC LIMIT 1",
        (user_code, vital),
    ).fetchone()
    return None if row is None else tuple(row)


# ------------------------------------------------------------------------------- retention


def expire(conn: Conn, cutoff_ms: int, batch: int) -> int:
    """Delete at most ``batch`` readings kept past ``cutoff_ms`` by the rule
    ``max(ts, received_at) < cutoff`` (event AND processing time past it: nothing accepted is
    deleted before it was kept the retention window), and on PostgreSQL their identities;
    one short transaction. On PostgreSQL, whole partitions go first (:func:`drop_expired_partitions`)."""
    kept = conn.greatest("ts", "received_at")
    if conn.is_postgres:
        return len(conn.execute(
            f"DELETE FROM readings WHERE (id, ts) IN (SELECT id, ts FROM readings WHERE {kept} < ?"
            " LIMIT ?) RETURNING 1", (cutoff_ms, batch)).fetchall())
    return conn.execute(f"DELETE FROM readings WHERE rowid IN (SELECT rowid FROM readings"
                        f" WHERE {kept} < ? LIMIT ?)", (cutoff_ms, batch)).rowcount


def trim_identities(conn: Conn, cutoff_ms: int, batch: int) -> int:
    """PostgreSQL: forget at most ``batch`` stream identities of readings past ``cutoff_ms``
    (the same rule as their readings: ``kept_at = max(ts, received_at)``)."""
    if not conn.is_postgres:
        return 0
    return conn.execute(
        "DELETE FROM reading_ids WHERE (device_id, stream, seq, vital) IN (SELECT device_id,"
        " stream, seq, vital FROM reading_ids WHERE kept_at < ? LIMIT ?)",
        (cutoff_ms, batch)).rowcount


def drop_expired_partitions(conn: Conn, cutoff_ms: int, *,
                            keep_from_ms: int | None = None) -> dict[str, int]:
    """PostgreSQL: DETACH and DROP every partition wholly past ``cutoff_ms``.

    The rule is the readings' (``max(ts, received_at) < cutoff``): a partition is dropped only
    when its whole ts range ends at or before the cutoff (every row's event time is past it)
    AND its newest ``max(ts, received_at)`` is before the cutoff (every row's processing time
    too; read from the ``readings_kept`` expression index). A partition whose range is past
    but which holds a late-arrived row still inside the window is left to :func:`expire`
    (row DELETE). A partition ending after ``keep_from_ms`` (the accepted window's start: a
    reading may still arrive for its day) is kept, even empty. Returns ``{partition name:
    rows dropped}``."""
    if not conn.is_postgres:
        return {}
    limit = cutoff_ms if keep_from_ms is None else min(cutoff_ms, keep_from_ms)
    dropped: dict[str, int] = {}
    with _KNOWN_LOCK:  # read again on the next commit (forgetting a day is always safe)
        _KNOWN_DAYS.pop(_database_key(conn), None)
    for day in partition_days(conn):
        if day + DAY_MS > limit:
            break
        name = partition_name(day)
        newest, n = conn.execute(
            f"SELECT max(GREATEST(ts, received_at)), count(*) FROM {name}").fetchone()
        if newest is not None and int(newest) >= cutoff_ms:
            continue  # a row arrived late and is still kept: DELETE takes the others
        conn.execute(f"ALTER TABLE readings DETACH PARTITION {name}")
        conn.execute(f"DROP TABLE {name}")
        dropped[name] = int(n)
    if dropped:
        log.info("retention: readings partitions dropped (every row past the cutoff by event and"
                 " processing time): %s", ", ".join(f"{k} ({v} rows)" for k, v in dropped.items()))
    return dropped


def received_page(conn: Conn, since_ms: int, limit: int) -> list[StoredReading]:
    """Readings with a patient received (processing time) at or after ``since_ms``, oldest
    first: about ``limit`` rows, never splitting the rows of one ``received_at`` (one message's
    vitals, e.g. a blood pressure's two rows, stay together). The filter on
    ``max(ts, received_at)`` (implied by the received_at one) lets the ``readings_kept`` index
    serve it on both engines."""
    kept = conn.greatest("ts", "received_at")
    where = f"{kept} >= ? AND received_at >= ? AND user_code IS NOT NULL"
    edge = conn.execute(f"SELECT received_at FROM readings WHERE {where}"
                        " ORDER BY received_at, id LIMIT 1 OFFSET ?",
                        (since_ms, since_ms, max(0, limit - 1))).fetchone()
    until = "" if edge is None else " AND received_at <= ?"
    args: tuple[Any, ...] = (since_ms, since_ms) if edge is None else (since_ms, since_ms,
                                                                        int(edge[0]))
    rows = conn.execute(f"SELECT {_COLS} FROM readings WHERE {where}{until}"
                        " ORDER BY received_at, id", args).fetchall()
    return [StoredReading(str(d), u, g, str(v), float(x), int(t), None if q is None else int(q),
                          str(s), bool(rp), int(ra), str(st), int(f))
            for d, u, g, v, x, t, q, s, rp, ra, st, f in rows]
