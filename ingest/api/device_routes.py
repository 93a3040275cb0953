"""Device registry routes, in Cexup's shapes (seed 002 "Device API").

GET /api/devices?size&page, GET /api/device/{id_device}, POST /api/devices (JSON array, all or
nothing), POST /api/device, PUT /api/device/{id_device}, DELETE /api/device/{id_device}.
"""

from __future__ import annotations

import time
from typing import Any, Final

from aiohttp import web
from pydantic import ValidationError

from ingest import registry
from ingest.api.appkeys import DB_KEY
from ingest.api.auth import principal_of
from ingest.api.envelope import ApiError, ok, page_params, paged, read_json
from ingest.api.openapi import envelope_response, errors, page_of
from ingest.api.scoping import check_device, holder_of, require_device, require_own_holder
from ingest.db import Conn
from vitalgate.contract import USER_CODE_RE, validation_detail

#: most devices one bulk POST may register (a spreadsheet import).
MAX_BULK: Final = 1000
INT64_MAX: Final = 2**63 - 1


def _now() -> int:
    return time.time_ns() // 1_000_000


def device_id_param(request: web.Request) -> int:
    raw = request.match_info["id_device"]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        raise ApiError(422, f"id_device must be an integer, got {raw!r}")
    value = int(raw)
    if not 1 <= value <= INT64_MAX:
        raise ApiError(404, f"device {value} not found")
    return value


def _parse(model: type[registry.DeviceIn] | type[registry.DevicePatch], obj: Any, where: str) -> Any:
    if not isinstance(obj, dict):
        raise ApiError(422, f"{where}must be a JSON object with device_name, device_mac, "
                            "device_type, device_holder")
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise ApiError(422, where + validation_detail(exc)) from None


async def _write(request: web.Request, fn: Any) -> Any:
    try:
        return await request.app[DB_KEY].write(fn)
    except registry.RegistryError as exc:
        raise ApiError(exc.status, exc.message) from None


async def list_devices(request: web.Request) -> web.Response:
    page, size = page_params(request, size_names=("size", "data", "length"))
    holder = holder_of(request)
    items, total = await request.app[DB_KEY].read(
        lambda c: registry.list_devices(c, page, size, holder))
    return paged(items, page=page, size=size, total=total)


def _own(request: web.Request, item: registry.DeviceIn, where: str) -> registry.DeviceIn:
    """A holder-limited key's new device belongs to its holder (named or not)."""
    holder = holder_of(request)
    if holder is None:
        return item
    if "device_holder" not in item.model_fields_set:
        return item.model_copy(update={"device_holder": holder})
    require_own_holder(request, item.device_holder, where)
    return item


async def get_device(request: web.Request) -> web.Response:
    device_id = device_id_param(request)
    await require_device(request, device_id)

    def read(conn: Any) -> dict[str, Any]:
        return registry.get_device(conn, device_id)

    try:
        return ok(await request.app[DB_KEY].read(read))
    except registry.RegistryError as exc:
        raise ApiError(exc.status, exc.message) from None


async def create_many(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, list):
        raise ApiError(422, "body: must be a JSON array of devices")
    if not body:
        raise ApiError(422, "body: the array is empty")
    if len(body) > MAX_BULK:
        raise ApiError(422, f"body: at most {MAX_BULK} devices per request, got {len(body)}")
    items = [_own(request, _parse(registry.DeviceIn, obj, f"item {i}: "), f"item {i}: ")
             for i, obj in enumerate(body)]
    now = _now()
    created = await _write(request, lambda c: registry.create_devices(c, items, now))
    return ok(created, status=201, message="Created")


async def create_one(request: web.Request) -> web.Response:
    body = await read_json(request)
    item = _own(request, _parse(registry.DeviceIn, body, ""), "")
    now = _now()
    created = await _write(request, lambda c: registry.create_devices(c, [item], now))
    return ok(created[0], status=201, message="Created")


async def update(request: web.Request) -> web.Response:
    device_id = device_id_param(request)
    patch = _parse(registry.DevicePatch, await read_json(request), "")
    require_own_holder(request, patch.device_holder)
    holder, now = holder_of(request), _now()

    def change(conn: Conn) -> dict[str, Any]:
        check_device(conn, holder, device_id)  # in the same transaction as the change
        return registry.update_device(conn, device_id, patch, now, key_name=principal_of(request).name)

    return ok(await _write(request, change))


async def delete(request: web.Request) -> web.Response:
    device_id = device_id_param(request)
    holder = holder_of(request)

    def remove(conn: Conn) -> dict[str, Any]:
        check_device(conn, holder, device_id)  # in the same transaction as the removal
        return registry.delete_device(conn, device_id)

    return ok(await _write(request, remove), message="Deleted")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/devices", list_devices)
    app.router.add_post("/api/devices", create_many)
    app.router.add_post("/api/device", create_one)
    app.router.add_get("/api/device/{id_device}", get_device)
    app.router.add_put("/api/device/{id_device}", update)
    app.router.add_delete("/api/device/{id_device}", delete)


# ---------------------------------------------------------------------------------- OpenAPI

_NAME: Final = {"type": "string", "minLength": 1, "maxLength": 128, "example": "E86 5894"}
_MAC: Final = {"type": "string", "example": "D0:61:AE:D4:58:94",
               "description": "any common spelling; stored upper-case with colons"}
_TYPE: Final = {"type": "string", "example": "CONSUMER",
                "description": "CONSUMER or CORPORATE, any case (stored upper-case)"}
_USER_CODE: Final = {"type": "string", "nullable": True, "pattern": USER_CODE_RE.pattern,
                     "description": "vitalgate extension: assigns the patient wearing the device "
                                    "(wins over the gateway's); null clears the assignment"}
DEVICE_IN: Final = {
    "type": "object", "required": ["device_name", "device_mac"], "additionalProperties": False,
    "properties": {"device_name": _NAME, "device_mac": _MAC, "device_type": _TYPE,
                   "device_holder": {**_NAME, "example": "unknown"}, "user_code": _USER_CODE},
}
DEVICE_PATCH: Final = {
    "type": "object", "additionalProperties": False,
    "properties": {"device_name": _NAME, "device_mac": _MAC, "device_type": _TYPE,
                   "device_holder": _NAME, "user_code": _USER_CODE},
}
_NULLABLE_INT: Final = {"type": "integer", "nullable": True}
# the registry's shape (ingest/registry.py): every field it sends is required; others are
# allowed, since the registry's owner may add some (e.g. who moved a device).
DEVICE: Final = {
    "type": "object",
    "required": ["id", "device_name", "device_mac", "device_type", "device_holder", "user_code",
                 "user_code_source", "gateway_id", "model", "last_seen", "battery", "connected",
                 "rssi", "created_at", "updated_at"],
    "properties": {
        "id": {"type": "integer", "format": "int64"}, "device_name": {"type": "string"},
        "device_mac": {"type": "string"}, "device_type": {"type": "string", "enum": ["CONSUMER", "CORPORATE"]},
        "device_holder": {"type": "string"},
        "user_code": {"type": "string", "nullable": True},
        "user_code_source": {"type": "string", "nullable": True, "enum": ["status", "api", None]},
        "gateway_id": {"type": "string", "nullable": True},
        "model": {"type": "string", "nullable": True},
        "last_seen": _NULLABLE_INT, "battery": _NULLABLE_INT,
        "connected": {"type": "boolean", "nullable": True}, "rssi": _NULLABLE_INT,
        "created_at": {"type": "integer"}, "updated_at": {"type": "integer"},
    },
}
_ID: Final = {"name": "id_device", "in": "path", "required": True,
              "schema": {"type": "integer", "format": "int64"}}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _resp(code: str, desc: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    return envelope_response(code, desc, data)


OPENAPI_PATHS: Final[dict[str, Any]] = {
    "/api/devices": {
        "get": {"summary": "Registered devices (of the key's holder), paged",
                "operationId": "listDevices", "tags": ["devices"],
                "parameters": [{"$ref": "#/components/parameters/page"},
                               {"$ref": "#/components/parameters/size"}],
                "responses": {**_resp("200", "a page of devices", page_of(DEVICE)),
                              **errors(422)}},
        "post": {"summary": "Register devices in bulk (all or nothing)", "operationId": "createDevices",
                 "tags": ["devices"],
                 "requestBody": _body({"type": "array", "minItems": 1, "maxItems": MAX_BULK,
                                       "items": DEVICE_IN}),
                 "responses": {**_resp("201", "created", {"type": "array", "items": DEVICE}),
                               **errors(408, 409, 413, 422)}},
    },
    "/api/device": {
        "post": {"summary": "Register one device", "operationId": "createDevice", "tags": ["devices"],
                 "requestBody": _body(DEVICE_IN),
                 "responses": {**_resp("201", "created", DEVICE), **errors(408, 409, 413, 422)}},
    },
    "/api/device/{id_device}": {
        "parameters": [_ID],
        "get": {"summary": "One device", "operationId": "getDevice", "tags": ["devices"],
                "responses": {**_resp("200", "the device", DEVICE), **errors(404, 422)}},
        "put": {"summary": "Update a device (absent fields unchanged)", "operationId": "updateDevice",
                "tags": ["devices"], "requestBody": _body(DEVICE_PATCH),
                "responses": {**_resp("200", "updated", DEVICE),
                              **errors(404, 408, 409, 413, 422)}},
        "delete": {"summary": "Remove a device", "operationId": "deleteDevice", "tags": ["devices"],
                   "responses": {**_resp("200", "deleted", DEVICE), **errors(404, 422)}},
    },
}
