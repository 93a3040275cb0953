"""Hypothesis-generated malformed MQTT payloads: dead letters, no crash, no valid data lost.

Random bytes, mutated valid JSON, wrong types and bad topic segments are published to a real
broker, interleaved with valid readings of another device. Every valid reading must be stored,
every message must be accounted for (stored or dead-lettered per the contract's own decoder),
and the service must stay healthy.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest import store
from ingest.consumer import Inbound, classify
from ingest.service import RunningService
from tests.support.ingest_service import (
    Api,
    connected_to,
    eventually,
    publish_once,
    reading,
)
from vitalgate.broker import Mosquitto
from vitalgate.contract import Topics

T0 = 1_700_000_000_000
FUZZ_DEV = "a0b1c2d3e4f5"
GOOD_DEV = "d061aed45894"
TOPICS = Topics()

VALID = {"v": 1, "device_id": FUZZ_DEV, "seq": 5, "ts": T0, "source": "realtime",
         "vitals": {"heart_rate": 72, "spo2": 97, "temperature": 36.6}, "user_code": "FUZZ"}
#: integers beyond what the store holds (2**70 stopped all ingestion on main) or plausible
HUGE = st.sampled_from([2**31, 2**53 + 1, 2**63, 2**64, 2**70, -(2**63) - 1, -(2**70)])
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | HUGE | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)


@st.composite
def mutated_json(draw: st.DrawFn) -> bytes:
    raw = bytearray(json.dumps(VALID).encode())
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(raw) - 1))
        raw[i] = draw(st.integers(0, 255))
    return bytes(raw)


@st.composite
def wrong_types(draw: st.DrawFn) -> bytes:
    obj: dict[str, Any] = json.loads(json.dumps(VALID))
    key = draw(st.sampled_from([*VALID, "vitals.heart_rate", "vitals.spo2"]))
    value = draw(JSONISH)
    if key.startswith("vitals."):
        obj["vitals"][key.split(".")[1]] = value
    else:
        obj[key] = value
    if draw(st.booleans()):
        obj = [obj, VALID]  # type: ignore[assignment]
    return json.dumps(obj).encode()


#: a valid message of each kind, one field replaced (by a huge integer, mostly)
OTHER_KINDS = [
    {"v": 1, "device_id": FUZZ_DEV, "connected": True, "rssi": -60, "battery": 50},
    {"v": 1, "online": True, "devices": 1, "buffered": 2, "evicted": 3},
    {"v": 1, "device_id": FUZZ_DEV, "recording": "r1", "seq": 0, "ts": T0, "fs": 250,
     "samples": [1, 2], "last": False},
]


@st.composite
def out_of_range(draw: st.DrawFn) -> bytes:
    obj: dict[str, Any] = dict(draw(st.sampled_from([VALID, *OTHER_KINDS])))
    obj[draw(st.sampled_from(sorted(obj)))] = draw(HUGE | JSONISH)
    return json.dumps(obj).encode()


@st.composite
def deeply_nested(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(10, 100_000))
    opener = draw(st.sampled_from(["[", "{"]))
    body = ('{"a":' * depth + "1" + "}" * depth) if opener == "{" else "[" * depth + "]" * depth
    if draw(st.booleans()):  # inside an otherwise valid reading
        return json.dumps(VALID).encode()[:-1] + b',"x":' + body.encode() + b"}"
    return body.encode()


PAYLOADS = st.one_of(st.binary(max_size=64), mutated_json(), wrong_types(), out_of_range(),
                     deeply_nested(), JSONISH.map(lambda o: json.dumps(o).encode()))
KINDS = st.sampled_from(["reading", "status", "ecg"])
# what a broker accepts in a topic level (Mosquitto disconnects a client that publishes control
# characters or non-characters, per MQTT 5 §1.5.4); wildcards and separators are excluded
SEGMENT = st.text(st.characters(codec="utf-8", categories=("L", "N", "P", "S", "Zs"),
                                exclude_characters="+#/\ufffe\uffff"), min_size=1, max_size=12)
TOPIC = st.one_of(
    KINDS.map(lambda k: f"{TOPICS.prefix}/gw-fuzz/{FUZZ_DEV}/{k}"),
    st.tuples(SEGMENT, KINDS).map(lambda t: f"{TOPICS.prefix}/gw-fuzz/{t[0]}/{t[1]}"),
    SEGMENT.map(lambda s: f"{TOPICS.prefix}/{s}/status"),
)


def _collect() -> list[tuple[str, bytes]]:
    cases: list[tuple[str, bytes]] = []

    @settings(max_examples=200, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(TOPIC, PAYLOADS)
    def draw(topic: str, payload: bytes) -> None:
        cases.append((topic, payload))

    draw()
    return cases


@pytest.fixture
async def svc(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[RunningService]:
    async with connected_to(tmp_path / "data", mosquitto.url, clock=lambda: T0 + 60_000) as service:
        yield service


async def test_malformed_payloads_dead_lettered_valid_ones_kept(svc: RunningService,
                                                                mosquitto: Mosquitto) -> None:
    cases = _collect()
    # the oracle: what the contract says each fuzz message must become
    expected_dead = 0
    distinct: set[tuple[str, bytes, str, str]] = set()  # an identical letter is kept once
    for topic, payload in cases:
        items = classify(Inbound(topic, payload, 0, 1, T0 + 60_000), TOPICS)  # the svc clock
        letters = [i for i in items if isinstance(i, store.DeadLetter)]
        expected_dead += len(letters)
        distinct.update((d.topic, d.payload, d.reason, d.detail) for d in letters)
    assert expected_dead > len(cases) // 2  # the generator mostly produces garbage
    good_topic = TOPICS.reading("gw-good", GOOD_DEV)
    stream: list[tuple[str, bytes]] = []
    for seq, case in enumerate(cases):
        stream.append(case)
        stream.append((good_topic, reading(GOOD_DEV, seq, T0 + seq, user_code="GOOD",
                                           heart_rate=60 + seq % 50).to_bytes()))
    publish_once(mosquitto.host, mosquitto.port, stream)
    m = svc.service.metrics
    await eventually(lambda: m.messages.total() >= len(stream), timeout=30)
    assert m.rejects.total() == expected_dead
    assert m.dead_letters.total() == len(distinct)
    assert m.dead_letter_repeats.total() == expected_dead - len(distinct)
    async with Api(svc.url) as api:
        _, body = await api.get("/api/medical-records/GOOD", type="HEART_RATE", size=500)
        assert body["data"]["totaldata"] == len(cases)
        _, body = await api.get("/api/dead-letters", size=1)
        assert body["data"]["totaldata"] == len(distinct)
        status, body = await api.get("/healthz")
        assert status == 200 and body["data"]["mqtt"]["connected"] is True
    assert svc.service.metrics.errors.total() == 0
