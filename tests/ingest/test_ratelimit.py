"""HTTP rate limits: a clear 429 with Retry-After, per client, on real HTTP."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from ingest.api.ratelimit import RateLimiter, RatePolicy
from tests.support.ingest_service import TEST_KEY, running, settings_for
from vitalgate.broker import Mosquitto


def test_bucket_refills_at_the_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(RatePolicy(rate=2.0, burst=3), clock=lambda: now[0])
    assert [limiter.take(b"a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take(b"a") == 0.5  # empty: the next token comes in 1/rate s
    assert limiter.take(b"b") == 0.0  # another client has its own bucket
    now[0] += 0.5
    assert limiter.take(b"a") == 0.0
    assert limiter.limited == 1


async def test_a_client_over_its_limit_gets_429_and_others_do_not(tmp_path: Path, mosquitto: Mosquitto) -> None:
    settings = settings_for(tmp_path / "data", mosquitto.url, http_rate_per_s=0.5, http_burst=5)
    async with running(settings) as svc, aiohttp.ClientSession() as http:
        statuses = []
        for _ in range(8):
            async with http.get(svc.url + "/api/devices", headers={"x-api-key": TEST_KEY}) as r:
                statuses.append(r.status)
                if r.status == 429:
                    body = await r.json()
                    retry_after = r.headers["Retry-After"]
        assert statuses[:5] == [200] * 5
        assert statuses[5:] == [429] * 3
        assert body["code"] == 429 and body["success"] is False
        assert "too many requests" in body["message"]
        assert int(retry_after) >= 1
        # a client without a key is limited on its own (by address), and still told 401 first
        async with http.get(svc.url + "/api/devices") as r:
            assert r.status == 401
        # health and metrics are never limited; the 429s are counted
        for _ in range(10):
            async with http.get(svc.url + "/healthz") as r:
                assert r.status in (200, 503)
        async with http.get(svc.url + "/metrics") as r:
            text = await r.text()
        assert "vitalgate_ingest_http_rate_limited_total 3" in text
