"""POST /ews points on the retained MQTT ews topic (real Mosquitto, real ingest, HTTP on
loopback): an external point is published only for a patient the engine does not score; for a
patient it scores, the engine's own point stays the retained (and current) score."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from ingest.service import RunningService
from tests.support.ingest_service import (
    Api,
    connected_to,
    eventually,
    publish_once,
    reading,
)
from vitalgate.broker import Mosquitto
from vitalgate.contract import Ews, Kind, Topics, decode

pytestmark = pytest.mark.usefixtures("ingest_engine")  # on SQLite and on PostgreSQL
TOPICS = Topics()
NORMAL = {"heart_rate": 72.0, "spo2": 97.0, "systolic_bp": 120.0, "temperature": 36.6,
          "respiratory_rate": 16.0}


@pytest.fixture
async def svc(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[RunningService]:
    async with connected_to(tmp_path / "data", mosquitto.url) as service:
        yield service


def retained(mosquitto: Mosquitto, topic: str, n: int) -> dict[str, list[Ews]]:
    """What a new subscriber to ``topic`` receives (retained first); waits for ``n`` messages."""
    got: dict[str, list[Ews]] = {}
    lock = threading.Lock()
    done = threading.Event()

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with lock:
            ews = decode(Kind.EWS, bytes(msg.payload))
            assert isinstance(ews, Ews)
            got.setdefault(msg.topic, []).append(ews)
            if sum(map(len, got.values())) >= n:
                done.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2)
    sub.on_message = on_message
    sub.connect(mosquitto.host, mosquitto.port)
    sub.subscribe(topic, qos=1)
    sub.loop_start()
    try:
        done.wait(10)
    finally:
        sub.disconnect()
        sub.loop_stop()
    return got


async def test_external_point_is_published_only_for_a_patient_the_engine_does_not_score(
        svc: RunningService, mosquitto: Mosquitto) -> None:
    now = svc.service.clock()
    publish_once(mosquitto.host, mosquitto.port, [(TOPICS.reading("gw-1", "d061aed45894"),
                 reading("d061aed45894", 0, now - 1000, user_code="SCORED", **NORMAL).to_bytes())])
    own = await eventually(lambda: svc.service.engine.current("SCORED"))
    assert own.source == "vitalgate" and own.point == 0
    async with Api(svc.url) as api:
        # newer than the engine's point (within max_future_skew_s) and alarming
        for code in ("SCORED", "EXTERNAL"):
            status, _ = await api.call("POST", "/ews", json={
                "user_code": code, "point": 7, "result": "tinggi", "produce_at": str(now + 60_000)})
            assert status == 200
        status, body = await api.get("/ews/SCORED")
        assert status == 200 and body["data"]["point"] == 0  # the engine's score is current
    # EXTERNAL's point was published after anything for SCORED: once it is retained, SCORED's
    # retained message is final
    await asyncio.to_thread(lambda: retained(mosquitto, TOPICS.ews("EXTERNAL"), 1))
    got = await asyncio.to_thread(lambda: retained(mosquitto, TOPICS.ews("+"), 2))
    assert [(e.point, e.result) for e in got[TOPICS.ews("EXTERNAL")]] == [(7, "tinggi")]
    assert [(e.point, e.result) for e in got[TOPICS.ews("SCORED")]] == [(0, own.result)]
    assert svc.service.metrics.ews_published.total() == 2  # SCORED's own point, EXTERNAL's
