"""The whole gateway in-process: virtual E86 watches on a bumble link → bleak → buffer → a real
Mosquitto → a paho subscriber validating every message with vitalgate.contract.

Simulated time runs 60× (a watch reading every 5 simulated seconds = 12 per real second per
watch), so minutes of watch life take seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.ble.manager import SessionManager
from gateway.buffer import Buffer, RowKind
from gateway.clock_sync import SyncedClock
from gateway.service import Gateway
from gateway.settings import GatewaySettings
from simulators.bleak_bumble import BumbleLink
from simulators.physiology import Patient, fleet_patients
from simulators.simulate import bumble_backend
from simulators.watch import VirtualE86
from tests.support.probe import Probe, unique_seqs
from vitalgate.backoff import Backoff
from vitalgate.broker import Mosquitto
from vitalgate.contract import Kind, Reading, Source

SPEED = 60.0
FAST_MQTT = Backoff(initial_s=0.1, factor=2.0, max_s=0.5, jitter=0.5)


@dataclass
class Env:
    gateway: Gateway
    watches: list[VirtualE86]
    patients: list[Patient]
    clock: SyncedClock
    probe: Probe
    #: per device id: (ts ms, vitals) of every measurement the watch took
    generated: dict[str, list[tuple[int, Mapping[str, float]]]] = field(default_factory=dict)

    def readings(self, device_id: str) -> list[Reading]:
        return self.probe.readings(device_id)

    def only_watch(self) -> tuple[str, VirtualE86]:
        """The device id and the watch of a one-watch environment."""
        assert len(self.watches) == 1
        return self.patients[0].device_id, self.watches[0]

    def assert_seqs_from_zero(self, device_id: str) -> None:
        """The device's readings arrived with every seq from 0, none missing."""
        seqs = unique_seqs(self.readings(device_id))
        assert seqs == list(range(len(seqs)))


def _recording(p: Patient, out: list[tuple[int, Mapping[str, float]]]) -> Any:
    def vitals(ts_ms: int) -> Mapping[str, float]:
        v = p.vitals(ts_ms)
        out.append((ts_ms, v))
        return v

    return vitals


@contextlib.asynccontextmanager
async def gateway_env(broker: Mosquitto, tmp_path: Path, n: int, **kw: Any) -> AsyncIterator[Env]:
    clock = SyncedClock(SPEED)
    probe = Probe(broker.host, broker.port).start()
    async with BumbleLink() as link:
        patients = fleet_patients(n, ["stable"], seed=7, start_ms=clock.ms())
        generated: dict[str, list[tuple[int, Mapping[str, float]]]] = {p.device_id: [] for p in patients}
        watches = [VirtualE86(link, p.mac, clock=clock, vitals=_recording(p, generated[p.device_id]),
                              ecg=p.ecg, realtime_interval_s=5.0, seed=i) for i, p in enumerate(patients)]
        async with contextlib.AsyncExitStack() as stack:
            for w in watches:
                await stack.enter_async_context(w)
            settings = GatewaySettings(gateway_id="ward3", mqtt_url=broker.url, data_dir=tmp_path / "gw",
                                       devices={p.mac: p.user_code for p in patients}, status_port=0,
                                       **kw)
            gw = Gateway(settings, bumble_backend(link), clock=clock, mqtt_backoff=FAST_MQTT)
            task = asyncio.create_task(gw.run())
            try:
                yield Env(gw, watches, patients, clock, probe, generated)
            finally:
                try:
                    await _stop(task)
                finally:
                    probe.stop()


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel the gateway; it must stop promptly (else: say which tasks hang)."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=20)
    if not done:
        stuck = []
        for t in asyncio.all_tasks():
            frames: list[str] = []
            coro: Any = t.get_coro()
            while coro is not None and hasattr(coro, "cr_frame"):
                if coro.cr_frame is not None:
                    frames.append(f"{Path(coro.cr_frame.f_code.co_filename).name}:{coro.cr_frame.f_lineno}")
                coro = coro.cr_await
            stuck.append(f"{t.get_name()}: {' > '.join(frames)}")
        pytest.fail("gateway did not stop:\n" + "\n".join(stuck))
    with contextlib.suppress(asyncio.CancelledError):
        task.result()


def _left_in_buffer(env: Env) -> dict[str, set[int]]:
    left: dict[str, set[int]] = {}
    with Buffer(env.gateway.settings.buffer_path) as b:
        for row in b.pending(limit=10**6):
            if row.kind is RowKind.READING:
                left.setdefault(row.device_id, set()).add(row.seq)
        next_seq = {p.device_id: b.next_seq(p.device_id) for p in env.patients}
    return {d: left.get(d, set()) | {-next_seq[d]} for d in next_seq}


def _first_arrivals(readings: list[Reading]) -> list[Reading]:
    seen: dict[int, Reading] = {}
    for r in readings:
        seen.setdefault(r.seq, r)
    return list(seen.values())


BP_FRAME = ("systolic_bp", "diastolic_bp", "heart_rate")


def _bp_key(v: Mapping[str, float]) -> tuple[int | None, ...]:
    return tuple(round(v[n]) if n in v else None for n in BP_FRAME)


def _bp_triples(generated: list[tuple[int, Mapping[str, float]]]) -> set[tuple[int | None, ...]]:
    """(systolic, diastolic, heart rate) of every measurement, as the BP frame carries them."""
    return {_bp_key(v) for _, v in generated}


#: how long the broker is down, in real seconds: as the gateway issue states it, so the real
#: reconnect backoff runs through several attempts (at the test's 60x simulated clock, 20
#: simulated minutes of readings are buffered meanwhile)
BROKER_OUTAGE_S = 20.0


async def test_three_watches_through_a_broker_outage_lose_nothing(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with gateway_env(mosquitto, tmp_path, 3) as env:
        devs = [p.device_id for p in env.patients]
        probe = env.probe
        await probe.until(lambda: all(len(env.readings(d)) >= 6 for d in devs), what="readings from 3 watches")
        outage_from = env.clock.ms()
        mosquitto.stop()
        await probe.until(lambda: not env.gateway.publisher.connected, what="outage noticed")
        await asyncio.sleep(BROKER_OUTAGE_S)  # the broker is down for 20 real s (issue #4)
        outage_to = env.clock.ms()
        assert len(env.gateway.buffer) > 0
        mosquitto.start()
        await probe.until(lambda: env.gateway.publisher.connected, timeout=30, what="reconnect")
        await probe.until(lambda: all(
            any(r.ts > outage_to + 30_000 for r in env.readings(d)) for d in devs), what="live again")
    left = _left_in_buffer(env)  # what the stop left in the buffer (delivered next run)
    assert probe.errors == []
    for p in env.patients:
        d = p.device_id
        got = env.readings(d)
        next_seq = -min(left[d])
        delivered = set(unique_seqs(got))
        assert delivered | (left[d] - {-next_seq}) == set(range(next_seq)), d  # nothing lost
        first = _first_arrivals(got)
        assert [r.seq for r in first] == sorted(r.seq for r in first), d  # per-device order
        late = [r for r in first if r.source is Source.REALTIME and outage_from + 2000 < r.ts < outage_to - 2000]
        assert len(late) > 20 and all(r.replayed for r in late), d
        assert not any(r.replayed for r in first if r.ts > outage_to + 30_000)
        assert all(r.user_code == p.user_code for r in got)
        # values: every realtime BP frame carries a measurement this patient's watch took
        triples = _bp_triples(env.generated[d])
        bp = [r for r in first if r.source is Source.REALTIME and r.vitals.systolic_bp is not None]
        assert bp and all(_bp_key(r.vitals.present()) in triples for r in bp), d
    statuses = {r.message.device_id: r.message for r in probe.snapshot() if r.kind is Kind.DEVICE_STATUS}
    assert set(statuses) == set(devs) and all(s.battery == 87 for s in statuses.values())
    gw_status = probe.latest(Kind.GATEWAY_STATUS)
    assert gw_status is not None and gw_status.online is False  # clean stop said so


async def test_out_of_range_gap_is_filled_from_the_watch_history(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with gateway_env(mosquitto, tmp_path, 1) as env:
        d, watch = env.only_watch()
        await env.probe.until(lambda: len(env.readings(d)) >= 4, what="first readings")
        gap_from = env.clock.ms()
        await watch.set_in_range(False)
        await env.probe.until(lambda: env.gateway.manager.watches[d].state != "connected", what="link lost")
        await asyncio.sleep(4.0)  # 4 simulated minutes away
        gap_to = env.clock.ms()
        await watch.set_in_range(True)
        in_gap = [(ts, v) for ts, v in env.generated[d] if gap_from + 1000 < ts < gap_to - 1000]
        want = {(ts // 1000 * 1000, round(v["heart_rate"])) for ts, v in in_gap if "heart_rate" in v}

        def history_in_gap() -> set[tuple[int, int]]:
            return {(r.ts, round(r.vitals.heart_rate or 0)) for r in env.readings(d)
                    if r.source is Source.HISTORY and gap_from < r.ts < gap_to}

        await env.probe.until(lambda: want <= history_in_gap(), timeout=30, what="history fills the gap")
        state = env.gateway.manager.watches[d]
    assert len(want) >= 30  # 4 minutes at one reading per 5 s
    realtime_in_gap = [r for r in env.readings(d) if r.source is Source.REALTIME
                       and gap_from + 2000 < r.ts < gap_to - 2000]
    assert realtime_in_gap == []  # the watch was away: only its history covers this time
    assert state.connects >= 2
    assert watch.stats.history_deleted > 0  # deleted only after the buffer had them
    env.assert_seqs_from_zero(d)


async def test_corrupted_frames_are_counted_and_skipped(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with gateway_env(mosquitto, tmp_path, 1) as env:
        d, watch = env.only_watch()
        await env.probe.until(lambda: len(env.readings(d)) >= 4, what="first readings")
        watch.corrupt_next(3, group=0x06)
        await env.probe.until(lambda: watch.stats.corrupted == 3, what="corruption sent")
        before = len(env.readings(d))
        await env.probe.until(lambda: len(env.readings(d)) >= before + 6, what="readings after it")
        snap = env.gateway.snapshot()["ble"]["watches"][0]
        state = env.gateway.manager.watches[d]
    assert snap["frames"]["crc_errors"] >= 1  # counted (back-to-back bad frames count once)
    assert snap["frames"]["bytes_dropped"] > 0
    assert state.connects == 1 and state.failures == 0  # the connection survived
    env.assert_seqs_from_zero(d)


async def test_ecg_and_sync_commands(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with gateway_env(mosquitto, tmp_path, 1) as env:
        d, watch = env.only_watch()
        await env.probe.until(lambda: env.gateway.manager.watches[d].state == "connected", what="connected")
        await asyncio.sleep(0.3)  # the gateway's cmd SUBACK
        topic = env.gateway.publisher.topics.cmd("ward3")
        env.probe.publish(topic, b'{"v":1,"cmd":"ecg","device_id":"%s","seconds":3}' % d.encode(), qos=1)
        await env.probe.until(lambda: any(c.last for c in env.probe.ecg(d)), what="last ECG chunk")
        frames_after = watch.stats.ecg_frames
        session = env.gateway.manager.watches[d].session
        assert session is not None
        syncs = session.counters.history_syncs
        env.probe.publish(topic, b'{"v":1,"cmd":"sync","device_id":"%s"}' % d.encode(), qos=1)
        await env.probe.until(lambda: session.counters.history_syncs > syncs, what="sync on command")
        await asyncio.sleep(0.5)  # 30 simulated seconds: a running ECG would have sent frames
        assert watch.stats.ecg_frames == frames_after  # stopped after the recording
    chunks = env.probe.ecg(d)
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert sum(len(c.samples) for c in chunks) == 3 * 250
    assert [c.last for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert {c.recording for c in chunks} == {f"{d}-{chunks[0].ts}"}
    assert all(c.fs == 250 for c in chunks) and len(set(chunks[0].samples)) > 10


class NoSink:
    def add_readings(self, items: Any) -> list[Reading]:
        return []

    def add_ecg(self, chunk: Any) -> None:
        pass


async def test_adopt_any_connects_an_unlisted_e86(tmp_path: Path) -> None:
    clock = SyncedClock(SPEED)
    async with BumbleLink() as link, VirtualE86(link, "C2:11:22:33:44:55", clock=clock) as watch:
        st = GatewaySettings(adopt_any=True, data_dir=tmp_path)
        manager = SessionManager(st, bumble_backend(link), NoSink(), clock=clock)
        task = asyncio.create_task(manager.run())
        try:
            for _ in range(200):
                w = manager.watches.get("c21122334455")
                if w is not None and w.state == "connected":
                    break
                await asyncio.sleep(0.05)
        finally:
            await _stop(task)
    assert list(manager.watches) == ["c21122334455"]
    assert manager.watches["c21122334455"].connects == 1 and watch.stats.connections == 1
    assert manager.watches["c21122334455"].info.user_code is None


async def test_scanner_watchdog_restarts_a_deaf_scanner(tmp_path: Path) -> None:
    # one configured watch that never advertises: the scanner hears nothing and is restarted
    clock = SyncedClock(1.0)

    async with BumbleLink() as link:
        st = GatewaySettings(devices={"C2:00:00:00:00:01": "U1"}, scan_watchdog_s=0.5, data_dir=tmp_path)
        manager = SessionManager(st, bumble_backend(link), NoSink(), clock=clock)
        task = asyncio.create_task(manager.run())
        try:
            for _ in range(200):
                if manager.scanner_restarts >= 2:
                    break
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert manager.scanner_restarts >= 2
    assert manager.snapshot()["watches"][0]["state"] == "waiting"


@pytest.mark.parametrize("bad", [{"gateway_id": "Ward 3"}, {"mqtt_url": "http://x"},
                                 {"devices": {"not-a-mac": "U1"}}, {"timezone": "Mars/Base"},
                                 {"history_kinds": ["sleep"]}, {"mqtt_cert": "/c.pem"}])
def test_bad_settings_name_the_field(bad: dict[str, Any]) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        GatewaySettings(**bad)
    assert next(iter(bad)) in str(err.value)


def test_example_config_loads() -> None:
    from vitalgate.config import load_settings

    path = Path(__file__).resolve().parents[2] / "config" / "gateway.example.toml"
    st = load_settings(GatewaySettings, path)
    assert st.gateway_id == "ward3-bed12" and st.broker.tls and st.broker.port == 8883
    assert st.devices == {"D0:61:AE:D4:58:94": "AMSe5Sn8Gkxj7"}
