"""HL7 output wired into the service: messages into the durable outbox (channel ``hl7``),
delivered over MLLP by the outbox's worker for the channel.

* readings: :meth:`Hl7Output.readings`, awaited in ``IngestService.observe`` after the
  commit and before the engine scores the rows, builds the readings' messages in a worker
  thread and enqueues them in one transaction of the EWS store (dedup key: the control id), so
  a reading's message always precedes the message of the score made from it;
* EWS points: the engine enqueues each emitted point's message in the transaction of its
  history row (``EwsEngine.add_channel("hl7", render)``, dedup key ``ews:<history id>``): a
  point in the history is never missing from the channel;
* :class:`Hl7Transport` is the channel's outbox transport: a row's body is the message text,
  sent verbatim; the ACK must name its MSH-10.

A crash between the readings' commit and their enqueue (or an enqueue the EWS store refuses)
loses nothing: the enqueue's transaction also advances the channel's export mark, and at
start (:meth:`Hl7Output.catch_up`) and after a failed enqueue the readings committed since the
mark, minus a margin, are enqueued again (:mod:`ingest.export_catchup`); the control ids
absorb the copies.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from ingest.db.engine import Conn, Database
from ingest.db.outbox import Row, enqueue
from ingest.db.readings import StoredReading
from ingest.ews_engine import EwsPoint
from ingest.export_catchup import ExportMarks
from ingest.hl7.channel import NAME, Hl7Channel, device_labels
from ingest.hl7.mllp import MllpPool
from ingest.hl7.oru import DeviceInfo, Hl7Message, OruConfig
from ingest.hl7.transport import Transport
from ingest.outbox import ClientTransport, Outbox, Outcome, RetryPolicy

log = logging.getLogger(__name__)


class Hl7Transport(ClientTransport[Transport]):
    """``ingest.outbox.Transport`` of channel ``hl7``: one row, one MLLP exchange."""

    def __init__(self, client: Transport, channel: Hl7Channel) -> None:
        super().__init__(client)
        self.channel = channel

    async def send(self, row: Row) -> Outcome:
        control = control_id_of(row.body)
        if control is None:  # not a message this channel wrote: refused, never retried
            return Outcome.failed("the row's body is not an HL7 message")
        delivery = await self.client.send(Hl7Message(control, row.user_code, row.body))
        verdict = self.channel.judge(control, delivery)
        detail = f"{delivery.ack_code or delivery.outcome.value}: {delivery.detail}"
        return Outcome(verdict, None, detail[:500])


def control_id_of(er7: str) -> str | None:
    """MSH-10 of a message this channel built (its separators are the standard ones)."""
    if not er7.startswith("MSH|^~\\&|"):
        return None
    fields = er7.split("\r", 1)[0].split("|")
    return fields[9] if len(fields) > 9 and fields[9] else None


#: MLLP connections to the receiver, and so patients' messages in flight at once: one
#: connection answers one message at a time, and each outbox round (a claim and a settle
#: transaction) carries as many messages as connections. 4 measured ~3x one connection's
#: throughput (benchmarks/hl7_out.py) and stays far below what an interface engine accepts.
CONNECTIONS: Final = 4


def retry_policy(ack_timeout_s: float) -> RetryPolicy:
    """The outbox's policy for channel hl7: its backoff (1 s doubling to 60 s), one patient per
    connection in flight, and a timeout that covers a connect, an ACK wait and the one
    immediate retry on a fresh connection."""
    return RetryPolicy(timeout_s=2 * ack_timeout_s + 1.0, concurrency=CONNECTIONS)


def enqueue_messages(conn: Conn, messages: Iterable[Hl7Message], now: int) -> int:
    """Add the messages to the outbox in the caller's transaction; how many were new."""
    added = 0
    for m in messages:
        if enqueue(conn, channel=NAME, user_code=m.user_code, dedup_key=m.control_id,
                   body=m.er7, now=now) is not None:
            added += 1
    return added


Devices = Callable[[set[str]], Awaitable[Mapping[str, DeviceInfo]]]


class Hl7Output:
    def __init__(self, channel: Hl7Channel, outbox: Outbox, marks: ExportMarks | None = None,
                 devices: Devices | None = None) -> None:
        self.channel = channel
        self.outbox = outbox
        #: the export mark and catch-up (None: no readings store given; no catch-up)
        self.marks = marks
        #: the registry's names and models of devices (for catch-ups; readings() may pass its own)
        self.devices = devices
        self.enqueued = 0
        self.duplicates = 0
        #: batches of committed readings whose messages could not be enqueued (store failure)
        self.enqueue_errors = 0

    async def readings(self, rows: Sequence[StoredReading], devices: Devices | None = None) -> None:
        """Enqueue the messages of committed reading rows;
        while behind (start, a failed enqueue), a catch-up instead (it covers these rows)."""
        if not rows:
            return
        if self.marks is None:
            await self._enqueue(rows, devices)
            return
        await self.marks.offer(rows, lambda r: self._enqueue(r, devices))

    async def catch_up(self) -> int:
        """Enqueue what was committed since the export mark (at start); the messages added."""
        return 0 if self.marks is None else await self.marks.catch_up(self._enqueue)

    async def _enqueue(self, rows: Sequence[StoredReading],
                       devices: Devices | None = None) -> int | None:
        """The messages added, or None when they could not be enqueued (counted, logged)."""
        devices = devices or self.devices
        marks = self.marks
        try:
            ids = {r.device_id for r in rows if r.user_code}
            labels = await devices(ids) if devices is not None and ids else {}
            messages = await asyncio.to_thread(self.channel.readings, rows, labels)
            if not messages:
                return 0
            now = self.channel.clock()

            def write(c: Conn) -> int:
                added = enqueue_messages(c, messages, now)
                if marks is not None:
                    marks.advance(c, rows)
                return added

            added = await self.outbox.db.write(write)
        except Exception as exc:  # HL7 output never stops ingestion: counted and logged
            self.enqueue_errors += 1
            log.error("HL7: the messages of %d committed reading rows were not enqueued (%s);"
                      " %d such failures%s", len(rows), type(exc).__name__, self.enqueue_errors,
                      "; caught up later" if marks is not None else "")
            return None
        self.enqueued += added
        self.duplicates += len(messages) - added
        if added:
            self.outbox.notify(NAME)
        return added

    def points(self, points: Sequence[EwsPoint]) -> None:
        """Points were emitted (their rows are committed): deliver now."""
        if points:
            self.outbox.notify(NAME)

    def stats(self) -> dict[str, int]:
        marks = {} if self.marks is None else self.marks.stats()
        return {**self.channel.stats(), "enqueued": self.enqueued, "duplicates": self.duplicates,
                "enqueue_errors": self.enqueue_errors, **marks}


def attach(settings: Any, outbox: Outbox, engine: Any, *, clock: Callable[[], int],
           readings_db: Database | None = None) -> Hl7Output | None:
    """Register channel ``hl7`` on ``outbox`` and ``engine`` (``EwsEngine.add_channel``) when
    ``settings`` (IngestSettings) configure a receiver; None (nothing registered) otherwise.
    With ``readings_db`` (the readings store) the channel keeps an export mark and catches up."""
    if not settings.hl7_enabled:
        return None
    config = OruConfig(facility=settings.hl7_facility,
                       patient_authority=settings.hl7_patient_authority, table=settings.ews_table)
    channel = Hl7Channel(config, ward_of=settings.ward_of, clock=clock)
    client = MllpPool(settings.hl7_host, int(settings.hl7_port), size=CONNECTIONS,
                      ack_timeout_s=settings.hl7_ack_timeout_s)
    outbox.register(NAME, Hl7Transport(client, channel),
                    retry=retry_policy(settings.hl7_ack_timeout_s))
    engine.add_channel(NAME, channel.render_point)
    log.info("HL7 v2 out: ORU^R01 over MLLP to %s (facility %s)", client.address,
             settings.hl7_facility)
    if readings_db is None:
        return Hl7Output(channel, outbox)
    store = readings_db

    async def devices(ids: set[str]) -> Mapping[str, DeviceInfo]:
        return await store.read(lambda c: device_labels(c, ids))

    marks = ExportMarks(NAME, readings=store, ews=outbox.db, instance=outbox.instance_id,
                        clock=clock)
    return Hl7Output(channel, outbox, marks, devices)
