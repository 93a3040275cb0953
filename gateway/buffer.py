"""Store-and-forward: every reading and ECG chunk lives in a local SQLite file until the broker
acknowledged it (PUBACK).

* A reading is committed here, with its per-device sequence number, BEFORE anything publishes
  it; the counter that hands out sequence numbers is a table updated in the same transaction,
  so numbers survive restarts and are never handed out twice.
* WAL journal with ``synchronous=FULL`` by default: every commit is fsynced before ``add_*``
  returns, so a commit survives SIGKILL *and* a power cut. That matters because the gateway
  deletes a watch's history right after its records are committed here: with ``NORMAL`` a power
  cut could roll back the last commits after the watch had already forgotten them. ``NORMAL``
  (durable against process crashes only, fewer fsyncs) is offered for SD cards that wear fast.
* Rows leave only through :meth:`Buffer.ack` (the broker has them) or through eviction when the
  buffer is full: ECG chunks first, then readings, oldest first in each; every evicted row is
  counted in persisted counters and logged (WARNING, rate-limited).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Final, Literal

from vitalgate.contract import EcgChunk, Reading, Source, Vitals

log = logging.getLogger(__name__)

Clock = Callable[[], float]
"""Seconds since the epoch (``time.time``); injected so tests control time."""


class RowKind(IntEnum):
    READING = 0
    ECG = 1


#: eviction order when the buffer is full: ECG chunks are large and can be re-recorded on
#: request; readings feed the early-warning score and go last.
EVICTION_ORDER: Final = (RowKind.ECG, RowKind.READING)

#: at most one eviction WARNING per this many seconds (the count since the last one is in it).
EVICTION_LOG_INTERVAL_S: Final = 60.0

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    added_ms INTEGER NOT NULL,
    size INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_kind ON outbox (kind, id);
CREATE TABLE IF NOT EXISTS device_seq (
    device_id TEXT PRIMARY KEY,
    next_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class BufferError(RuntimeError):
    """The buffer file cannot be opened or written (disk full, not a database …)."""


@dataclass(frozen=True, slots=True)
class Measurement:
    """A reading before the buffer gave it its sequence number."""

    device_id: str
    ts: int
    vitals: Vitals
    source: Source = Source.REALTIME
    user_code: str | None = None


@dataclass(frozen=True, slots=True)
class Row:
    """One buffered message, as the publisher drains it."""

    id: int
    kind: RowKind
    device_id: str
    seq: int
    ts: int
    added_ms: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class BufferStats:
    rows: int
    bytes: int
    readings: int
    ecg: int
    evicted_readings: int
    evicted_ecg: int
    added: int
    acked: int
    oldest_added_ms: int | None

    @property
    def evicted(self) -> int:
        return self.evicted_readings + self.evicted_ecg


class _RateLimitedWarning:
    """Logs at most once per interval, carrying how many events happened since the last line."""

    def __init__(self, interval_s: float, clock: Clock) -> None:
        self._interval = interval_s
        self._clock = clock
        self._last: float | None = None
        self._pending = 0

    def __call__(self, n: int, detail: str) -> None:
        self._pending += n
        now = self._clock()
        if self._last is None or now - self._last >= self._interval:
            log.warning("buffer full: evicted %d rows (%s)", self._pending, detail)
            self._last = now
            self._pending = 0


class Buffer:
    """The store-and-forward SQLite file. Not thread-safe: use it from one thread (the loop)."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_rows: int = 500_000,
        max_bytes: int = 256 * 1024 * 1024,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        clock: Clock = time.time,
    ) -> None:
        if max_rows < 1 or max_bytes < 1:
            raise ValueError("buffer limits must be positive")
        self.path = Path(path)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.synchronous = synchronous
        self._clock = clock
        self._warn = _RateLimitedWarning(EVICTION_LOG_INTERVAL_S, clock)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.executescript(_SCHEMA)
            counts = self._db.execute(
                "SELECT kind, COUNT(*), COALESCE(SUM(size), 0) FROM outbox GROUP BY kind"
            ).fetchall()
        except sqlite3.Error as exc:
            raise BufferError(f"cannot open buffer {self.path}: {exc}") from exc
        self._rows = {RowKind.READING: 0, RowKind.ECG: 0}
        self._bytes = 0
        for kind, n, size in counts:
            self._rows[RowKind(kind)] = int(n)
            self._bytes += int(size)

    # ------------------------------------------------------------------ writing

    def add_readings(self, items: Sequence[Measurement]) -> list[Reading]:
        """Commit readings in ONE transaction, numbering them per device; return them numbered.

        When this returns, the readings are on disk (and a watch may forget them).
        """
        if not items:
            return []
        now_ms = self._now_ms()
        out: list[Reading] = []
        with self._txn():
            for m in items:
                (next_seq,) = self._db.execute(
                    "INSERT INTO device_seq (device_id, next_seq) VALUES (?, 1) "
                    "ON CONFLICT (device_id) DO UPDATE SET next_seq = next_seq + 1 "
                    "RETURNING next_seq",
                    (m.device_id,),
                ).fetchone()
                reading = Reading(
                    device_id=m.device_id,
                    seq=int(next_seq) - 1,
                    ts=m.ts,
                    vitals=m.vitals,
                    source=m.source,
                    user_code=m.user_code,
                )
                self._insert(RowKind.READING, m.device_id, reading.seq, m.ts, now_ms, reading.to_bytes())
                out.append(reading)
            self._evict_if_full()
        return out

    def add_ecg(self, chunk: EcgChunk) -> None:
        with self._txn():
            self._insert(RowKind.ECG, chunk.device_id, chunk.seq, chunk.ts, self._now_ms(), chunk.to_bytes())
            self._evict_if_full()

    def ack(self, row_ids: Iterable[int]) -> int:
        """The broker has these rows: delete them. Returns how many were still here."""
        ids = list(row_ids)
        if not ids:
            return 0
        gone = 0
        # An ack need not be durable (a lost one only means a harmless duplicate later), so it
        # is not fsynced; the next FULL commit syncs the WAL, ack included.
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            gone = self._ack(ids)
        finally:
            self._db.execute(f"PRAGMA synchronous={self.synchronous}")
        return gone

    def _ack(self, ids: list[int]) -> int:
        gone = 0
        with self._txn():
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                marks = ",".join("?" * len(part))
                for kind, size in self._db.execute(
                    f"DELETE FROM outbox WHERE id IN ({marks}) RETURNING kind, size", part
                ).fetchall():
                    self._forget(RowKind(kind), int(size))
                    gone += 1
            self._bump("acked", gone)
        return gone

    # ------------------------------------------------------------------ reading

    def pending(self, after_id: int = 0, limit: int = 100) -> list[Row]:
        """Rows with id > ``after_id`` in insertion order (per device: by seq)."""
        rows = self._db.execute(
            "SELECT id, kind, device_id, seq, ts, added_ms, payload FROM outbox "
            "WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        ).fetchall()
        return [Row(r[0], RowKind(r[1]), r[2], r[3], r[4], r[5], bytes(r[6])) for r in rows]

    def max_id(self) -> int:
        (value,) = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM outbox").fetchone()
        return int(value)

    def next_seq(self, device_id: str) -> int:
        row = self._db.execute("SELECT next_seq FROM device_seq WHERE device_id = ?", (device_id,)).fetchone()
        return int(row[0]) if row else 0

    def __len__(self) -> int:
        return self._rows[RowKind.READING] + self._rows[RowKind.ECG]

    def stats(self) -> BufferStats:
        counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        oldest = self._db.execute("SELECT added_ms FROM outbox ORDER BY id LIMIT 1").fetchone()
        return BufferStats(
            rows=len(self),
            bytes=self._bytes,
            readings=self._rows[RowKind.READING],
            ecg=self._rows[RowKind.ECG],
            evicted_readings=int(counters.get("evicted_reading", 0)),
            evicted_ecg=int(counters.get("evicted_ecg", 0)),
            added=int(counters.get("added", 0)),
            acked=int(counters.get("acked", 0)),
            oldest_added_ms=int(oldest[0]) if oldest else None,
        )

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Buffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _txn(self) -> _Transaction:
        return _Transaction(self)

    def _insert(self, kind: RowKind, device_id: str, seq: int, ts: int, added_ms: int, payload: bytes) -> None:
        self._db.execute(
            "INSERT INTO outbox (kind, device_id, seq, ts, added_ms, size, payload) VALUES (?,?,?,?,?,?,?)",
            (int(kind), device_id, seq, ts, added_ms, len(payload), payload),
        )
        self._rows[kind] += 1
        self._bytes += len(payload)
        self._bump("added", 1)

    def _forget(self, kind: RowKind, size: int) -> None:
        self._rows[kind] -= 1
        self._bytes -= size

    def _bump(self, name: str, n: int) -> None:
        if n:
            self._db.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                (name, n),
            )

    def _over(self) -> bool:
        return len(self) > self.max_rows or self._bytes > self.max_bytes

    def _evict_if_full(self) -> None:
        evicted = {RowKind.READING: 0, RowKind.ECG: 0}
        for kind in EVICTION_ORDER:
            while self._over() and self._rows[kind]:
                # as many rows as the row limit needs; over the byte limit only, one at a time
                # (rows differ in size, and no more is evicted than needed)
                batch = min(max(1, len(self) - self.max_rows), self._rows[kind])
                for (size,) in self._db.execute(
                    "DELETE FROM outbox WHERE id IN "
                    "(SELECT id FROM outbox WHERE kind = ? ORDER BY id LIMIT ?) RETURNING size",
                    (int(kind), batch),
                ).fetchall():
                    self._forget(kind, int(size))
                    evicted[kind] += 1
        if evicted[RowKind.ECG] or evicted[RowKind.READING]:
            self._bump("evicted_ecg", evicted[RowKind.ECG])
            self._bump("evicted_reading", evicted[RowKind.READING])
            self._warn(
                evicted[RowKind.ECG] + evicted[RowKind.READING],
                f"{evicted[RowKind.ECG]} ECG chunks, {evicted[RowKind.READING]} readings now; "
                f"limits {self.max_rows} rows / {self.max_bytes} bytes",
            )


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT; on error ROLLBACK and restore the in-memory counts."""

    def __init__(self, buffer: Buffer) -> None:
        self._b = buffer

    def __enter__(self) -> None:
        b = self._b
        self._saved = (dict(b._rows), b._bytes)
        try:
            b._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise BufferError(f"buffer {b.path}: {exc}") from exc

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        b = self._b
        if exc_type is None:
            try:
                b._db.execute("COMMIT")
                return
            except sqlite3.Error as err:
                b._db.execute("ROLLBACK")
                b._rows, b._bytes = self._saved
                raise BufferError(f"buffer {b.path}: commit failed: {err}") from err
        b._db.execute("ROLLBACK")
        b._rows, b._bytes = self._saved
