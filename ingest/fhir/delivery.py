"""FHIR delivery wired into the service: the outbox channel ``fhir`` and its two producers.

``FhirDelivery.attach`` (called by the service only when ``fhir_url`` is set):

* registers :class:`OutboxTransport` (one transaction Bundle per outbox row, answers classified
  by :mod:`ingest.fhir.transport`) on the durable outbox as channel ``fhir``, with the outbox's
  retry policy (backoff, one row in flight per patient, leases across instances);
* adds channel ``fhir`` to the EWS engine: every point the engine emits is enqueued in the same
  transaction as its history row (dedup key ``ews:<history id>``);
* :meth:`FhirDelivery.enqueue_readings` enqueues the rows of each commit's stored readings on
  the EWS store (dedup keys name the Observations: enqueued twice, stored once), before the
  engine scores them, so a patient's readings rows precede the NEWS2 rows derived from them;
  in the same transaction the channel's export mark advances (:mod:`ingest.export_catchup`):
  at start (:meth:`FhirDelivery.catch_up`) and after a failed enqueue, the readings committed
  since the mark (minus a margin) are enqueued again, so a crash between a commit and its
  enqueue loses nothing (the dedup keys and the server's conditional create absorb copies).

Counts (``FhirDelivery.stats``): the channel's (readings, observations, rows, skipped...), rows
absorbed by the outbox's dedup key, render failures, and the transport's answers by verdict.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from pydantic import SecretStr

from ingest.db import Conn, Database, registry
from ingest.db.outbox import Row, enqueue
from ingest.db.readings import StoredReading
from ingest.export_catchup import ExportMarks
from ingest.fhir.channel import CHANNEL, FhirChannel, send_row
from ingest.fhir.resources import ScorePoint
from ingest.fhir.transport import DEFAULT_TIMEOUT_S, FhirTransport
from ingest.outbox import ClientTransport, Outbox, Outcome, RetryPolicy, Verdict
from vitalgate.contract import mac_from_device_id

log = logging.getLogger(__name__)

#: devices whose model is remembered (a hospital has thousands of watches at most).
MAX_MODELS: Final = 100_000
#: a device without a model in the registry is looked up again after 5 min (processing time):
#: its status (which carries the model) usually arrives before its first readings, not always.
MODEL_RETRY_MS: Final = 300_000

#: pauses between the attempts to enqueue a commit's rows when the EWS store refuses the write
#: (a lock timeout, a PostgreSQL failover): three attempts within 1.1 s, then the rows are
#: counted (enqueue_failed_rows) rather than holding back the consumer, and the channel
#: catches up from its export mark at the next commit (without a mark: lost for FHIR).
ENQUEUE_RETRY_S: Final = (0.1, 1.0, 0.0)

#: runs ``fn(conn)`` on the readings store's reader (``ingest.store.Database.read``)
StoreRead = Callable[[Callable[[Any], Any]], Awaitable[Any]]


class Models:
    """device_id → the watch model the registry holds (for the FHIR Device), cached."""

    def __init__(self, read: StoreRead, clock: Callable[[], int]) -> None:
        self._read = read
        self._clock = clock
        self._known: OrderedDict[str, tuple[str, int]] = OrderedDict()  #: model ('' none), when
        self.lookups = 0
        self.errors = 0

    async def of(self, device_ids: Iterable[str]) -> dict[str, str]:
        now = self._clock()
        wanted = set(device_ids)
        stale = sorted(d for d in wanted if d not in self._known
                       or (not self._known[d][0] and now - self._known[d][1] >= MODEL_RETRY_MS))
        if stale:
            macs = [mac_from_device_id(d) for d in stale]
            try:
                rows = [(mac, model) for mac, _name, model in
                        await self._read(lambda conn: registry.labels(conn, macs))]
            except Exception as exc:  # no model is no reason to hold back a reading
                self.errors += 1
                log.warning("FHIR: device models could not be read (%s); Devices without model",
                            type(exc).__name__)
                rows = []
            self.lookups += 1
            found = {str(mac).replace(":", "").lower(): str(model or "")[:128] for mac, model in rows}
            for d in stale:
                self._known[d] = (found.get(d, ""), now)
                self._known.move_to_end(d)
            while len(self._known) > MAX_MODELS:
                self._known.popitem(last=False)
        return {d: self._known[d][0] for d in wanted if d in self._known and self._known[d][0]}

class OutboxTransport(ClientTransport[FhirTransport]):
    """``ingest.outbox.Transport`` for channel ``fhir``: a row's body is its units."""

    async def send(self, row: Row) -> Outcome:
        a = await send_row(self.client, row.body)
        if a.verdict is Verdict.DELIVERED:
            return Outcome(Verdict.DELIVERED, a.status)
        return Outcome(a.verdict, a.status, a.detail, a.retry_after_s)


class FhirDelivery:
    """The FHIR channel's producers and counters (one per service)."""

    def __init__(self, channel: FhirChannel, db: Database, outbox: Outbox,
                 clock: Callable[[], int], models: Models | None = None,
                 marks: ExportMarks | None = None) -> None:
        self.channel = channel
        #: the export mark and catch-up (None: no readings store given; no catch-up)
        self.marks = marks
        self.db = db
        self.outbox = outbox
        self.clock = clock
        self.models = models
        self.transport: FhirTransport | None = None
        self.counts: dict[str, int] = {"absorbed_rows": 0, "render_failures": 0,
                                       "enqueue_failed_rows": 0}

    @classmethod
    def attach(cls, *, url: str, token: SecretStr | None, patient_system: str, batch: int,
               db: Database, outbox: Outbox, engine: Any, clock: Callable[[], int],
               retry: RetryPolicy | None = None, store_read: StoreRead | None = None,
               readings_db: Database | None = None) -> FhirDelivery:
        """Register the channel on ``outbox`` and on ``engine`` (``EwsEngine.add_channel``).

        Retry policy: the outbox's defaults (1 s doubling to 60 s, 20 % jitter, 4 patients in
        flight) with the FHIR request timeout (30 s: a server validates and commits a whole
        transaction, slower than one Cexup POST); the lease is then 2 x 30 s + 30 s."""
        policy = retry or RetryPolicy(timeout_s=DEFAULT_TIMEOUT_S)
        models = Models(store_read, clock) if store_read is not None else None
        marks = None if readings_db is None else ExportMarks(
            CHANNEL, readings=readings_db, ews=db, instance=outbox.instance_id, clock=clock)
        self = cls(FhirChannel(patient_system, batch=batch), db, outbox, clock, models, marks)
        self.transport = FhirTransport(url, token=token, max_entries=batch,
                                       timeout_s=policy.timeout_s)
        outbox.register(CHANNEL, OutboxTransport(self.transport), retry=policy)
        engine.add_channel(CHANNEL, self.render)
        return self

    def render(self, point: ScorePoint) -> str | None:
        """The body of a NEWS2 point's row (called inside the engine's history transaction:
        never raises; a point that cannot be built is counted and logged, not enqueued)."""
        try:
            rows = self.channel.points_rows([point])
        except Exception:  # a bug here must not cost the EWS history its row
            self.counts["render_failures"] += 1
            log.exception("FHIR: a NEWS2 point could not be rendered; not enqueued for FHIR")
            return None
        if not rows:
            self.counts["render_failures"] += 1
            log.warning("FHIR: a NEWS2 point is not a FHIR score (counted); not enqueued")
            return None
        return rows[0].body

    async def enqueue_readings(self, readings: Iterable[StoredReading],
                               models: Mapping[str, str] | None = None) -> int:
        """Enqueue the FHIR rows of committed readings; returns the rows added. ``models``
        (device_id → model) defaults to what the registry says. With an export mark: while
        behind (start, a failed enqueue), a catch-up instead (it covers these rows too)."""
        readings = list(readings)
        if self.marks is None:
            return await self._enqueue(readings, models) or 0
        if models is not None:
            return await self.marks.offer(readings, lambda rows: self._enqueue(rows, models))
        return await self.marks.offer(readings, self._enqueue)

    async def catch_up(self) -> int:
        """Enqueue what was committed since the export mark (at start); the rows added."""
        return 0 if self.marks is None else await self.marks.catch_up(self._enqueue)

    async def _enqueue(self, readings: Sequence[StoredReading],
                       models: Mapping[str, str] | None = None) -> int | None:
        """The rows added, or None when the EWS store refused them (counted and logged)."""
        if models is None and self.models is not None:
            models = await self.models.of({r.device_id for r in readings if r.user_code})
        rows = self.channel.readings_rows(readings, models)
        if not rows:
            return 0
        now = self.clock()
        marks = self.marks

        def write(conn: Conn) -> int:
            added = 0
            for r in rows:
                if enqueue(conn, channel=CHANNEL, user_code=r.user_code, dedup_key=r.dedup_key,
                           body=r.body, now=now) is not None:
                    added += 1
            if marks is not None:
                marks.advance(conn, readings)
            return added

        for attempt, pause_s in enumerate(ENQUEUE_RETRY_S):
            try:
                added = await self.db.write(write)
                break
            except Exception as exc:  # the readings are stored and must still be scored
                if attempt + 1 < len(ENQUEUE_RETRY_S):
                    await asyncio.sleep(pause_s)
                    continue
                self.counts["enqueue_failed_rows"] += len(rows)
                log.error("FHIR: %d rows could not be enqueued (%s: %s); their readings are "
                          "stored%s (counted)", len(rows), type(exc).__name__, str(exc)[:200],
                          " and caught up later" if marks is not None
                          else " but will not reach the FHIR server")
                return None
        self.counts["absorbed_rows"] += len(rows) - added
        if added:
            self.outbox.notify(CHANNEL)
        return added

    def notify(self) -> None:
        self.outbox.notify(CHANNEL)

    def stats(self) -> dict[str, int]:
        answers = {f"answers_{k}": v for k, v in (self.transport.counts if self.transport else {}).items()}
        lookups = {} if self.models is None else {"model_lookups": self.models.lookups,
                                                   "model_errors": self.models.errors}
        marks = {} if self.marks is None else self.marks.stats()
        return {**self.channel.counts, **self.counts, **answers, **lookups, **marks}
