"""Store-and-forward: every reading and ECG chunk lives in a local SQLite file until the broker
acknowledged it (PUBACK), and readings stay a while longer so a gap can be refilled.

* A reading is committed here, with its per-device sequence number, BEFORE anything publishes
  it; the counter that hands out sequence numbers is a table updated in the same transaction,
  so numbers survive restarts and are never handed out twice.
* Every buffer file has a **stream identity**, 64 random bits made when the file is created
  (Sparkplug's bdSeq plays this part there) and stored in it. Readings carry
  ``(device_id, stream, seq)``: a deleted, re-imaged or replaced buffer starts a new stream
  from seq 0 instead of colliding with the old one's numbers.
* WAL journal with ``synchronous=FULL`` by default: every commit is fsynced before ``add_*``
  returns, so a commit survives SIGKILL *and* a power cut. That matters because the gateway
  deletes a watch's history right after its records are committed here: with ``NORMAL`` a power
  cut could roll back the last commits after the watch had already forgotten them. ``NORMAL``
  (durable against process crashes only, fewer fsyncs) is offered for SD cards that wear fast.
* Rows leave the outbox through :meth:`Buffer.ack` (the broker has them): ECG chunks are
  deleted, readings are *kept* (marked acknowledged) for a bounded window (rows and age) so that
  a ``republish`` command can send a range again (:meth:`Buffer.readings_range`). When the
  buffer is full, kept rows go first (no loss: the broker had them), then ECG chunks, then
  readings, oldest first in each; every evicted unacknowledged row is counted in persisted
  counters and logged (WARNING, rate-limited).
* A write that fails (a full disk, an I/O error) is reported as itself (:class:`DiskFull` or
  :class:`BufferError`), rolled back if SQLite has not already done so, and the in-memory
  counts are re-read from the file, so they never drift. The buffer is then in the named state
  ``disk_full`` (or ``write_error``) until a write succeeds again; that state is logged once
  when it starts and once when it ends. Nothing is evicted to make room on a full disk: the
  limits are row and byte counts, the disk is the operator's (readings wait on the watch).
* A file that is not a database or fails SQLite's ``quick_check`` is a :class:`CorruptBuffer`;
  :meth:`Buffer.open_or_reset` moves it aside (``buffer.sqlite3.corrupt-<UTC time>``, with its
  WAL), starts a fresh buffer (a new stream) and salvages what it can still read
  (:meth:`Buffer.salvage`), so a bad file never makes the gateway loop on start-up.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import ValidationError

from vitalgate.clock import SYSTEM, TimeReader, epoch_ms
from vitalgate.contract import STREAM_RE, EcgChunk, Reading, Source, Vitals

log = logging.getLogger(__name__)


class RowKind(IntEnum):
    READING = 0
    ECG = 1


#: eviction order of unacknowledged rows when the buffer is full: ECG chunks are large and can
#: be re-recorded on request; readings feed the early-warning score and go last. (Kept,
#: acknowledged readings go before either: the broker already has them.)
EVICTION_ORDER: Final = (RowKind.ECG, RowKind.READING)

#: at most one eviction WARNING per this many seconds (the count since the last one is in it).
EVICTION_LOG_INTERVAL_S: Final = 60.0

#: acknowledged readings kept for ``republish`` by default: about 3 h of five watches sending a
#: real-time reading every 5 s (5 × 720/h × 3 h ≈ 11 k), ~3 MB; ingest asks within minutes.
KEEP_ACKED_ROWS: Final = 10_000
#: … and at most this long after their PUBACK (a gap older than this is not refilled).
KEEP_ACKED_S: Final = 6 * 3600.0

#: salvage reads a damaged file in id ranges of this size; a range that fails is read row by row.
SALVAGE_BATCH: Final = 256
#: salvage gives up after this many unreadable ids in a row (the rest of the file is gone).
SALVAGE_MAX_BAD_RUN: Final = 10_000

#: a full disk often has room for a moment (an ack freed a page, the WAL restarted): a storage
#: episode (one WARNING when it starts) ends, with one INFO line, only once writes have kept
#: succeeding for this long (seconds) after the last failure.
STORAGE_RECOVERED_S: Final = 30.0

#: the storage states shown in status (``buffer.state``).
State = Literal["ok", "disk_full", "write_error"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    added_ms INTEGER NOT NULL,
    size INTEGER NOT NULL,
    payload BLOB NOT NULL,
    stream TEXT,
    acked_ms INTEGER
);
CREATE TABLE IF NOT EXISTS device_seq (
    device_id TEXT PRIMARY KEY,
    next_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

#: columns added since the first release (a buffer from then is upgraded in place).
_ADDED_COLUMNS: Final = (("stream", "TEXT"), ("acked_ms", "INTEGER"))

_INDEXES: Final = """
DROP INDEX IF EXISTS outbox_kind;
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (kind, id) WHERE acked_ms IS NULL;
DROP INDEX IF EXISTS outbox_kept;
CREATE INDEX IF NOT EXISTS outbox_kept_age ON outbox (acked_ms, id) WHERE acked_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_device_seq ON outbox (device_id, stream, seq) WHERE kind = 0;
"""


class BufferError(RuntimeError):
    """The buffer file cannot be opened, read or written (I/O error, not a database …)."""


class DiskFull(BufferError):
    """A write failed because the disk (or the file's page limit) is full."""


class CorruptBuffer(BufferError):
    """The file is not a database or SQLite finds it damaged ("database disk image is malformed")."""


_CORRUPT_CODES: Final = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


def _is_corrupt(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) in _CORRUPT_CODES


def _is_full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def new_stream_id() -> str:
    """64 random bits as 16 lower-case hex digits (``contract.STREAM_RE``)."""
    return secrets.token_hex(8)


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
    kept: int = 0
    kept_bytes: int = 0
    salvaged: int = 0

    @property
    def evicted(self) -> int:
        return self.evicted_readings + self.evicted_ecg


@dataclass(frozen=True, slots=True)
class SalvageResult:
    """What :meth:`Buffer.salvage` got out of a damaged file."""

    source: str
    read: int = 0
    imported: int = 0
    already_here: int = 0
    invalid: int = 0
    unreadable: int = 0
    complete: bool = True


class _RateLimitedWarning:
    """Logs at most once per interval, carrying how many events happened since the last line."""

    def __init__(self, interval_s: float, clock: TimeReader) -> None:
        self._interval = interval_s
        self._clock = clock
        self._last: float | None = None
        self._pending = 0

    def __call__(self, n: int, detail: str) -> None:
        self._pending += n
        now = self._clock.wall()
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
        keep_acked_rows: int = KEEP_ACKED_ROWS,
        keep_acked_s: float = KEEP_ACKED_S,
        clock: TimeReader = SYSTEM,
    ) -> None:
        if max_rows < 1 or max_bytes < 1:
            raise ValueError("buffer limits must be positive")
        if keep_acked_rows < 0 or keep_acked_s < 0:
            raise ValueError("the kept-acknowledged window cannot be negative")
        self.path = Path(path)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.synchronous = synchronous
        self.keep_acked_rows = keep_acked_rows
        self.keep_acked_s = keep_acked_s
        self._clock = clock
        self._warn = _RateLimitedWarning(EVICTION_LOG_INTERVAL_S, clock)
        self._rows = {RowKind.READING: 0, RowKind.ECG: 0}
        self._bytes = 0
        self._kept = 0
        self._kept_bytes = 0
        #: the storage state: ``ok`` until a write fails; back to ``ok`` on the next good write.
        self.state: State = "ok"
        self.last_error: str | None = None
        self.state_since_ms: int | None = None
        #: writes that failed (each one rolled back; nothing half-written).
        self.write_failures = 0
        self._txn_added = 0  # rows inserted by the open transaction
        self._episode_failures = 0  # failures in the open storage episode (0: none open)
        self._last_failure_s = 0.0
        #: set by :meth:`open_or_reset`: the damaged file set aside at start-up, and its salvage.
        self.set_aside: Path | None = None
        self.salvage_result: SalvageResult | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise BufferError(f"cannot open buffer {self.path}: {exc}") from exc
        try:
            self._open()
        except sqlite3.Error as exc:
            self._db.close()
            cls = CorruptBuffer if _is_corrupt(exc) else BufferError
            raise cls(f"cannot open buffer {self.path}: {exc}") from exc
        except CorruptBuffer:
            self._db.close()
            raise

    def _open(self) -> None:
        db = self._db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        check = db.execute("PRAGMA quick_check(1)").fetchone()
        if check is None or check[0] != "ok":
            raise CorruptBuffer(f"cannot open buffer {self.path}: quick_check says {check and check[0]!r}")
        db.executescript(_SCHEMA)
        have = {r[1] for r in db.execute("PRAGMA table_info(outbox)")}
        for name, decl in _ADDED_COLUMNS:
            if name not in have:
                db.execute(f"ALTER TABLE outbox ADD COLUMN {name} {decl}")
        db.executescript(_INDEXES)
        row = db.execute("SELECT value FROM meta WHERE name = 'stream'").fetchone()
        if row is None or not STREAM_RE.fullmatch(str(row[0])):
            stream = new_stream_id()
            db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('stream', ?)", (stream,))
            db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('created_ms', ?)",
                       (str(self._now_ms()),))
        else:
            stream = str(row[0])
        #: this buffer's stream identity (16 hex digits), on every reading it numbers.
        self.stream: str = stream
        self._recount()

    @classmethod
    def open_or_reset(cls, path: str | Path, **kw: object) -> Buffer:
        """Open the buffer; a damaged file is moved aside (kept for salvage), a fresh buffer is
        started in its place (a new stream) and what is still readable in the old one is
        salvaged into it. Other errors (a directory that cannot be written …) are raised."""
        try:
            return cls(path, **kw)  # type: ignore[arg-type]
        except CorruptBuffer as exc:
            reason = str(exc.__cause__ or exc)
            aside = set_aside(Path(path), clock=kw.get("clock", SYSTEM))  # type: ignore[arg-type]
        buffer = cls(path, **kw)  # type: ignore[arg-type]
        buffer.set_aside = aside
        try:
            buffer.salvage_result = buffer.salvage(aside)
        except BufferError as exc:  # salvage is best effort: the fresh buffer runs regardless
            buffer.salvage_result = SalvageResult(str(aside), complete=False)
            log.warning("salvage of %s failed: %s", aside, exc)
        got = buffer.salvage_result
        log.error("buffer %s was damaged (%s): moved aside to %s, started a new buffer (stream %s); "
                  "salvaged %d rows%s", path, reason, aside.name, buffer.stream, got.imported,
                  "" if got.complete else f", {got.unreadable} unreadable (see `vitalgate gateway salvage`)")
        return buffer

    # ------------------------------------------------------------------ writing

    def add_readings(self, items: Sequence[Measurement]) -> list[Reading]:
        """Commit readings in ONE transaction, numbering them per device; return them numbered.

        When this returns, the readings are on disk (and a watch may forget them). Raises
        :class:`DiskFull` / :class:`BufferError` if they could not be committed (none were).
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
                    stream=self.stream,
                )
                self._insert(RowKind.READING, m.device_id, reading.seq, m.ts, now_ms, reading.to_bytes(),
                             self.stream)
                out.append(reading)
            self._evict_if_full()
        return out

    def add_ecg(self, chunk: EcgChunk) -> None:
        with self._txn():
            self._insert(RowKind.ECG, chunk.device_id, chunk.seq, chunk.ts, self._now_ms(), chunk.to_bytes(), None)
            self._evict_if_full()

    def ack(self, row_ids: Iterable[int]) -> int:
        """The broker has these rows: ECG chunks are deleted, readings kept for ``republish``
        within the kept window. Returns how many were still unacknowledged here."""
        ids = list(row_ids)
        if not ids:
            return 0
        # An ack need not be durable (a lost one only means a harmless duplicate later), so it
        # is not fsynced; the next FULL commit syncs the WAL, ack included.
        try:
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                return self._ack(ids)
            finally:
                self._db.execute(f"PRAGMA synchronous={self.synchronous}")
        except sqlite3.Error as exc:
            raise BufferError(f"buffer {self.path}: {exc}") from exc

    def _ack(self, ids: list[int]) -> int:
        gone = 0
        now_ms = self._now_ms()
        keep = self.keep_acked_rows > 0 and self.keep_acked_s > 0
        with self._txn():
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                marks = ",".join("?" * len(part))
                if keep:
                    kept = self._db.execute(
                        f"UPDATE outbox SET acked_ms = ? WHERE id IN ({marks}) AND kind = ? "
                        "AND acked_ms IS NULL RETURNING size", (now_ms, *part, int(RowKind.READING)),
                    ).fetchall()
                    for (size,) in kept:
                        self._forget(RowKind.READING, int(size))
                        self._kept += 1
                        self._kept_bytes += int(size)
                    gone += len(kept)
                for kind, size in self._db.execute(
                    f"DELETE FROM outbox WHERE id IN ({marks}) AND acked_ms IS NULL RETURNING kind, size", part
                ).fetchall():
                    self._forget(RowKind(kind), int(size))
                    gone += 1
            self._bump("acked", gone)
            self._expire_kept(now_ms)
        return gone

    def salvage(self, source: str | Path) -> SalvageResult:
        """Import every still-readable, unacknowledged row of a damaged (or old) buffer file into
        this one, as it was (payload, stream and seq unchanged: ingest deduplicates anything it
        already has). Rows that fail to read or validate are counted, never guessed. A file
        already salvaged into this buffer is not imported twice."""
        src = Path(source)
        key = f"salvaged:{src.name}:{src.stat().st_size if src.exists() else 0}"
        if self._meta(key) is not None:
            log.info("%s was already salvaged into %s", src, self.path)
            return SalvageResult(str(src), already_here=int(self._meta(key) or 0))
        try:
            other = sqlite3.connect(f"file:{src}?mode=ro", uri=True, check_same_thread=False)
        except sqlite3.Error as exc:
            raise BufferError(f"cannot read {src}: {exc}") from exc
        read = imported = dup = invalid = unreadable = 0
        complete = True
        try:
            with contextlib.suppress(sqlite3.Error):
                other.execute("PRAGMA query_only=1")
                # read the schema even when a table's root page is gone (a truncated file
                # otherwise refuses every statement as "malformed")
                other.execute("PRAGMA writable_schema=1")
            try:
                cols = {r[1] for r in other.execute("PRAGMA table_info(outbox)")}
            except sqlite3.Error as exc:
                raise BufferError(f"{src}: no readable outbox table ({exc})") from exc
            if not cols:
                raise BufferError(f"{src}: no outbox table (not a vitalgate buffer?)")
            batch: list[tuple[RowKind, str, int, int, int, bytes, str | None]] = []
            for item in _read_ids(other, "acked_ms" in cols):
                if item is None:
                    unreadable += 1
                    continue
                read += 1
                kind_i, device_id, seq, ts, added_ms, payload = item
                parsed = _validate(kind_i, payload)
                if parsed is None:
                    invalid += 1
                    continue
                # a reading keeps the stream it was numbered in (none for a first-release buffer:
                # ingest then keys it by (device_id, seq) as before); ECG chunks have none
                stream = parsed.stream if isinstance(parsed, Reading) else None
                batch.append((RowKind(kind_i), device_id, seq, ts, added_ms, payload, stream))
                if len(batch) >= SALVAGE_BATCH:
                    i, d = self._import(batch)
                    imported, dup, batch = imported + i, dup + d, []
            if batch:
                i, d = self._import(batch)
                imported, dup = imported + i, dup + d
            complete = unreadable == 0
        finally:
            other.close()
        with self._txn():
            self._db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (key, str(imported)))
            self._bump("salvaged", imported)
        result = SalvageResult(str(src), read, imported, dup, invalid, unreadable, complete)
        log.info("salvaged %s: %d rows read, %d imported, %d already here, %d invalid, %d unreadable",
                 src, read, imported, dup, invalid, unreadable)
        return result

    def _import(self, batch: list[tuple[RowKind, str, int, int, int, bytes, str | None]]) -> tuple[int, int]:
        imported = dup = 0
        with self._txn():
            for kind, device_id, seq, ts, added_ms, payload, stream in batch:
                same = self._db.execute(
                    "SELECT 1 FROM outbox WHERE kind = ? AND device_id = ? AND seq = ? AND stream IS ? "
                    "AND payload = ? LIMIT 1", (int(kind), device_id, seq, stream, payload),
                ).fetchone()
                if same:
                    dup += 1
                    continue
                self._insert(kind, device_id, seq, ts, added_ms, payload, stream)
                imported += 1
            self._evict_if_full()
        return imported, dup

    # ------------------------------------------------------------------ reading

    def pending(self, after_id: int = 0, limit: int = 100) -> list[Row]:
        """Unacknowledged rows with id > ``after_id`` in insertion order (per device: by seq)."""
        return self._rows_where("acked_ms IS NULL AND id > ? ORDER BY id LIMIT ?", (after_id, limit))

    def readings_range(self, device_id: str, stream: str, from_seq: int, to_seq: int) -> list[Row]:
        """This device's readings of ``stream`` with ``from_seq <= seq <= to_seq`` still here
        (acknowledged and kept, or not yet acknowledged), by seq."""
        return self._rows_where(
            "kind = 0 AND device_id = ? AND stream = ? AND seq BETWEEN ? AND ? ORDER BY seq, id",
            (device_id, stream, from_seq, to_seq),
        )

    def _rows_where(self, where: str, args: tuple[object, ...]) -> list[Row]:
        try:
            rows = self._db.execute(
                f"SELECT id, kind, device_id, seq, ts, added_ms, payload FROM outbox WHERE {where}", args
            ).fetchall()
        except sqlite3.Error as exc:
            raise BufferError(f"buffer {self.path}: {exc}") from exc
        return [Row(r[0], RowKind(r[1]), r[2], r[3], r[4], r[5], bytes(r[6])) for r in rows]

    def max_id(self) -> int:
        (value,) = self._read("SELECT COALESCE(MAX(id), 0) FROM outbox WHERE acked_ms IS NULL")
        return int(value)

    def next_seq(self, device_id: str) -> int:
        row = self._db.execute("SELECT next_seq FROM device_seq WHERE device_id = ?", (device_id,)).fetchone()
        return int(row[0]) if row else 0

    def __len__(self) -> int:
        """Unacknowledged rows."""
        return self._rows[RowKind.READING] + self._rows[RowKind.ECG]

    def stats(self) -> BufferStats:
        try:
            counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
            oldest = self._db.execute(
                "SELECT added_ms FROM outbox WHERE acked_ms IS NULL ORDER BY id LIMIT 1").fetchone()
        except sqlite3.Error as exc:
            raise BufferError(f"buffer {self.path}: {exc}") from exc
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
            kept=self._kept,
            kept_bytes=self._kept_bytes,
            salvaged=int(counters.get("salvaged", 0)),
        )

    def set_page_limit(self, pages: int | None) -> None:
        """Cap the file at ``pages`` database pages (SQLite's ``max_page_count``; None: SQLite's
        maximum). A write past it fails like a full disk. For a buffer on a shared card, and for
        tests that need a full disk where no small filesystem can be mounted."""
        self._db.execute(f"PRAGMA max_page_count={int(pages) if pages else 4294967294}")

    def page_count(self) -> int:
        return int(self._read("PRAGMA page_count")[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Buffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _now_ms(self) -> int:
        return epoch_ms(self._clock)

    def _read(self, sql: str, args: tuple[object, ...] = ()) -> tuple[Any, ...]:
        try:
            row = self._db.execute(sql, args).fetchone()
        except sqlite3.Error as exc:
            raise BufferError(f"buffer {self.path}: {exc}") from exc
        return tuple(row)

    def _meta(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def _txn(self) -> _Transaction:
        return _Transaction(self)

    def _recount(self) -> None:
        """Re-read the in-memory counts from the file (at open and after a failed transaction)."""
        rows = {RowKind.READING: 0, RowKind.ECG: 0}
        size = kept = kept_size = 0
        for kind, acked, n, total in self._db.execute(
            "SELECT kind, acked_ms IS NOT NULL, COUNT(*), COALESCE(SUM(size), 0) FROM outbox GROUP BY 1, 2"
        ).fetchall():
            if acked:
                kept += int(n)
                kept_size += int(total)
            else:
                rows[RowKind(kind)] = int(n)
                size += int(total)
        self._rows, self._bytes, self._kept, self._kept_bytes = rows, size, kept, kept_size

    def _insert(self, kind: RowKind, device_id: str, seq: int, ts: int, added_ms: int, payload: bytes,
                stream: str | None) -> None:
        self._db.execute(
            "INSERT INTO outbox (kind, device_id, seq, ts, added_ms, size, payload, stream) "
            "VALUES (?,?,?,?,?,?,?,?)",
            (int(kind), device_id, seq, ts, added_ms, len(payload), payload, stream),
        )
        self._rows[kind] += 1
        self._bytes += len(payload)
        self._txn_added += 1
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

    def _total_rows(self) -> int:
        return len(self) + self._kept

    def _over(self) -> bool:
        return self._total_rows() > self.max_rows or self._bytes + self._kept_bytes > self.max_bytes

    def _drop_kept(self, where: str, args: tuple[object, ...]) -> None:
        for (size,) in self._db.execute(
            f"DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE acked_ms IS NOT NULL {where}) "
            "RETURNING size", args,
        ).fetchall():
            self._kept -= 1
            self._kept_bytes -= int(size)

    def _expire_kept(self, now_ms: int) -> None:
        """Kept readings beyond the window (rows, age) go, oldest first; not a loss (acked)."""
        if self._kept:
            self._drop_kept("AND acked_ms < ?", (now_ms - int(self.keep_acked_s * 1000),))
        if self._kept > self.keep_acked_rows:
            self._drop_kept("ORDER BY acked_ms, id LIMIT ?", (self._kept - self.keep_acked_rows,))

    def _evict_if_full(self) -> None:
        # kept (acknowledged) rows make room first: as many as the row limit needs, or one at a
        # time over the byte limit; they are no loss and not counted as evictions
        while self._over() and self._kept:
            self._drop_kept("ORDER BY acked_ms, id LIMIT ?",
                            (min(max(1, self._total_rows() - self.max_rows), self._kept),))
        evicted = {RowKind.READING: 0, RowKind.ECG: 0}
        verified = False
        for kind in EVICTION_ORDER:
            while self._over() and self._rows[kind]:
                # as many rows as the row limit needs; over the byte limit only, one at a time
                # (rows differ in size, and no more is evicted than needed). Only rows that
                # exist are deleted (RETURNING), and only those are counted.
                batch = min(max(1, self._total_rows() - self.max_rows), self._rows[kind])
                if not verified and batch + sum(evicted.values()) > self._txn_added:
                    # more to evict than this transaction added: the counts are checked against
                    # the file before anything goes (the counts are exact, so this is rare:
                    # lowered limits at start-up; it used to be the drift that evicted 681 rows)
                    self._recount()
                    verified = True
                    continue
                got = self._db.execute(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE kind = ? "
                    "AND acked_ms IS NULL ORDER BY id LIMIT ?) RETURNING size",
                    (int(kind), batch),
                ).fetchall()
                if not got:  # the count says rows, the file has none: re-read, never loop
                    self._recount()
                    break
                for (size,) in got:
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

    def _write_ok(self) -> None:
        if self.state != "ok":
            self.state, self.last_error = "ok", None
        if self._episode_failures and self._clock.wall() - self._last_failure_s >= STORAGE_RECOVERED_S:
            log.info("buffer %s writable again (%d failed writes since %s UTC)", self.path,
                     self._episode_failures, _utc(self.state_since_ms))
            self._episode_failures, self.state_since_ms = 0, None

    def _write_failed(self, err: sqlite3.Error) -> BufferError:
        self.write_failures += 1
        state: State = "disk_full" if _is_full(err) else "write_error"
        if not self._episode_failures:  # once per episode; the count is in status
            log.warning("buffer %s cannot be written (%s): %s; readings wait on the watches and nothing "
                        "buffered is evicted for it; retrying with every new reading",
                        self.path, state, err)
            self.state_since_ms = self._now_ms()
        self._episode_failures += 1
        self._last_failure_s = self._clock.wall()
        self.state = state
        self.last_error = str(err)
        cls = DiskFull if state == "disk_full" else BufferError
        return cls(f"buffer {self.path}: write failed: {err}")


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT. On any failure: ROLLBACK unless SQLite already rolled back (it
    does after a failed COMMIT and after SQLITE_FULL), re-read the counts from the file, and
    raise the error that happened (a SQLite error becomes :class:`DiskFull` / BufferError)."""

    def __init__(self, buffer: Buffer) -> None:
        self._b = buffer

    def __enter__(self) -> None:
        b = self._b
        b._txn_added = 0
        try:
            b._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise b._write_failed(exc) from exc

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        b = self._b
        failure: BaseException | None = exc
        if exc_type is None:
            try:
                b._db.execute("COMMIT")
            except sqlite3.Error as err:
                failure = err
            else:
                b._write_ok()
                return
        if b._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                b._db.execute("ROLLBACK")
        try:
            b._recount()
        except sqlite3.Error as err:  # the file cannot even be read: the next success re-reads
            log.warning("buffer %s: cannot re-read counts: %s", b.path, err)
        if isinstance(failure, sqlite3.Error):
            raise b._write_failed(failure) from failure


def _utc(ms: int | None) -> str:
    return "-" if ms is None else datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def set_aside(path: Path, clock: TimeReader = SYSTEM) -> Path:
    """Rename a damaged buffer (and its ``-wal`` / ``-shm``) to ``<name>.corrupt-<UTC time>``."""
    stamp = datetime.fromtimestamp(clock.wall(), UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    try:
        path.rename(target)
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                side.rename(target.with_name(target.name + suffix))
    except OSError as exc:
        raise BufferError(f"cannot move damaged buffer {path} aside: {exc}") from exc
    return target


def set_aside_files(path: Path) -> list[Path]:
    """Damaged buffers set aside beside ``path`` so far (oldest first)."""
    return sorted(p for p in path.parent.glob(f"{path.name}.corrupt-*")
                  if not p.name.endswith(("-wal", "-shm")))


_Item = tuple[int, str, int, int, int, bytes]


def _read_ids(db: sqlite3.Connection, has_acked: bool) -> Iterator[_Item | None]:
    """Every readable unacknowledged row of a possibly damaged file, by id; None per id that
    cannot be read (so the caller counts it). Ranges first, row by row where a range fails."""
    cols = "id, kind, device_id, seq, ts, added_ms, payload"
    where = " AND acked_ms IS NULL" if has_acked else ""
    top: int | None = None
    for sql in ("SELECT MAX(id) FROM outbox", "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'"):
        with contextlib.suppress(sqlite3.Error):
            row = db.execute(sql).fetchone()
            if row and row[0] is not None:
                top = max(top or 0, int(row[0]))
    if top is None:
        return
    first = 1
    with contextlib.suppress(sqlite3.Error):  # acknowledged rows leave long runs of unused ids
        row = db.execute("SELECT MIN(id) FROM outbox").fetchone()
        if row and row[0] is not None:
            first = max(1, min(top, int(row[0])))
    bad_run = 0
    for lo in range(first, top + 1, SALVAGE_BATCH):
        hi = min(top, lo + SALVAGE_BATCH - 1)
        try:
            rows = db.execute(f"SELECT {cols} FROM outbox WHERE id BETWEEN ? AND ?{where} ORDER BY id",
                              (lo, hi)).fetchall()
        except sqlite3.Error:
            rows = None
        if rows is not None:
            bad_run = 0
            for r in rows:
                yield _item(r)
            continue
        for i in range(lo, hi + 1):
            try:
                r = db.execute(f"SELECT {cols} FROM outbox WHERE id = ?{where}", (i,)).fetchone()
            except sqlite3.Error:
                bad_run += 1
                yield None
                if bad_run >= SALVAGE_MAX_BAD_RUN:
                    return
                continue
            bad_run = 0
            if r is not None:
                yield _item(r)


def _item(r: tuple[Any, ...]) -> _Item | None:
    try:
        return (int(r[1]), str(r[2]), int(r[3]), int(r[4]), int(r[5]), bytes(r[6]))
    except (TypeError, ValueError):
        return None


def _validate(kind: int, payload: bytes) -> Reading | EcgChunk | None:
    """The payload as the contract's message, or None (a damaged row is not published)."""
    try:
        if kind == RowKind.READING:
            return Reading.model_validate_json(payload)
        if kind == RowKind.ECG:
            return EcgChunk.model_validate_json(payload)
    except (ValidationError, ValueError):
        return None
    return None
