"""ACK messages: MSA-1 (the acknowledgment code), MSA-2 (which message), and what they mean.

Original mode (AA/AE/AR) and enhanced mode's commit acknowledgments (CA/CE/CR) mean the same
here: IHE PCD-01 asks for an accept acknowledgment only (MSH-15 AL, MSH-16 NE). Read with
python-hl7, which takes the separators from the ACK's own MSH.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import hl7

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
    text: str  #: MSA-3 or ERR-8 (bounded, unescaped), '' when absent


def _text(msg: Any, segment: Any, field: int) -> str:
    try:
        return str(msg.unescape(str(segment[field]))) if len(segment) > field else ""
    except (IndexError, ValueError):
        return ""


def parse_ack(text: str) -> Ack | None:
    """The ACK in ``text`` (ER7, segments separated by CR), or None if it is not one."""
    text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r")
    if not text.startswith("MSH") or len(text) < 8:
        return None
    try:
        msg = hl7.parse(text)
        msa = msg.segment("MSA")
    except (KeyError, IndexError, ValueError, hl7.exceptions.ParseException):
        return None
    code = _text(msg, msa, 1).strip().upper()
    if code not in ACCEPTED | ERROR | REJECTED:
        return None
    detail = _text(msg, msa, 3)
    if not detail:
        try:
            detail = _text(msg, msg.segment("ERR"), 8)
        except (KeyError, IndexError):
            detail = ""
    return Ack(code, _text(msg, msa, 2).strip(), detail[:MAX_DETAIL])
