"""Medical-record routes (Cexup's record types), ECG recordings and dead letters.

GET /api/medical-record/{user_code}/latest      each type's latest record
GET /api/medical-records/{user_code}            history: ?type&from&to&page&size&order
GET /api/ecg-recordings/{user_code}             a patient's ECG recordings (summaries), paged
GET /api/ecg/{recording}                        one recording: summary and samples
GET /api/dead-letters                           rejected MQTT messages: ?reason&page&size
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from ingest import store
from ingest.api.appkeys import DB_KEY
from ingest.api.auth import principal_of
from ingest.api.envelope import ApiError, int_param, ok, page_params, paged, user_code_param
from ingest.api.openapi import USER_CODE_PATH, envelope_response, errors, page_of
from ingest.api.scoping import require_patient

ALL_TYPES: Final = (*store.RECORD_TYPES, store.ECG_TYPE)
MAX_MS: Final = 10**14


async def visible_user_code(request: web.Request) -> str:
    """The path's user_code, valid and visible to the request's key (else 422 / 404)."""
    code = user_code_param(request)
    await require_patient(request, code)
    return code


def _ms_param(request: web.Request, name: str, default: int) -> int:
    return int_param(request, name, default, 0, MAX_MS, what="epoch milliseconds")


def _types(request: web.Request) -> list[str]:
    raw = ",".join(request.query.getall("type", []))
    if not raw:
        return list(store.RECORD_TYPES)  # the vitals; ECG only when asked for
    types = [t.strip().upper() for t in raw.split(",") if t.strip()]
    for t in types:
        if t not in ALL_TYPES:
            raise ApiError(422, f"query parameter 'type': {t!r} is not one of {', '.join(ALL_TYPES)}")
    return types


async def latest(request: web.Request) -> web.Response:
    code = await visible_user_code(request)
    return ok(await request.app[DB_KEY].read(lambda c: store.latest(c, code)))


async def history(request: web.Request) -> web.Response:
    code = await visible_user_code(request)
    types = _types(request)
    start = _ms_param(request, "from", 0)
    end = _ms_param(request, "to", MAX_MS)
    if start > end:
        raise ApiError(422, f"query parameter 'from' ({start}) is after 'to' ({end})")
    order = request.query.get("order", "desc").lower()
    if order not in ("asc", "desc"):
        raise ApiError(422, f"query parameter 'order' must be asc or desc, got {order!r}")
    page, size = page_params(request)
    items, total = await request.app[DB_KEY].read(
        lambda c: store.records(c, code, types, start, end, page, size, order == "desc"))
    return paged(items, page=page, size=size, total=total)


async def recordings(request: web.Request) -> web.Response:
    code = await visible_user_code(request)
    page, size = page_params(request)
    items, total = await request.app[DB_KEY].read(
        lambda c: store.list_recordings(c, code, page, size))
    return paged(items, page=page, size=size, total=total)


async def recording(request: web.Request) -> web.Response:
    name = request.match_info["recording"]
    if not 1 <= len(name) <= 128:
        raise ApiError(422, "recording must be 1..128 characters")
    rec = await request.app[DB_KEY].read(lambda c: store.get_recording(c, name))
    if rec is None:
        raise ApiError(404, f"ECG recording {name!r} not found")
    if principal_of(request).holder is not None:
        code = rec.get("member_id")
        if not isinstance(code, str):
            raise ApiError(404, f"ECG recording {name!r} not found")
        try:
            await require_patient(request, code)
        except ApiError:
            raise ApiError(404, f"ECG recording {name!r} not found") from None
    return ok(rec)


async def dead_letters(request: web.Request) -> web.Response:
    """Admin only (the auth table); a holder-limited admin key may not read them (a dead letter
    cannot be trusted to say whose it is), and a payload is never shown to a non-admin key."""
    principal = principal_of(request)
    if principal.holder is not None:
        raise ApiError(403, "dead letters are not limited to a device_holder: a key limited to "
                            f"{principal.holder!r} may not read them")
    page, size = page_params(request)
    reason = request.query.get("reason") or None
    if reason is not None and len(reason) > 64:
        raise ApiError(422, "query parameter 'reason' must be at most 64 characters")
    items, total = await request.app[DB_KEY].read(
        lambda c: store.dead_letters(c, page, size, reason))
    if not principal.is_admin:
        items = [{k: v for k, v in item.items() if k != "payload"} for item in items]
    return paged(items, page=page, size=size, total=total)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/medical-record/{user_code}/latest", latest)
    app.router.add_get("/api/medical-records/{user_code}", history)
    app.router.add_get("/api/ecg-recordings/{user_code}", recordings)
    app.router.add_get("/api/ecg/{recording}", recording)
    app.router.add_get("/api/dead-letters", dead_letters)


# ---------------------------------------------------------------------------------- OpenAPI

_PAGING: Final = [{"$ref": "#/components/parameters/page"}, {"$ref": "#/components/parameters/size"}]
_NUM_OR_NULL: Final = {"type": "number", "nullable": True}
# Shapes the store makes (ingest/store.py): every field it always sends is required; other
# fields are allowed, since the store's owners may add some (a stream id, a payload hash).
RECORD: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["id", "device_mac", "member_id", "type", "value", "unit", "method", "source",
                 "created_at"],
    "properties": {
        "id": {"type": "integer"}, "device_mac": {"type": "string"},
        "member_id": {"type": "string", "nullable": True},
        "type": {"type": "string", "enum": list(ALL_TYPES)},
        "value": {"description": "a number; BLOOD_PRESSURE: {systole, diastole}; "
                                 "ELECTROCARDIOGRAPH: {recording, mean_hr, quality}",
                  "nullable": True,
                  "oneOf": [{"type": "number"},
                            {"type": "object", "required": ["systole", "diastole"],
                             "properties": {"systole": _NUM_OR_NULL, "diastole": _NUM_OR_NULL}},
                            {"type": "object", "required": ["recording", "mean_hr", "quality"],
                             "properties": {"recording": {"type": "string", "nullable": True},
                                            "mean_hr": _NUM_OR_NULL, "quality": {}}}]},
        "unit": {"type": "string", "nullable": True},
        "method": {"type": "string", "enum": ["AUTOMATIC", "MANUAL"]},
        "source": {"type": "string"}, "created_at": {"type": "integer", "description": "epoch ms"},
    },
}
RECORDING: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["id", "recording", "device_mac", "member_id", "fs", "n_samples", "duration_s",
                 "created_at", "received_at", "quality", "mean_hr", "analysis"],
    "properties": {
        "id": {"type": "integer"}, "recording": {"type": "string"},
        "device_mac": {"type": "string"}, "member_id": {"type": "string", "nullable": True},
        "fs": {"type": "number"}, "n_samples": {"type": "integer", "minimum": 0},
        "duration_s": _NUM_OR_NULL, "created_at": {"type": "integer"},
        "received_at": {"type": "integer", "nullable": True},
        "quality": {"type": "string", "nullable": True}, "mean_hr": _NUM_OR_NULL,
        "analysis": {"type": "object", "nullable": True},
    },
}
RECORDING_SAMPLES: Final = {
    **RECORDING, "required": [*RECORDING["required"], "samples"],
    "properties": {**RECORDING["properties"],
                   "samples": {"type": "array", "items": {"type": "integer"}}},
}
DEAD_LETTER: Final = {
    "type": "object", "required": ["id", "topic", "reason", "received_at"],
    "description": "payload (a capped prefix) only for admin keys",
    "properties": {"id": {"type": "integer"}, "topic": {"type": "string"},
                   "payload": {"type": "string"}, "size": {"type": "integer"},
                   "reason": {"type": "string"}, "detail": {"type": "string", "nullable": True},
                   "received_at": {"type": "integer"}},
}
_LATEST: Final = {
    "type": "object", "additionalProperties": False, "required": list(ALL_TYPES),
    "properties": {**{t: {**RECORD, "nullable": True} for t in store.RECORD_TYPES},
                   store.ECG_TYPE: {**RECORDING, "nullable": True}},
}
_MS: Final = {"type": "integer", "minimum": 0, "maximum": MAX_MS}

OPENAPI_PATHS: Final[dict[str, Any]] = {
    "/api/medical-record/{user_code}/latest": {
        "parameters": [USER_CODE_PATH],
        "get": {"summary": "Each type's latest record of a patient", "operationId": "latestRecords",
                "tags": ["records"],
                "responses": {**envelope_response("200", "type → latest record (or null)", _LATEST),
                              **errors(404, 422)}},
    },
    "/api/medical-records/{user_code}": {
        "parameters": [USER_CODE_PATH],
        "get": {"summary": "A patient's records, paged", "operationId": "listRecords",
                "tags": ["records"],
                "parameters": [
                    {"name": "type", "in": "query", "required": False,
                     "description": "one or more (comma-separated) of " + ", ".join(ALL_TYPES),
                     "schema": {"type": "string"}},
                    {"name": "from", "in": "query", "required": False, "schema": _MS},
                    {"name": "to", "in": "query", "required": False, "schema": _MS},
                    {"name": "order", "in": "query", "required": False,
                     "schema": {"type": "string", "enum": ["asc", "desc"]}},
                    *_PAGING],
                "responses": {**envelope_response("200", "a page of records", page_of(RECORD)),
                              **errors(404, 422)}},
    },
    "/api/ecg-recordings/{user_code}": {
        "parameters": [USER_CODE_PATH],
        "get": {"summary": "A patient's ECG recordings (summaries), paged",
                "operationId": "listEcgRecordings", "tags": ["ecg"], "parameters": _PAGING,
                "responses": {**envelope_response("200", "a page of recordings",
                                                  page_of(RECORDING)),
                              **errors(404, 422)}},
    },
    "/api/ecg/{recording}": {
        "parameters": [{"name": "recording", "in": "path", "required": True,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 128}}],
        "get": {"summary": "One ECG recording: summary and samples (int, raw counts)",
                "operationId": "getEcgRecording", "tags": ["ecg"],
                "responses": {**envelope_response("200", "the recording", RECORDING_SAMPLES),
                              **errors(404, 422)}},
    },
    "/api/dead-letters": {
        "get": {"summary": "Rejected MQTT messages, newest first (admin keys only)",
                "operationId": "listDeadLetters", "tags": ["operations"],
                "parameters": [{"name": "reason", "in": "query", "required": False,
                                "schema": {"type": "string", "maxLength": 64}}, *_PAGING],
                "responses": {**envelope_response("200", "a page of dead letters",
                                                  page_of(DEAD_LETTER)),
                              **errors(422)}},
    },
}
