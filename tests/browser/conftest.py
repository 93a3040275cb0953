"""Fixtures of the browser tests: a fed ward (service + Mosquitto) and a Chromium page on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.browser.harness import (
    DETERIORATING,
    MEDIUM,
    MILD,
    NORMAL,
    PATIENTS,
    STABLE,
    UNWELL,
    Feed,
    Ward,
    browser_on,
)
from tests.support.ingest_service import eventually, publisher, running, settings_for
from vitalgate.broker import Mosquitto


@pytest.fixture
async def ward(mosquitto: Mosquitto, tmp_path: Path) -> AsyncIterator[Ward]:
    """Three patients with four hours of readings (stable, mildly off, unwell) and a browser."""
    # every change of score is emitted at once (no 30 s hold-back of falls): the page shows
    # the score the readings below define as soon as they are stored
    settings = settings_for(tmp_path / "ingest", mosquitto.url, ews_tick_s=1.0, ews_min_interval_s=0)
    async with running(settings) as svc:
        # published before the consumer subscribed, a first run's readings would be lost
        await eventually(lambda: svc.service.consumer.subscribed)
        client = publisher(mosquitto.host, mosquitto.port, "browser-feed")
        try:
            feed = Feed(client)
            feed.status(PATIENTS)
            # four hours, one reading per 5 min: the sparklines and trend charts have a shape
            feed.readings(STABLE, NORMAL, count=48, every_ms=300_000, jitter=1.0)
            feed.readings(DETERIORATING, MILD, count=48, every_ms=300_000, jitter=2.0)
            feed.readings(MEDIUM, UNWELL, count=48, every_ms=300_000, jitter=1.5)
            engine = svc.service.engine
            await eventually(lambda: all(engine.current(p.user_code) is not None for p in PATIENTS))
            async with browser_on(svc, feed, tmp_path / "chromium-profile") as ward:
                yield ward
        finally:
            client.loop_stop()
            client.disconnect()
