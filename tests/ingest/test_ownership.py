"""Gateways own their devices, on real parts (Mosquitto, SQLite, HTTP on loopback).

On main a reading published under ``vitals/v1/ward9/<ward1's device>/reading`` with another
``user_code`` re-homed the device to ward9 and filed its readings under that patient: the
broker's ACL only limits a topic's gateway segment. Now a device belongs to the gateway that
first registered it (or the one the API assigned); other gateways' messages about it are
``foreign_device`` dead letters, and a move goes through the API (recorded in device_moves).
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
from tests.support.ingest_service import (
    Api,
    connected_to,
    eventually,
    publish_all,
    reading,
)
from vitalgate.broker import Mosquitto
from vitalgate.contract import EcgChunk, Topics

T0 = 1_700_000_000_000
DEV = "d061aed45894"
WARD1, WARD9 = "ward1", "ward9"
TOPICS = Topics()


@pytest.fixture
async def svc(tmp_path: Path, mosquitto: Mosquitto,
              ingest_engine: str | None) -> AsyncIterator[RunningService]:
    async with connected_to(tmp_path / "data", mosquitto.url, clock=lambda: T0 + 60_000) as service:
        yield service



async def _device(svc: RunningService) -> dict[str, Any]:
    rows = await svc.service.db.read(lambda c: registry.list_devices(c, 1, 10))
    ((device,), _) = rows
    return device


async def _patients(svc: RunningService) -> list[tuple[Any, ...]]:
    return await svc.service.db.read(lambda c: c.execute(
        "SELECT seq, user_code, gateway_id FROM readings WHERE device_id = ? AND vital = 'heart_rate'"
        " ORDER BY seq", (DEV,)).fetchall())


async def _registered_from_ward1(svc: RunningService, pub: mqtt.Client) -> dict[str, Any]:
    """Ward1 publishes the device's first reading (patient P1): the device it registered."""
    publish_all(pub, [(TOPICS.reading(WARD1, DEV), reading(DEV, 1, T0, user_code="P1").to_bytes())])
    await eventually(lambda: _patients(svc))
    return await _device(svc)


async def _reasons(svc: RunningService) -> list[tuple[Any, ...]]:
    return await svc.service.db.read(lambda c: c.execute(
        "SELECT topic, reason, detail FROM dead_letters ORDER BY id").fetchall())


async def test_another_gateway_cannot_take_over_a_device_or_its_patient(
        svc: RunningService, pub: mqtt.Client) -> None:
    await _registered_from_ward1(svc, pub)
    # ward9 publishes a reading, a status and an ECG chunk for ward1's device, for another patient
    chunk = EcgChunk(device_id=DEV, recording="rx", seq=0, ts=T0, fs=250, samples=[1], last=True)
    status = json.dumps({"v": 1, "device_id": DEV, "connected": True, "user_code": "INTRUDER"})
    publish_all(pub, [
        (TOPICS.reading(WARD9, DEV), reading(DEV, 2, T0 + 1000, user_code="INTRUDER").to_bytes()),
        (TOPICS.device_status(WARD9, DEV), status.encode()),
        (TOPICS.ecg(WARD9, DEV), chunk.to_bytes()),
        (TOPICS.reading(WARD1, DEV), reading(DEV, 3, T0 + 2000, user_code="P1").to_bytes()),
    ])
    await eventually(lambda: svc.service.metrics.rejects.value(reason="foreign_device") == 3)
    await eventually(lambda: _patients_has(svc, 3))
    assert await _patients(svc) == [(1, "P1", WARD1), (3, "P1", WARD1)]
    device = await _device(svc)
    assert device["gateway_id"] == WARD1 and device["user_code"] == "P1"
    letters = await _reasons(svc)
    assert [(t.split("/")[2], r) for t, r, _ in letters] == [(WARD9, "foreign_device")] * 3
    assert "belongs to gateway 'ward1'" in letters[0][2]
    recordings = await svc.service.db.read(lambda c: c.execute(
        "SELECT count(*) FROM ecg_chunks").fetchone())
    assert recordings == (0,)


async def _patients_has(svc: RunningService, seq: int) -> bool:
    return any(row[0] == seq for row in await _patients(svc))


async def test_a_device_moves_only_through_the_api_and_the_move_is_recorded(
        svc: RunningService, pub: mqtt.Client) -> None:
    device = await _registered_from_ward1(svc, pub)
    async with Api(svc.url) as api:
        status, body = await api.call("PUT", f"/api/device/{device['id']}", json={"gateway_id": WARD9})
        assert status == 200, body
        assert body["data"]["gateway_id"] == WARD9
        status, body = await api.call("PUT", f"/api/device/{device['id']}",
                                      json={"gateway_id": "Not A Gateway"})
        assert status == 422 and "gateway_id" in json.dumps(body)
    publish_all(pub, [
        (TOPICS.reading(WARD9, DEV), reading(DEV, 2, T0 + 1000, user_code="P9").to_bytes()),
        (TOPICS.reading(WARD1, DEV), reading(DEV, 3, T0 + 2000, user_code="P1").to_bytes()),
    ])
    await eventually(lambda: svc.service.metrics.rejects.value(reason="foreign_device") == 1)
    await eventually(lambda: _patients_has(svc, 2))
    assert await _patients(svc) == [(1, "P1", WARD1), (2, "P9", WARD9)]
    moves = await svc.service.db.read(lambda c: registry.device_moves(c, device["id"]))
    assert [(m["from_gateway"], m["to_gateway"]) for m in moves] == [(WARD1, WARD9)]
    assert moves[0]["moved_at"] > 0
    assert isinstance(moves[0]["key_name"], str) and moves[0]["key_name"]  # who moved it


async def test_a_user_code_set_through_the_api_is_never_overridden_from_mqtt(
        svc: RunningService, pub: mqtt.Client) -> None:
    device = await _registered_from_ward1(svc, pub)
    async with Api(svc.url) as api:
        status, _ = await api.call("PUT", f"/api/device/{device['id']}", json={"user_code": "PAPI"})
        assert status == 200
        status, body = await api.call("PUT", f"/api/device/{device['id']}",
                                      json={"user_code": "PAPI\n"})
        assert status == 422, body  # a trailing newline is not a user_code
    status_msg = json.dumps({"v": 1, "device_id": DEV, "connected": True, "user_code": "PMQTT"})
    publish_all(pub, [
        (TOPICS.device_status(WARD1, DEV), status_msg.encode()),
        (TOPICS.reading(WARD1, DEV), reading(DEV, 2, T0 + 1000, user_code="PMQTT").to_bytes()),
    ])
    await eventually(lambda: _patients_has(svc, 2))
    assert (await _patients(svc))[-1] == (2, "PAPI", WARD1)
    device = await _device(svc)
    assert device["user_code"] == "PAPI" and device["user_code_source"] == "api"


async def test_a_device_registered_through_the_api_for_a_gateway_belongs_to_it(
        svc: RunningService, pub: mqtt.Client) -> None:
    async with Api(svc.url) as api:
        status, body = await api.call("POST", "/api/device", json={
            "device_name": "E86 5894", "device_mac": "D0:61:AE:D4:58:94", "gateway_id": WARD1})
        assert status == 201, body
    publish_all(pub, [
        (TOPICS.reading(WARD9, DEV), reading(DEV, 1, T0, user_code="P9").to_bytes()),
        (TOPICS.reading(WARD1, DEV), reading(DEV, 2, T0 + 1000, user_code="P1").to_bytes()),
    ])
    await eventually(lambda: _patients_has(svc, 2))
    assert await _patients(svc) == [(2, "P1", WARD1)]
    assert svc.service.metrics.rejects.value(reason="foreign_device") == 1
