"""The aiohttp application: middlewares (errors, rate limit, auth), security headers, routes,
/healthz, /metrics, /openapi.json.

Errors are always JSON in the Cexup shape ``{"code", "success": false, "message"}``: an
:class:`~ingest.api.envelope.ApiError` becomes its status, aiohttp's HTTP errors (404, 405,
413...) keep theirs, anything unexpected is a 500 without a stack trace (which is logged).

Every response carries :data:`SECURITY_HEADERS` (set in ``on_response_prepare``, so static
files and the event stream get them too): the dashboard loads only its own script, style and
API, cannot be framed, is not sniffed into another type and sends no Referer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

from aiohttp import web

from ingest.api import alert_routes, device_routes, gap_routes, record_routes
from ingest.api.appkeys import DB_KEY, HEALTH_KEY, KEYS_KEY, METRICS_KEY, SETTINGS_KEY
from ingest.api.auth import auth_middleware
from ingest.api.envelope import ApiError, fail, ok
from ingest.api.openapi import build, envelope_response, strict
from ingest.api.ratelimit import LIMITER_KEY, RateLimiter, RatePolicy, rate_limit_middleware
from ingest.db import Database
from ingest.keys import KeyChecker
from ingest.metrics import IngestMetrics
from ingest.settings import IngestSettings

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: headers on every response. The CSP allows only the service's own files and API (the page
#: has no inline script or style, no CDN); ``data:`` images only for the empty favicon.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
Health = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]
OPENAPI_KEY = web.AppKey("openapi", dict)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return fail(exc.status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {404: f"no route {request.path}",
                   405: f"method {request.method} not allowed on {request.path}"}.get(
            exc.status, exc.reason)
        resp = fail(exc.status, message)
        if exc.status == 405 and "Allow" in exc.headers:
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return fail(500, "internal error")


async def healthz(request: web.Request) -> web.Response:
    healthy, body = await request.app[HEALTH_KEY]()
    return ok(body, status=200 if healthy else 503, message="Ok" if healthy else "Unhealthy")


async def metrics(request: web.Request) -> web.Response:
    text = request.app[METRICS_KEY].registry.render()
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI_KEY])


SERVICE_PATHS: dict[str, Any] = {
    "/healthz": {"get": {"summary": "Liveness: broker connected?, store ok, outbox depth",
                         "operationId": "healthz", "tags": ["operations"],
                         "responses": {**envelope_response("200", "healthy (maybe degraded)",
                                                           {"type": "object"}),
                                       "503": {"description": "the store is not usable (the "
                                                              "body says what, in the success "
                                                              "envelope with code 503)",
                                               "content": {"application/json": {"schema": strict(
                                                   {"code": {"type": "integer", "enum": [503]},
                                                    "success": {"type": "boolean"},
                                                    "message": {"type": "string"},
                                                    "data": {"type": "object"}})}}}}}},
    "/metrics": {"get": {"summary": "Prometheus metrics (text exposition)", "operationId": "metrics",
                         "tags": ["operations"],
                         "responses": {"200": {"description": "metrics",
                                               "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
    "/openapi.json": {"get": {"summary": "This document", "operationId": "openapi",
                              "tags": ["operations"],
                              "responses": {"200": {"description": "OpenAPI 3",
                                                    "content": {"application/json": {"schema": {"type": "object"}}}}}}},
}


def openapi_document(
    extra_paths: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The OpenAPI document of the service routes plus ``extra_paths`` (the EWS routes')."""
    return build(SERVICE_PATHS, device_routes.OPENAPI_PATHS, record_routes.OPENAPI_PATHS,
                 gap_routes.OPENAPI_PATHS, alert_routes.OPENAPI_PATHS, *extra_paths)


def create_app(
    *,
    settings: IngestSettings,
    db: Database,
    metrics_: IngestMetrics,
    checker: KeyChecker,
    health: Health,
    extra_routes: Sequence[tuple[Callable[[web.Application], None], dict[str, Any]]] = (),
) -> web.Application:
    """The application with every route; ``extra_routes`` are (add_routes, OPENAPI_PATHS) of
    further route modules (the EWS routes)."""
    limiter = RateLimiter(RatePolicy(settings.http_rate_per_s, settings.http_burst))
    app = web.Application(middlewares=[error_middleware, rate_limit_middleware(limiter),
                                       auth_middleware])
    app[LIMITER_KEY] = limiter
    app[SETTINGS_KEY] = settings
    app[DB_KEY] = db
    app[METRICS_KEY] = metrics_
    app[KEYS_KEY] = checker
    app[HEALTH_KEY] = health
    app.on_response_prepare.append(security_headers)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    device_routes.add_routes(app)
    record_routes.add_routes(app)
    gap_routes.add_routes(app)
    alert_routes.add_routes(app)
    for add, _ in extra_routes:
        add(app)
    app[OPENAPI_KEY] = openapi_document([paths for _, paths in extra_routes])
    return app
