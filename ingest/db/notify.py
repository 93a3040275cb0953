"""PostgreSQL's LISTEN/NOTIFY, the only SQL the feed needs (ingest/feed.py).

A NOTIFY sent inside a transaction is delivered when, and only if, it commits: the readings'
notification is sent in the commit's own transaction so that a listener never hears of rows
that are not there.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg

from ingest.db.engine import Conn


def notify(conn: Conn, channel: str, payload: str) -> None:
    """Queue ``payload`` on ``channel``, sent at the commit of ``conn``'s transaction."""
    conn.execute("SELECT pg_notify(?, ?)", (channel, payload))


def listen(pg: psycopg.Connection[Any], channels: Iterable[str]) -> None:
    """LISTEN on each channel (names are ours, fixed identifiers, never input)."""
    for channel in channels:
        if not channel.isidentifier():
            raise ValueError(f"channel {channel!r} is not an identifier")
        pg.execute(f"LISTEN {channel}")


def alive(conn: Conn) -> bool:
    """A read the store answers: it is reachable and readable."""
    return conn.execute("SELECT 1").fetchone() is not None
