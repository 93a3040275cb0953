"""Test tools for the alert state machine (ingest.alerts): an EWS point as it reads one."""

from __future__ import annotations

from dataclasses import dataclass

#: the event time the alert tests start at (an injected clock's zero)
T0 = 1_700_000_000_000


@dataclass(frozen=True)
class S:
    """An EWS point with the fields ``ingest.alerts.Score`` reads (short name: the tests
    build dozens of them inline)."""

    user_code: str
    point: int
    risk: str
    result: str
    produce_at: int = T0
    valid: bool = True
