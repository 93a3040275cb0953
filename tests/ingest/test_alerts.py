"""The alert state machine (ingest.alerts) on an injected clock: every transition, a rise
after an acknowledgement re-alerts, resolution, escalation timing, monitoring frequency."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ingest.alerts import (
    TRANSITIONS,
    Alert,
    AlertError,
    AlertPolicy,
    AlertState,
    acknowledge,
    escalate,
    frequency,
    monitoring,
    on_score,
    validate_ack,
)

POLICY = AlertPolicy(response_high_s=300, response_medium_s=1800)
T0 = 1_700_000_000_000


@dataclass(frozen=True)
class S:
    user_code: str
    point: int
    risk: str
    result: str
    produce_at: int = T0
    valid: bool = True


LOW = S("P1", 2, "low", "rendah")
SINGLE3 = S("P1", 3, "low-medium", "sedang")
MEDIUM = S("P1", 5, "medium", "sedang")
MEDIUM6 = S("P1", 6, "medium", "sedang")
HIGH = S("P1", 8, "high", "tinggi")


def opened(score: S = MEDIUM, now: int = T0) -> Alert:
    moved = on_score(None, score, now, POLICY)
    assert moved is not None
    alert, entry = moved
    assert entry.transition == "opened" and entry.from_state is None
    return alert


def test_the_table_names_every_state_and_why() -> None:
    assert {t.target for t in TRANSITIONS.values()} == set(AlertState)
    assert all(t.why for t in TRANSITIONS.values())


def test_low_opens_nothing_medium_and_single_3_open_medium_high_opens_high() -> None:
    assert on_score(None, LOW, T0, POLICY) is None
    assert on_score(None, S("P1", 0, "low", "normal"), T0, POLICY) is None
    a = opened(SINGLE3)
    assert (a.state, a.severity, a.due_at) == (AlertState.OPENED, "medium", T0 + 1_800_000)
    b = opened(HIGH)
    assert (b.severity, b.due_at) == ("high", T0 + 300_000)


def test_a_stale_score_neither_opens_nor_resolves() -> None:
    assert on_score(None, S("P1", 8, "high", "tinggi", valid=False), T0, POLICY) is None
    a = opened()
    assert on_score(a, S("P1", 0, "low", "normal", valid=False), T0 + 1, POLICY) is None


def test_a_further_rise_updates_and_never_postpones_the_deadline() -> None:
    a = opened(MEDIUM)
    assert on_score(a, MEDIUM, T0 + 10, POLICY) is None  # the same: nothing
    moved = on_score(a, MEDIUM6, T0 + 60_000, POLICY)
    assert moved is not None
    b, entry = moved
    assert (b.state, b.point, entry.transition, entry.from_state) == (
        AlertState.UPDATED, 6, "updated", "opened")
    assert b.due_at == a.due_at  # 6 is still medium: the first deadline stands
    moved = on_score(b, HIGH, T0 + 120_000, POLICY)
    assert moved is not None
    c, _ = moved
    assert c.severity == "high" and c.due_at == T0 + 120_000 + 300_000
    # a fall within medium/high is no transition (the alert keeps its peak)
    assert on_score(c, MEDIUM, T0 + 130_000, POLICY) is None


def test_a_rise_after_acknowledgement_asks_for_attention_again() -> None:
    a = opened(MEDIUM)
    acked, entry = acknowledge(a, "Nurse Ani", "seen, obs repeated", T0 + 60_000)
    assert (acked.state, acked.acked_by, acked.due_at) == (AlertState.ACKNOWLEDGED, "Nurse Ani", None)
    assert (entry.who, entry.note, entry.transition) == ("Nurse Ani", "seen, obs repeated", "acknowledged")
    assert on_score(acked, MEDIUM, T0 + 70_000, POLICY) is None  # no rise: stays acknowledged
    moved = on_score(acked, HIGH, T0 + 100_000, POLICY)
    assert moved is not None
    again, entry = moved
    assert again.state is AlertState.UPDATED and again.acked_by is None
    assert again.due_at == T0 + 100_000 + 300_000 and entry.from_state == "acknowledged"
    # and it escalates again when nobody acknowledges the new rise
    esc, _ = escalate(again, T0 + 400_000)
    assert esc.state is AlertState.ESCALATED and esc.escalated


def test_resolve_from_every_open_state() -> None:
    a = opened()
    for alert in (a, acknowledge(a, "n1", None, T0 + 1)[0], escalate(a, T0 + 2)[0],
                  on_score(a, HIGH, T0 + 3, POLICY)[0]):  # type: ignore[index]
        moved = on_score(alert, LOW, T0 + 10, POLICY)
        assert moved is not None
        r, entry = moved
        assert (r.state, r.resolved_at, r.due_at, entry.transition) == (
            AlertState.RESOLVED, T0 + 10, None, "resolved")
    resolved = on_score(a, LOW, T0 + 10, POLICY)[0]  # type: ignore[index]
    with pytest.raises(AlertError) as err:
        acknowledge(resolved, "n1", None, T0 + 11)
    assert err.value.status == 409
    with pytest.raises(AlertError):
        escalate(resolved, T0 + 11)


def test_escalation_only_from_pending_and_only_once() -> None:
    a = opened(HIGH)
    e, entry = escalate(a, T0 + 300_000)
    assert (e.escalations, e.escalated_at, e.due_at, entry.from_state) == (1, T0 + 300_000, None, "opened")
    with pytest.raises(AlertError):
        escalate(e, T0 + 600_000)
    acked = acknowledge(e, "n2", None, T0 + 601_000)[0]
    assert not acked.escalated and acked.escalated_at is None  # acknowledged: no longer marked
    assert acked.escalations == 1
    # a further rise after the acknowledgement is not shown escalated before its own deadline
    rose = on_score(acked, S("P1", 9, "high", "tinggi"), T0 + 602_000, POLICY)
    assert rose is not None and not rose[0].escalated
    with pytest.raises(AlertError):
        escalate(acked, T0 + 700_000)
    with pytest.raises(AlertError) as err:
        acknowledge(acked, "n3", None, T0 + 700_001)
    assert "already acknowledged by 'n2'" in err.value.message


def test_validate_ack_names_the_field() -> None:
    assert validate_ack({"who": "Nurse Ani", "note": ""}) == ("Nurse Ani", None)
    for body, field in (([], "body"), ({}, "who"), ({"who": ""}, "who"), ({"who": "x" * 65}, "who"),
                        ({"who": "<script>"}, "who"), ({"who": "a", "note": 5}, "note"),
                        ({"who": "a", "note": "x" * 501}, "note"),
                        ({"who": "a", "note": "a\x00b"}, "note"), ({"who": "a", "x": 1}, "body")):
        with pytest.raises(AlertError) as err:
            validate_ack(body)
        assert err.value.status == 422 and err.value.message.startswith(field + ":")


@pytest.mark.parametrize(("point", "risk", "name", "hours"), [
    (0, "low", "12-hourly", 12), (1, "low", "4-6-hourly", 6), (4, "low", "4-6-hourly", 6),
    (3, "low-medium", "hourly", 1), (5, "medium", "hourly", 1), (6, "medium", "hourly", 1),
])
def test_frequency_follows_rcp(point: int, risk: str, name: str, hours: int) -> None:
    f = frequency(point, risk, continuous_ms=900_000)
    assert (f.name, f.overdue_after_ms) == (name, hours * 3_600_000)


def test_continuous_and_overdue_use_the_newest_reading_event_time() -> None:
    assert frequency(7, "high", continuous_ms=900_000).name == "continuous"
    now = T0 + 10 * 3_600_000
    scores = [S("A", 8, "high", "tinggi", produce_at=now - 60_000),
              S("B", 8, "high", "tinggi", produce_at=now - 3_600_000),
              S("C", 0, "low", "normal", produce_at=now - 11 * 3_600_000)]
    # B's last reading arrived separately 1 min ago (its score is older)
    rows = {m["user_code"]: m for m in monitoring(scores, {"B": now - 60_000}, now,
                                                  continuous_ms=900_000)}
    assert not rows["A"]["overdue"] and not rows["B"]["overdue"]
    assert rows["B"]["last_reading_at"] == now - 60_000
    assert not rows["C"]["overdue"]  # 10 h < 12 h
    rows2 = {m["user_code"]: m for m in monitoring(scores, {}, now, continuous_ms=900_000)}
    assert rows2["B"]["overdue"]  # an hour without vitals is overdue for continuous monitoring
    late = monitoring(scores, {}, now + 2 * 3_600_000, continuous_ms=900_000)
    assert late[0]["overdue"] and {m["user_code"] for m in late if m["overdue"]} == {"A", "B", "C"}
