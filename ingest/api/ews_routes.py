"""EWS routes: Cexup's EWS API (POST /ews, GET /ews/{user_code}, GET /ews/history/{user_code})
and vitalgate's own (patient context, all current scores, outbox state).

The service puts the engine under ``ENGINE_KEY`` and, when delivering upstream, the outbox under
``OUTBOX_KEY``. Authentication is the API middleware's business, not this module's.
"""

from __future__ import annotations

import json
from typing import Any, Final

from aiohttp import web

from ingest.api import ENGINE_KEY
from ingest.api.envelope import ApiError, ok, page_params, paged
from ingest.ews_engine import EwsEngine, EwsInputError
from ingest.outbox import Outbox
from vitalgate.contract import USER_CODE_RE

#: the EWS outbox of the running service (absent: no delivery task).
OUTBOX_KEY: Final = web.AppKey("ews_outbox", Outbox)


def _engine(request: web.Request) -> EwsEngine:
    return request.app[ENGINE_KEY]


def _user_code(request: web.Request) -> str:
    code = request.match_info["user_code"]
    if not USER_CODE_RE.match(code):
        raise ApiError(422, f"user_code must match {USER_CODE_RE.pattern}, got {code!r}")
    return code


async def _json(request: web.Request) -> Any:
    try:
        return await request.json(loads=json.loads)
    except ValueError as exc:
        raise ApiError(422, f"body: not valid JSON ({exc})") from None


async def post_ews(request: web.Request) -> web.Response:
    """A score made elsewhere, in Cexup's body."""
    body = await _json(request)
    try:
        point = _engine(request).record_external(body)
    except EwsInputError as exc:
        raise ApiError(422, str(exc)) from None
    return ok(point.to_api())


async def get_current(request: web.Request) -> web.Response:
    code = _user_code(request)
    point = _engine(request).current(code)
    if point is None:
        raise ApiError(404, f"no EWS for user_code {code!r}")
    return ok(point.to_api())


async def get_history(request: web.Request) -> web.Response:
    code = _user_code(request)
    page, size = page_params(request, size_names=("size", "data", "length"))
    points, total = _engine(request).history(code, page=page, size=size)
    return paged([p.to_api() for p in points], page=page, size=size, total=total)


async def put_context(request: web.Request) -> web.Response:
    code = _user_code(request)
    body = await _json(request)
    if not isinstance(body, dict):
        raise ApiError(422, "body: must be a JSON object")
    engine = _engine(request)
    current = engine.get_context(code)
    try:
        emitted = engine.set_context(
            code,
            consciousness=body.get("consciousness", current["consciousness"]),
            on_oxygen=body.get("on_oxygen", current["on_oxygen"]),
            spo2_scale=body.get("spo2_scale", current["spo2_scale"]),
        )
    except EwsInputError as exc:
        raise ApiError(422, str(exc)) from None
    data = engine.get_context(code)
    data["ews"] = emitted.to_api() if emitted is not None else None
    return ok(data)


async def get_context(request: web.Request) -> web.Response:
    return ok(_engine(request).get_context(_user_code(request)))


async def get_all(request: web.Request) -> web.Response:
    engine = _engine(request)
    return ok({"counts": engine.counts_by_result(),
               "patients": [p.to_api() for p in engine.all_current()]})


async def get_outbox(request: web.Request) -> web.Response:
    outbox = request.app.get(OUTBOX_KEY)
    if outbox is None:
        return ok({"enabled": False, "stats": {}, "failed": []})
    limit = _limit(request)
    return ok({"enabled": outbox.enabled, "stats": outbox.stats(), "failed": outbox.failed(limit)})


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= 500:
        raise ApiError(422, f"query parameter 'limit' must be an integer 1..500, got {raw!r}")
    return int(raw)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/ews", post_ews)
    app.router.add_get("/ews/history/{user_code}", get_history)
    app.router.add_get("/ews/{user_code}", get_current)
    app.router.add_put("/api/patient/{user_code}/context", put_context)
    app.router.add_get("/api/patient/{user_code}/context", get_context)
    app.router.add_get("/api/ews/outbox", get_outbox)
    app.router.add_get("/api/ews", get_all)


# ------------------------------------------------------------------------ OpenAPI


def _envelope(data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {
        "code": {"type": "integer"}, "success": {"type": "boolean"}, "message": {"type": "string"},
        "data": data}}


_USER_CODE_PARAM: Final = {"name": "user_code", "in": "path", "required": True,
                           "schema": {"type": "string", "pattern": USER_CODE_RE.pattern}}
_EWS_BODY: Final = {
    "type": "object", "required": ["user_code", "point", "result", "produce_at"],
    "properties": {
        "user_code": {"type": "string", "example": "AMSe5Sn8Gkxj7"},
        "point": {"type": "integer", "minimum": 0, "maximum": 30, "example": 3},
        "result": {"type": "string", "enum": ["normal", "rendah", "sedang", "tinggi"]},
        "produce_at": {"oneOf": [{"type": "string", "pattern": "^[0-9]+$"}, {"type": "integer"}],
                       "description": "epoch milliseconds", "example": "1632889813001"},
        "cause": {"type": "array", "items": {"type": "string"}},
    },
}
_EWS_ITEM: Final = {
    "type": "object",
    "properties": {
        "user_code": {"type": "string"}, "point": {"type": "integer"},
        "result": {"type": "string", "enum": ["normal", "rendah", "sedang", "tinggi"]},
        "cause": {"type": "array", "items": {"type": "string"}},
        "produce_at": {"type": "integer", "description": "epoch ms of the newest vital used"},
        "risk": {"type": "string", "enum": ["low", "low-medium", "medium", "high"]},
        "partial": {"type": "boolean"}, "missing": {"type": "array", "items": {"type": "string"}},
        "components": {"type": "object", "additionalProperties": {"type": "integer"}},
        "valid": {"type": "boolean", "description": "false: no fresh vitals back this score now"},
        "reason": {"type": "string"}, "trigger": {"type": "string"},
        "source": {"type": "string", "enum": ["vitalgate", "external"]},
    },
}
_CONTEXT: Final = {
    "type": "object",
    "properties": {
        "consciousness": {"type": "string", "enum": ["A", "C", "V", "P", "U"]},
        "on_oxygen": {"type": "boolean"},
        "spo2_scale": {"type": "integer", "enum": [1, 2]},
    },
}
_422: Final = {"description": "invalid input; the message names the field"}

#: OpenAPI 3 path items of these routes.
OPENAPI_PATHS: Final[dict[str, Any]] = {
    "/ews": {"post": {
        "summary": "Record an EWS made elsewhere (Cexup body)", "tags": ["ews"],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _EWS_BODY}}},
        "responses": {"200": {"description": "recorded",
                              "content": {"application/json": {"schema": _envelope(_EWS_ITEM)}}},
                      "422": _422},
    }},
    "/ews/{user_code}": {"get": {
        "summary": "The patient's current EWS", "tags": ["ews"], "parameters": [_USER_CODE_PARAM],
        "responses": {"200": {"description": "current EWS",
                              "content": {"application/json": {"schema": _envelope(_EWS_ITEM)}}},
                      "404": {"description": "no EWS for this patient"}},
    }},
    "/ews/history/{user_code}": {"get": {
        "summary": "The patient's EWS points, newest first", "tags": ["ews"],
        "parameters": [
            _USER_CODE_PARAM,
            {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1}},
            {"name": "size", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
            {"name": "data", "in": "query", "description": "page length (Cexup apps' name)",
             "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
        ],
        "responses": {"200": {"description": "a page", "content": {"application/json": {
            "schema": _envelope({"type": "object", "properties": {
                "page": {"type": "integer"}, "size": {"type": "integer"},
                "totalpage": {"type": "integer"}, "totaldata": {"type": "integer"},
                "data": {"type": "array", "items": _EWS_ITEM}}})}}},
            "422": _422},
    }},
    "/api/patient/{user_code}/context": {
        "put": {
            "summary": "Set the clinical context (ACVPU, oxygen, SpO2 scale); rescored at once",
            "tags": ["ews"], "parameters": [_USER_CODE_PARAM],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _CONTEXT}}},
            "responses": {"200": {"description": "the context in force and the EWS emitted, if any"},
                          "422": _422},
        },
        "get": {
            "summary": "The clinical context in force (defaults: A, air, scale 1, assumed=true)",
            "tags": ["ews"], "parameters": [_USER_CODE_PARAM],
            "responses": {"200": {"description": "context", "content": {"application/json": {
                "schema": _envelope(_CONTEXT)}}}},
        },
    },
    "/api/ews": {"get": {
        "summary": "Current EWS of every patient and counts per result word", "tags": ["ews"],
        "responses": {"200": {"description": "all current scores"}},
    }},
    "/api/ews/outbox": {"get": {
        "summary": "Delivery to the Cexup platform: queue depth, counters, recent failures",
        "tags": ["ews"],
        "parameters": [{"name": "limit", "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 500}}],
        "responses": {"200": {"description": "outbox state"}},
    }},
}
