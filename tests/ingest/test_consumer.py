"""MQTT → store → REST on real parts: Mosquitto, SQLite and PostgreSQL, HTTP on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from ingest.service import RunningService
from simulators.ecg_synth import EcgSynth, to_counts
from tests.support.ingest_service import (
    Api,
    connected,
    eventually,
    publish_all,
    reading,
    running,
    settings_for,
)
from vitalgate.broker import Mosquitto
from vitalgate.contract import DeviceStatus, EcgChunk, Reading, Topics, Vitals, encode_readings

DEV = "d061aed45894"
GW = "ward3-bed12"
T0 = 1_700_000_000_000
TOPICS = Topics()

pytestmark = pytest.mark.usefixtures("ingest_engine")  # on SQLite and on PostgreSQL


@pytest.fixture
async def svc(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[RunningService]:
    # the service's clock is pinned just after the readings' times (T0), so they are fresh
    async with connected(settings_for(tmp_path / "data", mosquitto.url),
                         clock=lambda: T0 + 60_000) as service:
        yield service



async def _drained(svc: RunningService, batches_before: int) -> bool:
    c = svc.service.consumer
    return c.committed_batches > batches_before and c.queue_depth == 0


async def _count(svc: RunningService) -> int:
    from ingest import store

    return await svc.service.db.read(store.count_readings)


async def test_readings_stored_readable_and_scored(svc: RunningService, pub: mqtt.Client,
                                                   mosquitto: Mosquitto) -> None:
    got: list[bytes] = []
    lock = threading.Lock()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2)

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with lock:
            got.append(bytes(msg.payload))

    sub.on_message = on_message
    sub.connect(mosquitto.host, mosquitto.port)
    sub.subscribe(TOPICS.ews("+"), qos=1)
    sub.loop_start()
    try:
        vitals = {"heart_rate": 72, "spo2": 97, "systolic_bp": 120, "diastolic_bp": 80,
                  "temperature": 36.6, "respiratory_rate": 16}
        # published out of order: reads order by ts, not by arrival
        items = [reading(DEV, seq, T0 + seq * 1000, user_code="AMSe5Sn8Gkxj7", **vitals)
                 for seq in (3, 1, 2)]
        publish_all(pub, [(TOPICS.reading(GW, DEV), r.to_bytes()) for r in items])
        await eventually(lambda: _count_is(svc, 18))
        async with Api(svc.url) as api:
            status, body = await api.get("/api/medical-record/AMSe5Sn8Gkxj7/latest")
            assert status == 200
            latest = body["data"]
            assert latest["HEART_RATE"]["value"] == 72
            assert latest["HEART_RATE"]["created_at"] == T0 + 3000
            assert latest["HEART_RATE"]["device_mac"] == "D0:61:AE:D4:58:94"
            assert latest["HEART_RATE"]["member_id"] == "AMSe5Sn8Gkxj7"
            assert latest["HEART_RATE"]["method"] == "AUTOMATIC"
            assert latest["BLOOD_PRESSURE"]["value"] == {"systole": 120, "diastole": 80}
            assert latest["TEMPERATURE"]["value"] == 36.6
            assert latest["ELECTROCARDIOGRAPH"] is None
            status, body = await api.get("/api/medical-records/AMSe5Sn8Gkxj7", type="HEART_RATE",
                                         order="asc")
            assert [r["created_at"] for r in body["data"]["data"]] == [T0 + 1000, T0 + 2000, T0 + 3000]
            status, body = await api.get("/api/medical-records/AMSe5Sn8Gkxj7", type="BLOOD_PRESSURE",
                                         **{"from": T0 + 2000, "to": T0 + 3000})
            assert body["data"]["totaldata"] == 1
            assert body["data"]["data"][0]["value"] == {"systole": 120, "diastole": 80}
            status, body = await api.get("/api/medical-records/AMSe5Sn8Gkxj7", type="PULSE")
            assert status == 422 and "type" in body["message"]
        # the EWS of the patient is published (retained) on {prefix}/ews/{user_code}
        await eventually(lambda: bool(got))
        with lock:
            ews = json.loads(got[-1])
        assert ews["user_code"] == "AMSe5Sn8Gkxj7"
        assert ews["result"] in ("normal", "rendah", "sedang", "tinggi")
    finally:
        sub.disconnect()
        sub.loop_stop()


async def _count_is(svc: RunningService, n: int) -> bool:
    return await _count(svc) == n


async def test_duplicates_stored_once(svc: RunningService, pub: mqtt.Client) -> None:
    r = reading(DEV, 7, T0, heart_rate=80, spo2=95)
    topic = TOPICS.reading(GW, DEV)
    publish_all(pub, [(topic, r.to_bytes())] * 3 + [(topic, encode_readings([r, r]))])
    # a history record seen twice under two seqs, and a different reading as a sentinel
    hist = [Reading(device_id=DEV, seq=s, ts=T0 - 60_000, source="history",  # type: ignore[arg-type]
                    vitals=Vitals(heart_rate=66)) for s in (100, 101)]
    sentinel = reading(DEV, 8, T0 + 1000, heart_rate=81)
    publish_all(pub, [(topic, h.to_bytes()) for h in hist] + [(topic, sentinel.to_bytes())])
    await eventually(lambda: _count_is(svc, 2 + 1 + 1))
    # 4 repeats of seq 7, and the history record's second copy (seq 101)
    await eventually(lambda: svc.service.metrics.duplicates.total() >= 5)
    assert await _count(svc) == 4


async def test_bad_item_dead_lettered_good_ones_kept(svc: RunningService, pub: mqtt.Client) -> None:
    good = [reading(DEV, i, T0 + i, heart_rate=70 + i).model_dump(mode="json", exclude_none=True)
            for i in range(3)]
    bad = dict(good[1], seq=99, vitals={"heart_rate": 900})  # implausible
    payload = json.dumps([good[0], bad, good[1], good[2]]).encode()
    publish_all(pub, [(TOPICS.reading(GW, DEV), payload),
                      (TOPICS.reading(GW, DEV), b'{"v": 2, "device_id": "d061aed45894"}'),
                      (f"{TOPICS.prefix}/{GW}/not-a-device/reading", b"{}")])
    await eventually(lambda: _count_is(svc, 3))
    async with Api(svc.url) as api:
        await eventually(lambda: svc.service.metrics.dead_letters.total() == 3)
        _, body = await api.get("/api/dead-letters")
        letters = {d["reason"]: d for d in body["data"]["data"]}
    assert set(letters) == {"schema", "version", "topic"}
    assert "item 1" in letters["schema"]["detail"] and "heart_rate" in letters["schema"]["detail"]
    m = svc.service.metrics
    assert m.rejects.value(reason="schema") == 1
    assert m.rejects.value(reason="version") == 1
    assert m.rejects.value(reason="topic") == 1


async def test_auto_registration_and_api_assignment_wins(svc: RunningService, pub: mqtt.Client) -> None:
    status_msg = DeviceStatus(device_id=DEV, name="E86 5894", mac="D0:61:AE:D4:58:94",
                              connected=True, battery=81, rssi=-67, user_code="FROMSTATUS")
    publish_all(pub, [(TOPICS.device_status(GW, DEV), status_msg.to_bytes())])
    async with Api(svc.url) as api:
        async def device() -> dict[str, Any] | None:
            _, body = await api.get("/api/devices")
            items = body["data"]["data"]
            return items[0] if items else None

        dev = await eventually(device)
        assert dev["device_name"] == "E86 5894" and dev["device_type"] == "CONSUMER"
        assert dev["device_mac"] == "D0:61:AE:D4:58:94" and dev["device_holder"] == "unknown"
        assert dev["user_code"] == "FROMSTATUS" and dev["user_code_source"] == "status"
        assert dev["battery"] == 81 and dev["connected"] is True and dev["gateway_id"] == GW
        # the API assigns another patient: it wins over what the gateway says
        status, body = await api.call("PUT", f"/api/device/{dev['id']}", json={"user_code": "FROMAPI"})
        assert status == 200 and body["data"]["user_code_source"] == "api"
        publish_all(pub, [(TOPICS.device_status(GW, DEV), status_msg.to_bytes()),
                          (TOPICS.reading(GW, DEV), reading(DEV, 1, T0, user_code="FROMREADING").to_bytes())])
        await eventually(lambda: _count_is(svc, 1))
        _, body = await api.get("/api/medical-records/FROMAPI")
        assert body["data"]["totaldata"] == 1
        assert (await device())["user_code"] == "FROMAPI"  # type: ignore[index]
        # cleared: the gateway's patient applies again
        await api.call("PUT", f"/api/device/{dev['id']}", json={"user_code": None})
        publish_all(pub, [(TOPICS.reading(GW, DEV), reading(DEV, 2, T0 + 1, user_code="FROMREADING").to_bytes())])
        await eventually(lambda: _count_is(svc, 2))
        _, body = await api.get("/api/medical-records/FROMREADING")
        assert body["data"]["totaldata"] == 1


async def test_ecg_reassembled_analysed_and_heart_rate_stored(svc: RunningService,
                                                              pub: mqtt.Client) -> None:
    fs = 250.0
    counts = to_counts(EcgSynth(seed=3, heart_rate=75.0, origin_ms=T0).millivolts(T0, int(fs * 20))).tolist()
    rec = f"{DEV}-{T0}"
    chunks = [EcgChunk(device_id=DEV, recording=rec, seq=i, ts=T0 + i * 2000, fs=fs,
                       samples=counts[i * 500:(i + 1) * 500], last=(i == 9), user_code="ECGPATIENT")
              for i in range(10)]
    order = [9, 0, 1, 2, 3, 3, 4, 5, 6, 7]  # the last first, one repeated, chunk 8 late
    topic = TOPICS.ecg(GW, DEV)
    publish_all(pub, [(topic, chunks[i].to_bytes()) for i in order])
    async with Api(svc.url) as api:
        status, body = await api.get(f"/api/ecg/{rec}")
        assert status == 404  # chunk 8 still missing
        publish_all(pub, [(topic, chunks[8].to_bytes()), (topic, chunks[8].to_bytes())])

        async def analysed() -> Any:
            status, body = await api.get(f"/api/ecg/{rec}")
            return body["data"] if status == 200 and body["data"]["analysis"] else None

        data = await eventually(analysed, timeout=30)
        assert data["samples"] == counts
        assert data["n_samples"] == 5000 and data["fs"] == fs
        assert data["quality"] == "good"
        assert abs(data["mean_hr"] - 75) < 3
        _, body = await api.get("/api/medical-records/ECGPATIENT", type="HEART_RATE")
        hr = body["data"]["data"]
        assert len(hr) == 1 and hr[0]["source"] == "ecg" and hr[0]["created_at"] == T0
        _, body = await api.get("/api/medical-record/ECGPATIENT/latest")
        assert body["data"]["ELECTROCARDIOGRAPH"]["recording"] == rec
        _, body = await api.get("/api/ecg-recordings/ECGPATIENT")
        assert body["data"]["totaldata"] == 1
        _, body = await api.get("/api/medical-records/ECGPATIENT", type="ELECTROCARDIOGRAPH")
        assert body["data"]["data"][0]["value"]["recording"] == rec


# ------------------------------------------------------------------ issue 11: the door


@pytest.mark.parametrize("topic", [
    f"vitals/v1/{GW}/{DEV}/reading\n", f"vitals/v1/{GW}\n/{DEV}/reading",
    f"vitals/v1/{GW}/{DEV}\n/status", f"vitals/v1/{GW}\n/status",
])
def test_trailing_newline_in_a_topic_segment_is_a_topic_dead_letter(topic: str) -> None:
    """re.match with ``$`` let these through on main (Mosquitto refuses control characters in
    topics, so this is checked on the decoder: other brokers may not)."""
    from ingest import store
    from ingest.consumer import Inbound, classify

    payload = reading(DEV, 1, T0).to_bytes()
    (item,) = classify(Inbound(topic, payload, 0, 1, T0), TOPICS)
    assert isinstance(item, store.DeadLetter) and item.reason == "topic"


async def test_credentials_in_mqtt_url_are_used_and_never_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import subprocess

    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "ingest", "s3cret-pw"], check=True)
    broker = Mosquitto(workdir=tmp_path / "mq",
                       extra_conf=f"allow_anonymous false\npassword_file {passwd}\n")
    broker.start()
    try:
        caplog.set_level(logging.DEBUG)
        wrong = settings_for(tmp_path / "d1", f"mqtt://ingest:wrong@{broker.host}:{broker.port}")
        async with running(wrong) as svc:
            await asyncio.sleep(1.0)
            assert not svc.service.consumer.connected  # the password IS used: a wrong one fails
        url = f"mqtt://ingest:s3cret-pw@{broker.host}:{broker.port}"
        async with running(settings_for(tmp_path / "d2", url)) as svc:
            await eventually(lambda: svc.service.consumer.connected)
        assert f"MQTT connected to {broker.host}:{broker.port}" in caplog.text
        assert "s3cret-pw" not in caplog.text and "wrong@" not in caplog.text
    finally:
        broker.stop()
