"""Alerts through the running service (real Mosquitto, real ingest, HTTP on loopback, an
injected clock): readings → an alert opens; scopes (a read key cannot acknowledge); the ack and
its audit; an unacknowledged alert escalates on the clock: retained on the MQTT alerts topic
and POSTed to the webhook (which fails once: the bounded retry delivers it)."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from aiohttp import web
from paho.mqtt.enums import CallbackAPIVersion

from ingest import keys
from ingest.consumer import epoch_ms
from tests.support.ingest_service import (
    Api,
    eventually,
    publish_all,
    publisher,
    reading,
    running,
    settings_for,
)
from vitalgate.broker import Mosquitto, free_port
from vitalgate.contract import Topics

TOPICS = Topics()
#: RR 22 → 2, SpO2 95 → 1, pulse 100 → 1, temperature 38.5 → 1: NEWS2 5, sedang (medium)
UNWELL = {"respiratory_rate": 22.0, "spo2": 95.0, "systolic_bp": 118.0, "heart_rate": 100.0,
          "temperature": 38.5}
#: RR 26 → 3, SpO2 90 → 3, SBP 95 → 2, pulse 120 → 2, temperature 39.2 → 2: 12, tinggi (high)
SEPTIC = {"respiratory_rate": 26.0, "spo2": 90.0, "systolic_bp": 95.0, "heart_rate": 120.0,
          "temperature": 39.2}
NORMAL = {"respiratory_rate": 16.0, "spo2": 98.0, "systolic_bp": 124.0, "heart_rate": 72.0,
          "temperature": 36.8}


class Clock:
    """The service's clock: the wall clock at the start plus what the test advances."""

    def __init__(self) -> None:
        self.start = epoch_ms()
        self.offset = 0

    def __call__(self) -> int:
        return epoch_ms() + self.offset

    def advance(self, ms: int) -> None:
        self.offset += ms


class Hook:
    """A local webhook receiver: answers 503 to the first POST, then 200."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.attempts = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.attempts == 1:
            return web.Response(status=503)
        self.bodies.append(await request.json())
        return web.Response(status=204)


@pytest.fixture
async def hook() -> AsyncIterator[tuple[Hook, str]]:
    h = Hook()
    app = web.Application()
    app.router.add_post("/hook", h.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield h, f"http://127.0.0.1:{port}/hook"
    finally:
        await runner.cleanup()


class Retained:
    """Every message on ``{prefix}/alerts/#`` (JSON), retained ones included."""

    def __init__(self, mosquitto: Mosquitto) -> None:
        self.got: list[tuple[str, dict[str, Any], bool]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on
        self.client.connect(mosquitto.host, mosquitto.port)
        self.client.subscribe(f"{TOPICS.prefix}/alerts/#", qos=1)
        self.client.loop_start()

    def _on(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.got.append((msg.topic, json.loads(msg.payload), bool(msg.retain)))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def feed(client: mqtt.Client, device: str, code: str, vitals: dict[str, float], seq0: int,
         now: int) -> None:
    publish_all(client, [(TOPICS.reading("ward-a", device),
                          reading(device, seq0 + i, now - (2 - i) * 1000, code, **vitals).to_bytes())
                         for i in range(3)])


async def test_alert_opens_is_acknowledged_and_another_escalates(
        tmp_path: Path, mosquitto: Mosquitto, hook: tuple[Hook, str]) -> None:
    receiver, hook_url = hook
    clock = Clock()
    settings = settings_for(tmp_path / "data", mosquitto.url, ews_min_interval_s=0,
                            alert_check_s=0.1, alert_webhook_url=hook_url,
                            alert_response_high_s=300, alert_response_medium_s=1800)
    async with running(settings, clock=clock) as svc:
        await eventually(lambda: svc.service.consumer.connected)
        db = svc.service.db
        reader = str(db.write_sync(lambda c: keys.create(c, "ward-screen", 1, ["read"])))
        nurse = str(db.write_sync(lambda c: keys.create(c, "nurse-station", 1, ["read", "clinical"])))
        pub = publisher(mosquitto.host, mosquitto.port, "alert-feed")
        try:
            feed(pub, "a1a1a1a1a1a1", "BED7", UNWELL, 0, clock())
            async with Api(svc.url, reader) as api:
                status, body = await eventually(lambda: _open(api, "BED7"))
                [alert] = body["data"]["alerts"]
                assert (alert["state"], alert["severity"], alert["point"]) == ("opened", "medium", 5)
                assert alert["due_at"] == alert["opened_at"] + 1_800_000
                # a read key may see it but not acknowledge it; no key: 401
                status, body = await api.call("POST", f"/api/alerts/{alert['id']}/ack",
                                              json={"who": "Nurse Ani"})
                assert status == 403 and "clinical" in body["message"]
            async with Api(svc.url, None) as anon:
                status, _ = await anon.call("POST", f"/api/alerts/{alert['id']}/ack",
                                            json={"who": "Nurse Ani"})
                assert status == 401
            async with Api(svc.url, nurse) as api:
                for bad, field in (({"note": "x"}, "who"), ({"who": "a" * 65}, "who"),
                                   ({"who": "Ani", "note": "n" * 501}, "note")):
                    status, body = await api.call("POST", f"/api/alerts/{alert['id']}/ack", json=bad)
                    assert status == 422 and body["message"].startswith(f"{field}:"), body
                status, body = await api.call("POST", "/api/alerts/0/ack", json={"who": "Ani"})
                assert status == 422 and body["message"].startswith("id:")
                status, body = await api.call("GET", "/api/alerts", state="bogus")
                assert status == 422 and "'state'" in body["message"]
                status, body = await api.call("POST", f"/api/alerts/{alert['id']}/ack",
                                              json={"who": "Nurse Ani", "note": "obs repeated"})
                assert status == 200 and body["data"]["state"] == "acknowledged"
                # a key limited to another device holder sees none of it (devices seen on
                # MQTT belong to holder "unknown")
                other = str(db.write_sync(lambda c: keys.create(
                    c, "other-hospital", 1, ["read", "clinical"], holder="rs-b")))
                async with Api(svc.url, other) as foreign:
                    status, body = await foreign.get("/api/alerts")
                    assert status == 200 and body["data"]["alerts"] == []
                    status, _ = await foreign.get(f"/api/alerts/{alert['id']}")
                    assert status == 404
                    status, _ = await foreign.call("POST", f"/api/alerts/{alert['id']}/ack",
                                                   json={"who": "Intruder"})
                    assert status == 404
                    status, body = await foreign.get("/api/monitoring")
                    assert body["data"]["patients"] == []
                status, body = await api.get(f"/api/alerts/{alert['id']}")
                audit = body["data"]["audit"]
                assert [(a["transition"], a["who"]) for a in audit] == [
                    ("opened", None), ("acknowledged", "Nurse Ani")]
                assert audit[1]["note"] == "obs repeated"

                # another patient goes high; nobody acknowledges
                sub = Retained(mosquitto)
                try:
                    feed(pub, "b2b2b2b2b2b2", "BED8", SEPTIC, 0, clock())
                    status, body = await eventually(lambda: _open(api, "BED8"))
                    high = body["data"]["alerts"][0]
                    assert high["severity"] == "high" and not high["escalated"]
                    clock.advance(290_000)  # not yet (10 s of margin for a slow machine)
                    alerts = svc.service.alerts
                    done = alerts.checks
                    await eventually(lambda: alerts.checks >= done + 2)  # checked after the advance
                    assert alerts.counts["escalated"] == 0
                    status, body = await api.get(f"/api/alerts/{high['id']}")
                    assert body["data"]["alert"]["state"] == "opened"
                    clock.advance(10_000)  # past the deadline, on the service clock
                    await eventually(lambda: svc.service.alerts.counts["escalated"] == 1)
                    status, body = await api.get(f"/api/alerts/{high['id']}")
                    assert body["data"]["alert"]["state"] == "escalated"
                    assert body["data"]["alert"]["escalated"] is True
                    # retained on the alerts topic, and to the webhook after one failure
                    await eventually(lambda: any(t == f"{TOPICS.prefix}/alerts/BED8"
                                                 and m["state"] == "escalated"
                                                 for t, m, _ in sub.got))
                    await eventually(lambda: receiver.bodies, timeout=20)
                    assert receiver.attempts == 2 and receiver.bodies[0]["id"] == high["id"]
                    assert receiver.bodies[0]["state"] == "escalated"
                finally:
                    sub.close()
                late = Retained(mosquitto)  # a new subscriber gets the retained state
                try:
                    await eventually(lambda: any(r and m["user_code"] == "BED8" and
                                                 m["state"] == "escalated" for _, m, r in late.got))
                finally:
                    late.close()
                # the first patient's further rise re-alerts although acknowledged
                feed(pub, "a1a1a1a1a1a1", "BED7", SEPTIC, 3, clock())
                status, body = await eventually(lambda: _state(api, alert["id"], "updated"))
                assert body["data"]["alert"]["severity"] == "high"
                assert body["data"]["alert"]["acked_by"] is None
                # and a fall back to normal resolves it
                feed(pub, "a1a1a1a1a1a1", "BED7", NORMAL, 6, clock())
                status, body = await eventually(lambda: _state(api, alert["id"], "resolved"))
                assert [a["transition"] for a in body["data"]["audit"]] == [
                    "opened", "acknowledged", "updated", "resolved"]
                status, body = await api.get("/api/monitoring")
                rows = {r["user_code"]: r for r in body["data"]["patients"]}
                assert rows["BED8"]["frequency"] == "continuous" and not rows["BED8"]["overdue"]
                assert rows["BED7"]["frequency"] == "12-hourly"
                clock.advance(20 * 60_000)  # 20 min without vitals: BED8 (continuous) overdue
                status, body = await api.get("/api/monitoring")
                rows = {r["user_code"]: r for r in body["data"]["patients"]}
                assert rows["BED8"]["overdue"] and not rows["BED7"]["overdue"]
                status, text = await api.get("/metrics")
                assert 'vitalgate_ingest_alerts_total{event="escalated"} 1' in text
                # the webhook is the durable outbox's channel: one row, delivered on its retry
                assert 'vitalgate_ingest_outbox{channel="alert-webhook",stat="delivered"} 1' in text
                assert 'vitalgate_ingest_outbox{channel="alert-webhook",stat="retried"} 1' in text
        finally:
            pub.loop_stop()
            pub.disconnect()


async def _open(api: Api, code: str) -> tuple[int, Any] | None:
    status, body = await api.get("/api/alerts", state="open", user_code=code)
    return (status, body) if status == 200 and body["data"]["alerts"] else None


async def _state(api: Api, alert_id: int, state: str) -> tuple[int, Any] | None:
    status, body = await api.get(f"/api/alerts/{alert_id}")
    return (status, body) if body["data"]["alert"]["state"] == state else None
