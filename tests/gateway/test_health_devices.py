"""Standard health devices in-process: virtual devices (bumble peripherals) on a bumble link →
bleak → the gateway's SessionManager and its profile sessions → a sink recording what the
buffer would get. Time runs 30× (a measurement every 5 simulated seconds)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from gateway.ble.manager import SessionManager
from gateway.ble.profiles import make_session, profile_for
from gateway.ble.profiles.base import HealthSession
from gateway.ble.profiles.thermometer import STORED_AGE_MS
from gateway.clock_sync import SyncedClock
from gateway.settings import GatewaySettings
from gatt.health import (
    BLOOD_PRESSURE_SERVICE,
    HEART_RATE_SERVICE,
    PULSE_OXIMETER_SERVICE,
    PlxContinuous,
    uuid16,
)
from simulators.bleak_bumble import BumbleLink
from simulators.devices import (
    VirtualBloodPressureCuff,
    VirtualHealthDevice,
    VirtualHeartRateStrap,
    VirtualPulseOximeter,
    VirtualThermometer,
)
from simulators.simulate import bumble_backend
from tests.support.sinks import ListSink
from vitalgate.contract import Source

SPEED = 30.0
HOUR = 3600.0


async def _until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(tmp_path: Path, devices: Callable[[BumbleLink, SyncedClock], list[VirtualHealthDevice]],
                  **settings: Any) -> AsyncIterator[tuple[SessionManager, ListSink, list[VirtualHealthDevice], SyncedClock]]:
    clock = SyncedClock(SPEED)
    sink = ListSink()
    async with BumbleLink() as link:
        made = devices(link, clock)
        async with contextlib.AsyncExitStack() as stack:
            for d in made:
                await stack.enter_async_context(d)
            st = GatewaySettings(gateway_id="ward3", data_dir=tmp_path / "gw", status_port=0,
                                 devices={d.mac: f"P{i}" for i, d in enumerate(made)}, **settings)
            manager = SessionManager(st, bumble_backend(link), sink, clock=clock)
            task = asyncio.create_task(manager.run())
            try:
                yield manager, sink, made, clock
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(task, 20)


def _mac(i: int) -> str:
    return f"C6:11:22:33:44:{i:02X}"


def test_the_choice_point_picks_a_profile_per_service() -> None:
    assert profile_for([HEART_RATE_SERVICE]).profile == "heart_rate"  # type: ignore[union-attr]
    # a PLX that also offers Heart Rate is an oximeter; unknown services pick nothing
    assert profile_for([HEART_RATE_SERVICE, PULSE_OXIMETER_SERVICE]).profile == "pulse_oximeter"  # type: ignore[union-attr]
    assert profile_for([BLOOD_PRESSURE_SERVICE.upper()]).profile == "blood_pressure"  # type: ignore[union-attr]
    assert profile_for([uuid16(0x180F)]) is None
    assert make_session  # the manager's one choice point, exercised end to end below


async def test_every_kind_is_collected_with_device_time_and_stored_records(tmp_path: Path) -> None:
    def build(link: BumbleLink, clock: SyncedClock) -> list[VirtualHealthDevice]:
        now = clock.wall()
        stored_bp = [(now - 3 * HOUR, {"systolic_bp": 141.0, "diastolic_bp": 92.0, "heart_rate": 66.0}),
                     (now - 2 * HOUR, {"systolic_bp": 128.0, "diastolic_bp": 84.0, "heart_rate": 71.0})]
        stored_plx = [(now - HOUR, {"spo2": 95.0, "heart_rate": 80.0})]
        stored_t = [(now - HOUR / 2, {"temperature": 38.4})]
        return [VirtualHeartRateStrap(link, _mac(1), clock=clock),
                VirtualPulseOximeter(link, _mac(2), clock=clock, stored=stored_plx),
                VirtualBloodPressureCuff(link, _mac(3), clock=clock, stored=stored_bp),
                VirtualThermometer(link, _mac(4), clock=clock, stored=stored_t)]

    # four devices, one slot each: no rotation here (tests/gateway/test_gateway_radio.py
    # covers rotation; a rotated cuff or thermometer re-sends its memory on reconnect)
    async with running(tmp_path, build, slots_per_adapter=4) as (manager, sink, (hr, plx, bp, thermo), clock):
        await _until(lambda: all(len(d.sent) >= 4 for d in (hr, plx, bp, thermo))
                     and all(len(sink.of(d)) >= 4 for d in (hr, plx, bp, thermo)))
        # the CTS write set every device's clock (UTC gateway: offset 0)
        assert all(d.stats.clock_sets == 1 and d.utc_offset_s == 0 for d in (hr, plx, bp, thermo))
        # stored records: history, stamped by the device, values as sent. PLX: whatever RACP
        # reported; cuff and thermometer: what is older than STORED_AGE_MS (a measurement taken
        # just before the connection is re-sent from memory but counts as live)
        start_ms = clock.ms()
        for device in (plx, bp, thermo):
            got = {(m.ts, tuple(sorted(m.vitals.present().items())))
                   for m in sink.of(device) if m.source is Source.HISTORY}
            sent = {(s.utc_ms, tuple(sorted(s.vitals.items()))) for s in device.sent if s.stored
                    and (device is plx or (s.utc_ms or 0) < start_ms - STORED_AGE_MS - 60_000)}
            assert sent and got == sent, device.name
        # live time-stamped measurements keep the device's time; continuous ones the reception's
        live_bp = [m for m in sink.of(bp) if m.source is Source.REALTIME]
        assert live_bp and {m.ts for m in live_bp} <= {s.utc_ms for s in bp.sent}
        assert all(m.ts % 1000 == 0 for m in live_bp)
        hr_values = [m.vitals.heart_rate for m in sink.of(hr)]
        assert hr_values and hr_values == [s.vitals["heart_rate"] for s in hr.sent][:len(hr_values)]
        assert {m.source for m in sink.of(hr)} == {Source.REALTIME}
        assert {m.user_code for m in sink.of(bp)} == {"P2"}
        snap = {w["mac"]: w for w in manager.snapshot()["watches"]}
        assert snap[hr.mac]["counters"]["rr_intervals"] >= 2 * len(sink.of(hr))
        assert snap[plx.mac]["counters"]["racp_requests"] == 1
        assert snap[plx.mac]["state"] == "connected"
        # each device's status names what it is (a cuff is no "E86")
        statuses: dict[str | None, str | None] = {}
        manager.on_status = lambda st: statuses.__setitem__(st.mac, st.model)
        for w in manager.watches.values():
            manager._status(w, True)
        assert statuses == {hr.mac: "GATT heart_rate", plx.mac: "GATT pulse_oximeter",
                            bp.mac: "GATT blood_pressure", thermo.mac: "GATT thermometer"}


async def test_special_and_implausible_values_are_counted_not_published(tmp_path: Path) -> None:
    def build(link: BumbleLink, clock: SyncedClock) -> list[VirtualHealthDevice]:
        return [VirtualPulseOximeter(link, _mac(5), clock=clock, interval_s=3600)]

    async with running(tmp_path, build) as (manager, sink, (plx,), _clock):
        assert isinstance(plx, VirtualPulseOximeter)
        await _until(lambda: manager.snapshot()["watches"][0]["state"] == "connected"
                     and bool(plx.subscribed))
        w = next(iter(manager.watches.values()))
        session = w.session
        assert isinstance(session, HealthSession)
        await _until(lambda: len(plx.subscribed) == 3)
        plx.send(plx.continuous, bytes(PlxContinuous(None, 250.0)), indicate=False)  # NaN SpO2
        plx.send(plx.continuous, bytes(PlxContinuous(97.0, 400.0)), indicate=False)  # HR 400
        plx.send(plx.continuous, b"\x00\x01", indicate=False)  # too short
        plx.send(plx.continuous, bytes(PlxContinuous(None, None)), indicate=False)
        await _until(lambda: session.counters.undecodable == 1 and session.counters.special_values >= 3)
        assert session.counters.rejected_values == 1
        published = [m.vitals.present() for m in sink.of(plx)]
        assert published == [{"heart_rate": 250.0}, {"spo2": 97.0}]


async def test_stored_records_are_read_again_after_a_reconnect(tmp_path: Path) -> None:
    def build(link: BumbleLink, clock: SyncedClock) -> list[VirtualHealthDevice]:
        stored = [(clock.wall() - HOUR, {"spo2": 93.0, "heart_rate": 88.0})]
        return [VirtualPulseOximeter(link, _mac(6), clock=clock, interval_s=3600, stored=stored)]

    async with running(tmp_path, build) as (manager, sink, (plx,), _clock):
        history = lambda: [m for m in sink.of(plx) if m.source is Source.HISTORY]  # noqa: E731
        await _until(lambda: len(history()) == 1)
        await plx.disconnect()
        w = next(iter(manager.watches.values()))
        # the second connection asks RACP again; the record it reports again is published once
        await _until(lambda: plx.stats.connections == 2 and w.session is not None
                     and w.session.counters.repeats_skipped == 1)
        assert len(history()) == 1
        assert w.connects == 2 and w.totals["racp_requests"] == 1
        assert w.session is not None and w.session.counters.racp_requests == 1
