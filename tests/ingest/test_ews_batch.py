"""An emission batch is written as one multi-row history statement and one multi-row outbox
statement (on both engines), with the semantics of writing it point by point: every recorded
point's id links its outbox rows (cexup's state pending or local, the extra channels'
pending); a (patient, seq) another engine recorded first is absorbed for exactly those
patients; a patient twice in one batch is written one point after the other; a body with NUL
fails the whole batch, as one ``enqueue`` did. The ids come back mapped by (patient, seq),
not by the order of RETURNING, which neither engine promises."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from typing import Any

import pytest

from ingest.db import Conn
from ingest.db import ews as ews_store
from ingest.db import outbox as table
from ingest.emit_policy import EmitPolicy
from ingest.ews_engine import EwsEngine, EwsPoint
from tests.ingest.ews_support import Open, query
from tests.ingest.upstream import FakeTime

NORMAL = {"heart_rate": 72.0, "spo2": 98.0, "systolic_bp": 120.0, "temperature": 36.8,
          "respiratory_rate": 16.0}
POLICY = EmitPolicy(min_interval_ms=0)
#: respiratory rates that give different points, so patients' bodies differ
RATES = (16.0, 22.0, 25.0, 10.0)


def vitals(user: str, ts: int, **changes: float) -> list[tuple[str, str, float, int]]:
    return [(user, k, v, ts) for k, v in {**NORMAL, **changes}.items()]


def many(users: list[str], ts: int, shift: int = 0) -> list[tuple[str, str, float, int]]:
    """One reading per patient, all at ``ts``: one scoring round, one emission batch."""
    return [r for n, u in enumerate(users)
            for r in vitals(u, ts, respiratory_rate=RATES[(n + shift) % len(RATES)])]


def fhir_body(p: EwsPoint) -> dict[str, Any] | None:
    """An extra channel that renders only some points (None: nothing enqueued for that one)."""
    return None if p.point % 2 else {"fhir": p.user_code, "id": p.id, "point": p.point}


def expected_outbox(points: list[EwsPoint], cexup_state: str) -> set[tuple[Any, ...]]:
    """The outbox rows writing the points one by one gave: cexup's for each, fhir's for those
    it renders; each linked to its history row by history_id and the dedup key ews:<id>."""
    out = set()
    for p in points:
        assert p.id is not None
        out.add(("cexup", p.user_code, f"ews:{p.id}", p.id,
                 json.dumps(p.to_cexup(), separators=(",", ":")), cexup_state))
        body = fhir_body(p)
        if body is not None:
            out.add(("fhir", p.user_code, f"ews:{p.id}", p.id,
                     json.dumps(body, separators=(",", ":")), "pending"))
    return out


def outbox_rows(engine: EwsEngine) -> set[tuple[Any, ...]]:
    return set(query(engine.db, "SELECT channel, user_code, dedup_key, history_id, body, state"
                                " FROM ews_outbox"))


def history(engine: EwsEngine) -> dict[int, tuple[Any, ...]]:
    return {int(r[0]): tuple(r[1:]) for r in query(
        engine.db, "SELECT id, user_code, seq, point, result, produce_at, trigger FROM ews_history")}


@pytest.mark.parametrize("deliver", [True, False])
def test_a_batch_of_many_patients_writes_the_rows_one_by_one_wrote(store: Open,
                                                                   deliver: bool) -> None:
    clock = FakeTime()
    engine = EwsEngine(store(), clock=clock, policy=POLICY, deliver=deliver)
    engine.add_channel("fhir", fhir_body)
    users = [f"P{n:03d}" for n in range(60)]
    points = engine.observe(many(users, clock.now))
    assert sorted(p.user_code for p in points) == users
    rows = history(engine)
    assert len(rows) == 60
    for p in points:  # each point's id is its own history row (ids mapped by patient and seq)
        assert p.id is not None
        assert rows[p.id] == (p.user_code, 1, p.point, p.result, p.produce_at, p.trigger)
        assert engine.current(p.user_code) == p  # the engine's state zipped with its entry
    assert {p.point % 2 for p in points} == {0, 1}  # fhir skipped some, rendered others
    assert outbox_rows(engine) == expected_outbox(points, "pending" if deliver else "local")
    # the next batch (another score for every patient) continues each patient's seq
    clock.advance(60_000)
    again = engine.observe(many(users, clock.now, shift=1))
    assert len(again) == 60 and all(p.seq == 2 for p in again)
    assert outbox_rows(engine) == expected_outbox(points + again, "pending" if deliver else "local")
    assert engine.duplicates == 0 and engine.repeats == 0


def test_points_another_engine_recorded_first_are_absorbed_the_rest_written(store: Open) -> None:
    clock = FakeTime()
    a = EwsEngine(store(), clock=clock, policy=POLICY)
    b = EwsEngine(store(), clock=clock, policy=POLICY)
    users = [f"P{n:02d}" for n in range(30)]
    t = clock.now
    # a records P00-P04 with b's very readings (the same point: found in the history) and
    # P05-P09 with other readings (another point with the same seq: the insert conflicts)
    same = a.observe(many(users[:5], t))
    other = a.observe(many(users[5:10], t, shift=2))
    by_a = {p.user_code: p for p in same + other}
    assert len(by_a) == 10
    written = b.observe(many(users, t))
    assert sorted(p.user_code for p in written) == users[10:]  # absorbed: not returned
    assert b.duplicates == 10
    for u in users[:10]:
        assert b.current(u) == by_a[u]  # b adopted the point a recorded
    rows = history(a)
    assert sorted((r[0], r[1]) for r in rows.values()) == [(u, 1) for u in users]
    for p in written:
        assert p.id is not None and rows[p.id][0] == p.user_code
    recorded = list(by_a.values()) + written
    assert {(c, u, k, h) for c, u, k, h, _, _ in outbox_rows(a)} == {
        ("cexup", p.user_code, f"ews:{p.id}", p.id) for p in recorded}
    # both go on from the shared state: b's next change of an absorbed patient is its seq 2
    clock.advance(60_000)
    [nxt] = b.observe(vitals("P07", clock.now, respiratory_rate=30.0))
    assert nxt.seq == 2


def test_a_patient_twice_in_one_batch_is_written_point_after_point(store: Open) -> None:
    """No scoring path puts one patient twice in a batch today; ``_record`` keeps the
    sequential outcome if one does: the second point has the same seq as the first, so it is
    absorbed by it (or found as the same point), while the others go in the batch."""
    clock = FakeTime()
    engine = EwsEngine(store(), clock=clock, policy=POLICY)
    users = ["P1", "P2", "P3"]
    first = {p.user_code: p for p in engine.observe(many(users, clock.now))}
    clock.advance(60_000)
    index = {u: engine._scorer.index(u) for u in users}
    p1 = replace(first["P1"], point=first["P1"].point + 3, produce_at=clock.now, id=None)
    p1_other = replace(p1, point=p1.point + 1)
    p2 = replace(first["P2"], point=first["P2"].point + 2, produce_at=clock.now, id=None)
    p3 = replace(first["P3"], point=first["P3"].point + 1, produce_at=clock.now, id=None)
    entries = [(p1, index["P1"], clock.now), (p2, index["P2"], clock.now),
               (p1_other, index["P1"], clock.now),  # P1 again, another point: conflicts
               (p3, index["P3"], clock.now), (p3, index["P3"], clock.now)]  # the same twice
    recorded = engine._record(entries, clock.now)  # type: ignore[arg-type]
    assert [(p.user_code, p.point, p.seq) for p in recorded] == [
        ("P1", p1.point, 2), ("P2", p2.point, 2), ("P3", p3.point, 2)]  # in the entries' order
    assert engine.duplicates == 2
    assert engine.current("P1") == recorded[0]  # the first of its two stays the last point
    rows = history(engine)
    assert sorted((r[0], r[1], r[2]) for r in rows.values()) == sorted(
        [(u, 1, first[u].point) for u in users] + [(p.user_code, 2, p.point) for p in recorded])
    assert {(c, h) for c, _, _, h, _, _ in outbox_rows(engine)} == {
        ("cexup", p.id) for p in [*first.values(), *recorded]}


def test_a_body_with_nul_fails_the_whole_batch_as_before(store: Open) -> None:
    clock = FakeTime()
    engine = EwsEngine(store(), clock=clock, policy=POLICY)
    bad = {"P05"}
    engine.add_channel("hl7", lambda p: "MSH|\x00" if p.user_code in bad else "MSH|ok")
    users = [f"P{n:02d}" for n in range(10)]
    with pytest.raises(ValueError, match="NUL"):
        engine.observe(many(users, clock.now))
    assert query(engine.db, "SELECT COUNT(*) FROM ews_history")[0] == (0,)
    assert query(engine.db, "SELECT COUNT(*) FROM ews_outbox")[0] == (0,)
    bad.clear()  # the points were not lost: the next tick records them all
    assert sorted(p.user_code for p in engine.tick()) == users
    assert query(engine.db, "SELECT channel, COUNT(*) FROM ews_outbox GROUP BY channel"
                            " ORDER BY channel") == [("cexup", 10), ("hl7", 10)]


def _low_limit(c: Conn) -> None:
    """On SQLite, a variable limit that fits two history rows per statement (13 values each):
    the chunking runs as it would with a build's 999, or 32 766 with thousands of rows."""
    if not c.is_postgres:
        c.sqlite.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 30)


def test_insert_history_many_maps_ids_by_patient_and_seq(store: Open) -> None:
    db = store()

    def row(user: str, seq: int, point: int) -> ews_store.HistoryRow:
        return ews_store.HistoryRow(
            user_code=user, point=point, result="low", risk="low", cause=["rr"], partial=False,
            missing=[], components={"rr": point}, produce_at=1000 + seq, emitted_at=2000,
            trigger="first", source="vitalgate", seq=seq)

    first = db.write_sync(lambda c: ews_store.insert_history_many(c, [row("B", 1, 5)]))
    rows = [row(f"U{n}", 1, n) for n in range(9, 0, -1)] + [row("B", 1, 7), row("B", 2, 8)]

    def insert(c: Conn) -> dict[tuple[str, int], int]:
        _low_limit(c)
        return ews_store.insert_history_many(c, rows)

    ids = db.write_sync(insert)
    assert set(ids) == {(r.user_code, r.seq) for r in rows} - {("B", 1)}  # ("B", 1) absorbed
    stored = {int(i): (str(u), int(s), int(p)) for i, u, s, p in query(
        db, "SELECT id, user_code, seq, point FROM ews_history")}
    assert stored[first[("B", 1)]] == ("B", 1, 5)  # the first recording stays
    for r in rows[:-2] + rows[-1:]:
        assert stored[ids[(r.user_code, r.seq)]] == (r.user_code, r.seq, r.point)
    assert query(db, "SELECT components FROM ews_history WHERE user_code = 'U3'") == [('{"rr": 3}',)]
    with pytest.raises(ValueError, match="twice"):
        db.write_sync(lambda c: ews_store.insert_history_many(c, [row("C", 1, 1), row("C", 1, 2)]))


def test_enqueue_many_absorbs_known_keys_and_refuses_nul_before_writing(store: Open) -> None:
    db = store()
    db.write_sync(lambda c: table.enqueue(c, channel="hl7", user_code="P1", dedup_key="k1",
                                          body="old", now=1))
    messages = [table.Message("hl7", f"P{n}", f"k{n}", f"MSH|{n}") for n in range(8, 0, -1)]
    messages += [table.Message("fhir", "P1", "k1", {"a": 1}, table.State.LOCAL, 42),
                 table.Message("hl7", "P9", "k8", "again")]  # k8 twice in one call

    def enqueue(c: Conn) -> dict[tuple[str, str], int]:
        _low_limit(c)
        return table.enqueue_many(c, messages, now=5)

    ids = db.write_sync(enqueue)
    assert set(ids) == {("hl7", f"k{n}") for n in range(2, 9)} | {("fhir", "k1")}
    stored = {int(i): (str(ch), str(k), str(b), str(s), h) for i, ch, k, b, s, h in query(
        db, "SELECT id, channel, dedup_key, body, state, history_id FROM ews_outbox")}
    for n in range(2, 9):
        assert stored[ids[("hl7", f"k{n}")]] == ("hl7", f"k{n}", f"MSH|{n}", "pending", None)
    assert stored[ids[("fhir", "k1")]] == ("fhir", "k1", '{"a":1}', "local", 42)
    assert ("hl7", "k1", "old", "pending", None) in stored.values()  # not overwritten
    before = len(stored)
    for bad in (table.Message("hl7", "P1", "z", "a\x00b"), table.Message("hl7", "P1", "z\x00", "b"),
                table.Message("hl7", "P\x001", "z", "b")):
        with pytest.raises(ValueError, match="NUL"):
            db.write_sync(lambda c, bad=bad: table.enqueue_many(
                c, [table.Message("hl7", "P2", "fine", "ok"), bad], now=6))
    assert query(db, "SELECT COUNT(*) FROM ews_outbox")[0] == (before,)  # nothing of the calls
