"""Every operation of the served OpenAPI document, driven on a real service fed over real MQTT:
each live response must be documented (its status under the operation) and validate strictly
against the served schema (openapi-schema-validator, OpenAPI 3.0 semantics: ``nullable``,
``additionalProperties: false``, required fields)."""

from __future__ import annotations

import copy
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openapi_schema_validator import OAS30Validator

from ingest import keys
from ingest.service import RunningService
from simulators.ecg_synth import EcgSynth, to_counts
from tests.support.ingest_service import (
    TEST_KEY,
    eventually,
    publish_all,
    publisher,
    reading,
    running,
    settings_for,
)
from vitalgate.broker import Mosquitto
from vitalgate.contract import EcgChunk, Topics

DEV = "d061aed45894"
MAC = "D0:61:AE:D4:58:94"
GW = "ward3-bed12"
CODE = "PA"
T0 = 1_700_000_000_000
NOW = T0 + 60_000
HTTP_METHODS = ("get", "put", "post", "delete", "patch")


def resolve(node: Any, doc: dict[str, Any]) -> Any:
    """``node`` with every local ``$ref`` replaced by what it points at."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = doc
            for part in ref[2:].split("/"):
                target = target[part]
            return resolve(copy.deepcopy(target), doc)
        return {k: resolve(v, doc) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(v, doc) for v in node]
    return node


@dataclass
class Checker:
    url: str
    doc: dict[str, Any]
    http: aiohttp.ClientSession
    seen: dict[tuple[str, str], set[int]] = field(default_factory=dict)

    async def call(self, method: str, template: str, path: str | None = None, *,
                   json: Any = None, data: Any = None, key: str | None = TEST_KEY,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        hdrs = dict(headers or {})
        if key is not None:
            hdrs["x-api-key"] = key
        async with self.http.request(method, self.url + (path or template), json=json, data=data,
                                     headers=hdrs) as resp:
            status = resp.status
            body = await resp.json() if resp.content_type == "application/json" else await resp.text()
            ctype = resp.content_type
        op = self.doc["paths"][template][method.lower()]
        documented = op["responses"].get(str(status))
        assert documented is not None, f"{method} {template}: {status} is not documented ({body})"
        content = documented.get("content", {})
        assert ctype in content, f"{method} {template} {status}: {ctype} not documented"
        if ctype == "application/json":
            schema = resolve(content[ctype]["schema"], self.doc)
            errors = sorted(OAS30Validator(schema).iter_errors(body), key=str)
            assert not errors, (f"{method} {template} {status}: {errors[0].message} at "
                                f"{list(errors[0].absolute_path)}")
        self.seen.setdefault((method.lower(), template), set()).add(status)
        return status, body


@pytest.fixture
async def svc(tmp_path: Path, mosquitto: Mosquitto,
              ingest_engine: str | None) -> AsyncIterator[RunningService]:
    settings = settings_for(tmp_path / "data", mosquitto.url, ews_min_interval_s=0, ews_tick_s=1.0)
    async with running(settings, clock=lambda: NOW) as service:
        yield service


async def feed(svc: RunningService, mosquitto: Mosquitto) -> str:
    """Vitals (a full NEWS2 set and a blood pressure), an ECG recording and one junk message."""
    topics = Topics(svc.service.settings.prefix)
    fs = 250.0
    counts = to_counts(EcgSynth(seed=3, heart_rate=75.0, origin_ms=T0).millivolts(T0, int(fs * 8)))
    rec = f"{DEV}-{T0}"
    chunks = [EcgChunk(device_id=DEV, recording=rec, seq=i, ts=T0 + i * 4000, fs=fs,
                       samples=counts.tolist()[i * 1000:(i + 1) * 1000], last=i == 1,
                       user_code=CODE) for i in range(2)]
    client = publisher(mosquitto.host, mosquitto.port, "openapi-feed")
    try:
        publish_all(client, [
            (topics.reading(GW, DEV), reading(DEV, 1, T0, user_code=CODE, heart_rate=120.0,
                                              spo2=95.0, respiratory_rate=22.0, temperature=38.5,
                                              systolic_bp=105.0, diastolic_bp=70.0).to_bytes()),
            *[(topics.ecg(GW, DEV), c.to_bytes()) for c in chunks],
            (topics.reading(GW, DEV), b'{"not": "a reading"}'),
        ])
    finally:
        client.loop_stop()
        client.disconnect()
    engine = svc.service.engine
    await eventually(lambda: engine.current(CODE) is not None, timeout=30)

    def analysed() -> bool:
        return bool(svc.service.db.read_sync(lambda c: c.execute(
            "SELECT count(*) FROM ecg_recordings WHERE analysis IS NOT NULL").fetchone()[0]))

    await eventually(analysed, timeout=30)
    return rec


def test_every_operation_has_an_operation_id_and_documents_its_errors(tmp_path: Path) -> None:
    from ingest.api import ews_routes
    from ingest.api.app import openapi_document
    from ingest.dashboard import routes as dashboard_routes

    doc = openapi_document([ews_routes.OPENAPI_PATHS, dashboard_routes.OPENAPI_PATHS])
    ids = []
    for path, item in doc["paths"].items():
        for method in HTTP_METHODS:
            if method not in item:
                continue
            op = item[method]
            ids.append(op.get("operationId"))
            assert op.get("operationId"), f"{method} {path} has no operationId"
            responses = op["responses"]
            if op.get("security"):
                assert {"401", "403", "429"} <= set(responses), f"{method} {path}"
            if "requestBody" in op:
                assert {"408", "413", "422"} <= set(responses), f"{method} {path}"
            if "{" in path:
                assert "422" in responses or "404" in responses, f"{method} {path}"
            for status, response in responses.items():
                schema = response.get("content", {}).get("application/json", {}).get("schema")
                if schema is not None:
                    resolved = resolve(schema, doc)
                    assert resolved.get("properties") or resolved.get("type") != "object" \
                        or status in ("200", "503"), f"{method} {path} {status}: empty schema"
    assert len(ids) == len(set(ids)), "operationIds are unique"


async def test_every_live_response_validates_against_the_served_schema(
    svc: RunningService, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    rec = await feed(svc, mosquitto)
    reader = str(svc.service.db.write_sync(lambda c: keys.create(c, "reader", 1, ["read"])))
    async with aiohttp.ClientSession() as http:
        async with http.get(svc.url + "/openapi.json") as resp:
            doc = await resp.json()
        c = Checker(svc.url, doc, http)
        # operations
        await c.call("GET", "/healthz", key=None)
        await c.call("GET", "/metrics", key=None)
        await c.call("GET", "/openapi.json", key=None)
        # devices
        status, body = await c.call("POST", "/api/device", json={
            "device_name": "E86 5894", "device_mac": MAC, "device_holder": "rs-a",
            "user_code": CODE})
        device = body["data"]["id"] if status == 201 else None
        if device is None:  # the reading registered it first: find and assign it
            status, body = await c.call("GET", "/api/devices")
            device = body["data"]["data"][0]["id"]
            await c.call("PUT", "/api/device/{id_device}", f"/api/device/{device}",
                         json={"user_code": CODE, "device_holder": "rs-a"})
        await c.call("POST", "/api/device", json={"device_name": "E86 5894", "device_mac": MAC})
        status, _ = await c.call("POST", "/api/device", json={
            "device_name": "spare", "device_mac": "D0:61:AE:00:00:09", "device_type": "corporate"})
        assert status == 201
        await c.call("POST", "/api/device", json={"device_name": "x", "extra": 1})
        status, body = await c.call("POST", "/api/devices", json=[
            {"device_name": "E86 0001", "device_mac": "D0:61:AE:00:00:01"},
            {"device_name": "E86 0002", "device_mac": "D0:61:AE:00:00:02"}])
        assert status == 201
        extra = body["data"][1]["id"]
        await c.call("POST", "/api/devices", json=[])
        await c.call("POST", "/api/devices", data=io.BytesIO(b"[" + b"0," * 600_000 + b"0]"),
                     headers={"content-type": "application/json"})  # > 1 MB: 413
        await c.call("GET", "/api/devices", "/api/devices?size=2&page=1")
        await c.call("GET", "/api/devices", "/api/devices?size=x")
        await c.call("GET", "/api/devices", key=None)
        await c.call("GET", "/api/device/{id_device}", f"/api/device/{device}")
        await c.call("GET", "/api/device/{id_device}", "/api/device/424242")
        await c.call("GET", "/api/device/{id_device}", "/api/device/x")
        await c.call("PUT", "/api/device/{id_device}", f"/api/device/{extra}",
                     json={"device_name": "renamed"})
        await c.call("PUT", "/api/device/{id_device}", f"/api/device/{extra}",
                     json={"device_name": "E86 5894"})
        await c.call("PUT", "/api/device/{id_device}", f"/api/device/{extra}", json={"x": 1},
                     key=reader)
        await c.call("DELETE", "/api/device/{id_device}", f"/api/device/{extra}")
        await c.call("DELETE", "/api/device/{id_device}", f"/api/device/{extra}")
        # records and ECG
        await c.call("GET", "/api/medical-record/{user_code}/latest",
                     f"/api/medical-record/{CODE}/latest")
        await c.call("GET", "/api/medical-record/{user_code}/latest", "/api/medical-record/a%20b/latest")
        for query in ("", "?type=BLOOD_PRESSURE,HEART_RATE", "?type=ELECTROCARDIOGRAPH&order=asc",
                      "?type=NOPE"):
            await c.call("GET", "/api/medical-records/{user_code}",
                         f"/api/medical-records/{CODE}{query}")
        await c.call("GET", "/api/ecg-recordings/{user_code}", f"/api/ecg-recordings/{CODE}")
        await c.call("GET", "/api/ecg/{recording}", f"/api/ecg/{rec}")
        await c.call("GET", "/api/ecg/{recording}", "/api/ecg/none")
        await c.call("GET", "/api/dead-letters")
        await c.call("GET", "/api/dead-letters", key=reader)
        # EWS, both bases
        for base in ("", "/api"):
            await c.call("GET", f"{base}/ews/{{user_code}}", f"{base}/ews/{CODE}")
            await c.call("GET", f"{base}/ews/{{user_code}}", f"{base}/ews/nobody")
            await c.call("GET", f"{base}/ews/history/{{user_code}}",
                         f"{base}/ews/history/{CODE}?size=5")
            await c.call("GET", f"{base}/ews/history/{{user_code}}",
                         f"{base}/ews/history/{CODE}?from=5&to=1")
            await c.call("POST", f"{base}/ews", json={
                "user_code": "EXT", "point": 3, "result": "sedang", "produce_at": str(NOW - 1000),
                "cause": ["Respiration 7"]})
            await c.call("POST", f"{base}/ews", json={
                "user_code": "EXT", "point": 1, "result": "tinggi", "produce_at": "1"})
            await c.call("POST", f"{base}/ews", json={"user_code": "EXT"}, key=reader)
        await c.call("GET", "/api/ews-summary")
        await c.call("GET", "/api/outbox", "/api/outbox?limit=5")
        await c.call("GET", "/api/outbox", "/api/outbox?limit=0")
        # context
        await c.call("GET", "/api/patient/{user_code}/context", f"/api/patient/{CODE}/context")
        await c.call("PUT", "/api/patient/{user_code}/context", f"/api/patient/{CODE}/context",
                     json={"on_oxygen": True})
        await c.call("PUT", "/api/patient/{user_code}/context", f"/api/patient/{CODE}/context",
                     json={"spo2_scale": 3})
        # alerts (issue 17): EXT's external "sedang" (3, risk low-medium) opened one
        await eventually(lambda: svc.service.alerts.find(user_code="EXT"))
        status, body = await c.call("GET", "/api/alerts", "/api/alerts?state=open&user_code=EXT")
        alert_id = body["data"]["alerts"][0]["id"]
        await c.call("GET", "/api/alerts", "/api/alerts?state=nope")
        await c.call("GET", "/api/alerts/{id}", f"/api/alerts/{alert_id}")
        await c.call("GET", "/api/alerts/{id}", "/api/alerts/999999")
        await c.call("GET", "/api/alerts/{id}", "/api/alerts/x")
        ack = f"/api/alerts/{alert_id}/ack"
        await c.call("POST", "/api/alerts/{id}/ack", ack, json={"who": "Nurse Ani"}, key=reader)
        await c.call("POST", "/api/alerts/{id}/ack", ack, json={"who": ""})
        status, _ = await c.call("POST", "/api/alerts/{id}/ack", ack,
                                 json={"who": "Nurse Ani", "note": "seen"})
        assert status == 200
        await c.call("POST", "/api/alerts/{id}/ack", ack, json={"who": "Nurse Ani"})  # 409
        await c.call("GET", "/api/monitoring")
        # sequence gaps (the fed reading was seq 1: seq 0 is a gap)
        await c.call("GET", "/api/gaps")
        await c.call("GET", "/api/gaps", "/api/gaps?limit=0")
        await c.call("GET", "/api/devices/{device_id}/gaps", f"/api/devices/{DEV}/gaps")
        await c.call("GET", "/api/devices/{device_id}/gaps", "/api/devices/ffffffffffff/gaps")
        await c.call("GET", "/api/devices/{device_id}/gaps", "/api/devices/x/gaps")
        # the dashboard
        await c.call("GET", "/api/ward")
        await c.call("GET", "/api/ward/{user_code}", f"/api/ward/{CODE}?hours=2")
        await c.call("GET", "/api/ward/{user_code}", "/api/ward/nobody")
        await c.call("GET", "/api/ward/{user_code}", f"/api/ward/{CODE}?hours=0")

        for path, item in doc["paths"].items():
            for method in HTTP_METHODS:
                if method in item:
                    statuses = c.seen.get((method, path), set())
                    assert any(200 <= s < 300 for s in statuses), f"{method} {path} never succeeded"
        # enough variety to mean something: the error statuses the document promises occurred
        everything = set().union(*c.seen.values())
        assert {200, 201, 401, 403, 404, 409, 413, 422} <= everything, everything


async def test_429_and_408_are_the_documented_error_shape(tmp_path: Path, mosquitto: Mosquitto) -> None:
    import asyncio
    import json

    settings = settings_for(tmp_path / "rl", mosquitto.url, http_rate_per_s=0.001, http_burst=1,
                            http_body_timeout_s=0.3)
    async with running(settings) as svc, aiohttp.ClientSession() as http:
        async with http.get(svc.url + "/openapi.json") as resp:
            doc = await resp.json()
        c = Checker(svc.url, doc, http)
        statuses = [(await c.call("GET", "/api/ews-summary"))[0] for _ in range(2)]
        assert statuses == [200, 429]
        # 408 (the limiter lets this other client's first request through)
        reader, writer = await asyncio.open_connection(settings.http_host, svc.port)
        writer.write(b"POST /ews HTTP/1.1\r\nHost: x\r\nx-api-key: other\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 50\r\n\r\n{")
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(65536), 30)
        writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.split()[1] == b"401"  # the key is checked before the body is read
        key = str(svc.service.db.write_sync(lambda c_: keys.create(c_, "p", 1, ["platform"])))
        reader, writer = await asyncio.open_connection(settings.http_host, svc.port)
        writer.write(b"POST /ews HTTP/1.1\r\nHost: x\r\nx-api-key: " + key.encode() +
                     b"\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{")
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(65536), 30)
        writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.split()[1] == b"408"
        schema = resolve(doc["paths"]["/ews"]["post"]["responses"]["408"]["content"]
                         ["application/json"]["schema"], doc)
        OAS30Validator(schema).validate(json.loads(body))
