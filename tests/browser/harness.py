"""A ward to look at: a real ingest service on loopback fed over a real Mosquitto, and a real
headless Chromium (Debian's ``/usr/bin/chromium``) driven by Playwright.

Playwright never downloads a browser here: it launches ``CHROMIUM`` with a fresh profile
directory and with every background service that would call home switched off, and the tests
record every request the page makes to prove that it only talks to the ingest service.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import pytest
from playwright.async_api import BrowserContext, Page, Request, async_playwright

from ingest.service import RunningService
from tests.support.ingest_service import TEST_KEY, publish_all
from vitalgate.clock import epoch_ms
from vitalgate.contract import DeviceStatus, Reading, Topics, Vitals

#: Debian's Chromium (apt-get install chromium); never a browser Playwright downloaded.
CHROMIUM: Final = Path(os.environ.get("VITALGATE_CHROMIUM", "/usr/bin/chromium"))
#: set to 1 to skip the browser tests on a machine without Chromium (they fail otherwise).
SKIP_ENV: Final = "VITALGATE_SKIP_BROWSER"
#: headless, no GPU, and no background traffic (updates, sync, QUIC probes, first-run pages).
CHROMIUM_ARGS: Final = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)
#: how long the page may take to show what the service knows (ms): generous for a busy
#: 2-core machine; the tests wait for a condition, they never sleep a fixed time.
UI_TIMEOUT_MS: Final = 15_000
#: the viewport of the screenshots in docs/img
VIEWPORT: Final = {"width": 1280, "height": 860}

GATEWAY: Final = "ward-3b"
#: the service scores the median of each vital's last k readings (IngestSettings.median_k)
MEDIAN_K: Final = 3
TOPICS: Final = Topics()


def chromium_or_fail() -> str:
    """The Chromium executable; a clear failure (or, with VITALGATE_SKIP_BROWSER=1, a skip)."""
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return str(CHROMIUM)
    found = shutil.which("chromium")
    if found and "VITALGATE_CHROMIUM" not in os.environ:
        return found
    message = (f"Chromium not found at {CHROMIUM}: install chromium "
               "(apt-get install -y --no-install-recommends chromium), "
               f"or set {SKIP_ENV}=1 to skip the browser tests")
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(message)
    pytest.fail(message, pytrace=False)


# --------------------------------------------------------------------------------- patients

#: NEWS2 (scale 1, alert, on air) of each vital set below, per docs/ref news2.md:
#: all in the 0 band → 0, normal
NORMAL: Final = {"respiratory_rate": 16.0, "spo2": 98.0, "systolic_bp": 124.0, "diastolic_bp": 78.0,
                 "heart_rate": 72.0, "temperature": 36.8}
#: pulse 95 → 1; the rest 0 → 1, rendah (risk low)
MILD: Final = {**NORMAL, "heart_rate": 95.0}
#: RR 22 → 2, SpO2 95 → 1, pulse 100 → 1, temperature 38.5 → 1 → 5, sedang (risk medium)
UNWELL: Final = {"respiratory_rate": 22.0, "spo2": 95.0, "systolic_bp": 118.0, "diastolic_bp": 74.0,
                 "heart_rate": 100.0, "temperature": 38.5}
#: RR 26 → 3, SpO2 90 → 3, SBP 95 → 2, pulse 120 → 2, temperature 39.2 → 2 → 12, tinggi (high)
SEPTIC: Final = {"respiratory_rate": 26.0, "spo2": 90.0, "systolic_bp": 95.0, "diastolic_bp": 55.0,
                 "heart_rate": 120.0, "temperature": 39.2}


@dataclass(frozen=True)
class Patient:
    user_code: str
    device_id: str
    name: str
    battery: int


STABLE: Final = Patient("BED01", "c0ffee000001", "E86-01", 84)
DETERIORATING: Final = Patient("BED02", "c0ffee000002", "E86-02", 67)
MEDIUM: Final = Patient("BED03", "c0ffee000003", "E86-03", 45)
PATIENTS: Final = (STABLE, DETERIORATING, MEDIUM)


@dataclass
class Feed:
    """Publishes like a gateway: device status and readings, QoS 1, acknowledged by the broker."""

    client: mqtt.Client
    seq: dict[str, int] = field(default_factory=dict)

    def status(self, patients: Iterable[Patient]) -> None:
        now = epoch_ms()
        publish_all(self.client, [
            (TOPICS.device_status(GATEWAY, p.device_id),
             DeviceStatus(device_id=p.device_id, name=p.name, connected=True, battery=p.battery,
                          rssi=-61, last_seen=now, user_code=p.user_code).to_bytes())
            for p in patients
        ])

    def readings(self, patient: Patient, vitals: dict[str, float], *, count: int,
                 every_ms: int, jitter: float = 0.0) -> None:
        """``count`` readings of ``vitals`` ending now, ``every_ms`` apart (oldest first); with
        ``jitter`` each value wanders a little (deterministically) so trend charts have shape."""
        now = epoch_ms()
        items = []
        for i in range(count):
            seq = self.seq.get(patient.device_id, 0)
            self.seq[patient.device_id] = seq + 1
            # -jitter .. +jitter, repeatable; the newest MEDIAN_K readings (what the score
            # uses) are exact so that the score is the one documented on the vital set
            wobble = jitter * math.sin(i / 3) if i < count - MEDIAN_K else 0.0
            values = {k: round(v + wobble * (0.1 if k == "temperature" else 1.0), 1)
                      for k, v in vitals.items()}
            reading = Reading(device_id=patient.device_id, seq=seq,
                              ts=now - (count - 1 - i) * every_ms,
                              user_code=patient.user_code, vitals=Vitals(**values))
            items.append((TOPICS.reading(GATEWAY, patient.device_id), reading.to_bytes()))
        publish_all(self.client, items)


@dataclass
class Ward:
    service: RunningService
    feed: Feed
    context: BrowserContext
    page: Page
    requests: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.service.url

    async def sign_in(self, key: str = TEST_KEY) -> None:
        page = self.page
        await page.fill("#apikey", key)
        await page.click("#signin-form button[type=submit]")

    async def open_signed_in(self) -> None:
        await self.page.goto(self.url + "/")
        await self.sign_in()
        await self.page.wait_for_selector("#ward:not([hidden]) .tile", timeout=UI_TIMEOUT_MS)

    def foreign_requests(self) -> list[str]:
        """Requests to anything but the ingest service on 127.0.0.1 (data: URLs are local)."""
        out = []
        for url in self.requests:
            parts = urlsplit(url)
            if parts.scheme in ("data", "about", "blob"):
                continue
            if parts.hostname != "127.0.0.1" or parts.port != self.service.port:
                out.append(url)
        return out


@contextlib.asynccontextmanager
async def browser_on(service: RunningService, feed: Feed, profile: Path) -> AsyncIterator[Ward]:
    """The ward of ``service`` in a headless Chromium (a fresh profile directory ``profile``);
    every request the page makes is recorded in :attr:`Ward.requests`."""
    executable = chromium_or_fail()
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(profile), executable_path=executable, headless=True,
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
            yield Ward(service, feed, context, page, requests)
        finally:
            await context.close()
