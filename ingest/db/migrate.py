"""Versioned schema migrations, applied at start, the same on both engines.

Each component of the store (readings, EWS, outbox, ...) has a version in ``schema_versions``
and an ordered tuple of :class:`Migration` steps. :func:`apply` runs, inside the caller's
write transaction, every step above the recorded version, then the component's
``CREATE … IF NOT EXISTS`` schema, then records the new version. A crash midway rolls the
whole transaction back, so the next start repeats it from the same version.

On PostgreSQL several instances may start at once: a transaction-scoped advisory lock per
component makes them migrate one after the other (the second finds the work done).
A database whose version is newer than this release's is refused: an older release must not
write into a schema it does not know.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from ingest.db.engine import Conn, _statements

VERSIONS_DDL: Final = """
CREATE TABLE IF NOT EXISTS schema_versions (
  component TEXT PRIMARY KEY,
  version BIGINT NOT NULL,
  updated_at BIGINT NOT NULL
);
"""


@dataclass(frozen=True)
class Migration:
    """One step from ``version - 1`` to ``version``; ``why`` says what it changes."""

    version: int
    why: str
    step: Callable[[Conn], None]


class SchemaTooNew(RuntimeError):
    """The database was written by a newer release."""


def current(conn: Conn, component: str) -> int | None:
    """The recorded version of ``component`` (None: never recorded)."""
    if not conn.table_exists("schema_versions"):
        return None
    row = conn.execute("SELECT version FROM schema_versions WHERE component = ?",
                       (component,)).fetchone()
    return None if row is None else int(row[0])


def apply(
    conn: Conn,
    component: str,
    *,
    schema: str,
    migrations: Sequence[Migration] = (),
    now: int = 0,
    legacy: Callable[[Conn], int] | None = None,
) -> int:
    """Bring ``component`` to the last migration's version (0 with none); returns the version
    it had. ``legacy(conn)`` tells the version of a database made before ``schema_versions``
    existed (e.g. SQLite's ``PRAGMA user_version``); without it an unrecorded component is new.
    """
    target = migrations[-1].version if migrations else 0
    if conn.is_postgres:
        conn.execute("SELECT pg_advisory_xact_lock(?)", (zlib.crc32(component.encode()),))
    conn.script(VERSIONS_DDL)
    found = current(conn, component)
    had = found if found is not None else (legacy(conn) if legacy is not None else target)
    if had > target:
        raise SchemaTooNew(f"{component}: store schema version {had} is newer than this "
                           f"vitalgate's ({target}); refusing to run an older release")
    for migration in migrations:
        if had < migration.version:
            migration.step(conn)
    conn.script(_without_existing_indexes(conn, schema) if conn.is_postgres else schema)
    if found != target:
        conn.execute(
            "INSERT INTO schema_versions (component, version, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (component) DO UPDATE SET version = excluded.version,"
            " updated_at = excluded.updated_at",
            (component, target, now))
    return had


_INDEX = re.compile(r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+IF\s+NOT\s+EXISTS\s+(\w+)", re.I)


def _without_existing_indexes(conn: Conn, schema: str) -> str:
    """``schema`` without the ``CREATE INDEX IF NOT EXISTS`` of indexes that exist already.
    PostgreSQL locks the table (SHARE) before it sees that the index exists, so an instance
    starting beside others that are inserting would wait on them and, holding the locks of the
    statements before, deadlock with them (issue 13, h13c: seen restarting a replica)."""
    out = []
    for stmt in _statements(schema):
        body = "\n".join(ln for ln in stmt.splitlines() if not ln.strip().startswith("--"))
        m = _INDEX.match(body.lstrip())
        if m is not None and conn.execute("SELECT to_regclass(?) IS NOT NULL",
                                          (m.group(1),)).fetchone()[0] is True:
            continue
        out.append(stmt if stmt.rstrip().endswith(";") else stmt + ";")
    return "\n".join(out)
