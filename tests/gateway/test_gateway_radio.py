"""Many devices per adapter, what real radios do, and a Pi's clock (issue 16).

Real parts: the bumble link (its controllers refuse connections beyond their limit with HCI
0x09, as a controller out of slots does), the gateway's bleak code, a real SQLite buffer.
Time: the watches run on a 60x simulated clock; the clock tests use ManualSync, a settable
SyncSource (a real implementation of the protocol), with exact expected timestamps.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from bumble.core import AdvertisingData

from gateway.ble.manager import SessionManager
from gateway.buffer import Buffer, Measurement
from gateway.clock_sync import HeldReadings, ManualSync, SyncedClock
from gateway.settings import GatewaySettings
from gateway.status import render
from simulators.bleak_bumble import BumbleLink
from simulators.simulate import bumble_backend
from simulators.watch import VirtualE86
from vitalgate.contract import Reading, Source

SPEED = 60.0


class BufferSink:
    """The gateway's sink on a real buffer, remembering what it numbered (arrival order)."""

    def __init__(self, buffer: Buffer) -> None:
        self.buffer = buffer
        self.readings: list[Reading] = []

    def add_readings(self, items: Sequence[Measurement]) -> list[Reading]:
        out = self.buffer.add_readings(items)
        self.readings.extend(out)
        return out

    def add_ecg(self, chunk: Any) -> None:
        pass

    def of(self, device_id: str) -> list[Reading]:
        return [r for r in self.readings if r.device_id == device_id]


async def _until(cond: Any, timeout: float, what: str) -> None:
    for _ in range(int(timeout / 0.05)):
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.asynccontextmanager
async def _running(manager: SessionManager) -> AsyncIterator[None]:
    task = asyncio.create_task(manager.run())
    try:
        yield
    finally:
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=20)
        assert done, "the manager did not stop"
        with contextlib.suppress(asyncio.CancelledError):
            task.result()


# ---------------------------------------------------------------------------------- clock


def test_a_boot_at_1970_then_ntp_stamps_every_reading_at_its_event_time() -> None:
    t = ManualSync(wall=3.0, monotonic=40.0, synchronised=False)  # a Pi without RTC: 1970
    clock = SyncedClock(source=t)
    held: HeldReadings[int] = HeldReadings()
    monos: list[float] = []
    for i in range(5):
        monos.append(clock.monotonic())
        assert held.stamp(clock, i) == []  # not published with a 1970 time
        t.advance(5.0)
    assert len(held) == 5 and held.held_total == 5
    sync_wall = 1_796_000_000.25
    t.step(sync_wall)  # NTP synchronises: the wall clock jumps, monotonic time does not
    sync_mono = clock.monotonic()
    got = held.stamp(clock, 5)
    want = [round((sync_wall - (sync_mono - m)) * 1000) for m in [*monos, sync_mono]]
    assert got == list(zip(want, range(6), strict=True))
    assert want[0] == round((sync_wall - 25.0) * 1000)  # five readings, 5 s apart, before it
    assert clock.steps == 0 and len(held) == 0
    # a later NTP step back by 30 s: counted once; ts follows the new time; nothing repeats
    t.advance(5.0)
    assert held.stamp(clock, 6) == [(round((sync_wall + 5.0) * 1000), 6)]
    t.step(sync_wall + 5.0 - 30.0)
    assert held.stamp(clock, 7) == [(round((sync_wall - 25.0) * 1000), 7)]
    assert clock.steps == 1
    t.advance(5.0)
    assert held.stamp(clock, 8) == [(round((sync_wall - 20.0) * 1000), 8)]
    assert clock.steps == 1  # the step is counted once, not at every reading after it


def test_held_readings_are_bounded_and_the_drop_is_counted() -> None:
    t = ManualSync(synchronised=False)
    clock = SyncedClock(source=t)
    held: HeldReadings[int] = HeldReadings(limit=3)
    for i in range(5):
        held.stamp(clock, i)
        t.advance(1.0)
    assert len(held) == 3 and held.dropped == 2
    t.step(1_800_000_000.0)
    assert [item for _, item in held.stamp(clock, 5)] == [2, 3, 4, 5]


class BootTime:
    """This machine's clocks as a Pi without RTC sees them: the wall clock reads ~1970
    (monotonic seconds) until ``sync()``, then the real time."""

    def __init__(self) -> None:
        self.synced = False
        self.offset = 0.0  # a later NTP step

    def wall(self) -> float:
        return time.time() + self.offset if self.synced else time.monotonic()

    def monotonic(self) -> float:
        return time.monotonic()

    def synchronised(self) -> bool:
        return self.synced

    def sync(self) -> None:
        self.synced = True


async def test_realtime_readings_wait_for_ntp_and_keep_their_order(tmp_path: Path) -> None:
    watch_clock = SyncedClock(SPEED)  # the watch's own clock
    boot = BootTime()
    clock = SyncedClock(source=boot)
    async with BumbleLink() as link, VirtualE86(link, "C2:11:22:33:44:01", clock=watch_clock,
                                                realtime_interval_s=0.5) as _watch:
        st = GatewaySettings(devices={"C2:11:22:33:44:01": "U1"}, data_dir=tmp_path,
                             history_kinds=["heart_rate"])
        with Buffer(tmp_path / "b.sqlite3") as buffer:
            sink = BufferSink(buffer)
            manager = SessionManager(st, bumble_backend(link), sink, clock=clock)
            w = manager.watches["c21122334401"]
            async with _running(manager):
                await _until(lambda: len(w.held) >= 5, 30, "readings held")
                realtime_before = [r for r in sink.readings if r.source is Source.REALTIME]
                synced_at = time.time()
                boot.sync()
                await _until(lambda: len([r for r in sink.readings if r.source is Source.REALTIME])
                             > w.held.held_total + 3, 30, "readings after the sync")
                before_step = len(sink.readings)
                boot.offset = -60.0  # NTP steps the clock back a minute
                await _until(lambda: len(sink.readings) > before_step + 3, 30, "readings after the step")
            snap = manager.snapshot()
    assert realtime_before == []  # nothing went out with a 1970 time
    assert w.totals.get("clock_not_set", 0) + (w.session.counters.clock_not_set if w.session else 0) >= 1
    rt = [r for r in sink.readings if r.source is Source.REALTIME]
    assert [r.seq for r in sink.readings] == list(range(len(sink.readings)))  # order kept
    assert all(r.ts > 1_600_000_000_000 for r in rt)  # no 1970 stamps
    held = rt[: w.held.held_total]
    assert all(r.ts <= synced_at * 1000 + 50 for r in held)  # measured before the sync
    stepped_at = next(i for i, r in enumerate(rt) if i and r.ts < rt[i - 1].ts)
    assert [r.ts for r in rt[:stepped_at]] == sorted(r.ts for r in rt[:stepped_at])
    assert rt[stepped_at - 1].ts - rt[stepped_at].ts > 50_000  # ts is event time: it stepped back
    assert clock.steps == 1 and snap["clock"]["steps"] == 1  # counted once
    assert snap["clock"]["synchronised"] is True and snap["clock"]["held"] == 0


# ---------------------------------------------------------------------------------- slots


async def test_six_watches_rotate_through_two_slots_the_controller_enforces(tmp_path: Path) -> None:
    clock = SyncedClock(SPEED)
    macs = [f"C2:00:00:00:10:{i:02X}" for i in range(6)]
    # the budget says 3, the controller holds 2: the pool learns it from the refusal
    async with BumbleLink(connection_limit=2) as link, contextlib.AsyncExitStack() as stack:
        for i, mac in enumerate(macs):
            await stack.enter_async_context(
                VirtualE86(link, mac, clock=clock, realtime_interval_s=5.0, seed=i))
        st = GatewaySettings(devices={m: f"U{i}" for i, m in enumerate(macs)}, data_dir=tmp_path,
                             slots_per_adapter=3, rotation_session_s=60.0,
                             history_kinds=["heart_rate"], connect_timeout_s=5.0)
        with Buffer(tmp_path / "b.sqlite3") as buffer:
            sink = BufferSink(buffer)
            manager = SessionManager(st, bumble_backend(link), sink, clock=clock)
            most_connected = 0

            def progress() -> bool:
                nonlocal most_connected
                connected = sum(len(c.device.connections) for c in link.centrals.values())
                most_connected = max(most_connected, connected)
                return all(w.connects >= 2 for w in manager.watches.values())

            async with _running(manager):
                await _until(progress, 90, "every watch connected twice")
            snap = manager.snapshot()
    slots = snap["slots"]["adapters"][0]
    assert slots["refused"] >= 1 and slots["capacity"] == 2  # refused by the controller, learned
    assert most_connected <= 2
    assert snap["rotations"] >= 6
    for w in manager.watches.values():
        got = sink.of(w.info.device_id)
        assert {r.source for r in got} == {Source.REALTIME, Source.HISTORY}, w.info.name
        assert w.rotations >= 1 or w.connects >= 2
        # none starves: 6 devices on 2 slots wait at most two rounds of 60 clock s sessions
        # (plus connects and first syncs) for a slot — about 130 s measured
        assert w.max_wait_s < 3 * st.rotation_session_s, (w.info.name, w.max_wait_s)
    text = render({"gateway_id": "ward3", "ble": snap}, "live")  # `vitalgate gateway status`
    assert "slots: " in text and "hci0 " in text and "budget 3" in text and "rotations" in text
    seqs = sorted({(r.device_id, r.seq) for r in sink.readings})
    assert len(seqs) == len(sink.readings)  # no seq twice


async def test_two_adapters_are_both_used(tmp_path: Path) -> None:
    clock = SyncedClock(SPEED)
    macs = [f"C2:00:00:00:20:{i:02X}" for i in range(4)]
    async with BumbleLink(adapters=2, connection_limit=2) as link, contextlib.AsyncExitStack() as stack:
        for i, mac in enumerate(macs):
            await stack.enter_async_context(VirtualE86(link, mac, clock=clock, seed=i))
        st = GatewaySettings(devices={m: "U1" for m in macs}, data_dir=tmp_path, slots_per_adapter=2,
                             adapters=["hci0", "hci1"])
        with Buffer(tmp_path / "b.sqlite3") as buffer:
            manager = SessionManager(st, bumble_backend(link), BufferSink(buffer), clock=clock)
            async with _running(manager):
                await _until(lambda: all(w.state == "connected" for w in manager.watches.values()),
                             60, "all four connected")
                per_adapter = {a: len(c.device.connections) for a, c in link.centrals.items()}
            snap = manager.snapshot()
    assert per_adapter == {"hci0": 2, "hci1": 2}
    assert snap["slots"]["total"] == 4 and snap["slots"]["waiting"] == 0
    assert {w.adapter for w in manager.watches.values()} == {"hci0", "hci1"}


# ---------------------------------------------------------------------------------- recovery


async def test_a_device_that_keeps_failing_is_forgotten_before_the_next_try(tmp_path: Path) -> None:
    # a peripheral that advertises as an E86 but serves no E86 GATT: every session fails the
    # same way, as a stale attribute cache makes it fail on BlueZ
    clock = SyncedClock(SPEED)
    async with BumbleLink() as link:
        device = await link.add_device("E86 0BAD", "C2:00:00:00:0B:AD")
        await device.start_advertising(
            advertising_data=bytes(AdvertisingData([(AdvertisingData.COMPLETE_LOCAL_NAME, b"E86 0BAD")])),
            auto_restart=True)
        st = GatewaySettings(devices={"C2:00:00:00:0B:AD": "U1"}, data_dir=tmp_path,
                             forget_after_failures=3)
        manager = SessionManager(st, bumble_backend(link), BufferSink.__new__(BufferSink), clock=clock)
        w = manager.watches["c20000000bad"]
        async with _running(manager):
            await _until(lambda: w.forgets >= 1 and w.failures >= 4, 60, "forget after 3 failures")
        central = link.centrals["hci0"]
    assert central.forgets == manager.forgets == w.forgets >= 1
    assert w.failures >= 3 * w.forgets  # only after forget_after_failures in a row
    assert w.connects >= 3  # the connects succeeded; the sessions failed


async def test_a_deaf_scanner_is_restarted_then_the_adapter_power_cycled(tmp_path: Path) -> None:
    clock = SyncedClock(SPEED)
    async with BumbleLink() as link, VirtualE86(link, "C2:11:22:33:44:02", clock=clock):
        central = link.centrals["hci0"]
        central.deaf = True  # the controller stops reporting advertisements
        st = GatewaySettings(devices={"C2:11:22:33:44:02": "U1"}, data_dir=tmp_path,
                             scan_watchdog_s=30.0)  # 0.5 real s at 60x
        manager = SessionManager(st, bumble_backend(link), BufferSink.__new__(BufferSink), clock=clock)
        w = manager.watches["c21122334402"]
        async with _running(manager):
            await _until(lambda: w.state == "connected", 60, "connected after the recovery")
    assert manager.scanner_restarts == 2  # a restart that did not help, then one with the cycle
    assert manager.adapter_power_cycles == central.power_cycles == 1
    assert manager.snapshot()["adapter_power_cycles"] == 1


def test_system_time_reads_timesyncd_and_the_kernel(tmp_path: Path) -> None:
    from gateway.clock_sync import SystemSync, kernel_synchronised

    flag = tmp_path / "synchronized"
    kernel = kernel_synchronised()
    assert kernel in (True, False)  # this is Linux: adjtimex answers
    src = SystemSync(flag=flag)
    assert src.synchronised() is bool(kernel)  # no timesyncd flag: the kernel decides
    flag.touch()  # timesyncd says it synchronised
    assert SystemSync(flag=flag).synchronised() is True
    assert SystemSync(flag=tmp_path / "absent", assume_synchronised=True).synchronised() is True
    assert SyncedClock(SPEED).synchronised() is True  # simulated time is its own truth
