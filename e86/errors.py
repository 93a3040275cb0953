"""Typed errors of the E86 protocol: bad bytes never raise anything but these.

``E86Error`` derives from ``ValueError`` so that callers that only know "this input is bad"
can still catch it.
"""

from __future__ import annotations


class E86Error(ValueError):
    """Base class of every E86 protocol error."""


class FrameError(E86Error):
    """Bytes that are not one valid frame."""


class TruncatedFrame(FrameError):
    """Fewer bytes than the header or the length field announce."""


class LengthError(FrameError):
    """A length field below 6 or above the maximum, or bytes beyond the announced length."""


class CrcError(FrameError):
    """The frame's CRC does not match its contents."""

    def __init__(self, expected: int, actual: int, group: int, key: int) -> None:
        super().__init__(
            f"CRC mismatch in frame {group:02x} {key:02x}: "
            f"computed 0x{expected:04x}, frame carries 0x{actual:04x}"
        )
        self.expected = expected
        self.actual = actual


class PayloadError(E86Error):
    """A valid frame whose payload does not fit its message (too short, bad value)."""


class UnknownMessage(E86Error):
    """A valid frame whose group / key (or fixed payload) vitalgate does not know."""

    def __init__(self, group: int, key: int, detail: str = "") -> None:
        super().__init__(
            f"unknown message {group:02x} {key:02x}" + (f": {detail}" if detail else "")
        )
        self.group = group
        self.key = key
