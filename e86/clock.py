"""Watch time ↔ UTC.

Watch times are u32 seconds since 2000-01-01 00:00:00 in the watch's LOCAL time (the
timezone the gateway set its clock in)::

    utc_ms = (t + 946684800) * 1000 - utc_offset_ms

With a fixed offset use ``watch_to_utc_ms`` / ``utc_ms_to_watch``; with a real timezone
(daylight saving) use ``watch_local_to_utc_ms`` / ``utc_ms_to_watch_local``, which take the
offset in force at that moment.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from typing import Final

from e86.commands import SetClock
from e86.constants import WATCH_EPOCH_UNIX

_WATCH_EPOCH_NAIVE: Final = datetime(2000, 1, 1)
#: Largest watch time (u32).
WATCH_TIME_MAX: Final = 0xFFFFFFFF


def watch_to_utc_ms(t: int, utc_offset_ms: int) -> int:
    """Watch seconds (local) → Unix epoch milliseconds (UTC), given the watch's UTC offset."""
    return (t + WATCH_EPOCH_UNIX) * 1000 - utc_offset_ms


def utc_ms_to_watch(utc_ms: int, utc_offset_ms: int) -> int:
    """Unix epoch milliseconds (UTC) → watch seconds (local), rounded down to the second."""
    return (utc_ms + utc_offset_ms) // 1000 - WATCH_EPOCH_UNIX


def utc_offset_ms(tz: tzinfo, at: datetime) -> int:
    """The UTC offset of ``tz`` at the aware moment ``at``, in milliseconds."""
    offset = at.astimezone(tz).utcoffset()
    if offset is None:
        raise ValueError(f"timezone {tz!r} has no UTC offset")
    return offset // timedelta(milliseconds=1)


def watch_local_to_utc_ms(t: int, tz: tzinfo) -> int:
    """Watch seconds as wall time in ``tz`` → UTC ms, with the offset in force then (an
    ambiguous wall time at a DST change resolves to its first occurrence)."""
    local = (_WATCH_EPOCH_NAIVE + timedelta(seconds=t)).replace(tzinfo=tz)
    return _timestamp_ms(local)


def utc_ms_to_watch_local(utc_ms: int, tz: tzinfo) -> int:
    """UTC ms → watch seconds as wall time in ``tz``."""
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=utc_ms)
    wall = moment.astimezone(tz).replace(tzinfo=None)
    return (wall - _WATCH_EPOCH_NAIVE) // timedelta(seconds=1)


def set_clock(now: datetime, tz: tzinfo) -> SetClock:
    """The set-clock command (``01 00``) for the aware moment ``now`` as wall time in ``tz``."""
    return SetClock.from_datetime(now, tz)


def _timestamp_ms(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return delta // timedelta(milliseconds=1)
