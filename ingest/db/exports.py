"""Export high-water marks: how far each export channel (``fhir``, ``hl7``) has enqueued the
committed readings, kept in the EWS store beside the outbox.

``export_marks(channel, instance, received_at, updated_at)``: per channel and instance, the
newest ``received_at`` (processing time, ms) of the readings whose rows that instance enqueued.
:func:`advance` runs in the SAME transaction as the enqueue of a batch's rows, so a mark never
runs ahead of what the outbox holds. A channel that restarts (or whose enqueue failed) reads
the readings received since its marks minus a margin and enqueues them again
(:mod:`ingest.export_catchup`); the outbox's dedup keys absorb what was there already.

Marks are per instance because instances commit readings side by side on PostgreSQL: one
instance's progress says nothing of another's batch committed but not yet enqueued (or lost
with its process). A catch-up starts from the OLDEST mark of the channel and afterwards raises
every mark of the channel to what it enqueued (an instance that is gone for good then holds no
one back).
"""

from __future__ import annotations

from typing import Final

from ingest.db.engine import Conn
from ingest.db.migrate import Migration, apply

COMPONENT: Final = "export_marks"

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS export_marks (
    channel      TEXT   NOT NULL,
    instance     TEXT   NOT NULL,
    received_at  BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (channel, instance)
);
"""

#: the first release of this table: no step yet (SCHEMA creates it).
MIGRATIONS: Final[tuple[Migration, ...]] = ()


def setup(conn: Conn, now: int = 0) -> None:
    """Schema and migrations (call inside the EWS store's setup transaction)."""
    apply(conn, COMPONENT, schema=SCHEMA, migrations=MIGRATIONS, now=now, legacy=lambda _c: 0)


def oldest(conn: Conn, channel: str) -> int | None:
    """The oldest mark of ``channel`` over its instances; None when it never enqueued."""
    row = conn.execute("SELECT min(received_at) FROM export_marks WHERE channel = ?",
                       (channel,)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def advance(conn: Conn, channel: str, instance: str, received_at: int, now: int) -> None:
    """Raise the mark of (channel, instance) to ``received_at`` (never lowers it)."""
    newest = conn.greatest("export_marks.received_at", "excluded.received_at")
    conn.execute(
        "INSERT INTO export_marks (channel, instance, received_at, updated_at) VALUES (?, ?, ?, ?)"
        f" ON CONFLICT (channel, instance) DO UPDATE SET received_at = {newest},"
        " updated_at = excluded.updated_at", (channel, instance, received_at, now))


def raise_all(conn: Conn, channel: str, received_at: int, now: int) -> int:
    """Raise every mark of ``channel`` below ``received_at`` to it; how many were raised."""
    return conn.execute(
        "UPDATE export_marks SET received_at = ?, updated_at = ? WHERE channel = ?"
        " AND received_at < ?", (received_at, now, channel, received_at)).rowcount
