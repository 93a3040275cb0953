"""The durable outbox's table: one row per message to deliver, for any channel.

A row is written by :func:`enqueue` inside the caller's transaction (e.g. beside the EWS
history row it announces), and delivered by :class:`ingest.outbox.Outbox`. Columns:

``channel``     which Transport delivers it (``cexup``, ``fhir``, ``hl7``, ...);
``user_code``   the ordering key: a channel delivers one patient's rows in ``id`` order, one
                at a time;
``dedup_key``   unique per channel: enqueueing the same key again is absorbed (returns None);
``body``        the message, as the Transport sends it (text; NUL is refused);
``state``       pending | delivered | failed | local (see :class:`State`);
``attempts``, ``next_at`` (epoch ms, not before), ``status``/``error`` of the last attempt;
``lease_owner``/``lease_until`` an instance delivering the row right now, and until when its
                claim holds: a row claimed by an instance that died is claimed again by any
                instance after ``lease_until``. On PostgreSQL ``lease_until`` is on the
                database's clock (as the partition leases, ``ingest.db.leases``): an instance
                whose own clock runs ahead never takes a row another still holds.

Claiming (:func:`claim`) takes, per channel, the oldest pending row of each patient (never a
later row while an earlier one is pending, leased or not), due and not leased, and leases it in
the same short transaction. On PostgreSQL the candidates are locked with ``FOR UPDATE SKIP
LOCKED``, so instances claiming at once never take the same row; on SQLite the single writer
(``BEGIN IMMEDIATE``) serialises claims.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, NamedTuple

from ingest.db.engine import Conn
from ingest.db.leases import DB_NOW_MS
from ingest.db.migrate import Migration, apply

COMPONENT: Final = "outbox"
#: the table keeps the previous release's name (it held channel cexup only then).
TABLE: Final = "ews_outbox"

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS ews_outbox (
    id           {id},
    channel      TEXT   NOT NULL,
    user_code    TEXT   NOT NULL,
    dedup_key    TEXT   NOT NULL,
    history_id   BIGINT,
    body         TEXT   NOT NULL,
    state        TEXT   NOT NULL,
    attempts     BIGINT NOT NULL DEFAULT 0,
    next_at      BIGINT NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    status       BIGINT,
    error        TEXT,
    lease_owner  TEXT,
    lease_until  BIGINT
);
CREATE UNIQUE INDEX IF NOT EXISTS outbox_dedup ON ews_outbox (channel, dedup_key);
CREATE INDEX IF NOT EXISTS outbox_state ON ews_outbox (channel, state, user_code, id);
"""

class State(StrEnum):
    PENDING = "pending"  #: waiting for (re)delivery, or being delivered (leased)
    DELIVERED = "delivered"  #: the channel's upstream took it
    FAILED = "failed"  #: refused for good; the patient's next row proceeds
    LOCAL = "local"  #: no upstream configured: recorded, never sent


#: the columns the previous release's table (ingest/outbox.py at 345d82a: Cexup's EWS rows
#: only) lacks, with what its rows get.
_ADDED: Final = (
    ("channel", "TEXT NOT NULL DEFAULT 'cexup'"),
    ("dedup_key", "TEXT NOT NULL DEFAULT ''"),
    ("lease_owner", "TEXT"),
    ("lease_until", "BIGINT"),
)


def _from_legacy(conn: Conn) -> None:
    """The previous release's ``ews_outbox`` gains the generic columns: its rows become
    channel ``cexup`` rows with dedup key ``legacy:<id>`` (ids, states and attempts kept)."""
    have = conn.columns(TABLE)
    if not have:
        return  # a new store: the schema creates the table
    for name, decl in _ADDED:
        if name not in have:
            conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN {name} {decl}")
    conn.execute(f"UPDATE {TABLE} SET dedup_key = 'legacy:' || CAST(id AS TEXT) WHERE dedup_key = ''")
    conn.execute("DROP INDEX IF EXISTS ews_outbox_state")  # superseded by outbox_state


MIGRATIONS: Final = (
    Migration(1, "channel-generic outbox: the previous release's rows become channel "
                 "'cexup' (dedup key legacy:<id>), leases for many instances", _from_legacy),
)


def setup(conn: Conn, now: int = 0) -> None:
    """Schema and migrations of the outbox (call inside the store's setup transaction)."""
    apply(conn, COMPONENT, schema=SCHEMA, migrations=MIGRATIONS, now=now, legacy=lambda _c: 0)


def enqueue(
    conn: Conn, *, channel: str, user_code: str, dedup_key: str, body: str | Mapping[str, Any],
    now: int, state: State = State.PENDING, history_id: int | None = None,
) -> int | None:
    """Add one row inside the caller's transaction; its id, or None when the channel already
    holds ``dedup_key`` (the duplicate is absorbed). A mapping body is stored as compact JSON.
    (:func:`enqueue_many` of one row: one statement and one NUL check for both.)"""
    ids = enqueue_many(conn, [Message(channel, user_code, dedup_key, body, state, history_id)],
                       now=now)
    return ids.get((channel, dedup_key))


class Message(NamedTuple):
    """One row to add (:func:`enqueue_many`): :func:`enqueue`'s arguments but ``now``."""

    channel: str
    user_code: str
    dedup_key: str
    body: str | Mapping[str, Any]
    state: State = State.PENDING
    history_id: int | None = None


#: the columns :func:`enqueue_many` writes: (name, PostgreSQL type), for Conn.insert_many.
_ENQUEUE_COLUMNS: Final = (
    ("channel", "text"), ("user_code", "text"), ("dedup_key", "text"), ("history_id", "bigint"),
    ("body", "text"), ("state", "text"), ("next_at", "bigint"), ("created_at", "bigint"),
    ("updated_at", "bigint"))


def enqueue_many(conn: Conn, messages: Sequence[Message], *, now: int) -> dict[tuple[str, str], int]:
    """:func:`enqueue` for many rows in one multi-row statement inside the caller's
    transaction: the ids of the rows added, by (channel, dedup_key); a key the channel holds
    already (or held by an earlier message of the same call) is absorbed and missing. The
    NUL check comes first, for every message: one with NUL raises ValueError (as
    :func:`enqueue`) and nothing of the call is written."""
    values = []
    for m in messages:
        text = m.body if isinstance(m.body, str) else json.dumps(m.body, separators=(",", ":"))
        if "\x00" in text or "\x00" in m.dedup_key or "\x00" in m.user_code or "\x00" in m.channel:
            raise ValueError("outbox: NUL characters cannot be stored")
        values.append((m.channel, m.user_code, m.dedup_key, m.history_id, text, m.state.value,
                       0, now, now))
    returned = conn.insert_many(TABLE, _ENQUEUE_COLUMNS, values,
                                "ON CONFLICT (channel, dedup_key) DO NOTHING"
                                " RETURNING id, channel, dedup_key")
    return {(str(c), str(k)): int(i) for i, c, k in returned}


@dataclass(frozen=True, slots=True)
class Row:
    """One claimed row, as a Transport sees it."""

    id: int
    channel: str
    user_code: str
    dedup_key: str
    body: str
    attempts: int
    created_at: int


#: the oldest pending row of each patient of a channel (leased or not): the only one that may
#: be in flight. Parameters: channel, channel.
_HEADS: Final = (
    "SELECT MIN(id) FROM ews_outbox WHERE channel = ? AND state = 'pending' GROUP BY user_code")


def claim(conn: Conn, channel: str, *, now: int, limit: int, owner: str, lease_ms: int) -> list[Row]:
    """Lease up to ``limit`` due rows of ``channel`` to ``owner`` for ``lease_ms``, oldest
    first: each the oldest pending row of its patient, with no live lease. Run it in its own
    short write transaction. ``now`` (the instance's clock) says which rows are due; whether a
    lease is live is the database's clock on PostgreSQL (one clock for every instance), the
    instance's on SQLite (one process)."""
    args: tuple[Any, ...]
    if conn.is_postgres:
        lock, lease_now, args = " FOR UPDATE OF o SKIP LOCKED", DB_NOW_MS, (channel, now, limit)
    else:
        lock, lease_now, args = "", "?", (channel, now, now, limit)
    rows = conn.execute(
        "SELECT o.id, o.channel, o.user_code, o.dedup_key, o.body, o.attempts, o.created_at"
        " FROM ews_outbox o WHERE o.channel = ? AND o.state = 'pending' AND o.next_at <= ?"
        f" AND (o.lease_until IS NULL OR o.lease_until <= {lease_now})"
        " AND NOT EXISTS (SELECT 1 FROM ews_outbox e WHERE e.channel = o.channel"
        " AND e.user_code = o.user_code AND e.state = 'pending' AND e.id < o.id)"
        f" ORDER BY o.id LIMIT ?{lock}",
        args,
    ).fetchall()
    out = [Row(int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), int(r[5]), int(r[6]))
           for r in rows]
    if out:
        if conn.is_postgres:
            conn.executemany("UPDATE ews_outbox SET lease_owner = ?,"
                             f" lease_until = {DB_NOW_MS} + ? WHERE id = ?",
                             [(owner, lease_ms, r.id) for r in out])
        else:
            conn.executemany("UPDATE ews_outbox SET lease_owner = ?, lease_until = ? WHERE id = ?",
                             [(owner, now + lease_ms, r.id) for r in out])
    return out


def settle(conn: Conn, row_id: int, *, owner: str, state: State, attempts: int, next_at: int,
           now: int, status: int | None, error: str | None) -> bool:
    """Record an attempt's outcome and release the lease; False when ``owner`` no longer holds
    it (its lease expired and another instance claimed the row: that one records)."""
    cur = conn.execute(
        "UPDATE ews_outbox SET state = ?, attempts = ?, next_at = ?, updated_at = ?, status = ?,"
        " error = ?, lease_owner = NULL, lease_until = NULL WHERE id = ? AND lease_owner = ?",
        (state.value, attempts, next_at, now, status, error, row_id, owner))
    return cur.rowcount > 0


def release(conn: Conn, channel: str, owner: str | None) -> int:
    """Drop the leases of ``owner`` (None: every lease) on ``channel``: at start (a previous
    life's claims) and at stop (claims not attempted). Returns how many."""
    if owner is None:
        cur = conn.execute("UPDATE ews_outbox SET lease_owner = NULL, lease_until = NULL"
                           " WHERE channel = ? AND lease_owner IS NOT NULL", (channel,))
    else:
        cur = conn.execute("UPDATE ews_outbox SET lease_owner = NULL, lease_until = NULL"
                           " WHERE channel = ? AND lease_owner = ?", (channel, owner))
    return cur.rowcount


def next_due(conn: Conn, channel: str) -> int | None:
    """When the earliest head of ``channel`` may be claimed (epoch ms: its next_at, or the end
    of another's lease); None when nothing is pending."""
    row = conn.execute(
        "SELECT MIN(CASE WHEN o.lease_until IS NOT NULL AND o.lease_until > o.next_at"
        " THEN o.lease_until ELSE o.next_at END) FROM ews_outbox o"
        f" WHERE o.id IN ({_HEADS})", (channel,)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def counts(conn: Conn, channel: str, now: int) -> dict[str, int]:
    """Rows of ``channel`` by state, plus ``oldest_pending_age_ms`` (processing time since the
    oldest pending row was enqueued; 0 with none) and ``in_flight`` (leased rows)."""
    by_state = {str(s): int(n) for s, n in conn.execute(
        "SELECT state, COUNT(*) FROM ews_outbox WHERE channel = ? GROUP BY state", (channel,))}
    row = conn.execute(
        "SELECT MIN(created_at), COUNT(lease_until) FROM ews_outbox WHERE channel = ? AND state = ?",
        (channel, State.PENDING.value)).fetchone()
    oldest = int(row[0]) if row is not None and row[0] is not None else None
    return {
        "depth": by_state.get(State.PENDING, 0),
        "delivered": by_state.get(State.DELIVERED, 0),
        "failed": by_state.get(State.FAILED, 0),
        "local": by_state.get(State.LOCAL, 0),
        "in_flight": int(row[1]) if row is not None and row[1] is not None else 0,
        "oldest_pending_age_ms": max(0, now - oldest) if oldest is not None else 0,
    }


def failed(conn: Conn, channel: str, limit: int) -> list[dict[str, Any]]:
    """The most recent refused rows of ``channel``, newest first."""
    rows = conn.execute(
        "SELECT id, user_code, body, attempts, status, error, created_at, updated_at"
        " FROM ews_outbox WHERE channel = ? AND state = ? ORDER BY id DESC LIMIT ?",
        (channel, State.FAILED.value, limit)).fetchall()
    return [{"id": int(r[0]), "user_code": r[1], "body": _body(str(r[2])), "attempts": int(r[3]),
             "status": r[4], "error": r[5], "created_at": int(r[6]), "updated_at": int(r[7])}
            for r in rows]


def _body(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def requeue_failed(conn: Conn, channel: str, now: int) -> int:
    cur = conn.execute(
        "UPDATE ews_outbox SET state = ?, next_at = 0, updated_at = ? WHERE channel = ? AND state = ?",
        (State.PENDING.value, now, channel, State.FAILED.value))
    return cur.rowcount


def retention_step(conn: Conn, cutoff_ms: int, batch: int) -> int:
    """Delete at most ``batch`` delivered, local and failed rows (any channel) last updated
    before ``cutoff_ms``. A pending row is never deleted: it has not been delivered yet."""
    cur = conn.execute(
        "DELETE FROM ews_outbox WHERE id IN (SELECT id FROM ews_outbox WHERE state IN (?, ?, ?)"
        " AND updated_at < ? ORDER BY id LIMIT ?)",
        (State.DELIVERED.value, State.LOCAL.value, State.FAILED.value, cutoff_ms, batch))
    return cur.rowcount


def rows(conn: Conn, channel: str | None = None) -> list[dict[str, Any]]:
    """Every row (optionally of one channel) by id: for tests and diagnostics."""
    where, args = ("WHERE channel = ?", (channel,)) if channel is not None else ("", ())
    cur = conn.execute(
        "SELECT id, channel, user_code, dedup_key, body, state, attempts, status, error,"
        f" lease_owner FROM ews_outbox {where} ORDER BY id", args)
    names = ("id", "channel", "user_code", "dedup_key", "body", "state", "attempts", "status",
             "error", "lease_owner")
    return [dict(zip(names, r, strict=True)) for r in cur]
