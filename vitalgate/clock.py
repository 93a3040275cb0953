"""The one clock of every component: wall time, monotonic time and sleep, injected.

Time has two meanings here (docs/architecture.md): event time (when a thing was measured,
stamped from :meth:`Clock.wall`) and processing time (when it was seen, for deadlines and
rates, from :meth:`Clock.monotonic`, which never steps). Code that stamps, schedules or
waits takes a :class:`Clock` instead of calling :func:`time.time`, :func:`time.monotonic` or
:func:`asyncio.sleep`, so a test (or the simulator) runs a watch's day in minutes, or stops
time, while the code stays the same.

* :class:`SystemClock` (:data:`SYSTEM`): this machine's clocks.
* :class:`ScaledClock`: ``speed`` × another clock's time from ``start`` (``--simulate`` at
  60×, the virtual watches); its sleeps are ``speed`` × shorter.
* :class:`ManualClock`: moves only when told (or when slept on): tests.

Whether the wall time can be trusted yet (a Raspberry Pi has no real-time clock) is another
question, answered by the gateway's :mod:`gateway.clock_sync` on top of a ScaledClock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Final, Protocol


class TimeReader(Protocol):
    """What a clock reads: wall seconds since the epoch and monotonic seconds."""

    def wall(self) -> float: ...
    def monotonic(self) -> float: ...


class Clock(TimeReader, Protocol):
    """Wall time (event time), monotonic time (processing time) and a sleep on the same scale."""

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """This machine's clocks; sleeps are asyncio's."""

    def wall(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


#: the machine's clock, the default wherever a clock is injected.
SYSTEM: Final = SystemClock()


def epoch_ms(clock: TimeReader = SYSTEM) -> int:
    """Wall time of ``clock`` in whole milliseconds since the epoch (the wire's ``ts`` unit)."""
    return int(clock.wall() * 1000)


class ScaledClock:
    """``speed`` × the time of ``base``, from ``start`` (wall seconds; default: base's now).

    Monotonic time runs at the same ``speed`` from 0 and never steps; :meth:`sleep` of ``s``
    clock seconds waits ``s / speed`` seconds of ``base`` (``sleep``, default asyncio's)."""

    def __init__(self, speed: float = 1.0, *, start: float | None = None, base: TimeReader = SYSTEM,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.speed = speed
        self.base = base
        self._sleep = sleep
        self._t0 = base.wall()
        self._m0 = base.monotonic()
        self._start = self._t0 if start is None else start

    def wall(self) -> float:
        """Seconds since the epoch (simulated when speed != 1 or start is given)."""
        return self._start + (self.base.wall() - self._t0) * self.speed

    def monotonic(self) -> float:
        """Monotonic seconds on the same scale as :meth:`wall` (never steps)."""
        return (self.base.monotonic() - self._m0) * self.speed

    def ms(self) -> int:
        return epoch_ms(self)

    def real_seconds(self, seconds: float) -> float:
        """How long ``seconds`` of clock time take on the base clock."""
        return seconds / self.speed

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of clock time."""
        await self._sleep(max(0.0, seconds) / self.speed)


class ManualClock:
    """A clock that moves only when told (:meth:`advance`, :meth:`set_wall`) or slept on: a
    sleep advances it at once (and yields to the loop), so waits cost no real time."""

    def __init__(self, wall: float = 1_700_000_000.0, *, monotonic: float = 100.0) -> None:
        self._wall = wall
        self._mono = monotonic

    def wall(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        """Time passes: both clocks move."""
        self._wall += seconds
        self._mono += seconds

    def set_wall(self, wall: float) -> None:
        """The wall clock jumps (an NTP step, ``date -s``); monotonic time does not."""
        self._wall = wall

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)
