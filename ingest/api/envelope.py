"""The Cexup JSON envelope every route answers with, and paging helpers.

Success: ``{"code": 200, "success": true, "message": "Ok", "data": ...}``.
Failure: ``{"code": <status>, "success": false, "message": "<why, naming the field>"}``.
``code`` is an integer equal to the HTTP status (Cexup clients accept strings and integers).
"""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web


class ApiError(Exception):
    """Raised by a handler; the error middleware turns it into :func:`fail`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def ok(data: Any = None, *, status: int = 200, message: str = "Ok") -> web.Response:
    return web.json_response(
        {"code": status, "success": True, "message": message, "data": data}, status=status
    )


def fail(status: int, message: str) -> web.Response:
    return web.json_response({"code": status, "success": False, "message": message}, status=status)


def paged(items: list[Any], *, page: int, size: int, total: int) -> web.Response:
    """A page of ``items``; metadata named like Cexup's clinic API plus ``size``."""
    return ok(
        {
            "page": page,
            "size": size,
            "length": size,
            "totalpage": math.ceil(total / size) if size else 0,
            "totaldata": total,
            "displayed": len(items),
            "data": items,
        }
    )


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(422, f"query parameter {name!r} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ApiError(422, f"query parameter {name!r} must be between {low} and {high}, got {value}")
    return value


def page_params(
    request: web.Request,
    *,
    size_names: tuple[str, ...] = ("size", "data", "length"),
    default_size: int = 20,
    max_size: int = 500,
) -> tuple[int, int]:
    """``(page, size)`` from the query: ``page`` is 1-based; the page length may be spelled with
    any of ``size_names`` (Cexup uses ``size`` and ``data``). Raises ApiError(422) naming the
    bad parameter."""
    page = _int_param(request, "page", 1, 1, 10**9)
    size = default_size
    for name in size_names:
        if name in request.query:
            size = _int_param(request, name, default_size, 1, max_size)
            break
    return page, size
