"""Free text into HL7 v2 fields: escaped, stripped of control characters, bounded.

Every value that did not come from our own code (a device's name or model, a gateway id, a
configured facility, a score's cause words) goes through :func:`field_text` before it reaches a
segment. With the standard encoding characters (``|^~\\&``) the escape sequences are
``\\F\\`` (field ``|``), ``\\S\\`` (component ``^``), ``\\T\\`` (subcomponent ``&``),
``\\R\\`` (repetition ``~``) and ``\\E\\`` (the escape character itself), HL7 v2.6 chapter 2.7.

Control characters (C0, DEL, C1) cannot be escaped portably (``\\Xhh\\`` is optional for a
receiver) and would end a segment (CR) or an MLLP frame (0x1C): each is replaced by a space.
The bound is on the escaped text, and truncation happens on the raw text, so an escape
sequence is never cut in half.
"""

from __future__ import annotations

import re
from typing import Final

#: the escape character first: the sequences the others become must not be escaped again.
_ESCAPES: Final = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"),
                   ("~", "\\R\\"))
_UNESCAPES: Final = {"E": "\\", "F": "|", "S": "^", "T": "&", "R": "~"}
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SEQUENCE: Final = re.compile(r"\\([EFSTR])\\")


def clean(value: str) -> str:
    """``value`` with every control character replaced by a space."""
    return _CONTROL.sub(" ", value)


def escape(value: str) -> str:
    """``value`` (control characters already removed) with the HL7 delimiters escaped."""
    for char, sequence in _ESCAPES:
        value = value.replace(char, sequence)
    return value


def unescape(value: str) -> str:
    """The inverse of :func:`escape` (for reading our own messages back)."""
    return _SEQUENCE.sub(lambda m: _UNESCAPES[m.group(1)], value)


def escaped_length(value: str) -> int:
    return len(value) + 2 * sum(value.count(c) for c, _ in _ESCAPES)


def field_text(value: object, max_chars: int) -> str:
    """``value`` as the text of one HL7 field or component: cleaned, escaped, and at most
    ``max_chars`` long once escaped (cut on the raw text). ``None`` is the empty string."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    if value is None:
        return ""
    raw = clean(str(value))
    if escaped_length(raw) > max_chars:
        # each raw character costs 1 or 3 escaped ones: keep the longest prefix that fits
        kept, used = 0, 0
        for ch in raw:
            cost = 3 if ch in "\\|^&~" else 1
            if used + cost > max_chars:
                break
            kept, used = kept + 1, used + cost
        raw = raw[:kept]
    return escape(raw)
