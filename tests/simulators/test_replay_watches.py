"""Replay into virtual watches: recorded values reach the broker through the real gateway path."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from simulators.recording import Track
from simulators.replay_watches import HOLD_MS, TrackSource, identities, replay_through_watches
from tests.support.probe import Probe
from vitalgate.broker import Mosquitto
from vitalgate.contract import device_id_from_mac


def _track() -> Track:
    # three rows one (recorded) minute apart; SpO2 measured only in the first row
    return Track(
        name="bed-7",
        t_ms=np.array([0, 60_000, 120_000], dtype=np.int64),
        vitals={
            "heart_rate": np.array([72.0, 101.0, 133.0]),
            "spo2": np.array([97.0, np.nan, np.nan]),
        },
        user_code="AMSe5Sn8Gkxj7",
    )


def test_track_source_holds_the_latest_row_and_forgets_old_values() -> None:
    src = TrackSource(_track(), start_ms=1_000_000, speed=60.0)
    assert src(1_000_000 - 1) == {}  # before the recording starts
    assert src(1_000_000) == {"heart_rate": 72.0, "spo2": 97.0}
    assert src(1_000_000 + 1_000) == {"heart_rate": 101.0, "spo2": 97.0}  # 1 s real = 60 s recorded
    assert src(1_000_000 + 2_500)["heart_rate"] == 133.0
    much_later = 1_000_000 + (120_000 + HOLD_MS) // 60 + 1
    assert src(much_later) == {}  # a value is not held across a gap longer than HOLD_MS


async def test_recorded_values_reach_the_broker_through_watches(mosquitto: Mosquitto, tmp_path: Path) -> None:
    track = _track()
    mac, user_code = identities(track)
    device_id = device_id_from_mac(mac)
    probe = Probe(mosquitto.host, mosquitto.port).start()
    try:
        snapshot = await asyncio.wait_for(replay_through_watches(
            [track], mqtt_url=mosquitto.url, gateway_id="replay-test", data_dir=tmp_path / "gw",
            speed=60.0, interval_s=0.25, linger_s=3.0,
        ), 60)
        await probe.until(lambda: any(r.vitals.heart_rate == 133 for r in probe.readings(device_id)),
                          timeout=20, what="the last recorded heart rate")
    finally:
        probe.stop()
    readings = probe.readings(device_id)
    heart_rates = [r.vitals.heart_rate for r in readings if r.vitals.heart_rate is not None]
    assert {72.0, 101.0, 133.0} <= set(heart_rates)
    # the watch reports the recording in its order
    firsts = [heart_rates.index(v) for v in (72.0, 101.0, 133.0)]
    assert firsts == sorted(firsts)
    assert all(r.user_code == user_code for r in readings)
    assert snapshot["gateway_id"] == "replay-test"
