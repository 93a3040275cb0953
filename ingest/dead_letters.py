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

Functions take an open ``sqlite3.Connection`` and run inside the caller's transaction.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS dead_letters (
  id INTEGER PRIMARY KEY,
  topic TEXT NOT NULL,
  payload BLOB NOT NULL,             -- at most payload_bytes of the payload (its prefix)
  reason TEXT NOT NULL,
  detail TEXT NOT NULL,
  received_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_received ON dead_letters (received_at);

CREATE TABLE IF NOT EXISTS dead_letter_stats (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  rows INTEGER NOT NULL,
  bytes INTEGER NOT NULL,            -- stored bytes: payload prefix + topic + detail
  evicted INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS deliveries (
  topic TEXT NOT NULL,
  sha256 TEXT NOT NULL,
  attempts INTEGER NOT NULL,
  first_at INTEGER NOT NULL,
  last_at INTEGER NOT NULL,
  PRIMARY KEY (topic, sha256)
) WITHOUT ROWID;
"""

#: columns added to a dead_letters table created before the bounds (added by :func:`migrate`).
_ADDED: Final = (
    ("size", "INTEGER"),               # the full payload's size in bytes
    ("sha256", "TEXT"),                # hex SHA-256 of the full payload
    ("repeats", "INTEGER NOT NULL DEFAULT 0"),  # the same letter seen again, not stored again
    ("last_at", "INTEGER"),            # when it was last seen
)
_STORED_BYTES: Final = "(length(CAST({r}.payload AS BLOB)) + length(CAST({r}.topic AS BLOB))" \
                       " + length(CAST({r}.detail AS BLOB)))"
_AFTER_SCHEMA: Final = f"""
CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_identity
  ON dead_letters (sha256, topic, reason, detail) WHERE sha256 IS NOT NULL;
CREATE TRIGGER IF NOT EXISTS dead_letters_counted_in AFTER INSERT ON dead_letters BEGIN
  UPDATE dead_letter_stats SET rows = rows + 1, bytes = bytes + {_STORED_BYTES.format(r="NEW")}
  WHERE id = 1;
END;
CREATE TRIGGER IF NOT EXISTS dead_letters_counted_out AFTER DELETE ON dead_letters BEGIN
  UPDATE dead_letter_stats SET rows = rows - 1, bytes = bytes - {_STORED_BYTES.format(r="OLD")}
  WHERE id = 1;
END;
"""
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


def migrate(conn: sqlite3.Connection) -> None:
    """Bring an existing table up to date (new columns, index, triggers) and recount it."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(dead_letters)")}
    for name, decl in _ADDED:
        if name not in have:
            conn.execute(f"ALTER TABLE dead_letters ADD COLUMN {name} {decl}")
    conn.execute("UPDATE dead_letters SET size = length(CAST(payload AS BLOB)) WHERE size IS NULL")
    # made again at every start, so that a changed trigger replaces the old one
    conn.execute("DROP TRIGGER IF EXISTS dead_letters_counted_in")
    conn.execute("DROP TRIGGER IF EXISTS dead_letters_counted_out")
    conn.executescript(_AFTER_SCHEMA)
    # recount once at start (the triggers keep it exact afterwards, retention deletes included)
    conn.execute(
        "INSERT INTO dead_letter_stats (id, rows, bytes, evicted) SELECT 1, count(*),"
        f" coalesce(sum({_STORED_BYTES.format(r='dead_letters')}), 0),"
        " coalesce((SELECT evicted FROM dead_letter_stats WHERE id = 1), 0) FROM dead_letters"
        " WHERE true ON CONFLICT (id) DO UPDATE SET rows = excluded.rows, bytes = excluded.bytes")


def digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def insert(conn: sqlite3.Connection, letter: DeadLetter, limits: Limits) -> bool:
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
    conn.execute(
        "INSERT INTO dead_letters (topic, payload, reason, detail, received_at, size, sha256,"
        " repeats, last_at) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)",
        (letter.topic, letter.payload[: limits.payload_bytes], letter.reason, detail,
         letter.received_at, len(letter.payload), sha, letter.received_at))
    return True


def stats(conn: sqlite3.Connection) -> Stats:
    row = conn.execute("SELECT rows, bytes, evicted FROM dead_letter_stats WHERE id = 1").fetchone()
    return Stats(*row) if row else Stats(0, 0, 0)


def enforce(conn: sqlite3.Connection, limits: Limits) -> int:
    """Evict the oldest rows until both bounds hold; returns how many were evicted (counted
    in ``dead_letter_stats.evicted`` too)."""
    s = stats(conn)
    excess_rows, excess_bytes = s.rows - limits.max_rows, s.bytes - limits.max_bytes
    if excess_rows <= 0 and excess_bytes <= 0:
        return 0
    # the oldest rows, just enough of them (the cursor stops reading where the loop stops)
    cutoff, n, freed = None, 0, 0
    for row_id, size in conn.execute(
            f"SELECT id, {_STORED_BYTES.format(r='dead_letters')} FROM dead_letters ORDER BY id"):
        if n >= excess_rows and freed >= excess_bytes:
            break
        cutoff, n, freed = row_id, n + 1, freed + int(size)
    evicted = 0
    if cutoff is not None:
        evicted = conn.execute("DELETE FROM dead_letters WHERE id <= ?", (cutoff,)).rowcount
    if evicted:
        conn.execute("UPDATE dead_letter_stats SET evicted = evicted + ? WHERE id = 1", (evicted,))
    return evicted


def list_dead_letters(
    conn: sqlite3.Connection, page: int, size: int, reason: str | None = None, *,
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
    conn: sqlite3.Connection, keys: Iterable[tuple[str, str]], now: int
) -> dict[tuple[str, str], int]:
    """Count one more delivery of each ``(topic, sha256)``; returns the counts."""
    out: dict[tuple[str, str], int] = {}
    for topic, sha in keys:
        row = conn.execute(
            "INSERT INTO deliveries (topic, sha256, attempts, first_at, last_at)"
            " VALUES (?, ?, 1, ?, ?) ON CONFLICT (topic, sha256) DO UPDATE"
            " SET attempts = attempts + 1, last_at = excluded.last_at RETURNING attempts",
            (topic, sha, now, now)).fetchone()
        out[(topic, sha)] = int(row[0])
    return out


def forget_deliveries(conn: sqlite3.Connection, keys: Iterable[tuple[str, str]]) -> None:
    """The messages are committed: they are no longer suspects."""
    conn.executemany("DELETE FROM deliveries WHERE topic = ? AND sha256 = ?", list(keys))


def prune_deliveries(conn: sqlite3.Connection, older_than: int) -> int:
    """Drop counts of messages not seen again since ``older_than`` (retention)."""
    return conn.execute("DELETE FROM deliveries WHERE last_at < ?", (older_than,)).rowcount
