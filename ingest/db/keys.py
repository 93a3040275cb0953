"""The API keys' tables and SQL (``api_keys``, ``api_key_state``), on both engines.

Key hashing, scopes and the cache are ingest.keys'; this module only reads and writes rows.
Every function runs inside the caller's transaction. Salts and hashes are bytes (``{blob}``:
BLOB / BYTEA).

Several ingest instances share the table on PostgreSQL: a key created, revoked or the
bootstrap key retired by any of them (or by the CLI) is what every other instance reads when
its cache entry expires (ingest.keys.CACHE_S).
"""

from __future__ import annotations

import logging
from typing import Any, Final

from ingest.db.engine import Conn
from ingest.db.migrate import Migration, apply

log = logging.getLogger(__name__)

COMPONENT: Final = "keys"

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS api_keys (
  name TEXT PRIMARY KEY,
  salt {blob} NOT NULL,
  hash {blob} NOT NULL,
  created_at BIGINT NOT NULL,
  revoked_at BIGINT,
  scopes TEXT NOT NULL DEFAULT 'admin',
  holder TEXT
);
CREATE TABLE IF NOT EXISTS api_key_state (
  name TEXT PRIMARY KEY,
  value BIGINT
);
"""

_BOOTSTRAP_RETIRED: Final = "bootstrap_retired_at"


def upgrade_pre_scopes(conn: Conn) -> int:
    """Add the ``scopes`` and ``holder`` columns to an ``api_keys`` table made before them.
    Existing keys get ``admin`` (what they could do); returns how many active keys did."""
    columns = conn.columns("api_keys")
    if not columns or "scopes" in columns:
        return 0
    conn.execute("ALTER TABLE api_keys ADD COLUMN scopes TEXT NOT NULL DEFAULT 'admin'")
    conn.execute("ALTER TABLE api_keys ADD COLUMN holder TEXT")
    legacy_keys = int(conn.execute(
        "SELECT count(*) FROM api_keys WHERE revoked_at IS NULL").fetchone()[0])
    if legacy_keys:
        log.warning("%d API key(s) made before scopes existed now have scope admin (what they "
                    "could do before); re-issue them with `vitalgate keys create NAME --scope ...` "
                    "and revoke the old ones", legacy_keys)
    return legacy_keys


def _v1_scopes(conn: Conn) -> None:
    """v0 → v1: an ``api_keys`` table of a release before scopes gains ``scopes`` (its keys:
    ``admin``) and ``holder``; a new database gets the whole table from SCHEMA."""
    upgrade_pre_scopes(conn)


#: ``keys`` component versions; see ingest.db.migrate.
MIGRATIONS: Final = (Migration(1, "api_keys: scopes (old keys admin) and holder", _v1_scopes),)


def legacy(conn: Conn) -> int:
    """The version of a store made before ``schema_versions``: 1 if its ``api_keys`` has the
    ``scopes`` column (the previous release), 0 otherwise (older, or a new database)."""
    return 1 if "scopes" in conn.columns("api_keys") else 0


def migrate(conn: Conn, now: int = 0) -> int:
    """Bring the keys' tables to this release (at open); returns the version it had."""
    return apply(conn, COMPONENT, schema=SCHEMA, migrations=MIGRATIONS, now=now, legacy=legacy)


def setup(conn: Conn, now: int) -> None:
    """The ``keys`` component of the readings store's setup (ingest.db.schema.COMPONENTS)."""
    migrate(conn, now)


def revoked_at(conn: Conn, name: str) -> tuple[bool, int | None]:
    """``(exists, revoked_at)`` of key ``name``."""
    row = conn.execute("SELECT revoked_at FROM api_keys WHERE name = ?", (name,)).fetchone()
    return (False, None) if row is None else (True, row[0])


def put(conn: Conn, name: str, salt: bytes, digest: bytes, now_ms: int, scopes: str,
        holder: str | None) -> bool:
    """Store key ``name`` (replacing a revoked one of that name); False when an active key of
    that name exists (made meanwhile by a concurrent transaction: the caller's check saw none)."""
    row = conn.execute(
        "INSERT INTO api_keys (name, salt, hash, created_at, revoked_at, scopes, holder)"
        " VALUES (?, ?, ?, ?, NULL, ?, ?)"
        " ON CONFLICT (name) DO UPDATE SET salt = excluded.salt, hash = excluded.hash,"
        " created_at = excluded.created_at, revoked_at = NULL, scopes = excluded.scopes,"
        " holder = excluded.holder WHERE api_keys.revoked_at IS NOT NULL RETURNING name",
        (name, salt, digest, now_ms, scopes, holder)).fetchone()
    return row is not None


def revoke(conn: Conn, name: str, now_ms: int) -> bool:
    return conn.execute("UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                        (now_ms, name)).rowcount > 0


def all_keys(conn: Conn) -> list[tuple[Any, ...]]:
    """``(name, created_at, revoked_at, scopes, holder)`` of every key, by name."""
    return [tuple(r) for r in conn.execute(
        "SELECT name, created_at, revoked_at, scopes, holder FROM api_keys ORDER BY name")]


def active(conn: Conn) -> list[tuple[str, bytes, bytes, str, str | None]]:
    """``(name, salt, hash, scopes, holder)`` of every key not revoked."""
    return [(str(n), bytes(s), bytes(h), str(sc), ho) for n, s, h, sc, ho in conn.execute(
        "SELECT name, salt, hash, scopes, holder FROM api_keys WHERE revoked_at IS NULL")]


def retire_bootstrap(conn: Conn, now_ms: int) -> None:
    """Record that the settings key is retired (the first retirement's time is kept)."""
    conn.execute("INSERT INTO api_key_state (name, value) VALUES (?, ?)"
                 " ON CONFLICT (name) DO NOTHING", (_BOOTSTRAP_RETIRED, now_ms))


def unretire_bootstrap(conn: Conn) -> None:
    conn.execute("DELETE FROM api_key_state WHERE name = ?", (_BOOTSTRAP_RETIRED,))


def bootstrap_retired_at(conn: Conn) -> int | None:
    row = conn.execute("SELECT value FROM api_key_state WHERE name = ?",
                       (_BOOTSTRAP_RETIRED,)).fetchone()
    return None if row is None else int(row[0])
