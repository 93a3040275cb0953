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

Which time. Every interval above (``min_interval_ms``, ``heartbeat_ms``) is measured on the
patient's own clock (``StreamScorer.patient_clock``): its newest reading's event time, running
on with processing time only while its data pauses. ``now`` and ``last_at`` below are values of
that clock, never the service's wall clock alone: a recorded stay replayed at 3600× then gets
the points it would have had in real time, and a live feed (event ≈ processing time) behaves
as before. Rule 5 compares event times (``produce_at``).

The decision is a pure function of data, so the policy is tested without clocks or databases.
:func:`decide` takes one patient; :func:`decide_many` takes arrays of patients (the engine's hot
path) and gives the same answer for each.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import numpy as np
from numpy.typing import NDArray

from ews.score import RISK_ORDER as RISK_ORDER  # re-exported: NEWS2 risk, lowest first
from ews.score import Result, Risk, Score


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
    """What the policy compares of a score: one row of :func:`decide_many`'s arrays, as
    :func:`decide` (its scalar reference) takes it.

    It stays a type of its own, not a :class:`ews.score.Score`, because the engine keeps the
    last emitted point of each patient as these four arrays (point, result and risk codes,
    produce_at), not as Score objects; a Score becomes one in one place, :meth:`of`."""

    point: int
    result: Result
    risk: Risk
    produce_at: int

    @classmethod
    def of(cls, score: Score) -> Snapshot:
        """The policy's view of a valid score (one with an event time)."""
        if score.produce_at is None:
            raise ValueError(f"{score.user_code}: a score of no vitals is not emitted")
        return cls(score.point, Result(score.result), Risk(score.risk), score.produce_at)


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
    patient-clock time ``last_at``; ``now`` is that clock now). Heartbeats are decided by
    :func:`heartbeat_due`."""
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


#: trigger codes of :func:`decide_many` (index into this tuple; -1 = not emitted).
TRIGGERS: Final = (Trigger.FIRST, Trigger.RISK_RISE, Trigger.CHANGE, Trigger.HEARTBEAT)
NO_TRIGGER: Final = -1
FIRST, RISK_RISE, CHANGE, HEARTBEAT = range(4)


def decide_many(
    policy: EmitPolicy,
    *,
    point: NDArray[np.integer],
    result: NDArray[np.integer],
    risk: NDArray[np.integer],
    produce_at: NDArray[np.int64],
    has_last: NDArray[np.bool_],
    last_point: NDArray[np.integer],
    last_result: NDArray[np.integer],
    last_risk: NDArray[np.integer],
    last_produce_at: NDArray[np.int64],
    last_at: NDArray[np.int64],
    now: NDArray[np.int64],
    new_data: NDArray[np.bool_],
) -> tuple[NDArray[np.int8], NDArray[np.bool_]]:
    """:func:`decide` then :func:`heartbeat_due` for many valid scores at once → (trigger code
    per row, -1 where nothing is emitted; whether a change is held back). ``result`` and
    ``risk`` are codes (an index into the result words; ``RISK_ORDER`` values); the ``last_*``
    arrays are ignored where ``has_last`` is False."""
    older = produce_at < last_produce_at
    rise = (risk > last_risk) if policy.immediate_on_risk_rise else np.zeros_like(older)
    same = (point == last_point) & (result == last_result)
    since = now - last_at
    change = ~older & ~rise & ~same
    due = since >= policy.min_interval_ms
    heartbeat = ~older & ~rise & same & new_data & (since >= policy.heartbeat_ms)
    trigger = np.select(
        [~has_last, older, rise, change & due, change, heartbeat],
        [FIRST, NO_TRIGGER, RISK_RISE, CHANGE, NO_TRIGGER, HEARTBEAT],
        NO_TRIGGER,
    ).astype(np.int8)
    hold = has_last & change & ~due
    return trigger, hold
