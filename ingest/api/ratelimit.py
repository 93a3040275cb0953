"""Rate limits on the HTTP API: a token bucket per client, answered with a clear 429.

A client is its API key (hashed; never stored in clear) when it presents one, otherwise its
address, so one busy integration cannot starve the ward dashboard and a key-guessing client
is slowed down before the key check. Health, metrics and the static dashboard are not limited.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Middleware

from ingest.api.auth import presented_key, protected
from ingest.api.envelope import fail

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: buckets kept at most; the least recently used is forgotten first (it starts full again,
#: which only ever favours a client, never blocks one wrongly)
MAX_CLIENTS: Final = 10_000


@dataclass(frozen=True, slots=True)
class RatePolicy:
    """``rate`` requests per second sustained, ``burst`` at once; rate 0 disables limiting."""

    rate: float = 50.0
    burst: int = 200


class RateLimiter:
    def __init__(self, policy: RatePolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._buckets: OrderedDict[bytes, tuple[float, float]] = OrderedDict()
        self.limited = 0  #: requests answered 429

    def take(self, client: bytes) -> float:
        """0 when the request may go ahead, else the seconds until it would."""
        rate, burst = self.policy.rate, float(self.policy.burst)
        now = self._clock()
        tokens, then = self._buckets.pop(client, (burst, now))
        tokens = min(burst, tokens + (now - then) * rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / rate
            self.limited += 1
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > MAX_CLIENTS:
            self._buckets.popitem(last=False)
        return wait


def client_of(request: web.Request) -> bytes:
    key = presented_key(request)
    if key:
        return b"k" + hashlib.sha256(key.encode()).digest()
    return b"a" + (request.remote or "?").encode()


def rate_limit_middleware(limiter: RateLimiter) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if limiter.policy.rate <= 0 or not protected(request.path):
            return await handler(request)
        wait = limiter.take(client_of(request))
        if wait > 0:
            resp = fail(429, f"too many requests: at most {limiter.policy.rate:g} per second "
                             f"(bursts of {limiter.policy.burst}); retry after {math.ceil(wait)} s")
            resp.headers["Retry-After"] = str(math.ceil(wait))
            return resp
        return await handler(request)

    return middleware


#: the service's HTTP rate limiter (its ``limited`` count is exported in /metrics); it lives
#: with the limiter, not with the other app keys (ingest.api.appkeys), which ratelimit imports.
LIMITER_KEY: Final = web.AppKey("rate_limiter", RateLimiter)
