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
import concurrent.futures
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from ingest.db import leases, notify
from ingest.db.engine import Conn, Database, DatabaseError
from ingest.ownership import Ownership, partition_of
from vitalgate.backoff import Backoff

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
#: reopening a lost listener connection: 0.5 s after the first failure (a restarted or
#: failed-over PostgreSQL usually answers within a second, and notifications missed meanwhile
#: cost a catch-up), doubling up to 10 s (a database down for long is probed every 10 s: the
#: heartbeat's lease is 10 s, so the feed is never much behind the ownership), spread by ±30 %
#: so the listeners of many instances that lost one primary together do not all return in the
#: same instant.
RECONNECT: Final = Backoff(initial_s=0.5, factor=2.0, max_s=10.0, jitter=0.3)
#: how long the listener waits for notifications before checking whether it should stop (s).
POLL_S: Final = 0.5
#: outbound dashboard events waiting to be sent; beyond it they are dropped (counted): a
#: dashboard that misses an event is told to resync by the hub's own rules.
EVENTS_MAX: Final = 10_000


#: a reading that arrives before its device's previous one (by seq) waits at most this long
#: (ms, processing time: the owner's, not counting time it spends behind its own queue of
#: notifications, :meth:`Feed._progress`) for it. With a shared subscription consecutive
#: readings of one device are stored by different instances and can be committed out of order; the stream scorer and
#: the emission policy are order-sensitive, so the owner scores a device's readings in seq
#: order, as one instance receiving them in order would. A seq that stays missing (a real gap:
#: the gap tracker asks for it and reports it) never holds a patient back longer than this.
#: 20 s: it covers both the commits of different instances (measured up to ~9 s apart on a
#: loaded 2-core machine; 3 s timed out hundreds of times per run with no failure at all) and
#: a dead member's share of the subscription, which a survivor adopts once the member's
#: membership expires (``ingest.adopt``: one lease, 10 s, plus up to one heartbeat); a watch
#: reads once a minute, so a score held 20 s for a lost reading stays inside one period.
HOLD_MS: Final = 20_000
#: a device never seen before (nor seeded by a takeover) whose first reading has a seq above 0
#: waits this long (ms) for its predecessors, shorter than :data:`HOLD_MS`: its predecessors
#: may be committed a moment later by another instance (at a stream's start a device's seq 1
#: overtook its seq 0 for a third of the patients), but a device that simply does not start
#: at 0 (a gateway whose seq runs on) must not wait a whole hold for its first score; commits
#: of one moment spread well under a second at a stream's start.
FIRST_HOLD_MS: Final = 5_000
#: a seq this far below the expected one starts a new stream (a new gateway buffer), not a
#: late reading of the old one.
NEW_STREAM_BELOW: Final = 1_000


@dataclass(frozen=True, slots=True)
class Fed:
    """One committed vital, as the owner's scorer takes it."""

    part: int
    user_code: str
    vital: str
    value: float
    ts: int
    received_at: int
    device_id: str = ""
    seq: int | None = None  #: None: not a sequenced reading (ECG-derived): never held

    def item(self) -> tuple[str, str, float, int]:
        return self.user_code, self.vital, self.value, self.ts


Row = tuple[str, str, float, int, int, str, int | None]


def encode(rows: Iterable[Row], partitions: int) -> list[str]:
    """Chunks (each under :data:`MAX_PAYLOAD` bytes) of ``(user_code, vital, value, ts,
    received_at, device_id, seq)`` rows: one line per row, tab-separated, the partition
    first. user_code, vital and device_id are contract-checked identifiers (no tab, no
    newline); an empty seq is a reading without one."""
    chunks: list[str] = []
    buf: list[str] = []
    size = 0
    for user_code, vital, value, ts, received, device, seq in rows:
        line = (f"{partition_of(user_code, partitions)}\t{user_code}\t{vital}\t{value!r}\t{ts}"
                f"\t{received}\t{device}\t{'' if seq is None else seq}")
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
            p, u, v, x, t, r, d, q = parts
            out.append(Fed(int(p), u, v, float(x), int(t), int(r), d, int(q) if q else None))
        except ValueError:
            bad += 1
    return out, bad


def announce(conn: Conn, rows: Iterable[tuple[str | None, str, float, int, int, str, int | None]],
             partitions: int) -> int:
    """Inside the transaction that commits ``rows`` (user_code, vital, value, ts,
    received_at, device_id, seq): notify every instance at commit. Rows without a patient are not scored and
    not sent. A no-op on SQLite (one process: the service feeds its engine directly).
    Returns the number of notifications."""
    if not conn.is_postgres:
        return 0
    chunks = encode(((u, v, x, t, r, d, q) for u, v, x, t, r, d, q in rows if u), partitions)
    for chunk in chunks:
        notify.notify(conn, READINGS, chunk)
    return len(chunks)


@dataclass(frozen=True, slots=True)
class Taken:
    """What a takeover (:meth:`Scoring.take`) leaves to the feed's order: each device's next
    expected seq (with its patient's partition) where the store left off, and the readings
    stored after a hole in a device's seq, to be released when the hole is filled
    (:mod:`ingest.handover`)."""

    nexts: Mapping[str, tuple[int, int]]  #: device → (partition, next seq)
    deferred: Sequence[Fed] = ()


class Reorder:
    """Each device's readings in seq order (see :data:`HOLD_MS`).

    ``first_waits``: a device never seen (nor seeded by a takeover, :meth:`seed`) whose first
    reading has a seq above 0 waits ``first_hold_ms`` for its predecessors (the feed: they may
    be committed later by another instance); without it that reading starts the device's order
    (one consumer receiving in broker order)."""

    def __init__(self, *, hold_ms: int = HOLD_MS, first_waits: bool = False,
                 first_hold_ms: int = FIRST_HOLD_MS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.hold_s = hold_ms / 1000
        self.first_waits = first_waits
        self._first_hold_s = self.first_hold_s = min(hold_ms, first_hold_ms) / 1000
        self._clock = clock
        self._next: dict[str, int] = {}  #: device → the seq it should send next
        self._part: dict[str, int] = {}  #: device → its patient's partition
        self._held: dict[str, dict[int, list[Fed]]] = {}
        #: device → held seq → when it came. The hold bounds each reading's own wait: after a
        #: predecessor released some, the wait goes on from the oldest left, never from the
        #: first reading ever held (two gaps in a row would share one hold otherwise)
        self._came: dict[str, dict[int, float]] = {}
        #: readings held for a predecessor; released by it; released by the timeout
        self.held = 0
        self.released_in_order = 0
        self.released_by_timeout = 0

    @property
    def waiting(self) -> int:
        return sum(len(h) for h in self._held.values())

    def push(self, rows: Sequence[Fed]) -> list[Fed]:
        """What can be scored now, in order; the rest is held."""
        groups: dict[tuple[str, int | None], list[Fed]] = {}
        for r in rows:
            groups.setdefault((r.device_id, r.seq), []).append(r)
        out: list[Fed] = []
        for (dev, seq), group in groups.items():
            if seq is None or not dev:
                out += group
                continue
            self._part[dev] = group[0].part
            nxt = self._next.get(dev)
            if nxt is None and self.first_waits and seq > 0:
                self._hold(dev, seq, group)  # its predecessors may still be on their way
            elif nxt is None or seq < nxt - NEW_STREAM_BELOW or seq == nxt:
                self._next[dev] = seq + 1  # first seen, a new stream, or the expected one
                out += group
                out += self._drain(dev)
            elif seq < nxt:
                out += group  # late (released by a timeout) or a duplicate: the scorer decides
            else:
                self._hold(dev, seq, group)
        return out

    def _hold(self, dev: str, seq: int, group: list[Fed]) -> None:
        self._held.setdefault(dev, {}).setdefault(seq, []).extend(group)
        self._came.setdefault(dev, {}).setdefault(seq, self._clock())
        self.held += 1

    def whole_hold_first(self, on: bool) -> None:
        """While a member of the cluster is dead (its membership expired, not yet forgotten:
        :attr:`ingest.db.leases.Round.expired`), a new device's first readings may be queued in
        its broker session until a survivor adopts it (one lease plus a heartbeat, ~13 s): a
        device never seen then waits the whole hold for its predecessors, not the short first
        wait (measured: a patient whose stream began during an outage had its seq 0 adopted
        5.6 s after its seq 1, past the 5 s first wait, and its first point was emitted for
        seq 1)."""
        self.first_hold_s = self.hold_s if on else self._first_hold_s

    def seed(self, taken: Taken) -> list[Fed]:
        """A takeover read the store: expect each device's next seq from where the store left
        off, hold what it stored after a hole; what can be scored now, in order."""
        for dev, (part, nxt) in taken.nexts.items():
            self._part[dev] = part
            self._next[dev] = nxt
        out = self.push(taken.deferred)
        for dev in taken.nexts:
            if dev in self._held:
                out += self._drain(dev)
        return out

    def _drain(self, dev: str) -> list[Fed]:
        held = self._held.get(dev)
        came = self._came.get(dev, {})
        out: list[Fed] = []
        while held and self._next[dev] in held:
            out += held.pop(self._next[dev])
            came.pop(self._next[dev], None)
            self._next[dev] += 1
            self.released_in_order += 1
        if not held:
            self._held.pop(dev, None)
            self._came.pop(dev, None)
        return out

    def expire(self) -> list[Fed]:
        """Give up waiting for predecessors of readings held longer than the hold time (each
        gap of a device in turn: a later gap's wait runs from its own oldest reading)."""
        now = self._clock()
        out: list[Fed] = []
        for dev in list(self._came):
            while dev in self._came and now - min(self._came[dev].values()) >= (
                    self.hold_s if dev in self._next else self.first_hold_s):
                self._next[dev] = min(self._held[dev])
                self.released_by_timeout += 1
                out += self._drain(dev)
        return out

    def forget(self, parts: Collection[int]) -> list[Fed]:
        """Partitions given up: their held readings go (the new owner reads them from the
        store) and their devices' expectations with them."""
        gone = [d for d, p in self._part.items() if p in parts]
        for dev in gone:
            self._part.pop(dev, None)
            self._next.pop(dev, None)
            self._held.pop(dev, None)
            self._came.pop(dev, None)
        return []


class Scoring(Protocol):
    """What the feed drives (the service: engine, publishing, dashboard hub)."""

    async def score(self, rows: Sequence[Fed]) -> None: ...
    async def take(self, parts: frozenset[int]) -> Taken | None: ...
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
                 queue_max: int = QUEUE_MAX, first_waits: bool = False) -> None:
        self.db = db
        self.owner = owner
        self.scoring = scoring
        self.stats = FeedStats()
        #: (kind, payload, when it reached this process: time.monotonic())
        self._queue: asyncio.Queue[tuple[str, Any, float]] = asyncio.Queue(queue_max)
        #: when the newest item taken off the queue had reached this process
        self._taken_at = time.monotonic()
        self._events: asyncio.Queue[str] = asyncio.Queue(EVENTS_MAX)
        self._overflow = False
        #: partitions taken whose catch-up has not run yet: their notifications are skipped
        #: (the catch-up reads those rows from the store, after they were committed)
        self._pending: set[int] = set()
        #: each device's readings in seq order; ``first_waits``: see :class:`Reorder` (the
        #: service: yes, a device's first readings are stored by several instances too)
        self.reorder = Reorder(first_waits=first_waits, clock=self._progress)
        self._stop = threading.Event()
        self.connected = asyncio.Event()
        #: the listener and the event sender on threads of their own (never queued behind the
        #: store's reads and writes in the default executor, nor holding one of its threads)
        self._threads = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="feed")

    # -- ownership changes ---------------------------------------------------------------

    def members_missing(self, missing: bool) -> None:
        """Called on every lease round: whether a member of the cluster is dead now
        (:meth:`Reorder.whole_hold_first`)."""
        self.reorder.whole_hold_first(missing)

    @property
    def taking(self) -> bool:
        """Partitions taken whose catch-up has not finished yet."""
        return bool(self._pending)

    async def acquired(self, parts: frozenset[int]) -> None:
        self._pending |= parts
        await self._queue.put(("take", parts, time.monotonic()))

    async def released(self, parts: frozenset[int]) -> None:
        self._pending -= parts
        self.reorder.forget(parts)
        await self.scoring.drop(parts)

    async def _take(self, parts: frozenset[int]) -> None:
        try:
            taken = await self.scoring.take(parts)
            if taken is not None:
                ready = [r for r in self.reorder.seed(taken)
                         if self.owner.owns_partition(r.part)]
                if ready:
                    self.stats.scored += len(ready)
                    await self.scoring.score(ready)
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
        loop = asyncio.get_running_loop()
        session = leases.Session(self.db)
        try:
            while True:
                batch = [await self._events.get()]
                while not self._events.empty() and len(batch) < 500:
                    batch.append(self._events.get_nowait())

                def send(c: Conn, batch: list[str] = batch) -> None:
                    for text in batch:
                        notify.notify(c, EVENTS, text)

                try:
                    await loop.run_in_executor(self._threads, session.tx, send)
                    self.stats.events_out += len(batch)
                except DatabaseError as exc:
                    self.stats.events_dropped += len(batch)
                    log.warning("dashboard events not sent (%s): %d dropped",
                                type(exc).__name__, len(batch))
                    await asyncio.sleep(RECONNECT.initial_s)
        finally:
            session.close()

    # -- the listener -----------------------------------------------------------------------

    def _listen(self, loop: asyncio.AbstractEventLoop) -> None:
        """In a thread: LISTEN, then hand every notification to the loop until stopped."""
        with self.db.dedicated() as pg:
            notify.listen(pg, (READINGS, EVENTS))
            loop.call_soon_threadsafe(self._offer, ("connected", None, time.monotonic()))
            while not self._stop.is_set():
                for n in pg.notifies(timeout=POLL_S):
                    loop.call_soon_threadsafe(self._offer, (n.channel, n.payload, time.monotonic()))
                    if self._stop.is_set():
                        break

    def _progress(self) -> float:
        """The hold's clock (:class:`Reorder`): while notifications wait in the queue, the time
        the newest one taken off it reached this process; the present once none waits. Time
        this instance spends behind its own queue (a busy loop, a long catch-up) is not a
        predecessor's lateness: its notification may be next in the queue, and a hold timed
        on the present would give up on it before reading it (measured: a lone survivor
        scoring every patient on a loaded machine, its readings tens of seconds behind)."""
        return time.monotonic() if self._queue.empty() else self._taken_at

    def _offer(self, item: tuple[str, Any, float]) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.stats.overflows += 1
            self._overflow = True

    async def run(self) -> None:
        """Listen and feed until cancelled; reconnect (and catch up) after a lost connection."""
        loop = asyncio.get_running_loop()
        self._threads = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="feed")
        worker = asyncio.create_task(self._work(), name="feed-work")
        sender = asyncio.create_task(self._send_events(), name="feed-events")
        failures = 0
        try:
            while True:
                self._stop.clear()
                try:
                    await loop.run_in_executor(self._threads, self._listen, loop)
                    return
                except DatabaseError as exc:
                    if self.connected.is_set():  # it had connected: a new run of failures
                        failures = 0
                    self.connected.clear()
                    delay = RECONNECT.delay(failures)
                    failures += 1
                    log.warning("feed: listener connection lost (%s); reconnecting in %.1f s,"
                                " then catching up from the store", type(exc).__name__, delay)
                await asyncio.sleep(delay)
        finally:
            self._stop.set()
            for task in (worker, sender):
                task.cancel()
            await asyncio.gather(worker, sender, return_exceptions=True)
            self._threads.shutdown(wait=False)

    async def _work(self) -> None:
        while True:
            try:
                kind, payload, self._taken_at = await asyncio.wait_for(self._queue.get(),
                                                                       HOLD_MS / 4000)
            except TimeoutError:
                await self._release_expired()
                continue
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
                self._taken_at = nxt[2]
                if nxt[0] != READINGS:
                    await self._score(rows)
                    rows = []
                    await self._requeue_first(nxt)
                    break
                rows += self._rows(nxt[1])
            await self._score(rows)
            await self._release_expired()

    async def _release_expired(self) -> None:
        ready = [r for r in self.reorder.expire() if self.owner.owns_partition(r.part)]
        if ready:
            self.stats.scored += len(ready)
            await self.scoring.score(ready)

    async def _requeue_first(self, item: tuple[str, Any, float]) -> None:
        # handled at once, in order: a take or an event right after readings
        kind, payload, _ = item
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
        mine = self.reorder.push(
            [r for r in rows if self.owner.owns_partition(r.part) and r.part not in pending])
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
        await self._take(parts)
