"""The gateway's clock: wall time, or simulated time running ``speed`` × faster (``--simulate``).

Everything in the gateway that stamps or schedules reads this clock, so a test (or the
simulator) runs watch life at 60× while the code stays the same.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class Clock:
    def __init__(self, speed: float = 1.0, *, start: float | None = None,
                 real: Callable[[], float] = time.time) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.speed = speed
        self._real = real
        self._t0 = real()
        self._start = self._t0 if start is None else start

    def __call__(self) -> float:
        """Seconds since the epoch (simulated when speed != 1)."""
        return self._start + (self._real() - self._t0) * self.speed

    def ms(self) -> int:
        return int(self() * 1000)

    def real_seconds(self, seconds: float) -> float:
        """How long ``seconds`` of clock time take in real time."""
        return seconds / self.speed

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of clock time."""
        await asyncio.sleep(max(0.0, seconds) / self.speed)
