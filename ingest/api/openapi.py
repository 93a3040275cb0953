"""The OpenAPI 3.0 document served at /openapi.json, merged from the route modules'
``OPENAPI_PATHS``, plus schema helpers the route modules share."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from vitalgate import __version__

ERROR: Final = {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "integer"}, "success": {"type": "boolean"},
                   "message": {"type": "string"}},
}


def envelope_response(code: str, desc: str, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{code: {description, content}}`` in the Cexup envelope (error shape for 4xx/5xx)."""
    if code.startswith(("4", "5")):
        schema: dict[str, Any] = {"$ref": "#/components/schemas/Error"}
    else:
        schema = {"type": "object", "required": ["code", "success", "message"],
                  "properties": {"code": {"type": "integer"}, "success": {"type": "boolean"},
                                 "message": {"type": "string"}, "data": dict(data or {})}}
    return {code: {"description": desc, "content": {"application/json": {"schema": schema}}}}


PAGE: Final = {
    "type": "object",
    "properties": {"page": {"type": "integer"}, "size": {"type": "integer"},
                   "length": {"type": "integer"}, "totalpage": {"type": "integer"},
                   "totaldata": {"type": "integer"}, "displayed": {"type": "integer"},
                   "data": {"type": "array", "items": {}}},
}

PARAMETERS: Final = {
    "page": {"name": "page", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "default": 1}},
    "size": {"name": "size", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 20}},
}


def _is_protected(path: str) -> bool:
    return path.startswith("/api/") or path.startswith("/ews")


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
                    op["responses"] = {**op.get("responses", {}),
                                       **envelope_response("401", "missing or invalid API key")}
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
