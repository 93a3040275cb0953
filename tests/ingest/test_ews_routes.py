"""The EWS routes over real HTTP on loopback, in a small app built with add_routes + the envelope."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from ingest.api import ENGINE_KEY
from ingest.api.envelope import ApiError, fail
from ingest.api.ews_routes import OPENAPI_PATHS, OUTBOX_KEY, add_routes
from ingest.ews_engine import EwsEngine
from ingest.outbox import Outbox
from tests.ingest.upstream import FakeTime
from vitalgate.broker import free_port

#: the body of "POST EWS" in seed 000 (the Cexup API page), verbatim.
SEED_BODY = """{
    "user_code":"AMSe5Sn8Gkxj7",
    "point": 3,
    "result":"sedang",
    "produce_at": "1632889813001"
}"""


@web.middleware
async def errors(request: web.Request,
                 handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return fail(exc.status, exc.message)


@dataclass
class Api:
    url: str
    http: aiohttp.ClientSession
    engine: EwsEngine
    clock: FakeTime

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        async with self.http.request(method, self.url + path, **kw) as resp:
            return resp.status, await resp.json()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    clock = FakeTime()
    db = tmp_path / "ews.sqlite3"
    engine = EwsEngine(db, clock=clock)
    outbox = Outbox(db, upstream_url="http://127.0.0.1:9", api_key="k", clock=clock)
    app = web.Application(middlewares=[errors])
    app[ENGINE_KEY] = engine
    app[OUTBOX_KEY] = outbox
    add_routes(app)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    async with aiohttp.ClientSession() as http:
        yield Api(f"http://127.0.0.1:{port}", http, engine, clock)
    await runner.cleanup()
    outbox.close()
    engine.close()


async def test_seed_body_verbatim_then_current_and_history(api: Api) -> None:
    status, body = await api.call("POST", "/ews", data=SEED_BODY,
                                  headers={"content-type": "application/json", "x-api-key": "x"})
    assert status == 200 and body["code"] == 200 and body["success"] is True
    assert body["data"]["produce_at"] == 1632889813001 and body["data"]["result"] == "sedang"
    status, body = await api.call("GET", "/ews/AMSe5Sn8Gkxj7")
    assert status == 200
    data = body["data"]
    assert {k: data[k] for k in ("user_code", "point", "result", "cause", "produce_at")} == {
        "user_code": "AMSe5Sn8Gkxj7", "point": 3, "result": "sedang", "cause": [],
        "produce_at": 1632889813001}
    status, body = await api.call("GET", "/ews/nobody")
    assert status == 404 and body["code"] == 404 and "nobody" in body["message"]


async def test_history_pages_with_size_or_data(api: Api) -> None:
    for rr in (16.0, 22.0, 25.0, 10.0, 18.0):  # five different scores, a minute apart
        api.engine.observe([("P1", "respiratory_rate", rr, api.clock.now)])
        api.clock.advance(60_000)
    status, body = await api.call("GET", "/ews/history/P1?page=1&data=2")
    assert status == 200
    page = body["data"]
    assert page["totaldata"] == 5 and page["totalpage"] == 3 and len(page["data"]) == 2
    assert page["data"][0]["produce_at"] > page["data"][1]["produce_at"]  # newest first
    status, body = await api.call("GET", "/ews/history/P1?page=3&size=2")
    assert len(body["data"]["data"]) == 1
    status, body = await api.call("GET", "/ews/history/P1?size=0")
    assert status == 422 and "size" in body["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_code": "AMSe5Sn8Gkxj7", "point": "three", "result": "sedang", "produce_at": "1"}, "point"),
        ({"user_code": "AMSe5Sn8Gkxj7", "point": 3, "result": "medium", "produce_at": "1"}, "result"),
        ({"user_code": "AMSe5Sn8Gkxj7", "point": 3, "result": "sedang"}, "produce_at"),
        ({"point": 3, "result": "sedang", "produce_at": "1"}, "user_code"),
    ],
)
async def test_post_ews_rejects_bad_fields_by_name(api: Api, body: dict[str, Any], field: str) -> None:
    status, answer = await api.call("POST", "/ews", json=body)
    assert status == 422 and answer["code"] == 422 and answer["message"].startswith(field)


async def test_post_ews_rejects_non_json(api: Api) -> None:
    status, answer = await api.call("POST", "/ews", data="{nope",
                                    headers={"content-type": "application/json"})
    assert status == 422 and "JSON" in answer["message"]


async def test_context_put_get_rescoring_and_422(api: Api) -> None:
    now = api.clock.now
    api.engine.observe([("P1", k, v, now) for k, v in
                        {"heart_rate": 72.0, "spo2": 98.0, "respiratory_rate": 16.0}.items()])
    status, body = await api.call("GET", "/api/patient/P1/context")
    assert body["data"] == {"user_code": "P1", "consciousness": "A", "on_oxygen": False,
                            "spo2_scale": 1, "assumed": True}
    api.clock.advance(1_000)
    status, body = await api.call("PUT", "/api/patient/P1/context",
                                  json={"consciousness": "A", "on_oxygen": True, "spo2_scale": 1})
    assert status == 200 and body["data"]["on_oxygen"] is True
    assert body["data"]["ews"]["point"] == 2  # oxygen adds 2, emitted at once
    status, body = await api.call("GET", "/ews/P1")
    assert body["data"]["point"] == 2 and body["data"]["components"]["oxygen"] == 2
    for bad, field in [({"consciousness": "Z"}, "consciousness"), ({"on_oxygen": "yes"}, "on_oxygen"),
                       ({"spo2_scale": 3}, "spo2_scale")]:
        status, body = await api.call("PUT", "/api/patient/P1/context", json=bad)
        assert status == 422 and body["message"].startswith(field)
    status, body = await api.call("PUT", "/api/patient/P1/context", json=[1])
    assert status == 422 and "body" in body["message"]
    status, body = await api.call("GET", "/api/patient/P1/context")
    assert body["data"]["on_oxygen"] is True and body["data"]["assumed"] is False


async def test_dashboard_list_and_outbox_state(api: Api) -> None:
    api.engine.observe([("P1", "respiratory_rate", 26.0, api.clock.now),
                        ("P2", "respiratory_rate", 16.0, api.clock.now)])
    status, body = await api.call("GET", "/api/ews")
    assert status == 200
    assert [p["user_code"] for p in body["data"]["patients"]] == ["P1", "P2"]
    assert body["data"]["counts"] == {"normal": 1, "rendah": 0, "sedang": 1, "tinggi": 0, "stale": 0}
    status, body = await api.call("GET", "/api/ews/outbox?limit=5")
    assert status == 200 and body["data"]["enabled"] is True
    assert body["data"]["stats"]["depth"] == 2 and body["data"]["failed"] == []
    status, body = await api.call("GET", "/api/ews/outbox?limit=x")
    assert status == 422 and "limit" in body["message"]


def test_openapi_paths_cover_every_route() -> None:
    app = web.Application()
    add_routes(app)
    routes = {(r.method.lower(), r.resource.canonical) for r in app.router.routes()  # type: ignore[union-attr]
              if r.method != "HEAD"}
    documented = {(m, path) for path, item in OPENAPI_PATHS.items() for m in item}
    assert routes == documented
