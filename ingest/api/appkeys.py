"""App keys shared by the route modules and the service, in a module of their own so that the
route modules, the middlewares and the service agree on them without importing each other (the
package ``__init__`` holding them made a cycle with auth/envelope/ratelimit). The rate limiter's
key lives with the limiter (ingest.api.ratelimit.LIMITER_KEY)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable  # noqa: F401
    from typing import Any  # noqa: F401

    from ingest.db import Database  # noqa: F401
    from ingest.ews_engine import EwsEngine  # noqa: F401
    from ingest.keys import KeyChecker  # noqa: F401
    from ingest.metrics import IngestMetrics  # noqa: F401
    from ingest.settings import IngestSettings  # noqa: F401

#: the EWS engine of the running service (read by ingest.api.ews_routes).
ENGINE_KEY = web.AppKey["EwsEngine"]("ews_engine")
#: the readings store (readings, devices, keys...; SQLite or PostgreSQL).
DB_KEY = web.AppKey["Database"]("db")
SETTINGS_KEY = web.AppKey["IngestSettings"]("settings")
METRICS_KEY = web.AppKey["IngestMetrics"]("metrics")
KEYS_KEY = web.AppKey["KeyChecker"]("key_checker")
#: returns (healthy, the /healthz body); set by the service.
HEALTH_KEY = web.AppKey["Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]"]("health")

__all__ = ["DB_KEY", "ENGINE_KEY", "HEALTH_KEY", "KEYS_KEY", "METRICS_KEY", "SETTINGS_KEY"]
