"""The ingestion service's SQLite store: readings, ECG recordings, dead letters, devices, keys.

One file in the data dir, WAL mode. One writer connection (group commits from the consumer,
registry writes from the API, retention) and one reader connection, each behind a lock and
used from worker threads (``await db.write(fn)`` / ``await db.read(fn)``) so the event loop
never waits on the disk.

Readings are stored one row per vital. Identities that make QoS 1 redeliveries harmless:

* ``(device_id, stream, seq)``: a contract reading is stored once however often it arrives;
  ``stream`` is the gateway buffer's identity (``''`` when a reading carries none: one legacy
  stream per device), so a new buffer's seq 0 is never taken for an old buffer's seq 0;
* ``(device_id, ts, vital)`` for ``source = history``: a history record synced twice
  (under two seqs) is stored once;
* ``(device_id, recording, vital)`` for readings derived from an ECG recording.

ECG chunks wait in ``ecg_chunks`` until chunks ``0..n`` and the ``last`` one are present; they
are then reassembled into one ``ecg_recordings`` row whose ``samples`` are int32 little-endian.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple, TypeVar

import numpy as np

from ingest import dead_letters as dl
from ingest import gaps, registry
from ingest.db import keys as db_keys
from ingest.db import registry as db_registry
from ingest.db.compat import migrate_sqlite
from ingest.dead_letters import DeadLetter as DeadLetter
from vitalgate.contract import (
    MAX_ECG_CHUNK_SEQ,
    DeviceStatus,
    EcgChunk,
    GatewayStatus,
    Reading,
    Source,
    mac_from_device_id,
)

T = TypeVar("T")

#: ``readings.flags``: measured (``ts``) more than ``late_after_ms`` before it arrived
#: (``received_at``): buffered, replayed, a history sync, or a clock behind.
FLAG_LATE: Final = 1
#: late although a live (realtime, not replayed) measurement: the watch's or the gateway's
#: clock is behind; the reading is kept and scored by its own timestamp, but suspect.
FLAG_CLOCK_SUSPECT: Final = 2
#: default of ``IngestSettings.late_after_s`` (ms).
LATE_AFTER_MS: Final = 3_600_000
#: the store's schema version (``PRAGMA user_version``); see :data:`MIGRATIONS`.
SCHEMA_VERSION: Final = 1

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS readings (
  id INTEGER PRIMARY KEY,
  device_id TEXT NOT NULL,
  user_code TEXT,
  gateway_id TEXT,
  vital TEXT NOT NULL,
  value REAL NOT NULL,
  ts INTEGER NOT NULL,
  seq INTEGER,                       -- NULL for readings derived from an ECG recording
  source TEXT NOT NULL,
  replayed INTEGER NOT NULL DEFAULT 0,
  received_at INTEGER NOT NULL,
  recording TEXT,                    -- the ECG recording a derived reading comes from
  stream TEXT NOT NULL DEFAULT '',   -- the buffer's stream ('' = none given: legacy stream)
  flags INTEGER NOT NULL DEFAULT 0   -- FLAG_LATE | FLAG_CLOCK_SUSPECT
);
CREATE UNIQUE INDEX IF NOT EXISTS readings_stream_identity
  ON readings (device_id, stream, seq, vital);
CREATE UNIQUE INDEX IF NOT EXISTS readings_history ON readings (device_id, ts, vital)
  WHERE source = 'history';
CREATE UNIQUE INDEX IF NOT EXISTS readings_ecg ON readings (device_id, recording, vital)
  WHERE recording IS NOT NULL;
CREATE INDEX IF NOT EXISTS readings_patient ON readings (user_code, vital, ts);
CREATE INDEX IF NOT EXISTS readings_ts ON readings (ts);
CREATE INDEX IF NOT EXISTS readings_kept ON readings (max(ts, received_at));

CREATE TABLE IF NOT EXISTS ecg_chunks (
  device_id TEXT NOT NULL,
  recording TEXT NOT NULL,
  seq INTEGER NOT NULL,
  ts INTEGER NOT NULL,
  fs REAL NOT NULL,
  samples BLOB NOT NULL,             -- int32 little-endian
  last INTEGER NOT NULL,
  user_code TEXT,
  gateway_id TEXT,
  received_at INTEGER NOT NULL,
  PRIMARY KEY (device_id, recording, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ecg_chunks_received ON ecg_chunks (received_at);

CREATE TABLE IF NOT EXISTS ecg_recordings (
  id INTEGER PRIMARY KEY,
  device_id TEXT NOT NULL,
  recording TEXT NOT NULL,
  user_code TEXT,
  gateway_id TEXT,
  ts INTEGER NOT NULL,               -- first chunk's ts
  fs REAL NOT NULL,
  n_samples INTEGER NOT NULL,
  samples BLOB NOT NULL,             -- int32 little-endian, all chunks in seq order
  analysis TEXT,                     -- JSON of ews.ecg's EcgSummary, NULL until analysed
  quality TEXT,
  mean_hr REAL,
  created_at INTEGER NOT NULL,
  UNIQUE (device_id, recording)
);
CREATE INDEX IF NOT EXISTS ecg_recordings_patient ON ecg_recordings (user_code, ts);
CREATE INDEX IF NOT EXISTS ecg_recordings_ts ON ecg_recordings (ts);
CREATE INDEX IF NOT EXISTS ecg_recordings_name ON ecg_recordings (recording);
CREATE INDEX IF NOT EXISTS ecg_recordings_kept ON ecg_recordings (max(ts, created_at));

-- recordings refused as too large: their later chunks are dead-lettered, not collected again
CREATE TABLE IF NOT EXISTS ecg_rejected (
  device_id TEXT NOT NULL,
  recording TEXT NOT NULL,
  at INTEGER NOT NULL,
  PRIMARY KEY (device_id, recording)
);

CREATE TABLE IF NOT EXISTS store_probe (   -- one row, rewritten by the health check's write probe
  id INTEGER PRIMARY KEY CHECK (id = 1),
  at INTEGER NOT NULL,
  pad BLOB                           -- a fresh page's worth, so a full disk fails the probe too
);

CREATE TABLE IF NOT EXISTS gateways (
  gateway_id TEXT PRIMARY KEY,
  online INTEGER NOT NULL,
  version TEXT,
  devices INTEGER,
  buffered INTEGER,
  evicted INTEGER,
  ts INTEGER,
  updated_at INTEGER NOT NULL
);
"""

#: Cexup medical-record types → the contract's vitals (BLOOD_PRESSURE pairs two) and units.
RECORD_TYPES: Final[dict[str, tuple[tuple[str, ...], str]]] = {
    "TEMPERATURE": (("temperature",), "°C"),
    "HEART_RATE": (("heart_rate",), "/min"),
    "BLOOD_PRESSURE": (("systolic_bp", "diastolic_bp"), "mmHg"),
    "BLOOD_OXYGEN": (("spo2",), "%"),
    "RESPIRATION": (("respiratory_rate",), "/min"),
}
ECG_TYPE: Final = "ELECTROCARDIOGRAPH"
VITAL_TYPE: Final[dict[str, str]] = {
    "temperature": "TEMPERATURE", "heart_rate": "HEART_RATE", "systolic_bp": "BLOOD_PRESSURE",
    "spo2": "BLOOD_OXYGEN", "respiratory_rate": "RESPIRATION",
}


class StoredReading(NamedTuple):
    """One committed vital (one row of ``readings``)."""

    device_id: str
    user_code: str | None
    gateway_id: str | None
    vital: str
    value: float
    ts: int
    seq: int | None
    source: str
    replayed: bool
    received_at: int


# ------------------------------------------------------------------------- what a batch holds


# DeadLetter lives in ingest.dead_letters (imported above, so store.DeadLetter still names it).
# ``topic``/``payload`` on the items below: the message they came from, for the dead letter
# written when the store refuses them (foreign_device, ecg_too_large, store_error).


@dataclass(frozen=True, slots=True)
class ReadingsIn:
    gateway_id: str
    device_id: str
    readings: list[Reading]
    received_at: int
    topic: str = ""
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class DeviceStatusIn:
    gateway_id: str
    status: DeviceStatus
    received_at: int
    topic: str = ""
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class GatewayStatusIn:
    gateway_id: str
    status: GatewayStatus
    received_at: int


@dataclass(frozen=True, slots=True)
class EcgChunkIn:
    gateway_id: str
    chunk: EcgChunk
    received_at: int
    topic: str = ""
    payload: bytes = b""


Item = DeadLetter | ReadingsIn | DeviceStatusIn | GatewayStatusIn | EcgChunkIn


@dataclass(frozen=True, slots=True)
class CompletedRecording:
    id: int
    device_id: str
    recording: str
    user_code: str | None
    gateway_id: str | None
    ts: int
    fs: float


@dataclass(slots=True)
class CommitResult:
    readings: list[StoredReading] = field(default_factory=list)
    duplicates: int = 0
    dead: list[DeadLetter] = field(default_factory=list)
    recordings: list[CompletedRecording] = field(default_factory=list)
    newest_received: int = 0
    #: per device: the union of the flags of its late readings in this batch
    late: dict[str, int] = field(default_factory=dict)
    #: late readings of the batch by flag ("late", "clock_suspect")
    late_counts: dict[str, int] = field(default_factory=dict)
    gaps: gaps.Update = field(default_factory=gaps.Update)
    #: dead letters already kept (same topic, payload, reason, detail): counted, not stored
    dead_repeats: int = 0
    #: dead letters evicted (oldest first) to keep the table within its bounds
    dead_evicted: int = 0
    #: the table's size after this commit (None when this commit wrote no dead letter)
    dead_stats: dl.Stats | None = None
    #: partial ECG chunks discarded because their recording exceeded the size cap
    ecg_discarded: int = 0

    def merge(self, other: CommitResult) -> None:
        """Add ``other`` (a part of the same transaction) to this result."""
        self.readings += other.readings
        self.duplicates += other.duplicates
        self.dead += other.dead
        self.recordings += other.recordings
        self.newest_received = max(self.newest_received, other.newest_received)
        self.dead_repeats += other.dead_repeats
        self.dead_evicted += other.dead_evicted
        self.dead_stats = other.dead_stats or self.dead_stats
        self.ecg_discarded += other.ecg_discarded
        for device_id, flags in other.late.items():
            self.late[device_id] = self.late.get(device_id, 0) | flags
        for flag, n in other.late_counts.items():
            self.late_counts[flag] = self.late_counts.get(flag, 0) + n
        self.gaps.add(other.gaps)


@dataclass(frozen=True, slots=True)
class EcgLimits:
    """The size cap of one ECG recording (``IngestSettings.ecg_max_*``)."""

    max_chunks: int = MAX_ECG_CHUNK_SEQ + 1
    max_samples: int = 600_000


DEFAULT_ECG_LIMITS: Final = EcgLimits()
DEFAULT_DEAD_LIMITS: Final = dl.Limits()


# --------------------------------------------------------------------------------- database


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class StoreOpenError(RuntimeError):
    """The store cannot be opened for writing (read-only or full data dir, not ours...)."""


class Database:
    """The store's connections. ``write`` runs ``fn(conn)`` in one IMMEDIATE transaction."""

    def __init__(self, path: Path, *, synchronous: str = "FULL") -> None:
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, got {synchronous!r}")
        self.path = path
        self._wlock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = _connect(path, synchronous)
            with self._wlock:
                migrate(self._writer)
                dl.migrate(self._writer)
                # the registry's and the keys' tables and migrations (ingest/db/registry.py, keys.py)
                migrate_sqlite(self._writer, db_registry.migrate, db_keys.migrate)
        except (OSError, sqlite3.OperationalError) as exc:
            raise StoreOpenError(f"store {path} cannot be opened for writing: {exc} (is the"
                                 " data dir read-only or full?)") from exc
        self._reader = _connect(path, synchronous)
        self._rlock = threading.Lock()

    def write_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(conn)`` in one transaction. A failed COMMIT (disk full, read-only) raises its
        own error; the transaction is rolled back only if SQLite left it open."""
        with self._wlock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):  # never hide the real error
                        conn.execute("ROLLBACK")
                raise
            return result

    def read_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._rlock:
            conn = self._reader
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self.write_sync, fn)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self.read_sync, fn)

    def close(self) -> None:
        with self._wlock:
            self._writer.close()
        with self._rlock:
            self._reader.close()


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})")}


def _v1_stream_identity(conn: sqlite3.Connection) -> None:
    """v0 → v1: readings gain ``stream`` ('' for every existing row: the legacy stream) and
    ``flags``; the identity becomes (device_id, stream, seq, vital)."""
    cols = _columns(conn, "readings")
    if not cols:
        return  # a new database: SCHEMA creates everything
    if "stream" not in cols:
        conn.execute("ALTER TABLE readings ADD COLUMN stream TEXT NOT NULL DEFAULT ''")
    if "flags" not in cols:
        conn.execute("ALTER TABLE readings ADD COLUMN flags INTEGER NOT NULL DEFAULT 0")
    conn.execute("DROP INDEX IF EXISTS readings_identity")


#: (version, step): each step brings a database from version-1 to version; idempotent.
MIGRATIONS: Final = ((1, _v1_stream_identity),)


def migrate(conn: sqlite3.Connection, *, now: int = 0) -> int:
    """Bring the database to :data:`SCHEMA_VERSION` (at start, before anything else uses it);
    returns the version it had. A crash midway leaves a state the next start completes."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise RuntimeError(f"{conn!r}: store schema version {version} is newer than this "
                           f"vitalgate's ({SCHEMA_VERSION}); refusing to run an older release")
    existed = bool(_columns(conn, "readings"))
    conn.execute("BEGIN IMMEDIATE")
    try:
        for target, step in MIGRATIONS:
            if version < target:
                step(conn)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.executescript(SCHEMA + dl.SCHEMA + gaps.SCHEMA)
    if version < SCHEMA_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        if existed and version < 1:
            gaps.seed_legacy(conn, now)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    return version


# ------------------------------------------------------------------------------ group commit


def commit_batch(
    conn: sqlite3.Connection, items: Sequence[Item], *, now: int, holder: str,
    dead_limits: dl.Limits = DEFAULT_DEAD_LIMITS,
    ecg_limits: EcgLimits = DEFAULT_ECG_LIMITS,
    late_after_ms: int = LATE_AFTER_MS,
    ward_of: Mapping[str, str] | None = None,
) -> CommitResult:
    """Write one batch of decoded messages (inside the caller's transaction).

    ``ward_of``: gateway id → ward, from ``roaming_groups`` (devices roam within a ward)."""
    out = CommitResult()
    arrivals = gaps.Arrivals()
    ecg_touched: set[tuple[str, str]] = set()
    dead: list[DeadLetter] = []
    items = _owned(conn, items, dead, ward_of or {}, now, holder)
    # statuses first, so that readings of the same batch see a device's newest user_code
    for item in items:
        out.newest_received = max(out.newest_received, item.received_at)
        if isinstance(item, DeadLetter):
            dead.append(item)
        elif isinstance(item, DeviceStatusIn):
            s = item.status
            registry.seen_on_mqtt(conn, s.device_id, gateway_id=item.gateway_id, now=now,
                                  holder=holder, last_seen=s.last_seen, status=s)
        elif isinstance(item, GatewayStatusIn):
            g = item.status
            conn.execute(
                "INSERT INTO gateways (gateway_id, online, version, devices, buffered, evicted, ts,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (gateway_id) DO UPDATE"
                " SET online=excluded.online, version=coalesce(excluded.version, version),"
                " devices=coalesce(excluded.devices, devices),"
                " buffered=coalesce(excluded.buffered, buffered),"
                " evicted=coalesce(excluded.evicted, evicted), ts=coalesce(excluded.ts, ts),"
                " updated_at=excluded.updated_at",
                (item.gateway_id, int(g.online), g.version, g.devices, g.buffered, g.evicted,
                 g.ts, now),
            )
    # one registry touch per device of the batch
    touched: dict[str, tuple[str, int, str | None]] = {}
    for item in items:
        if isinstance(item, ReadingsIn) and item.readings:
            _, seen, code = touched.get(item.device_id, (item.gateway_id, 0, None))
            for r in item.readings:
                seen = max(seen, r.ts)
                code = r.user_code or code
            touched[item.device_id] = (item.gateway_id, seen, code)
        elif isinstance(item, EcgChunkIn):
            _, seen, code = touched.get(item.chunk.device_id, (item.gateway_id, 0, None))
            touched[item.chunk.device_id] = (item.gateway_id, max(seen, item.chunk.ts),
                                             item.chunk.user_code or code)
    assigned: dict[str, tuple[str | None, str | None]] = {}
    for device_id, (gateway_id, seen, code) in touched.items():
        assigned[device_id] = registry.seen_on_mqtt(
            conn, device_id, gateway_id=gateway_id, now=now, holder=holder, last_seen=seen,
            user_code=code)
    for item in items:
        if isinstance(item, ReadingsIn):
            dev_code, dev_source = assigned.get(item.device_id, (None, None))
            for r in item.readings:
                user_code = dev_code if dev_source == "api" else (r.user_code or dev_code)
                _insert_reading(conn, out, item, r, user_code, late_after_ms)
                arrivals.add(r.device_id, r.stream or "", item.gateway_id, r.seq)
        elif isinstance(item, EcgChunkIn):
            dev_code, dev_source = assigned.get(item.chunk.device_id, (None, None))
            code = dev_code if dev_source == "api" else (item.chunk.user_code or dev_code)
            stored = _insert_chunk(conn, item, code, ecg_limits, now)
            if stored is True:
                ecg_touched.add((item.chunk.device_id, item.chunk.recording))
            elif stored is not False:
                discarded, detail = stored
                out.ecg_discarded += discarded
                dead.append(DeadLetter(item.topic, item.payload, "ecg_too_large", detail,
                                       item.received_at))
    for device_id, recording in sorted(ecg_touched):
        done = _assemble(conn, device_id, recording, now)
        if done is not None:
            out.recordings.append(done)
    for letter in dead:
        out.newest_received = max(out.newest_received, letter.received_at)
        if not dl.insert(conn, letter, dead_limits):
            out.dead_repeats += 1
        out.dead.append(letter)
    if dead:
        out.dead_evicted = dl.enforce(conn, dead_limits)
        out.dead_stats = dl.stats(conn)
    out.gaps = gaps.observe(conn, arrivals, now)
    return out


def _device_of(item: Item) -> tuple[str, str] | None:
    """``(device_id, gateway_id)`` of an item about a device."""
    if isinstance(item, ReadingsIn):
        return item.device_id, item.gateway_id
    if isinstance(item, DeviceStatusIn):
        return item.status.device_id, item.gateway_id
    if isinstance(item, EcgChunkIn):
        return item.chunk.device_id, item.gateway_id
    return None


def _owned(conn: sqlite3.Connection, items: Sequence[Item], dead: list[DeadLetter],
           ward_of: Mapping[str, str], now: int, holder: str) -> list[Item]:
    """The items whose device belongs to the gateway they came from; the others become
    ``foreign_device`` dead letters. A device belongs to the gateway that first registered it
    (the first in this batch, for a device not registered yet) or to the one the API assigned,
    or it roamed to a gateway of its owner's ward after the owner reported it disconnected."""
    claims: dict[str, str] = {}
    released: dict[str, bool] = {}  # the owner's newest status in this batch: disconnected?
    kept: list[Item] = []
    for item in items:
        about = _device_of(item)
        if about is not None:
            device_id, gateway_id = about
            # trust on first use, claimed once however many instances race (registry.claim)
            owner = claims.get(device_id) or registry.claim(conn, device_id, gateway_id,
                                                            now=now, holder=holder)
            ward = ward_of.get(gateway_id)
            if (owner is not None and owner != gateway_id and ward is not None
                    and ward_of.get(owner) == ward
                    and released.get(device_id, registry.released_by_owner(conn, device_id))):
                registry.roam(conn, device_id, owner, gateway_id, ward, now)
                released.pop(device_id, None)
                owner = gateway_id
            if owner is not None and owner != gateway_id:
                assert not isinstance(item, DeadLetter | GatewayStatusIn)
                dead.append(DeadLetter(
                    item.topic, item.payload, "foreign_device",
                    f"device {device_id} belongs to gateway {owner!r}, not {gateway_id!r}"
                    " (move it through the API: PUT /api/device/{id} with gateway_id)",
                    item.received_at))
                continue
            claims[device_id] = gateway_id
            if isinstance(item, DeviceStatusIn):
                released[device_id] = not item.status.connected
        kept.append(item)
    return kept


def reading_flags(r: Reading, received_at: int, late_after_ms: int) -> int:
    """``FLAG_LATE`` / ``FLAG_CLOCK_SUSPECT`` of a reading (event time vs processing time)."""
    if received_at - r.ts <= late_after_ms:
        return 0
    live = r.source is Source.REALTIME and not r.replayed
    return FLAG_LATE | (FLAG_CLOCK_SUSPECT if live else 0)


def _insert_reading(
    conn: sqlite3.Connection, out: CommitResult, item: ReadingsIn, r: Reading,
    user_code: str | None, late_after_ms: int = LATE_AFTER_MS,
) -> None:
    stream = r.stream or ""
    if conn.execute(
        "SELECT 1 FROM readings WHERE device_id = ? AND stream = ? AND seq = ? LIMIT 1",
        (r.device_id, stream, r.seq),
    ).fetchone():
        out.duplicates += 1
        return
    stored = 0
    flags = reading_flags(r, item.received_at, late_after_ms)
    for vital, value in r.vitals.present().items():
        cur = conn.execute(
            "INSERT OR IGNORE INTO readings (device_id, user_code, gateway_id, vital, value, ts,"
            " seq, source, replayed, received_at, stream, flags)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (r.device_id, user_code, item.gateway_id, vital, value, r.ts, r.seq, r.source.value,
             int(r.replayed), item.received_at, stream, flags),
        )
        if cur.rowcount:
            stored += 1
            out.readings.append(StoredReading(r.device_id, user_code, item.gateway_id, vital,
                                              value, r.ts, r.seq, r.source.value, r.replayed,
                                              item.received_at))
    if not stored:
        out.duplicates += 1  # a history record already stored under another seq
    elif flags:
        out.late[r.device_id] = out.late.get(r.device_id, 0) | flags
        for name, bit in (("late", FLAG_LATE), ("clock_suspect", FLAG_CLOCK_SUSPECT)):
            if flags & bit:
                out.late_counts[name] = out.late_counts.get(name, 0) + 1


def _insert_chunk(
    conn: sqlite3.Connection, item: EcgChunkIn, user_code: str | None, limits: EcgLimits, now: int,
) -> bool | tuple[int, str]:
    """``True`` when stored, ``False`` when already stored, ``(discarded, detail)`` when the
    recording exceeds the size cap: its partial chunks are deleted (``discarded`` of them) and
    its later chunks are refused too."""
    c = item.chunk
    if conn.execute(
        "SELECT 1 FROM ecg_recordings WHERE device_id = ? AND recording = ?", (c.device_id, c.recording)
    ).fetchone():
        return False  # a chunk of a recording already assembled (redelivery)
    if conn.execute("SELECT 1 FROM ecg_rejected WHERE device_id = ? AND recording = ?",
                    (c.device_id, c.recording)).fetchone():
        return 0, f"recording {c.recording!r} was refused as too large; chunk {c.seq} dropped"
    have, samples = conn.execute(
        "SELECT count(*), coalesce(sum(length(samples)), 0) / 4 FROM ecg_chunks"
        " WHERE device_id = ? AND recording = ? AND seq != ?", (c.device_id, c.recording, c.seq),
    ).fetchone()
    if c.seq >= limits.max_chunks or have + 1 > limits.max_chunks \
            or samples + len(c.samples) > limits.max_samples:
        conn.execute("DELETE FROM ecg_chunks WHERE device_id = ? AND recording = ?",
                     (c.device_id, c.recording))
        conn.execute("INSERT OR IGNORE INTO ecg_rejected (device_id, recording, at) VALUES (?, ?, ?)",
                     (c.device_id, c.recording, now))
        return int(have), (f"recording {c.recording!r} exceeds {limits.max_chunks} chunks or "
                           f"{limits.max_samples} samples (chunk {c.seq}); {have} partial chunks "
                           "discarded")
    cur = conn.execute(
        "INSERT OR IGNORE INTO ecg_chunks (device_id, recording, seq, ts, fs, samples, last,"
        " user_code, gateway_id, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (c.device_id, c.recording, c.seq, c.ts, c.fs,
         np.asarray(c.samples, dtype="<i4").tobytes(), int(c.last), user_code, item.gateway_id,
         item.received_at),
    )
    return bool(cur.rowcount)


def _assemble(
    conn: sqlite3.Connection, device_id: str, recording: str, now: int
) -> CompletedRecording | None:
    count, top, last_seq = conn.execute(
        "SELECT count(*), max(seq), max(CASE WHEN last THEN seq END) FROM ecg_chunks"
        " WHERE device_id = ? AND recording = ?", (device_id, recording),
    ).fetchone()
    if last_seq is None or top != last_seq or count != top + 1:
        return None  # the last chunk or one before it is still missing
    rows = conn.execute(
        "SELECT ts, fs, samples, user_code, gateway_id FROM ecg_chunks"
        " WHERE device_id = ? AND recording = ? ORDER BY seq", (device_id, recording),
    ).fetchall()
    blob = b"".join(r[2] for r in rows)
    user_code = next((r[3] for r in reversed(rows) if r[3]), None)
    gateway_id = rows[-1][4]
    cur = conn.execute(
        "INSERT INTO ecg_recordings (device_id, recording, user_code, gateway_id, ts, fs,"
        " n_samples, samples, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (device_id, recording, user_code, gateway_id, rows[0][0], rows[0][1], len(blob) // 4,
         blob, now),
    )
    conn.execute("DELETE FROM ecg_chunks WHERE device_id = ? AND recording = ?", (device_id, recording))
    return CompletedRecording(int(cur.lastrowid or 0), device_id, recording, user_code, gateway_id,
                              int(rows[0][0]), float(rows[0][1]))


# ------------------------------------------------------------------------------------ ECG


def recording_signal(conn: sqlite3.Connection, rec_id: int) -> np.ndarray[Any, np.dtype[np.int32]]:
    row = conn.execute("SELECT samples FROM ecg_recordings WHERE id = ?", (rec_id,)).fetchone()
    return np.frombuffer(row[0], dtype="<i4").astype(np.int32) if row else np.zeros(0, np.int32)


def save_analysis(
    conn: sqlite3.Connection, rec: CompletedRecording, analysis: dict[str, Any], *,
    quality: str | None, mean_hr: float | None, now: int,
) -> StoredReading | None:
    """Store an ECG summary; when ``mean_hr`` is given (good quality) also store it as a
    ``heart_rate`` reading with source ``ecg``. Returns that reading if new."""
    conn.execute(
        "UPDATE ecg_recordings SET analysis = ?, quality = ?, mean_hr = ? WHERE id = ?",
        (json.dumps(analysis, default=_json_default), quality, mean_hr, rec.id),
    )
    if mean_hr is None:
        return None
    cur = conn.execute(
        "INSERT OR IGNORE INTO readings (device_id, user_code, gateway_id, vital, value, ts, seq,"
        " source, replayed, received_at, recording) VALUES (?, ?, ?, 'heart_rate', ?, ?, NULL, ?, 0, ?, ?)",
        (rec.device_id, rec.user_code, rec.gateway_id, mean_hr, rec.ts, Source.ECG.value, now,
         rec.recording),
    )
    if not cur.rowcount:
        return None
    return StoredReading(rec.device_id, rec.user_code, rec.gateway_id, "heart_rate", mean_hr,
                         rec.ts, None, Source.ECG.value, False, now)


def unanalysed(conn: sqlite3.Connection, limit: int = 100) -> list[CompletedRecording]:
    rows = conn.execute(
        "SELECT id, device_id, recording, user_code, gateway_id, ts, fs FROM ecg_recordings"
        " WHERE analysis IS NULL ORDER BY id LIMIT ?", (limit,),
    ).fetchall()
    return [CompletedRecording(*r) for r in rows]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _recording_json(row: Sequence[Any], with_samples: bool = False) -> dict[str, Any]:
    (rid, device_id, recording, user_code, ts, fs, n, analysis, quality, mean_hr, created) = row[:11]
    out: dict[str, Any] = {
        "id": rid, "recording": recording, "device_mac": mac_from_device_id(device_id),
        "member_id": user_code, "fs": fs, "n_samples": n,
        "duration_s": round(n / fs, 3) if fs else None, "created_at": ts,
        "received_at": created, "quality": quality, "mean_hr": mean_hr,
        "analysis": json.loads(analysis) if analysis else None,
    }
    if with_samples:
        out["samples"] = np.frombuffer(row[11], dtype="<i4").tolist()
    return out


_REC_COLS: Final = ("id, device_id, recording, user_code, ts, fs, n_samples, analysis, quality,"
                    " mean_hr, created_at")


def get_recording(conn: sqlite3.Connection, recording: str) -> dict[str, Any] | None:
    row = conn.execute(
        f"SELECT {_REC_COLS}, samples FROM ecg_recordings WHERE recording = ? ORDER BY id LIMIT 1",
        (recording,),
    ).fetchone()
    return _recording_json(row, with_samples=True) if row else None


def list_recordings(
    conn: sqlite3.Connection, user_code: str, page: int, size: int
) -> tuple[list[dict[str, Any]], int]:
    total = conn.execute("SELECT count(*) FROM ecg_recordings WHERE user_code = ?", (user_code,)).fetchone()[0]
    rows = conn.execute(
        f"SELECT {_REC_COLS} FROM ecg_recordings WHERE user_code = ? ORDER BY ts DESC, id DESC"
        " LIMIT ? OFFSET ?", (user_code, size, (page - 1) * size),
    ).fetchall()
    return [_recording_json(r) for r in rows], int(total)


# ------------------------------------------------------------------------------------ reads


def _record(row: Sequence[Any]) -> dict[str, Any]:
    rid, device_id, user_code, vital, value, dia, ts, source, recording = row
    if vital == "ecg":
        rtype: str = ECG_TYPE
        val: Any = {"recording": recording, "mean_hr": value, "quality": dia}
        unit = None
    elif vital == "systolic_bp":
        rtype, val, unit = "BLOOD_PRESSURE", {"systole": value, "diastole": dia}, "mmHg"
    else:
        rtype = VITAL_TYPE[vital]
        val, unit = value, RECORD_TYPES[rtype][1]
    return {
        "id": rid, "device_mac": mac_from_device_id(device_id), "member_id": user_code,
        "type": rtype, "value": val, "unit": unit,
        "method": "MANUAL" if source == Source.MANUAL.value else "AUTOMATIC",
        "source": source, "created_at": ts,
    }


def records(
    conn: sqlite3.Connection, user_code: str, types: Iterable[str], start: int, end: int,
    page: int, size: int, newest_first: bool = True,
) -> tuple[list[dict[str, Any]], int]:
    """A patient's records of ``types`` with ``start <= created_at < end``, paged."""
    types = list(types)
    vitals = [RECORD_TYPES[t][0][0] for t in types if t in RECORD_TYPES]
    parts: list[str] = []
    args: list[Any] = []
    if vitals:
        marks = ",".join("?" * len(vitals))
        parts.append(
            "SELECT r.id, r.device_id, r.user_code, r.vital, r.value, d.value, r.ts, r.source,"
            " r.recording FROM readings r LEFT JOIN readings d ON r.vital = 'systolic_bp'"
            " AND d.device_id = r.device_id AND d.stream = r.stream AND d.seq = r.seq"
            " AND d.vital = 'diastolic_bp'"
            f" WHERE r.user_code = ? AND r.vital IN ({marks}) AND r.ts >= ? AND r.ts < ?")
        args += [user_code, *vitals, start, end]
    if ECG_TYPE in types:
        parts.append(
            "SELECT id, device_id, user_code, 'ecg', mean_hr, quality, ts, 'ecg', recording"
            " FROM ecg_recordings WHERE user_code = ? AND ts >= ? AND ts < ?")
        args += [user_code, start, end]
    if not parts:
        return [], 0
    union = " UNION ALL ".join(parts)
    total = conn.execute(f"SELECT count(*) FROM ({union})", args).fetchone()[0]
    order = "DESC" if newest_first else "ASC"
    rows = conn.execute(
        f"SELECT * FROM ({union}) ORDER BY 7 {order}, 1 {order} LIMIT ? OFFSET ?",
        [*args, size, (page - 1) * size],
    ).fetchall()
    return [_record(r) for r in rows], int(total)


def latest(conn: sqlite3.Connection, user_code: str) -> dict[str, Any]:
    """Each type's latest record of a patient (``None`` when there is none)."""
    out: dict[str, Any] = {}
    for rtype, (vitals, _) in RECORD_TYPES.items():
        row = conn.execute(
            "SELECT r.id, r.device_id, r.user_code, r.vital, r.value, d.value, r.ts, r.source,"
            " r.recording FROM readings r LEFT JOIN readings d ON r.vital = 'systolic_bp'"
            " AND d.device_id = r.device_id AND d.stream = r.stream AND d.seq = r.seq"
            " AND d.vital = 'diastolic_bp'"
            " WHERE r.user_code = ? AND r.vital = ? ORDER BY r.ts DESC, r.id DESC LIMIT 1",
            (user_code, vitals[0]),
        ).fetchone()
        out[rtype] = _record(row) if row else None
    row = conn.execute(
        f"SELECT {_REC_COLS} FROM ecg_recordings WHERE user_code = ? ORDER BY ts DESC, id DESC LIMIT 1",
        (user_code,),
    ).fetchone()
    out[ECG_TYPE] = _recording_json(row) if row else None
    return out


#: rows :func:`warm_items` returns at most (one per patient and vital: ~30,000 patients).
WARM_MAX_ROWS: Final = 200_000


@dataclass(frozen=True, slots=True)
class WarmItems:
    """What a restarted engine is fed: ``items`` (user_code, vital, value, ts) and, aligned with
    them, when each arrived (``received_at``, processing time); ``truncated`` when the bound
    cut the selection short."""

    items: list[tuple[str, str, float, int]]
    arrived: list[int]
    truncated: bool = False


def warm_items(conn: sqlite3.Connection, since_ms: int, window_ms: int,
               max_rows: int = WARM_MAX_ROWS) -> WarmItems:
    """Each live patient's newest value per vital, on the patient's own event clock.

    Live: a reading measured or received at or after ``since_ms`` (``max(ts, received_at)``,
    served by the ``readings_kept`` index), so a replayed or late-stamped patient (measured
    hours ago, received just now) counts. Kept: the newest value of each vital measured at
    most ``window_ms`` before that patient's newest reading (event time, as the scorer's
    freshness). At most ``max_rows`` rows (``truncated`` says when more were there)."""
    rows = conn.execute(
        "SELECT user_code, vital, value, max(ts), received_at FROM readings"
        " WHERE user_code IN (SELECT DISTINCT user_code FROM readings"
        "  WHERE max(ts, received_at) >= ? AND user_code IS NOT NULL)"
        " GROUP BY user_code, vital LIMIT ?", (since_ms, max_rows + 1),
    ).fetchall()
    truncated = len(rows) > max_rows
    rows = rows[:max_rows]
    newest: dict[str, int] = {}
    for u, _v, _x, t, _r in rows:
        newest[u] = max(newest.get(u, t), t)
    kept = [(str(u), str(v), float(x), int(t), int(r)) for u, v, x, t, r in rows
            if t >= newest[u] - window_ms]
    return WarmItems([k[:4] for k in kept], [k[4] for k in kept], truncated)


def dead_letters(
    conn: sqlite3.Connection, page: int, size: int, reason: str | None = None, *,
    with_payload: bool = True,
) -> tuple[list[dict[str, Any]], int]:
    """The dead letters, newest first (see :func:`ingest.dead_letters.list_dead_letters`)."""
    return dl.list_dead_letters(conn, page, size, reason, with_payload=with_payload)


def write_probe(conn: sqlite3.Connection, now: int) -> None:
    """A small real write (inside the caller's transaction): fails as a commit would on a full
    or read-only store. It rewrites a row with a page-sized blob, so the commit needs new
    pages (WAL frames), as a batch of readings does."""
    conn.execute("INSERT OR REPLACE INTO store_probe (id, at, pad) VALUES (1, ?, zeroblob(4096))",
                 (now,))


def count_readings(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM readings").fetchone()[0])


# ---------------------------------------------------------------------------------- retention

#: (table, age expression) pairs retention deletes from. Rows measured long before they arrived
#: (a clock behind, a long-buffered history) are kept by the LATER of measurement and arrival
#: time, so nothing accepted is deleted before it was kept ``retention_days`` (expression
#: indexes ``readings_kept`` / ``ecg_recordings_kept`` serve the exact expression).
RETAINED: Final = (
    ("readings", "max(ts, received_at)"),
    ("ecg_recordings", "max(ts, created_at)"),
    ("ecg_chunks", "received_at"),
    ("dead_letters", "received_at"),
    ("ecg_rejected", "at"),
)


def retention_step(conn: sqlite3.Connection, cutoff_ms: int, batch: int) -> dict[str, int]:
    """Delete at most ``batch`` rows per table whose age expression is before ``cutoff_ms``
    (both processing time and, for readings and recordings, event time); one short transaction."""
    deleted: dict[str, int] = {}
    for table, column in RETAINED:
        key = "rowid"
        cur = conn.execute(
            f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} WHERE {column} < ?"
            f" LIMIT ?)" if table != "ecg_chunks" else
            f"DELETE FROM {table} WHERE (device_id, recording, seq) IN (SELECT device_id,"
            f" recording, seq FROM {table} WHERE {column} < ? LIMIT ?)",
            (cutoff_ms, batch),
        )
        if cur.rowcount:
            deleted[table] = cur.rowcount
    return deleted
