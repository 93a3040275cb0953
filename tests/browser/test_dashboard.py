"""The ward dashboard in a real headless Chromium, on a real service fed over real MQTT.

Every wait is Playwright's (``expect`` / ``wait_for_selector`` with a timeout), never a sleep.
Set VITALGATE_SCREENSHOTS=1 to refresh docs/img/ward.png and docs/img/patient.png.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from tests.browser.harness import (
    DETERIORATING,
    MEDIAN_K,
    MEDIUM,
    SEPTIC,
    STABLE,
    UI_TIMEOUT_MS,
    Ward,
)
from tests.support.ingest_service import TEST_KEY

pytestmark = pytest.mark.browser

DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


async def tile_codes(page: Page) -> list[str]:
    return [str(c) for c in await page.locator("#tiles .tile").evaluate_all(
        "tiles => tiles.map(t => t.dataset.userCode)")]


async def screenshot(page: Page, name: str, tmp_path: Path) -> None:
    """A full-page PNG into tmp (always checked) and into docs/img when asked to refresh it."""
    shot = await page.screenshot(full_page=True, path=str(tmp_path / name))
    assert shot.startswith(PNG_MAGIC) and len(shot) > 10_000
    if os.environ.get("VITALGATE_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        (DOCS_IMG / name).write_bytes(shot)


async def test_sign_in_refuses_a_wrong_key_then_shows_the_ward(ward: Ward) -> None:
    page = ward.page
    await page.goto(ward.url + "/")
    await expect(page.locator("#signin")).to_be_visible()
    await expect(page.locator("#ward")).to_be_hidden()

    await ward.sign_in("not-the-key")
    await expect(page.locator("#signin-error")).to_have_text(re.compile("refused"))
    await expect(page.locator("#ward")).to_be_hidden()
    assert await page.evaluate("localStorage.getItem('vitalgate.apikey')") is None

    await ward.sign_in(TEST_KEY)
    await expect(page.locator("#ward")).to_be_visible()
    await expect(page.locator("#tiles .tile")).to_have_count(3)
    await expect(page.locator("#ward-summary")).to_contain_text("3 patients")
    # the key stays in this browser: a reload goes straight to the ward
    await page.reload()
    await expect(page.locator("#tiles .tile")).to_have_count(3)
    await expect(page.locator("#signin")).to_be_hidden()
    # signing out forgets it
    await page.click("#signout")
    await expect(page.locator("#signin")).to_be_visible()
    assert await page.evaluate("localStorage.getItem('vitalgate.apikey')") is None
    assert ward.foreign_requests() == []


async def test_tiles_show_each_patient_ordered_by_risk(ward: Ward) -> None:
    page = ward.page
    await ward.open_signed_in()
    await expect(page.locator("#tiles .tile")).to_have_count(3)
    # sedang (5, medium) first, then the two low-risk patients by point: rendah 1, normal 0
    # (the page updates live while the last readings are scored: wait for the order as the
    # attribute checks below wait for their values)
    order = [MEDIUM.user_code, DETERIORATING.user_code, STABLE.user_code]
    for _ in range(UI_TIMEOUT_MS // 100):
        if await tile_codes(page) == order:
            break
        await page.wait_for_timeout(100)
    assert await tile_codes(page) == order
    for code, result, point in ((MEDIUM.user_code, "sedang", "5"),
                                (DETERIORATING.user_code, "rendah", "1"),
                                (STABLE.user_code, "normal", "0")):
        tile = page.locator(f'.tile[data-user-code="{code}"]')
        await expect(tile).to_have_attribute("data-result", result)
        await expect(tile.locator(".badge")).to_have_text(point)
    medium = page.locator(f'.tile[data-user-code="{MEDIUM.user_code}"]')
    await expect(medium.locator(".meta")).to_contain_text("E86-03")
    await expect(medium.locator(".vitals")).to_contain_text("22 /min")
    await expect(medium.locator(".vitals")).to_contain_text("38.5 °C")
    await expect(medium.locator(".flags")).to_contain_text("battery 45%")
    assert await medium.locator(".spark svg polyline").count() == 5  # one sparkline per vital
    assert ward.foreign_requests() == []


async def test_a_tile_turns_red_live_when_its_patient_deteriorates(ward: Ward, tmp_path: Path) -> None:
    page = ward.page
    # no fallback polling: only the live event stream can bring the change to the page
    await page.add_init_script("window.setInterval = () => 0;")
    await ward.open_signed_in()
    await expect(page.locator("#live")).to_have_class(re.compile(r"\bon\b"))
    tile = page.locator(f'.tile[data-user-code="{DETERIORATING.user_code}"]')
    await expect(tile).to_have_attribute("data-result", "rendah")
    await expect(page.locator(".tile.tinggi")).to_have_count(0)

    ward.feed.readings(DETERIORATING, SEPTIC, count=MEDIAN_K, every_ms=20_000)

    await expect(page.locator(f'.tile.tinggi[data-user-code="{DETERIORATING.user_code}"]')).to_be_visible(
        timeout=UI_TIMEOUT_MS)
    await expect(tile.locator(".badge")).to_have_text("12")
    assert await tile_codes(page) == [DETERIORATING.user_code, MEDIUM.user_code, STABLE.user_code]
    color = await tile.evaluate("t => getComputedStyle(t).borderLeftColor")
    red, green, blue = (int(x) for x in re.findall(r"\d+", color)[:3])
    assert red > 150 and green < 100 and blue < 100, color
    # the rise is listed among the alerts
    await expect(page.locator("#alerts li").first).to_contain_text(DETERIORATING.user_code)
    await expect(page.locator("#alerts li").first).to_contain_text("→ high")
    await expect(page.locator("#ward-summary")).to_contain_text("tinggi 1")
    await screenshot(page, "ward.png", tmp_path)
    assert ward.foreign_requests() == []


async def test_clicking_a_tile_opens_the_patient_page_with_charts(ward: Ward, tmp_path: Path) -> None:
    page = ward.page
    await ward.open_signed_in()
    await page.click(f'.tile[data-user-code="{MEDIUM.user_code}"]')
    await expect(page.locator("#patient")).to_be_visible()
    await expect(page.locator("#ward")).to_be_hidden()
    assert page.url.endswith(f"#/patient/{MEDIUM.user_code}")
    await expect(page.locator("#p-title")).to_have_text(MEDIUM.user_code)
    await expect(page.locator("#p-point")).to_have_attribute("data-point", "5")
    await expect(page.locator("#p-point")).to_contain_text("sedang")
    # the NEWS2 chart and one chart per vital (RR, SpO2, SBP, HR, temperature, DBP), each drawn
    charts = page.locator("#p-charts .chart")
    await expect(charts).to_have_count(7)
    await expect(charts.nth(0).locator("h3")).to_contain_text("NEWS2 point 5")
    await expect(charts.nth(1).locator("h3")).to_contain_text("RR 22 /min")
    news2_line = await charts.nth(0).locator("polyline").get_attribute("points")
    assert news2_line is not None and len(news2_line.split()) >= 2  # held from its point until now
    for i in range(1, 7):
        points = await charts.nth(i).locator("polyline").get_attribute("points")
        assert points is not None and len(points.split()) >= 20, (i, points)
    await expect(page.locator("#p-cause")).to_contain_text("Respiration")
    await expect(page.locator("#p-ecg")).to_contain_text("No ECG recording yet")
    await screenshot(page, "patient.png", tmp_path)
    # back to the ward
    await page.click("#patient a[href='#/']")
    await expect(page.locator("#ward")).to_be_visible()
    assert ward.foreign_requests() == []


async def test_oxygen_in_the_context_form_adds_two_points(ward: Ward) -> None:
    page = ward.page
    await ward.open_signed_in()
    await page.goto(f"{ward.url}/#/patient/{STABLE.user_code}")
    badge = page.locator("#p-point")
    await expect(badge).to_have_attribute("data-point", "0")
    await expect(page.locator("#ctx-oxygen")).not_to_be_checked()

    await page.check("#ctx-oxygen")
    await page.click("#ctx-save")

    await expect(page.locator("#ctx-status")).to_contain_text("Saved")
    await expect(badge).to_have_attribute("data-point", "2")
    await expect(badge).to_contain_text("rendah")
    await expect(page.locator("#ctx-oxygen")).to_be_checked()  # re-read from the service
    context = ward.service.service.engine.get_context(STABLE.user_code)
    assert context["on_oxygen"] is True and context["assumed"] is False
    current = ward.service.service.engine.current(STABLE.user_code)
    assert current is not None and current.point == 2
    assert ward.foreign_requests() == []


async def test_the_page_only_talks_to_the_service(ward: Ward) -> None:
    page = ward.page
    await ward.open_signed_in()
    await page.click(f'.tile[data-user-code="{DETERIORATING.user_code}"]')
    await expect(page.locator("#p-charts .chart")).to_have_count(7)
    seen = {re.sub(r"\?.*", "", u) for u in ward.requests}
    base = ward.url
    assert {f"{base}/", f"{base}/static/style.css", f"{base}/static/app.js", f"{base}/api/ward",
            f"{base}/api/events", f"{base}/api/ward/{DETERIORATING.user_code}"} <= seen, seen
    assert ward.foreign_requests() == []
