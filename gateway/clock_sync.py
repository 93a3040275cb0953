"""Can the wall clock be trusted yet? The gateway's :class:`SyncedClock` on a host without a
real-time clock, and the readings it holds until the answer is yes.

The clock itself (wall, monotonic, sleep; ``speed`` × faster under ``--simulate``) is the
shared :class:`vitalgate.clock.ScaledClock`; this module adds what only a collector on a
Raspberry Pi needs.

A Raspberry Pi has no real-time clock: it boots with the time it last saved (or 1970) and jumps
when NTP synchronises. So the clock reads its time from a :class:`SyncSource` that also says
whether the wall time can be trusted yet (:class:`SystemSync` asks the Linux kernel and
systemd-timesyncd; :class:`ManualSync` is a settable one for tests and tools), and
:class:`HeldReadings` holds realtime readings (with their monotonic time) until it can:

* **event time** (``Reading.ts``, when a thing was measured) is never taken from an
  unsynchronised wall clock. A reading taken before the sync is stamped once the clock is
  synchronised: ``wall = sync_wall - (sync_mono - reading_mono)``.
* a later **step** of the wall clock (NTP stepping instead of slewing, an operator's
  ``date -s``) is detected as a change of ``wall - monotonic`` beyond :data:`STEP_BOUND_S`;
  it is counted (``SyncedClock.steps``) and logged once. Readings keep their arrival order (the
  buffer numbers them as they come), so a step can move ``ts`` but never reorders or repeats
  a ``seq``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys
from collections import deque
from pathlib import Path
from typing import Final, Generic, Protocol, TypeVar

from vitalgate.clock import ManualClock, ScaledClock, SystemClock, TimeReader

log = logging.getLogger(__name__)

#: wall - monotonic may wander this much (clock seconds) before we call it a step: NTP slews
#: corrections below 128 ms (ntpd's step threshold) and steps above, so one second is far
#: above any slew and far below any boot-time jump.
STEP_BOUND_S: Final = 1.0
#: realtime readings held per watch while the clock is not synchronised: one hour at the
#: watch's fastest realtime rate (one per 5 s). Beyond it the oldest is dropped — counted.
HELD_LIMIT: Final = 720
#: systemd-timesyncd creates this file once it has synchronised the clock (systemd ≥ 239).
TIMESYNCD_FLAG: Final = Path("/run/systemd/timesync/synchronized")
#: adjtimex(2) returns TIME_ERROR while the kernel's STA_UNSYNC (or STA_CLOCKERR) is set.
_TIME_ERROR: Final = 5


class SyncSource(TimeReader, Protocol):
    """Wall and monotonic seconds, and whether the wall time is known to be right."""

    def synchronised(self) -> bool: ...


class _Timex(ctypes.Structure):
    # The head of struct timex (linux/timex.h) up to ``status``; the kernel writes the whole
    # struct, so the padding leaves room for the rest (about 200 bytes on 64-bit).
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("_rest", ctypes.c_char * 256)]


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def kernel_synchronised() -> bool | None:
    """The kernel's view (adjtimex with modes 0 only reads): None where it cannot be asked."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        state = int(_libc().adjtimex(ctypes.byref(_Timex())))
    except (OSError, AttributeError):
        return None
    return None if state < 0 else state != _TIME_ERROR


class SystemSync(SystemClock):
    """This machine's clocks; synchronised when the kernel says so or timesyncd has synced.

    ``assume_synchronised``: the wall time is trusted as it is — for simulated time (the
    virtual watches stamp on this same clock) and for hosts whose sync state cannot be read
    (setting ``clock_assume_synchronised``)."""

    def __init__(self, *, assume_synchronised: bool = False, flag: Path = TIMESYNCD_FLAG) -> None:
        self.assume_synchronised = assume_synchronised
        self.flag = flag
        self._known = assume_synchronised

    def synchronised(self) -> bool:
        if self._known:  # once synchronised, a later NTP step is detected by the SyncedClock instead
            return True
        self._known = bool(self.flag.exists() or kernel_synchronised())
        return self._known


class ManualSync(ManualClock):
    """A sync source that moves only when told: a boot at ``wall``, NTP steps, ``sync()``."""

    def __init__(self, wall: float = 0.0, *, monotonic: float = 100.0, synchronised: bool = False) -> None:
        super().__init__(wall, monotonic=monotonic)
        self._synced = synchronised

    def synchronised(self) -> bool:
        return self._synced

    def step(self, to_wall: float, *, synchronised: bool = True) -> None:
        """The wall clock jumps (NTP), monotonic time does not."""
        self.set_wall(to_wall)
        self._synced = synchronised


class SyncedClock(ScaledClock):
    """The gateway's clock: a :class:`vitalgate.clock.ScaledClock` over a :class:`SyncSource`
    that also says whether its wall time is right, and counts the wall clock's steps."""

    def __init__(self, speed: float = 1.0, *, start: float | None = None,
                 source: SyncSource | None = None) -> None:
        simulated = speed != 1.0 or start is not None
        #: where wall, monotonic and sync state come from; simulated time is its own truth.
        self.source: SyncSource = source or SystemSync(assume_synchronised=simulated)
        super().__init__(speed, start=start, base=self.source)
        #: wall-clock steps seen after synchronisation (counted; the first one is logged).
        self.steps = 0
        self._offset: float | None = None
        self._synced_logged = False

    def synchronised(self) -> bool:
        """Is the wall time known to be right (NTP synchronised, or simulated)?"""
        synced = self.source.synchronised()
        if synced and not self._synced_logged:
            self._synced_logged = True
            log.info("system clock is synchronised")
        return synced

    def ms_at(self, mono: float) -> int:
        """Wall ms of the moment the monotonic clock read ``mono`` (call when synchronised)."""
        wall, now = self.wall(), self.monotonic()
        offset = wall - now
        if self._offset is not None and abs(offset - self._offset) > STEP_BOUND_S:
            self.steps += 1
            (log.warning if self.steps == 1 else log.debug)(
                "wall clock stepped by %+.1f s (step %d): readings keep their order; their "
                "timestamps follow the new time", offset - self._offset, self.steps)
        self._offset = offset
        return round((wall - (now - mono)) * 1000)


T = TypeVar("T")


class HeldReadings(Generic[T]):
    """Readings of one watch waiting for a synchronised clock (bounded, oldest dropped first)."""

    def __init__(self, limit: int = HELD_LIMIT) -> None:
        self.limit = limit
        self._held: deque[tuple[float, T]] = deque()
        #: readings that had to wait for the clock / were dropped because too many waited.
        self.held_total = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._held)

    def stamp(self, clock: SyncedClock, item: T) -> list[tuple[int, T]]:
        """``item`` measured now: [] while the clock is unsynchronised (held), else every held
        item and this one with their event time in ms, oldest first."""
        mono = clock.monotonic()
        if not clock.synchronised():
            if not self._held and self.held_total == 0:
                log.warning("system clock not synchronised (no NTP yet): holding realtime "
                            "readings until it is, to stamp them with the right time")
            self._held.append((mono, item))
            self.held_total += 1
            if len(self._held) > self.limit:
                self._held.popleft()
                self.dropped += 1
                if self.dropped == 1:
                    log.warning("clock still not synchronised: %d readings held, dropping the "
                                "oldest (counted as clock_dropped)", self.limit)
            return []
        out = [(clock.ms_at(m), it) for m, it in self._held]
        self._held.clear()
        out.append((clock.ms_at(mono), item))
        return out
