"""The bridge while ``ingest.store.Database`` still hands out raw ``sqlite3`` connections.

The registry, keys and ward queries (ingest/db/registry.py, keys.py, ward.py) take a
:class:`~ingest.db.Conn`; until the store is wired onto :class:`~ingest.db.Database`
(h13a's ``store-wiring``) their callers may hold a raw ``sqlite3.Connection``. :func:`as_conn`
wraps one (and passes a ``Conn`` through), so that the same code runs before and after; once
every store is a ``Database``, ``as_conn`` is the identity and can go.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TypeAlias

from ingest.db.engine import Conn, Dialect

#: what the callers of ingest/db's registry/keys/ward functions may hold today.
AnyConn: TypeAlias = Conn | sqlite3.Connection


def as_conn(conn: AnyConn) -> Conn:
    """``conn`` as a :class:`Conn` (a raw SQLite connection is wrapped, a Conn passed on)."""
    return conn if isinstance(conn, Conn) else Conn(conn, Dialect.SQLITE)


def migrate_sqlite(raw: sqlite3.Connection, *steps: Callable[[Conn], object]) -> None:
    """Run the components' migrations ``steps`` in one IMMEDIATE transaction on a raw SQLite
    connection in autocommit mode (``ingest.store.Database``'s writer at open)."""
    raw.execute("BEGIN IMMEDIATE")
    try:
        conn = Conn(raw, Dialect.SQLITE)
        for step in steps:
            step(conn)
        raw.execute("COMMIT")
    except BaseException:
        if raw.in_transaction:
            raw.execute("ROLLBACK")
        raise
