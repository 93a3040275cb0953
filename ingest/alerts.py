"""Alerts a nurse can acknowledge: the state machine as data, escalation, monitoring frequency.

An alert belongs to one patient; a patient has at most one alert that is not resolved
(the store enforces it, ``ingest.db.alerts``). Its states and the transitions between them are
:data:`TRANSITIONS`, each with the reason it exists; :func:`on_score`, :func:`escalate` and
:func:`acknowledge` are the only ways a state changes, and each transition is written to the
append-only audit trail in the same transaction as the alert.

Severity comes from the NEWS2 risk of the patient's score (``ews.news2.RISK_WORDS``; Cexup's
words in brackets): ``low`` (normal / rendah) opens nothing; ``low-medium`` (sedang: a single
parameter scoring 3 with a total ≤ 4, "the single 3 rule") and ``medium`` (sedang: total 5-6)
are severity **medium**; ``high`` (tinggi: total ≥ 7) is severity **high**. So an alert opens
exactly when Cexup's app would say sedang or tinggi.

Which time each rule uses (DEVELOPERS.md):

* opening, updating and resolving follow the scores as they are emitted; a score's ``produce_at``
  (**event time**, its newest vital) is recorded on the alert and in the audit;
* the response deadline ``due_at``, escalation, acknowledgement and every ``*_at`` of the audit
  are **processing time** (the service's injected clock): a nurse has N minutes from when the
  service saw the rise, whatever the watch's clock says;
* "overdue" compares the **event time** of the patient's newest reading with the service clock
  (processing time): vitals that stopped being measured (off-wrist, battery, out of range) make
  a patient overdue even if a buffered backlog still arrives.

A score that is not valid (stale: no fresh vitals) neither opens nor resolves an alert: a
silent watch must never make an alert disappear. Only a valid score below medium resolves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any, Final

from ews.score import Score  # what the state machine reads of an EWS point
from ingest.db import Conn, Database, IntegrityError
from ingest.db import alerts as alert_db
from ingest.db import outbox as outbox_db
from ingest.outbox import JsonPostTransport, Outbox, RetryPolicy
from ingest.settings import IngestSettings

log = logging.getLogger(__name__)


class AlertState(StrEnum):
    OPENED = "opened"
    UPDATED = "updated"
    ESCALATED = "escalated"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


#: states in which nobody has acknowledged the alert yet (it is due, or past due)
UNACKNOWLEDGED: Final = frozenset({AlertState.OPENED, AlertState.UPDATED, AlertState.ESCALATED})
#: states that still count down to escalation
PENDING: Final = frozenset({AlertState.OPENED, AlertState.UPDATED})
#: every state but resolved: the alert is shown on the ward
OPEN: Final = frozenset(AlertState) - {AlertState.RESOLVED}


@dataclass(frozen=True)
class Transition:
    """One arrow of the state machine: from any of ``sources`` (None: no alert yet) to
    ``target``; ``why`` is written into the audit trail."""

    name: str
    sources: frozenset[AlertState | None]
    target: AlertState
    why: str


TRANSITIONS: Final[Mapping[str, Transition]] = {t.name: t for t in (
    Transition("opened", frozenset({None}), AlertState.OPENED,
               "risk rose to medium or high: a nurse must respond within the response time"),
    Transition("updated", frozenset(OPEN), AlertState.UPDATED,
               "a further rise (higher severity or a higher score than the alert's): "
               "attention is asked again, even if it had been acknowledged"),
    Transition("escalated", frozenset(PENDING), AlertState.ESCALATED,
               "not acknowledged within the response time"),
    Transition("acknowledged", frozenset(UNACKNOWLEDGED), AlertState.ACKNOWLEDGED,
               "a nurse acknowledged it"),
    Transition("resolved", frozenset(OPEN), AlertState.RESOLVED,
               "risk fell back below medium (a valid score)"),
)}

#: NEWS2 risk → alert severity (None: no alert). See the module docstring.
SEVERITY_OF_RISK: Final[Mapping[str, str | None]] = {
    "low": None, "low-medium": "medium", "medium": "medium", "high": "high"}
SEVERITY_RANK: Final[Mapping[str, int]] = {"medium": 1, "high": 2}


@dataclass(frozen=True)
class AlertPolicy:
    """Response times (s) by severity. Defaults: NEWS2 (RCP 2017) asks for an emergency
    assessment at once for a high score and an urgent review for a medium one; as configurable
    service levels that is 5 minutes (high) and 30 minutes (medium) to acknowledge."""

    response_high_s: float = 300.0
    response_medium_s: float = 1800.0

    def response_ms(self, severity: str) -> int:
        s = self.response_high_s if severity == "high" else self.response_medium_s
        return int(s * 1000)


@dataclass(frozen=True)
class Alert:
    """One alert as stored (``ingest.db.alerts.ALERT_COLUMNS``); ``id`` 0 until inserted."""

    id: int
    user_code: str
    state: AlertState
    severity: str
    point: int
    risk: str
    result: str
    produce_at: int
    opened_at: int
    updated_at: int
    due_at: int | None
    escalated_at: int | None
    escalations: int
    acked_by: str | None
    acked_at: int | None
    ack_note: str | None
    resolved_at: int | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Alert:
        values = {k: row[k] for k in alert_db.ALERT_COLUMNS}
        values["state"] = AlertState(values["state"])
        return cls(**values)

    def row(self) -> dict[str, Any]:
        out = asdict(self)
        out["state"] = self.state.value
        return out

    @property
    def escalated(self) -> bool:
        """Escalated since it last asked for attention and still not acknowledged (the
        dashboard marks it). ``escalated_at`` is cleared by an acknowledgement, so a further
        rise after one is not shown escalated until its own deadline passes; ``escalations``
        and the audit keep every escalation."""
        return self.escalated_at is not None and self.state in UNACKNOWLEDGED

    def to_api(self) -> dict[str, Any]:
        return {**self.row(), "escalated": self.escalated}

    def to_bytes(self) -> bytes:
        """The retained MQTT payload on ``{prefix}/alerts/{user_code}``."""
        return json.dumps(self.to_api(), separators=(",", ":")).encode()


@dataclass(frozen=True)
class AuditEntry:
    alert_id: int
    at: int
    transition: str
    from_state: str | None
    to_state: str
    point: int
    severity: str
    risk: str
    produce_at: int
    who: str | None
    note: str | None
    why: str

    def row(self) -> dict[str, Any]:
        return asdict(self)


class AlertError(Exception):
    """A request the state machine refuses; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _move(alert: Alert, name: str, now: int, *, who: str | None = None,
          note: str | None = None, new: bool = False, **changes: Any) -> tuple[Alert, AuditEntry]:
    """``alert`` moved along transition ``name`` (``new``: it does not exist yet)."""
    t = TRANSITIONS[name]
    frm = None if new else alert.state
    if frm not in t.sources:
        raise AlertError(409, f"alert {alert.id} is {alert.state.value}: cannot be {name}")
    moved = replace(alert, state=t.target, updated_at=now, **changes)
    entry = AuditEntry(alert_id=moved.id, at=now, transition=name,
                       from_state=None if frm is None else frm.value, to_state=t.target.value,
                       point=moved.point, severity=moved.severity, risk=moved.risk,
                       produce_at=moved.produce_at, who=who, note=note, why=t.why)
    return moved, entry


def on_score(alert: Alert | None, score: Score, now: int,
             policy: AlertPolicy) -> tuple[Alert, AuditEntry] | None:
    """The transition a newly emitted score causes on the patient's open alert (None: none)."""
    if not score.valid or score.produce_at is None:
        return None  # stale: neither opens nor resolves (a silent watch hides nothing)
    severity = SEVERITY_OF_RISK.get(score.risk)
    if severity is None:
        if alert is None:
            return None
        return _move(alert, "resolved", now, due_at=None, resolved_at=now)
    if alert is None:
        fresh = Alert(id=0, user_code=score.user_code, state=AlertState.OPENED, severity=severity,
                      point=score.point, risk=score.risk, result=score.result,
                      produce_at=score.produce_at, opened_at=now, updated_at=now,
                      due_at=now + policy.response_ms(severity), escalated_at=None,
                      escalations=0, acked_by=None, acked_at=None, ack_note=None,
                      resolved_at=None)
        return _move(fresh, "opened", now, new=True)
    higher = SEVERITY_RANK[severity] > SEVERITY_RANK[alert.severity]
    if not (higher or score.point > alert.point):
        return None  # the same or lower, still medium or high: the alert stands as it is
    new_severity = severity if higher else alert.severity
    deadline = now + policy.response_ms(new_severity)
    if alert.state in PENDING and alert.due_at is not None:
        deadline = min(deadline, alert.due_at)  # a rise never postpones a pending deadline
    return _move(alert, "updated", now, severity=new_severity, point=score.point,
                 risk=score.risk, result=score.result, produce_at=score.produce_at,
                 due_at=deadline, acked_by=None, acked_at=None, ack_note=None)


def escalate(alert: Alert, now: int) -> tuple[Alert, AuditEntry]:
    return _move(alert, "escalated", now, due_at=None, escalated_at=now,
                 escalations=alert.escalations + 1)


#: who acknowledged: a name or staff id, 1-64 characters, starting with a letter or digit.
WHO_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9 .,'@_-]{0,63}")
#: the optional note: at most this many characters, no control characters but newline and tab.
NOTE_MAX: Final = 500
_NOTE_BAD: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def validate_ack(body: object) -> tuple[str, str | None]:
    """(who, note) of a POST /ack body; AlertError 422 naming the bad field."""
    if not isinstance(body, Mapping):
        raise AlertError(422, "body: must be a JSON object with 'who' and optional 'note'")
    unknown = sorted(str(k) for k in body if k not in ("who", "note"))
    if unknown:
        raise AlertError(422, f"body: unknown field(s) {', '.join(unknown)[:100]}")
    who = body.get("who")
    if not isinstance(who, str) or not WHO_RE.fullmatch(who):
        raise AlertError(422, f"who: must match {WHO_RE.pattern} (a name or staff id), "
                              f"got {str(who)[:70]!r}")
    note = body.get("note")
    if note is not None and (not isinstance(note, str) or len(note) > NOTE_MAX
                             or _NOTE_BAD.search(note)):
        raise AlertError(422, f"note: must be text of at most {NOTE_MAX} characters without "
                              "control characters")
    return who, note or None


def acknowledge(alert: Alert, who: str, note: str | None, now: int) -> tuple[Alert, AuditEntry]:
    if alert.state is AlertState.ACKNOWLEDGED:
        raise AlertError(409, f"alert {alert.id} was already acknowledged by {alert.acked_by!r}")
    if alert.state is AlertState.RESOLVED:
        raise AlertError(409, f"alert {alert.id} is resolved: nothing to acknowledge")
    return _move(alert, "acknowledged", now, who=who, note=note, due_at=None, acked_by=who,
                 acked_at=now, ack_note=note, escalated_at=None)


# ----------------------------------------------------------------- monitoring frequency


@dataclass(frozen=True)
class Frequency:
    """The minimum monitoring the score calls for (RCP NEWS2, ../shared/ref/news2.md) and how
    long vitals may stop before the patient is overdue (``overdue_after_ms``)."""

    name: str
    overdue_after_ms: int
    why: str


HOUR_MS: Final = 3_600_000


def frequency(point: int, risk: str, *, continuous_ms: int) -> Frequency:
    """0 → 12-hourly; 1-4 → 4-6-hourly (overdue after the 6 h the band allows); a single 3
    (``low-medium``) → hourly; 5-6 → hourly; ≥ 7 → continuous, overdue after
    ``continuous_ms`` (the service's freshness window: beyond it the score itself goes stale)."""
    if point >= 7 or risk == "high":
        return Frequency("continuous", continuous_ms, "NEWS2 ≥ 7: continuous monitoring")
    if point >= 5 or risk in ("medium", "low-medium"):
        why = ("a single parameter scoring 3: hourly" if point < 5
               else "NEWS2 5-6: at least hourly")
        return Frequency("hourly", HOUR_MS, why)
    if point >= 1:
        return Frequency("4-6-hourly", 6 * HOUR_MS, "NEWS2 1-4: every 4-6 hours")
    return Frequency("12-hourly", 12 * HOUR_MS, "NEWS2 0: at least 12-hourly")


def monitoring(scores: Iterable[Score], last_reading: Mapping[str, int], now: int, *,
               continuous_ms: int) -> list[dict[str, Any]]:
    """Per patient with a score: the frequency its current score calls for, the event time of
    its newest reading (the score's ``produce_at`` when no reading was seen since start) and
    ``overdue``: that event time is older than the frequency allows at ``now`` (processing)."""
    out = []
    for s in scores:
        f = frequency(s.point, s.risk, continuous_ms=continuous_ms)
        last = max(last_reading.get(s.user_code, 0), s.produce_at or 0)  # None: no vital yet
        out.append({"user_code": s.user_code, "point": s.point, "risk": s.risk,
                    "frequency": f.name, "why": f.why, "overdue_after_ms": f.overdue_after_ms,
                    "last_reading_at": last, "overdue": now - last > f.overdue_after_ms})
    return sorted(out, key=lambda m: (not m["overdue"], m["user_code"]))


# --------------------------------------------------------------------------------- webhook

#: the durable outbox channel of escalations (h13b's generic outbox, ingest.outbox): the row
#: is written in the same transaction as the escalation, so none is lost across a restart.
WEBHOOK_CHANNEL: Final = "alert-webhook"


class WebhookTransport(JsonPostTransport):
    """``POST {alert_webhook_url}`` with the escalated alert (JSON). The outbox retries it with
    its policy (backoff 1 s doubling to 60 s; 429/502/503/504 hold the channel, other 5xx and
    408 retry the row, other 4xx fail it for good: counted and listed)."""

    def __init__(self, url: str, *, timeout_s: float) -> None:
        super().__init__(url, timeout_s=timeout_s)


# ----------------------------------------------------------------------------- the service


def alert_topic(prefix: str, user_code: str) -> str:
    return f"{prefix}/alerts/{user_code}"


#: scores waiting for the alert task at most; beyond, the oldest is dropped (counted): the
#: next score of that patient re-derives the alert from its level, so a drop only delays.
QUEUE_MAX: Final = 50_000
#: escalations handled per check at most (the rest in the next check, seconds later)
CHECK_BATCH: Final = 500
#: GET /api/alerts returns at most this many
LIST_MAX: Final = 500


class AlertService:
    """Owns the alert tables' transitions: scores in (``offer``), escalation checks (``run``),
    acknowledgements (``acknowledge``). Every transition is stored (alert + audit, one
    transaction), then published: ``publish(topic, payload)`` (retained MQTT), ``notify(data)``
    (the dashboard's event hub); an escalation is also enqueued on the outbox channel
    :data:`WEBHOOK_CHANNEL` in its own transaction when ``webhook`` (then ``wake_outbox``)."""

    def __init__(self, db: Database, *, policy: AlertPolicy, clock: Callable[[], int],
                 prefix: str, check_s: float = 5.0, continuous_ms: int = 15 * 60 * 1000,
                 publish: Callable[[str, bytes], None] | None = None,
                 notify: Callable[[dict[str, Any]], None] | None = None,
                 webhook: bool = False,
                 wake_outbox: Callable[[str], None] | None = None) -> None:
        self.db = db
        self.policy = policy
        self.clock = clock
        self.prefix = prefix
        self.check_s = check_s
        self.continuous_ms = continuous_ms
        self.publish = publish
        self.notify = notify
        self.webhook = webhook
        self.wake_outbox = wake_outbox
        self._queue: asyncio.Queue[Score] | None = None
        self._lock = asyncio.Lock()
        self.last_reading: dict[str, int] = {}
        self.counts = {t: 0 for t in TRANSITIONS} | {"dropped_scores": 0, "conflicts": 0}
        #: deadline checks done (tests wait on it instead of sleeping)
        self.checks = 0

    # -- input (callbacks: enqueue only) ---------------------------------------------------

    def offer(self, scores: Iterable[Score]) -> None:
        """Emitted scores, from the event loop's thread; processed by ``run``."""
        if self._queue is None:
            self._queue = asyncio.Queue(QUEUE_MAX)
        for s in scores:
            if self._queue.full():
                self._queue.get_nowait()
                self.counts["dropped_scores"] += 1
            self._queue.put_nowait(s)

    def saw(self, items: Iterable[tuple[str, str, float, int]]) -> None:
        """Committed readings (user_code, vital, value, ts event time): the newest per patient."""
        for code, _vital, _value, ts in items:
            if ts > self.last_reading.get(code, -1):
                self.last_reading[code] = ts

    # -- the task ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Apply offered scores as they come; check deadlines every ``check_s`` (processing
        time)."""
        if self._queue is None:
            self._queue = asyncio.Queue(QUEUE_MAX)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._check_loop())
            while True:
                first = await self._queue.get()
                batch = [first]
                while not self._queue.empty() and len(batch) < CHECK_BATCH:
                    batch.append(self._queue.get_nowait())
                await self.apply(batch)

    async def _check_loop(self) -> None:
        while True:
            await asyncio.sleep(self.check_s)
            await self.check()

    async def apply(self, scores: Sequence[Score]) -> list[Alert]:
        """Run each score through the state machine; returns the alerts that changed."""
        now = self.clock()
        policy = self.policy

        def step(conn: Conn) -> list[Alert]:
            changed: list[Alert] = []
            for s in scores:
                row = alert_db.open_alert(conn, s.user_code)
                current = None if row is None else Alert.from_row(row)
                moved = on_score(current, s, now, policy)
                stored = None if moved is None else self._store(conn, current, *moved)
                if stored is not None:
                    changed.append(stored)
            return changed

        async with self._lock:
            changed = await self.db.write(step)
        self._announce(changed)
        return changed

    async def check(self) -> list[Alert]:
        """Escalate every pending alert past its deadline at the clock's now."""
        now = self.clock()
        webhook = self.webhook

        def step(conn: Conn) -> list[Alert]:
            rows = alert_db.due(conn, now, [s.value for s in PENDING], CHECK_BATCH)
            out = []
            for a in (Alert.from_row(r) for r in rows):
                stored = self._store(conn, a, *escalate(a, now))
                if stored is not None:
                    out.append(stored)
                    if webhook:  # durable: committed with the escalation, or not at all
                        outbox_db.enqueue(conn, channel=WEBHOOK_CHANNEL, user_code=stored.user_code,
                                          dedup_key=f"alert:{stored.id}:{stored.escalations}",
                                          body=stored.to_api(), now=now)
            return out

        async with self._lock:
            escalated = await self.db.write(step)
        self.checks += 1
        self._announce(escalated)
        for a in escalated:
            log.warning("alert %d escalated: not acknowledged within %.0f s", a.id,
                        self.policy.response_ms(a.severity) / 1000)
        if escalated and self.webhook and self.wake_outbox is not None:
            self.wake_outbox(WEBHOOK_CHANNEL)
        return escalated

    async def acknowledge(self, alert_id: int, who: str, note: str | None) -> Alert:
        now = self.clock()

        def step(conn: Conn) -> Alert:
            row = alert_db.get_alert(conn, alert_id)
            if row is None:
                raise AlertError(404, f"no alert {alert_id}")
            alert = Alert.from_row(row)
            stored = self._store(conn, alert, *acknowledge(alert, who, note, now))
            if stored is None:
                raise AlertError(409, f"alert {alert_id} changed meanwhile; try again")
            return stored

        async with self._lock:
            acked = await self.db.write(step)
        self._announce([acked])
        return acked

    def _store(self, conn: Conn, before: Alert | None, after: Alert,
               entry: AuditEntry) -> Alert | None:
        """Write one transition (alert row + audit row); None when another instance or request
        changed the alert first (its transition stands; the next score or check re-derives)."""
        if before is None:
            try:
                with conn.savepoint():
                    new_id = alert_db.insert_alert(conn, after.row())
            except IntegrityError:  # another instance opened the patient's alert meanwhile
                self.counts["conflicts"] += 1
                return None
            after = replace(after, id=new_id)
            entry = replace(entry, alert_id=new_id)
        elif not alert_db.update_alert(conn, after.row(), expect_state=before.state.value):
            self.counts["conflicts"] += 1
            return None
        alert_db.append_audit(conn, entry.row())
        return after

    def _announce(self, alerts: Iterable[Alert]) -> None:
        """After the commit: count, publish, notify (a transition's name is its new state's)."""
        for a in alerts:
            self.counts[a.state.value] += 1
            if self.publish is not None:
                self.publish(alert_topic(self.prefix, a.user_code), a.to_bytes())
            if self.notify is not None:
                self.notify(a.to_api())

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        """For /metrics: transitions by name, dropped scores, conflicts (the webhook's
        deliveries are the outbox's, channel ``alert-webhook``)."""
        return [("vitalgate_ingest_alerts_total", {"event": k}, float(v))
                for k, v in self.counts.items()]

    # -- reads ---------------------------------------------------------------------------

    async def find(self, *, states: Sequence[str] = (), user_code: str | None = None,
                   limit: int = LIST_MAX) -> list[Alert]:
        rows = await self.db.read(lambda c: alert_db.list_alerts(
            c, states=states, user_code=user_code, limit=limit))
        return [Alert.from_row(r) for r in rows]

    async def get(self, alert_id: int) -> tuple[Alert, list[dict[str, Any]]] | None:
        def read(conn: Conn) -> tuple[Alert, list[dict[str, Any]]] | None:
            row = alert_db.get_alert(conn, alert_id)
            if row is None:
                return None
            return Alert.from_row(row), alert_db.audit_of(conn, alert_id)

        return await self.db.read(read)

    def monitoring(self, scores: Iterable[Score]) -> list[dict[str, Any]]:
        return monitoring(scores, self.last_reading, self.clock(),
                          continuous_ms=self.continuous_ms)


def sort_for_ward(alerts: Iterable[Alert]) -> list[Alert]:
    """Open alerts as the ward shows them: unacknowledged first, then highest severity, then
    newest (by the time it last asked for attention)."""
    return sorted(alerts, key=lambda a: (a.state not in UNACKNOWLEDGED,
                                         -SEVERITY_RANK.get(a.severity, 0), -a.updated_at, -a.id))


def attach_store(db: Database) -> Database:
    """Create or migrate the alert tables in ``db``, the EWS store (``ingest.db.ews``: the
    file ``ews.sqlite3``, or on PostgreSQL the shared database), beside the outbox."""
    db.write_sync(alert_db.setup)
    return db


def from_settings(settings: IngestSettings, db: Database, outbox: Outbox, *,
                  clock: Callable[[], int], publish: Callable[[str, bytes], None],
                  notify: Callable[[dict[str, Any]], None]) -> AlertService:
    """The service's alerts on the EWS store ``db``; with ``alert_webhook_url`` the outbox
    channel ``alert-webhook`` is registered (call before ``outbox.run``)."""
    url = settings.alert_webhook_url
    if url:
        retry = RetryPolicy()
        outbox.register(WEBHOOK_CHANNEL, WebhookTransport(url, timeout_s=retry.timeout_s),
                        retry=retry)
        log.info("alerts: escalations also go to a webhook (outbox channel %s)", WEBHOOK_CHANNEL)
    return AlertService(
        attach_store(db),
        policy=AlertPolicy(settings.alert_response_high_s, settings.alert_response_medium_s),
        clock=clock, prefix=settings.prefix, check_s=settings.alert_check_s,
        continuous_ms=settings.freshness_ms, publish=publish, notify=notify,
        webhook=bool(url), wake_outbox=outbox.notify)
