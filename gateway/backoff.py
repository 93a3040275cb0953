"""Jittered exponential backoff as data (used for MQTT reconnects and BLE reconnects)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """``delay(n)`` = min(max_s, initial_s × factor**n), scaled by a random factor in
    [1 − jitter, 1 + jitter] and clamped to max_s.

    Jitter spreads the reconnects of a ward's gateways (or a gateway's watches) after a common
    outage, so they do not all hit the broker (or the adapter) in the same instant.
    """

    initial_s: float = 1.0
    factor: float = 2.0
    max_s: float = 60.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.initial_s < 0 or self.factor < 1 or self.max_s < self.initial_s or not 0 <= self.jitter <= 1:
            raise ValueError(f"invalid backoff policy {self}")

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        base = min(self.max_s, self.initial_s * self.factor ** min(attempt, 64))
        return min(self.max_s, base * (1.0 - self.jitter + 2.0 * self.jitter * rand()))
