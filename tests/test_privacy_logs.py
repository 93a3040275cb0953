"""No patient data in INFO logs: a whole flow through ingest (readings, a dead letter, an EWS
posted upstream, a context change, an ECG) logs no user_code and no vital value at INFO."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from tests.ingest.upstream import Upstream
from tests.support.ingest_service import (
    Api,
    connected,
    eventually,
    publish_once,
    reading,
    settings_for,
    topics,
)
from vitalgate.broker import Mosquitto
from vitalgate.contract import EcgChunk

USER_CODE = "PRIVxQ7zK2mW9"  # appears nowhere but in the patient's data
DEVICE = "c2aabbccdd01"


async def test_info_logs_carry_no_patient_data(
    tmp_path: Path, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with Upstream(api_key="up-key") as upstream:
        settings = settings_for(tmp_path / "data", mosquitto.url, upstream_url=upstream.url,
                                upstream_api_key="up-key")
        # subscribed before anything is published (the session starts clean: a message
        # published before the SUBACK never reaches it; seen once in CI as a 30 s timeout)
        async with connected(settings) as svc, Api(svc.url) as api:
            t = topics()
            now = int(time.time() * 1000)
            items = [(t.reading("gw-priv", DEVICE), reading(
                DEVICE, i, now - 60_000 + i * 1000, USER_CODE, heart_rate=137.0, spo2=88.0,
                respiratory_rate=27.0, systolic_bp=87.0, temperature=39.4).to_bytes()) for i in range(5)]
            bad = json.dumps({"v": 1, "device_id": DEVICE, "seq": 9, "ts": now, "user_code": USER_CODE,
                              "vitals": {"heart_rate": 999}}).encode()
            items.append((t.reading("gw-priv", DEVICE), bad))
            chunk = EcgChunk(device_id=DEVICE, recording=f"{DEVICE}-{now}", seq=0, ts=now, fs=250,
                             samples=[0] * 2500, last=True, user_code=USER_CODE)
            items.append((t.ecg("gw-priv", DEVICE), chunk.to_bytes()))
            publish_once(mosquitto.host, mosquitto.port, items, "privacy-pub")
            await eventually(lambda: upstream.accepted, timeout=30)
            status, _ = await api.call("PUT", f"/api/patient/{USER_CODE}/context",
                                       json={"consciousness": "V", "on_oxygen": True, "spo2_scale": 1})
            assert status == 200
    posted = upstream.accepted[0]
    assert posted["user_code"] == USER_CODE  # the data did flow where it is sent
    info = [r for r in caplog.records if r.levelno <= logging.INFO]
    assert info, "expected some INFO logging from the flow"
    leaks = [r.getMessage() for r in info
             if USER_CODE in r.getMessage() or any(v in r.getMessage() for v in ("137", "39.4"))]
    assert leaks == []
