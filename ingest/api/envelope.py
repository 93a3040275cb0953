"""The Cexup JSON envelope every route answers with, and the request-parameter helpers (paging,
integers, the patient's user_code in the path) the route modules share.

Success: ``{"code": 200, "success": true, "message": "Ok", "data": ...}``.
Failure: ``{"code": <status>, "success": false, "message": "<why, naming the field>"}``.
``code`` is an integer equal to the HTTP status (Cexup clients accept strings and integers).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from typing import Any, Final

from aiohttp import web

from ingest.api.appkeys import SETTINGS_KEY
from vitalgate.contract import USER_CODE_RE, json_too_deep

#: deepest nesting of a REST body (arrays and objects); the deepest real body (a device array)
#: is 2 levels. Checked on the raw text before parsing, so json's recursion is never the guard.
MAX_BODY_DEPTH: Final = 32
#: how long a request body may take to arrive when the settings do not say (s).
DEFAULT_BODY_TIMEOUT_S: Final = 10.0
_ASCII_INT: Final = re.compile(r"-?[0-9]{1,19}")


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


async def read_json(request: web.Request, *, max_depth: int = MAX_BODY_DEPTH) -> Any:
    """The request body as JSON. 408 when the body does not arrive within the settings'
    ``http_body_timeout_s`` (processing time); 413 beyond aiohttp's ``client_max_size``; 422
    naming the problem for text that is not UTF-8 JSON or nests deeper than ``max_depth``."""
    settings = request.app.get(SETTINGS_KEY)
    timeout = settings.http_body_timeout_s if settings is not None else DEFAULT_BODY_TIMEOUT_S
    try:
        async with asyncio.timeout(timeout):
            raw = await request.read()
    except TimeoutError:
        raise ApiError(408, f"body: not received within {timeout:g} s") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(422, f"body: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    if json_too_deep(raw, max_depth):
        raise ApiError(422, f"body: nested more than {max_depth} levels deep")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ApiError(422, f"body: not valid JSON ({exc})") from None
    except RecursionError:  # unreachable after the depth check; never a 500
        raise ApiError(422, "body: nested too deep") from None


def int_text(raw: str) -> int | None:
    """An ASCII decimal integer (``str.isdigit`` also accepts ``"²"``, which ``int`` refuses)."""
    return int(raw) if _ASCII_INT.fullmatch(raw) else None


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


def int_param(request: web.Request, name: str, default: int, low: int, high: int, *,
              what: str = "an integer") -> int:
    """Query parameter ``name``: ``default`` when absent or empty, else an integer within
    [low, high]; a 422 naming the parameter (``what`` it must be) otherwise."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    value = int_text(raw)
    if value is None:
        raise ApiError(422, f"query parameter {name!r} must be {what}, got {raw!r}")
    if not low <= value <= high:
        raise ApiError(422, f"query parameter {name!r} must be between {low} and {high}, got {value}")
    return value


def user_code_param(request: web.Request) -> str:
    """The route's ``{user_code}``; ApiError(422) when it is not a valid one."""
    code = request.match_info["user_code"]
    if not USER_CODE_RE.fullmatch(code):
        raise ApiError(422, f"user_code must match {USER_CODE_RE.pattern}, got {code!r}")
    return code


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
    page = int_param(request, "page", 1, 1, 10**9)
    size = default_size
    for name in size_names:
        if name in request.query:
            size = int_param(request, name, default_size, 1, max_size)
            break
    return page, size
