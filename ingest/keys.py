"""API keys: random 32-byte tokens, shown once at creation, stored as salted SHA-256.

A key is high-entropy random data, so one SHA-256 with a per-key salt is enough (no slow KDF
is needed against guessing); comparison is constant-time. Keys live in the service's SQLite
file (table ``api_keys``); ``vitalgate keys create|list|revoke`` manage them, and
``VITALGATE_API_KEY`` (settings ``api_key``) is accepted besides them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass
from typing import Final

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS api_keys (
  name TEXT PRIMARY KEY,
  salt BLOB NOT NULL,
  hash BLOB NOT NULL,
  created_at INTEGER NOT NULL,
  revoked_at INTEGER
);
"""

NAME_RE: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: how long a verified key is remembered before the table is asked again (so a revocation by
#: another process takes effect within this many seconds).
CACHE_S: Final = 5.0


class ApiKeyError(ValueError):
    pass


def _digest(salt: bytes, key: str) -> bytes:
    return hashlib.sha256(salt + key.encode()).digest()


def create(conn: sqlite3.Connection, name: str, now_ms: int) -> str:
    """Create key ``name`` and return the key (the only time it is ever shown)."""
    if not NAME_RE.match(name):
        raise ApiKeyError(f"key name {name!r} must match {NAME_RE.pattern}")
    row = conn.execute("SELECT revoked_at FROM api_keys WHERE name = ?", (name,)).fetchone()
    if row is not None and row[0] is None:
        raise ApiKeyError(f"key {name!r} already exists (revoke it first)")
    key = "vg_" + secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    conn.execute(
        "INSERT OR REPLACE INTO api_keys (name, salt, hash, created_at, revoked_at)"
        " VALUES (?, ?, ?, ?, NULL)", (name, salt, _digest(salt, key), now_ms),
    )
    return key


def revoke(conn: sqlite3.Connection, name: str, now_ms: int) -> bool:
    cur = conn.execute(
        "UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (now_ms, name)
    )
    return bool(cur.rowcount)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    name: str
    created_at: int
    revoked_at: int | None


def list_keys(conn: sqlite3.Connection) -> list[KeyInfo]:
    rows = conn.execute("SELECT name, created_at, revoked_at FROM api_keys ORDER BY name")
    return [KeyInfo(*r) for r in rows]


def find(conn: sqlite3.Connection, key: str) -> str | None:
    """The name of the active key equal to ``key``, or None."""
    found = None
    for name, salt, digest in conn.execute(
        "SELECT name, salt, hash FROM api_keys WHERE revoked_at IS NULL"
    ):
        if hmac.compare_digest(_digest(salt, key), digest):
            found = name
    return found


class KeyChecker:
    """Verifies presented keys against the settings key and the table, with a short cache."""

    def __init__(self, env_key: str | None) -> None:
        self._env = env_key.encode() if env_key else None
        self._cache: dict[bytes, tuple[str, float]] = {}

    def check_env(self, key: str) -> bool:
        return self._env is not None and hmac.compare_digest(key.encode(), self._env)

    def cached(self, key: str) -> str | None:
        entry = self._cache.get(hashlib.sha256(key.encode()).digest())
        if entry is not None and time.monotonic() - entry[1] < CACHE_S:
            return entry[0]
        return None

    def remember(self, key: str, name: str) -> None:
        if len(self._cache) > 1000:
            self._cache.clear()
        self._cache[hashlib.sha256(key.encode()).digest()] = (name, time.monotonic())
