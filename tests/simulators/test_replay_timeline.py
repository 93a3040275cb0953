"""``--timestamps sim``: the recorded timeline, ending at the replay's start (nothing in the future)."""

from __future__ import annotations

import itertools
from pathlib import Path

from simulators.importers import load_tracks
from simulators.physiology import SimClock, SteppedTime
from simulators.replay import ReplayItem, replay_tracks

R0 = 1_800_000_000_000  # when the replay starts


def test_sim_timestamps_keep_the_recorded_spacing_and_end_at_the_start(shared_data: Path) -> None:
    fake = SteppedTime()
    clock = SimClock(R0, speed=3600, time_fn=fake.time, sleep_fn=fake.sleep)
    delivered: list[tuple[ReplayItem, int]] = []
    tracks = load_tracks(shared_data / "physionet2019" / "p100001.psv")
    tracks += load_tracks(shared_data / "physionet2019" / "p100837.psv")
    stats = replay_tracks(tracks, lambda item: delivered.append((item, clock.real_ms())),
                          clock=clock, timestamps="sim")
    assert stats.rows == len(delivered) > 100
    span = max(item.offset_ms for item, _ in delivered)
    assert [item.ts - (R0 - span) for item, _ in delivered] == [item.offset_ms for item, _ in delivered]
    assert max(item.ts for item, _ in delivered) == R0  # the last reading is stamped "now"
    assert all(item.ts <= real for item, real in delivered)  # none lies in the future
    hours = [b.ts - a.ts for (a, _), (b, _) in itertools.pairwise(delivered)
             if a.track == b.track == "p100837"]
    assert hours and all(h % 3_600_000 == 0 for h in hours)  # hourly rows keep their spacing
