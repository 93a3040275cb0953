"""Sequence gaps: what ingest never received, per device and stream (see ``ingest.gaps``).

GET /api/gaps: totals and the streams with open gaps (most missing first);
GET /api/devices/{device_id}/gaps: one device's streams, completeness and open gaps.
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from ingest import gaps
from ingest.api.appkeys import DB_KEY
from ingest.api.envelope import ApiError, ok
from ingest.api.openapi import envelope_response
from vitalgate.contract import DEVICE_ID_RE

#: most streams ``GET /api/gaps`` lists (``limit``).
MAX_LIMIT: Final = 1000


async def summary(request: web.Request) -> web.Response:
    raw = request.query.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(422, f"query parameter 'limit' must be an integer 1..{MAX_LIMIT}, got {raw!r}")
    body = await request.app[DB_KEY].read(lambda c: gaps.summary(c, int(raw)))
    return ok(body)


async def device(request: web.Request) -> web.Response:
    device_id = request.match_info["device_id"]
    if not DEVICE_ID_RE.fullmatch(device_id):
        raise ApiError(422, f"device_id must be 12 lower-case hex digits, got {device_id[:40]!r}")
    body = await request.app[DB_KEY].read(lambda c: gaps.device_gaps(c, device_id))
    if body is None:
        raise ApiError(404, f"no readings with a seq from device {device_id}")
    return ok(body)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/gaps", summary)
    app.router.add_get("/api/devices/{device_id}/gaps", device)


_STREAM: Final = {
    "type": "object",
    "properties": {
        "device_id": {"type": "string"}, "stream": {"type": "string", "nullable": True},
        "gateway_id": {"type": "string", "nullable": True},
        "contiguous": {"type": "integer", "description": "every seq 0..contiguous arrived"},
        "max_seq": {"type": "integer"}, "open_gaps": {"type": "integer"},
        "missing": {"type": "integer"},
        "completeness": {"type": "number", "nullable": True, "description": "arrived / (max_seq+1)"},
    },
}

OPENAPI_PATHS: Final[dict[str, Any]] = {
    "/api/gaps": {
        "get": {"summary": "Sequence gaps: totals and the streams with open gaps",
                "operationId": "gapSummary", "tags": ["operations"],
                "parameters": [{"name": "limit", "in": "query", "required": False,
                                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}}],
                "responses": {**envelope_response("200", "totals and streams", {
                    "type": "object", "properties": {
                        "open_gaps": {"type": "integer"}, "missing": {"type": "integer"},
                        "reported_missing": {"type": "integer"}, "streams": {"type": "integer"},
                        "streams_with_gaps": {"type": "array", "items": _STREAM}}}),
                    **envelope_response("422", "a bad parameter (named)")}},
    },
    "/api/devices/{device_id}/gaps": {
        "parameters": [{"name": "device_id", "in": "path", "required": True,
                        "schema": {"type": "string", "pattern": DEVICE_ID_RE.pattern}}],
        "get": {"summary": "One device's streams, completeness and open gaps",
                "operationId": "deviceGaps", "tags": ["operations"],
                "responses": {**envelope_response("200", "streams and gaps", {"type": "object"}),
                              **envelope_response("404", "no readings from this device"),
                              **envelope_response("422", "bad device_id")}},
    },
}
