from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vitalgate import contract as c

READING = {
    "v": 1, "device_id": "d061aed45894", "seq": 1234, "ts": 1632889813001,
    "vitals": {"heart_rate": 72, "spo2": 97, "systolic_bp": 120, "diastolic_bp": 80,
               "temperature": 36.6, "respiratory_rate": 16},
    "source": "realtime", "replayed": False, "user_code": "AMSe5Sn8Gkxj7",
}


def test_reference_reading_round_trips() -> None:
    batch = c.decode_readings(json.dumps(READING).encode())
    assert batch.errors == []
    (r,) = batch.readings
    assert r.vitals.present()["temperature"] == 36.6
    again = c.decode_readings(c.encode_readings([r]))
    assert again.readings == [r]


def test_array_with_bad_neighbour_keeps_good_items() -> None:
    bad = dict(READING, seq=-1)
    zero = dict(READING, seq=5, vitals={"spo2": 0})
    batch = c.decode_readings(json.dumps([READING, bad, zero, dict(READING, seq=9)]).encode())
    assert [r.seq for r in batch.readings] == [1234, 9]
    assert [e.reason for e in batch.errors] == ["schema", "schema"]
    assert "item 1" in batch.errors[0].detail and "seq" in batch.errors[0].detail
    assert "spo2" in batch.errors[1].detail


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe", "json"),
        (b"{not json", "json"),
        (json.dumps(dict(READING, v=2)).encode(), "version"),
        (b"x" * (c.MAX_PAYLOAD_BYTES + 1), "oversize"),
    ],
)
def test_rejects_name_the_reason(payload: bytes, reason: str) -> None:
    if reason in ("json", "oversize"):
        with pytest.raises(c.ContractError) as info:
            c.decode_readings(payload)
        assert info.value.reason == reason
    else:
        assert c.decode_readings(payload).errors[0].reason == reason


def test_topics_parse_and_build() -> None:
    t = c.Topics("vitals/v1")
    assert t.parse(t.reading("ward3-bed12", "d061aed45894")) == c.Topic(
        c.Kind.READING, "ward3-bed12", "d061aed45894"
    )
    assert t.parse(t.gateway_status("gw1")).kind is c.Kind.GATEWAY_STATUS
    assert t.parse(t.ews("AMSe5Sn8Gkxj7")).user_code == "AMSe5Sn8Gkxj7"
    with pytest.raises(c.ContractError):
        t.parse("vitals/v1/GW/d061aed45894/reading")
    with pytest.raises(c.ContractError):
        t.parse("other/gw/status")


def test_mac_forms() -> None:
    assert c.device_id_from_mac("D0:61:AE:D4:58:94") == "d061aed45894"
    assert c.mac_from_device_id("d061aed45894") == "D0:61:AE:D4:58:94"
    assert c.normalise_mac("d0-61-ae-d4-58-94") == "D0:61:AE:D4:58:94"
    with pytest.raises(ValueError):
        c.device_id_from_mac("D0:61:AE:D4:58")


@given(st.binary(max_size=512))
def test_random_bytes_never_crash(payload: bytes) -> None:
    try:
        batch = c.decode_readings(payload)
    except c.ContractError as exc:
        assert exc.reason in {"json", "oversize"}
    else:
        assert len(batch.readings) + len(batch.errors) >= 1
