"""The EWS store's tables: ``ews_history``, ``patient_context`` (and the outbox beside them).

Functions take a :class:`Conn` and run inside the caller's transaction; the domain (what a point
is, the emission policy) stays in :mod:`ingest.ews_engine`. Rows are plain tuples in the column
order of :data:`COLUMNS`.

``ews_history.seq`` numbers the points a patient was scored with (source ``vitalgate``): the
point after the one with seq ``n`` has ``n + 1``. It is unique per patient, and the engine
inserts with ``ON CONFLICT DO NOTHING``: when two instances briefly both score a patient (an
ownership handover), both compute the same next seq from the shared history and only the first
commit is recorded; the other is absorbed (:func:`insert_history` returns None) and counted.
External points (``POST /ews``) have no seq.

Store: on SQLite its own file (``ews.sqlite3`` in the data directory, beside the readings
store); on PostgreSQL the same database as the readings store, opened as its own
:class:`Database` named ``ews`` (:func:`open_store`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, NamedTuple
from urllib.parse import urlsplit

from ingest.db import exports, outbox
from ingest.db.engine import Conn, Database, Dialect, Location
from ingest.db.migrate import Migration, apply

COMPONENT: Final = "ews"
FILE_NAME: Final = "ews.sqlite3"

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS patient_context (
    user_code      TEXT PRIMARY KEY,
    consciousness  TEXT   NOT NULL,
    on_oxygen      BIGINT NOT NULL,
    spo2_scale     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS ews_history (
    id          {id},
    user_code   TEXT   NOT NULL,
    point       BIGINT NOT NULL,
    result      TEXT   NOT NULL,
    risk        TEXT   NOT NULL,
    cause       TEXT   NOT NULL,
    partial     BIGINT NOT NULL,
    missing     TEXT   NOT NULL,
    components  TEXT   NOT NULL,
    produce_at  BIGINT NOT NULL,
    emitted_at  BIGINT NOT NULL,
    trigger     TEXT   NOT NULL,
    source      TEXT   NOT NULL,
    seq         BIGINT
);
CREATE INDEX IF NOT EXISTS ews_history_patient ON ews_history (user_code, id);
CREATE INDEX IF NOT EXISTS ews_history_produce_at ON ews_history (user_code, produce_at);
CREATE UNIQUE INDEX IF NOT EXISTS ews_history_seq ON ews_history (user_code, seq);
CREATE UNIQUE INDEX IF NOT EXISTS ews_history_external
    ON ews_history (user_code, produce_at, point, result) WHERE source = 'external';
"""

#: cause, missing: JSON arrays; components: a JSON object; trigger: why it was emitted (first,
#: risk-rise, change, heartbeat, context, external); source: vitalgate (scored here) | external.
COLUMNS: Final = ("id, user_code, point, result, risk, cause, partial, missing, components,"
                  " produce_at, emitted_at, trigger, source, seq")


def _add_seq(conn: Conn) -> None:
    """The previous release's history (no seq): its scored points are numbered by their ids
    (unique and increasing per patient), so the next point continues above them."""
    have = conn.columns("ews_history")
    if not have or "seq" in have:
        return
    conn.execute("ALTER TABLE ews_history ADD COLUMN seq BIGINT")
    conn.execute("UPDATE ews_history SET seq = id WHERE source = 'vitalgate'")


def _unique_external(conn: Conn) -> None:
    """An external point (POST /ews) is recorded once per (user_code, produce_at, point,
    result) by every instance together: copies (none were possible in one process) collapse
    to their first row, then a unique index keeps it so."""
    if not conn.columns("ews_history"):
        return
    conn.execute(
        "DELETE FROM ews_history WHERE source = 'external' AND id NOT IN (SELECT MIN(id)"
        " FROM ews_history WHERE source = 'external' GROUP BY user_code, produce_at, point, result)")


MIGRATIONS: Final = (
    Migration(1, "ews_history.seq: a per-patient emission number, unique, so a duplicate "
                 "emission by two instances is absorbed", _add_seq),
    Migration(2, "an external point is unique per (user_code, produce_at, point, result) "
                 "across instances", _unique_external),
)


def setup(conn: Conn) -> None:
    """The EWS store's schema and migrations: history and context, then the outbox."""
    apply(conn, COMPONENT, schema=SCHEMA, migrations=MIGRATIONS, legacy=lambda _c: 0)
    outbox.setup(conn)
    exports.setup(conn)  # the export channels' high-water marks, beside the outbox


def location(database_url: str | None, data_dir: Path) -> Location:
    """Where the EWS store lives: the PostgreSQL database of ``database_url``; else a SQLite
    file ``ews.sqlite3`` in ``data_dir``, or beside the readings file of a ``sqlite:///`` URL."""
    if database_url and urlsplit(database_url).scheme == "sqlite":
        readings = Location.parse(database_url, default_path=data_dir / FILE_NAME)
        assert readings.path is not None
        return Location(Dialect.SQLITE, path=readings.path.parent / FILE_NAME)
    return Location.parse(database_url, default_path=data_dir / FILE_NAME)


def open_store(where: Location | Path | str | None, data_dir: Path | None = None) -> Database:
    """The EWS store, migrated: a Location; a Path (a SQLite file); or a database URL (or None)
    with the data directory."""
    if isinstance(where, Path):
        loc = Location(Dialect.SQLITE, path=where)
    elif isinstance(where, Location):
        loc = where
    else:
        if data_dir is None:
            raise ValueError("open_store: a database URL needs the data directory")
        loc = location(where, data_dir)
    return Database(loc, setup=setup, name="ews")


# ------------------------------------------------------------------------------- context


def contexts(conn: Conn) -> list[tuple[str, str, bool, int]]:
    """Every stored context: (user_code, consciousness, on_oxygen, spo2_scale)."""
    return [(str(u), str(c), int(o) != 0, int(s)) for u, c, o, s in conn.execute(
        "SELECT user_code, consciousness, on_oxygen, spo2_scale FROM patient_context"
        " ORDER BY user_code")]


def context_of(conn: Conn, user_code: str) -> tuple[str, bool, int] | None:
    row = conn.execute("SELECT consciousness, on_oxygen, spo2_scale FROM patient_context"
                       " WHERE user_code = ?", (user_code,)).fetchone()
    return None if row is None else (str(row[0]), int(row[1]) != 0, int(row[2]))


def save_context(conn: Conn, user_code: str, consciousness: str, on_oxygen: bool,
                 spo2_scale: int, now: int) -> None:
    conn.execute(
        "INSERT INTO patient_context (user_code, consciousness, on_oxygen, spo2_scale, updated_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_code) DO UPDATE SET"
        " consciousness = excluded.consciousness, on_oxygen = excluded.on_oxygen,"
        " spo2_scale = excluded.spo2_scale, updated_at = excluded.updated_at",
        (user_code, consciousness, int(on_oxygen), spo2_scale, now))


# ------------------------------------------------------------------------------- history


def insert_history(
    conn: Conn, *, user_code: str, point: int, result: str, risk: str, cause: Sequence[str],
    partial: bool, missing: Sequence[str], components: dict[str, int], produce_at: int,
    emitted_at: int, trigger: str, source: str, seq: int | None,
) -> int | None:
    """One history row; its id, or None when the patient already has a point ``seq`` (another
    instance recorded this emission first: absorbed). (:func:`insert_history_many` of one row.)"""
    ids = insert_history_many(conn, [HistoryRow(
        user_code, point, result, risk, cause, partial, missing, components, produce_at,
        emitted_at, trigger, source, seq)])
    return next(iter(ids.values()), None)


class HistoryRow(NamedTuple):
    """One scored point to record (:func:`insert_history_many`): the columns of ``ews_history``
    but the id."""

    user_code: str
    point: int
    result: str
    risk: str
    cause: Sequence[str]
    partial: bool
    missing: Sequence[str]
    components: Mapping[str, int]
    produce_at: int
    emitted_at: int
    trigger: str
    source: str
    seq: int | None  #: None: an external point (POST /ews), no emission sequence


#: ews_history's columns as :meth:`Conn.insert_many` takes them: (name, PostgreSQL type).
_INSERT_COLUMNS: Final = (
    ("user_code", "text"), ("point", "bigint"), ("result", "text"), ("risk", "text"),
    ("cause", "text"), ("partial", "bigint"), ("missing", "text"), ("components", "text"),
    ("produce_at", "bigint"), ("emitted_at", "bigint"), ("trigger", "text"), ("source", "text"),
    ("seq", "bigint"))


def insert_history_many(conn: Conn, rows: Sequence[HistoryRow]
                        ) -> dict[tuple[str, int | None], int]:
    """Many scored points in one multi-row statement: the ids of those recorded, by
    (user_code, seq). A row whose patient already has that seq (another instance recorded the
    emission first: absorbed, as :func:`insert_history` returning None) is missing from the
    result. The ids are matched to rows by the (user_code, seq) each RETURNING row names, not
    by position: neither engine promises RETURNING comes back in the order of the VALUES.
    Each (user_code, seq) at most once per call (a second would be absorbed by the first
    within the statement, indistinguishable by key): ValueError."""
    keys = [(r.user_code, r.seq) for r in rows if r.seq is not None]
    if len(set(keys)) != len(keys):
        raise ValueError("insert_history_many: a (user_code, seq) twice in one call")
    returned = conn.insert_many("ews_history", _INSERT_COLUMNS, [
        (r.user_code, r.point, r.result, r.risk, json.dumps(list(r.cause)), int(r.partial),
         json.dumps(list(r.missing)), json.dumps(dict(r.components), sort_keys=True),
         r.produce_at, r.emitted_at, r.trigger, r.source, r.seq) for r in rows],
        "ON CONFLICT DO NOTHING RETURNING id, user_code, seq")
    return {(str(u), None if s is None else int(s)): int(i) for i, u, s in returned}


def by_seq(conn: Conn, user_code: str, seq: int) -> tuple[Any, ...] | None:
    row = conn.execute(f"SELECT {COLUMNS} FROM ews_history WHERE user_code = ? AND seq = ?",
                       (user_code, seq)).fetchone()
    return None if row is None else tuple(row)


def latest(conn: Conn, user_code: str | None = None) -> list[tuple[Any, ...]]:
    """The newest row of each (patient, source), by id (one patient's with ``user_code``):
    the emission state and current score an engine restores."""
    if user_code is None:
        cur = conn.execute(
            f"SELECT {COLUMNS} FROM ews_history WHERE id IN"
            " (SELECT MAX(id) FROM ews_history GROUP BY user_code, source) ORDER BY id")
    else:
        cur = conn.execute(
            f"SELECT {COLUMNS} FROM ews_history WHERE id IN (SELECT MAX(id) FROM ews_history"
            " WHERE user_code = ? GROUP BY source) ORDER BY id", (user_code,))
    return [tuple(r) for r in cur]


def history_page(conn: Conn, user_code: str, *, start: int, end: int, size: int,
                 offset: int) -> tuple[list[tuple[Any, ...]], int]:
    """Rows with ``start <= produce_at <= end``, newest produce_at first (then newest row),
    and their total count."""
    where = "WHERE user_code = ? AND produce_at BETWEEN ? AND ?"
    args = (user_code, start, end)
    total = int(conn.execute(f"SELECT COUNT(*) FROM ews_history {where}", args).fetchone()[0])
    rows = conn.execute(
        f"SELECT {COLUMNS} FROM ews_history {where} ORDER BY produce_at DESC, id DESC"
        " LIMIT ? OFFSET ?", (*args, size, offset)).fetchall()
    return [tuple(r) for r in rows], total


def find_external(conn: Conn, user_code: str, produce_at: int, point: int,
                  result: str) -> tuple[Any, ...] | None:
    """The external row recorded for this (user_code, point, result, produce_at), if any."""
    return find_point(conn, user_code, produce_at, point, result, source="external")


def find_point(conn: Conn, user_code: str, produce_at: int, point: int, result: str, *,
               source: str, risk: str | None = None) -> tuple[Any, ...] | None:
    """The first row of ``source`` recorded for this emission identity (patient, produce_at,
    point, result and, when given, risk), if any."""
    row = conn.execute(
        f"SELECT {COLUMNS} FROM ews_history WHERE user_code = ? AND produce_at = ?"
        " AND point = ? AND result = ? AND source = ?"
        + (" AND risk = ?" if risk is not None else "") + " ORDER BY id LIMIT 1",
        (user_code, produce_at, point, result, source, *(() if risk is None else (risk,)))
    ).fetchone()
    return None if row is None else tuple(row)


#: an emission's identity: (user_code, produce_at, point, result, risk)
PointKey = tuple[str, int, int, str, str]


def find_points(conn: Conn, keys: Sequence[PointKey], *, source: str
                ) -> dict[PointKey, tuple[Any, ...]]:
    """:func:`find_point` for many emissions in one query per 500 patients: the first row of
    ``source`` recorded for each identity, for the identities the history holds."""
    out: dict[PointKey, tuple[Any, ...]] = {}
    wanted = set(keys)
    users = sorted({k[0] for k in wanted})
    times = sorted({k[1] for k in wanted})
    for i in range(0, len(users), 500):
        chunk = users[i:i + 500]
        rows = conn.execute(
            f"SELECT {COLUMNS} FROM ews_history WHERE source = ?"
            f" AND user_code IN ({', '.join('?' * len(chunk))})"
            f" AND produce_at IN ({', '.join('?' * len(times))}) ORDER BY id",
            (source, *chunk, *times)).fetchall()
        for row in rows:
            key = (str(row[1]), int(row[9]), int(row[2]), str(row[3]), str(row[4]))
            if key in wanted and key not in out:
                out[key] = tuple(row)
    return out


def count_history(conn: Conn, source: str | None = None) -> int:
    if source is None:
        return int(conn.execute("SELECT COUNT(*) FROM ews_history").fetchone()[0])
    return int(conn.execute("SELECT COUNT(*) FROM ews_history WHERE source = ?",
                            (source,)).fetchone()[0])


def retention_step(conn: Conn, cutoff_ms: int, batch: int) -> dict[str, int]:
    """At most ``batch`` history rows and contexts older than ``cutoff_ms`` (processing time).
    The newest row of each patient and source is kept whatever its age (the emission state);
    a context is kept while its patient has history inside the window."""
    deleted: dict[str, int] = {}
    cur = conn.execute(
        "DELETE FROM ews_history WHERE id IN (SELECT id FROM ews_history"
        " WHERE emitted_at < ? AND id NOT IN"
        " (SELECT MAX(id) FROM ews_history GROUP BY user_code, source) ORDER BY id LIMIT ?)",
        (cutoff_ms, batch))
    if cur.rowcount:
        deleted["ews_history"] = cur.rowcount
    cur = conn.execute(
        "DELETE FROM patient_context WHERE user_code IN (SELECT c.user_code"
        " FROM patient_context c WHERE c.updated_at < ? AND NOT EXISTS"
        " (SELECT 1 FROM ews_history h WHERE h.user_code = c.user_code"
        " AND h.emitted_at >= ?) ORDER BY c.user_code LIMIT ?)", (cutoff_ms, cutoff_ms, batch))
    if cur.rowcount:
        deleted["patient_context"] = cur.rowcount
    return deleted
