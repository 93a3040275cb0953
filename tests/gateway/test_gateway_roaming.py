"""A watch walks from one Pi's range into another's (issue 16): two gateways of one ward
(different gateway_ids and data directories) on one simulated radio, a real Mosquitto, a real
ingest with ``roaming_groups``. The second gateway collects it without duplicates or gaps: the
move is recorded, its history sync fills the time nobody held the watch.

Simulated time runs 60x, so the three minutes the watch is out of everybody's range take 3 s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.clock_sync import SyncedClock
from gateway.service import Gateway
from gateway.settings import GatewaySettings
from ingest import registry
from simulators.bleak_bumble import BumbleLink
from simulators.physiology import fleet_patients
from simulators.simulate import bumble_backend
from simulators.watch import VirtualE86
from tests.support.ingest_service import eventually, running, settings_for
from vitalgate.backoff import Backoff
from vitalgate.broker import Mosquitto

SPEED = 60.0
FAST_MQTT = Backoff(initial_s=0.1, factor=2.0, max_s=0.5, jitter=0.5)
A, B = "ward3-a", "ward3-b"


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=20)
    assert done, "a gateway did not stop"
    with contextlib.suppress(asyncio.CancelledError):
        task.result()


async def test_a_watch_roams_to_the_other_gateway_of_its_ward(mosquitto: Mosquitto, tmp_path: Path) -> None:
    clock = SyncedClock(SPEED)
    (patient,) = fleet_patients(1, ["stable"], seed=3, start_ms=clock.ms())
    generated: list[tuple[int, Mapping[str, float]]] = []

    def vitals(ts_ms: int) -> Mapping[str, float]:
        v = patient.vitals(ts_ms)
        generated.append((ts_ms, v))
        return v

    d = patient.device_id
    st = settings_for(tmp_path / "ingest", mosquitto.url, roaming_groups={"ward3": [A, B]})
    async with running(st, clock=clock.ms) as svc, BumbleLink() as link, VirtualE86(
            link, patient.mac, clock=clock, vitals=vitals, ecg=patient.ecg, realtime_interval_s=5.0) as watch:
        db = svc.service.db

        async def rows(sql: str) -> list[tuple[Any, ...]]:
            return await db.read(lambda c: c.execute(sql, (d,)).fetchall())

        def gateway(gid: str) -> Gateway:
            gs = GatewaySettings(gateway_id=gid, mqtt_url=mosquitto.url, data_dir=tmp_path / gid,
                                 devices={patient.mac: patient.user_code}, status_port=0)
            return Gateway(gs, bumble_backend(link), clock=clock, mqtt_backoff=FAST_MQTT)

        gw_a = gateway(A)
        task_a = asyncio.create_task(gw_a.run())
        try:
            await eventually(lambda: _count(rows, A, 4), timeout=30)
            await watch.set_in_range(False)  # the wearer walks away from A
            gap_from = clock.ms()
            await eventually(lambda: _released(db, d), timeout=30)  # A said so
        finally:
            await _stop(task_a)
        await asyncio.sleep(3.0)  # three simulated minutes in nobody's range
        gw_b = gateway(B)
        task_b = asyncio.create_task(gw_b.run())
        try:
            await watch.set_in_range(True)  # … and into B's
            gap_to = clock.ms()
            in_gap = [(ts, v) for ts, v in generated if gap_from + 1000 < ts < gap_to - 1000]
            want = {(ts // 1000 * 1000, round(v["heart_rate"])) for ts, v in in_gap if "heart_rate" in v}

            async def filled() -> bool:
                got = await rows("SELECT ts, value FROM readings WHERE device_id = ? AND"
                                 " vital = 'heart_rate' AND source = 'history'")
                return want <= {(ts, round(v)) for ts, v in got}

            await eventually(filled, timeout=40)
            await eventually(lambda: _count(rows, B, 3), timeout=30)
        finally:
            await _stop(task_b)
        devices, _ = await db.read(lambda c: registry.list_devices(c, 1, 10))
        moves = await db.read(lambda c: registry.device_moves(c, devices[0]["id"]))
        history = await rows("SELECT ts, vital, count(*) FROM readings WHERE device_id = ? AND"
                             " source = 'history' GROUP BY ts, vital HAVING count(*) > 1")
        realtime = await rows("SELECT gateway_id, stream, seq FROM readings WHERE device_id = ? AND"
                              " source = 'realtime' AND vital = 'heart_rate'")
        foreign = svc.service.metrics.rejects.value(reason="foreign_device")
    assert len(want) >= 20  # three minutes at one reading per 5 s
    assert devices[0]["gateway_id"] == B
    assert [(m["from_gateway"], m["to_gateway"], m["key_name"]) for m in moves] == [(A, B, "roaming:ward3")]
    assert history == []  # no measurement stored twice
    assert foreign == 0  # A had let it go before B heard it
    by_stream: dict[tuple[str, str], list[int]] = {}
    for gid, stream, seq in realtime:
        by_stream.setdefault((gid, stream), []).append(seq)
    assert {g for g, _ in by_stream} == {A, B} and len(by_stream) == 2  # one stream per gateway
    for seqs in by_stream.values():
        assert len(seqs) == len(set(seqs))


async def _count(rows: Any, gateway_id: str, n: int) -> bool:
    got = await rows("SELECT gateway_id FROM readings WHERE device_id = ? AND source = 'realtime'")
    return sum(1 for (g,) in got if g == gateway_id) >= n


async def _released(db: Any, device_id: str) -> bool:
    return bool(await db.read(lambda c: registry.released_by_owner(c, device_id)))
