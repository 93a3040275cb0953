"""Dashboard routes: the static app at ``/``, its read API and the live event stream.

``/`` and ``/static/*`` are public (they hold no data; the page signs in with an API key);
``/api/ward*`` and ``/api/events`` sit behind the service's API-key middleware like every
other ``/api`` route.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from ingest.api.envelope import ApiError, ok
from ingest.dashboard.events import EventHub
from ingest.dashboard.ward import WardView

STATIC: Final = Path(__file__).parent / "static"
WARD_KEY: Final = web.AppKey("ward_view", WardView)
HUB_KEY: Final = web.AppKey("event_hub", EventHub)
#: the longest history a patient page may ask for (h)
MAX_HOURS: Final = 72.0


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})


async def ward(request: web.Request) -> web.Response:
    view = request.app[WARD_KEY]
    return ok(await asyncio.to_thread(view.ward))


async def patient(request: web.Request) -> web.Response:
    raw = request.query.get("hours", "6")
    try:
        hours = float(raw)
    except ValueError:
        raise ApiError(422, f"query parameter 'hours' must be a number, got {raw!r}") from None
    if not 0.01 <= hours <= MAX_HOURS:
        raise ApiError(422, f"query parameter 'hours' must be in [0.01, {MAX_HOURS:g}], got {hours:g}")
    code = request.match_info["user_code"]
    data = await asyncio.to_thread(request.app[WARD_KEY].patient, code, hours)
    if data is None:
        raise ApiError(404, f"no patient with user_code {code!r}")
    return ok(data)


async def events(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB_KEY]
    resp = web.StreamResponse(headers={
        "content-type": "text/event-stream", "cache-control": "no-cache", "x-accel-buffering": "no",
    })
    await resp.prepare(request)
    await resp.write(b"event: hello\ndata: {}\n\n")
    async for event in hub.listen():
        await resp.write(event.sse())
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
# /api/events (text/event-stream, never ends) is documented in docs/dashboard.md, not here:
# an OpenAPI client or fuzzer would wait on it forever.
OPENAPI_PATHS: Final[dict[str, Any]] = {
    "/api/ward": {"get": {
        "summary": "The ward: one tile per patient (EWS, latest vitals with sparklines, device) and recent risk rises",
        "security": _SEC, "responses": {"200": {"description": "Ok"}, "401": {"description": "no valid API key"}},
    }},
    "/api/ward/{user_code}": {"get": {
        "summary": "One patient's page: trends of each vital and of the EWS, ECG strips, clinical context",
        "security": _SEC,
        "parameters": [
            {"name": "user_code", "in": "path", "required": True, "schema": {"type": "string"}},
            {"name": "hours", "in": "query", "required": False,
             "schema": {"type": "number", "minimum": 0.01, "maximum": MAX_HOURS, "default": 6}},
        ],
        "responses": {"200": {"description": "Ok"}, "404": {"description": "unknown patient"},
                      "422": {"description": "bad hours"}, "401": {"description": "no valid API key"}},
    }},
}
