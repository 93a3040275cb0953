"""The one EWS score type and its words: Cexup's result words and NEWS2's risk, both ordered.

Every other shape of a score is a serialiser at the edge of :class:`Score`: the MQTT payload
(``vitalgate.contract.Ews``, typed with :class:`Result` and :class:`Risk`), the Cexup POST body,
the REST item and the history row (``ingest.ews_engine.EwsPoint``, a Score with its record's
fields). Standard library only, so the contract can use the words without the scorer.

The words (ref/cexup-api.md, ref/news2.md "Aggregate risk and response"):

* result: ``normal`` (total 0), ``rendah`` (1-4 with no parameter scoring 3), ``sedang`` (a
  single parameter scoring 3 with a total of at most 4, or 5-6), ``tinggi`` (7 and more); the
  doctor summaries count patients by exactly these four;
* risk: ``low`` < ``low-medium`` (a single red parameter) < ``medium`` (5-6) < ``high`` (7+).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final


class Result(StrEnum):
    """Cexup's result word, lowest first (members compare as their words: ``== "sedang"``)."""

    NORMAL = "normal"
    RENDAH = "rendah"
    SEDANG = "sedang"
    TINGGI = "tinggi"

    @property
    def rank(self) -> int:
        """0 for normal .. 3 for tinggi."""
        return RESULTS.index(self.value)


class Risk(StrEnum):
    """NEWS2's clinical risk, lowest first."""

    LOW = "low"
    LOW_MEDIUM = "low-medium"
    MEDIUM = "medium"
    HIGH = "high"

    @property
    def rank(self) -> int:
        """0 for low .. 3 for high."""
        return RISK_ORDER[self.value]


#: the result words, lowest first (a result's code in arrays is its index here).
RESULTS: Final[tuple[str, ...]] = tuple(r.value for r in Result)
#: risk word → rank, lowest first (a risk's code in arrays; a rise is a larger rank).
RISK_ORDER: Final[dict[str, int]] = {r.value: i for i, r in enumerate(Risk)}


def results_for(point: int, components: Mapping[str, int] | None = None) -> tuple[Result, ...]:
    """The result words a total of ``point`` may carry on the chart: 0 normal; 1-2 rendah (a
    parameter scoring 3 makes the total at least 3); 3-4 rendah, or sedang when a single
    parameter scores 3, which only ``components`` can tell (without them both are accepted);
    5-6 sedang; 7 and more tinggi."""
    if point == 0:
        return (Result.NORMAL,)
    if point <= 2:
        return (Result.RENDAH,)
    if point <= 4:
        if components is None:
            return (Result.RENDAH, Result.SEDANG)
        return (Result.SEDANG,) if 3 in components.values() else (Result.RENDAH,)
    if point <= 6:
        return (Result.SEDANG,)
    return (Result.TINGGI,)


def risk_of(point: int, result: str) -> Risk:
    """The NEWS2 risk of a score known only by its total and result word (a score made
    elsewhere): ``sedang`` is either a single red parameter (total ≤ 4: low-medium) or a total
    of 5-6 (medium)."""
    if result == Result.TINGGI:
        return Risk.HIGH
    if result == Result.SEDANG:
        return Risk.LOW_MEDIUM if point <= 4 else Risk.MEDIUM
    return Risk.LOW


@dataclass(frozen=True)
class Score:
    """One patient's EWS: the Cexup item (user_code, point, result, cause, produce_at) plus
    vitalgate's own fields. ``produce_at`` is the event time of the newest vital used (epoch
    ms); ``valid`` is False, with the ``reason``, when no fresh vitals back it now. The stream
    scorer (``ews.stream``) produces it; the engine's history point (``ingest.ews_engine.EwsPoint``)
    is one with its record's fields.

    Not valid: ``point`` -1, ``result`` and ``risk`` '', and ``produce_at`` None when no vital
    backs it at all (an emitted point always has an event time)."""

    user_code: str
    point: int
    result: str  #: a :class:`Result` word ('' when not valid)
    risk: str  #: a :class:`Risk` word ('' when not valid)
    cause: tuple[str, ...]
    partial: bool
    missing: tuple[str, ...]  #: missing or stale vitals and assumed context
    components: dict[str, int] = field(hash=False)  #: points of each scored parameter
    produce_at: int | None
    valid: bool = True
    reason: str = ""  #: why not valid (e.g. no fresh vitals); '' when valid
    #: the vital values scored (medians when the scorer's median_k > 1); what the score was
    #: computed from, not part of it (equality and the serialisers leave it out)
    values: dict[str, float] = field(default_factory=dict, hash=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields, ``values`` included (``produce_at`` stays a number)."""
        return {"user_code": self.user_code, "point": self.point, "result": self.result,
                "risk": self.risk, "cause": list(self.cause), "partial": self.partial,
                "missing": list(self.missing), "components": dict(self.components),
                "produce_at": self.produce_at, "valid": self.valid, "reason": self.reason,
                "values": dict(self.values)}


__all__ = ["RESULTS", "RISK_ORDER", "Result", "Risk", "Score", "results_for", "risk_of"]
