"""The OpenAPI 3.0 document served at /openapi.json, merged from the route modules'
``OPENAPI_PATHS``, plus schema helpers the route modules share."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from vitalgate import __version__
from vitalgate.contract import USER_CODE_RE

ERROR: Final = {
    "type": "object", "required": ["code", "success", "message"], "additionalProperties": False,
    "properties": {"code": {"type": "integer", "minimum": 400, "maximum": 599},
                   "success": {"type": "boolean", "enum": [False]},
                   "message": {"type": "string"}},
}

#: why each error status can happen (the route modules say which of them a route can answer).
ERROR_REASONS: Final = {
    "401": "no API key, or not a valid one (unknown, revoked, the retired bootstrap key)",
    "403": "the key lacks the scope this route needs (the message names it), or it is "
           "limited to a device_holder and the request would cross it",
    "404": "no such patient, device or recording (or not visible to this key's holder)",
    "408": "the request body did not arrive within http_body_timeout_s",
    "409": "a conflict (a name or MAC already registered)",
    "413": "the request body exceeds the size limit",
    "422": "invalid input; the message names the field or parameter",
    "429": "rate limited; retry after the Retry-After header's seconds",
}


def strict(properties: Mapping[str, Any], *, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """An object schema whose every property is required (except ``optional``) and that has no
    others: what the server sends, exactly."""
    return {"type": "object", "additionalProperties": False,
            "required": [k for k in properties if k not in optional],
            "properties": dict(properties)}


def envelope(data: Mapping[str, Any] | None) -> dict[str, Any]:
    """The success envelope around ``data``."""
    return strict({"code": {"type": "integer", "minimum": 200, "maximum": 299},
                   "success": {"type": "boolean", "enum": [True]},
                   "message": {"type": "string"},
                   "data": dict(data) if data is not None else {}})


def envelope_response(code: str, desc: str, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{code: {description, content}}`` in the Cexup envelope (error shape for 4xx/5xx)."""
    if code.startswith(("4", "5")):
        schema: dict[str, Any] = {"$ref": "#/components/schemas/Error"}
    else:
        schema = envelope(data if data is not None else {"type": "object"})
    return {code: {"description": desc, "content": {"application/json": {"schema": schema}}}}


def errors(*codes: int | str) -> dict[str, Any]:
    """The documented error responses ``codes`` with their reasons."""
    out: dict[str, Any] = {}
    for code in codes:
        out.update(envelope_response(str(code), ERROR_REASONS[str(code)]))
    return out


def page_of(item: Mapping[str, Any]) -> dict[str, Any]:
    """The paged list shape (Cexup's clinic API names plus ``size``) of ``item``s."""
    count = {"type": "integer", "minimum": 0}
    return strict({"page": {"type": "integer", "minimum": 1},
                   "size": {"type": "integer", "minimum": 1},
                   "length": {"type": "integer", "minimum": 1},
                   "totalpage": count, "totaldata": count, "displayed": count,
                   "data": {"type": "array", "items": dict(item)}})


PAGE: Final = page_of({})

#: the ``{user_code}`` path parameter of the patient routes (:func:`ingest.api.envelope.user_code_param`).
USER_CODE_PATH: Final = {"name": "user_code", "in": "path", "required": True,
                         "schema": {"type": "string", "pattern": USER_CODE_RE.pattern}}

PARAMETERS: Final = {
    "page": {"name": "page", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": 10**9, "default": 1}},
    "size": {"name": "size", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 20}},
}


def _is_protected(path: str) -> bool:
    return path.startswith("/api/") or path.startswith("/ews")


#: errors any keyed route can answer: no/invalid key, a missing scope, the rate limit.
KEYED_ERRORS: Final = ("401", "403", "429")


def build(*path_sets: Mapping[str, Any]) -> dict[str, Any]:
    """The document: every path set merged; protected paths get the security requirement and a
    documented 401."""
    paths: dict[str, Any] = {}
    for path_set in path_sets:
        for path, ops in path_set.items():
            merged = dict(paths.get(path, {}))
            for method, op in ops.items():
                if method != "parameters" and _is_protected(path):
                    op = dict(op)
                    op.setdefault("security", [{"ApiKeyAuth": []}, {"BearerAuth": []}])
                    op["responses"] = {**op.get("responses", {}), **errors(*KEYED_ERRORS)}
                merged[method] = op
            paths[path] = merged
    return {
        "openapi": "3.0.3",
        "info": {"title": "vitalgate ingest", "version": __version__,
                 "description": "Hospital-side ingestion: device registry, medical records, "
                                "ECG, EWS. Responses use the Cexup envelope "
                                "{code, success, message, data}."},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "ApiKeyAuth": {"type": "apiKey", "in": "header", "name": "x-api-key"},
                "BearerAuth": {"type": "http", "scheme": "bearer"},
            },
            "schemas": {"Error": ERROR, "Page": PAGE},
            "parameters": PARAMETERS,
        },
    }
