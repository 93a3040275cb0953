"""Properties of the engine under random streams (hypothesis): per patient, emitted points are
monotone in produce_at; every history row has exactly one outbox row with its Cexup body; the
risk never rises without an immediate emission; the rate limit holds for other changes, on the
patient's clock (its newest reading time, running on with processing time while data pauses).
The store is either engine (``database_url``); each example starts on an emptied store."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.db import Conn
from ingest.db import ews as ews_store
from ingest.emit_policy import (
    RISK_ORDER,
    TRIGGERS,
    EmitPolicy,
    Snapshot,
    Trigger,
    decide,
    decide_many,
    heartbeat_due,
)
from ingest.ews_engine import EwsEngine, EwsPoint
from tests.ingest.ews_support import query
from tests.ingest.upstream import FakeTime

VITAL_RANGES = {
    "heart_rate": (30.0, 160.0),
    "spo2": (80.0, 100.0),
    "systolic_bp": (80.0, 230.0),
    "temperature": (34.0, 40.5),
    "respiratory_rate": (5.0, 30.0),
    "diastolic_bp": (40.0, 120.0),  # not a NEWS2 parameter: ignored by the scorer
}

reading = st.tuples(
    st.sampled_from(["P1", "P2", "P3"]),
    st.sampled_from(sorted(VITAL_RANGES)),
    st.integers(0, 1000),  # position within the vital's range
    st.integers(-600_000, 0),  # ms before "now": late and history readings included
)
step = st.tuples(
    st.lists(reading, max_size=12),
    st.integers(0, 20 * 60_000),  # clock advance before the batch
    st.booleans(),  # tick after the batch
)


def _empty(c: Conn) -> None:
    for name in ("ews_outbox", "ews_history", "patient_context"):
        c.execute(f"DELETE FROM {name}")


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, min_size=1, max_size=25))
def test_random_streams_keep_history_and_outbox_consistent(
    database_url: str, steps: list[tuple[list[tuple[str, str, int, int]], int, bool]],
) -> None:
    policy = EmitPolicy()
    with tempfile.TemporaryDirectory() as tmp:
        url = database_url if database_url.startswith("postgres") else None
        db = ews_store.open_store(url, Path(tmp))
        db.write_sync(_empty)
        clock = FakeTime()
        eng = EwsEngine(db, clock=clock, policy=policy)
        emitted = []
        # the reference patient clock: event time of the newest reading (E), and the clock
        # time at which E last advanced (A); the rate limits are measured on E + (now - A)
        newest: dict[str, int] = {}
        advanced_at: dict[str, int] = {}

        def patient_clock(p: EwsPoint, before: dict[str, tuple[int, int]] | None = None) -> int:
            # a held change that came due before a round's readings arrived is decided on the
            # clock as it ran before they moved it (``EwsEngine._emit_held_due``): it describes
            # the older state (produce_at at most the newest event time before the round)
            e, a = newest[p.user_code], advanced_at[p.user_code]
            if before is not None and p.user_code in before and p.produce_at <= before[p.user_code][0]:
                e, a = before[p.user_code]
            return e + clock.now - a

        for batch, advance, tick in steps:
            clock.advance(advance)
            items = []
            for patient, vital, pos, back in batch:
                low, high = VITAL_RANGES[vital]
                items.append((patient, vital, low + (high - low) * pos / 1000, clock.now + back))
            # one observe per round, as the engine splits a batch itself (round r: each
            # patient's r-th distinct reading time), so that the reference clock is exact
            times = {pat: sorted({ts for q, _, _, ts in items if q == pat}) for pat, *_ in items}
            for r in range(max((len(t) for t in times.values()), default=0)):
                part = [i for i in items if len(times[i[0]]) > r and i[3] == times[i[0]][r]]
                before = {q: (newest[q], advanced_at[q]) for q, *_ in part if q in newest}
                for patient, vital, _, ts in part:
                    if vital != "diastolic_bp" and ts > newest.get(patient, -1):
                        newest[patient], advanced_at[patient] = ts, clock.now
                emitted += [(clock.now, patient_clock(p, before), p) for p in eng.observe(part)]
            if tick:
                emitted += [(clock.now, patient_clock(p), p) for p in eng.tick()]
            # a risk higher than the last emitted one never waits
            latest = {p.user_code: p for _, _, p in emitted}
            for patient, point in latest.items():
                score = eng._scorer.current(patient)
                if score is not None and score.valid:
                    assert RISK_ORDER[score.risk] <= RISK_ORDER[point.risk]
        eng.close()

        history = query(
            db, "SELECT id, user_code, point, result, produce_at FROM ews_history ORDER BY id")
        outbox = query(db, "SELECT history_id, body, state FROM ews_outbox ORDER BY id")
        db.close()
    # what observe/tick returned is exactly what was recorded, and each has one outbox row
    assert [p.id for _, _, p in emitted] == [h[0] for h in history]
    assert [o[0] for o in outbox] == [h[0] for h in history]
    for (_hid, user, point, result, produce_at), (_, body, state) in zip(history, outbox, strict=True):
        assert json.loads(body) == {"user_code": user, "point": point, "result": result,
                                    "produce_at": str(produce_at)}
        assert state == "pending"
    last: dict[str, tuple[int, object]] = {}
    for now, patient_now, p in emitted:
        assert p.valid and p.produce_at <= patient_now <= now
        if p.user_code in last:
            then, prev = last[p.user_code]
            assert p.produce_at >= prev.produce_at  # type: ignore[attr-defined]
            if p.trigger == "change":
                assert patient_now - then >= policy.min_interval_ms
            if p.trigger == "risk-rise":
                assert RISK_ORDER[p.risk] > RISK_ORDER[prev.risk]  # type: ignore[attr-defined]
            if p.trigger == "heartbeat":
                assert patient_now - then >= policy.heartbeat_ms
        else:
            assert p.trigger == "first"
        last[p.user_code] = (patient_now, p)


snapshot = st.builds(
    Snapshot,
    st.integers(0, 20),
    st.sampled_from(["normal", "rendah", "sedang", "tinggi"]),
    st.sampled_from(sorted(RISK_ORDER)),
    st.integers(0, 10 * 60_000),
)


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(
        st.tuples(snapshot, st.none() | snapshot, st.integers(0, 10 * 60_000),
                  st.integers(0, 2 * 3_600_000), st.booleans()),
        min_size=1, max_size=30,
    ),
    immediate=st.booleans(),
)
def test_the_vectorised_decision_equals_the_scalar_one(
    rows: list[tuple[Snapshot, Snapshot | None, int, int, bool]], immediate: bool
) -> None:
    """decide_many (the engine's hot path) == decide + heartbeat_due, row by row."""
    policy = EmitPolicy(immediate_on_risk_rise=immediate)
    results = ["normal", "rendah", "sedang", "tinggi"]

    def arr(values: list[int], dtype: type = np.int64) -> np.ndarray:
        return np.array(values, dtype)

    last = [r[1] or Snapshot(0, "normal", "low", 0) for r in rows]
    trigger, hold = decide_many(
        policy,
        point=arr([r[0].point for r in rows]), result=arr([results.index(r[0].result) for r in rows]),
        risk=arr([RISK_ORDER[r[0].risk] for r in rows]), produce_at=arr([r[0].produce_at for r in rows]),
        has_last=np.array([r[1] is not None for r in rows]),
        last_point=arr([s.point for s in last]), last_result=arr([results.index(s.result) for s in last]),
        last_risk=arr([RISK_ORDER[s.risk] for s in last]), last_produce_at=arr([s.produce_at for s in last]),
        last_at=arr([r[2] for r in rows]), now=arr([r[2] + r[3] for r in rows]),
        new_data=np.array([r[4] for r in rows]),
    )
    for k, (new, prev, last_at, elapsed, new_data) in enumerate(rows):
        at = None if prev is None else last_at
        d = decide(policy, new, prev, at, last_at + elapsed)
        expected = d.trigger
        if (not d.emit and not d.hold and prev is not None
                and heartbeat_due(policy, at, last_at + elapsed, new_data)
                and new.produce_at >= prev.produce_at):
            expected = Trigger.HEARTBEAT
        got = TRIGGERS[trigger[k]] if trigger[k] >= 0 else None
        assert got == expected, (new, prev, last_at, elapsed, new_data)
        assert bool(hold[k]) == (d.hold and expected is None)
