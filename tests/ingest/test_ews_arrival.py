"""The emission policy decides each reading as of when it was received, however late it reaches
the engine (issue 13): a reading held by the feed for its predecessor, or read from the store by
a takeover, gets the points one process receiving it live would have emitted. And a held change
whose interval ran out before the next reading arrived is emitted as of then, whether or not a
tick ran in between. Both engines (``store``), an injected clock."""

from __future__ import annotations

from ingest.emit_policy import EmitPolicy
from ingest.ews_engine import EwsEngine
from tests.ingest.ews_support import Open
from tests.ingest.test_ews_engine import NORMAL, readings
from tests.ingest.upstream import FakeTime

S = 1_000
#: the failover test's policy: a 5 s rate limit, a 25 s pause grace
POLICY = EmitPolicy(min_interval_ms=5 * S)
GRACE_MS = 25 * S


def _engine(store: Open, clock: FakeTime, policy: EmitPolicy = POLICY) -> EwsEngine:
    return EwsEngine(store(), clock=clock, policy=policy, pause_grace_ms=GRACE_MS)


def _history(eng: EwsEngine, user: str, t0: int) -> list[tuple[int, int, str]]:
    points, _ = eng.history(user, page=1, size=50)
    return sorted((p.produce_at - t0, p.point, p.trigger) for p in points)


def test_a_change_read_late_comes_due_from_when_it_was_received(store: Open) -> None:
    """The takeover of 2026-12-02's failover run: the new owner read a held change from the
    store 17 s after it was received; its pause then counted from the takeover, so the change
    came due 17 s later than under one process, after the patient's next reading."""
    clock = FakeTime()
    t0 = clock.now
    eng = _engine(store, clock)
    for user in ("LIVE", "LATE"):
        assert [p.point for p in eng.observe(readings(user, t0, **NORMAL), [t0] * 5)] == [0]
    clock.advance(3 * S)  # heart rate 95: a change (0 → 1), held by the 5 s rate limit
    change = {"heart_rate": 95.0}
    assert eng.observe(readings("LIVE", clock.now, **change)) == []
    clock.advance(14 * S)  # 17 s: a takeover reads the same reading from the store
    assert eng.observe(readings("LATE", t0 + 3 * S, **change), [t0 + 3 * S]) == []
    clock.advance(12 * S)  # 29 s: 1 s short of 3 s + 25 s grace + the 2 s left of the 5 s
    assert eng.tick() == []
    clock.advance(1 * S)
    due = eng.tick()
    assert sorted((p.user_code, p.produce_at - t0, p.point, p.trigger) for p in due) == [
        ("LATE", 3 * S, 1, "change"), ("LIVE", 3 * S, 1, "change")]
    eng.close()


def test_a_held_change_due_before_the_next_reading_is_emitted_tick_or_no_tick(
        store: Open) -> None:
    """Whether the tick ran in the 31 s pause or not, the change held at 3 s is emitted with
    the score it had, then the next reading is decided: one history, not two by a race."""
    clock = FakeTime()
    t0 = clock.now
    ticked, quiet = _engine(store, clock), _engine(store, clock)
    for eng, user in ((ticked, "TICKED"), (quiet, "QUIET")):
        assert [p.point for p in eng.observe(readings(user, t0, **NORMAL))] == [0]
    clock.advance(3 * S)
    for eng, user in ((ticked, "TICKED"), (quiet, "QUIET")):
        assert eng.observe(readings(user, clock.now, heart_rate=95.0)) == []
    clock.advance(27 * S)  # 30 s: due (3 s + 25 s grace + 2 s); only one engine ticks
    assert [(p.produce_at - t0, p.point) for p in ticked.tick()] == [(3 * S, 1)]
    clock.advance(1 * S)  # 31 s: the next reading, respiratory rate 22 as well (1 → 3)
    worse = {"heart_rate": 95.0, "respiratory_rate": 22.0}
    assert [p.point for p in ticked.observe(readings("TICKED", clock.now, **worse))] == [3]
    assert [(p.produce_at - t0, p.point, p.trigger) for p in quiet.observe(
        readings("QUIET", clock.now, **worse))] == [(3 * S, 1, "change"), (31 * S, 3, "change")]
    assert _history(quiet, "QUIET", t0) == _history(ticked, "TICKED", t0) == [
        (0, 0, "first"), (3 * S, 1, "change"), (31 * S, 3, "change")]
    # a held change whose score went back before it came due is not emitted by either path
    clock.advance(1 * S)
    assert quiet.observe(readings("QUIET", clock.now, **NORMAL)) == []  # 3 → 0: held
    clock.advance(1 * S)
    assert quiet.observe(readings("QUIET", clock.now, **worse)) == []  # back to 3
    clock.advance(40 * S)
    assert quiet.observe(readings("QUIET", clock.now, **worse)) == []
    assert quiet.tick() == []
    assert len(_history(quiet, "QUIET", t0)) == 3
    ticked.close()
    quiet.close()


def test_a_late_batch_is_decided_round_by_round_as_it_arrived(store: Open) -> None:
    """A minute of readings handed over at once, each with its arrival: the rate limit runs
    on the patient's clock as it was at each arrival, not inflated by the minute of delay (that
    would emit the 10 s change a live process held back)."""
    clock = FakeTime()
    t0 = clock.now
    slow = EmitPolicy(min_interval_ms=30 * S)
    live, late = _engine(store, clock, slow), _engine(store, clock, slow)
    steps = [(0, NORMAL), (10 * S, {"heart_rate": 95.0}),
             (20 * S, {"heart_rate": 95.0, "respiratory_rate": 22.0})]
    for at, vitals in steps:
        clock.now = t0 + at
        live.observe(readings("LIVE", clock.now, **vitals))
    for at in range(25, 100, 5):  # the live process ticks every 5 s meanwhile
        clock.now = t0 + at * S
        live.tick()
    # the same readings, handed over at 100 s with when they were received
    batch = [r for at, vitals in steps for r in readings("LATE", t0 + at, **vitals)]
    arrived = [r[3] for r in batch]
    late.observe(batch, arrived)
    late.tick()
    assert _history(late, "LATE", t0) == _history(live, "LIVE", t0) == [
        (0, 0, "first"), (20 * S, 3, "change")]
    live.close()
    late.close()
