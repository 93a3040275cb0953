"""Fleet mode against a real Mosquitto: contract-valid readings, contiguous seq, retained status."""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from simulators.fleet import Fleet, sim_start_ms
from simulators.mqtt_out import GatewayPublisher, Subscriber
from simulators.physiology import Cohort, SimClock, SteppedTime
from tests.support.subscribed import (
    collect,
    device_status_of,
    gateway_status_of,
    n_readings,
    readings_of,
)
from vitalgate.broker import Mosquitto
from vitalgate.cli import main
from vitalgate.contract import Reading, Topics

START = 1_700_000_000_000
ROOT = Path(__file__).resolve().parents[2]
GATEWAY = "sim-test"


def test_fleet_publishes_contract_readings_with_contiguous_seq(mosquitto: Mosquitto) -> None:
    topics = Topics()
    sub = Subscriber(mosquitto.url, [topics.reading("+", "+")]).connect()
    fake = SteppedTime(quantum=0.5)  # a coarse timer: 300 simulated s per wake-up
    clock = SimClock(START, speed=600, time_fn=fake.time, sleep_fn=fake.sleep)
    cohort = Cohort(["stable", "sepsis", "copd", "respiratory"] * 5, seed=4, start_ms=START)
    publisher = GatewayPublisher(mosquitto.url, GATEWAY).connect()
    fleet = Fleet(cohort, publisher, clock, rate_s=60, timestamps="sim", max_batch=5)
    stats = fleet.run(2 * 3600)  # two simulated hours: ~120 readings per patient
    publisher.close()
    assert stats.patients == 20 and stats.sim_ms == 2 * 3_600_000
    assert 20 * 110 < stats.readings + stats.empty_slots <= 20 * 121
    try:
        messages = collect(sub, stats.readings, n_readings)
    finally:
        sub.close()
    readings = readings_of(messages)
    assert len(readings) == stats.readings
    by_device: dict[str, list[Reading]] = defaultdict(list)
    for m, r in ((msg, r) for msg in messages for r in readings_of([msg])):
        assert topics.parse(m.topic).device_id == r.device_id
        by_device[r.device_id].append(r)
    patients = {p.device_id: p for p in cohort.patients}
    assert set(by_device) == set(patients)
    for device_id, rs in by_device.items():
        assert [r.seq for r in rs] == list(range(len(rs)))  # from 0, no holes, in order
        assert all(b.ts - a.ts >= 60_000 for a, b in itertools.pairwise(rs))
        patient = patients[device_id]
        assert {r.user_code for r in rs} == {patient.user_code}
        for r in rs[::17]:  # the virtual watch would measure the very same values
            assert r.vitals.present() == patient.vitals(r.ts)
    assert any(n_readings(m) > 1 for m in messages)  # batched at speed


def test_statuses_are_retained_and_last_will_is_offline(mosquitto: Mosquitto) -> None:
    fake = SteppedTime()
    clock = SimClock(START, speed=60, time_fn=fake.time, sleep_fn=fake.sleep)
    cohort = Cohort(["stable"] * 3, seed=1, start_ms=START)
    publisher = GatewayPublisher(mosquitto.url, GATEWAY).connect()
    Fleet(cohort, publisher, clock).run(300)
    assert publisher.flush(10)
    topics = Topics()
    sub = Subscriber(mosquitto.url, [f"{topics.prefix}/+/status", f"{topics.prefix}/+/+/status"]).connect()
    try:
        got = collect(sub, 4, limit_s=5)
    finally:
        sub.close()
    assert len(got) == 4 and all(m.retained for m in got)
    gateway = [gateway_status_of(m) for m in got if m.topic == topics.gateway_status(GATEWAY)]
    assert gateway[0].online and gateway[0].devices == 3
    devices = [device_status_of(m) for m in got if m.topic != topics.gateway_status(GATEWAY)]
    assert {d.device_id for d in devices} == {p.device_id for p in cohort.patients}
    assert all(d.connected and d.model == "E86" for d in devices)
    publisher.close()  # clean shutdown publishes offline
    sub = Subscriber(mosquitto.url, [topics.gateway_status(GATEWAY)]).connect()
    try:
        (last,) = collect(sub, 1, limit_s=5)
    finally:
        sub.close()
    assert gateway_status_of(last).online is False


def test_simulate_cli_publishes_and_prints_a_summary(
    mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    sub = Subscriber(mosquitto.url, [Topics().reading("sim-cli", "+")]).connect()
    code = main(["simulate", "--patients", "4", "--scenario", "sepsis,copd", "--speed", "100000",
                 "--duration", "30m", "--rate", "300", "--broker", mosquitto.url,
                 "--gateway-id", "sim-cli", "--seed", "3"])
    assert code == 0
    out = capsys.readouterr().out
    assert "simulated 4 patients for 1800 s" in out
    published = int(out.split(" readings in ")[0].rsplit(" ", 1)[1])
    try:
        got = collect(sub, published, n_readings, limit_s=10)
    finally:
        sub.close()
    assert 0 < published == len(readings_of(got))
    started = time.time() * 1000
    assert all(abs(r.ts - started) < 3_600_000 for r in readings_of(got))  # wall-clock stamps


def test_unknown_scenario_is_a_clear_cli_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--scenario", "sepsys", "--broker", "mqtt://127.0.0.1:9"]) == 2
    assert "unknown scenario 'sepsys'" in capsys.readouterr().err


async def test_simulate_with_sim_timestamps_puts_nothing_in_the_future(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    """``vitalgate simulate --timestamps sim`` (a real process) at 3600× onto a real Mosquitto
    into a real ingest: its simulated timeline ends at the start, so every reading is stored
    (none dead-lettered as ``future``) and none is stamped after its arrival."""
    from tests.support.ingest_service import connected, eventually, settings_for

    async with connected(settings_for(tmp_path / "ingest", mosquitto.url)) as svc:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vitalgate", "simulate", "--patients", "5", "--scenario",
            "sepsis,stable", "--speed", "3600", "--duration", "2h", "--rate", "300",
            "--timestamps", "sim", "--mqtt-url", mosquitto.url, "--gateway-id", "sim-future",
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
        assert proc.returncode == 0, err.decode()
        published = int(out.decode().split(" readings in ")[0].rsplit(" ", 1)[1])
        assert published > 5 * 20  # ~24 per patient over two simulated hours

        async def stored() -> list[tuple[int, int]]:
            return await svc.service.db.read(lambda c: c.execute(
                "SELECT DISTINCT ts, received_at FROM readings").fetchall())

        async def letters() -> list[tuple[str, int]]:
            return await svc.service.db.read(lambda c: c.execute(
                "SELECT reason, count(*) FROM dead_letters GROUP BY reason").fetchall())

        async def all_in() -> bool:
            n = await svc.service.db.read(lambda c: c.execute(
                "SELECT count(*) FROM (SELECT DISTINCT device_id, seq FROM readings)").fetchone()[0])
            return int(n) + sum(k for _, k in await letters()) >= published

        await eventually(all_in, timeout=60)
        assert await letters() == []  # in particular nothing "future"
        rows = await stored()
        assert rows and [(ts, r) for ts, r in rows if ts > r] == []


class _Stamps:
    def __init__(self) -> None:
        self.ts: list[int] = []

    def gateway_status(self, online: bool, **kw: object) -> None:
        pass

    def device_status(self, status: object) -> None:
        pass

    def send_readings(self, device_id: str, readings: list[Reading]) -> None:
        self.ts += [r.ts for r in readings]


def test_sim_timeline_ends_at_the_start_even_if_the_fleet_starts_late() -> None:
    """The clock starts at sim_start_ms (now − duration); 50 real ms pass before the fleet is
    made (a broker connect): at 3600× that is 180 simulated seconds, yet no stamp passes now."""
    now, duration_s = START, 2 * 3600
    fake = SteppedTime()
    clock = SimClock(sim_start_ms(now, duration_s, "sim"), speed=3600, time_fn=fake.time,
                     sleep_fn=fake.sleep)
    fake.sleep(0.05)
    sink = _Stamps()
    stats = Fleet(Cohort(["stable"] * 4, seed=2, start_ms=clock.start_ms), sink, clock,
                  rate_s=60, timestamps="sim").run(duration_s)
    assert stats.readings > 4 * 100 and max(sink.ts) <= now
    assert min(sink.ts) >= now - duration_s * 1000
    assert sim_start_ms(now, duration_s, "wall") == now
