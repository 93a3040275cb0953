"""Jittered exponential backoff as data: the one retry-delay type of every service.

Used by the gateway (BLE reconnects, :mod:`gateway.ble.retry`; MQTT reconnects,
:mod:`gateway.mqtt_retry`), ingest's MQTT consumer (paho's own reconnect, bounded by a
``Backoff``), the EWS outbox (:class:`ingest.outbox.RetryPolicy`) and the InfluxDB writer. A
policy is a frozen value: each user names its constants and says why (the "why" lives beside
the numbers, where they are chosen), this module only computes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """``delay(n)`` = min(max_s, initial_s × factor**n) (``n`` = failures so far, 0-based),
    scaled by a random factor and clamped to max_s:

    * ``shorten_only=False`` (spread): a factor in [1 − jitter, 1 + jitter], so a ward's
      gateways (or a gateway's watches) that lost their peer together do not all come back in
      the same instant;
    * ``shorten_only=True``: a factor in [1 − jitter, 1], so ``max_s`` is a promise to the
      reader ("never more than a minute between attempts", the EWS outbox).

    ``jitter=0`` is the plain doubling of paho's own reconnect and the InfluxDB writer.
    """

    initial_s: float = 1.0
    factor: float = 2.0
    max_s: float = 60.0
    jitter: float = 0.5
    shorten_only: bool = False

    def __post_init__(self) -> None:
        if self.initial_s < 0 or self.factor < 1 or self.max_s < self.initial_s or not 0 <= self.jitter <= 1:
            raise ValueError(f"invalid backoff policy {self}")

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after ``attempt`` + 1 failures in a row (``attempt`` ≥ 0)."""
        base = min(self.max_s, self.initial_s * self.factor ** min(max(0, attempt), 64))
        if self.shorten_only:
            return base * (1.0 - self.jitter * rand())
        return min(self.max_s, base * (1.0 - self.jitter + 2.0 * self.jitter * rand()))
