"""The EWS engine: committed readings → stream NEWS2 → emission policy → history + outbox.

:class:`EwsEngine` owns three tables in the service's SQLite file: ``patient_context`` (the
clinician-set ACVPU / oxygen / SpO2 scale per patient, applied to every later score and restored
on restart), ``ews_history`` (every emitted or externally posted EWS point) and ``ews_outbox``
(delivery to the Cexup platform, see :mod:`ingest.outbox`). A point's history row and outbox row
are written in one transaction: no point is delivered that is not in the history, and none in the
history is lost for delivery.

Stale patients: when none of a patient's vitals is fresh, the scorer's score is invalid and
nothing is emitted (a score must not outlive its data). :meth:`EwsEngine.current` then still
returns the last point, marked ``valid=False`` with the scorer's ``reason``, so the dashboard
shows a stale score as stale instead of hiding the patient.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal

from ews.stream import PatientScore, StreamScorer
from ews.tables import TABLES
from ingest.emit_policy import (
    DEFAULT_POLICY,
    RISK_ORDER,
    EmitPolicy,
    Snapshot,
    Trigger,
    decide,
    heartbeat_due,
)
from ingest.outbox import State, connect, enqueue
from vitalgate.contract import USER_CODE_RE, Ews

log = logging.getLogger(__name__)

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS patient_context (
    user_code      TEXT PRIMARY KEY,
    consciousness  TEXT    NOT NULL,
    on_oxygen      INTEGER NOT NULL,
    spo2_scale     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ews_history (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_code   TEXT    NOT NULL,
    point       INTEGER NOT NULL,
    result      TEXT    NOT NULL,
    risk        TEXT    NOT NULL,
    cause       TEXT    NOT NULL,   -- JSON array
    partial     INTEGER NOT NULL,
    missing     TEXT    NOT NULL,   -- JSON array
    components  TEXT    NOT NULL,   -- JSON object
    produce_at  INTEGER NOT NULL,
    emitted_at  INTEGER NOT NULL,
    trigger     TEXT    NOT NULL,   -- why: first, risk-rise, change, heartbeat, context, external
    source      TEXT    NOT NULL    -- vitalgate (scored here) | external (POST /ews)
);
CREATE INDEX IF NOT EXISTS ews_history_patient ON ews_history (user_code, id);
"""

CONSCIOUSNESS: Final = ("A", "C", "V", "P", "U")
RESULTS: Final = ("normal", "rendah", "sedang", "tinggi")
#: a score of NEWS2 cannot exceed 20; the MQTT contract allows up to 30 for other charts.
MAX_POINT: Final = 30

Source = Literal["vitalgate", "external"]


class EwsInputError(ValueError):
    """Bad input from an API client; ``field`` names what is wrong (the API answers 422)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _epoch_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class EwsPoint:
    """One EWS point: the Cexup item (user_code, point, result, cause, produce_at) plus
    vitalgate's own fields. ``produce_at`` is the time of the newest vital used (epoch ms)."""

    user_code: str
    point: int
    result: str
    risk: str
    cause: tuple[str, ...]
    partial: bool
    missing: tuple[str, ...]
    components: dict[str, int] = field(hash=False)
    produce_at: int
    valid: bool = True
    reason: str = ""  #: why not valid (e.g. no fresh vitals); '' when valid
    trigger: str = ""  #: why it was emitted (emit_policy.Trigger)
    source: Source = "vitalgate"
    emitted_at: int | None = None  #: service clock when recorded
    id: int | None = None  #: ews_history row

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
        return Ews(user_code=self.user_code, point=self.point, result=self.result,  # type: ignore[arg-type]
                   cause=list(self.cause), produce_at=self.produce_at, risk=self.risk,  # type: ignore[arg-type]
                   partial=self.partial, missing=list(self.missing),
                   components=dict(self.components))

    def snapshot(self) -> Snapshot:
        return Snapshot(self.point, self.result, self.risk, self.produce_at)

    @classmethod
    def from_score(cls, score: PatientScore) -> EwsPoint:
        return cls(
            user_code=score.patient, point=int(score.point), result=score.result, risk=score.risk,
            cause=tuple(score.cause), partial=bool(score.partial), missing=tuple(score.missing),
            components={k: int(v) for k, v in score.components.items()},
            produce_at=int(score.produce_at or 0), valid=bool(score.valid), reason=score.reason,
        )


@dataclass
class _Patient:
    """Emission state of one patient (in memory; rebuilt from ews_history on start)."""

    last: EwsPoint | None = None  #: last point this engine emitted (not external ones)
    last_at: int | None = None  #: service clock of that emission
    pending: bool = False  #: a change is held back by min_interval_ms
    new_data: bool = False  #: readings arrived since the last emission
    current: EwsPoint | None = None  #: what GET /ews/{user_code} serves
    stale_reason: str | None = None  #: set while the scorer says the score is invalid


def risk_of(point: int, result: str) -> str:
    """The NEWS2 risk of an externally made score, from its Cexup words: ``sedang`` is either a
    single red parameter (total ≤ 4: low-medium) or a total of 5-6 (medium)."""
    if result == "tinggi":
        return "high"
    if result == "sedang":
        return "low-medium" if point <= 4 else "medium"
    return "low"


#: bounds of a POST /ews body beyond the chart: at most this many ``cause`` strings of at most
#: CAUSE_CHARS each (a NEWS2 score has at most 7 scoring parameters), at most this many
#: ``components`` named like the engine's (``respiratory_rate``...), each scoring 0..3.
MAX_CAUSES: Final = 16
CAUSE_CHARS: Final = 128
MAX_COMPONENTS: Final = 16
_COMPONENT_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")
_POINT_TEXT: Final = re.compile(r"[0-9]{1,3}")
_MS_TEXT: Final = re.compile(r"[0-9]{1,15}")
MAX_MS: Final = 10**14


def results_for(point: int, components: Mapping[str, int] | None = None) -> tuple[str, ...]:
    """The Cexup result words a total of ``point`` may carry on the chart: 0 normal; 1-2 rendah
    (a parameter scoring 3 makes the total at least 3); 3-4 rendah, or sedang when a single
    parameter scores 3, which only ``components`` can tell (without them both are accepted);
    5-6 sedang; 7 and more tinggi."""
    if point == 0:
        return ("normal",)
    if point <= 2:
        return ("rendah",)
    if point <= 4:
        if components is None:
            return ("rendah", "sedang")
        return ("sedang",) if 3 in components.values() else ("rendah",)
    if point <= 6:
        return ("sedang",)
    return ("tinggi",)


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
    user_code = body.get("user_code")
    if not isinstance(user_code, str) or not USER_CODE_RE.fullmatch(user_code):
        raise EwsInputError("user_code", f"must match {USER_CODE_RE.pattern}, got {user_code!r}")
    point = body.get("point")
    if isinstance(point, str) and _POINT_TEXT.fullmatch(point.strip()):
        point = int(point.strip())
    if isinstance(point, float) and point.is_integer():
        point = int(point)
    if not isinstance(point, int) or isinstance(point, bool) or not 0 <= point <= max_point:
        raise EwsInputError("point", f"must be an integer 0..{max_point}, got {point!r}")
    result = body.get("result")
    if result not in RESULTS:
        raise EwsInputError("result", f"must be one of {', '.join(RESULTS)}, got {result!r}")
    assert isinstance(result, str)
    raw_at = body.get("produce_at")
    produce_at: int | None = None
    if isinstance(raw_at, str) and _MS_TEXT.fullmatch(raw_at.strip()):
        produce_at = int(raw_at.strip())
    elif isinstance(raw_at, int) and not isinstance(raw_at, bool):
        produce_at = raw_at
    elif isinstance(raw_at, float) and math.isfinite(raw_at) and raw_at.is_integer():
        produce_at = int(raw_at)
    if produce_at is None or not 0 <= produce_at < MAX_MS:
        raise EwsInputError("produce_at", f"must be epoch milliseconds (string or number), got {raw_at!r}")
    if now_ms is not None and max_future_ms is not None and produce_at > now_ms + max_future_ms:
        raise EwsInputError("produce_at", f"{produce_at} is {produce_at - now_ms} ms after the "
                                          f"service clock ({now_ms}); at most {max_future_ms} ms "
                                          "ahead is accepted")
    cause_raw = body.get("cause", [])
    if (not isinstance(cause_raw, list) or len(cause_raw) > MAX_CAUSES
            or not all(isinstance(c, str) and len(c) <= CAUSE_CHARS for c in cause_raw)):
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
        db_path: Path,
        *,
        table_name: str = "news2",
        freshness_ms: int = 900_000,
        median_k: int = 1,
        policy: EmitPolicy = DEFAULT_POLICY,
        clock: Callable[[], int] = _epoch_ms,
        deliver: bool = True,
        notify: Callable[[], None] | None = None,
    ) -> None:
        if table_name not in TABLES:
            raise ValueError(f"unknown EWS table {table_name!r}: one of {', '.join(TABLES)}")
        self.policy = policy
        self.clock = clock
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
        self._db = connect(db_path)
        self._db.executescript(SCHEMA)
        self._patients: dict[str, _Patient] = {}
        self._contexts: dict[str, dict[str, Any]] = {}
        self._restore()

    # ----------------------------------------------------------------- restore

    def _restore(self) -> None:
        for user_code, cons, oxy, scale in self._db.execute(
            "SELECT user_code, consciousness, on_oxygen, spo2_scale FROM patient_context"
        ):
            self._contexts[user_code] = {"consciousness": str(cons), "on_oxygen": bool(oxy),
                                         "spo2_scale": int(scale)}
            try:
                self._scorer.set_context(user_code, consciousness=str(cons), on_oxygen=bool(oxy),
                                         spo2_scale=int(scale))
            except ValueError as exc:  # e.g. a context saved under another table
                log.warning("stored context of a patient does not fit the table: %s", exc)
        # the latest point per patient (current) and the latest one scored here (policy state)
        for row in self._db.execute(
            f"SELECT {_COLUMNS} FROM ews_history WHERE id IN"
            " (SELECT MAX(id) FROM ews_history GROUP BY user_code, source)"
            " ORDER BY id"
        ):
            point = _point_from_row(row)
            state = self._patient(point.user_code)
            if point.source == "vitalgate":
                state.last, state.last_at = point, point.emitted_at
            if state.current is None or point.produce_at >= state.current.produce_at:
                state.current = point

    def _patient(self, user_code: str) -> _Patient:
        state = self._patients.get(user_code)
        if state is None:
            state = self._patients[user_code] = _Patient()
        return state

    # ----------------------------------------------------------------- scoring

    def warm_start(self, items: Iterable[tuple[str, str, float, int]]) -> list[EwsPoint]:
        """Feed recent readings from the store after a restart. Scores that equal the last emitted
        point emit nothing; a difference (e.g. a crash between storing readings and emitting) is
        emitted under the normal policy. Returns what was emitted."""
        batch = list(items)
        with self.lock:
            if batch:
                self._update(batch, mark_new_data=False)
            return self._emit_changes(self.clock())

    def observe(self, items: Sequence[tuple[str, str, float, int]]) -> list[EwsPoint]:
        """(user_code, vital, value, ts_ms) of committed readings → the points emitted (to be
        published on MQTT); their history and outbox rows are committed before this returns."""
        if not items:
            return []
        with self.lock:
            self._update(items, mark_new_data=True)
            return self._emit_changes(self.clock())

    def tick(self) -> list[EwsPoint]:
        """Call every few seconds: staleness, held-back changes whose interval passed, heartbeats."""
        with self.lock:
            return self._emit_changes(self.clock())

    def _update(self, items: Sequence[tuple[str, str, float, int]], *, mark_new_data: bool) -> None:
        patients = [i[0] for i in items]
        self._scorer.update(patients, [i[1] for i in items], [float(i[2]) for i in items],
                            [int(i[3]) for i in items])
        if mark_new_data:
            for user_code in set(patients):
                self._patient(user_code).new_data = True

    def _emit_changes(self, now: int, *, context_of: str | None = None) -> list[EwsPoint]:
        out: list[EwsPoint] = []
        seen: set[str] = set()
        for score in self._scorer.rescore():
            seen.add(score.patient)
            point = self._consider(score, now, context=score.patient == context_of)
            if point is not None:
                out.append(point)
        for user_code, state in self._patients.items():
            if user_code in seen:
                continue
            point = None
            if state.pending and (state.last_at is None
                                  or now - state.last_at >= self.policy.min_interval_ms):
                point = self._consider_current(user_code, now)
            elif heartbeat_due(self.policy, state.last_at, now, state.new_data):
                point = self._heartbeat(user_code)
            if point is not None:
                out.append(point)
        return self._record(out, now)

    def _consider_current(self, user_code: str, now: int) -> EwsPoint | None:
        score = self._scorer.current(user_code)
        if score is None:
            self._patient(user_code).pending = False
            return None
        return self._consider(score, now, context=False)

    def _consider(self, score: PatientScore, now: int, *, context: bool) -> EwsPoint | None:
        state = self._patient(score.patient)
        if not score.valid:
            state.pending = False
            state.stale_reason = score.reason or "no fresh vital signs"
            return None
        state.stale_reason = None
        point = EwsPoint.from_score(score)
        last = state.last.snapshot() if state.last is not None else None
        decision = decide(self.policy, point.snapshot(), last, state.last_at, now)
        if context and not decision.emit and decision.hold:
            # a clinician changed the context: emit the consequence now (rate limiting exists for
            # sensor flicker, not for deliberate changes)
            return replace(point, trigger=Trigger.CONTEXT.value)
        if decision.emit:
            assert decision.trigger is not None
            trigger = Trigger.CONTEXT if context and decision.trigger is Trigger.CHANGE else decision.trigger
            return replace(point, trigger=trigger.value)
        state.pending = decision.hold
        if not decision.hold and heartbeat_due(self.policy, state.last_at, now, state.new_data):
            return self._heartbeat(score.patient)
        return None

    def _heartbeat(self, user_code: str) -> EwsPoint | None:
        state = self._patient(user_code)
        score = self._scorer.current(user_code)
        if score is None or not score.valid:
            return None
        point = EwsPoint.from_score(score)
        if state.last is not None and point.produce_at < state.last.produce_at:
            return None
        return replace(point, trigger=Trigger.HEARTBEAT.value)

    def _record(self, points: list[EwsPoint], now: int) -> list[EwsPoint]:
        """History + outbox rows for ``points`` in ONE transaction, then the in-memory state."""
        if not points:
            return []
        recorded: list[EwsPoint] = []
        outbox_state = State.PENDING if self.deliver else State.LOCAL
        try:
            self._db.execute("BEGIN IMMEDIATE")
            for p in points:
                p = replace(p, emitted_at=now)
                row_id = self._insert_history(p)
                enqueue(self._db, history_id=row_id, user_code=p.user_code, body=p.to_cexup(),
                        state=outbox_state, now=now)
                recorded.append(replace(p, id=row_id))
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            for p in points:  # not lost: tick() considers these patients again
                self._patient(p.user_code).pending = True
            raise
        for p in recorded:
            state = self._patient(p.user_code)
            state.last, state.last_at = p, now
            state.pending = state.new_data = False
            if state.current is None or p.produce_at >= state.current.produce_at:
                state.current = p
        self.emitted += len(recorded)
        if self.deliver and self.notify is not None:
            self.notify()
        return recorded

    def _insert_history(self, p: EwsPoint) -> int:
        cur = self._db.execute(
            "INSERT INTO ews_history (user_code, point, result, risk, cause, partial, missing,"
            " components, produce_at, emitted_at, trigger, source)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (p.user_code, p.point, p.result, p.risk, json.dumps(list(p.cause)), int(p.partial),
             json.dumps(list(p.missing)), json.dumps(p.components, sort_keys=True), p.produce_at,
             p.emitted_at, p.trigger, p.source),
        )
        return int(cur.lastrowid or 0)

    # ----------------------------------------------------------------- context

    def set_context(self, user_code: str, *, consciousness: str, on_oxygen: bool,
                    spo2_scale: int) -> EwsPoint | None:
        """Persist the clinical context and rescore at once; returns the point emitted, if any.
        Raises EwsInputError naming a bad field."""
        if not USER_CODE_RE.match(user_code):
            raise EwsInputError("user_code", f"must match {USER_CODE_RE.pattern}")
        cons, oxy, scale = validate_context(consciousness, on_oxygen, spo2_scale)
        table = self._scorer.table
        if cons not in table.levels:
            raise EwsInputError("consciousness", f"{table.name} knows only {', '.join(table.levels)}")
        if scale == 2 and not table.has_scale2:
            raise EwsInputError("spo2_scale", f"{table.name} has no SpO2 scale 2")
        with self.lock:
            now = self.clock()
            self._db.execute(
                "INSERT INTO patient_context (user_code, consciousness, on_oxygen, spo2_scale, updated_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_code) DO UPDATE SET"
                " consciousness = excluded.consciousness, on_oxygen = excluded.on_oxygen,"
                " spo2_scale = excluded.spo2_scale, updated_at = excluded.updated_at",
                (user_code, cons, int(oxy), scale, now),
            )
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
        """The patient's newest point (by produce_at); ``valid=False`` while its data is stale."""
        with self.lock:
            state = self._patients.get(user_code)
            if state is None or state.current is None:
                return None
            if state.stale_reason is not None:
                return replace(state.current, valid=False, reason=state.stale_reason)
            return state.current

    def all_current(self) -> list[EwsPoint]:
        """Every patient's current point, by user_code."""
        with self.lock:
            codes = sorted(c for c, s in self._patients.items() if s.current is not None)
        return [p for p in (self.current(c) for c in codes) if p is not None]

    def history(self, user_code: str, *, page: int, size: int, start: int = 0,
                end: int = MAX_MS) -> tuple[list[EwsPoint], int]:
        """One page (1-based) of the patient's points with ``start <= produce_at <= end``,
        newest ``produce_at`` first (then newest row), and the total count."""
        with self.lock:
            self._db.execute(_HISTORY_INDEX)
            where = "WHERE user_code = ? AND produce_at BETWEEN ? AND ?"
            args = (user_code, start, end)
            total = int(self._db.execute(
                f"SELECT COUNT(*) FROM ews_history {where}", args).fetchone()[0])
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM ews_history {where} ORDER BY produce_at DESC, id DESC"
                " LIMIT ? OFFSET ?", (*args, size, (page - 1) * size)).fetchall()
        return [_point_from_row(r) for r in rows], total

    def record_external(self, body: object, *, max_future_ms: int | None = None) -> EwsPoint:
        """POST /ews: a score made elsewhere (Cexup body). Recorded in the history and served as
        current when newest; not posted upstream (it came from the platform's side) and not used
        by the emission policy. Raises EwsInputError naming a bad field.

        Idempotent: the same (user_code, point, result, produce_at) again returns the row
        recorded the first time (a platform retrying a timed-out POST adds nothing).
        ``max_future_ms``: refuse a produce_at further than this after the engine's clock."""
        now = self.clock()
        user_code, point, result, cause, produce_at = parse_external(
            body, max_point=self._scorer.table.max_total, now_ms=now, max_future_ms=max_future_ms)
        components = _components(body.get("components") if isinstance(body, Mapping) else None)
        p = EwsPoint(user_code=user_code, point=point, result=result, risk=risk_of(point, result),
                     cause=cause, partial=False, missing=(), components=components or {},
                     produce_at=produce_at, trigger=Trigger.EXTERNAL.value, source="external")
        with self.lock:
            p = replace(p, emitted_at=now)
            self._db.execute(_HISTORY_INDEX)
            try:
                self._db.execute("BEGIN IMMEDIATE")
                row = self._db.execute(
                    f"SELECT {_COLUMNS} FROM ews_history WHERE user_code = ? AND produce_at = ?"
                    " AND point = ? AND result = ? AND source = 'external' ORDER BY id LIMIT 1",
                    (user_code, produce_at, point, result)).fetchone()
                if row is None:
                    p = replace(p, id=self._insert_history(p))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            if row is not None:
                return _point_from_row(row)
            state = self._patient(user_code)
            became_current = state.current is None or p.produce_at >= state.current.produce_at
            if became_current:
                state.current = p
                state.stale_reason = None
        if became_current and self.on_emit is not None:
            self.on_emit([p])
        return p

    def counts_by_result(self) -> dict[str, int]:
        """Patients per current result word (normal, rendah, sedang, tinggi) and ``stale``
        (current score no longer backed by fresh vitals)."""
        counts = dict.fromkeys((*RESULTS, "stale"), 0)
        for p in self.all_current():
            key = p.result if p.valid else "stale"
            counts[key] = counts.get(key, 0) + 1
        return counts

    def close(self) -> None:
        with self.lock:
            self._db.close()


#: serves history() (by produce_at) and record_external()'s duplicate lookup.
_HISTORY_INDEX: Final = ("CREATE INDEX IF NOT EXISTS ews_history_produce_at"
                         " ON ews_history (user_code, produce_at)")
_COLUMNS: Final = ("id, user_code, point, result, risk, cause, partial, missing, components,"
                   " produce_at, emitted_at, trigger, source")


def _point_from_row(r: Sequence[Any]) -> EwsPoint:
    return EwsPoint(
        id=int(r[0]), user_code=str(r[1]), point=int(r[2]), result=str(r[3]), risk=str(r[4]),
        cause=tuple(json.loads(r[5])), partial=bool(r[6]), missing=tuple(json.loads(r[7])),
        components={str(k): int(v) for k, v in json.loads(r[8]).items()}, produce_at=int(r[9]),
        emitted_at=int(r[10]), trigger=str(r[11]), source="external" if r[12] == "external" else "vitalgate",
    )


__all__ = ["RISK_ORDER", "EmitPolicy", "EwsEngine", "EwsInputError", "EwsPoint", "parse_external",
           "results_for", "validate_context"]
