"""The EWS engine: committed readings → stream NEWS2 → emission policy → history + outbox.

:class:`EwsEngine` keeps its state in the EWS store (:mod:`ingest.db.ews`, SQLite or
PostgreSQL): ``patient_context`` (the clinician-set ACVPU / oxygen / SpO2 scale per patient,
applied to every later score and restored on restart), ``ews_history`` (every emitted or
externally posted EWS point) and ``ews_outbox`` (delivery to the Cexup platform and any other
channel added with :meth:`EwsEngine.add_channel`, see :mod:`ingest.outbox`). A point's history
row and outbox rows are written in one transaction: no point is delivered that is not in the
history, and none in the history is lost for delivery.

Many instances (one PostgreSQL): :meth:`EwsEngine.warm_start_patient` makes this engine the
patient's scorer from the shared history (its last point is the emission state, so an unchanged
score is not re-emitted and a change is not skipped) and :meth:`EwsEngine.release_patient` stops
it; an emission carries the patient's next ``seq``, unique in the history, so when two instances
briefly both score a patient the second commit of the same emission is absorbed (counted in
``EwsEngine.duplicates``) and that engine adopts the recorded point instead.

Which time each rule uses (DEVELOPERS.md: say which; never let a wrong clock hide a patient):

* freshness and the median window: **event time**, the patient's newest reading (``ews.stream``);
* the emission policy's intervals (rate limit, heartbeat): the **patient's clock**, its event
  time running on with processing time while its data pauses (``StreamScorer.patient_clock``,
  ``ingest.emit_policy``); ``last_at`` is that clock at the last emission;
* staleness of a patient whose data stops arriving: **processing time** (the scorer's
  arrival timeout): nothing is emitted and :meth:`EwsEngine.current` returns the engine's last
  point marked ``valid=False`` with the scorer's ``reason``, so the dashboard shows a stale
  score as stale instead of hiding the patient;
* ``emitted_at`` of a history row, the outbox and retention: processing time.

Readings of one committed batch are scored in event-time order (one round per distinct reading
time of a patient, at most ``MAX_ROUNDS``), so the points do not depend on how the consumer
happened to batch them: a replay at any speed gives the trajectory the patient had.

The current score (``current``, ``all_current``, the ward counts) of a patient the engine
scores is the engine's own last point, never an external POST /ews point that sorts later only
because its ``produce_at`` is wrong; external points are current only for patients without a
score of the engine's.

Hot path: the scorer returns arrays (``ews.stream.Scores``); the policy decides on arrays
(``emit_policy.decide_many``) over per-patient state kept in arrays by the scorer's patient
index; ``Score``/``EwsPoint`` objects are built only for the points emitted.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import ValidationError

from ews.news2 import RESULT_WORDS, RISK_WORDS
from ews.score import RESULTS, RISK_ORDER, Score, results_for, risk_of
from ews.stream import NO_FRESH, Scores, StreamScorer
from ews.tables import TABLES
from ingest.db import Conn, Database
from ingest.db import ews as store
from ingest.db.outbox import Message, State, enqueue_many
from ingest.emit_policy import (
    CHANGE,
    DEFAULT_POLICY,
    NO_TRIGGER,
    TRIGGERS,
    EmitPolicy,
    Trigger,
    decide_many,
)
from vitalgate.clock import epoch_ms
from vitalgate.contract import USER_CODE_RE, Ews, matches

log = logging.getLogger(__name__)

CONSCIOUSNESS: Final = ("A", "C", "V", "P", "U")
#: a score of NEWS2 cannot exceed 20; the MQTT contract allows up to 30 for other charts.
MAX_POINT: Final = 30

Source = Literal["vitalgate", "external"]

#: the most scoring rounds one observed batch gets: a batch holding more distinct reading times
#: of one patient (a long history sync) scores its newest times together in the last round
#: (those readings are counted in ``EwsEngine.merged_rounds``); 64 covers far more than a replay
#: at 36,000x puts into one commit batch (about one reading time per patient per 0.1 s).
MAX_ROUNDS: Final = 64
#: by the scorer's result band (ews.news2.BAND_NAMES): index into RESULTS, RISK_ORDER value
_RESULT_BY_BAND: Final = np.array([RESULTS.index(w) for w in RESULT_WORDS], np.int8)
_RISK_BY_BAND: Final = np.array([RISK_ORDER[w] for w in RISK_WORDS], np.int8)
_CONTEXT_CODE: Final = len(TRIGGERS)  #: a local trigger code: a clinician's context change
_LABELS: Final = (*(t.value for t in TRIGGERS), Trigger.CONTEXT.value)


#: what one emission became in the store (EwsEngine._record): the point, and True (absorbed:
#: another instance recorded it first; the recorded point), False (recorded), "repeat" (the
#: history holds it from before) or None (fenced: another instance owns the patient now)
Written = tuple["EwsPoint", bool | Literal["repeat"] | None]


class EwsInputError(ValueError):
    """Bad input from an API client; ``field`` names what is wrong (the API answers 422)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class EwsPoint(Score):
    """One EWS point: the one score type (``ews.score.Score``) with its history record's fields;
    its serialisers are the edges: Cexup's POST body, the REST item, the MQTT payload."""

    produce_at: int  #: a point always has an event time (the Score's, 0 when it had none)

    trigger: str = ""  #: why it was emitted (emit_policy.Trigger)
    source: Source = "vitalgate"
    emitted_at: int | None = None  #: service clock when recorded
    id: int | None = None  #: ews_history row
    seq: int | None = None  #: the patient's emission number (scored points; None: external)

    def to_cexup(self) -> dict[str, Any]:
        """The body of Cexup's POST /ews, exactly the seed's four fields (produce_at a string)."""
        return {"user_code": self.user_code, "point": self.point, "result": self.result,
                "produce_at": str(self.produce_at)}

    def to_api(self) -> dict[str, Any]:
        """As served by GET /ews/...: the Cexup item (produce_at a number) plus our fields."""
        return {
            "user_code": self.user_code, "point": self.point, "result": self.result,
            "cause": list(self.cause), "produce_at": self.produce_at, "risk": self.risk,
            "partial": self.partial, "missing": list(self.missing),
            "components": dict(self.components), "valid": self.valid, "reason": self.reason,
            "trigger": self.trigger, "source": self.source,
        }

    def to_contract(self) -> Ews:
        """The MQTT ``{prefix}/ews/{user_code}`` payload."""
        return Ews.of(self)

    @classmethod
    def from_score(cls, score: Score) -> EwsPoint:
        return cls(
            user_code=score.user_code, point=int(score.point), result=score.result,
            risk=score.risk, cause=tuple(score.cause), partial=bool(score.partial),
            missing=tuple(score.missing),
            components={k: int(v) for k, v in score.components.items()},
            produce_at=int(score.produce_at or 0), valid=bool(score.valid), reason=score.reason,
            values=score.values,
        )


@dataclass
class _Patient:
    """A patient's points in memory (rebuilt from ews_history on start). The emission policy's
    state (pending, new data, the last point's codes and clock) lives in the engine's arrays."""

    last: EwsPoint | None = None  #: last point this engine emitted (not external ones)
    current: EwsPoint | None = None  #: newest point by produce_at, external ones included
    stale_reason: str | None = None  #: kept for external points (record_external)


#: bounds of a POST /ews body beyond the chart: at most this many ``cause`` strings of at most
#: CAUSE_CHARS each (a NEWS2 score has at most 7 scoring parameters), at most this many
#: ``components`` named like the engine's (``respiratory_rate``...), each scoring 0..3.
MAX_CAUSES: Final = 16
CAUSE_CHARS: Final = 128
MAX_COMPONENTS: Final = 16
_COMPONENT_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")
MAX_MS: Final = 10**14
#: the Cexup item's fields of a POST /ews body: validated by ``vitalgate.contract.Ews``.
_ITEM_FIELDS: Final = ("user_code", "point", "result", "cause", "produce_at")


def _components(raw: object) -> dict[str, int] | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or len(raw) > MAX_COMPONENTS:
        raise EwsInputError("components", f"must be an object of at most {MAX_COMPONENTS} "
                                          "parameter → points (0..3)")
    out: dict[str, int] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not _COMPONENT_RE.fullmatch(name):
            raise EwsInputError("components", f"parameter names must match "
                                              f"{_COMPONENT_RE.pattern}, got {name!r}")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 3:
            raise EwsInputError("components", f"{name}: points must be an integer 0..3, got {value!r}")
        out[name] = value
    return out


def parse_external(
    body: object, *, max_point: int = MAX_POINT, now_ms: int | None = None,
    max_future_ms: int | None = None,
) -> tuple[str, int, str, tuple[str, ...], int]:
    """Validate a Cexup POST /ews body → (user_code, point, result, cause, produce_at).
    Raises EwsInputError naming the field. Unknown extra fields are ignored, as Cexup does.

    ``point`` is at most ``max_point`` (the chart's maximum total) and must agree with
    ``result`` (:func:`results_for`; the optional vitalgate extension ``components`` decides
    3-4). With ``now_ms`` and ``max_future_ms``, a ``produce_at`` later than ``now_ms +
    max_future_ms`` (processing time) is refused."""
    if not isinstance(body, Mapping):
        raise EwsInputError("body", "must be a JSON object")
    for name in ("point", "produce_at"):  # JSON true/false are no numbers (pydantic's lax int takes them)
        if isinstance(body.get(name), bool):
            raise EwsInputError(name, f"must be a number, got {body.get(name)!r}")
    try:  # each field on its own: the MQTT contract's Ews is the one shape check of the item
        item = Ews.model_validate({k: body[k] for k in _ITEM_FIELDS if k in body})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        name = str(err["loc"][0]) if err["loc"] else "body"
        got = "" if err["type"] == "missing" else f", got {err.get('input')!r:.80}"
        raise EwsInputError(name, f"{err['msg']}{got}") from None
    # the POST's own bounds, tighter than the contract's
    user_code, point, result, produce_at = item.user_code, item.point, item.result.value, item.produce_at
    if point > max_point:
        raise EwsInputError("point", f"must be an integer 0..{max_point}, got {point!r}")
    if now_ms is not None and max_future_ms is not None and produce_at > now_ms + max_future_ms:
        raise EwsInputError("produce_at", f"{produce_at} is {produce_at - now_ms} ms after the "
                                          f"service clock ({now_ms}); at most {max_future_ms} ms "
                                          "ahead is accepted")
    cause_raw = item.cause
    if len(cause_raw) > MAX_CAUSES or any(len(c) > CAUSE_CHARS for c in cause_raw):
        raise EwsInputError("cause", f"must be a list of at most {MAX_CAUSES} strings of at most "
                                     f"{CAUSE_CHARS} characters")
    # the fields agree with each other (each is valid on its own by now)
    components = _components(body.get("components"))
    if components is not None and sum(components.values()) != point:
        raise EwsInputError("point, components", f"point {point} is not the sum of components "
                                     f"({sum(components.values())})")
    allowed = results_for(point, components)
    if result not in allowed:
        raise EwsInputError("point, result", f"point {point} and result {result!r} disagree on the chart: "
                                     f"point {point} is {' or '.join(allowed)}"
                                     + (" (components decide)" if components is not None else ""))
    return user_code, point, result, tuple(cause_raw), produce_at


def validate_context(consciousness: object, on_oxygen: object, spo2_scale: object) -> tuple[str, bool, int]:
    """Raises EwsInputError naming the bad field."""
    if consciousness not in CONSCIOUSNESS:
        raise EwsInputError("consciousness", f"must be one of {', '.join(CONSCIOUSNESS)} (ACVPU), got {consciousness!r}")
    if not isinstance(on_oxygen, bool):
        raise EwsInputError("on_oxygen", f"must be true or false, got {on_oxygen!r}")
    if isinstance(spo2_scale, bool) or spo2_scale not in (1, 2):
        raise EwsInputError("spo2_scale", f"must be 1 or 2, got {spo2_scale!r}")
    assert isinstance(consciousness, str) and isinstance(spo2_scale, int)
    return consciousness, on_oxygen, spo2_scale


DEFAULT_CONTEXT: Final[dict[str, Any]] = {"consciousness": "A", "on_oxygen": False, "spo2_scale": 1}


class EwsEngine:
    """Scores every patient with readings and decides, records and enqueues EWS points.

    Synchronous and not thread-safe by itself: call it from one thread (the service's event
    loop) or hold its ``lock``. Every public method takes ``lock``.
    """

    def __init__(
        self,
        db: Database | Path,
        *,
        table_name: str = "news2",
        freshness_ms: int = 900_000,
        median_k: int = 1,
        policy: EmitPolicy = DEFAULT_POLICY,
        clock: Callable[[], int] = epoch_ms,
        deliver: bool = True,
        notify: Callable[[], None] | None = None,
        pause_grace_ms: int = 0,
    ) -> None:
        if table_name not in TABLES:
            raise ValueError(f"unknown EWS table {table_name!r}: one of {', '.join(TABLES)}")
        self.policy = policy
        self.clock = clock
        #: the policy's patient clock (rate limit, heartbeat) is the patient's event time,
        #: running on with processing time while its data pauses, but only for the part of a
        #: pause beyond this (ms). With several instances a pause of a few seconds is the
        #: transport's jitter (readings stored by other instances, the feed's seq hold, a busy
        #: machine): counted, it lets the processing-time tick emit a held change before the
        #: next reading (or that reading's score instead), by a race. Within the grace a held
        #: change is decided by the next reading, on event time alone, however it travelled;
        #: when the data really stops it still comes due, this much later (a rise of the risk
        #: is never held). 0: every pause counts (one process receiving in order).
        self.pause_grace_ms = pause_grace_ms
        #: outbox state of new rows: pending (delivered upstream) or local (no upstream).
        self.deliver = deliver
        #: called after a commit that enqueued rows (e.g. ``Outbox.notify``).
        self.notify = notify
        #: called with the points recorded outside observe/tick/warm_start (a context change via
        #: the API, a POST /ews that became current), so the service publishes them like the
        #: points those methods return. Called without the lock held.
        self.on_emit: Callable[[list[EwsPoint]], None] | None = None
        self.lock = threading.RLock()
        self.emitted = 0  #: points emitted since start
        self._scorer = StreamScorer(TABLES[table_name], freshness_ms=freshness_ms,
                                    median_k=median_k, clock=clock)
        #: readings scored in a folded round: beyond MAX_ROUNDS reading times of one patient
        self.merged_rounds = 0
        # the policy's state per scorer patient index (grown by _sync)
        self._n = 0
        self._has_last = np.zeros(0, np.bool_)
        self._last_point = np.zeros(0, np.int16)
        self._last_result = np.zeros(0, np.int8)
        self._last_risk = np.zeros(0, np.int8)
        self._last_produce = np.zeros(0, np.int64)
        self._last_at = np.zeros(0, np.int64)  #: the patient's clock at the last emission
        self._pending = np.zeros(0, np.bool_)  #: a change is held back by min_interval_ms
        self._new_data = np.zeros(0, np.bool_)  #: readings arrived since the last emission
        self._stale = np.zeros(0, np.bool_)  #: the scorer says the current score is invalid
        self._reasons: dict[int, str] = {}  #: why, for stale patients
        self._owned = isinstance(db, Path)
        self._db = store.open_store(db) if isinstance(db, Path) else db
        #: emissions absorbed: another instance had recorded the patient's point first
        self.duplicates = 0
        #: emissions not recorded because the shared history already holds that very point
        #: (patient, produce_at, point, result, risk): a re-score that came back to it
        self.repeats = 0
        #: outbox channels beside cexup: (channel, render(point) -> body or None to skip)
        self._channels: list[tuple[str, Callable[[EwsPoint], str | Mapping[str, Any] | None]]] = []
        self._released: set[str] = set()  #: patients another instance scores now
        #: issue 13 (h13c): inside each emission's transaction, the patients this instance may
        #: still write for (ingest.ownership: lease and epoch checked in that transaction);
        #: the others' points are not recorded (``fenced``) and the patients released
        self.fence: Callable[[Conn, set[str]], set[str]] | None = None
        self.fenced = 0
        self._patients: dict[str, _Patient] = {}
        self._contexts: dict[str, dict[str, Any]] = {}
        self._restore()

    # ----------------------------------------------------------------- restore

    def _restore(self) -> None:
        contexts, latest = self._db.read_sync(lambda c: (store.contexts(c), store.latest(c)))
        for user_code, cons, oxy, scale in contexts:
            self._load_context(user_code, cons, oxy, scale)
        # the latest point per patient (current) and the latest one scored here (policy state)
        for row in latest:
            point = _point_from_row(row)
            state = self._patient(point.user_code)
            if point.source == "vitalgate":
                state.last = point  # its policy state is loaded when the patient is scored
            if state.current is None or point.produce_at >= state.current.produce_at:
                state.current = point

    def _load_context(self, user_code: str, cons: str, oxy: bool, scale: int) -> None:
        self._contexts[user_code] = {"consciousness": cons, "on_oxygen": oxy, "spo2_scale": scale}
        try:
            self._scorer.set_context(user_code, consciousness=cons, on_oxygen=oxy,
                                     spo2_scale=scale)
        except ValueError as exc:  # e.g. a context saved under another table
            log.warning("stored context of a patient does not fit the table: %s", exc)

    @property
    def db(self) -> Database:
        """The EWS store (history, context, outbox)."""
        return self._db

    def add_channel(self, channel: str,
                    render: Callable[[EwsPoint], str | Mapping[str, Any] | None]) -> None:
        """Enqueue every point this engine emits on outbox ``channel`` too, in the history
        row's transaction: ``render(point)`` gives the body (None: nothing for this point).
        The row's ordering key is the patient; its dedup key ``ews:<history id>``."""
        with self.lock:
            if channel == "cexup" or any(c == channel for c, _ in self._channels):
                raise ValueError(f"outbox channel {channel!r} is added already")
            self._channels.append((channel, render))

    # ----------------------------------------------------------------- ownership

    def warm_start_patient(self, user_code: str, items: Iterable[tuple[str, str, float, int]] = (),
                           arrived_ms: Sequence[int] | None = None) -> list[EwsPoint]:
        """Become ``user_code``'s scorer (an ownership handover): reload its context and its
        last points from the shared EWS store (the emission state: its newest scored point),
        then score ``items`` (its recent readings from the shared readings store, as for
        :meth:`warm_start`). An unchanged score emits nothing; a change since the last
        recorded point is emitted under the normal policy. Returns what was emitted."""
        if not matches(USER_CODE_RE, user_code):
            raise EwsInputError("user_code", f"must match {USER_CODE_RE.pattern}")
        batch = [i for i in items if i[0] == user_code]

        def load(c: Conn) -> tuple[tuple[str, bool, int] | None, list[tuple[Any, ...]]]:
            return store.context_of(c, user_code), store.latest(c, user_code)

        ctx, latest = self._db.read_sync(load)
        with self.lock:
            self._released.discard(user_code)
            if ctx is not None:
                self._load_context(user_code, *ctx)
            state = self._patients[user_code] = _Patient()
            for row in latest:
                point = _point_from_row(row)
                if point.source == "vitalgate":
                    state.last = point
                if state.current is None or point.produce_at >= state.current.produce_at:
                    state.current = point
            i = self._scorer.index(user_code)
            if i is not None and i < self._n:
                self._pending[i] = self._new_data[i] = False
                if state.last is not None:
                    self._set_last(i, state.last, state.last.produce_at)
                else:
                    self._has_last[i] = False
            return self.warm_start(batch, arrived_ms)

    def release_patient(self, user_code: str) -> None:
        """Stop emitting for ``user_code`` (another instance scores it now) until the next
        :meth:`warm_start_patient`; its points stay readable."""
        with self.lock:
            self._released.add(user_code)
            i = self._scorer.index(user_code)
            if i is not None and i < self._n:
                self._pending[i] = self._new_data[i] = False

    def _patient(self, user_code: str) -> _Patient:
        state = self._patients.get(user_code)
        if state is None:
            state = self._patients[user_code] = _Patient()
        return state

    # ----------------------------------------------------------------- scoring

    def warm_start(self, items: Iterable[tuple[str, str, float, int]],
                   arrived_ms: Sequence[int] | None = None) -> list[EwsPoint]:
        """Feed recent readings from the store after a restart. Scores that equal the last emitted
        point emit nothing; a difference (e.g. a crash between storing readings and emitting) is
        emitted under the normal policy. Returns what was emitted. A stored reading counts as
        having arrived when it did (``arrived_ms``, aligned with ``items``: the store's
        ``received_at``; without it, when it was measured), never later than now, so the
        arrival timeout is not restarted by the restart."""
        batch = list(items)
        with self.lock:
            now = self.clock()
            if batch:
                when = [int(i[3]) for i in batch] if arrived_ms is None else list(arrived_ms)
                if len(when) != len(batch):
                    raise ValueError(f"{len(when)} arrival times for {len(batch)} items")
                arrived = np.minimum(np.array(when, np.int64), now)
                self._update(batch, mark_new_data=False, arrived=arrived)
            return self._emit_changes(now)

    def observe(self, items: Sequence[tuple[str, str, float, int]],
                arrived_ms: Sequence[int] | None = None) -> list[EwsPoint]:
        """(user_code, vital, value, ts_ms) of committed readings → the points emitted (to be
        published on MQTT); their history and outbox rows are committed before this returns.
        Scored in event-time order, one round per distinct reading time of a patient.

        ``arrived_ms`` (aligned with ``items``): when each reading was received (processing
        time: the storing instance's ``received_at``; default now, never later than now). The
        policy decides each reading as of its arrival, not as of when it reached this engine:
        a reading scored late (held by the feed for a predecessor, read from the store by a
        takeover) gives the decision one process receiving it live would have made, and a
        change held back whose interval had run out before the reading arrived is emitted
        first, with the score it had then (:meth:`_emit_held_due`), as the tick would have."""
        if not items:
            return []
        if arrived_ms is not None and len(arrived_ms) != len(items):
            raise ValueError(f"{len(arrived_ms)} arrival times for {len(items)} items")
        with self.lock:
            out: list[EwsPoint] = []
            for rows in self._rounds(items):
                part = [items[j] for j in rows] if len(rows) < len(items) else items
                # one clock reading per round: the patients whose event clock this round moves
                # are decided at exactly their event time (no sub-round processing slack)
                now = self.clock()
                if arrived_ms is None:
                    at: NDArray[np.int64] | int = now
                else:
                    at = np.minimum(np.fromiter((arrived_ms[j] for j in rows), np.int64,
                                                len(rows)), now)
                pid = self._scorer.indices([i[0] for i in part])
                out += self._emit_held_due(pid, at, now)
                self._update(part, mark_new_data=True, arrived=at)
                when = None
                if not isinstance(at, int):
                    when = np.full(self._n, now, np.int64)
                    when[pid] = np.iinfo(np.int64).min
                    np.maximum.at(when, pid, at)
                out += self._emit_changes(now, when=when)
            return out

    def _emit_held_due(self, pid: NDArray[np.intp], at: NDArray[np.int64] | int,
                       now: int) -> list[EwsPoint]:
        """Before a round's readings are applied: the held-back changes of its patients whose
        interval had run out on the patient's clock by the time the first of those readings
        arrived (``at``). The tick emits such a change once it sees it due, unless the next
        reading comes first; deciding it here, as of that reading's arrival, makes the outcome
        depend on the data (event and arrival times), not on when the tick happened to run or
        how late this engine saw the reading."""
        n = self._n
        if n == 0 or not self._pending[:n].any():
            return []
        known = pid < n
        idx, first = pid[known], (np.broadcast_to(at, pid.shape)[known])
        keep = self._pending[idx] & self._has_last[idx]
        if not keep.any():
            return []
        idx, first = idx[keep], first[keep]
        when = np.full(n, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(when, idx, first)
        cand = np.unique(idx)
        since = self._patient_clock(cand, when[cand]) - self._last_at[cand]
        due = cand[since >= self.policy.min_interval_ms]
        if due.size == 0:
            return []
        decided = np.full(n, now, np.int64)
        decided[due] = when[due]
        return self._record(self._decide(self._scorer.score(due), now, None, when=decided), now)

    def tick(self) -> list[EwsPoint]:
        """Call every few seconds: staleness, held-back changes whose interval passed, heartbeats."""
        with self.lock:
            return self._emit_changes(self.clock())

    def _rounds(self, items: Sequence[tuple[str, str, float, int]]) -> list[list[int]]:
        """The indices of ``items`` by round: round r holds each patient's r-th distinct
        reading time."""
        if len(items) == 1:
            return [[0]]
        pid = self._scorer.indices([i[0] for i in items])
        t = np.fromiter((int(i[3]) for i in items), np.int64, len(items))
        order = np.lexsort((t, pid))
        ps, ts = pid[order], t[order]
        new_p = np.append(True, ps[1:] != ps[:-1])
        new_t = new_p | np.append(True, ts[1:] != ts[:-1])
        distinct = np.cumsum(new_t)
        rank = distinct - distinct[np.flatnonzero(new_p)][np.cumsum(new_p) - 1]
        top = int(rank.max())
        if top == 0:
            return [list(range(len(items)))]
        if top >= MAX_ROUNDS:
            self.merged_rounds += int(np.count_nonzero(rank >= MAX_ROUNDS))
            log.warning("a batch held %d reading times of one patient; the newest %d scored"
                        " together", top + 1, top + 2 - MAX_ROUNDS)
            rank = np.minimum(rank, MAX_ROUNDS - 1)
            top = MAX_ROUNDS - 1
        return [order[rank == r].tolist() for r in range(top + 1)]

    def _update(self, items: Sequence[tuple[str, str, float, int]], *, mark_new_data: bool,
                arrived: NDArray[np.int64] | int | None = None) -> None:
        patients = [i[0] for i in items]
        self._scorer.update(patients, [i[1] for i in items], [float(i[2]) for i in items],
                            [int(i[3]) for i in items], arrived_ms=arrived)
        self._sync()
        if mark_new_data:
            self._new_data[self._scorer.indices(patients)] = True

    def _sync(self) -> None:
        """Grow the policy arrays to the scorer's patients; load the restored last point of a
        patient the scorer has just met."""
        n = len(self._scorer)
        if n <= self._n:
            return
        if n > self._has_last.size:
            extra = max(n, 2 * self._has_last.size, 64) - self._has_last.size
            for name in ("_has_last", "_last_point", "_last_result", "_last_risk",
                         "_last_produce", "_last_at", "_pending", "_new_data", "_stale"):
                a = getattr(self, name)
                setattr(self, name, np.concatenate([a, np.zeros(extra, a.dtype)]))
        names = self._scorer.names
        for i in range(self._n, n):
            state = self._patients.get(names[i])
            if state is not None and state.last is not None:
                # the clock of a restored emission is not known: its produce_at (event time,
                # the patient's clock at most) is the conservative stand-in
                self._set_last(i, state.last, state.last.produce_at)
        self._n = n

    def _patient_clock(self, idx: NDArray[np.intp],
                       now: int | NDArray[np.int64]) -> NDArray[np.int64]:
        """The patients' clocks for the policy: running on with processing time only for the
        part of a pause longer than ``pause_grace_ms`` (see :data:`PAUSE_GRACE_MS`)."""
        return self._scorer.patient_clock(idx, now - self.pause_grace_ms)

    def _set_last(self, i: int, p: EwsPoint, clock: int) -> None:
        self._has_last[i] = True
        self._last_point[i] = p.point
        self._last_result[i] = RESULTS.index(p.result) if p.result in RESULTS else 0
        self._last_risk[i] = RISK_ORDER.get(p.risk, 0)
        self._last_produce[i] = p.produce_at
        self._last_at[i] = clock

    def _emit_changes(self, now: int, *, context_of: str | None = None,
                      when: NDArray[np.int64] | None = None) -> list[EwsPoint]:
        """``when``: per patient index, the processing time its rescore is decided as of (an
        observed reading's arrival); None: ``now`` for every patient."""
        scorer = self._scorer
        scores = scorer.rescore()
        self._sync()
        ctx = scorer.index(context_of) if context_of is not None else None
        entries = self._decide(scores, now, ctx, when=when)
        # patients not rescored: a held change whose interval passed, or a heartbeat due
        n = self._n
        if n:
            policy = self.policy
            idle = np.ones(n, np.bool_)
            idle[scores.idx] = False
            since = self._patient_clock(np.arange(n), now) - self._last_at[:n]
            has_last = self._has_last[:n]
            due = idle & (
                (self._pending[:n] & (~has_last | (since >= policy.min_interval_ms)))
                | (has_last & self._new_data[:n] & (since >= policy.heartbeat_ms))
            )
            if due.any():
                entries += self._decide(scorer.score(np.flatnonzero(due)), now, ctx)
        return self._record(entries, now)

    def _decide(
        self, scores: Scores, now: int, ctx: int | None, *, when: NDArray[np.int64] | None = None
    ) -> list[tuple[EwsPoint, int, int]]:
        """The policy over one batch of scores → (point, patient index, patient clock) to emit.
        ``when``: per patient index, the processing time each is decided as of (default
        ``now``)."""
        if len(scores) == 0:
            return []
        idx = scores.idx
        valid = scores.valid
        if not valid.all():  # stale (or unscorable) patients: nothing is emitted, all shown
            rows = np.flatnonzero(~valid)
            self._stale[idx[rows]] = True
            self._pending[idx[rows]] = self._new_data[idx[rows]] = False
            for s, i in zip(scores.materialise(rows), idx[rows].tolist(), strict=True):
                self._reasons[i] = s.reason or NO_FRESH
        v = np.flatnonzero(valid)
        if v.size == 0:
            return []
        iv = idx[v]
        if self._reasons:
            for i in iv[self._stale[iv]].tolist():
                self._reasons.pop(i, None)
        self._stale[iv] = False
        band = scores.band[v].astype(np.intp)
        clock = self._patient_clock(iv, now if when is None else np.minimum(when[iv], now))
        trigger, hold = decide_many(
            self.policy,
            point=scores.points[v], result=_RESULT_BY_BAND[band], risk=_RISK_BY_BAND[band],
            produce_at=scores.produce_at[v], has_last=self._has_last[iv],
            last_point=self._last_point[iv], last_result=self._last_result[iv],
            last_risk=self._last_risk[iv], last_produce_at=self._last_produce[iv],
            last_at=self._last_at[iv], now=clock, new_data=self._new_data[iv],
        )
        if ctx is not None:
            # a clinician changed the context: emit the consequence now (rate limiting exists
            # for sensor flicker, not for deliberate changes)
            mine = iv == ctx
            trigger = np.where(mine & (hold | (trigger == CHANGE)), _CONTEXT_CODE, trigger)
            hold = hold & ~mine
        quiet = trigger == NO_TRIGGER
        self._pending[iv[quiet]] = hold[quiet]
        emit = np.flatnonzero(~quiet)
        if emit.size == 0:
            return []
        out = []
        for s, code, i, c in zip(scores.materialise(v[emit]), trigger[emit].tolist(),
                                 iv[emit].tolist(), clock[emit].tolist(), strict=True):
            out.append((replace(EwsPoint.from_score(s), trigger=_LABELS[code]), i, c))
        return out

    def _record(self, entries: list[tuple[EwsPoint, int, int]], now: int) -> list[EwsPoint]:
        """History + outbox rows for the points in ONE transaction, then the in-memory state.
        An emission another instance recorded first (same patient and seq) is absorbed: the
        recorded point becomes this engine's last one, and nothing is returned for it."""
        if self._released:
            entries = [e for e in entries if e[0].user_code not in self._released]
        if not entries:
            return []
        outbox_state = State.PENDING if self.deliver else State.LOCAL
        points = []
        for p, _, _ in entries:
            last = self._patients[p.user_code].last if p.user_code in self._patients else None
            seq = (last.seq or 0) + 1 if last is not None else 1
            points.append(replace(p, emitted_at=now, seq=seq))
        channels = list(self._channels)
        fence = self.fence

        def messages(p: EwsPoint, row_id: int) -> list[Message]:
            """The outbox rows announcing the point recorded as ``row_id``: cexup's, then each
            extra channel's that renders a body for it."""
            key = f"ews:{row_id}"
            out = [Message("cexup", p.user_code, key, p.to_cexup(), outbox_state, row_id)]
            for channel, render in channels:
                body = render(p)
                if body is not None:
                    out.append(Message(channel, p.user_code, key, body, State.PENDING, row_id))
            return out

        def held_already(p: EwsPoint, found: tuple[Any, ...]) -> Written:
            """The shared history holds this emission already: recorded by another instance
            just now (adopted), or earlier, before the point this engine holds as its last."""
            same = _point_from_row(found)
            return (same, True) if (same.seq or 0) >= (p.seq or 0) else (p, "repeat")

        def write(conn: Conn) -> list[Written]:
            allowed = None if fence is None else fence(conn, {p.user_code for p in points})
            # the identities the history holds already, read in one query per source; a key
            # twice in this batch is looked up again after the first is written
            keys = [(p.user_code, p.produce_at, p.point, p.result, p.risk) for p in points]
            held: dict[store.PointKey, tuple[Any, ...]] = {}
            for source in {p.source for p in points}:
                held.update(store.find_points(
                    conn, [k for k, p in zip(keys, points, strict=True) if p.source == source],
                    source=source))
            twice = {k for k in keys if keys.count(k) > 1} if len(set(keys)) < len(keys) else set()
            # a patient twice in this batch (both points have the same seq: the second is
            # absorbed by the first, or is a repeat of it) is written point by point after
            # the batch, in its order, as each point would be alone; every other new point is
            # one row of ONE history statement, and their outbox rows ONE outbox statement
            # (a statement per point was what PostgreSQL spent an emission batch on)
            users = Counter(p.user_code for p in points)
            out: list[Written | None] = [None] * len(points)
            batch: list[int] = []
            alone: list[int] = []
            for j, (p, ident) in enumerate(zip(points, keys, strict=True)):
                if allowed is not None and p.user_code not in allowed:
                    out[j] = (p, None)  # fenced: another instance owns it now
                elif users[p.user_code] > 1:
                    alone.append(j)
                elif (found := held.get(ident)) is not None:
                    out[j] = held_already(p, found)
                else:
                    batch.append(j)
            ids = store.insert_history_many(conn, [_history_row(points[j]) for j in batch])
            queued: list[Message] = []
            for j in batch:
                p = points[j]
                row_id = ids.get((p.user_code, p.seq or 0))
                if row_id is None:  # another instance recorded this (patient, seq) first
                    row = store.by_seq(conn, p.user_code, p.seq or 0)
                    assert row is not None
                    out[j] = (_point_from_row(row), True)
                    continue
                p = replace(p, id=row_id)
                queued += messages(p, row_id)
                out[j] = (p, False)
            enqueue_many(conn, queued, now=now)
            for j in alone:
                p, ident = points[j], keys[j]
                found = (store.find_point(conn, p.user_code, p.produce_at, p.point, p.result,
                                          source=p.source, risk=p.risk)
                         if ident in twice else held.get(ident))
                if found is not None:
                    out[j] = held_already(p, found)
                    continue
                row_id = self._insert_history(conn, p)
                if row_id is None:
                    row = store.by_seq(conn, p.user_code, p.seq or 0)
                    assert row is not None
                    out[j] = (_point_from_row(row), True)
                    continue
                p = replace(p, id=row_id)
                enqueue_many(conn, messages(p, row_id), now=now)
                out[j] = (p, False)
            assert all(w is not None for w in out)
            return [w for w in out if w is not None]

        try:
            written = self._db.write_sync(write)
        except BaseException:
            for _, i, _ in entries:  # not lost: tick() considers these patients again
                self._pending[i] = True
            raise
        recorded: list[EwsPoint] = []
        for (p, absorbed), (_, i, clock) in zip(written, entries, strict=True):
            if absorbed is None:
                self.fenced += 1
                self._released.add(p.user_code)
                self._pending[i] = self._new_data[i] = False
                continue
            if absorbed == "repeat":
                # a re-score (a warm start, a late reading) came back to a point already
                # emitted for that event time: not news; the emission state stays the newest
                # recorded point, so the next change is judged against what the platform has
                self.repeats += 1
                self._pending[i] = self._new_data[i] = False
                continue
            state = self._patient(p.user_code)
            state.last = p
            if state.current is None or p.produce_at >= state.current.produce_at:
                state.current = p
            self._set_last(i, p, clock)
            self._pending[i] = self._new_data[i] = False
            if absorbed:
                self.duplicates += 1
                log.info("an EWS emission was recorded by another instance first (absorbed)")
            else:
                recorded.append(p)
        self.emitted += len(recorded)
        if recorded and self.deliver and self.notify is not None:
            self.notify()
        return recorded

    @staticmethod
    def _insert_history(conn: Conn, p: EwsPoint) -> int | None:
        return store.insert_history(
            conn, user_code=p.user_code, point=p.point, result=p.result, risk=p.risk,
            cause=p.cause, partial=p.partial, missing=p.missing, components=p.components,
            produce_at=p.produce_at, emitted_at=p.emitted_at or 0, trigger=p.trigger,
            source=p.source, seq=p.seq)

    # ----------------------------------------------------------------- context

    def set_context(self, user_code: str, *, consciousness: str, on_oxygen: bool,
                    spo2_scale: int) -> EwsPoint | None:
        """Persist the clinical context and rescore at once; returns the point emitted, if any.
        Raises EwsInputError naming a bad field."""
        if not matches(USER_CODE_RE, user_code):
            raise EwsInputError("user_code", f"must match {USER_CODE_RE.pattern}")
        cons, oxy, scale = validate_context(consciousness, on_oxygen, spo2_scale)
        table = self._scorer.table
        if cons not in table.levels:
            raise EwsInputError("consciousness", f"{table.name} knows only {', '.join(table.levels)}")
        if scale == 2 and not table.has_scale2:
            raise EwsInputError("spo2_scale", f"{table.name} has no SpO2 scale 2")
        with self.lock:
            now = self.clock()
            self._db.write_sync(lambda c: store.save_context(c, user_code, cons, oxy, scale, now))
            self._contexts[user_code] = {"consciousness": cons, "on_oxygen": oxy, "spo2_scale": scale}
            self._scorer.set_context(user_code, consciousness=cons, on_oxygen=oxy, spo2_scale=scale)
            emitted = self._emit_changes(now, context_of=user_code)
        if emitted and self.on_emit is not None:
            self.on_emit(emitted)
        mine = [p for p in emitted if p.user_code == user_code]
        return mine[-1] if mine else None

    def get_context(self, user_code: str) -> dict[str, Any]:
        """The context in force (defaults when never set), with ``assumed`` true for defaults."""
        with self.lock:
            ctx = self._contexts.get(user_code)
        if ctx is None:
            return {"user_code": user_code, **DEFAULT_CONTEXT, "assumed": True}
        return {"user_code": user_code, **ctx, "assumed": False}

    # ----------------------------------------------------------------- reading

    def current(self, user_code: str) -> EwsPoint | None:
        """The patient's current point: the engine's own last point when it scores the patient
        (``valid=False`` with the reason while its data is stale), whatever external points
        say; otherwise the newest external point (by produce_at)."""
        with self.lock:
            state = self._patients.get(user_code)
            if state is None:
                return None
            own = state.last
            if own is None:
                return state.current
            i = self._scorer.index(user_code)
            if i is None or i >= self._n:  # not scored since the restart: no fresh data
                return replace(own, valid=False, reason=NO_FRESH)
            if self._stale[i]:
                return replace(own, valid=False, reason=self._reasons.get(i, NO_FRESH))
            return own

    def all_current(self) -> list[EwsPoint]:
        """Every patient's current point, by user_code."""
        with self.lock:
            codes = sorted(c for c, s in self._patients.items()
                           if s.last is not None or s.current is not None)
        return [p for p in (self.current(c) for c in codes) if p is not None]

    def history(self, user_code: str, *, page: int, size: int, start: int = 0,
                end: int = MAX_MS) -> tuple[list[EwsPoint], int]:
        """One page (1-based) of the patient's points with ``start <= produce_at <= end``,
        newest ``produce_at`` first (then newest row), and the total count."""
        rows, total = self._db.read_sync(lambda c: store.history_page(
            c, user_code, start=start, end=end, size=size, offset=(page - 1) * size))
        return [_point_from_row(r) for r in rows], total

    def record_external(self, body: object, *, max_future_ms: int | None = None) -> EwsPoint:
        """POST /ews: a score made elsewhere (Cexup body). Recorded in the history; served as
        current and published (``on_emit``) when newest and the engine has no own point for the
        patient (the engine's score is the truth for a patient it scores); not posted upstream (it came from the platform's side) and not used
        by the emission policy. Raises EwsInputError naming a bad field.

        Idempotent: the same (user_code, point, result, produce_at) again returns the row
        recorded the first time (a platform retrying a timed-out POST adds nothing).
        ``max_future_ms``: refuse a produce_at further than this after the engine's clock."""
        now = self.clock()
        user_code, point, result, cause, produce_at = parse_external(
            body, max_point=self._scorer.table.max_total, now_ms=now, max_future_ms=max_future_ms)
        components = _components(body.get("components") if isinstance(body, Mapping) else None)
        p = EwsPoint(user_code=user_code, point=point, result=result, risk=risk_of(point, result).value,
                     cause=cause, partial=False, missing=(), components=components or {},
                     produce_at=produce_at, trigger=Trigger.EXTERNAL.value, source="external")
        with self.lock:
            p = replace(p, emitted_at=now)

            def write(conn: Conn) -> tuple[tuple[Any, ...] | None, int | None]:
                found = store.find_external(conn, user_code, produce_at, point, result)
                if found is not None:
                    return found, None
                row_id = self._insert_history(conn, p)
                if row_id is None:  # another instance recorded the same POST just now
                    return store.find_external(conn, user_code, produce_at, point, result), None
                return None, row_id

            row, row_id = self._db.write_sync(write)
            if row_id is not None:
                p = replace(p, id=row_id)
            if row is not None:
                return _point_from_row(row)
            state = self._patient(user_code)
            became_current = state.current is None or p.produce_at >= state.current.produce_at
            if became_current:
                state.current = p
                state.stale_reason = None
            # the engine's own point is the current score of a patient it scores (current()):
            # an external point is published (retained ews topic, dashboard) only without one
            publish = became_current and state.last is None
        if publish and self.on_emit is not None:
            self.on_emit([p])
        return p

    def scoring_counts(self) -> dict[str, int]:
        """Every reading the scorer saw, by what became of it (``StreamScorer.counters``: accepted,
        late, duplicate, superseded, rejected, ignored; ``old`` among them), and the readings whose
        scoring round was folded into a batch's last (``merged_rounds``): for the metrics."""
        with self.lock:
            return {**self._scorer.counters, "merged_rounds": self.merged_rounds}

    def counts_by_result(self) -> dict[str, int]:
        """Patients per current result word (normal, rendah, sedang, tinggi) and ``stale``
        (current score no longer backed by fresh vitals)."""
        counts = dict.fromkeys((*RESULTS, "stale"), 0)
        for p in self.all_current():
            key = p.result if p.valid else "stale"
            counts[key] = counts.get(key, 0) + 1
        return counts

    def retention_step(self, cutoff_ms: int, batch: int) -> dict[str, int]:
        """Retention of the EWS history and clinical context (processing time: ``emitted_at`` /
        ``updated_at`` before ``cutoff_ms``), at most ``batch`` rows per table, one transaction.

        The newest point of each patient and source is kept whatever its age: it is the
        emission state the engine restores on start (so a patient seen again after the window
        is not re-emitted as "first") and the last score a reader is shown as stale. A context is
        kept while its patient has any history inside the window.
        """
        with self.lock:
            return self._db.write_sync(lambda c: store.retention_step(c, cutoff_ms, batch))

    def close(self) -> None:
        """Close the store if this engine opened it (a Path was given)."""
        with self.lock:
            if self._owned:
                self._db.close()


def _history_row(p: EwsPoint) -> store.HistoryRow:
    """The history row of a point scored here (it has a seq)."""
    return store.HistoryRow(
        user_code=p.user_code, point=p.point, result=p.result, risk=p.risk, cause=p.cause,
        partial=p.partial, missing=p.missing, components=p.components, produce_at=p.produce_at,
        emitted_at=p.emitted_at or 0, trigger=p.trigger, source=p.source, seq=p.seq or 0)


def _point_from_row(r: Sequence[Any]) -> EwsPoint:
    return EwsPoint(
        id=int(r[0]), user_code=str(r[1]), point=int(r[2]), result=str(r[3]), risk=str(r[4]),
        cause=tuple(json.loads(r[5])), partial=bool(r[6]), missing=tuple(json.loads(r[7])),
        components={str(k): int(v) for k, v in json.loads(r[8]).items()}, produce_at=int(r[9]),
        emitted_at=int(r[10]), trigger=str(r[11]), source="external" if r[12] == "external" else "vitalgate",
        seq=None if r[13] is None else int(r[13]),
    )


__all__ = ["RESULTS", "RISK_ORDER", "EmitPolicy", "EwsEngine", "EwsInputError", "EwsPoint", "parse_external",
           "results_for", "validate_context"]
