"""StreamScorer: latest fresh vitals of many patients, rescored when changed or gone stale."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ews import NEWS2012, score_news2
from ews.score import Score
from ews.stream import NO_FRESH, StreamScorer

T0 = 1_700_000_000_000
MIN = 60_000
NORMAL = {
    "respiratory_rate": 16.0,
    "spo2": 97.0,
    "systolic_bp": 125.0,
    "heart_rate": 70.0,
    "temperature": 36.8,
}


class Clock:
    """The injected clock: tests move time explicitly."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def feed(s: StreamScorer, patient: str, vitals: dict[str, float], ts: int) -> None:
    s.update([patient] * len(vitals), list(vitals), list(vitals.values()), [ts] * len(vitals))


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_first_score_of_a_patient(clock: Clock) -> None:
    s = StreamScorer(clock=clock)
    feed(s, "AMSe5Sn8Gkxj7", {**NORMAL, "respiratory_rate": 22, "heart_rate": 135}, T0 - 1000)
    (score,) = s.rescore()
    assert isinstance(score, Score)
    assert score.user_code == "AMSe5Sn8Gkxj7"
    assert (score.point, score.result, score.risk) == (2 + 3, "sedang", "medium")
    assert score.cause == ("Respiration 22", "Pulse 135")
    assert score.partial and score.missing == ("consciousness", "on_oxygen", "spo2_scale")
    assert score.components == {
        "respiratory_rate": 2, "spo2": 0, "systolic_bp": 0, "heart_rate": 3, "temperature": 0,
        "consciousness": 0, "oxygen": 0,
    }  # fmt: skip
    assert score.produce_at == T0 - 1000
    assert score.valid and score.reason == ""
    assert score.values == {**NORMAL, "respiratory_rate": 22.0, "heart_rate": 135.0}
    assert s.rescore() == []  # nothing changed since
    assert s.patients() == ["AMSe5Sn8Gkxj7"]
    assert score.as_dict()["cause"] == ["Respiration 22", "Pulse 135"]


def test_only_changed_patients_are_rescored(clock: Clock) -> None:
    s = StreamScorer(clock=clock)
    for p in ("a", "b", "c"):
        feed(s, p, NORMAL, T0)
    assert sorted(x.user_code for x in s.rescore()) == ["a", "b", "c"]
    feed(s, "b", {"heart_rate": 120}, T0 + 1)
    (b,) = s.rescore()
    assert (b.user_code, b.point, b.produce_at) == ("b", 2, T0 + 1)


def test_context_is_explicit_and_scored(clock: Clock) -> None:
    s = StreamScorer(clock=clock)
    feed(s, "p", {**NORMAL, "spo2": 97}, T0)
    s.rescore()
    s.set_context("p", consciousness="v", on_oxygen=True, spo2_scale=2)
    (p,) = s.rescore()
    # scale 2 on oxygen: SpO2 97 → 3, oxygen 2, new voice response 3
    assert p.point == 3 + 2 + 3
    assert p.components["spo2"] == 3 and p.components["consciousness"] == 3
    assert not p.partial and p.missing == ()
    assert p.cause == ("Blood Oxygen 97", "Consciousness V", "Oxygen")
    s.set_context("p")  # back to alert, on air, scale 1: still explicit
    (p,) = s.rescore()
    assert (p.point, p.partial) == (0, False)


def test_context_for_a_patient_without_vitals(clock: Clock) -> None:
    s = StreamScorer(clock=clock)
    s.set_context("new", consciousness="A")
    (p,) = s.rescore()
    assert (p.valid, p.reason, p.point, p.result, p.produce_at) == (False, NO_FRESH, -1, "", None)


def test_bad_context_is_rejected_clearly(clock: Clock) -> None:
    s = StreamScorer(clock=clock)
    with pytest.raises(ValueError, match="consciousness='X' is not one of A, C, V, P, U"):
        s.set_context("p", consciousness="X")
    with pytest.raises(ValueError, match="spo2_scale=3"):
        s.set_context("p", spo2_scale=3)
    with pytest.raises(ValueError, match="spo2_scale=2 must be one of \\(1,\\) for news2012"):
        StreamScorer(NEWS2012, clock=clock).set_context("p", spo2_scale=2)
    assert s.patients() == []


def test_values_go_stale_on_event_time(clock: Clock) -> None:
    # was "by the injected clock": freshness is measured on the patient's newest reading time
    # (event time), so a replay or a late sync is scored as the patient was then
    s = StreamScorer(freshness_ms=15 * MIN, clock=clock)
    feed(s, "p", {"heart_rate": 135}, T0)
    clock.now = T0 + 5 * MIN
    feed(s, "p", {"temperature": 39.5}, T0 + 5 * MIN)
    assert s.rescore()[0].point == 3 + 2
    clock.now = T0 + 15 * MIN
    feed(s, "p", {"temperature": 39.5}, T0 + 15 * MIN)  # exactly the window: still fresh
    assert s.rescore()[0].point == 3 + 2
    clock.now = T0 + 15 * MIN + 1
    feed(s, "p", {"temperature": 39.5}, T0 + 15 * MIN + 1)  # heart rate is now stale
    (p,) = s.rescore()
    assert (p.point, p.produce_at) == (2, T0 + 15 * MIN + 1)
    assert "heart_rate" in p.missing and "heart_rate" not in p.values
    assert s.rescore() == []
    # processing time alone does not age values while data flows on the patient's own timeline
    late = StreamScorer(freshness_ms=15 * MIN, clock=clock)
    feed(late, "p", {"heart_rate": 135}, T0 - 3 * 60 * MIN)  # measured 3 h ago, arriving now
    (p,) = late.rescore()
    assert (p.valid, p.point, p.produce_at) == (True, 3, T0 - 3 * 60 * MIN)


def test_a_patient_whose_data_stops_arriving_goes_stale_by_the_injected_clock(clock: Clock) -> None:
    s = StreamScorer(freshness_ms=15 * MIN, clock=clock)
    feed(s, "p", {"heart_rate": 135}, T0 - 60 * MIN)  # event clock an hour behind
    feed(s, "p", {"temperature": 39.5}, T0 - 55 * MIN)
    assert s.rescore()[0].point == 3 + 2
    clock.now = T0 + 15 * MIN  # exactly the timeout after the last arrival: not yet stale
    assert s.rescore() == []
    clock.now = T0 + 15 * MIN + 1  # nothing new for 15 min of processing time: rescored stale
    (p,) = s.rescore()
    assert (p.valid, p.reason, p.point, p.produce_at, p.values) == (False, NO_FRESH, -1, None, {})
    assert s.rescore() == []
    # late history does not revive it (the event clock did not advance) ...
    feed(s, "p", {"heart_rate": 80}, T0 - 58 * MIN)
    (p,) = s.rescore()
    assert p.valid is False
    # ... a new reading does
    feed(s, "p", {"heart_rate": 80}, T0 - 50 * MIN)
    (p,) = s.rescore()
    assert (p.valid, p.point, p.produce_at) == (True, 2, T0 - 50 * MIN)  # HR 80: 0, temp 39.5: 2
    assert s.patient_clock([0], clock.now).tolist() == [T0 - 50 * MIN]
    clock.now += 20_000  # the data pauses: the patient's clock runs on with processing time
    assert s.patient_clock([0], clock.now).tolist() == [T0 - 50 * MIN + 20_000]
    assert s.event_time([0]).tolist() == [T0 - 50 * MIN]


def test_very_old_readings_are_counted_and_never_current(clock: Clock) -> None:
    s = StreamScorer(freshness_ms=15 * MIN, clock=clock)
    feed(s, "p", {"heart_rate": 80}, T0)
    s.rescore()
    feed(s, "p", {"spo2": 85}, T0 - 16 * MIN)  # older than the newest by more than 15 min
    (p,) = s.rescore()
    assert "spo2" not in p.values and p.point == 0
    assert s.counters["old"] == 1


def test_current_scores_now_without_consuming_changes(clock: Clock) -> None:
    s = StreamScorer(clock=clock)
    assert s.current("nobody") is None
    feed(s, "p", {"heart_rate": 135}, T0)
    cur = s.current("p")
    assert cur is not None and cur.point == 3
    assert [x.point for x in s.rescore()] == [3]
    clock.now = T0 + 16 * MIN
    cur = s.current("p")
    assert cur is not None and cur.reason == NO_FRESH


def test_late_reading_does_not_replace_the_latest(clock: Clock) -> None:
    s = StreamScorer(clock=clock)
    feed(s, "p", {"heart_rate": 80}, T0)
    s.rescore()
    feed(s, "p", {"heart_rate": 140}, T0 - 60_000)  # history arriving late
    assert s.rescore() == []
    assert s.counters["late"] == 1
    cur = s.current("p")
    assert cur is not None and cur.values["heart_rate"] == 80.0 and cur.produce_at == T0


def test_newest_in_a_batch_wins_whatever_the_order(clock: Clock) -> None:
    s = StreamScorer(clock=clock)
    s.update(
        ["p", "p", "p", "q"], ["heart_rate"] * 4, [140, 80, 100, 55], [T0 - 3, T0 - 1, T0 - 2, T0]
    )
    scores = {x.user_code: x for x in s.rescore()}
    assert scores["p"].values == {"heart_rate": 80.0} and scores["p"].produce_at == T0 - 1
    assert scores["q"].values == {"heart_rate": 55.0}
    assert s.counters["superseded"] == 2


def test_duplicates_are_harmless(clock: Clock) -> None:
    s = StreamScorer(median_k=3, clock=clock)
    s.update(["p", "p"], ["heart_rate"] * 2, [80, 80], [T0, T0])  # QoS 1 duplicate in one batch
    s.update(["p"], ["heart_rate"], [80], [T0])  # and again later
    s.update(["p"], ["heart_rate"], [200], [T0 + 1])
    cur = s.current("p")
    # the window holds 80 and 200 (not 80 three times): median of two is their mean
    assert cur is not None and cur.values["heart_rate"] == 140.0
    assert s.counters["duplicate"] == 2
    assert s.counters["accepted"] == 2


def test_impossible_and_unknown_readings_are_counted_not_stored(clock: Clock) -> None:
    s = StreamScorer(clock=clock)
    feed(s, "p", {"spo2": 97}, T0)
    s.update(
        ["p", "p", "p", "p", "p"],
        ["spo2", "spo2", "heart_rate", "diastolic_bp", "pulse"],
        [101, math.nan, math.inf, 80, 70],
        [T0 + 1] * 5,
    )
    assert s.counters["rejected"] == 3
    assert s.counters["ignored"] == 2
    (p,) = s.rescore()
    assert p.values == {"spo2": 97.0} and p.produce_at == T0


def test_update_checks_lengths(clock: Clock) -> None:
    s = StreamScorer(clock=clock)
    with pytest.raises(ValueError, match="equal lengths"):
        s.update(["p"], ["heart_rate", "spo2"], [1.0], [T0])
    with pytest.raises(ValueError, match="non-empty str"):
        s.update([""], ["heart_rate"], [70], [T0])
    s.update([], [], [], [])
    assert s.rescore() == []


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="freshness_ms"):
        StreamScorer(freshness_ms=0)
    with pytest.raises(ValueError, match="median_k"):
        StreamScorer(median_k=0)


def test_default_clock_is_epoch_ms() -> None:
    s = StreamScorer()
    import time

    now = time.time_ns() // 1_000_000
    feed(s, "p", {"heart_rate": 70}, now)
    cur = s.current("p")
    assert cur is not None and cur.valid


def test_median_suppresses_a_single_artefact(clock: Clock) -> None:
    s = StreamScorer(median_k=3, clock=clock)
    s.update(["p"] * 3, ["heart_rate"] * 3, [80, 190, 84], [T0 - 2000, T0 - 1000, T0])
    (p,) = s.rescore()
    assert p.values["heart_rate"] == 84.0 and p.point == 0 and p.produce_at == T0
    s.update(["p"], ["heart_rate"], [86], [T0 + 1000])  # window now 190, 84, 86
    (p,) = s.rescore()
    assert p.values["heart_rate"] == 86.0
    # the same artefact without the median would have scored 3
    k1 = StreamScorer(clock=clock)
    k1.update(["p"], ["heart_rate"], [190], [T0])
    assert k1.rescore()[0].point == 3


def test_median_uses_only_fresh_readings_and_late_ones_in_time_order(clock: Clock) -> None:
    s = StreamScorer(median_k=3, freshness_ms=10 * MIN, clock=clock)
    s.update(["p"] * 2, ["spo2"] * 2, [90, 96], [T0 - 9 * MIN, T0])
    assert s.rescore()[0].values["spo2"] == 93.0  # median of two: their mean
    s.update(["p"], ["spo2"], [97], [T0 - 5 * MIN])  # late, but among the last three
    assert s.rescore()[0].values["spo2"] == 96.0  # 90, 97, 96
    s.update(["p"], ["spo2"], [50], [T0 - 20 * MIN])  # older than the whole full window
    assert s.rescore() == []
    assert s.counters["superseded"] == 1
    # a reading 2 min later (event time) makes the 90 % reading (T0 - 9 min) stale
    s.update(["p"], ["heart_rate"], [70], [T0 + 2 * MIN])
    (p,) = s.rescore()
    assert p.values["spo2"] == 96.5


def test_grows_to_many_patients(clock: Clock) -> None:
    s = StreamScorer(clock=clock)
    ids = [f"p{i}" for i in range(1000)]
    hr = np.arange(1000) % 150 + 30.0
    s.update(ids, ["heart_rate"] * 1000, hr, np.full(1000, T0))
    scores = {x.user_code: x for x in s.rescore()}
    expected = score_news2({"heart_rate": hr}).points
    assert [scores[p].point for p in ids] == expected.tolist()
    assert len(s) == 1000


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_stream_equals_batch_scoring_of_the_latest_fresh_values(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 60))
    items = data.draw(
        st.lists(
            st.tuples(
                st.sampled_from("abcd"), st.sampled_from(sorted(NORMAL)), st.integers(30, 100)
            ),
            min_size=n,
            max_size=n,
        )
    )
    # temperatures on their own plausible scale (30.0–44.0 °C)
    readings = [(p, v, 30 + (x - 30) / 5 if v == "temperature" else float(x)) for p, v, x in items]
    seconds = data.draw(st.lists(st.integers(0, 1200), min_size=n, max_size=n, unique=True))
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=4)))
    clock = Clock(T0 + 1200 * 1000)
    s = StreamScorer(freshness_ms=10 * MIN, clock=clock)
    for lo, hi in zip([0, *cuts], [*cuts, n], strict=True):
        chunk = readings[lo:hi]
        s.update(
            [p for p, _, _ in chunk],
            [v for _, v, _ in chunk],
            [x for _, _, x in chunk],
            [T0 + sec * 1000 for sec in seconds[lo:hi]],
        )
    latest: dict[tuple[str, str], tuple[int, float]] = {}
    for (p, v, x), sec in zip(readings, seconds, strict=True):
        ts = T0 + sec * 1000
        if (p, v) not in latest or ts > latest[p, v][0]:
            latest[p, v] = (ts, x)
    got = {x.user_code: x for x in s.rescore()}
    assert sorted(got) == sorted(s.patients()) == sorted({p for p, _, _ in items})
    for patient, score in got.items():
        # fresh on event time: within 10 min of the patient's own newest reading (this
        # reference used the clock, the processing-time rule issue 11 replaced)
        newest = max(t for (p, _), (t, _) in latest.items() if p == patient)
        fresh = {
            v: (t, x)
            for (p, v), (t, x) in latest.items()
            if p == patient and t >= newest - 10 * MIN
        }
        if not fresh:
            assert (score.valid, score.reason) == (False, NO_FRESH)
            continue
        ref = score_news2({v: [x] for v, (_, x) in fresh.items()})
        assert score.point == ref.points[0]
        assert score.values == {v: x for v, (_, x) in fresh.items()}
        assert score.produce_at == max(t for t, _ in fresh.values())


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(40, 200), st.integers(0, 600)),
        min_size=1,
        max_size=25,
        unique_by=lambda r: r[1],
    ),
    st.integers(1, 5),
    st.integers(0, 3),
)
def test_median_window_equals_reference(readings: list[tuple[int, int]], k: int, cut: int) -> None:
    clock = Clock(T0 + 600_000)
    s = StreamScorer(median_k=k, freshness_ms=300_000, clock=clock)
    split = min(cut * 5, len(readings))
    for part in (readings[:split], readings[split:]):  # arrival order is not time order
        if part:
            s.update(
                ["p"] * len(part),
                ["heart_rate"] * len(part),
                [x for x, _ in part],
                [T0 + t * 1000 for _, t in part],
            )
    window = sorted(readings, key=lambda r: r[1])[-k:]  # the last k by reading time
    newest = T0 + max(t for _, t in readings) * 1000  # fresh on event time (was: the clock)
    fresh = sorted(x for x, t in window if T0 + t * 1000 >= newest - 300_000)
    cur = s.current("p")
    assert cur is not None
    if not fresh:
        assert cur.reason == NO_FRESH
    else:
        assert cur.values["heart_rate"] == float(np.median(fresh))
