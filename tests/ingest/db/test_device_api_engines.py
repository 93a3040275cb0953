"""The device registry API, key scoping and revocation over real HTTP on both engines: the
service's app (ingest.api.app.create_app) on an ``ingest.db.Database`` (SQLite or PostgreSQL),
as every instance serves it from the shared store. The same status codes on both."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web

from ingest import keys
from ingest.api.app import create_app
from ingest.db import Conn, Database, Location
from ingest.db import keys as db_keys
from ingest.db import registry as db_registry
from ingest.keys import KeyChecker
from ingest.metrics import IngestMetrics
from tests.support.ingest_service import TEST_KEY, Api, settings_for


def _setup(conn: Conn) -> None:
    db_registry.migrate(conn)
    db_keys.migrate(conn)


@dataclass
class Served:
    url: str
    db: Database
    checker: KeyChecker


async def _health() -> tuple[bool, dict[str, Any]]:
    return True, {}


@pytest.fixture
async def served(database_url: str, tmp_path: Path) -> AsyncIterator[Served]:
    db = Database(Location.parse(database_url, default_path=tmp_path / "unused.sqlite3"),
                  setup=_setup, name="readings")
    checker = KeyChecker(TEST_KEY)
    app = create_app(settings=settings_for(tmp_path, "mqtt://127.0.0.1:1"), db=cast(Any, db),
                     metrics_=IngestMetrics(), checker=checker, health=_health)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield Served(f"http://127.0.0.1:{port}", db, checker)
    finally:
        await runner.cleanup()
        db.close()


async def test_device_registry_over_http(served: Served) -> None:
    async with Api(served.url) as api:
        body = {"device_name": "E86 5894", "device_mac": "d0:61:ae:d4:58:94", "device_type": "corporate",
                "device_holder": "RS A", "user_code": "PA"}
        status, made = await api.call("POST", "/api/device", json=body)
        assert status == 201 and made["data"]["device_mac"] == "D0:61:AE:D4:58:94"
        dev_id = made["data"]["id"]
        status, clash = await api.call("POST", "/api/device", json=body)
        assert status == 409 and f"device id {dev_id}" in clash["message"]
        status, bulk = await api.call("POST", "/api/devices", json=[
            {"device_name": "E86 0001", "device_mac": "D0:61:AE:D4:00:01", "device_holder": "RS B"},
            {"device_name": "E86 0002", "device_mac": "D0:61:AE:D4:00:02", "device_holder": "RS B"}])
        assert status == 201 and len(bulk["data"]) == 2
        status, _ = await api.call("POST", "/api/devices", json=[
            {"device_name": "E86 0003", "device_mac": "D0:61:AE:D4:00:03"},
            {"device_name": "E86 0001", "device_mac": "D0:61:AE:D4:00:04"}])
        assert status == 409  # all or nothing
        status, page = await api.get("/api/devices", page=1, size=2)
        assert status == 200 and page["data"]["data"][0]["id"] == dev_id
        assert page["data"]["totaldata"] == 3 and page["data"]["displayed"] == 2
        status, moved = await api.call("PUT", f"/api/device/{dev_id}", json={"gateway_id": "gw-2"})
        assert status == 200 and moved["data"]["gateway_id"] == "gw-2"
        assert (await api.call("PUT", f"/api/device/{dev_id}",
                               json={"device_name": "E86 0001"}))[0] == 409
        assert (await api.call("PUT", f"/api/device/{dev_id}", json={"device_type": "x"}))[0] == 422
        assert (await api.get("/api/device/abc"))[0] == 422
        assert (await api.get("/api/device/999999"))[0] == 404
        assert (await api.call("DELETE", f"/api/device/{dev_id}"))[0] == 200
        assert (await api.get(f"/api/device/{dev_id}"))[0] == 404


async def test_holder_limited_keys_and_revocation_over_http(served: Served) -> None:
    db = served.db
    admin = db.write_sync(lambda c: keys.create(c, "ops", 1, ["admin"]))
    ward_a = db.write_sync(lambda c: keys.create(c, "ward-a", 1, ["admin"], "RS A"))
    async with Api(served.url, key=admin) as api:
        for i, holder in enumerate(("RS A", "RS B")):
            status, _ = await api.call("POST", "/api/device", json={
                "device_name": f"E86 000{i}", "device_mac": f"D0:61:AE:D4:00:0{i}",
                "device_holder": holder, "user_code": f"P{i}"})
            assert status == 201
        status, page = await api.get("/api/devices")
        assert status == 200 and len(page["data"]["data"]) == 2
    async with Api(served.url, key=ward_a) as api:
        status, page = await api.get("/api/devices")
        assert status == 200 and [d["device_holder"] for d in page["data"]["data"]] == ["RS A"]
        ids = {d["device_name"]: d["id"] for d in (await _all(served))}
        assert (await api.get(f"/api/device/{ids['E86 0001']}"))[0] == 404  # another holder's
        assert (await api.call("DELETE", f"/api/device/{ids['E86 0001']}"))[0] == 404
        assert (await api.get("/api/medical-record/P1/latest"))[0] == 404
        status, _ = await api.call("POST", "/api/device", json={
            "device_name": "x", "device_mac": "D0:61:AE:D4:00:09", "device_holder": "RS B"})
        assert status == 403
        db.write_sync(lambda c: keys.revoke(c, "ward-a", 2))
        served.checker.forget()  # the revocation's cache bound is tested with a clock elsewhere
        assert (await api.get("/api/devices"))[0] == 401


async def _all(served: Served) -> list[dict[str, Any]]:
    from ingest import registry

    items, _ = served.db.read_sync(lambda c: registry.list_devices(c, 1, 100))
    return items
