"""What the outbox needs of an HL7 transport, and what each delivery outcome means for it.

:class:`Transport` sends one built message and returns a :class:`Delivery`: the outcome, the
receiver's acknowledgment code and text. :class:`AckPolicy` turns a delivery (and how often
the item was tried) into the outbox's verdict (``ingest.outbox.Verdict``):

============  ===============================================  =============================
outcome        when                                             verdict
============  ===============================================  =============================
accepted       ACK with MSA-1 AA (or CA)                        delivered
rejected       AR (or CR): the receiver refuses this message    failed: never retried; counted
app-error      AE (or CE): the receiver failed to process it    retried with backoff (this
                                                                item only) up to
                                                                ``ae_max_attempts`` AEs, then failed
unavailable    no connection, no ACK within the timeout, a      retried with backoff; every
               garbled ACK or one naming another message        patient waits (receiver down)
============  ===============================================  =============================
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from ingest.hl7.oru import Hl7Message
from ingest.outbox import Verdict


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    APP_ERROR = "app-error"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class Delivery:
    outcome: Outcome
    #: MSA-1 as received; None when no ACK was read
    ack_code: str | None = None
    #: the receiver's text (MSA-3 / ERR-8) or what went wrong on the connection (bounded)
    detail: str = ""


class Transport(Protocol):
    """Sends one message and waits for its acknowledgment; never raises for a receiver's fault."""

    async def send(self, message: Hl7Message) -> Delivery: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class AckPolicy:
    """How acknowledgments become verdicts (the table above)."""

    #: an AE is retried until the item has been answered AE this many times, then failed: an
    #: application error that survives 5 attempts over the backoff (1+2+4+8 s and more) is
    #: the receiver refusing this message, not a passing fault; it must not block the
    #: patient's later messages for ever.
    ae_max_attempts: int = 5

    def __post_init__(self) -> None:
        if self.ae_max_attempts < 1:
            raise ValueError(f"ae_max_attempts must be >= 1, got {self.ae_max_attempts}")

    def verdict(self, delivery: Delivery, errors: int) -> Verdict:
        """``errors``: how many AE (or CE) answers the item has had, this one included (the
        attempts the receiver was unavailable for do not count: an outage does not use up
        the item's chances)."""
        if delivery.outcome is Outcome.ACCEPTED:
            return Verdict.DELIVERED
        if delivery.outcome is Outcome.REJECTED:
            return Verdict.FAILED
        if delivery.outcome is Outcome.APP_ERROR:
            return Verdict.FAILED if errors >= self.ae_max_attempts else Verdict.RETRY_ITEM
        return Verdict.RETRY_ALL
