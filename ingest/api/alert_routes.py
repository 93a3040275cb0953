"""Alerts: list, one with its audit trail, acknowledge; and the monitoring each patient needs.

GET  /api/alerts?state=&user_code=&limit=  (read)      newest first; ``state`` one or more of
                                                        opened, updated, escalated,
                                                        acknowledged, resolved (comma-separated)
                                                        or ``open`` (every state but resolved)
GET  /api/alerts/{id}                      (read)      the alert and its audit, oldest first
POST /api/alerts/{id}/ack                  (clinical)  ``{"who": "...", "note": "..."}``
GET  /api/monitoring                       (read)      per patient: the frequency its score
                                                        calls for and whether it is overdue

A key limited to a device_holder sees only its patients' alerts (another's is a 404).
The alert service is the running service's (``ALERTS_KEY``); without it the routes answer 503.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from aiohttp import web

from ingest.alerts import (
    LIST_MAX,
    NOTE_MAX,
    OPEN,
    WHO_RE,
    AlertError,
    AlertService,
    AlertState,
    validate_ack,
)
from ingest.api.appkeys import ENGINE_KEY
from ingest.api.envelope import ApiError, int_text, ok, read_json
from ingest.api.openapi import envelope, envelope_response, errors, strict
from ingest.api.scoping import require_patient, visible_patients
from vitalgate.contract import USER_CODE_RE

ALERTS_KEY: Final = web.AppKey("alert_service", AlertService)
#: an alert id is a positive integer below 2**53 (BIGINT identity; JSON-safe)
MAX_ID: Final = 2**53


def _service(request: web.Request) -> AlertService:
    svc = request.app.get(ALERTS_KEY)
    if svc is None:
        raise ApiError(503, "alerts are not running in this service")
    return svc


def _alert_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    value = int_text(raw)
    if value is None or not 1 <= value < MAX_ID:
        raise ApiError(422, f"id: must be a positive integer alert id, got {raw[:40]!r}")
    return value


def _states(raw: str | None) -> list[str]:
    if not raw:
        return []
    out: list[str] = []
    for word in raw.split(",")[:8]:
        if word == "open":
            out.extend(s.value for s in OPEN)
        elif word in {s.value for s in AlertState}:
            out.append(word)
        else:
            raise ApiError(422, f"query parameter 'state' must be open or one or more of "
                                f"{', '.join(s.value for s in AlertState)}, got {word[:40]!r}")
    return sorted(set(out))


async def list_alerts(request: web.Request) -> web.Response:
    svc = _service(request)
    states = _states(request.query.get("state"))
    user_code = request.query.get("user_code") or None
    if user_code is not None and not USER_CODE_RE.fullmatch(user_code):
        raise ApiError(422, f"query parameter 'user_code' must match {USER_CODE_RE.pattern},"
                            f" got {user_code[:40]!r}")
    raw_limit = request.query.get("limit", "100")
    limit = int_text(raw_limit)
    if limit is None or not 1 <= limit <= LIST_MAX:
        raise ApiError(422, f"query parameter 'limit' must be an integer 1..{LIST_MAX}, "
                            f"got {raw_limit[:40]!r}")
    alerts = await svc.find(states=states, user_code=user_code, limit=limit)
    visible = await visible_patients(request)
    if visible is not None:
        alerts = [a for a in alerts if a.user_code in visible]
    return ok({"alerts": [a.to_api() for a in alerts], "now": svc.clock()})


async def get_alert(request: web.Request) -> web.Response:
    svc = _service(request)
    alert_id = _alert_id(request)
    found = await svc.get(alert_id)
    if found is None:
        raise ApiError(404, f"no alert {alert_id}")
    alert, audit = found
    await require_patient(request, alert.user_code)
    return ok({"alert": alert.to_api(), "audit": audit})


async def ack_alert(request: web.Request) -> web.Response:
    svc = _service(request)
    alert_id = _alert_id(request)
    try:
        who, note = validate_ack(await read_json(request))
        found = await svc.get(alert_id)
        if found is None:
            raise ApiError(404, f"no alert {alert_id}")
        await require_patient(request, found[0].user_code)
        alert = await svc.acknowledge(alert_id, who, note)
    except AlertError as exc:
        raise ApiError(exc.status, exc.message) from None
    return ok(alert.to_api(), message="Acknowledged")


async def monitoring(request: web.Request) -> web.Response:
    svc = _service(request)
    engine = request.app[ENGINE_KEY]
    scores = await asyncio.to_thread(engine.all_current)
    rows = svc.monitoring(scores)
    visible = await visible_patients(request)
    if visible is not None:
        rows = [r for r in rows if r["user_code"] in visible]
    return ok({"patients": rows, "now": svc.clock()})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/alerts", list_alerts)
    app.router.add_get("/api/alerts/{id}", get_alert)
    app.router.add_post("/api/alerts/{id}/ack", ack_alert)
    app.router.add_get("/api/monitoring", monitoring)


# ------------------------------------------------------------------------------- OpenAPI

_INT: Final = {"type": "integer"}
_INT_NULL: Final = {"type": "integer", "nullable": True}
_STR_NULL: Final = {"type": "string", "nullable": True}
_STATE: Final = {"type": "string", "enum": [s.value for s in AlertState]}
ALERT: Final = strict({
    "id": _INT, "user_code": {"type": "string"}, "state": _STATE,
    "severity": {"type": "string", "enum": ["medium", "high"]},
    "point": _INT, "risk": {"type": "string"}, "result": {"type": "string"},
    "produce_at": {**_INT, "description": "event time of the score (its newest vital), epoch ms"},
    "opened_at": _INT, "updated_at": _INT,
    "due_at": {**_INT_NULL, "description": "respond by (processing time); null once "
                                           "acknowledged, escalated or resolved"},
    "escalated_at": {**_INT_NULL, "description": "when it escalated since it last asked for "
                                                 "attention; null after an acknowledgement"}, "escalations": _INT, "acked_by": _STR_NULL, "acked_at": _INT_NULL,
    "ack_note": _STR_NULL, "resolved_at": _INT_NULL,
    "escalated": {"type": "boolean", "description": "escalated and still not acknowledged"},
})
AUDIT: Final = strict({
    "id": _INT, "alert_id": _INT, "at": _INT,
    "transition": {"type": "string",
                   "enum": ["opened", "updated", "escalated", "acknowledged", "resolved"]},
    "from_state": {"type": "string", "nullable": True,
                   "enum": [None, *(s.value for s in AlertState)]}, "to_state": _STATE, "point": _INT,
    "severity": {"type": "string"}, "risk": {"type": "string"}, "produce_at": _INT,
    "who": _STR_NULL, "note": _STR_NULL, "why": {"type": "string"},
})
MONITORING: Final = strict({
    "user_code": {"type": "string"}, "point": _INT, "risk": {"type": "string"},
    "frequency": {"type": "string", "enum": ["12-hourly", "4-6-hourly", "hourly", "continuous"]},
    "why": {"type": "string"}, "overdue_after_ms": _INT,
    "last_reading_at": {**_INT, "description": "event time of the newest reading"},
    "overdue": {"type": "boolean"},
})
_ID_PARAM: Final = {"name": "id", "in": "path", "required": True,
                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID - 1}}


#: the alert service is not part of this application (an app built without the service)
_NOT_RUNNING: Final = envelope_response("503", "alerts are not running in this service")


def _ok(desc: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"200": {"description": desc, "content": {"application/json": {"schema": envelope(data)}}}}


OPENAPI_PATHS: Final[dict[str, Any]] = {
    "/api/alerts": {"get": {
        "summary": "Alerts, newest first (filter by state and patient)",
        "operationId": "listAlerts", "tags": ["alerts"],
        "parameters": [
            {"name": "state", "in": "query", "required": False,
             "description": "open, or comma-separated states", "schema": {"type": "string"}},
            {"name": "user_code", "in": "query", "required": False,
             "schema": {"type": "string", "pattern": USER_CODE_RE.pattern}},
            {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": LIST_MAX, "default": 100}}],
        "responses": {**_ok("alerts", strict({"alerts": {"type": "array", "items": ALERT},
                                              "now": _INT})),
                      **errors(422), **_NOT_RUNNING},
    }},
    "/api/alerts/{id}": {"parameters": [_ID_PARAM], "get": {
        "summary": "One alert and its audit trail (every transition, oldest first)",
        "operationId": "getAlert", "tags": ["alerts"],
        "responses": {**_ok("the alert", strict({"alert": ALERT,
                                                 "audit": {"type": "array", "items": AUDIT}})),
                      **errors(404, 422), **_NOT_RUNNING},
    }},
    "/api/alerts/{id}/ack": {"parameters": [_ID_PARAM], "post": {
        "summary": "Acknowledge an alert (clinical scope); a further rise re-opens attention",
        "operationId": "ackAlert", "tags": ["alerts"],
        "requestBody": {"required": True, "content": {"application/json": {"schema": strict({
            "who": {"type": "string", "pattern": WHO_RE.pattern, "minLength": 1,
                    "maxLength": 64},
            "note": {"type": "string", "maxLength": NOTE_MAX, "nullable": True}},
            optional=("note",))}}},
        "responses": {**_ok("acknowledged", ALERT),
                      **envelope_response("409", "already acknowledged, or resolved"),
                      **errors(404, 408, 413, 422), **_NOT_RUNNING},
    }},
    "/api/monitoring": {"get": {
        "summary": "Per patient: the monitoring frequency its NEWS2 calls for, and overdue",
        "operationId": "monitoring", "tags": ["alerts"],
        "responses": {**_ok("patients", strict({"patients": {"type": "array", "items": MONITORING},
                                                "now": _INT})),
                      **_NOT_RUNNING},
    }},
}
