"""ACK messages: MSA-1 (the acknowledgment code), MSA-2 (which message), and what they mean.

Original mode (AA/AE/AR) and enhanced mode's commit acknowledgments (CA/CE/CR) mean the same
here: IHE PCD-01 asks for an accept acknowledgment only (MSH-15 AL, MSH-16 NE).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message

ACCEPTED: Final = frozenset({"AA", "CA"})
ERROR: Final = frozenset({"AE", "CE"})
REJECTED: Final = frozenset({"AR", "CR"})
#: the longest ACK read from a receiver (an ACK is a few hundred bytes; an ERR segment with
#: a diagnostic some kilobytes): beyond it the answer is not an ACK and the connection is dropped.
MAX_ACK_BYTES: Final = 64 * 1024
#: bound of the receiver's text kept with an outbox item (MSA-3 / ERR-8).
MAX_DETAIL: Final = 500


@dataclass(frozen=True, slots=True)
class Ack:
    code: str  #: MSA-1
    control_id: str  #: MSA-2: the MSH-10 of the message acknowledged
    text: str  #: MSA-3 or ERR-8 (bounded), '' when absent


def _value(element: Any) -> str:
    try:
        return str(element.to_er7())
    except (HL7apyException, AttributeError, IndexError):
        return ""


def parse_ack(text: str) -> Ack | None:
    """The ACK in ``text`` (ER7, segments separated by CR), or None if it is not one."""
    if not text.startswith("MSH"):
        return None
    try:
        msg = parse_message(text.replace("\n", "\r"), validation_level=VALIDATION_LEVEL.TOLERANT,
                            find_groups=False)
    except (HL7apyException, ValueError, KeyError, IndexError):
        return None
    msa = [s for s in msg.children if s.name == "MSA"]
    if not msa:
        return None
    code = _value(msa[0].msa_1).strip().upper()
    if code not in ACCEPTED | ERROR | REJECTED:
        return None
    detail = _value(msa[0].msa_3)
    if not detail:
        err = [s for s in msg.children if s.name == "ERR"]
        detail = _value(err[0].err_8) if err else ""
    return Ack(code, _value(msa[0].msa_2).strip(), detail[:MAX_DETAIL])
