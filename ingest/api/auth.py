"""API-key authentication: ``x-api-key: <key>`` or ``Authorization: Bearer <key>``.

Every ``/api/*`` and ``/ews*`` route needs a valid key; ``/healthz``, ``/metrics`` and
``/openapi.json`` are open. A missing or wrong key is a 401 in the Cexup error shape.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from ingest import keys
from ingest.api import DB_KEY, KEYS_KEY
from ingest.api.envelope import fail

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def protected(path: str) -> bool:
    return path.startswith("/api/") or path == "/api" or path.startswith("/ews")


def presented_key(request: web.Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


async def authenticate(request: web.Request) -> str | None:
    """The name of the key the request presents, or None."""
    key = presented_key(request)
    if key is None or len(key) > 512:
        return None
    checker = request.app[KEYS_KEY]
    if checker.check_env(key):
        return "env"
    name = checker.cached(key)
    if name is not None:
        return name
    name = await request.app[DB_KEY].read(lambda conn: keys.find(conn, key))
    if name is not None:
        checker.remember(key, name)
    return name


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method == "OPTIONS" or not protected(request.path):
        return await handler(request)
    if presented_key(request) is None:
        return fail(401, "missing API key: send x-api-key or Authorization: Bearer")
    if await authenticate(request) is None:
        return fail(401, "invalid API key")
    return await handler(request)
