"""A takeover's plan (ingest.handover): what the previous owner scored rebuilds the scorer,
what follows is scored in event-time order as far as each device's seq has no hole, and the
rest waits in the feed's order for its predecessor."""

from __future__ import annotations

from ingest.handover import Stored, plan


def _r(ts: int, seq: int | None, dev: str = "d", vital: str = "heart_rate") -> Stored:
    return Stored("P1", vital, 70.0, ts, ts + 5, dev, seq)


def test_readings_after_a_hole_wait_and_the_feed_expects_the_missing_seq() -> None:
    rows = [_r(1000, 10), _r(1000, 10, vital="spo2"), _r(2000, 11), _r(3000, 12),
            _r(5000, 14), _r(6000, 15), _r(6000, None, dev="ecg")]
    p = plan(rows, upto=2000)
    assert p.before == rows[:3]
    assert p.after == [_r(3000, 12), _r(6000, None, dev="ecg")]  # unsequenced: never held
    assert p.deferred == [_r(5000, 14), _r(6000, 15)]  # 13 is not committed yet
    assert p.nexts == {"d": 13}


def test_nothing_recorded_yet_every_reading_is_scored_from_seq_0_in_the_store() -> None:
    rows = [_r(1000, 0), _r(2000, 1), _r(2000, 0, dev="e"), _r(3000, 1, dev="e")]
    p = plan(rows, upto=None)
    assert p.before == [] and p.deferred == [] and p.after == rows
    assert p.nexts == {"d": 2, "e": 2}


def test_a_device_first_seen_above_seq_0_is_left_to_the_feeds_first_wait() -> None:
    """Measured in the failover e2e: a new patient's seq 1 was committed before its seq 0,
    a takeover in between scored seq 1 first and its first point differed. Such a device's
    readings go to the feed unseeded: its first-wait (FIRST_HOLD_MS) decides, as for one
    arriving by notification; a device that was scored already goes on as before."""
    rows = [_r(500, 4, dev="old"), _r(1000, 1), _r(1000, 5, dev="old"), _r(2000, 2)]
    p = plan(rows, upto=500)
    assert p.before == [_r(500, 4, dev="old")]
    assert p.after == [_r(1000, 5, dev="old")]
    assert p.deferred == [_r(1000, 1), _r(2000, 2)]
    assert p.nexts == {"old": 6}  # "d" not seeded: the feed has never seen it


def test_a_device_with_nothing_new_goes_on_after_what_was_scored() -> None:
    p = plan([_r(1000, 1), _r(2000, 2)], upto=5000)
    assert p.after == [] and p.deferred == [] and p.nexts == {"d": 3}
