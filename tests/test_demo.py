"""``vitalgate demo`` as a user runs it (a subprocess: broker, ingest, gateway with virtual
watches), and the embedded amqtt broker the demo falls back to without Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from vitalgate.contract import QOS
from vitalgate.demo import embedded_broker

URL_RE = re.compile(r"ward dashboard\s+(http://127\.0\.0\.1:\d+/)")
KEY_RE = re.compile(r"API key\s+(\S+)")
#: the demo runs this long (s); the checks below wait for conditions, bounded by these
DEMO_S = 45
STARTUP_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = DEMO_S + 60.0


class Output:
    """The demo's stdout, collected by a thread so the test can wait for a line without blocking."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.text = ""
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        self._thread.start()

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._cond:
                self.text += line
                self._cond.notify_all()

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        with self._cond:
            found = self._cond.wait_for(lambda: pattern.search(self.text), timeout)
            assert found, f"the demo never printed {pattern.pattern!r}; it printed:\n{self.text}"
            return found

    def join(self) -> str:
        self._thread.join(10)
        return self.text


def get_ward(base_url: str, key: str) -> tuple[int, Any]:
    req = urllib.request.Request(base_url + "api/ward", headers={"x-api-key": key})
    try:
        with urllib.request.urlopen(req, timeout=5) as res:
            return res.status, json.load(res)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)
    except urllib.error.URLError as exc:  # e.g. the demo stopped: the caller says why
        return 0, str(exc.reason)


def logs(tmp_path: Path) -> str:
    """The tail of each demo process's log, for a failure message."""
    out = []
    for log in sorted((tmp_path / "demo").glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-15:]
        out.append(f"\n--- {log.name} (tail)\n" + "\n".join(lines))
    return "".join(out)


def scored(ward: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in ward["data"]["patients"] if p.get("ews") and isinstance(p["ews"].get("point"), int)]


@pytest.mark.e2e
def test_demo_serves_a_ward_with_news2_scores_then_exits_0(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vitalgate", "demo", "--duration", str(DEMO_S), "--patients", "3",
         "--speed", "120", "--port", "0", "--data-dir", str(tmp_path / "demo")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    out = Output(proc)
    try:
        base_url = out.wait_for(URL_RE, STARTUP_TIMEOUT_S).group(1)
        key = out.wait_for(KEY_RE, STARTUP_TIMEOUT_S).group(1)
        assert len(key) >= 20

        def check(status: int, body: Any, want: int) -> None:
            if status != want:  # say why: the demo's output and its processes' logs
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(30)
                pytest.fail(f"GET /api/ward answered {status} ({body}), not {want}; the demo "
                            f"printed:\n{out.text}{logs(tmp_path)}")

        status, body = get_ward(base_url, "not-" + key)
        check(status, body, 401)

        # while it runs, the ward fills with the three patients and their NEWS2 scores
        deadline = time.monotonic() + DEMO_S - 5
        patients: list[dict[str, Any]] = []
        while len(patients) < 3:
            assert time.monotonic() < deadline, f"no 3 scored patients in the ward; last: {patients}"
            status, body = get_ward(base_url, key)
            check(status, body, 200)
            patients = scored(body)
            time.sleep(0.5)
        for p in patients:
            ews = p["ews"]
            assert 0 <= ews["point"] <= 20
            assert ews["result"] in ("normal", "rendah", "sedang", "tinggi")
            assert p["vitals"], p
        # the dashboard page itself is served (public; it signs in with the key)
        with urllib.request.urlopen(base_url, timeout=5) as res:
            assert res.status == 200 and b"vitalgate" in res.read()

        assert proc.wait(EXIT_TIMEOUT_S) == 0, out.join()
        text = out.join()
        assert "ward · 3 patients" in text, text
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(20)
        out.join()
        if proc.stdout is not None:
            proc.stdout.close()


async def test_embedded_broker_relays_qos1_between_two_paho_clients() -> None:
    async with embedded_broker() as url:
        parts = urlsplit(url)
        assert parts.hostname == "127.0.0.1" and parts.port
        received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        subscribed = threading.Event()

        def on_subscribe(client: mqtt.Client, userdata: Any, mid: int, codes: Any, props: Any) -> None:
            subscribed.set()

        def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
            received.put(msg)

        def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            client.subscribe("vitals/v1/#", qos=QOS)

        sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="demo-sub")
        sub.on_connect, sub.on_subscribe, sub.on_message = on_connect, on_subscribe, on_message
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="demo-pub")
        try:
            await asyncio.to_thread(sub.connect, parts.hostname, parts.port)
            sub.loop_start()
            assert await asyncio.to_thread(subscribed.wait, 10), "no SUBACK from the embedded broker"
            await asyncio.to_thread(pub.connect, parts.hostname, parts.port)
            pub.loop_start()
            info = pub.publish("vitals/v1/ward-1/c0ffee000001/reading", b'{"v":1}', qos=QOS)
            await asyncio.to_thread(info.wait_for_publish, 10)
            assert info.is_published()  # the broker's PUBACK came back
            msg = await asyncio.to_thread(received.get, True, 10)
            assert msg.topic == "vitals/v1/ward-1/c0ffee000001/reading"
            assert msg.payload == b'{"v":1}' and msg.qos == QOS
        finally:
            for client in (pub, sub):
                client.disconnect()
                client.loop_stop()


def test_ward_table_renders_patients_not_yet_scored_and_never_parses_api_text() -> None:
    """A patient without a score yet once rendered as the markup '[]–[/]', which killed rich's
    refresh thread: the terminal kept 'ward · 0 patients' all run. Cells are Text now."""
    from rich.console import Console

    from vitalgate.demo import patient_labels, ward_table

    labels = patient_labels(["sepsis_demo", "stable"])
    codes = list(labels)
    ward = {"patients": [
        {"user_code": codes[0], "ews": None, "vitals": {}, "device": {"connected": True}},
        {"user_code": codes[1], "ews": {"point": 7, "result": "tinggi", "partial": True},
         "vitals": {"heart_rate": {"value": 131.0}, "temperature": {"value": 39.24}},
         "device": {"connected": False}},
        {"user_code": "[bold]x[/]", "ews": {"result": "[/]"}, "vitals": {}},
    ]}
    console = Console(record=True, width=160, color_system=None)
    console.print(ward_table(ward, labels))
    text = console.export_text()
    assert "ward · 3 patients" in text
    assert "bed 1 · sepsis" in text and "bed 2 · stable" in text
    rows = [line for line in text.splitlines() if "│" in line]
    worst = next(i for i, line in enumerate(rows) if codes[1] in line)
    unscored = next(i for i, line in enumerate(rows) if codes[0] in line)
    assert worst < unscored  # worst first
    assert "tinggi" in rows[worst] and "131" in rows[worst] and "39.2" in rows[worst]
    assert "partial disconnected" in rows[worst]
    assert "[bold]x[/]" in text  # shown as it came, not parsed as markup


def test_demo_sepsis_reaches_sedang_or_tinggi_within_its_first_simulated_hour() -> None:
    """At the demo's 60× that hour is its first real minute (the stable mix showed nothing for
    minutes). Scored with the engine's own NEWS2 on the patient the demo's gateway simulates."""
    import numpy as np

    from ews.news2 import score_news2
    from simulators.physiology import fleet_patients
    from vitalgate.demo import SCENARIO_MIX, SEED

    assert SCENARIO_MIX[0] == "sepsis_demo"
    patient = fleet_patients(1, list(SCENARIO_MIX[:1]), seed=SEED, start_ms=0)[0]
    minutes = range(0, 91, 5)
    rows = [patient.vitals(m * 60_000) for m in minutes]
    vitals = ("heart_rate", "spo2", "systolic_bp", "temperature", "respiratory_rate")
    scores = score_news2({v: np.array([r.get(v, np.nan) for r in rows], dtype=float) for v in vitals})
    by_minute = dict(zip(minutes, scores.result.tolist(), strict=True))
    points = dict(zip(minutes, scores.points.tolist(), strict=True))
    assert points[0] <= 4, points  # it starts low: the rise is what the demo shows
    assert all(by_minute[m] in ("sedang", "tinggi") for m in range(45, 91, 5)), by_minute
    assert by_minute[60] == "tinggi" or points[60] >= 5, points
