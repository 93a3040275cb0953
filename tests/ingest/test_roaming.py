"""Roaming between the gateways of one ward (issue 16), on real Mosquitto, SQLite and ingest.

A device belongs to one gateway (tests/ingest/test_ownership.py). With ``roaming_groups`` a
gateway of the owner's ward takes it over once the owner itself reported it disconnected; the
move is recorded (``roaming:<ward>``). A gateway of another ward, or any gateway while the owner
still holds the device, is refused (``foreign_device``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from ingest import registry
from ingest.service import RunningService
from tests.support.ingest_service import eventually, publish_all, running, settings_for
from vitalgate.broker import Mosquitto
from vitalgate.contract import Reading, Topics, Vitals

T0 = 1_700_000_000_000
DEV = "d061aed45894"
A, B, OTHER = "ward3-a", "ward3-b", "ward9"
STREAM_A, STREAM_B = "a" * 16, "b" * 16
TOPICS = Topics()


@pytest.fixture
async def svc(tmp_path: Path, mosquitto: Mosquitto,
              ingest_engine: str | None) -> AsyncIterator[RunningService]:
    st = settings_for(tmp_path / "data", mosquitto.url, roaming_groups={"ward3": [A, B]})
    async with running(st, clock=lambda: T0 + 60_000) as service:
        await eventually(lambda: service.service.consumer.connected)
        yield service



def _reading(seq: int, stream: str, ts: int) -> tuple[str, bytes]:
    r = Reading(device_id=DEV, seq=seq, ts=ts, user_code="P1", stream=stream,
                vitals=Vitals(heart_rate=70.0 + seq))
    return TOPICS.reading(A if stream == STREAM_A else B, DEV), r.to_bytes()


def _status(gateway: str, connected: bool) -> tuple[str, bytes]:
    body = {"v": 1, "device_id": DEV, "connected": connected, "user_code": "P1"}
    return TOPICS.device_status(gateway, DEV), json.dumps(body).encode()


async def _stored(svc: RunningService) -> list[tuple[Any, ...]]:
    return await svc.service.db.read(lambda c: c.execute(
        "SELECT gateway_id, stream, seq FROM readings WHERE device_id = ? ORDER BY ts",
        (DEV,)).fetchall())


async def test_a_device_roams_within_its_ward_once_its_owner_let_it_go(
        svc: RunningService, pub: mqtt.Client) -> None:
    publish_all(pub, [_status(A, True), _reading(0, STREAM_A, T0), _reading(1, STREAM_A, T0 + 5000)])
    await eventually(lambda: len_is(svc, 2))
    # B hears it while A still holds it: refused
    publish_all(pub, [_reading(0, STREAM_B, T0 + 6000)])
    await eventually(lambda: svc.service.metrics.rejects.value(reason="foreign_device") == 1)
    # A reports the device disconnected; then B's status and readings are taken, in one batch
    # or in several
    publish_all(pub, [_status(A, False), _status(B, True), _reading(1, STREAM_B, T0 + 10_000),
                      _reading(2, STREAM_B, T0 + 15_000)])
    await eventually(lambda: len_is(svc, 4))
    # another ward's gateway never takes it, connected or not
    publish_all(pub, [_status(B, False), (TOPICS.reading(OTHER, DEV), Reading(
        device_id=DEV, seq=0, ts=T0 + 20_000, stream="c" * 16, vitals=Vitals(heart_rate=60.0)).to_bytes())])
    await eventually(lambda: svc.service.metrics.rejects.value(reason="foreign_device") == 2)
    rows = await _stored(svc)
    assert rows == [(A, STREAM_A, 0), (A, STREAM_A, 1), (B, STREAM_B, 1), (B, STREAM_B, 2)]
    devices, _ = await svc.service.db.read(lambda c: registry.list_devices(c, 1, 10))
    assert devices[0]["gateway_id"] == B
    moves = await svc.service.db.read(lambda c: registry.device_moves(c, devices[0]["id"]))
    assert [(m["from_gateway"], m["to_gateway"], m["key_name"]) for m in moves] == [
        (A, B, "roaming:ward3")]


async def len_is(svc: RunningService, n: int) -> bool:
    return len(await _stored(svc)) == n


def test_roaming_groups_are_checked() -> None:
    from pydantic import ValidationError

    from ingest.settings import IngestSettings

    for bad in ({"ward 3": [A]}, {"ward3": ["Not A Gateway"]}, {"w1": [A], "w2": [A]}):
        with pytest.raises(ValidationError) as err:
            IngestSettings(roaming_groups=bad)
        assert "roaming_groups" in str(err.value)
    assert IngestSettings(roaming_groups={"ward3": [A, B]}).ward_of == {A: "ward3", B: "ward3"}
