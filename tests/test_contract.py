from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

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


# ------------------------------------------------------------------ bounds (issue 11)

DEV = "d061aed45894"
STATUS = {"v": 1, "device_id": DEV, "connected": True}
GW_STATUS = {"v": 1, "online": True}
CHUNK = {"v": 1, "device_id": DEV, "recording": f"{DEV}-1632889813001", "seq": 0,
         "ts": 1632889813001, "fs": 250, "samples": [1, 2, 3], "last": True}
EWS = {"v": 1, "user_code": "AMSe5Sn8Gkxj7", "point": 3, "result": "rendah",
       "cause": ["Heart rate 120"], "produce_at": 1632889813001}
BEYOND_INT64 = 2**70


def _schema_error(kind: c.Kind, obj: object) -> c.ContractError:
    with pytest.raises(c.ContractError) as info:
        c.decode(kind, json.dumps(obj).encode())
    assert info.value.reason == "schema"
    return info.value


@pytest.mark.parametrize(
    ("kind", "obj", "field"),
    [
        (c.Kind.DEVICE_STATUS, dict(STATUS, rssi=BEYOND_INT64), "rssi"),
        (c.Kind.DEVICE_STATUS, dict(STATUS, rssi=-128), "rssi"),
        (c.Kind.DEVICE_STATUS, dict(STATUS, rssi=21), "rssi"),
        (c.Kind.GATEWAY_STATUS, dict(GW_STATUS, devices=BEYOND_INT64), "devices"),
        (c.Kind.GATEWAY_STATUS, dict(GW_STATUS, buffered=BEYOND_INT64), "buffered"),
        (c.Kind.GATEWAY_STATUS, dict(GW_STATUS, evicted=BEYOND_INT64), "evicted"),
        (c.Kind.GATEWAY_STATUS, dict(GW_STATUS, evicted=-1), "evicted"),
        (c.Kind.ECG, dict(CHUNK, seq=BEYOND_INT64), "seq"),
        (c.Kind.ECG, dict(CHUNK, samples=[0] * (c.MAX_ECG_CHUNK_SAMPLES + 1)), "samples"),
        (c.Kind.ECG, dict(CHUNK, recording="r\n"), "recording"),
        (c.Kind.ECG, dict(CHUNK, recording="../../etc"), "recording"),
        (c.Kind.DEVICE_STATUS, dict(STATUS, model="m" * 200_000), "model"),
        (c.Kind.DEVICE_STATUS, dict(STATUS, name="n" * 129), "name"),
        (c.Kind.DEVICE_STATUS, dict(STATUS, mac="not a mac"), "mac"),
        (c.Kind.DEVICE_STATUS, dict(STATUS, user_code="P1\n"), "user_code"),
        (c.Kind.GATEWAY_STATUS, dict(GW_STATUS, version="v" * 65), "version"),
        (c.Kind.EWS, dict(EWS, cause=["x"] * 50_000), "cause"),
        (c.Kind.EWS, dict(EWS, cause=["x" * 201]), "cause"),
        (c.Kind.EWS, dict(EWS, missing=["spo2"] * 33), "missing"),
        (c.Kind.EWS, dict(EWS, components={f"k{i}": 1 for i in range(33)}), "components"),
        (c.Kind.EWS, dict(EWS, components={"heart_rate": 2**70}), "components"),
    ],
)
def test_out_of_range_values_are_schema_errors_naming_the_field(
        kind: c.Kind, obj: dict[str, object], field: str) -> None:
    """Each of these passed main's contract (and 2**70 then failed SQLite's bind)."""
    err = _schema_error(kind, obj)
    assert field in err.detail


def test_a_cause_list_of_100k_is_refused_by_the_model_too() -> None:
    """REST bodies (POST /ews) are validated by the same model, with no MQTT size limit."""
    with pytest.raises(ValidationError) as info:
        c.Ews.model_validate(dict(EWS, cause=["x"] * 100_000))
    assert info.value.errors()[0]["loc"] == ("cause",)


def test_bounds_keep_what_real_gateways_send() -> None:
    assert c.decode(c.Kind.DEVICE_STATUS, json.dumps(dict(
        STATUS, rssi=-127, name="E86 5894", mac="D0:61:AE:D4:58:94", model="E86",
        battery=100)).encode())
    assert c.decode(c.Kind.DEVICE_STATUS, json.dumps(dict(STATUS, mac="d061aed45894")).encode())
    assert c.decode(c.Kind.GATEWAY_STATUS, json.dumps(dict(
        GW_STATUS, version="0.1.0", devices=4, buffered=c.MAX_COUNTER, evicted=0)).encode())
    assert c.decode(c.Kind.ECG, json.dumps(dict(
        CHUNK, seq=c.MAX_ECG_CHUNK_SEQ, samples=[2**23 - 1] * c.MAX_ECG_CHUNK_SAMPLES)).encode())


@pytest.mark.parametrize("depth", [c.MAX_JSON_DEPTH + 1, 1000, 100_000])
def test_deep_json_is_a_contract_error_not_a_recursion_error(depth: int) -> None:
    for payload in (b"[" * depth, b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
        with pytest.raises(c.ContractError) as info:
            c.decode_readings(payload)
        assert info.value.reason in ("json", "oversize")
        for kind in (c.Kind.DEVICE_STATUS, c.Kind.GATEWAY_STATUS, c.Kind.ECG, c.Kind.EWS):
            with pytest.raises(c.ContractError):
                c.decode(kind, payload)


def test_depth_scan_ignores_brackets_inside_strings() -> None:
    name = "[" * 1000 + '\\"{' * 100  # brackets and escaped quotes inside a string
    obj = dict(STATUS, name=name[:128])
    assert c.json_depth(json.dumps(obj).encode()) == 1
    assert c.json_depth(b'[[["\\\\"]]]') == 3  # an escaped backslash ends before the quote
    assert c.json_depth(b"[" * (c.MAX_JSON_DEPTH + 5), c.MAX_JSON_DEPTH) == c.MAX_JSON_DEPTH + 1


def test_too_deep_counts_first_then_scans() -> None:
    """Few openers cannot nest past the limit; many openers are scanned (wide is not deep)."""
    limit = c.MAX_JSON_DEPTH
    assert not c.json_too_deep(b"[" * limit + b"]" * limit, limit)
    assert c.json_too_deep(b"[" * (limit + 1), limit)
    assert c.json_too_deep("{\"a\":" * (limit + 1), limit)
    assert not c.json_too_deep(b"[" + b"[1]," * 1000 + b"[1]]", limit)  # 1 002 openers, depth 2
    assert not c.json_too_deep(json.dumps(["[" * 100]).encode(), limit)  # inside a string
    with pytest.raises(c.ContractError, match="deeper"):
        c.load_json(b"[" * (limit + 1) + b"]" * (limit + 1))


def test_reading_array_length_is_bounded() -> None:
    with pytest.raises(c.ContractError) as info:  # tiny junk items: one error, not 2 001
        c.decode_readings(json.dumps([{}] * (c.MAX_READINGS_PER_MESSAGE + 1)).encode())
    assert info.value.reason == "schema" and "exceeds" in info.value.detail
    item = {"device_id": DEV, "seq": 1, "ts": 1, "vitals": {"spo2": 97}}
    assert len(c.decode_readings(json.dumps([item] * 1000).encode()).readings) == 1000


@pytest.mark.parametrize(
    "topic",
    ["vitals/v1/gw1\n/status", "vitals/v1/gw1/d061aed45894\n/reading",
     "vitals/v1/ews/AMSe5Sn8Gkxj7\n", "vitals/v1/gw1\n/d061aed45894/ecg"],
)
def test_topic_segments_with_a_trailing_newline_are_refused(topic: str) -> None:
    with pytest.raises(c.ContractError) as info:
        c.Topics("vitals/v1").parse(topic)
    assert info.value.reason == "topic"


def test_identifier_patterns_match_whole() -> None:
    for pattern, good in ((c.USER_CODE_RE, "AMSe5Sn8Gkxj7"), (c.DEVICE_ID_RE, DEV),
                          (c.GATEWAY_ID_RE, "ward3-bed12"), (c.STREAM_RE, "0123456789abcdef")):
        assert c.matches(pattern, good)
        assert not c.matches(pattern, good + "\n")
        assert not c.matches(pattern, None)
    with pytest.raises(ValueError):
        c.mac_from_device_id(DEV + "\n")


# ------------------------------------------------------------ property tests: every kind

_KINDS = {c.Kind.READING: READING, c.Kind.DEVICE_STATUS: dict(STATUS, rssi=-60, battery=50),
          c.Kind.GATEWAY_STATUS: dict(GW_STATUS, devices=1, buffered=2, evicted=3),
          c.Kind.ECG: CHUNK, c.Kind.EWS: EWS,
          c.Kind.CMD: {"v": 1, "cmd": "republish", "device_id": DEV, "stream": "0123456789abcdef",
                       "from_seq": 1, "to_seq": 5}}
HUGE = st.one_of(st.integers(min_value=2**31), st.integers(max_value=-(2**31)),
                 st.sampled_from([2**63, 2**64, 2**70, -(2**63) - 1, 10**30]))
JSONISH = st.recursive(
    st.none() | st.booleans() | HUGE | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


def _decode_any(kind: c.Kind, payload: bytes) -> None:
    """Decoding may only succeed or raise ContractError; a success is within the bounds."""
    try:
        if kind is c.Kind.READING:
            batch = c.decode_readings(payload)
            for e in batch.errors:
                assert isinstance(e, c.ContractError)
            for r in batch.readings:
                assert 0 <= r.seq <= 2**53 and 0 <= r.ts < 10**14
            return
        msg = c.decode(kind, payload)
    except c.ContractError:
        return
    for value in msg.model_dump().values():
        if isinstance(value, int) and not isinstance(value, bool):
            assert -(2**63) <= value < 2**63  # everything decoded fits the store


def _nested(depth: int, opener: str) -> bytes:
    close = {"[": "]", "{": "}"}
    if opener == "{":
        return ('{"a":' * depth + "1" + "}" * depth).encode()
    return (opener * depth + close[opener] * depth).encode()


@given(st.sampled_from(sorted(_KINDS)), st.data())
def test_any_field_replaced_by_hostile_json_decodes_or_is_a_contract_error(
        kind: c.Kind, data: st.DataObject) -> None:
    obj: dict[str, object] = json.loads(json.dumps(_KINDS[kind]))
    key = data.draw(st.sampled_from(sorted(obj)))
    obj[key] = data.draw(JSONISH)
    _decode_any(kind, json.dumps(obj).encode())


@given(st.sampled_from(sorted(_KINDS)), st.integers(1, 50_000), st.sampled_from(["[", "{"]),
       st.booleans())
def test_nesting_of_any_depth_decodes_or_is_a_contract_error(
        kind: c.Kind, depth: int, opener: str, inside_field: bool) -> None:
    nested = _nested(depth, opener)
    if inside_field:  # the deep value inside an otherwise valid message
        payload = json.dumps(_KINDS[kind]).encode()[:-1] + b',"x":' + nested + b"}"
    else:
        payload = nested
    _decode_any(kind, payload)
    if depth + inside_field > c.MAX_JSON_DEPTH:
        with pytest.raises(c.ContractError):
            c.load_json(payload)


@given(st.sampled_from(sorted(_KINDS)), st.binary(max_size=2048))
def test_random_bytes_for_every_kind(kind: c.Kind, payload: bytes) -> None:
    _decode_any(kind, payload)
