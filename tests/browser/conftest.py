"""Fixtures of the browser tests: a fed ward (service + Mosquitto) and a Chromium page on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Request, async_playwright

from tests.browser.harness import (
    CHROMIUM_ARGS,
    DETERIORATING,
    MEDIUM,
    MILD,
    NORMAL,
    PATIENTS,
    STABLE,
    UI_TIMEOUT_MS,
    UNWELL,
    VIEWPORT,
    Feed,
    Ward,
    chromium_or_fail,
)
from tests.support.ingest_service import eventually, publisher, running, settings_for
from vitalgate.broker import Mosquitto


@pytest.fixture
async def ward(mosquitto: Mosquitto, tmp_path: Path) -> AsyncIterator[Ward]:
    """Three patients with four hours of readings (stable, mildly off, unwell) and a browser."""
    executable = chromium_or_fail()
    # every change of score is emitted at once (no 30 s hold-back of falls): the page shows
    # the score the readings below define as soon as they are stored
    settings = settings_for(tmp_path / "ingest", mosquitto.url, ews_tick_s=1.0, ews_min_interval_s=0)
    async with running(settings) as svc:
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
            async with async_playwright() as pw:
                context = await pw.chromium.launch_persistent_context(
                    str(tmp_path / "chromium-profile"), executable_path=executable, headless=True,
                    args=list(CHROMIUM_ARGS), viewport=VIEWPORT,  # type: ignore[arg-type]
                    service_workers="block",
                )
                try:
                    context.set_default_timeout(UI_TIMEOUT_MS)
                    requests: list[str] = []

                    def record(request: Request) -> None:
                        requests.append(request.url)

                    context.on("request", record)
                    page = context.pages[0] if context.pages else await context.new_page()
                    yield Ward(svc, feed, context, page, requests)
                finally:
                    await context.close()
        finally:
            client.loop_stop()
            client.disconnect()
