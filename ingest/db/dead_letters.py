"""The dead-letter table: every message (or item) the consumer rejected, bounded.

What survives of a rejected payload is a capped prefix (``payload_bytes``, default 4 KiB),
its full size and its SHA-256, so that a 10 MB junk message costs 4 KiB, not 10 MB, and can
still be recognised. The table is bounded by rows and by bytes: beyond either bound the oldest
rows are evicted and the eviction is counted (``dead_letter_stats.evicted``, and the
consumer's ``vitalgate_ingest_dead_letters_evicted_total``). A letter identical to one already
kept (same topic, payload digest, reason and detail: e.g. a retained junk status delivered
again at every restart) is not stored again; its row's ``repeats`` is incremented instead.

Also here: ``deliveries``, the redelivery counts of the crash-loop detector (a message the
broker delivers again and again without it ever being committed), committed before the
message is processed so that a crash while processing it still leaves the count.

The table's size (``dead_letter_stats``: rows and stored bytes) is kept by the functions that
insert and delete (:func:`insert`, :func:`enforce`, :func:`expire`), in the same transaction,
on both engines (no trigger: SQLite and PostgreSQL triggers differ), and recounted at start.

Functions take a :class:`ingest.db.Conn` and run inside the caller's transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ingest.db import migrate
from ingest.db.engine import Conn

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS dead_letters (
  id {id},
  topic TEXT NOT NULL,
  payload {blob} NOT NULL,           -- at most payload_bytes of the payload (its prefix)
  reason TEXT NOT NULL,
  detail TEXT NOT NULL,
  received_at BIGINT NOT NULL,
  size BIGINT,                       -- the full payload's size in bytes
  sha256 TEXT,                       -- hex SHA-256 of the full payload
  repeats BIGINT NOT NULL DEFAULT 0, -- the same letter seen again, not stored again
  last_at BIGINT                     -- when it was last seen
);
CREATE INDEX IF NOT EXISTS dead_letters_received ON dead_letters (received_at);

CREATE TABLE IF NOT EXISTS dead_letter_stats (
  id BIGINT PRIMARY KEY CHECK (id = 1),
  rows BIGINT NOT NULL,
  bytes BIGINT NOT NULL,             -- stored bytes: payload prefix + topic + detail
  evicted BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS deliveries (
  topic TEXT NOT NULL,
  sha256 TEXT NOT NULL,
  attempts BIGINT NOT NULL,
  first_at BIGINT NOT NULL,
  last_at BIGINT NOT NULL,
  PRIMARY KEY (topic, sha256)
){without_rowid};
CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_identity
  ON dead_letters (sha256, topic, reason, detail) WHERE sha256 IS NOT NULL;
"""

#: columns added to a dead_letters table created before the bounds (migration 1).
_ADDED: Final = (
    ("size", "BIGINT"),
    ("sha256", "TEXT"),
    ("repeats", "BIGINT NOT NULL DEFAULT 0"),
    ("last_at", "BIGINT"),
)


def _stored_bytes(conn: Conn, r: str) -> str:
    """SQL: the bytes a row costs (payload prefix + topic + detail, as UTF-8)."""
    if conn.is_postgres:
        return f"(octet_length({r}.payload) + octet_length({r}.topic) + octet_length({r}.detail))"
    return (f"(length(CAST({r}.payload AS BLOB)) + length(CAST({r}.topic AS BLOB))"
            f" + length(CAST({r}.detail AS BLOB)))")


def _v1_bounded(conn: Conn) -> None:
    """v0 → v1: the bounded table (size, digest, repeats, last_at); its size is counted by
    this module, not by the SQLite triggers the previous release made (dropped)."""
    have = conn.columns("dead_letters")
    if not have:
        return  # a new database: SCHEMA creates everything
    for name, decl in _ADDED:
        if name not in have:
            conn.execute(f"ALTER TABLE dead_letters ADD COLUMN {name} {decl}")
    conn.execute("UPDATE dead_letters SET size = length(CAST(payload AS BLOB)) WHERE size IS NULL")
    if not conn.is_postgres:
        conn.execute("DROP TRIGGER IF EXISTS dead_letters_counted_in")
        conn.execute("DROP TRIGGER IF EXISTS dead_letters_counted_out")


MIGRATIONS: Final = (migrate.Migration(1, "bounded dead letters, counted without triggers",
                                       _v1_bounded),)


def _legacy(conn: Conn) -> int:
    """A SQLite store of a release before ``schema_versions``: version 0 when it has the table
    (the step is idempotent: it adds only what is missing)."""
    return 0 if conn.table_exists("dead_letters") else MIGRATIONS[-1].version


def setup(conn: Conn, now: int = 0) -> None:
    """The component's migrations and schema, then a recount of its size (exact afterwards:
    every insert and delete of this module counts itself)."""
    migrate.apply(conn, "dead_letters", schema=SCHEMA, migrations=MIGRATIONS, now=now,
                  legacy=_legacy)
    conn.execute(
        "INSERT INTO dead_letter_stats (id, rows, bytes, evicted) SELECT 1, count(*),"
        f" coalesce(sum({_stored_bytes(conn, 'dead_letters')}), 0),"
        " coalesce((SELECT evicted FROM dead_letter_stats WHERE id = 1), 0) FROM dead_letters"
        " WHERE true ON CONFLICT (id) DO UPDATE SET rows = excluded.rows, bytes = excluded.bytes")


#: the longest detail kept (details name the field and the rule, never the payload).
MAX_DETAIL_CHARS: Final = 2000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected message or item: where it came from, its payload and why (``reason`` is a
    short stable label, ``detail`` names what is wrong)."""

    topic: str
    payload: bytes
    reason: str
    detail: str
    received_at: int


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds of the table (``IngestSettings.dead_letter_*``)."""

    payload_bytes: int = 4096
    max_rows: int = 100_000
    max_bytes: int = 64 * 2**20


@dataclass(frozen=True, slots=True)
class Stats:
    rows: int
    bytes: int
    evicted: int


def digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def insert(conn: Conn, letter: DeadLetter, limits: Limits) -> bool:
    """Store ``letter`` (its payload capped); ``False`` when the same letter is already
    kept, whose ``repeats`` is then incremented instead. Call :func:`enforce` afterwards."""
    sha = digest(letter.payload)
    detail = letter.detail[:MAX_DETAIL_CHARS]
    row = conn.execute(
        "SELECT id FROM dead_letters WHERE sha256 = ? AND topic = ? AND reason = ? AND detail = ?",
        (sha, letter.topic, letter.reason, detail)).fetchone()
    if row is not None:
        conn.execute("UPDATE dead_letters SET repeats = repeats + 1, last_at = ? WHERE id = ?",
                     (letter.received_at, row[0]))
        return False
    row = conn.execute(
        "INSERT INTO dead_letters (topic, payload, reason, detail, received_at, size, sha256,"
        f" repeats, last_at) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?) RETURNING {_stored_bytes(conn, 'dead_letters')}",
        (letter.topic, letter.payload[: limits.payload_bytes], letter.reason, detail,
         letter.received_at, len(letter.payload), sha, letter.received_at)).fetchone()
    _count(conn, 1, int(row[0]))
    return True


def insert_many(conn: Conn, letters: Sequence[DeadLetter], limits: Limits) -> list[bool]:
    """:func:`insert` of a batch's letters, in order, in a fixed number of statements: one
    lookup of the letters already kept, one update of their ``repeats``, one insert of the new
    ones (PostgreSQL: ``INSERT … SELECT FROM unnest``; SQLite: in-process, row by row), one
    update of the size. Returns, aligned with ``letters``, which were stored (a letter
    identical to a kept one, or to one earlier in the batch, is a repeat). The same rows and
    counts as calling :func:`insert` on each in turn."""
    if not letters:
        return []
    keys = [(digest(x.payload), x.topic, x.reason, x.detail[:MAX_DETAIL_CHARS]) for x in letters]
    shas = sorted({k[0] for k in keys})
    kept: dict[tuple[str, str, str, str], int] = {}
    for i in range(0, len(shas), 400):
        part = shas[i:i + 400]
        for row_id, sha, topic, reason, detail in conn.execute(
                "SELECT id, sha256, topic, reason, detail FROM dead_letters WHERE sha256 IN"
                f" ({', '.join('?' * len(part))})", part).fetchall():
            kept[(str(sha), str(topic), str(reason), str(detail))] = int(row_id)
    repeats: dict[int, list[int]] = {}  # kept row id -> [repeats to add, last_at]
    new: dict[tuple[str, str, str, str], list[Any]] = {}  # key -> the row to insert
    out: list[bool] = []
    for letter, key in zip(letters, keys, strict=True):
        if key in kept:
            got = repeats.setdefault(kept[key], [0, 0])
            got[0] += 1
            got[1] = letter.received_at
            out.append(False)
        elif key in new:
            row = new[key]
            row[7] += 1  # repeats
            row[8] = letter.received_at  # last_at
            out.append(False)
        else:
            new[key] = [letter.topic, letter.payload[: limits.payload_bytes], letter.reason,
                        key[3], letter.received_at, len(letter.payload), key[0], 0,
                        letter.received_at]
            out.append(True)
    if repeats:
        conn.executemany("UPDATE dead_letters SET repeats = repeats + ?, last_at = ? WHERE id = ?",
                         [(n, at, row_id) for row_id, (n, at) in repeats.items()])
    if new:
        cols = "topic, payload, reason, detail, received_at, size, sha256, repeats, last_at"
        size = _stored_bytes(conn, "dead_letters")
        if conn.is_postgres:
            c = [list(x) for x in zip(*new.values(), strict=True)]
            sizes = [r[0] for r in conn.pg.execute(
                f"INSERT INTO dead_letters ({cols}) SELECT * FROM unnest(%b::text[],"
                " %b::bytea[], %b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::text[],"
                f" %b::bigint[], %b::bigint[]) RETURNING {size}", c).fetchall()]
        else:
            sizes = [conn.execute(f"INSERT INTO dead_letters ({cols}) VALUES (?, ?, ?, ?, ?, ?,"
                                  f" ?, ?, ?) RETURNING {size}", row).fetchone()[0]
                     for row in new.values()]
        _count(conn, len(sizes), sum(int(x) for x in sizes))
    return out


def _count(conn: Conn, rows: int, size: int, evicted: int = 0) -> None:
    conn.execute("UPDATE dead_letter_stats SET rows = rows + ?, bytes = bytes + ?,"
                 " evicted = evicted + ? WHERE id = 1", (rows, size, evicted))


def _delete(conn: Conn, where: str, params: tuple[Any, ...], *, evicted: bool) -> int:
    """Delete the rows ``where`` selects, counting them out; returns how many."""
    rows = conn.execute(f"DELETE FROM dead_letters WHERE {where}"
                        f" RETURNING {_stored_bytes(conn, 'dead_letters')}", params).fetchall()
    if rows:
        n = len(rows)
        _count(conn, -n, -sum(int(r[0]) for r in rows), n if evicted else 0)
    return len(rows)


def expire(conn: Conn, cutoff_ms: int, batch: int) -> int:
    """Retention: delete at most ``batch`` letters received before ``cutoff_ms`` (processing
    time), oldest first; returns how many."""
    return _delete(conn, "id IN (SELECT id FROM dead_letters WHERE received_at < ? ORDER BY id"
                   " LIMIT ?)", (cutoff_ms, batch), evicted=False)


def stats(conn: Conn) -> Stats:
    row = conn.execute("SELECT rows, bytes, evicted FROM dead_letter_stats WHERE id = 1").fetchone()
    return Stats(*row) if row else Stats(0, 0, 0)


def enforce(conn: Conn, limits: Limits) -> int:
    """Evict the oldest rows until both bounds hold; returns how many were evicted (counted
    in ``dead_letter_stats.evicted`` too)."""
    s = stats(conn)
    excess_rows, excess_bytes = s.rows - limits.max_rows, s.bytes - limits.max_bytes
    if excess_rows <= 0 and excess_bytes <= 0:
        return 0
    # the oldest rows, just enough of them (the cursor stops reading where the loop stops)
    cutoff, n, freed = None, 0, 0
    for row_id, size in conn.execute(
            f"SELECT id, {_stored_bytes(conn, 'dead_letters')} FROM dead_letters ORDER BY id"):
        if n >= excess_rows and freed >= excess_bytes:
            break
        cutoff, n, freed = row_id, n + 1, freed + int(size)
    if cutoff is None:
        return 0
    return _delete(conn, "id <= ?", (cutoff,), evicted=True)


def list_dead_letters(
    conn: Conn, page: int, size: int, reason: str | None = None, *,
    with_payload: bool = True,
) -> tuple[list[dict[str, Any]], int]:
    """Newest first. ``with_payload=False`` omits the payload prefix (which may carry patient
    data) and keeps its size and digest."""
    where, args = ("WHERE reason = ?", [reason]) if reason else ("", [])
    total = conn.execute(f"SELECT count(*) FROM dead_letters {where}", args).fetchone()[0]
    rows = conn.execute(
        "SELECT id, topic, payload, reason, detail, received_at, size, sha256, repeats, last_at"
        f" FROM dead_letters {where} ORDER BY id DESC LIMIT ? OFFSET ?",
        [*args, size, (page - 1) * size],
    ).fetchall()
    items = []
    for i, t, p, r, d, at, full, sha, repeats, last_at in rows:
        full = len(p) if full is None else int(full)
        item: dict[str, Any] = {
            "id": i, "topic": t, "size": full, "stored": len(p), "truncated": len(p) < full,
            "sha256": sha, "reason": r, "detail": d, "received_at": at,
            "repeats": int(repeats or 0), "last_at": last_at if last_at is not None else at,
        }
        if with_payload:
            item["payload"] = p[:2048].decode("utf-8", "replace")
        items.append(item)
    return items, int(total)


# ------------------------------------------------------------------------ crash-loop detector


def record_deliveries(
    conn: Conn, keys: Iterable[tuple[str, str]], now: int
) -> dict[tuple[str, str], int]:
    """Count one more delivery of each ``(topic, sha256)``; returns the counts."""
    out: dict[tuple[str, str], int] = {}
    for topic, sha in keys:
        row = conn.execute(
            "INSERT INTO deliveries (topic, sha256, attempts, first_at, last_at)"
            " VALUES (?, ?, 1, ?, ?) ON CONFLICT (topic, sha256) DO UPDATE"
            " SET attempts = deliveries.attempts + 1, last_at = excluded.last_at"
            " RETURNING attempts",
            (topic, sha, now, now)).fetchone()
        out[(topic, sha)] = int(row[0])
    return out


def forget_deliveries(conn: Conn, keys: Iterable[tuple[str, str]]) -> None:
    """The messages are committed: they are no longer suspects."""
    conn.executemany("DELETE FROM deliveries WHERE topic = ? AND sha256 = ?", list(keys))


def prune_deliveries(conn: Conn, older_than: int) -> int:
    """Drop counts of messages not seen again since ``older_than`` (retention)."""
    return conn.execute("DELETE FROM deliveries WHERE last_at < ?", (older_than,)).rowcount
