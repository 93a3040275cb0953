"""Dashboard routes: the static app at ``/``, its read API and the live event stream.

``/`` and ``/static/*`` are public (they hold no data; the page signs in with an API key);
``/api/ward*`` and ``/api/events`` need a key with scope ``read`` (ingest.api.auth). A key
limited to a device_holder sees only that holder's patients: on the ward, on a patient page
(another patient is "unknown", 404) and in the event stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from ingest.api.envelope import ApiError, ok, user_code_param
from ingest.api.ews_routes import EWS_ITEM
from ingest.api.openapi import USER_CODE_PATH, envelope, errors, strict
from ingest.api.scoping import require_patient, visible_patients
from ingest.dashboard.events import EventHub
from ingest.dashboard.ward import WardView

log = logging.getLogger(__name__)

STATIC: Final = Path(__file__).parent / "static"
WARD_KEY: Final = web.AppKey("ward_view", WardView)
HUB_KEY: Final = web.AppKey("event_hub", EventHub)
#: the longest history a patient page may ask for (h)
MAX_HOURS: Final = 72.0


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})


#: a holder-limited event stream re-reads which patients it may see at most this often (s)
VISIBLE_REFRESH_S: Final = 5.0


async def ward(request: web.Request) -> web.Response:
    view = request.app[WARD_KEY]
    data = await asyncio.to_thread(view.ward)
    visible = await visible_patients(request)
    if visible is not None:
        data["patients"] = [p for p in data["patients"] if p["user_code"] in visible]
        data["alerts"] = [a for a in data["alerts"] if a["user_code"] in visible]
    return ok(data)


async def patient(request: web.Request) -> web.Response:
    raw = request.query.get("hours", "6")
    try:
        hours = float(raw)
    except ValueError:
        raise ApiError(422, f"query parameter 'hours' must be a number, got {raw!r}") from None
    if not 0.01 <= hours <= MAX_HOURS:
        raise ApiError(422, f"query parameter 'hours' must be in [0.01, {MAX_HOURS:g}], got {hours:g}")
    code = user_code_param(request)
    await require_patient(request, code)
    data = await asyncio.to_thread(request.app[WARD_KEY].patient, code, hours)
    if data is None:
        raise ApiError(404, f"no patient with user_code {code!r}")
    return ok(data)


async def events(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB_KEY]
    resp = web.StreamResponse(headers={
        "content-type": "text/event-stream", "cache-control": "no-cache", "x-accel-buffering": "no",
    })
    visible = await visible_patients(request)
    checked = time.monotonic()
    await resp.prepare(request)
    try:
        await resp.write(b"event: hello\ndata: {}\n\n")
        async for event in hub.listen():
            code = event.data.get("user_code")
            if visible is not None and code is not None:
                if time.monotonic() - checked > VISIBLE_REFRESH_S:
                    visible, checked = await visible_patients(request), time.monotonic()
                if code not in (visible or set()):
                    continue
            await resp.write(event.sse())
    except ConnectionResetError:  # the page closed or reloaded: ordinary, not an error
        log.debug("event stream client went away")
    return resp


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC, append_version=False)
    app.router.add_get("/api/ward", ward)
    app.router.add_get("/api/ward/{user_code}", patient)
    app.router.add_get("/api/events", events)
    app.on_shutdown.append(_close_streams)


async def _close_streams(app: web.Application) -> None:
    """on_shutdown runs before aiohttp waits for handlers: end the event streams first."""
    app[HUB_KEY].close()


_SEC: Final[list[dict[str, list[str]]]] = [{"ApiKeyAuth": []}, {"BearerAuth": []}]
_INT_OR_NULL: Final = {"type": "integer", "nullable": True}
_DEVICE: Final = {**strict({
    "name": {"type": "string", "nullable": True}, "mac": {"type": "string"},
    "gateway_id": {"type": "string", "nullable": True}, "battery": _INT_OR_NULL,
    "connected": {"type": "boolean", "nullable": True}, "last_seen": _INT_OR_NULL,
    "rssi": _INT_OR_NULL,
    # share of the device's sequence numbers that arrived, 0..1 (ingest.gaps); null: none yet
    "data_completeness": {"type": "number", "nullable": True, "minimum": 0, "maximum": 1}},
    optional=("data_completeness",)), "nullable": True}  # on the ward's tiles
_POINTS: Final = {"type": "array", "items": {"type": "array", "minItems": 2, "maxItems": 2,
                                             "items": {"type": "number"}}}
_VITAL: Final = strict({"value": {"type": "number"}, "ts": {"type": "integer"}, "spark": _POINTS})
TILE: Final = strict({
    "user_code": {"type": "string"}, "gateway_id": {"type": "string", "nullable": True},
    "device": _DEVICE, "ews": {**EWS_ITEM, "nullable": True},
    "vitals": {"type": "object", "additionalProperties": _VITAL},
    "completeness": {"type": "number", "minimum": 0, "maximum": 1},
})
_ALERT: Final = strict({
    "user_code": {"type": "string"}, "point": {"type": "integer"}, "result": {"type": "string"},
    "risk": {"type": "string"}, "from_risk": {"type": "string", "nullable": True},
    "produce_at": {"type": "integer"}})
WARD: Final = strict({"now": {"type": "integer"}, "patients": {"type": "array", "items": TILE},
                      "alerts": {"type": "array", "items": _ALERT}})
_STRIP: Final = strict({
    "recording": {"type": "string"}, "ts": {"type": "integer"}, "fs": {"type": "number"},
    "n_samples": {"type": "integer"}, "samples": {"type": "array", "items": {"type": "integer"}},
    "beats": {"type": "array", "items": {"type": "integer"}},
    "summary": {"type": "object", "nullable": True}})
PATIENT: Final = strict({
    "patient": TILE, "series": {"type": "object", "additionalProperties": _POINTS},
    "ecg": {"type": "array", "items": _STRIP},
    "ews_history": {"type": "array", "items": strict({
        "point": {"type": "integer"}, "result": {"type": "string"}, "risk": {"type": "string"},
        "produce_at": {"type": "integer"}})},
    "context": {"type": "object"}, "now": {"type": "integer"}})
# /api/events (text/event-stream, never ends) is documented in docs/dashboard.md, not here:
# an OpenAPI client or fuzzer would wait on it forever.
OPENAPI_PATHS: Final[dict[str, Any]] = {
    "/api/ward": {"get": {
        "summary": "The ward: one tile per patient (EWS, latest vitals with sparklines, device) and recent risk rises",
        "operationId": "ward", "tags": ["dashboard"], "security": _SEC,
        "responses": {"200": {"description": "Ok", "content": {"application/json": {
            "schema": envelope(WARD)}}}},
    }},
    "/api/ward/{user_code}": {"get": {
        "summary": "One patient's page: trends of each vital and of the EWS, ECG strips, clinical context",
        "operationId": "wardPatient", "tags": ["dashboard"], "security": _SEC,
        "parameters": [
            USER_CODE_PATH,
            {"name": "hours", "in": "query", "required": False,
             "schema": {"type": "number", "minimum": 0.01, "maximum": MAX_HOURS, "default": 6}},
        ],
        "responses": {"200": {"description": "Ok", "content": {"application/json": {
            "schema": envelope(PATIENT)}}}, **errors(404, 422)},
    }},
}
