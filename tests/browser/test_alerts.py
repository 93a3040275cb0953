"""Alerts on the ward dashboard in a real headless Chromium, on a real service fed over real
MQTT with an injected clock: an alert appears live, is acknowledged from the banner, the
patient's audit shows who did it; an unacknowledged alert escalates when the service's clock
passes its response time. Every wait is Playwright's, never a sleep."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import expect

from ingest import keys
from ingest.consumer import epoch_ms
from tests.browser.harness import (
    MEDIUM,
    NORMAL,
    SEPTIC,
    STABLE,
    UNWELL,
    Feed,
    Ward,
    browser_on,
)
from tests.support.ingest_service import eventually, publisher, running, settings_for
from vitalgate.broker import Mosquitto

pytestmark = pytest.mark.browser


class Clock:
    """The service's clock: the wall clock plus what the test advances (ms)."""

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self) -> int:
        return epoch_ms() + self.offset


@pytest.fixture
async def alert_ward(mosquitto: Mosquitto, tmp_path: Path) -> AsyncIterator[tuple[Ward, Clock]]:
    """Two patients scoring 0 (normal), a service whose clock the test moves, a browser."""
    clock = Clock()
    settings = settings_for(tmp_path / "ingest", mosquitto.url, ews_tick_s=1.0,
                            ews_min_interval_s=0, alert_check_s=0.2,
                            alert_response_high_s=300, alert_response_medium_s=1800)
    async with running(settings, clock=clock) as svc:
        # published before the consumer subscribed, a first run's readings would be lost
        await eventually(lambda: svc.service.consumer.subscribed)
        client = publisher(mosquitto.host, mosquitto.port, "alert-browser-feed")
        try:
            feed = Feed(client)
            feed.status((STABLE, MEDIUM))
            feed.readings(STABLE, NORMAL, count=3, every_ms=60_000)
            feed.readings(MEDIUM, NORMAL, count=3, every_ms=60_000)
            engine = svc.service.engine
            await eventually(lambda: all(engine.current(p.user_code) is not None
                                         for p in (STABLE, MEDIUM)))
            async with browser_on(svc, feed, tmp_path / "chromium-profile") as ward:
                yield ward, clock
        finally:
            client.loop_stop()
            client.disconnect()


async def test_an_alert_appears_live_is_acknowledged_and_audited(
        alert_ward: tuple[Ward, Clock]) -> None:
    ward, _ = alert_ward
    page = ward.page
    await ward.open_signed_in()
    await expect(page.locator("#alert-banner")).to_be_hidden()

    ward.feed.readings(MEDIUM, UNWELL, count=3, every_ms=10_000)  # NEWS2 5: sedang, medium
    item = page.locator(f"#open-alerts li[data-user-code='{MEDIUM.user_code}']")
    await expect(page.locator("#alert-banner")).to_be_visible()
    await expect(item).to_contain_text("medium")
    await expect(item).to_contain_text("NEWS2 5")
    tile = page.locator(f"#tiles .tile[data-user-code='{MEDIUM.user_code}']")
    await expect(tile).to_have_class(r"tile sedang alerted")
    await expect(tile.locator(".monitoring")).to_have_attribute("data-frequency", "hourly")

    await item.locator("button.ack").click()
    await item.locator("input[name=who]").fill("Nurse Ani")
    await item.locator("input[name=note]").fill("obs repeated, doctor informed")
    await item.locator("button[type=submit]").click()
    await expect(page.locator("#ack-status")).to_contain_text("acknowledged by Nurse Ani")
    await expect(page.locator("#alert-banner")).to_be_hidden()  # nothing left to acknowledge
    await expect(tile.locator(".alert-line")).to_contain_text("acknowledged by Nurse Ani")

    await tile.click()
    audit = page.locator("#p-alert-list .audit li")
    await expect(audit).to_have_count(2)
    await expect(audit.nth(0)).to_have_attribute("data-transition", "opened")
    await expect(audit.nth(1)).to_contain_text("acknowledged by Nurse Ani")
    await expect(audit.nth(1)).to_contain_text("obs repeated, doctor informed")
    assert ward.foreign_requests() == []


async def test_a_read_only_key_cannot_acknowledge(alert_ward: tuple[Ward, Clock]) -> None:
    ward, _ = alert_ward
    page = ward.page
    reader = str(ward.service.service.db.write_sync(lambda c: keys.create(c, "screen", 1, ["read"])))
    await page.goto(ward.url + "/")
    await ward.sign_in(reader)
    ward.feed.readings(STABLE, UNWELL, count=3, every_ms=10_000)
    item = page.locator(f"#open-alerts li[data-user-code='{STABLE.user_code}']")
    await item.locator("button.ack").click()
    await item.locator("input[name=who]").fill("Nurse Budi")
    await item.locator("button[type=submit]").click()
    await expect(page.locator("#ack-status")).to_contain_text("clinical scope")
    await expect(item).to_be_visible()  # still waiting for someone who may acknowledge


async def test_an_unacknowledged_alert_escalates_on_the_service_clock(
        alert_ward: tuple[Ward, Clock]) -> None:
    ward, clock = alert_ward
    page = ward.page
    await ward.open_signed_in()
    ward.feed.readings(MEDIUM, SEPTIC, count=3, every_ms=10_000)  # NEWS2 12: tinggi, high
    item = page.locator(f"#open-alerts li[data-user-code='{MEDIUM.user_code}']")
    await expect(item.locator(".alert-chip.high")).to_be_visible()
    await expect(item.locator(".alert-chip.escalated")).to_have_count(0)
    alerts = ward.service.service.alerts
    clock.offset += 310_000  # past the 5 min response time of a high risk
    await eventually(lambda: alerts.counts["escalated"] == 1)
    await expect(item.locator(".alert-chip.escalated")).to_be_visible()
    await expect(item).to_have_attribute("data-state", "escalated")
    await expect(page.locator(f"#tiles .tile[data-user-code='{MEDIUM.user_code}'] .alert-line")
                 ).to_contain_text("escalated")
