"""EwsEngine on both engines (``database_url``: a real SQLite file or a real PostgreSQL) with an
injected clock: scoring, emission policy, context,
staleness, restart; delivery of a deteriorating patient to the local Cexup stand-in."""

from __future__ import annotations

import asyncio
import json

import pytest

from ingest.db import Conn, Database
from ingest.emit_policy import EmitPolicy
from ingest.ews_engine import EwsEngine, EwsInputError, EwsPoint
from ingest.outbox import Outbox
from tests.ingest.ews_support import Open, query
from tests.ingest.upstream import FakeTime, Upstream

NORMAL = {"heart_rate": 72.0, "spo2": 98.0, "systolic_bp": 120.0, "temperature": 36.8,
          "respiratory_rate": 16.0}
MIN = 60_000


def readings(user: str, ts: int, **vitals: float) -> list[tuple[str, str, float, int]]:
    return [(user, name, value, ts) for name, value in vitals.items()]


def engine(store: Open, clock: FakeTime, **kw: object) -> EwsEngine:
    return EwsEngine(store(), clock=clock, **kw)  # type: ignore[arg-type]


def pushed(eng: EwsEngine) -> list[EwsPoint]:
    """The points ``eng`` pushes to its subscriber (``on_emit``), in order, as they come."""
    published: list[EwsPoint] = []
    eng.on_emit = published.extend
    return published


def wipe(db: Database) -> None:
    """An empty EWS store (a second, independent store in one test)."""
    def run(c: Conn) -> None:
        for name in ("ews_outbox", "ews_history", "patient_context"):
            c.execute(f"DELETE FROM {name}")
    db.write_sync(run)


def observe_at(eng: EwsEngine, clock: FakeTime, user: str, **vitals: float) -> list[EwsPoint]:
    return eng.observe(readings(user, clock.now, **vitals))


def test_first_score_is_emitted_with_everything_and_recorded(store: Open) -> None:
    clock = FakeTime()
    eng = engine(store, clock)
    [p] = observe_at(eng, clock, "P1", **{**NORMAL, "respiratory_rate": 22.0})
    assert (p.user_code, p.point, p.result, p.risk) == ("P1", 2, "rendah", "low")
    assert p.cause == ("Respiration 22",)
    assert p.components["respiratory_rate"] == 2 and p.components["heart_rate"] == 0
    assert p.partial is True  # context assumed (A, air, scale 1)
    assert set(p.missing) >= {"consciousness", "on_oxygen"}
    assert p.produce_at == clock.now and p.trigger == "first"
    assert p.to_cexup() == {"user_code": "P1", "point": 2, "result": "rendah",
                            "produce_at": str(clock.now)}
    contract = p.to_contract()
    assert contract.point == 2 and contract.cause == ["Respiration 22"]
    # history row and outbox row were committed together
    [(hid,)] = query(eng.db, "SELECT id FROM ews_history")
    [(body, state, history_id)] = query(eng.db, "SELECT body, state, history_id FROM ews_outbox")
    assert json.loads(body) == p.to_cexup() and state == "pending" and history_id == hid
    assert eng.current("P1") == p
    eng.close()


def test_changes_that_are_not_a_risk_rise_wait_30s_and_a_rise_is_immediate(store: Open) -> None:
    clock = FakeTime()
    eng = engine(store, clock)
    assert [p.point for p in observe_at(eng, clock, "P1", **NORMAL)] == [0]
    clock.advance(5_000)
    # heart rate 95 scores 1: normal → rendah is a change, but still "low" risk: held back
    assert observe_at(eng, clock, "P1", heart_rate=95.0) == []
    clock.advance(20_000)
    assert eng.tick() == []  # 25 s since the last emission
    clock.advance(5_000)
    [held] = eng.tick()  # 30 s: the held change goes out, with the score current now
    assert (held.point, held.result, held.trigger) == (1, "rendah", "change")
    clock.advance(1_000)
    # RR 25 scores 3: a single red parameter → low-medium, a rise: immediate despite 1 s
    [rise] = observe_at(eng, clock, "P1", respiratory_rate=25.0)
    assert (rise.point, rise.result, rise.risk, rise.trigger) == (4, "sedang", "low-medium", "risk-rise")
    clock.advance(1_000)
    # a fall is rate limited too; and a change that reverts before the interval is never emitted
    assert observe_at(eng, clock, "P1", respiratory_rate=16.0) == []
    clock.advance(1_000)
    assert observe_at(eng, clock, "P1", respiratory_rate=25.0) == []
    clock.advance(40_000)
    assert eng.tick() == []
    points, total = eng.history("P1", page=1, size=10)
    assert total == 3 and [p.trigger for p in points] == ["risk-rise", "change", "first"]
    eng.close()


def test_heartbeat_hourly_while_data_flows_and_never_for_stale_data(store: Open) -> None:
    clock = FakeTime()
    eng = engine(store, clock)
    emitted = []
    for _ in range(13):  # the same vitals every 10 minutes for two hours
        emitted += observe_at(eng, clock, "P1", **NORMAL)
        emitted += eng.tick()
        clock.advance(10 * MIN)
    assert [p.trigger for p in emitted] == ["first", "heartbeat", "heartbeat"]
    assert [p.produce_at - emitted[0].produce_at for p in emitted] == [0, 60 * MIN, 120 * MIN]
    # data stops: the vitals go stale after 15 min, no heartbeat; current shows it stale
    clock.advance(3 * 60 * MIN)
    assert eng.tick() == []
    stale = eng.current("P1")
    assert stale is not None and stale.valid is False and "fresh" in stale.reason
    assert eng.counts_by_result() == {"normal": 0, "rendah": 0, "sedang": 0, "tinggi": 0, "stale": 1}
    eng.close()


def test_context_changes_the_score_at_once_and_survives_restart(store: Open) -> None:
    clock = FakeTime()
    eng = engine(store, clock)
    published = pushed(eng)
    [p] = observe_at(eng, clock, "P1", **NORMAL)
    assert p.point == 0 and published == []  # observe's points are returned, not pushed
    clock.advance(1_000)
    on_o2 = eng.set_context("P1", consciousness="A", on_oxygen=True, spo2_scale=1)
    assert on_o2 is not None and on_o2.point == 2 and on_o2.components["oxygen"] == 2
    assert published == [on_o2]
    assert "Oxygen" in on_o2.cause and on_o2.trigger in ("change", "context")
    # COPD: SpO2 90 % scores 3 on scale 1 but 0 on scale 2 (88-92 on air)
    eng.set_context("P2", consciousness="A", on_oxygen=False, spo2_scale=1)
    [copd] = observe_at(eng, clock, "P2", **{**NORMAL, "spo2": 90.0})
    assert (copd.point, copd.result) == (3, "sedang")
    clock.advance(1_000)
    scale2 = eng.set_context("P2", consciousness="A", on_oxygen=False, spo2_scale=2)
    assert scale2 is not None and (scale2.point, scale2.result, scale2.trigger) == (0, "normal", "context")
    assert "spo2_scale" not in scale2.missing
    eng.close()

    again = engine(store, clock)
    assert again.get_context("P2") == {"user_code": "P2", "consciousness": "A", "on_oxygen": False,
                                       "spo2_scale": 2, "assumed": False}
    assert again.get_context("nobody")["assumed"] is True
    # policy state restored: the same score again emits nothing; new data is scored on scale 2
    clock.advance(MIN)
    assert observe_at(again, clock, "P2", **{**NORMAL, "spo2": 90.0}) == []
    current = again.current("P2")
    assert current is not None and current.point == 0
    # consciousness V scores 3 → sedang (rise) at once
    confused = again.set_context("P2", consciousness="V", on_oxygen=False, spo2_scale=2)
    assert confused is not None and confused.point == 3 and confused.risk == "low-medium"
    again.close()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"consciousness": "X", "on_oxygen": False, "spo2_scale": 1}, "consciousness"),
        ({"consciousness": "A", "on_oxygen": "yes", "spo2_scale": 1}, "on_oxygen"),
        ({"consciousness": "A", "on_oxygen": False, "spo2_scale": 3}, "spo2_scale"),
        ({"consciousness": "A", "on_oxygen": False, "spo2_scale": True}, "spo2_scale"),
    ],
)
def test_bad_context_names_the_field(store: Open, kwargs: dict[str, object], field: str) -> None:
    eng = engine(store, FakeTime())
    with pytest.raises(EwsInputError) as err:
        eng.set_context("P1", **kwargs)  # type: ignore[arg-type]
    assert err.value.field == field
    assert eng.get_context("P1")["assumed"] is True  # nothing stored
    eng.close()


def test_news2012_has_no_confusion_level(store: Open) -> None:
    eng = engine(store, FakeTime(), table_name="news2012")
    with pytest.raises(EwsInputError, match="consciousness"):
        eng.set_context("P1", consciousness="C", on_oxygen=False, spo2_scale=1)
    with pytest.raises(ValueError, match="unknown EWS table"):
        engine(store, FakeTime(), table_name="mews")
    eng.close()


def test_external_points_are_history_and_current_but_not_delivered(store: Open) -> None:
    clock = FakeTime()
    eng = engine(store, clock)
    published = pushed(eng)
    p = eng.record_external({"user_code": "AMSe5Sn8Gkxj7", "point": 3, "result": "sedang",
                             "produce_at": "1632889813001"})
    assert (p.produce_at, p.risk, p.source) == (1632889813001, "low-medium", "external")
    assert eng.current("AMSe5Sn8Gkxj7") == p and published == [p]
    older = eng.record_external({"user_code": "AMSe5Sn8Gkxj7", "point": 0, "result": "normal",
                                 "produce_at": 1632889000000})
    assert eng.current("AMSe5Sn8Gkxj7") == p and published == [p]  # history only
    assert eng.history("AMSe5Sn8Gkxj7", page=1, size=5)[0] == [p, older]  # by produce_at
    assert query(eng.db, "SELECT COUNT(*) FROM ews_outbox")[0] == (0,)
    for body, field in [
        ({"user_code": "a b", "point": 1, "result": "normal", "produce_at": 1}, "user_code"),
        ({"user_code": "A", "point": -1, "result": "normal", "produce_at": 1}, "point"),
        ({"user_code": "A", "point": 1, "result": "high", "produce_at": 1}, "result"),
        ({"user_code": "A", "point": 1, "result": "normal", "produce_at": "soon"}, "produce_at"),
        ({"user_code": "A", "point": 1, "result": "normal"}, "produce_at"),
        ([], "body"),
    ]:
        with pytest.raises(EwsInputError) as err:
            eng.record_external(body)
        assert err.value.field == field
    eng.close()


def test_no_upstream_keeps_points_local(store: Open) -> None:
    clock = FakeTime()
    eng = engine(store, clock, deliver=False)
    observe_at(eng, clock, "P1", **NORMAL)
    outbox = Outbox(store(), upstream_url=None, api_key=None, clock=clock)
    assert outbox.stats() == {"depth": 0, "delivered": 0, "failed": 0, "local": 1, "attempts": 0,
                              "retried": 0}
    assert outbox.enabled is False
    outbox.close()
    eng.close()


async def test_deteriorating_patient_reaches_tinggi_at_the_platform(store: Open) -> None:
    clock = FakeTime()
    async with Upstream() as up:
        outbox = Outbox(store(), upstream_url=up.url, api_key=up.api_key, clock=clock)
        eng = engine(store, clock, notify=outbox.notify)
        task = asyncio.create_task(outbox.run())
        steps = [
            NORMAL,
            {**NORMAL, "respiratory_rate": 22.0, "heart_rate": 95.0},  # 3 rendah
            {**NORMAL, "respiratory_rate": 22.0, "heart_rate": 95.0, "spo2": 92.0},  # 5 sedang
            {"respiratory_rate": 26.0, "spo2": 91.0, "heart_rate": 115.0, "systolic_bp": 95.0,
             "temperature": 38.5},  # 3+3+2+2+1 = 11 tinggi
        ]
        emitted = []
        for vitals in steps:
            emitted += observe_at(eng, clock, "AMSe5Sn8Gkxj7", **vitals)
            clock.advance(5 * MIN)
        assert [(p.point, p.result) for p in emitted] == [
            (0, "normal"), (3, "rendah"), (5, "sedang"), (11, "tinggi")]
        # wait until the 4th answer is also recorded (delivered), not only received upstream:
        # cancelling between the two would leave it in flight (a bound, not a timing claim)
        for _ in range(6000):
            if len(up.accepted) == 4 and outbox.stats()["delivered"] == 4:
                break
            await asyncio.sleep(0.005)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert up.accepted == [p.to_cexup() for p in emitted]
        assert up.accepted[-1]["result"] == "tinggi"
        assert all(r.api_key == up.api_key for r in up.requests)
        assert outbox.stats()["delivered"] == 4 and outbox.stats()["depth"] == 0
        outbox.close()
        eng.close()


def test_late_readings_never_move_produce_at_backwards(store: Open) -> None:
    clock = FakeTime()
    eng = engine(store, clock, policy=EmitPolicy(min_interval_ms=0))
    t0 = clock.now
    observe_at(eng, clock, "P1", **NORMAL)
    clock.advance(MIN)
    # a history sync delivers an older, worse reading: the scorer keeps the newer value
    assert eng.observe(readings("P1", t0 - 30_000, respiratory_rate=30.0)) == []
    current = eng.current("P1")
    assert current is not None and current.produce_at == t0
    eng.close()


def test_a_batch_is_scored_in_event_time_order_whatever_its_size(store: Open) -> None:
    # one commit batch holding a patient's readings of three moments gives the points three
    # separate batches give (a replay's trajectory must not depend on the consumer's batching)
    clock = FakeTime()
    t0 = clock.now
    rows = [*readings("P1", t0 - 2 * 60 * MIN, **NORMAL),
            *readings("P1", t0 - 60 * MIN, **{**NORMAL, "respiratory_rate": 25.0}),
            *readings("P1", t0, **{**NORMAL, "respiratory_rate": 16.0, "heart_rate": 95.0})]
    first = engine(store, clock)
    together = first.observe(rows[::-1])  # arrival order reversed
    wipe(first.db)  # the second engine starts on an empty store, as the first did
    apart = engine(store, clock)
    separately = [p for k in range(3) for p in apart.observe(rows[5 * k:5 * k + 5])]
    key = [(p.point, p.result, p.produce_at, p.trigger) for p in together]
    assert key == [(p.point, p.result, p.produce_at, p.trigger) for p in separately]
    assert key == [(0, "normal", t0 - 120 * MIN, "first"), (3, "sedang", t0 - 60 * MIN, "risk-rise"),
                   (1, "rendah", t0, "change")]


def test_replayed_hours_are_scored_on_their_own_timeline(store: Open) -> None:
    # readings measured hours ago arrive one second apart: fresh on event time, and the hourly
    # heartbeat and the 30 s rate limit run on the readings' clock, not the ingest's
    clock = FakeTime()
    eng = engine(store, clock)
    start = clock.now - 10 * 60 * MIN
    emitted = []
    for hour in range(10):
        vitals = {**NORMAL, "heart_rate": 95.0} if hour in (3, 4) else NORMAL
        emitted += eng.observe(readings("P1", start + hour * 60 * MIN, **vitals))
        clock.advance(1_000)
        emitted += eng.tick()
    assert [(p.point, p.trigger) for p in emitted] == [
        (0, "first"), (0, "heartbeat"), (0, "heartbeat"), (1, "change"), (1, "heartbeat"),
        (0, "change"), (0, "heartbeat"), (0, "heartbeat"), (0, "heartbeat"), (0, "heartbeat")]
    assert [p.produce_at - start for p in emitted] == [h * 60 * MIN for h in range(10)]
    # the feed stops: stale by processing time, still shown (never hidden)
    clock.advance(15 * MIN + 1)
    assert eng.tick() == []
    stale = eng.current("P1")
    assert stale is not None and stale.valid is False and stale.point == 0


def test_a_far_future_external_point_never_pins_the_current_score(store: Open) -> None:
    clock = FakeTime()
    eng = engine(store, clock)
    sick = {"respiratory_rate": 26.0, "spo2": 91.0, "heart_rate": 115.0, "systolic_bp": 95.0,
            "temperature": 38.5}
    [p] = observe_at(eng, clock, "AMSe5Sn8Gkxj7", **sick)
    assert (p.point, p.result) == (11, "tinggi")
    eng.record_external({"user_code": "AMSe5Sn8Gkxj7", "point": 0, "result": "normal",
                         "produce_at": clock.now + 365 * 24 * 60 * MIN})  # a wrong clock
    clock.advance(MIN)
    observe_at(eng, clock, "AMSe5Sn8Gkxj7", **{**sick, "heart_rate": 135.0})
    current = eng.current("AMSe5Sn8Gkxj7")
    assert current is not None and (current.point, current.result, current.source) == (
        12, "tinggi", "vitalgate")
    assert [c.point for c in eng.all_current()] == [12]
    assert eng.counts_by_result()["tinggi"] == 1 and eng.counts_by_result()["normal"] == 0
    eng.close()


def test_scoring_counts_account_for_old_readings_and_merged_rounds(store: Open) -> None:
    clock = FakeTime()
    eng = engine(store, clock)
    eng.observe(readings("P1", clock.now, heart_rate=80.0))
    eng.observe(readings("P1", clock.now - 20 * MIN, heart_rate=150.0))  # older than 15 min
    many = [("P2", "heart_rate", 70.0 + k, clock.now - k * 1_000) for k in range(70)]
    eng.observe(many)  # 70 reading times of one patient in one batch: 64 rounds at most
    counts = eng.scoring_counts()
    assert counts["old"] == 1 and counts["merged_rounds"] == 70 - 64  # scored in the last round
    # the folded round still scored the newest reading (HR 70 → 0, as the last point emitted)
    scored = eng._scorer.current("P2")
    assert scored is not None and scored.produce_at == clock.now and scored.point == 0
    current = eng.current("P2")
    assert current is not None and current.point == 0
    eng.close()
