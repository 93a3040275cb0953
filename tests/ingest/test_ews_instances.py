"""Two EWS engines on one shared store (two Database objects: two instances), on both engines:
a patient's scoring moves from one to the other without re-emitting an unchanged score or
skipping a change (warm_start_patient), an emission both make while they briefly both
score the patient is recorded once (the unique per-patient seq absorbs the second), a re-score
that comes back to a point already recorded is not emitted again, and a pause shorter than the
engine's grace leaves a held change to the next reading (event time, not arrival timing)."""

from __future__ import annotations

import pytest

from ingest.db import ews as ews_store
from ingest.emit_policy import EmitPolicy
from ingest.ews_engine import EwsEngine, EwsInputError
from tests.ingest.ews_support import Open, query
from tests.ingest.upstream import FakeTime

NORMAL = {"heart_rate": 72.0, "spo2": 98.0, "systolic_bp": 120.0, "temperature": 36.8,
          "respiratory_rate": 16.0}
POLICY = EmitPolicy(min_interval_ms=0)
HOLDING = EmitPolicy(min_interval_ms=30_000)


def vitals(user: str, ts: int, **changes: float) -> list[tuple[str, str, float, int]]:
    return [(user, k, v, ts) for k, v in {**NORMAL, **changes}.items()]


def test_a_duplicate_emission_of_two_owners_is_recorded_once(store: Open) -> None:
    clock = FakeTime()
    a = EwsEngine(store(), clock=clock, policy=POLICY)
    b = EwsEngine(store(), clock=clock, policy=POLICY)
    readings = vitals("P1", clock.now, respiratory_rate=22.0)
    [first] = a.observe(readings)
    assert b.observe(readings) == []  # b's copy of the same emission is absorbed
    assert b.duplicates == 1 and a.duplicates == 0
    assert b.current("P1") == first  # b adopted the recorded point (same row)
    rows = query(a.db, "SELECT user_code, seq FROM ews_history")
    assert rows == [("P1", 1)]
    assert query(a.db, "SELECT COUNT(*) FROM ews_outbox")[0] == (1,)
    # both go on from the same state: the next change is again one row
    clock.advance(60_000)
    nxt = vitals("P1", clock.now, respiratory_rate=25.0)
    [second] = b.observe(nxt)
    assert a.observe(nxt) == [] and a.duplicates == 1
    assert second.seq == 2
    assert query(a.db, "SELECT seq FROM ews_history ORDER BY id") == [(1,), (2,)]


def test_a_handover_neither_re_emits_an_unchanged_score_nor_skips_a_change(store: Open) -> None:
    clock = FakeTime()
    old = EwsEngine(store(), clock=clock, policy=POLICY)
    # the new owner runs already (it scores other patients): its view of P1 is from its start
    new = EwsEngine(store(), clock=clock, policy=POLICY)
    t1 = clock.now
    new.observe(vitals("P2", t1))
    [p1] = old.observe(vitals("P1", t1, respiratory_rate=22.0))
    old.set_context("P1", consciousness="A", on_oxygen=True, spo2_scale=1)  # rescored: +2
    clock.advance(60_000)
    t2 = clock.now
    old.observe(vitals("P1", t2, respiratory_rate=22.0))  # unchanged: nothing
    last = old.current("P1")
    assert last is not None and last.point == p1.point + 2
    assert new.current("P1") is None
    # the handover: the shared readings of P1 (what the old owner scored) → nothing to emit
    recent = vitals("P1", t1, respiratory_rate=22.0) + vitals("P1", t2, respiratory_rate=22.0)
    assert new.warm_start_patient("P1", recent) == []
    assert new.current("P1") == last  # the shared emission state, context included
    assert new.get_context("P1")["on_oxygen"] is True
    # a change that happened while nobody scored P1 (stored, not yet scored) is emitted once
    clock.advance(60_000)
    new.release_patient("P1")
    again = EwsEngine(store(), clock=clock, policy=POLICY)
    changed = [*recent, *vitals("P1", clock.now, respiratory_rate=26.0)]
    [p] = again.warm_start_patient("P1", changed)
    assert p.point == last.point + 1 and p.seq == (last.seq or 0) + 1  # rr 26: 3 instead of 2
    assert query(again.db, "SELECT COUNT(*) FROM ews_history WHERE user_code = 'P1'")[0] == (3,)
    # the released engine emits nothing more for P1, even when readings reach it
    clock.advance(60_000)
    assert new.observe(vitals("P1", clock.now, respiratory_rate=8.0)) == []
    assert new.tick() == []
    with pytest.raises(EwsInputError):
        new.warm_start_patient("not a code")


def test_an_external_point_posted_to_two_instances_is_one_row(store: Open) -> None:
    clock = FakeTime()
    a = EwsEngine(store(), clock=clock)
    b = EwsEngine(store(), clock=clock)
    body = {"user_code": "X1", "point": 3, "result": "sedang", "produce_at": "1632889813001"}
    first = a.record_external(body)
    assert b.record_external(body) == first  # b finds a's row
    # and when both insert at once (neither saw the other's row yet), the index keeps one
    external = {"user_code": "X1", "point": 3, "result": "sedang", "risk": "low-medium",
                "cause": (), "partial": False, "missing": (), "components": {},
                "produce_at": 1632889813001, "emitted_at": clock.now, "trigger": "external",
                "source": "external", "seq": None}
    assert b.db.write_sync(lambda c: ews_store.insert_history(c, **external)) is None  # type: ignore[arg-type]
    assert query(a.db, "SELECT COUNT(*) FROM ews_history")[0] == (1,)


def test_a_handover_never_re_emits_a_point_the_shared_history_holds(store: Open) -> None:
    """The old owner scored a late reading that changed the score at the same event time; the
    new owner's warm start, reading the store before that late reading was committed, computes
    the earlier score again. It is not news: the shared history holds that emission (same
    patient, produce_at, point, result, risk), so it is not recorded or delivered twice."""
    clock = FakeTime()
    old = EwsEngine(store(), clock=clock, policy=POLICY)
    t0 = clock.now
    old.observe(vitals("P1", t0))
    clock.advance(60_000)
    t1 = clock.now
    [changed] = old.observe([("P1", "respiratory_rate", 22.0, t1)])  # partial: the rest from t0
    late = [("P1", "spo2", 93.0, t1 - 1_000)]  # committed late by another instance
    [rescored] = old.observe(late)
    assert (changed.produce_at, changed.point) == (t1, 2)
    assert (rescored.produce_at, rescored.point) == (t1, 4)
    old.release_patient("P1")
    new = EwsEngine(store(), clock=clock, policy=POLICY)
    clock.advance(10_000)
    # the store as read before the late reading's commit: the score at t1 is 2 again
    assert new.warm_start_patient("P1", [*vitals("P1", t0), ("P1", "respiratory_rate", 22.0, t1)]) == []
    assert new.repeats == 1
    assert new.current("P1") == rescored  # the emission state is still the newest point
    assert new.observe(late) == []  # the late reading reaches the new owner: nothing new
    rows = query(new.db, "SELECT produce_at, point, result, risk FROM ews_history"
                         " WHERE user_code = 'P1'")
    assert len(rows) == len(set(rows)) == 3
    assert query(new.db, "SELECT COUNT(*) FROM ews_outbox")[0] == (3,)


# -- pause_grace_ms: a pause in a patient's data shorter than the grace (the transport's jitter
# with several instances: other instances' commits, the feed's seq hold) does not move its
# emission clock, so a held change is decided by the next reading on event time, however late
# it travelled, and still comes due when the data really stops.


def held_change(store: Open, grace_ms: int, user: str = "P1"
                ) -> tuple[EwsEngine, FakeTime, int]:
    """``user`` first scored at t0, then a change (heart rate 95: not a rise) at t0 + 5 s,
    held."""
    clock = FakeTime()
    eng = EwsEngine(store(), clock=clock, policy=HOLDING, pause_grace_ms=grace_ms)
    t0 = clock.now
    [first] = eng.observe(vitals(user, t0))
    assert first.trigger == "first"
    clock.advance(5_000)
    assert eng.observe(vitals(user, t0 + 5_000, heart_rate=95.0)) == []
    return eng, clock, t0


def test_a_late_reading_within_the_grace_decides_the_held_change_on_event_time(
        store: Open) -> None:
    # without the grace: the next reading (due at t0 + 30 s) arrives 30 s after the last one
    # (a hold, a busy instance): the processing-time tick wins the race with the held score
    eng, clock, t0 = held_change(store, 0)
    clock.advance(30_000)
    [by_tick] = eng.tick()
    assert by_tick.produce_at == t0 + 5_000 and by_tick.point == 1
    # with it: the same arrival timing leaves the decision to that reading, on event time
    eng, clock, t0 = held_change(store, 15_000, "P2")
    clock.advance(30_000)
    assert eng.tick() == []
    [by_reading] = eng.observe(vitals("P2", t0 + 30_000, heart_rate=112.0))
    assert (by_reading.produce_at, by_reading.trigger) == (t0 + 30_000, "change")
    assert by_reading.point == 2  # the score at that reading, not the one held


def test_a_held_change_still_comes_due_when_the_data_stops(store: Open) -> None:
    eng, clock, t0 = held_change(store, 15_000)
    clock.advance(25_000)  # 25 s pause: 10 s beyond the grace, the clock is at t0 + 15 s
    assert eng.tick() == []
    clock.advance(20_000)  # 45 s pause: the clock at t0 + 35 s, 30 s after the emission
    [due] = eng.tick()
    assert (due.produce_at, due.point, due.trigger) == (t0 + 5_000, 1, "change")


def test_the_pause_grace_defaults_above_the_feed_hold_on_postgresql(tmp_path: object) -> None:
    """Unset, the grace is 0 on SQLite (one process, broker order) and, on PostgreSQL, above the
    longest a reading waits in the feed's hold; an explicit value wins on both."""
    from ingest import feed
    from ingest.settings import FEED_PAUSE_GRACE_S, IngestSettings
    from vitalgate.config import load_settings

    pg = "postgresql://u@127.0.0.1:5432/vitalgate"
    assert FEED_PAUSE_GRACE_S * 1000 > feed.HOLD_MS
    assert load_settings(IngestSettings, None, data_dir=tmp_path).pause_grace_ms == 0
    assert load_settings(IngestSettings, None, data_dir=tmp_path,
                         database_url=pg).pause_grace_ms == FEED_PAUSE_GRACE_S * 1000
    assert load_settings(IngestSettings, None, data_dir=tmp_path, database_url=pg,
                         ews_pause_grace_s=0).pause_grace_ms == 0
    assert load_settings(IngestSettings, None, data_dir=tmp_path,
                         ews_pause_grace_s=7.5).pause_grace_ms == 7500
