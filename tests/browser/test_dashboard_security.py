"""The dashboard under its security headers, with scoped keys, in a real headless Chromium."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from ingest import keys
from tests.browser.harness import MEDIUM, STABLE, UI_TIMEOUT_MS, Ward

pytestmark = pytest.mark.browser


async def test_the_csp_is_in_force_and_the_page_works_under_it(ward: Ward) -> None:
    page = ward.page
    violations: list[str] = []
    page.on("console", lambda msg: violations.append(msg.text)
            if "Content Security Policy" in msg.text else None)
    response = await page.goto(ward.url + "/")
    assert response is not None
    csp = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert response.headers["x-frame-options"] == "DENY"
    await ward.sign_in()
    await page.wait_for_selector("#ward:not([hidden]) .tile", timeout=UI_TIMEOUT_MS)
    await page.click(f'.tile[data-user-code="{MEDIUM.user_code}"]')
    await expect(page.locator("#p-charts .chart")).to_have_count(7)
    assert violations == []
    # the browser enforces it: an injected inline script does not run (and is reported)
    ran = await page.evaluate("""() => { const s = document.createElement('script');
        s.textContent = 'window.__inline = 1'; document.body.append(s);
        return window.__inline === 1 }""")
    assert ran is False
    assert ward.foreign_requests() == []


async def test_an_unknown_patient_is_shown_as_unknown_not_as_the_previous_one(ward: Ward) -> None:
    page = ward.page
    await ward.open_signed_in()
    await page.goto(f"{ward.url}/#/patient/{MEDIUM.user_code}")
    await expect(page.locator("#p-point")).to_have_attribute("data-point", "5")
    await expect(page.locator("#p-charts .chart")).to_have_count(7)
    await page.goto(f"{ward.url}/#/patient/NOBODY")
    await expect(page.locator("#p-title")).to_have_text("NOBODY")
    await expect(page.locator("#p-point")).to_have_text("unknown patient")
    await expect(page.locator("#p-charts .chart")).to_have_count(0)
    await expect(page.locator("#context-form")).to_be_hidden()
    # and back to a known one: its page again, with the form
    await page.goto(f"{ward.url}/#/patient/{STABLE.user_code}")
    await expect(page.locator("#p-point")).to_have_attribute("data-point", "0")
    await expect(page.locator("#context-form")).to_be_visible()


async def test_a_read_only_key_sees_the_ward_but_cannot_change_the_context(ward: Ward) -> None:
    db = ward.service.service.db
    key = str(db.write_sync(lambda c: keys.create(c, "ward-screen", 1, ["read"])))
    page = ward.page
    await page.goto(ward.url + "/")
    await ward.sign_in(key)
    await expect(page.locator("#tiles .tile")).to_have_count(3)
    await page.goto(f"{ward.url}/#/patient/{STABLE.user_code}")
    await expect(page.locator("#p-point")).to_have_attribute("data-point", "0")
    await page.check("#ctx-oxygen")
    await page.click("#ctx-save")
    await expect(page.locator("#ctx-status")).to_contain_text("Not saved")
    await expect(page.locator("#ctx-status")).to_contain_text("clinical")
    assert ward.service.service.engine.get_context(STABLE.user_code)["assumed"] is True
