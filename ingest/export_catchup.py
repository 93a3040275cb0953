"""Nothing committed is lost for an export channel (FHIR, HL7) across a crash.

Readings reach an export channel by an enqueue into the outbox (EWS store) AFTER their batch
committed in the readings store (another SQLite file; on PostgreSQL another transaction). A
process that dies in between, or an enqueue the EWS store refuses, would lose those readings
for the channel. So each channel keeps a high-water mark (:mod:`ingest.db.exports`), advanced
in the SAME transaction as the enqueue of a batch's rows (:meth:`ExportMarks.advance`), and
catches up (:meth:`ExportMarks.catch_up`) at start and after any failed enqueue: it reads from
the readings store every reading received since the channel's oldest mark minus
:data:`MARGIN_MS`, page by page, and enqueues it again; the outbox's dedup keys absorb what it
held already (HL7: the message control id; FHIR: the row's Observation identifiers, and the
server's conditional create whatever the packing). Caught-up readings are counted and logged
once at INFO.

Time: the mark is processing time (``received_at``, set by the instance that received the
message), the only order commits follow; event time (``ts``) says nothing of when a row was
committed (a gateway's buffer flushes hours-old readings).

Order: caught-up rows are enqueued after whatever the channel enqueued since, so a caught-up
reading may follow the NEWS2 point scored from it; each carries its own event time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Final

from ingest.db import Conn, Database, exports
from ingest.db import readings as readings_db
from ingest.db.readings import StoredReading

log = logging.getLogger(__name__)

#: how far (ms of processing time) before its mark a channel reads again when it catches up.
#: A batch's readings carry the time their messages arrived (``received_at``); a batch with
#: older ``received_at`` may be enqueued after a newer one has advanced the mark: a batch held
#: in the consumer's queue and batch window (``batch_window_ms`` <= 1 s) and its commit, the
#: ECG worker committing alongside the consumer, the enqueue's own retries (1.1 s), and, with
#: several instances on one PostgreSQL, their clocks' skew (NTP keeps it far below a second;
#: 60 s allowed). 2 minutes covers all of them with room; re-reading 2 minutes of a hospital's
#: readings at start costs a few thousand rows, absorbed by the dedup keys.
MARGIN_MS: Final = 120_000
#: readings per catch-up transaction (one read, one enqueue transaction of their rows).
PAGE: Final = 500

#: enqueues committed readings' rows (calling ExportMarks.advance in its transaction); the
#: outbox rows added, or None when the EWS store refused the write.
Enqueue = Callable[[Sequence[StoredReading]], Awaitable[int | None]]


class ExportMarks:
    """One export channel's mark and catch-up (one per channel per service)."""

    def __init__(self, channel: str, *, readings: Database, ews: Database, instance: str,
                 clock: Callable[[], int], margin_ms: int = MARGIN_MS, page: int = PAGE) -> None:
        self.channel = channel
        self.readings = readings
        self.ews = ews
        self.instance = instance
        self.clock = clock
        self.margin_ms = margin_ms
        self.page = page
        #: True until a catch-up succeeded, and again after any failed enqueue
        self.behind = True
        #: readings re-read by catch-ups, and the outbox rows they added (what was missing)
        self.caught_up_readings = 0
        self.caught_up_rows = 0
        self.catch_ups = 0
        self.catch_up_errors = 0
        self._lock = asyncio.Lock()

    def advance(self, conn: Conn, rows: Sequence[StoredReading]) -> None:
        """In the enqueue's transaction: the mark covers these rows from now on."""
        if rows:
            exports.advance(conn, self.channel, self.instance,
                            max(int(r.received_at) for r in rows), self.clock())

    async def offer(self, rows: Sequence[StoredReading], enqueue: Enqueue) -> int:
        """A commit's readings: enqueued; when behind (start, or a failed enqueue before),
        a catch-up instead (it reads these committed rows too). The outbox rows added."""
        if self.behind:
            async with self._lock:
                if self.behind:
                    return await self._guarded(enqueue)
            # another commit's catch-up finished meanwhile: its last read may have come
            # before these rows committed, so they are enqueued as usual
        added = await enqueue(rows)
        if added is None:
            self.behind = True
            return 0
        return added

    async def catch_up(self, enqueue: Enqueue) -> int:
        """Enqueue every reading received since the oldest mark minus the margin; the outbox
        rows added. A failure leaves the channel behind (the next commit tries again)."""
        async with self._lock:
            if not self.behind:
                return 0
            return await self._guarded(enqueue)

    async def _guarded(self, enqueue: Enqueue) -> int:
        try:
            return await self._catch_up(enqueue)
        except Exception as exc:  # the store: counted, logged, tried again
            self.catch_up_errors += 1
            log.error("%s: catching up with the readings store failed (%s); tried again at"
                      " the next commit", self.channel, type(exc).__name__)
            return 0

    async def _catch_up(self, enqueue: Enqueue) -> int:
        now = self.clock()
        mark = await self.ews.read(lambda c: exports.oldest(c, self.channel))
        since = (now if mark is None else mark) - self.margin_ms
        if mark is None:  # the channel's first start: a mark, so a crash now loses nothing
            await self.ews.write(lambda c: exports.advance(c, self.channel, self.instance,
                                                           since, now))
        first = since
        read = added = 0
        high: int | None = None
        while True:
            rows = await self.readings.read(partial(readings_db.received_page,
                                                    since_ms=since, limit=self.page))
            if not rows:
                break
            n = await enqueue(rows)
            if n is None:
                self.catch_up_errors += 1
                self._count(read, added)
                return added  # still behind
            read += len(rows)
            added += n
            high = rows[-1].received_at
            since = high + 1
            if len(rows) < self.page:
                break
        if high is not None:
            top = high
            await self.ews.write(lambda c: exports.raise_all(c, self.channel, top, self.clock()))
        self.behind = False
        self.catch_ups += 1
        self._count(read, added)
        log.info("%s: caught up with the readings store: %d readings received since %d re-read,"
                 " %d outbox rows added (the others were there already)", self.channel, read,
                 first, added)
        return added

    def _count(self, read: int, added: int) -> None:
        self.caught_up_readings += read
        self.caught_up_rows += added

    def stats(self) -> dict[str, int]:
        return {"caught_up_readings": self.caught_up_readings,
                "caught_up_rows": self.caught_up_rows, "catch_ups": self.catch_ups,
                "catch_up_errors": self.catch_up_errors, "behind": int(self.behind)}
