"""Device registry REST API on a real service (real HTTP on loopback, real SQLite, real broker)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ingest.service import RunningService
from tests.support.ingest_service import Api, running, settings_for
from vitalgate.broker import Mosquitto, free_port

SEED_PAGE = Path(__file__).resolve().parents[3] / "shared" / "seeds" / "002_7579d21bed325170.txt"


def seed_body() -> bytes:
    """The body of "POST new device", byte for byte from the seed page ("medical record Device
    API"), whitespace and all."""
    text = SEED_PAGE.read_text(encoding="utf-8")
    section = text[text.index("### POST  new device"):]
    block = section[section.index("```json") + len("```json"):]
    return block[: block.index("```")].encode()


@pytest.fixture
async def svc(tmp_path: Path, mosquitto: Mosquitto,
              ingest_engine: str | None) -> AsyncIterator[RunningService]:
    settings = settings_for(tmp_path / "data", mosquitto.url)
    async with running(settings) as service:
        yield service


@pytest.fixture
async def api(svc: RunningService) -> AsyncIterator[Api]:
    async with Api(svc.url) as client:
        yield client


async def test_seed_body_registers_and_reads_back(api: Api) -> None:
    assert b'"device_mac": "D0:61:AE:D4:58:94"' in seed_body()
    status, body = await api.call("POST", "/api/devices", data=seed_body(),
                                  headers={"Content-Type": "application/json"})
    assert status == 201, body
    assert body["code"] == 201 and body["success"] is True
    created = body["data"][0]
    assert created["device_name"] == "E86 5894"
    assert created["device_mac"] == "D0:61:AE:D4:58:94"
    assert created["device_type"] == "CONSUMER"
    assert created["device_holder"] == "unknown"
    status, body = await api.get(f"/api/device/{created['id']}")
    assert status == 200 and body["data"]["device_mac"] == "D0:61:AE:D4:58:94"
    status, body = await api.get("/api/devices", size=10, page=1)
    assert status == 200
    page = body["data"]
    assert page["totaldata"] == 1 and page["displayed"] == 1 and page["size"] == 10
    assert page["length"] == 10 and page["totalpage"] == 1 and page["page"] == 1
    assert page["data"][0]["id"] == created["id"]


async def test_bulk_is_all_or_nothing_and_names_the_bad_item(api: Api) -> None:
    items = [
        {"device_name": "E86 0001", "device_mac": "d0:61:ae:00:00:01", "device_type": "consumer",
         "device_holder": "RS Harapan"},
        {"device_name": "E86 0002", "device_mac": "not-a-mac", "device_type": "CONSUMER",
         "device_holder": "RS Harapan"},
    ]
    status, body = await api.call("POST", "/api/devices", json=items)
    assert status == 422
    assert body["success"] is False and body["code"] == 422
    assert "item 1" in body["message"] and "device_mac" in body["message"]
    status, body = await api.get("/api/devices")
    assert body["data"]["totaldata"] == 0  # the good item 0 was not written either


async def test_bad_type_names_the_field(api: Api) -> None:
    status, body = await api.call("POST", "/api/device", json={
        "device_name": "E86 0003", "device_mac": "D0:61:AE:00:00:03", "device_type": "PHONE",
        "device_holder": "x"})
    assert status == 422 and "device_type" in body["message"]


async def test_mac_normalised_and_type_any_case(api: Api) -> None:
    status, body = await api.call("POST", "/api/device", json={
        "device_name": "E86 58AB", "device_mac": "d061aed458ab", "device_type": "Corporate",
        "device_holder": "RS Harapan"})
    assert status == 201, body
    assert body["data"]["device_mac"] == "D0:61:AE:D4:58:AB"
    assert body["data"]["device_type"] == "CORPORATE"


async def test_conflicts_are_409(api: Api) -> None:
    one = {"device_name": "E86 5894", "device_mac": "D0:61:AE:D4:58:94", "device_type": "CONSUMER",
           "device_holder": "unknown"}
    assert (await api.call("POST", "/api/device", json=one))[0] == 201
    # same MAC in another spelling
    status, body = await api.call("POST", "/api/device", json={
        **one, "device_name": "other", "device_mac": "d0-61-ae-d4-58-94"})
    assert status == 409 and "device_mac" in body["message"]
    # same name
    status, body = await api.call("POST", "/api/device", json={**one, "device_mac": "D0:61:AE:D4:58:95"})
    assert status == 409 and "device_name" in body["message"]
    # duplicates within one array
    dup = [{**one, "device_name": "A", "device_mac": "D0:61:AE:00:00:0A"},
           {**one, "device_name": "A", "device_mac": "D0:61:AE:00:00:0B"}]
    status, body = await api.call("POST", "/api/devices", json=dup)
    assert status == 409 and "item 1" in body["message"]
    assert (await api.get("/api/devices"))[1]["data"]["totaldata"] == 1


async def test_update_delete_and_404(api: Api) -> None:
    status, body = await api.call("POST", "/api/device", json={
        "device_name": "E86 0010", "device_mac": "D0:61:AE:00:00:10", "device_type": "CONSUMER",
        "device_holder": "unknown"})
    dev_id = body["data"]["id"]
    status, body = await api.call("PUT", f"/api/device/{dev_id}", json={
        "device_name": "E86 0010", "device_mac": "D0:61:AE:00:00:10", "device_type": "corporate",
        "device_holder": "RS Harapan", "user_code": "AMSe5Sn8Gkxj7"})
    assert status == 200, body
    assert body["data"]["device_type"] == "CORPORATE"
    assert body["data"]["user_code"] == "AMSe5Sn8Gkxj7"
    assert body["data"]["user_code_source"] == "api"
    status, body = await api.call("DELETE", f"/api/device/{dev_id}")
    assert status == 200
    for method in ("GET", "PUT", "DELETE"):
        status, body = await api.call(method, f"/api/device/{dev_id}", json={})
        assert status == 404, method
        assert body == {"code": 404, "success": False, "message": f"device {dev_id} not found"}
    status, body = await api.get("/api/device/abc")
    assert status == 422 and "id_device" in body["message"]


async def test_bad_json_and_wrong_shapes(api: Api) -> None:
    status, body = await api.call("POST", "/api/devices", data=b"{not json",
                                  headers={"Content-Type": "application/json"})
    assert status == 422 and "body" in body["message"]
    status, body = await api.call("POST", "/api/devices", json={"device_name": "x"})
    assert status == 422 and "array" in body["message"]
    status, body = await api.call("POST", "/api/devices", json=[])
    assert status == 422
    status, body = await api.get("/api/devices", size="many")
    assert status == 422 and "size" in body["message"]


async def test_auth_required(svc: RunningService) -> None:
    async with Api(svc.url, key=None) as anon:
        for path in ("/api/devices", "/api/device/1", "/ews/AMSe5Sn8Gkxj7",
                     "/api/medical-record/AMSe5Sn8Gkxj7/latest"):
            status, body = await anon.get(path)
            assert status == 401, path
            assert body["code"] == 401 and body["success"] is False
        status, body = await anon.call("GET", "/api/devices", headers={"x-api-key": "wrong"})
        assert status == 401 and body["message"] == "invalid API key"
        status, _ = await anon.call("GET", "/api/devices",
                                    headers={"Authorization": "Bearer test-key-0123456789abcdef"})
        assert status == 200
        # open routes
        assert (await anon.get("/healthz"))[0] == 200
        assert (await anon.get("/openapi.json"))[0] == 200
        status, text = await anon.get("/metrics")
        assert status == 200 and "vitalgate_ingest_messages_total" in text


async def test_stored_keys_and_revocation(svc: RunningService) -> None:
    from ingest import keys

    db = svc.service.db
    key = db.write_sync(lambda c: keys.create(c, "console", 1, ["admin"]))
    async with Api(svc.url, key=key) as client:
        assert (await client.get("/api/devices"))[0] == 200
        assert db.write_sync(lambda c: keys.revoke(c, "console", 2))
        svc.service.checker.forget()  # drop the 1 s cache instead of waiting for it
        assert (await client.get("/api/devices"))[0] == 401


async def test_unknown_route_and_method_are_cexup_json(api: Api) -> None:
    status, body = await api.get("/api/nothing-here")
    assert status == 404 and body["success"] is False and body["code"] == 404
    status, body = await api.call("PATCH", "/api/devices")
    assert status == 405 and body["code"] == 405


@pytest.mark.usefixtures("ingest_engine")
async def test_serves_http_while_broker_is_down(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "data", f"mqtt://127.0.0.1:{free_port()}")
    async with running(settings) as service, Api(service.url) as api:
        status, body = await api.get("/healthz")
        assert (await api.get("/api/devices"))[0] == 200
    assert status == 200
    assert body["data"]["mqtt"]["connected"] is False
    assert body["data"]["store"]["ok"] is True
    assert body["data"]["status"] == "degraded"


async def test_openapi_lists_routes_and_security(api: Api) -> None:
    status, doc = await api.get("/openapi.json")
    assert status == 200
    assert doc["openapi"].startswith("3.")
    assert doc["components"]["securitySchemes"]["ApiKeyAuth"]["name"] == "x-api-key"
    for path in ("/api/devices", "/api/device/{id_device}", "/api/medical-records/{user_code}",
                 "/api/medical-record/{user_code}/latest", "/ews/{user_code}", "/healthz"):
        assert path in doc["paths"], path
    assert doc["paths"]["/api/devices"]["get"]["security"]
    json.dumps(doc)
