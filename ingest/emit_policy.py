"""When a new EWS score is worth emitting (recording, publishing and posting to Cexup).

A stream scorer re-scores a patient on every reading; most re-scores repeat the last score or
flicker by a point as a vital crosses a band edge and back. The policy turns that stream into
few, timely EWS points:

1. the first valid score of a patient is emitted at once;
2. a rise of the NEWS2 risk (low < low-medium < medium < high) is emitted at once: an
   escalation must never wait;
3. any other change of ``point`` or ``result`` (including a fall of the risk) is emitted at most
   once per ``min_interval_ms`` per patient; a change held back is emitted when the interval has
   passed (``EwsEngine.tick``), with the score current at that moment, unless by then the score
   is back to what was last emitted;
4. while data flows, the current score is re-emitted at least every ``heartbeat_ms`` (a
   heartbeat: the platform sees the patient is still monitored even when nothing changes);
5. a score whose newest vital is older than the last emitted point's is not news (it describes
   an older state) and is not emitted, so every patient's emitted points are monotone in
   ``produce_at``.

The decision is a pure function of data, so the policy is tested without clocks or databases.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

#: NEWS2 clinical risk, lowest first (ref/news2.md, "Aggregate risk and response").
RISK_ORDER: Final[dict[str, int]] = {"low": 0, "low-medium": 1, "medium": 2, "high": 3}


@dataclass(frozen=True)
class EmitPolicy:
    """Emission limits. Every constant is a clinical or operational choice, explained here."""

    #: emit a rise of the risk band at once, ignoring ``min_interval_ms``. An escalation to
    #: urgent or emergency response must reach the clinician without delay.
    immediate_on_risk_rise: bool = True
    #: at most one emission per patient per 30 s for changes that are not a risk rise. A
    #: wearable reports every few seconds; a vital sitting on a band edge would otherwise flip the
    #: score every reading. 30 s is an order of magnitude below NEWS2's most frequent monitoring
    #: interval for a stable patient (hourly), so no clinically meaningful delay is added.
    min_interval_ms: int = 30_000
    #: re-emit the current score at least hourly while new data arrives. Hourly is NEWS2's
    #: monitoring interval for a low-medium/medium patient: the platform then always holds a
    #: score no older than the chart asks for, even when the score never changes.
    heartbeat_ms: int = 3_600_000

    def __post_init__(self) -> None:
        if self.min_interval_ms < 0:
            raise ValueError(f"min_interval_ms must be >= 0, got {self.min_interval_ms}")
        if self.heartbeat_ms <= 0:
            raise ValueError(f"heartbeat_ms must be > 0, got {self.heartbeat_ms}")


DEFAULT_POLICY: Final = EmitPolicy()


class Trigger(StrEnum):
    """Why a point was emitted (stored with it in ``ews_history.trigger``)."""

    FIRST = "first"
    RISK_RISE = "risk-rise"
    CHANGE = "change"
    HEARTBEAT = "heartbeat"
    CONTEXT = "context"
    EXTERNAL = "external"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the policy compares: the parts of a score that matter for emission."""

    point: int
    result: str
    risk: str
    produce_at: int


@dataclass(frozen=True, slots=True)
class Decision:
    """``emit`` with a ``trigger``; or not, with ``hold`` saying whether a change waits."""

    emit: bool
    trigger: Trigger | None = None
    hold: bool = False


SKIP: Final = Decision(False)
HOLD: Final = Decision(False, hold=True)


def decide(
    policy: EmitPolicy,
    new: Snapshot,
    last: Snapshot | None,
    last_at: int | None,
    now: int,
) -> Decision:
    """Whether the valid score ``new`` is emitted now, given the last emitted ``last`` (emitted at
    clock time ``last_at``). Heartbeats are decided by :func:`heartbeat_due`."""
    if last is None or last_at is None:
        return Decision(True, Trigger.FIRST)
    if new.produce_at < last.produce_at:
        return SKIP  # describes an older state than what the platform already has
    if policy.immediate_on_risk_rise and RISK_ORDER[new.risk] > RISK_ORDER[last.risk]:
        return Decision(True, Trigger.RISK_RISE)
    if (new.point, new.result) == (last.point, last.result):
        return SKIP
    if now - last_at >= policy.min_interval_ms:
        return Decision(True, Trigger.CHANGE)
    return HOLD


def heartbeat_due(policy: EmitPolicy, last_at: int | None, now: int, new_data: bool) -> bool:
    """A heartbeat is due when the patient had data since the last emission and it is at least
    ``heartbeat_ms`` old."""
    return new_data and last_at is not None and now - last_at >= policy.heartbeat_ms
