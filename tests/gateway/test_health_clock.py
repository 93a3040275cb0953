"""Standard health devices follow the gateway's clock rules (gateway/clock_sync.py) on a Pi without
an RTC: a measurement without a device timestamp is never stamped with a wrong wall time (it is
held and stamped when NTP synchronises), and the device's clock is not set from a wrong one.
Injected time: ``ManualSync`` is a real implementation of the time-source protocol."""

from __future__ import annotations

from pathlib import Path

from gateway.ble.profiles.heart_rate import HeartRateSession
from gateway.ble.session import WatchInfo
from gateway.clock_sync import ManualSync, SyncedClock
from gateway.settings import GatewaySettings
from gatt.health import HEART_RATE_MEASUREMENT, decoder_for
from tests.support.sinks import ListSink
from vitalgate.contract import Source


def hr(bpm: int) -> bytes:
    return bytes([0x00, bpm])  # flags: uint8 rate, no contact/energy/RR fields


def session(tmp_path: Path, clock: SyncedClock, sink: ListSink) -> HeartRateSession:
    st = GatewaySettings(gateway_id="ward3", data_dir=tmp_path / "gw", status_port=0)
    info = WatchInfo(device_id="c0ffee000001", mac="C0:FF:EE:00:00:01", name="strap", user_code="P1")
    # no BLE client: nothing here may touch the radio (setting the clock would, and must not)
    return HeartRateSession(None, info, st, sink, clock)  # type: ignore[arg-type]


def test_reception_stamps_wait_for_ntp_then_carry_their_event_time(tmp_path: Path) -> None:
    t = ManualSync(wall=3.0, monotonic=40.0, synchronised=False)  # booted at 1970
    clock = SyncedClock(source=t)
    sink = ListSink()
    s = session(tmp_path, clock, sink)
    decode = decoder_for(HEART_RATE_MEASUREMENT)

    s._publish(HEART_RATE_MEASUREMENT, decode(hr(70)), clock.ms())
    t.advance(10.0)
    s._publish(HEART_RATE_MEASUREMENT, decode(hr(72)), clock.ms())
    assert sink.items == [] and len(s.held) == 2  # nothing published with a 1970 time

    t.step(1_800_000_000.0)  # NTP: the wall clock jumps, monotonic time does not
    t.advance(5.0)
    s._publish(HEART_RATE_MEASUREMENT, decode(hr(74)), clock.ms())
    # wall at each reading = wall now - (monotonic now - monotonic then)
    assert [(m.ts, m.vitals.heart_rate, m.source) for m in sink.items] == [
        (1_800_000_005_000 - 15_000, 70, Source.REALTIME),
        (1_800_000_005_000 - 5_000, 72, Source.REALTIME),
        (1_800_000_005_000, 74, Source.REALTIME),
    ]
    assert len(s.held) == 0 and s.counters.reception_stamped == 3

    t.advance(1.0)  # synchronised and nothing held: the reception time as measured
    s._publish(HEART_RATE_MEASUREMENT, decode(hr(76)), 1_800_000_006_000)
    assert sink.items[-1].ts == 1_800_000_006_000


async def test_the_device_clock_is_not_set_from_an_unsynchronised_clock(tmp_path: Path) -> None:
    clock = SyncedClock(source=ManualSync(wall=3.0, synchronised=False))
    s = session(tmp_path, clock, ListSink())
    await s._set_clock(None)  # type: ignore[arg-type]  # would fail on the absent client if it wrote
    assert s.counters.clock_not_set == 1 and s.counters.clock_set == 0
