"""The owner of a patient is fed from what was committed, by any instance (PostgreSQL).

With a shared subscription each message reaches one instance, which stores it; the patient's
owner (:mod:`ingest.ownership`) may be another instance. So scoring is fed from the store:

* the committing instance calls :func:`announce` inside the readings' transaction: one
  ``pg_notify`` per chunk of the new rows (partition and the values the scorer needs), so the
  notification is delivered exactly when the rows are committed and never for a batch that
  rolled back (nor for a savepoint that did);
* each instance LISTENs on a dedicated connection and, for the partitions it owns, feeds its
  scorer; every instance fans ``readings`` and ``ews`` events out to its local dashboard
  listeners (a browser connected to any instance sees every event);
* LISTEN/NOTIFY is not durable: notifications sent while a listener is disconnected are lost
  to it. So on every (re)connect, and whenever this instance takes a partition, it catches up
  from the store: a warm start of those partitions' patients from the shared readings and EWS
  history (:meth:`Scoring.take`). Catch-up is by time window from the store, never by "ids
  above the last seen": identity values are allocated at insert and committed out of order
  across transactions, so a row with a smaller id can become visible after a larger one;
* a duplicate (a row fed both by a notification and by the catch-up) is harmless: the scorer
  counts a reading with the same time as a duplicate and the emission policy decides on the
  score, not on how often it saw a reading.

The payload carries the values themselves, not row ids: the owner needs exactly those five
fields, so it scores without reading the rows back (one query less per notification per
owner, and no lookup by id across the time partitions of ``readings``); a chunk stays under
PostgreSQL's 8000-byte payload limit (:data:`MAX_PAYLOAD`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from ingest.db import leases
from ingest.db.engine import Conn, Database, DatabaseError
from ingest.ownership import Ownership, partition_of

log = logging.getLogger(__name__)

#: channel of committed readings; channel of dashboard events.
READINGS: Final = "vitalgate_readings"
EVENTS: Final = "vitalgate_events"
#: PostgreSQL refuses payloads of 8000 bytes or more; a chunk stays below this.
MAX_PAYLOAD: Final = 7900
#: notifications waiting between the listener thread and the feeding task. Beyond it the
#: oldest are not queued: the overflow is counted and answered with a catch-up of every owned
#: partition from the store (nothing is lost, only re-read).
QUEUE_MAX: Final = 10_000
#: a lost listener connection is reopened after this long (s); doubling up to the maximum.
RECONNECT_MIN_S: Final = 0.5
RECONNECT_MAX_S: Final = 10.0
#: how long the listener waits for notifications before checking whether it should stop (s).
POLL_S: Final = 0.5
#: outbound dashboard events waiting to be sent; beyond it they are dropped (counted): a
#: dashboard that misses an event is told to resync by the hub's own rules.
EVENTS_MAX: Final = 10_000


@dataclass(frozen=True, slots=True)
class Fed:
    """One committed vital, as the owner's scorer takes it."""

    part: int
    user_code: str
    vital: str
    value: float
    ts: int
    received_at: int

    def item(self) -> tuple[str, str, float, int]:
        return self.user_code, self.vital, self.value, self.ts


def encode(rows: Iterable[tuple[str, str, float, int, int]], partitions: int) -> list[str]:
    """Chunks (each under :data:`MAX_PAYLOAD` bytes) of ``(user_code, vital, value, ts,
    received_at)`` rows: one line per row, tab-separated, the partition first. user_code and
    vital are contract-checked identifiers (no tab, no newline)."""
    chunks: list[str] = []
    buf: list[str] = []
    size = 0
    for user_code, vital, value, ts, received in rows:
        line = f"{partition_of(user_code, partitions)}\t{user_code}\t{vital}\t{value!r}\t{ts}\t{received}"
        n = len(line.encode()) + 1
        if buf and size + n > MAX_PAYLOAD:
            chunks.append("\n".join(buf))
            buf, size = [], 0
        buf.append(line)
        size += n
    if buf:
        chunks.append("\n".join(buf))
    return chunks


def decode(payload: str) -> tuple[list[Fed], int]:
    """The rows of one chunk and how many lines could not be read (counted, never raised:
    a foreign NOTIFY on our channel must not stop the feed)."""
    out: list[Fed] = []
    bad = 0
    for line in payload.split("\n"):
        parts = line.split("\t")
        try:
            p, u, v, x, t, r = parts
            out.append(Fed(int(p), u, v, float(x), int(t), int(r)))
        except ValueError:
            bad += 1
    return out, bad


def announce(conn: Conn, rows: Iterable[tuple[str | None, str, float, int, int]],
             partitions: int) -> int:
    """Inside the transaction that commits ``rows`` (user_code, vital, value, ts,
    received_at): notify every instance at commit. Rows without a patient are not scored and
    not sent. A no-op on SQLite (one process: the service feeds its engine directly).
    Returns the number of notifications."""
    if not conn.is_postgres:
        return 0
    chunks = encode(((u, v, x, t, r) for u, v, x, t, r in rows if u), partitions)
    for chunk in chunks:
        conn.execute("SELECT pg_notify(?, ?)", (READINGS, chunk))
    return len(chunks)


class Scoring(Protocol):
    """What the feed drives (the service: engine, publishing, dashboard hub)."""

    async def score(self, rows: Sequence[Fed]) -> None: ...
    async def take(self, parts: frozenset[int]) -> None: ...
    async def drop(self, parts: frozenset[int]) -> None: ...
    def event(self, kind: str, data: dict[str, Any]) -> None: ...


@dataclass
class FeedStats:
    notifications: int = 0
    rows: int = 0
    scored: int = 0
    bad_lines: int = 0
    overflows: int = 0
    catchups: int = 0
    connects: int = 0
    events_in: int = 0
    events_out: int = 0
    events_dropped: int = 0


class Feed:
    """LISTEN on a dedicated connection; feed owned partitions' rows; fan events out.

    Also the ownership's :class:`~ingest.ownership.Changes`: taking a partition queues its
    catch-up behind the notifications already queued (one task does both, in order), giving
    one up stops feeding it at once."""

    def __init__(self, db: Database, owner: Ownership, scoring: Scoring, *,
                 queue_max: int = QUEUE_MAX) -> None:
        self.db = db
        self.owner = owner
        self.scoring = scoring
        self.stats = FeedStats()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(queue_max)
        self._events: asyncio.Queue[str] = asyncio.Queue(EVENTS_MAX)
        self._overflow = False
        #: partitions taken whose catch-up has not run yet: their notifications are skipped
        #: (the catch-up reads those rows from the store, after they were committed)
        self._pending: set[int] = set()
        self._stop = threading.Event()
        self.connected = asyncio.Event()

    # -- ownership changes ---------------------------------------------------------------

    async def acquired(self, parts: frozenset[int]) -> None:
        self._pending |= parts
        await self._queue.put(("take", parts))

    async def released(self, parts: frozenset[int]) -> None:
        self._pending -= parts
        await self.scoring.drop(parts)

    async def _take(self, parts: frozenset[int]) -> None:
        try:
            await self.scoring.take(parts)
        finally:
            self._pending -= parts

    # -- outbound events -------------------------------------------------------------------

    def publish_event(self, kind: str, data: dict[str, Any]) -> None:
        """Send a dashboard event to every instance (this one included, through its own
        LISTEN). Call on the event loop; never blocks (a full queue drops, counted)."""
        text = json.dumps({"k": kind, "d": data}, separators=(",", ":"))
        if len(text.encode()) >= MAX_PAYLOAD:
            self.stats.events_dropped += 1
            return
        try:
            self._events.put_nowait(text)
        except asyncio.QueueFull:
            self.stats.events_dropped += 1

    async def _send_events(self) -> None:
        session = leases.Session(self.db)
        try:
            while True:
                batch = [await self._events.get()]
                while not self._events.empty() and len(batch) < 500:
                    batch.append(self._events.get_nowait())

                def send(c: Conn, batch: list[str] = batch) -> None:
                    for text in batch:
                        c.execute("SELECT pg_notify(?, ?)", (EVENTS, text))

                try:
                    await asyncio.to_thread(session.tx, send)
                    self.stats.events_out += len(batch)
                except DatabaseError as exc:
                    self.stats.events_dropped += len(batch)
                    log.warning("dashboard events not sent (%s): %d dropped",
                                type(exc).__name__, len(batch))
                    await asyncio.sleep(RECONNECT_MIN_S)
        finally:
            session.close()

    # -- the listener -----------------------------------------------------------------------

    def _listen(self, loop: asyncio.AbstractEventLoop) -> None:
        """In a thread: LISTEN, then hand every notification to the loop until stopped."""
        with self.db.dedicated() as pg:
            pg.execute(f"LISTEN {READINGS}")
            pg.execute(f"LISTEN {EVENTS}")
            loop.call_soon_threadsafe(self._offer, ("connected", None))
            while not self._stop.is_set():
                for n in pg.notifies(timeout=POLL_S):
                    loop.call_soon_threadsafe(self._offer, (n.channel, n.payload))
                    if self._stop.is_set():
                        break

    def _offer(self, item: tuple[str, Any]) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.stats.overflows += 1
            self._overflow = True

    async def run(self) -> None:
        """Listen and feed until cancelled; reconnect (and catch up) after a lost connection."""
        loop = asyncio.get_running_loop()
        worker = asyncio.create_task(self._work(), name="feed-work")
        sender = asyncio.create_task(self._send_events(), name="feed-events")
        delay = RECONNECT_MIN_S
        try:
            while True:
                self._stop.clear()
                try:
                    await asyncio.to_thread(self._listen, loop)
                    return
                except DatabaseError as exc:
                    self.connected.clear()
                    log.warning("feed: listener connection lost (%s); reconnecting in %.1f s,"
                                " then catching up from the store", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
        finally:
            self._stop.set()
            for task in (worker, sender):
                task.cancel()
            await asyncio.gather(worker, sender, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            kind, payload = await self._queue.get()
            if self._overflow:
                self._overflow = False
                await self._catch_up(self.owner.owned(), "queue overflow")
            if kind == "connected":
                self.stats.connects += 1
                self.connected.set()
                if self.stats.connects > 1:  # the first: every take() warm-starts anyway
                    await self._catch_up(self.owner.owned(), "listener reconnected")
                continue
            if kind == "take":
                await self._take(payload)
                continue
            if kind == EVENTS:
                self._event(payload)
                continue
            rows = self._rows(payload)
            # more notifications already waiting: score them in one go (one engine round trip)
            while not self._queue.empty() and len(rows) < 5_000:
                nxt = self._queue.get_nowait()
                if nxt[0] != READINGS:
                    await self._score(rows)
                    rows = []
                    await self._requeue_first(nxt)
                    break
                rows += self._rows(nxt[1])
            await self._score(rows)

    async def _requeue_first(self, item: tuple[str, Any]) -> None:
        # handled at once, in order: a take or an event right after readings
        kind, payload = item
        if kind == "take":
            await self._take(payload)
        elif kind == EVENTS:
            self._event(payload)
        elif kind == "connected":
            self.stats.connects += 1
            self.connected.set()
            await self._catch_up(self.owner.owned(), "listener reconnected")

    def _rows(self, payload: str) -> list[Fed]:
        self.stats.notifications += 1
        rows, bad = decode(payload)
        if bad:
            self.stats.bad_lines += bad
            log.warning("feed: %d unreadable line(s) in a notification (counted, skipped)", bad)
        self.stats.rows += len(rows)
        return rows

    async def _score(self, rows: list[Fed]) -> None:
        if not rows:
            return
        self.scoring.event("readings", {"count": len(rows)})
        pending = self._pending
        mine = [r for r in rows if self.owner.owns_partition(r.part) and r.part not in pending]
        if mine:
            self.stats.scored += len(mine)
            await self.scoring.score(mine)

    def _event(self, payload: str) -> None:
        with contextlib.suppress(ValueError, TypeError, KeyError):
            msg = json.loads(payload)
            if isinstance(msg, dict) and isinstance(msg.get("d"), dict):
                self.stats.events_in += 1
                self.scoring.event(str(msg["k"]), msg["d"])

    async def _catch_up(self, parts: frozenset[int], why: str) -> None:
        if not parts:
            return
        self.stats.catchups += 1
        log.info("feed: catching up %d partition(s) from the store (%s)", len(parts), why)
        await self.scoring.take(parts)
