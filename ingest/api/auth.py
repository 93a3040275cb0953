"""Authentication and authorisation: who a request is (its API key) and what it may call.

A key is sent as ``x-api-key: <key>`` or ``Authorization: Bearer <key>``. What a route needs
is ONE table, :data:`ROUTE_SCOPES`: (method, route pattern) → the scope a key must hold
(``public``: no key). It is fail-closed: a route that is not in the table needs ``admin``, and
``tests/ingest/test_auth.py`` checks that every route the service registers is in it.

* no key, or a key that is not valid (unknown, revoked, the retired bootstrap key): 401
* a valid key without the route's scope: 403 naming the scope
* a key limited to a ``device_holder`` sees only that holder's devices and the patients bound
  to them (:mod:`ingest.api.scoping`); another patient or device is a 404, as if it did not
  exist.

The scopes and the bootstrap key are described in :mod:`ingest.keys` and docs/security.md.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

from aiohttp import web

from ingest import keys
from ingest.api.appkeys import DB_KEY, KEYS_KEY
from ingest.api.envelope import fail
from ingest.keys import Principal

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PUBLIC: Final = "public"
READ: Final = "read"
CLINICAL: Final = "clinical"
PLATFORM: Final = "platform"
ADMIN: Final = "admin"

#: (method, route pattern as registered) → the scope a key needs. HEAD is looked up as GET.
#: A route missing here needs ``admin`` (fail-closed); tests check every route is listed.
ROUTE_SCOPES: Final[Mapping[tuple[str, str], str]] = {
    # operations and the static dashboard: no data, no key
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/"): PUBLIC,
    ("GET", "/static"): PUBLIC,
    # the dashboard's reads
    ("GET", "/api/ward"): READ,
    ("GET", "/api/ward/{user_code}"): READ,
    ("GET", "/api/events"): READ,
    # EWS reads, at the root and under /api (Cexup's base URL ends in /api)
    ("GET", "/ews/{user_code}"): READ,
    ("GET", "/ews/history/{user_code}"): READ,
    ("GET", "/api/ews/{user_code}"): READ,
    ("GET", "/api/ews/history/{user_code}"): READ,
    ("GET", "/api/ews-summary"): READ,
    # scores made on the platform
    ("POST", "/ews"): PLATFORM,
    ("POST", "/api/ews"): PLATFORM,
    # clinical context
    ("GET", "/api/patient/{user_code}/context"): READ,
    ("PUT", "/api/patient/{user_code}/context"): CLINICAL,
    # medical records and ECG
    ("GET", "/api/medical-record/{user_code}/latest"): READ,
    ("GET", "/api/medical-records/{user_code}"): READ,
    ("GET", "/api/ecg-recordings/{user_code}"): READ,
    ("GET", "/api/ecg/{recording}"): READ,
    # the device registry (MACs, gateways, who wears what): administrators only; the ward's
    # screens see a patient's device on its tile (/api/ward)
    ("GET", "/api/devices"): ADMIN,
    ("GET", "/api/device/{id_device}"): ADMIN,
    ("POST", "/api/devices"): ADMIN,
    ("POST", "/api/device"): ADMIN,
    ("PUT", "/api/device/{id_device}"): ADMIN,
    ("DELETE", "/api/device/{id_device}"): ADMIN,
    # operations with raw payloads or delivery state
    ("GET", "/api/dead-letters"): ADMIN,
    ("GET", "/api/outbox"): ADMIN,
    # sequence gaps: device and gateway ids and seq ranges, no patient data (issue 12, h6)
    ("GET", "/api/gaps"): READ,
    ("GET", "/api/devices/{device_id}/gaps"): READ,
    # alerts (issue 17, halert): reading them is the ward's; acknowledging is a clinical act
    ("GET", "/api/alerts"): READ,
    ("GET", "/api/alerts/{id}"): READ,
    ("POST", "/api/alerts/{id}/ack"): CLINICAL,
    ("GET", "/api/monitoring"): READ,
}

#: the request's authenticated key (set by :func:`auth_middleware` on every keyed route).
PRINCIPAL_KEY: Final = web.RequestKey("principal", Principal)


def route_pattern(request: web.Request) -> str | None:
    """The pattern of the route ``request`` matched (``/ews/{user_code}``), or None (404/405)."""
    resource = request.match_info.route.resource
    return None if resource is None else resource.canonical


def required_scope(method: str, pattern: str) -> str:
    """What ``method pattern`` needs: its table entry, ``admin`` when it has none."""
    method = "GET" if method.upper() == "HEAD" else method.upper()
    return ROUTE_SCOPES.get((method, pattern), ADMIN)


def protected(path: str) -> bool:
    """Paths under which an unmatched request still needs a key (so 404s do not map the API)."""
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


async def authenticate(request: web.Request) -> Principal | None:
    """The key the request presents, or None when it presents none or no valid one."""
    key = presented_key(request)
    if key is None or len(key) > 512:
        return None
    checker = request.app[KEYS_KEY]
    db = request.app[DB_KEY]
    if checker.check_env(key):
        retired = checker.bootstrap_state()
        if retired is None:
            retired = await db.read(keys.bootstrap_retired_at) is not None
            checker.remember_bootstrap(retired)
        return None if retired else keys.BOOTSTRAP_PRINCIPAL
    principal = checker.cached(key)
    if principal is not None:
        return principal
    principal = await db.read(lambda conn: keys.find(conn, key))
    if principal is not None:
        checker.remember(key, principal)
    return principal


#: what a handler sees when no key was checked (an app built without this middleware, in tests):
#: no scopes, so nothing admin-only (raw payloads) is shown; no holder limit.
ANONYMOUS: Final = Principal("anonymous", frozenset())


def principal_of(request: web.Request) -> Principal:
    """The authenticated key of the request (:data:`ANONYMOUS` when none was checked)."""
    try:
        return request[PRINCIPAL_KEY]
    except KeyError:
        return ANONYMOUS


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method == "OPTIONS":
        return await handler(request)
    pattern = route_pattern(request)
    if pattern is None:  # no such route (404) or method (405): still no map without a key
        if protected(request.path) and await authenticate(request) is None:
            return fail(401, "missing or invalid API key: send x-api-key or Authorization: Bearer")
        return await handler(request)
    scope = required_scope(request.method, pattern)
    if scope == PUBLIC:
        return await handler(request)
    if presented_key(request) is None:
        return fail(401, "missing API key: send x-api-key or Authorization: Bearer")
    principal = await authenticate(request)
    if principal is None:
        return fail(401, "invalid API key")
    if not principal.has(scope):
        return fail(403, f"API key {principal.name!r} lacks scope {scope!r}, needed for "
                         f"{request.method} {pattern}")
    request[PRINCIPAL_KEY] = principal
    return await handler(request)
