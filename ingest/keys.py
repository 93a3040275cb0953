"""API keys: random 32-byte tokens, shown once at creation, stored as salted SHA-256, each with
its scopes and an optional ``device_holder`` that limits what it sees.

A key is high-entropy random data, so one SHA-256 with a per-key salt is enough (no slow KDF
is needed against guessing); comparison is constant-time. Keys live in the service's store
(table ``api_keys``, ingest.db.keys: the SQLite file, or the PostgreSQL database every instance
shares); ``vitalgate keys create|list|revoke|retire-bootstrap`` manage them.

Scopes (what a route needs is the table in :mod:`ingest.api.auth`):

* ``read``      the dashboard, medical records, ECG, EWS reads
* ``clinical``  a patient's clinical context (and, later, alert acknowledgement)
* ``platform``  ``POST /ews`` (scores made on the Cexup platform)
* ``admin``     the device registry, dead letters, the EWS outbox, every route not in the table;
                ``admin`` includes the other three.

The bootstrap key ``VITALGATE_API_KEY`` (settings ``api_key``) is an admin key without a
holder. ``vitalgate keys retire-bootstrap`` records in the database that it is no longer
accepted (``--undo`` accepts it again); every running instance sees the change within
:data:`CACHE_S`, like a revocation: a verified key is remembered at most that long, then read
again from the shared table.

Keys created before scopes existed (a table without the ``scopes`` column) are migrated to
``admin``, which is what they could do before: an upgrade must not lock the platform out of
``POST /ews``. :func:`migrate` logs a WARNING naming how many such keys there are; re-issue
them with the scopes they need and revoke the old ones.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from ingest.db import Conn
from ingest.db import keys as db

log = logging.getLogger(__name__)

#: every scope, in the order ``keys list`` prints them.
SCOPES: Final = ("read", "clinical", "platform", "admin")
#: ``admin`` holds every other scope.
ADMIN: Final = "admin"
NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: a device_holder as the registry stores it (registry.Name: 1..128 characters); a key's holder
#: is compared with the devices' ``device_holder`` for equality.
HOLDER_MAX: Final = 128
#: the name the bootstrap key is known by (in logs and ``request`` principals).
BOOTSTRAP: Final = "bootstrap"
#: how long a verified key (and the bootstrap key's retirement state) is remembered before the
#: table is asked again: a revocation or retirement by another process (the CLI) takes effect
#: within this many seconds. 1 s keeps the table read to at most one per key per second.
CACHE_S: Final = 1.0
#: keys remembered at most (the cache is cleared beyond it; a key is then read again).
CACHE_MAX: Final = 1000


class ApiKeyError(ValueError):
    pass


def _digest(salt: bytes, key: str) -> bytes:
    return hashlib.sha256(salt + key.encode()).digest()


def parse_scopes(raw: str | Iterable[str]) -> tuple[str, ...]:
    """``"read,clinical"`` → ``("read", "clinical")`` in :data:`SCOPES` order; ApiKeyError names
    an unknown or missing scope."""
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    wanted = {s.strip().lower() for s in items if s.strip()}
    if not wanted:
        raise ApiKeyError(f"a key needs at least one scope: {', '.join(SCOPES)}")
    unknown = sorted(wanted - set(SCOPES))
    if unknown:
        raise ApiKeyError(f"unknown scope {', '.join(unknown)}: one or more of {', '.join(SCOPES)}")
    return tuple(s for s in SCOPES if s in wanted)


def _check_holder(holder: str | None) -> None:
    if holder is not None and not (1 <= len(holder) <= HOLDER_MAX and holder.strip() == holder):
        raise ApiKeyError(f"holder must be 1..{HOLDER_MAX} characters without surrounding blanks")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is: the key's name, its scopes and the device_holder it is limited to."""

    name: str
    scopes: frozenset[str]
    holder: str | None = None

    def has(self, scope: str) -> bool:
        return scope in self.scopes or ADMIN in self.scopes

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.scopes


BOOTSTRAP_PRINCIPAL: Final = Principal(BOOTSTRAP, frozenset({ADMIN}))


def migrate(conn: Conn) -> int:
    """Add the ``scopes`` and ``holder`` columns to an ``api_keys`` table made before them.
    Existing keys get ``admin`` (what they could do); returns how many active keys did.
    (The store's open runs it as the ``keys`` component's migration, ingest.db.keys.)"""
    return db.upgrade_pre_scopes(conn)


def create(conn: Conn, name: str, now_ms: int, scopes: Iterable[str] = ("read",),
           holder: str | None = None) -> str:
    """Create key ``name`` and return the key (the only time it is ever shown)."""
    if not NAME_RE.fullmatch(name):
        raise ApiKeyError(f"key name {name!r} must match {NAME_RE.pattern}")
    if name == BOOTSTRAP:
        raise ApiKeyError(f"key name {BOOTSTRAP!r} is the settings key's")
    chosen = parse_scopes(scopes)
    _check_holder(holder)
    exists, revoked = db.revoked_at(conn, name)
    if exists and revoked is None:
        raise ApiKeyError(f"key {name!r} already exists (revoke it first)")
    key = "vg_" + secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    if not db.put(conn, name, salt, _digest(salt, key), now_ms, ",".join(chosen), holder):
        raise ApiKeyError(f"key {name!r} already exists (revoke it first)")
    return key


def revoke(conn: Conn, name: str, now_ms: int) -> bool:
    return db.revoke(conn, name, now_ms)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    name: str
    created_at: int
    revoked_at: int | None
    scopes: tuple[str, ...]
    holder: str | None


def list_keys(conn: Conn) -> list[KeyInfo]:
    return [KeyInfo(n, c, r, tuple(s.split(",")), h) for n, c, r, s, h in db.all_keys(conn)]


def find(conn: Conn, key: str) -> Principal | None:
    """The active key equal to ``key``, or None (every active key is compared, in constant
    time each)."""
    found = None
    for name, salt, digest, scopes, holder in db.active(conn):
        if hmac.compare_digest(_digest(salt, key), digest):
            found = Principal(name, frozenset(s for s in scopes.split(",") if s in SCOPES), holder)
    return found


def retire_bootstrap(conn: Conn, now_ms: int, *, undo: bool = False) -> None:
    """Stop (or, with ``undo``, start again) accepting the settings key ``VITALGATE_API_KEY``."""
    if undo:
        db.unretire_bootstrap(conn)
    else:
        db.retire_bootstrap(conn, now_ms)


def bootstrap_retired_at(conn: Conn) -> int | None:
    return db.bootstrap_retired_at(conn)


class KeyChecker:
    """Verifies presented keys against the settings key and the table, with a cache of at most
    :data:`CACHE_S` (``clock`` is monotonic seconds, processing time)."""

    def __init__(self, env_key: str | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._env = env_key.encode() if env_key else None
        self._clock = clock
        self._cache: dict[bytes, tuple[Principal, float]] = {}
        self._retired: tuple[bool, float] | None = None

    def check_env(self, key: str) -> bool:
        """``key`` is the settings key (retired or not: see :meth:`bootstrap_state`)."""
        return self._env is not None and hmac.compare_digest(key.encode(), self._env)

    def bootstrap_state(self) -> bool | None:
        """The remembered retirement of the bootstrap key, or None when it must be read again."""
        if self._retired is not None and self._clock() - self._retired[1] < CACHE_S:
            return self._retired[0]
        return None

    def remember_bootstrap(self, retired: bool) -> None:
        self._retired = (retired, self._clock())

    def cached(self, key: str) -> Principal | None:
        entry = self._cache.get(hashlib.sha256(key.encode()).digest())
        if entry is not None and self._clock() - entry[1] < CACHE_S:
            return entry[0]
        return None

    def remember(self, key: str, principal: Principal) -> None:
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        self._cache[hashlib.sha256(key.encode()).digest()] = (principal, self._clock())

    def forget(self) -> None:
        """Drop every remembered key (a revocation in this process takes effect at once)."""
        self._cache.clear()
        self._retired = None
