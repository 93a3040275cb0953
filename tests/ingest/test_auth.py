"""Least privilege on a real service (real HTTP on loopback, real SQLite, a real broker):
the route → scope table, 401 vs 403, holder limits, revocation, the bootstrap key, the CLI."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ingest import keys, store
from ingest.api.auth import ADMIN, PUBLIC, ROUTE_SCOPES, required_scope
from ingest.db import Conn, Dialect, render_ddl
from ingest.db import keys as db_keys
from ingest.service import IngestService, RunningService
from tests.support.ingest_service import (
    TEST_KEY,
    Api,
    eventually,
    open_store,
    publish_once,
    running,
    settings_for,
)
from vitalgate.broker import Mosquitto, free_port

ROOT = Path(__file__).resolve().parents[2]

#: the value of each path parameter in a sample request
PATH_VALUES = {"user_code": "PA", "recording": "nothing", "id_device": "1",
               "device_id": "d061aed45894", "id": "1"}
EWS_POINT = {"user_code": "PA", "point": 1, "result": "rendah", "produce_at": "1000"}
#: one concrete request per keyed route of the table: (method, path, JSON body or None); every
#: keyed GET route is asked without a body, its parameters from PATH_VALUES
SAMPLES: dict[tuple[str, str], tuple[str, Any]] = {
    **{("GET", pattern): (pattern.format(**PATH_VALUES), None) for pattern in (
        "/api/ward", "/api/ward/{user_code}", "/api/events", "/ews/{user_code}",
        "/ews/history/{user_code}", "/api/ews/{user_code}", "/api/ews/history/{user_code}",
        "/api/ews-summary", "/api/patient/{user_code}/context",
        "/api/medical-record/{user_code}/latest", "/api/medical-records/{user_code}",
        "/api/ecg-recordings/{user_code}", "/api/ecg/{recording}", "/api/devices",
        "/api/device/{id_device}", "/api/dead-letters", "/api/outbox", "/api/gaps",
        "/api/devices/{device_id}/gaps", "/api/alerts", "/api/alerts/{id}", "/api/monitoring",
    )},
    ("POST", "/ews"): ("/ews", EWS_POINT),
    ("POST", "/api/ews"): ("/api/ews", EWS_POINT),
    ("PUT", "/api/patient/{user_code}/context"): ("/api/patient/PA/context",
                                                  {"consciousness": "A"}),
    ("POST", "/api/devices"): ("/api/devices", [{"device_name": "x"}]),
    ("POST", "/api/device"): ("/api/device", {"device_name": "x"}),
    ("PUT", "/api/device/{id_device}"): ("/api/device/999999", {"device_name": "y"}),
    ("DELETE", "/api/device/{id_device}"): ("/api/device/999999", None),
    ("POST", "/api/alerts/{id}/ack"): ("/api/alerts/1/ack", {"who": "Nurse Ani"}),
}


def _routes(tmp_path: Path) -> set[tuple[str, str]]:
    svc = IngestService(settings_for(tmp_path / "routes", f"mqtt://127.0.0.1:{free_port()}"))
    try:
        out = set()
        for route in svc.app.router.routes():
            resource = route.resource
            assert resource is not None
            method = "GET" if route.method == "HEAD" else route.method
            out.add((method, resource.canonical))
        return out
    finally:
        svc.engine.close()
        svc.outbox.close()
        svc.db.close()


def test_every_registered_route_is_in_the_table(tmp_path: Path) -> None:
    routes = _routes(tmp_path)
    missing = routes - set(ROUTE_SCOPES)
    assert not missing, f"routes without an entry in ingest.api.auth.ROUTE_SCOPES: {missing}"
    stale = set(ROUTE_SCOPES) - routes
    assert not stale, f"entries for routes that do not exist: {stale}"
    keyed = {r for r, s in ROUTE_SCOPES.items() if s != PUBLIC}
    assert keyed == set(SAMPLES), "every keyed route has a sample request below"


def test_the_table_is_fail_closed() -> None:
    assert required_scope("GET", "/api/some-new-route") == ADMIN
    assert required_scope("PATCH", "/api/devices") == ADMIN
    assert required_scope("HEAD", "/api/ward") == "read"


@pytest.fixture
async def svc(tmp_path: Path, mosquitto: Mosquitto,
              ingest_engine: str | None) -> AsyncIterator[RunningService]:
    async with running(settings_for(tmp_path / "data", mosquitto.url,
                                    http_body_timeout_s=0.5)) as service:
        yield service


def make_key(svc: RunningService, name: str, scopes: str, holder: str | None = None) -> str:
    return str(svc.service.db.write_sync(
        lambda c: keys.create(c, name, 1, keys.parse_scopes(scopes), holder)))


async def status_of(http: aiohttp.ClientSession, url: str, method: str, path: str, body: Any,
                    key: str | None) -> int:
    headers = {"x-api-key": key} if key else {}
    async with http.request(method, url + path, json=body, headers=headers) as resp:
        return resp.status  # leaving the block closes an event stream without reading it


async def test_every_route_refuses_the_scopes_it_should(svc: RunningService) -> None:
    scoped = {s: make_key(svc, f"k-{s}", s) for s in keys.SCOPES}
    async with aiohttp.ClientSession() as http:
        for (method, pattern), (path, body) in SAMPLES.items():
            need = ROUTE_SCOPES[(method, pattern)]
            assert await status_of(http, svc.url, method, path, body, None) == 401, pattern
            assert await status_of(http, svc.url, method, path, body, "vg_wrong") == 401, pattern
            for scope, key in scoped.items():
                got = await status_of(http, svc.url, method, path, body, key)
                allowed = scope in (need, ADMIN)
                if allowed:
                    assert got not in (401, 403), (method, pattern, scope, got)
                else:
                    assert got == 403, (method, pattern, scope, got)


async def test_403_names_the_missing_scope(svc: RunningService) -> None:
    key = make_key(svc, "reader", "read")
    async with Api(svc.url, key=key) as api:
        status, body = await api.call("DELETE", "/api/device/1")
        assert status == 403 and "'admin'" in body["message"] and "reader" in body["message"]
        status, body = await api.call("POST", "/ews", json={})
        assert status == 403 and "'platform'" in body["message"]
        status, body = await api.call("PUT", "/api/patient/PA/context", json={})
        assert status == 403 and "'clinical'" in body["message"]


async def _register(api: Api, name: str, mac: str, holder: str, user_code: str) -> int:
    status, body = await api.call("POST", "/api/device", json={
        "device_name": name, "device_mac": mac, "device_holder": holder, "user_code": user_code})
    assert status == 201, body
    return int(body["data"]["id"])


async def test_a_holder_key_sees_only_its_devices_and_patients(svc: RunningService) -> None:
    async with Api(svc.url) as admin:
        a = await _register(admin, "A1", "D0:61:AE:00:00:01", "rs-a", "PA")
        b = await _register(admin, "B1", "D0:61:AE:00:00:02", "rs-b", "PB")
        for code in ("PA", "PB"):
            status, _ = await admin.call("POST", "/ews", json={
                "user_code": code, "point": 7, "result": "tinggi", "produce_at": "1000"})
            assert status == 200
    reader = make_key(svc, "ward-a", "read,clinical", holder="rs-a")
    async with Api(svc.url, key=reader) as api:
        assert (await api.get("/api/devices"))[0] == 403  # the registry is admin's
        status, body = await api.get("/api/ews-summary")
        assert [p["user_code"] for p in body["data"]["patients"]] == ["PA"]
        assert body["data"]["counts"]["tinggi"] == 1
        for path in ("/ews/PB", "/api/ews/history/PB", "/api/medical-record/PB/latest",
                     "/api/medical-records/PB", "/api/ecg-recordings/PB", "/api/ward/PB",
                     "/api/patient/PB/context"):
            status, body = await api.get(path)
            assert status == 404, path
            status_a, _ = await api.get(path.replace("PB", "PA"))
            assert status_a == 200, path
        status, body = await api.call("PUT", "/api/patient/PB/context", json={"on_oxygen": True})
        assert status == 404
        status, body = await api.get("/api/ward")
        assert [p["user_code"] for p in body["data"]["patients"]] == ["PA"]
    holder_admin = make_key(svc, "admin-a", "admin", holder="rs-a")
    async with Api(svc.url, key=holder_admin) as api:
        status, body = await api.get("/api/devices")
        assert status == 200 and [d["id"] for d in body["data"]["data"]] == [a]
        assert body["data"]["totaldata"] == 1
        assert (await api.get(f"/api/device/{a}"))[0] == 200
        assert (await api.get(f"/api/device/{b}"))[0] == 404
        status, body = await api.call("POST", "/api/device", json={
            "device_name": "A2", "device_mac": "D0:61:AE:00:00:03"})
        assert status == 201 and body["data"]["device_holder"] == "rs-a"  # its own by default
        status, body = await api.call("POST", "/api/device", json={
            "device_name": "A3", "device_mac": "D0:61:AE:00:00:04", "device_holder": "rs-b"})
        assert status == 403 and "device_holder" in body["message"]
        status, body = await api.call("PUT", f"/api/device/{a}", json={"device_holder": "rs-b"})
        assert status == 403
        assert (await api.call("DELETE", f"/api/device/{b}"))[0] == 404
        status, body = await api.get("/api/dead-letters")
        assert status == 403 and "rs-a" in body["message"]
        status, body = await api.call("POST", "/ews", json={
            "user_code": "PB", "point": 1, "result": "rendah", "produce_at": "2000"})
        assert status == 404
    async with Api(svc.url) as admin:
        assert (await admin.get(f"/api/device/{b}"))[0] == 200  # nothing of B's was touched


async def test_dead_letters_need_admin_and_show_payload_to_it(svc: RunningService,
                                                               mosquitto: Mosquitto) -> None:
    # junk on a reading topic, as a careless gateway would send it: dead-lettered
    publish_once(mosquitto.host, mosquitto.port,
                 [(f"{svc.service.settings.prefix}/ward1/d061aed45894/reading", b'{"secret": 1}')],
                 "auth-junk")
    await eventually(lambda: svc.service.db.read_sync(lambda c: store.dead_letters(c, 1, 1)[1]))
    async with Api(svc.url, key=make_key(svc, "reader", "read")) as api:
        assert (await api.get("/api/dead-letters"))[0] == 403
    async with Api(svc.url, key=make_key(svc, "ops", "admin")) as api:
        status, body = await api.get("/api/dead-letters")
        assert status == 200 and "secret" in body["data"]["data"][0]["payload"]


async def test_revocation_takes_effect_within_the_cache_bound(svc: RunningService) -> None:
    now = [100.0]
    checker = svc.service.checker
    checker._clock = lambda: now[0]  # the checker's injected monotonic clock, advanced by hand
    key = make_key(svc, "console", "read")
    async with Api(svc.url, key=key) as api:
        assert (await api.get("/api/ews-summary"))[0] == 200
        svc.service.db.write_sync(lambda c: keys.revoke(c, "console", 2))
        now[0] += keys.CACHE_S * 0.5
        assert (await api.get("/api/ews-summary"))[0] == 200  # remembered, within the bound
        now[0] += keys.CACHE_S * 0.5
        status, body = await api.get("/api/ews-summary")
        assert status == 401 and body["message"] == "invalid API key"
    assert keys.CACHE_S <= 1.0


async def test_the_bootstrap_key_is_admin_and_can_be_retired(svc: RunningService) -> None:
    async with Api(svc.url) as api:  # TEST_KEY is the settings' api_key
        assert (await api.get("/api/dead-letters"))[0] == 200
        svc.service.db.write_sync(lambda c: keys.retire_bootstrap(c, 5))
        svc.service.checker.forget()
        assert (await api.get("/api/dead-letters"))[0] == 401
        svc.service.db.write_sync(lambda c: keys.retire_bootstrap(c, 6, undo=True))
        svc.service.checker.forget()
        assert (await api.get("/api/dead-letters"))[0] == 200


def test_old_key_tables_are_migrated_to_admin(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "ingest.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE api_keys (name TEXT PRIMARY KEY, salt BLOB NOT NULL,"
                       " hash BLOB NOT NULL, created_at INTEGER NOT NULL, revoked_at INTEGER);")
    salt = b"0123456789abcdef"
    conn.execute("INSERT INTO api_keys VALUES ('legacy', ?, ?, 1, NULL)",
                 (salt, keys._digest(salt, "vg_old")))
    conn.commit()
    conn.close()
    with caplog.at_level(logging.WARNING, logger="ingest.keys"):
        db = store.Database(path, synchronous="NORMAL")
    try:
        found = db.read_sync(lambda c: keys.find(c, "vg_old"))
        assert found is not None and found.is_admin and found.holder is None
        assert any("1 API key(s)" in r.getMessage() for r in caplog.records)
        assert db.write_sync(keys.migrate) == 0  # once only
        new = db.write_sync(lambda c: keys.create(c, "new", 2, ["read"], "rs-a"))
        found = db.read_sync(lambda c: keys.find(c, new))
        assert found is not None and found.scopes == {"read"} and found.holder == "rs-a"
    finally:
        db.close()


def test_scopes_and_names_are_checked() -> None:
    assert keys.parse_scopes("clinical, READ") == ("read", "clinical")
    for bad in ("", "read,root", ","):
        with pytest.raises(keys.ApiKeyError):
            keys.parse_scopes(bad)
    raw = sqlite3.connect(":memory:")
    raw.executescript(render_ddl(db_keys.SCHEMA, Dialect.SQLITE))
    conn = Conn(raw, Dialect.SQLITE)
    for name in ("bad name", "x\n", "bootstrap"):
        with pytest.raises(keys.ApiKeyError):
            keys.create(conn, name, 1, ["read"])
    with pytest.raises(keys.ApiKeyError):
        keys.create(conn, "ok", 1, ["read"], holder=" padded")


def test_cli_create_list_revoke_retire(tmp_path: Path, ingest_engine: str | None) -> None:
    env = dict(os.environ, VITALGATE_DATA_DIR=str(tmp_path / "data"))
    env.pop("VITALGATE_CONFIG", None)
    env.pop("VITALGATE_DATABASE_URL", None)
    if ingest_engine is not None:  # the keys live in the shared PostgreSQL database
        env["VITALGATE_DATABASE_URL"] = ingest_engine

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vitalgate", "keys", *args], env=env,
                              cwd=ROOT, capture_output=True, text=True, timeout=60)

    made = cli("create", "ward-a", "--scope", "read,clinical", "--holder", "RS A")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("vg_") and "read,clinical" in made.stderr and key not in made.stderr
    assert cli("create", "x", "--scope", "root").returncode == 2
    listed = cli("list").stdout
    assert "ward-a\tread,clinical\tRS A\t" in listed and "active" in listed and key not in listed
    assert cli("revoke", "ward-a").returncode == 0
    assert "revoked" in cli("list").stdout.splitlines()[1]
    assert cli("retire-bootstrap").returncode == 0
    assert "(VITALGATE_API_KEY)\tadmin\t-\t-\tretired" in cli("list").stdout
    db = open_store(tmp_path / "data")
    try:
        assert db.read_sync(lambda c: keys.find(c, key)) is None
        assert db.read_sync(keys.bootstrap_retired_at) is not None
    finally:
        db.close()


# ------------------------------------------------------------------ HTTP hardening


async def test_security_headers_on_the_dashboard_static_files_and_api(svc: RunningService) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("/", "/static/app.js", "/static/style.css", "/api/ward", "/healthz",
                     "/static/missing.js"):
            async with http.get(svc.url + path, headers={"x-api-key": TEST_KEY}) as resp:
                csp = resp.headers.get("Content-Security-Policy", "")
                assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, path
                assert resp.headers.get("X-Content-Type-Options") == "nosniff", path
                assert resp.headers.get("Referrer-Policy") == "no-referrer", path
                assert resp.headers.get("X-Frame-Options") == "DENY", path


async def test_a_slow_body_gets_408(svc: RunningService) -> None:
    """The body timeout is 0.5 s in this service's settings; the client sends half a body and
    waits: the answer is 408 and the connection is not held for longer than the client wants."""
    reader, writer = await asyncio.open_connection(svc.service.settings.http_host, svc.port)
    try:
        writer.write(b"POST /ews HTTP/1.1\r\nHost: x\r\nx-api-key: " + TEST_KEY.encode() +
                     b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"user")
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 30)
        assert status_line.split()[1] == b"408", status_line
    finally:
        writer.close()
        await writer.wait_closed()


async def test_no_500_on_odd_input(svc: RunningService) -> None:
    async with Api(svc.url) as api:
        for raw in (b"[" * 100_000, b'{"a":' * 40_000 + b"1" + b"}" * 40_000, b"\xff\xfe"):
            for method, path in (("POST", "/ews"), ("POST", "/api/devices"), ("POST", "/api/device"),
                                 ("PUT", "/api/device/1"), ("PUT", "/api/patient/PA/context")):
                status, body = await api.call(method, path, data=raw,
                                              headers={"content-type": "application/json"})
                assert status in (404, 422), (method, path, status, body)
        for path in ("/api/outbox?limit=²", "/api/devices?size=²", "/api/device/²",
                     "/api/medical-records/PA?from=²", "/ews/history/PA?page=²",
                     "/ews/PA%0A", "/api/ward/PA%0A", "/api/medical-record/PA%0A/latest"):
            status, body = await api.get(path)
            assert status == 422, (path, status, body)
        status, body = await api.call("POST", "/ews", json={
            "user_code": "PA\n", "point": 1, "result": "rendah", "produce_at": "1"})
        assert status == 422 and body["message"].startswith("user_code")
        status, body = await api.call("POST", "/ews", json={
            "user_code": "PA", "point": "²", "result": "rendah", "produce_at": "1"})
        assert status == 422 and body["message"].startswith("point")
        status, body = await api.get("/ews/history/PA")
        assert body["data"]["totaldata"] == 0  # nothing committed by the refused bodies
        assert svc.service.engine.history("PA\n", page=1, size=5)[1] == 0


async def test_future_produce_at_is_refused_over_http(svc: RunningService) -> None:
    now = svc.service.clock()
    async with Api(svc.url) as api:
        status, body = await api.call("POST", "/api/ews", json={
            "user_code": "PA", "point": 0, "result": "normal",
            "produce_at": str(now + 10 * 24 * 3600 * 1000)})
        assert status == 422 and body["message"].startswith("produce_at")
        status, _ = await api.get("/ews/PA")
        assert status == 404  # nothing recorded: the future point cannot pin the display


async def test_closing_an_event_stream_logs_no_error(svc: RunningService,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    hub = svc.service.hub
    caplog.set_level(logging.DEBUG)
    for _ in range(3):
        sock = socket.create_connection((svc.service.settings.http_host, svc.port))
        sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: x\r\nx-api-key: " + TEST_KEY.encode() +
                     b"\r\n\r\n")
        got = b""
        while b"event: hello" not in got:
            chunk = await asyncio.to_thread(sock.recv, 4096)
            assert chunk, got
            got += chunk
        await eventually(lambda: hub.listeners >= 1)
        sock.close()
        for _ in range(3):  # the next events find the client gone
            hub.publish("readings", {"count": 1})
            await asyncio.sleep(0.05)
        await eventually(lambda: hub.listeners == 0)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


async def test_a_holder_key_s_event_stream_carries_only_its_patients(svc: RunningService) -> None:
    async with Api(svc.url) as admin:
        await _register(admin, "A1", "D0:61:AE:00:00:01", "rs-a", "PA")
        await _register(admin, "B1", "D0:61:AE:00:00:02", "rs-b", "PB")
    key = make_key(svc, "screen-a", "read", holder="rs-a")
    hub = svc.service.hub
    async with aiohttp.ClientSession() as http, http.get(
            svc.url + "/api/events", headers={"x-api-key": key}) as resp:
        assert resp.status == 200
        assert (await resp.content.readuntil(b"\n\n")).startswith(b"event: hello")
        await eventually(lambda: hub.listeners >= 1)
        hub.publish("ews", {"user_code": "PB", "point": 9})
        hub.publish("readings", {"count": 1})
        hub.publish("ews", {"user_code": "PA", "point": 3})
        frames = [await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 30) for _ in range(2)]
    assert frames[0].startswith(b"event: readings")
    assert frames[1].startswith(b"event: ews") and b'"PA"' in frames[1]


@pytest.mark.usefixtures("ingest_engine")
async def test_post_ews_future_bound_is_max_future_skew_s(tmp_path: Path,
                                                          mosquitto: Mosquitto) -> None:
    """One setting for both future rules: POST /ews produce_at obeys ``max_future_skew_s``."""
    async with running(settings_for(tmp_path / "d", mosquitto.url, max_future_skew_s=60)) as run:
        now = run.service.clock()
        async with Api(run.url) as api:
            status, body = await api.call("POST", "/api/ews", json={
                "user_code": "PA", "point": 0, "result": "normal", "produce_at": str(now + 120_000)})
            assert status == 422 and body["message"].startswith("produce_at")
            status, _ = await api.call("POST", "/api/ews", json={
                "user_code": "PA", "point": 0, "result": "normal", "produce_at": str(now + 30_000)})
            assert status == 200
