"""EWS routes: Cexup's EWS API and vitalgate's own (patient context, all current scores, outbox).

Cexup's EWS API is served twice, with the same behaviour: at the root (``POST /ews``,
``GET /ews/{user_code}``, ``GET /ews/history/{user_code}``) and under ``/api`` (Cexup's base
URL ends in ``/api``, so its clients call ``{base}/ews``). The ward summary is
``GET /api/ews-summary`` and the delivery state ``GET /api/outbox`` (neither can collide with
a user_code under ``/api/ews/``).

``POST /ews`` is idempotent: the same (user_code, point, result, produce_at) twice is one
history row. ``point`` must agree with ``result`` on the chart (see
:func:`ingest.ews_engine.results_for`), be at most the chart's maximum, and ``produce_at``
may be at most ``max_future_skew_s`` after the service clock.

Routes that read or write the EWS store (history, context, external points, outbox) run the
engine's call in a worker thread: the event loop never waits on the disk or the server.

The service puts the engine under ``ENGINE_KEY`` and, when delivering upstream, the outbox under
``OUTBOX_KEY``. Authentication and scopes are the API middleware's business
(:mod:`ingest.api.auth`); holder limits are :mod:`ingest.api.scoping`'s.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from aiohttp import web

from ews.score import RESULTS, RISK_ORDER
from ingest.api.appkeys import ENGINE_KEY, SETTINGS_KEY
from ingest.api.envelope import (
    ApiError,
    int_text,
    ok,
    page_params,
    paged,
    read_json,
    user_code_param,
)
from ingest.api.openapi import USER_CODE_PATH, envelope, errors, page_of, strict
from ingest.api.scoping import require_patient, visible_patients
from ingest.ews_engine import MAX_MS, EwsEngine, EwsInputError, EwsPoint, parse_external
from ingest.outbox import Outbox
from vitalgate.contract import USER_CODE_RE

#: the EWS outbox of the running service (absent: no delivery task).
OUTBOX_KEY: Final = web.AppKey("ews_outbox", Outbox)
#: the fields of PUT /api/patient/{user_code}/context (any other is refused).
CONTEXT_FIELDS: Final = ("consciousness", "on_oxygen", "spo2_scale")
#: POST /ews's future bound when the app has no settings (s; the setting's default).
DEFAULT_FUTURE_SKEW_S: Final = 300.0


def _engine(request: web.Request) -> EwsEngine:
    return request.app[ENGINE_KEY]


def _future_ms(request: web.Request) -> int:
    settings = request.app.get(SETTINGS_KEY)
    skew = settings.max_future_skew_s if settings is not None else DEFAULT_FUTURE_SKEW_S
    return int(skew * 1000)


async def post_ews(request: web.Request) -> web.Response:
    """A score made elsewhere, in Cexup's body. Validated completely before anything is stored."""
    body = await read_json(request)
    try:  # the shape first (pure), for the holder check; record_external checks it all again
        user_code = parse_external(body)[0]
    except EwsInputError as exc:
        raise ApiError(422, str(exc)) from None
    await require_patient(request, user_code)
    try:
        point = await asyncio.to_thread(_engine(request).record_external, body,
                                        max_future_ms=_future_ms(request))
    except EwsInputError as exc:
        raise ApiError(422, str(exc)) from None
    return ok(point.to_api())


async def get_current(request: web.Request) -> web.Response:
    code = user_code_param(request)
    await require_patient(request, code)
    point = _engine(request).current(code)
    if point is None:
        raise ApiError(404, f"no EWS for user_code {code!r}")
    return ok(point.to_api())


def _ms_param(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    value = int_text(raw)
    if value is None or not 0 <= value <= MAX_MS:
        raise ApiError(422, f"query parameter {name!r} must be epoch milliseconds 0..{MAX_MS}, "
                            f"got {raw!r}")
    return value


async def get_history(request: web.Request) -> web.Response:
    code = user_code_param(request)
    start = _ms_param(request, "from", 0)
    end = _ms_param(request, "to", MAX_MS)
    if start > end:
        raise ApiError(422, f"query parameter 'from' ({start}) is after 'to' ({end})")
    page, size = page_params(request, size_names=("size", "data", "length"))
    await require_patient(request, code)
    points, total = await asyncio.to_thread(_engine(request).history, code, page=page, size=size,
                                            start=start, end=end)
    return paged([p.to_api() for p in points], page=page, size=size, total=total)


async def put_context(request: web.Request) -> web.Response:
    code = user_code_param(request)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(422, "body: must be a JSON object")
    unknown = sorted(set(body) - set(CONTEXT_FIELDS))
    if unknown:
        raise ApiError(422, f"body: unknown field {', '.join(map(repr, unknown[:5]))}; "
                            "consciousness, on_oxygen and spo2_scale only")
    await require_patient(request, code)
    engine = _engine(request)
    current = engine.get_context(code)
    try:
        emitted = await asyncio.to_thread(
            engine.set_context, code,
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
    code = user_code_param(request)
    await require_patient(request, code)
    return ok(_engine(request).get_context(code))


def _counts(points: list[EwsPoint]) -> dict[str, int]:
    counts = dict.fromkeys((*RESULTS, "stale"), 0)
    for p in points:
        counts[p.result if p.valid else "stale"] += 1
    return counts


async def get_summary(request: web.Request) -> web.Response:
    """Every (visible) patient's current score and the count per result word."""
    points = _engine(request).all_current()
    visible = await visible_patients(request)
    if visible is not None:
        points = [p for p in points if p.user_code in visible]
    return ok({"counts": _counts(points), "patients": [p.to_api() for p in points]})


async def get_outbox(request: web.Request) -> web.Response:
    limit = _limit(request)
    outbox = request.app.get(OUTBOX_KEY)
    if outbox is None:
        return ok({"enabled": False, "stats": {}, "failed": []})
    stats, failed = await asyncio.to_thread(lambda: (outbox.stats(), outbox.failed(limit)))
    return ok({"enabled": outbox.enabled, "stats": stats, "failed": failed})


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "20")
    value = int_text(raw)
    if value is None or not 1 <= value <= 500:
        raise ApiError(422, f"query parameter 'limit' must be an integer 1..500, got {raw!r}")
    return value


def add_routes(app: web.Application) -> None:
    for base in ("", "/api"):
        app.router.add_post(f"{base}/ews", post_ews)
        app.router.add_get(f"{base}/ews/history/{{user_code}}", get_history)
        app.router.add_get(f"{base}/ews/{{user_code}}", get_current)
    app.router.add_put("/api/patient/{user_code}/context", put_context)
    app.router.add_get("/api/patient/{user_code}/context", get_context)
    app.router.add_get("/api/ews-summary", get_summary)
    app.router.add_get("/api/outbox", get_outbox)


# ------------------------------------------------------------------------ OpenAPI

_RESULT: Final = {"type": "string", "enum": list(RESULTS)}
_EWS_BODY: Final = {
    "type": "object", "required": ["user_code", "point", "result", "produce_at"],
    "description": "Cexup's body. point and result must agree on the chart: 0 normal; 1-2 "
                   "rendah; 3-4 rendah or sedang (sedang: a single parameter scores 3, decided "
                   "by components when sent); 5-6 sedang; 7+ tinggi. Unknown fields are ignored.",
    "properties": {
        "user_code": {"type": "string", "pattern": USER_CODE_RE.pattern, "example": "AMSe5Sn8Gkxj7"},
        "point": {"oneOf": [{"type": "integer", "minimum": 0, "maximum": 20},
                            {"type": "string", "pattern": "^[0-9]{1,2}$"}],
                  "description": "the total, at most the chart's maximum (NEWS2: 20)", "example": 3},
        "result": _RESULT,
        "produce_at": {"oneOf": [{"type": "string", "pattern": "^[0-9]{1,14}$"},
                                 {"type": "integer", "minimum": 0, "maximum": MAX_MS - 1}],
                       "description": "epoch milliseconds; at most max_future_skew_s ahead of "
                                      "the service clock", "example": "1632889813001"},
        "cause": {"type": "array", "maxItems": 16, "items": {"type": "string", "maxLength": 128}},
        "components": {"type": "object", "maxProperties": 16,
                       "description": "vitalgate extension: points of each parameter; their "
                                      "sum must be point",
                       "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 3}},
    },
}
_STR_LIST: Final = {"type": "array", "items": {"type": "string"}}
EWS_ITEM: Final = strict({
    "user_code": {"type": "string"}, "point": {"type": "integer", "minimum": 0},
    "result": _RESULT, "cause": _STR_LIST,
    "produce_at": {"type": "integer", "description": "epoch ms of the newest vital used"},
    "risk": {"type": "string", "enum": list(RISK_ORDER)},
    "partial": {"type": "boolean"}, "missing": _STR_LIST,
    "components": {"type": "object", "additionalProperties": {"type": "integer"}},
    "valid": {"type": "boolean", "description": "false: no fresh vitals back this score now"},
    "reason": {"type": "string"}, "trigger": {"type": "string"},
    "source": {"type": "string", "enum": ["vitalgate", "external"]},
})
_CONTEXT_PROPS: Final[dict[str, Any]] = {
    "consciousness": {"type": "string", "enum": ["A", "C", "V", "P", "U"]},
    "on_oxygen": {"type": "boolean"},
    "spo2_scale": {"type": "integer", "enum": [1, 2]},
}
_CONTEXT: Final = {"type": "object", "additionalProperties": False, "properties": _CONTEXT_PROPS}
_CONTEXT_OUT: Final = strict({"user_code": {"type": "string"}, **_CONTEXT_PROPS,
                              "assumed": {"type": "boolean"}})
_CONTEXT_PUT_OUT: Final = strict({**_CONTEXT_OUT["properties"],
                                  "ews": {**EWS_ITEM, "nullable": True}})
_MS: Final = {"type": "integer", "minimum": 0, "maximum": MAX_MS}
_COUNTS: Final = strict({k: {"type": "integer", "minimum": 0} for k in (*RESULTS, "stale")})


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _ok(desc: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"200": {"description": desc, **_json(envelope(data))}}


def _ews_paths(base: str, tag: str) -> dict[str, Any]:
    suffix = "Api" if base else ""
    return {
        f"{base}/ews": {"post": {
            "summary": "Record an EWS made elsewhere (Cexup body); idempotent", "tags": [tag],
            "operationId": f"postEws{suffix}",
            "requestBody": {"required": True, **_json(_EWS_BODY)},
            "responses": {**_ok("recorded (or already recorded: the same row)", EWS_ITEM),
                          **errors(404, 408, 413, 422)},
        }},
        f"{base}/ews/{{user_code}}": {"get": {
            "summary": "The patient's current EWS", "tags": [tag], "operationId": f"getEws{suffix}",
            "parameters": [USER_CODE_PATH],
            "responses": {**_ok("current EWS", EWS_ITEM), **errors(404, 422)},
        }},
        f"{base}/ews/history/{{user_code}}": {"get": {
            "summary": "The patient's EWS points, newest produce_at first", "tags": [tag],
            "operationId": f"getEwsHistory{suffix}",
            "parameters": [
                USER_CODE_PATH,
                {"name": "from", "in": "query", "description": "produce_at at least (epoch ms)",
                 "schema": _MS},
                {"name": "to", "in": "query", "description": "produce_at at most (epoch ms)",
                 "schema": _MS},
                {"$ref": "#/components/parameters/page"}, {"$ref": "#/components/parameters/size"},
                {"name": "data", "in": "query", "description": "page length (Cexup apps' name)",
                 "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
            ],
            "responses": {**_ok("a page", page_of(EWS_ITEM)), **errors(404, 422)},
        }},
    }


#: OpenAPI 3 path items of these routes.
OPENAPI_PATHS: Final[dict[str, Any]] = {
    **_ews_paths("", "ews"),
    **_ews_paths("/api", "ews"),
    "/api/patient/{user_code}/context": {
        "put": {
            "summary": "Set the clinical context (ACVPU, oxygen, SpO2 scale); rescored at once",
            "tags": ["ews"], "operationId": "putContext", "parameters": [USER_CODE_PATH],
            "requestBody": {"required": True, **_json(_CONTEXT)},
            "responses": {**_ok("the context in force and the EWS emitted, if any",
                                _CONTEXT_PUT_OUT), **errors(404, 408, 413, 422)},
        },
        "get": {
            "summary": "The clinical context in force (defaults: A, air, scale 1, assumed=true)",
            "tags": ["ews"], "operationId": "getContext", "parameters": [USER_CODE_PATH],
            "responses": {**_ok("context", _CONTEXT_OUT), **errors(404, 422)},
        },
    },
    "/api/ews-summary": {"get": {
        "summary": "Current EWS of every patient and counts per result word", "tags": ["ews"],
        "operationId": "ewsSummary",
        "responses": _ok("all current scores", strict(
            {"counts": _COUNTS, "patients": {"type": "array", "items": EWS_ITEM}})),
    }},
    "/api/outbox": {"get": {
        "summary": "Delivery to the Cexup platform: queue depth, counters, recent failures",
        "tags": ["ews"], "operationId": "ewsOutbox",
        "parameters": [{"name": "limit", "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 500}}],
        "responses": {**_ok("outbox state", strict({
            "enabled": {"type": "boolean"},
            "stats": {"type": "object", "additionalProperties": {"type": "integer"}},
            "failed": {"type": "array", "items": {"type": "object"}}})), **errors(422)},
    }},
}
