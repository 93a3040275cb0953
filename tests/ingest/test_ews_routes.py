"""The EWS routes over real HTTP on loopback, in a small app built with add_routes + the envelope."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.api.appkeys import ENGINE_KEY
from ingest.api.envelope import ApiError, fail
from ingest.api.ews_routes import OPENAPI_PATHS, OUTBOX_KEY, add_routes
from ingest.db import ews as ews_store
from ingest.ews_engine import EwsEngine, EwsInputError, parse_external, results_for
from ingest.outbox import Outbox
from tests.ingest.upstream import FakeTime
from vitalgate.broker import free_port
from vitalgate.contract import USER_CODE_RE

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
async def api(database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    clock = FakeTime()
    db = ews_store.open_store(database_url, tmp_path)  # both engines
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
    db.close()


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
    status, body = await api.call("GET", "/api/ews-summary")
    assert status == 200
    assert [p["user_code"] for p in body["data"]["patients"]] == ["P1", "P2"]
    assert body["data"]["counts"] == {"normal": 1, "rendah": 0, "sedang": 1, "tinggi": 0, "stale": 0}
    status, body = await api.call("GET", "/api/outbox?limit=5")
    assert status == 200 and body["data"]["enabled"] is True
    assert body["data"]["stats"]["depth"] == 2 and body["data"]["failed"] == []
    status, body = await api.call("GET", "/api/outbox?limit=x")
    assert status == 422 and "limit" in body["message"]


def test_openapi_paths_cover_every_route() -> None:
    app = web.Application()
    add_routes(app)
    routes = {(r.method.lower(), r.resource.canonical) for r in app.router.routes()  # type: ignore[union-attr]
              if r.method != "HEAD"}
    documented = {(m, path) for path, item in OPENAPI_PATHS.items() for m in item}
    assert routes == documented


# ------------------------------------------------------------------ the EWS API as Cexup calls it


def body_at(produce_at: int, point: int = 3, result: str = "sedang", **extra: Any) -> dict[str, Any]:
    return {"user_code": "AMSe5Sn8Gkxj7", "point": point, "result": result,
            "produce_at": str(produce_at), **extra}


@pytest.mark.parametrize("base", ["", "/api"])
async def test_root_and_api_paths_behave_the_same(api: Api, base: str) -> None:
    """Cexup's base URL ends in /api: {base}/ews, {base}/ews/{user_code}, {base}/ews/history/..."""
    at = api.clock.now - 60_000
    status, body = await api.call("POST", f"{base}/ews", data=SEED_BODY.replace(
        "1632889813001", str(at)), headers={"content-type": "application/json"})
    assert status == 200 and body["data"]["produce_at"] == at
    for path in (f"{base}/ews/AMSe5Sn8Gkxj7", "/ews/AMSe5Sn8Gkxj7", "/api/ews/AMSe5Sn8Gkxj7"):
        status, got = await api.call("GET", path)
        assert status == 200 and got["data"] == body["data"]
    for path in ("/ews/history/AMSe5Sn8Gkxj7", "/api/ews/history/AMSe5Sn8Gkxj7"):
        status, got = await api.call("GET", path)
        assert status == 200 and [p["produce_at"] for p in got["data"]["data"]] == [at]
    status, got = await api.call("GET", f"{base}/ews/nobody")
    assert status == 404
    status, got = await api.call("POST", f"{base}/ews", json=body_at(at, point=1))
    assert status == 422


async def test_post_is_idempotent_one_history_row(api: Api) -> None:
    at = api.clock.now - 1_000
    first = await api.call("POST", "/ews", json=body_at(at))
    again = await api.call("POST", "/api/ews", json=body_at(at))  # a retried POST, other path
    assert first[0] == again[0] == 200 and first[1]["data"] == again[1]["data"]
    _, body = await api.call("GET", "/ews/history/AMSe5Sn8Gkxj7")
    assert body["data"]["totaldata"] == 1
    # a different point at the same time is another row (a correction), not a duplicate
    await api.call("POST", "/ews", json=body_at(at, point=5))
    _, body = await api.call("GET", "/ews/history/AMSe5Sn8Gkxj7")
    assert body["data"]["totaldata"] == 2


@pytest.mark.parametrize(
    ("point", "result", "components", "accepted"),
    [
        (0, "normal", None, True), (0, "rendah", None, False),
        (1, "rendah", None, True), (2, "sedang", None, False),  # a single 3 needs a total ≥ 3
        (3, "rendah", None, True), (3, "sedang", None, True),   # the seed: only components tell
        (4, "sedang", {"respiratory_rate": 3, "heart_rate": 1}, True),
        (4, "rendah", {"respiratory_rate": 3, "heart_rate": 1}, False),
        (4, "sedang", {"respiratory_rate": 2, "heart_rate": 2}, False),
        (4, "rendah", {"respiratory_rate": 2, "heart_rate": 2}, True),
        (5, "sedang", None, True), (6, "rendah", None, False), (6, "tinggi", None, False),
        (7, "tinggi", None, True), (7, "sedang", None, False), (20, "tinggi", None, True),
        (1, "normal", None, False),
    ],
)
async def test_point_and_result_agree_with_the_chart(
    api: Api, point: int, result: str, components: dict[str, int] | None, accepted: bool
) -> None:
    extra = {"components": components} if components is not None else {}
    status, body = await api.call("POST", "/ews", json=body_at(api.clock.now, point, result, **extra))
    if accepted:
        assert status == 200, body
        assert body["data"]["components"] == (components or {})
    else:
        assert status == 422
        assert body["message"].startswith("point, result") and "result" in body["message"]
        status, hist = await api.call("GET", "/ews/history/AMSe5Sn8Gkxj7")
        assert hist["data"]["totaldata"] == 0  # nothing committed before validation completed


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"point": 21, "result": "tinggi"}, "point"),  # above NEWS2's maximum total, 20
        ({"point": "²", "result": "rendah"}, "point"),  # isdigit() but not int()
        ({"point": "1", "result": "rendah", "user_code": "AMSe5Sn8Gkxj7\n"}, "user_code"),
        ({"point": 1, "result": "rendah", "produce_at": "²"}, "produce_at"),
        ({"point": 4, "result": "rendah", "components": {"respiratory_rate": 2}}, "point, components"),
        ({"point": 3, "result": "sedang", "components": {"respiratory_rate": 4}}, "components"),
        ({"point": 3, "result": "sedang", "cause": ["x" * 129]}, "cause"),
        ({"point": 3, "result": "sedang", "cause": ["x"] * 17}, "cause"),
    ],
)
async def test_post_ews_bounds(api: Api, body: dict[str, Any], field: str) -> None:
    full = {**body_at(api.clock.now), **body}
    status, answer = await api.call("POST", "/ews", json=full)
    assert status == 422 and answer["message"].startswith(field + ":"), answer


async def test_future_produce_at_is_refused_past_the_skew(api: Api) -> None:
    """Processing time from the injected clock; the default skew is 300 s."""
    now = api.clock.now
    status, body = await api.call("POST", "/ews", json=body_at(now + 300_000))
    assert status == 200
    status, body = await api.call("POST", "/ews", json=body_at(now + 300_001, point=7, result="tinggi"))
    assert status == 422 and body["message"].startswith("produce_at")
    api.clock.advance(1)  # the same body is fine once the clock caught up
    status, body = await api.call("POST", "/ews", json=body_at(now + 300_001, point=7, result="tinggi"))
    assert status == 200


async def test_history_by_produce_at_with_from_and_to(api: Api) -> None:
    base = api.clock.now - 10 * 60_000
    # posted out of order: history is by produce_at, newest first, not by arrival
    for minute in (3, 1, 4, 0, 2):
        point = minute + 1
        status, _ = await api.call("POST", "/ews", json=body_at(
            base + minute * 60_000, point=point, result="rendah" if point <= 4 else "sedang"))
        assert status == 200
    status, body = await api.call("GET", "/ews/history/AMSe5Sn8Gkxj7")
    assert [p["point"] for p in body["data"]["data"]] == [5, 4, 3, 2, 1]
    q = f"from={base + 60_000}&to={base + 3 * 60_000}"
    status, body = await api.call("GET", f"/api/ews/history/AMSe5Sn8Gkxj7?{q}&size=2&page=1")
    page = body["data"]
    assert [p["point"] for p in page["data"]] == [4, 3]
    assert page["totaldata"] == 3 and page["totalpage"] == 2
    status, body = await api.call("GET", f"/api/ews/history/AMSe5Sn8Gkxj7?{q}&size=2&page=2")
    assert [p["point"] for p in body["data"]["data"]] == [2]
    for bad in ("from=x", "to=²", f"from={base}&to={base - 1}", "from=-1"):
        status, body = await api.call("GET", f"/ews/history/AMSe5Sn8Gkxj7?{bad}")
        assert status == 422 and ("from" in body["message"] or "to" in body["message"]), bad


async def test_limit_and_user_code_edge_cases_are_422_not_500(api: Api) -> None:
    status, body = await api.call("GET", "/api/outbox?limit=²")
    assert status == 422 and "limit" in body["message"]
    status, body = await api.call("GET", "/ews/AMSe5Sn8Gkxj7%0A")
    assert status == 422 and "user_code" in body["message"]
    status, body = await api.call("GET", "/ews/history/AMSe5Sn8Gkxj7%0A")
    assert status == 422


async def test_deep_json_is_422(api: Api) -> None:
    for raw in ("[" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000):
        status, body = await api.call("POST", "/ews", data=raw,
                                      headers={"content-type": "application/json"})
        assert status == 422 and "nested" in body["message"]
        status, body = await api.call("PUT", "/api/patient/P1/context", data=raw,
                                      headers={"content-type": "application/json"})
        assert status == 422 and "nested" in body["message"]


async def test_context_refuses_unknown_fields(api: Api) -> None:
    status, body = await api.call("PUT", "/api/patient/P1/context", json={"oxygen": True})
    assert status == 422 and "'oxygen'" in body["message"]


_ANY = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=5),
    max_leaves=20,
)
_FIELD_VALUES = {
    "user_code": st.sampled_from(["AMSe5Sn8Gkxj7", "a b", "x\n", "", "A" * 65]) | _ANY,
    "point": st.integers(-3, 40) | st.sampled_from(["3", "²", " 4 ", "1e1", "3.0"]) | _ANY,
    "result": st.sampled_from(["normal", "rendah", "sedang", "tinggi", "high"]) | _ANY,
    "produce_at": st.integers(-1, 10**15) | st.sampled_from(["1632889813001", "²", ""]) | _ANY,
    "cause": st.lists(st.text(max_size=200), max_size=20) | _ANY,
    "components": st.dictionaries(st.sampled_from(["respiratory_rate", "spo2", "Bad Name"]),
                                  st.integers(-1, 4), max_size=4) | _ANY,
}


@given(st.fixed_dictionaries({}, optional=_FIELD_VALUES) | _ANY)
@settings(max_examples=400, deadline=None)
def test_parse_external_accepts_or_names_a_field_never_crashes(body: Any) -> None:
    """Any body: either a consistent, bounded score or EwsInputError naming a field."""
    try:
        user_code, point, result, cause, produce_at = parse_external(
            body, max_point=20, now_ms=1_700_000_000_000, max_future_ms=300_000)
    except EwsInputError as exc:
        assert exc.field.split(", ")[0] in ("body", *_FIELD_VALUES), exc.field
        return
    assert USER_CODE_RE.fullmatch(user_code)
    assert 0 <= point <= 20 and result in results_for(point)
    assert 0 <= produce_at <= 1_700_000_300_000
    assert len(cause) <= 16 and all(len(c) <= 128 for c in cause)
