"""Two EWS engines on one shared store (two Database objects: two instances), on both engines:
a patient's scoring moves from one to the other without re-emitting an unchanged score or
skipping a change (warm_start_patient), and an emission both make while they briefly both
score the patient is recorded once (the unique per-patient seq absorbs the second)."""

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
