"""E86 real-time uploads (group 0x06): exact layouts, "no value" codes, ECG, round trips, fuzz."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e86.constants import RealtimeKey
from e86.errors import E86Error, PayloadError, UnknownMessage
from e86.frame import Frame
from e86.realtime import (
    EcgSamples,
    PpgRaw,
    RealtimeValues,
    decode_realtime,
    ecg_frames,
    realtime_blood_pressure,
    realtime_heart_rate,
    realtime_respiratory_rate,
    realtime_spo2,
    realtime_sport,
)

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=300)


def rt(key: int, payload: str) -> RealtimeValues:
    value = decode_realtime(Frame(0x06, key, bytes.fromhex(payload)))
    assert isinstance(value, RealtimeValues)
    return value


def test_simple_values() -> None:
    assert rt(0x01, "48").vitals() == {"heart_rate": 72.0}
    assert rt(0x02, "61 ff ff").vitals() == {"spo2": 97.0}  # bytes after the first: unknown
    assert rt(0x07, "10").vitals() == {"respiratory_rate": 16.0}
    sport = rt(0x00, "e803 2c01 3200")
    assert (sport.steps, sport.distance, sport.calories) == (1000, 300, 50)
    assert sport.vitals() == {}


def test_zero_means_no_value() -> None:
    assert rt(0x02, "00").spo2 is None
    assert rt(0x02, "00").vitals() == {}
    assert rt(0x07, "00").respiratory_rate is None
    assert rt(0x01, "00").heart_rate is None


def test_blood_pressure_first_byte_is_systolic() -> None:
    # the vendor SDK calls byte 0 "bloodDBP": by position it is the SYSTOLIC value
    bp = rt(0x03, "78 50 48")
    assert (bp.systolic_bp, bp.diastolic_bp, bp.heart_rate) == (120, 80, 72)
    assert (bp.hrv, bp.spo2, bp.temperature) == (None, None, None)
    assert bp.vitals() == {"systolic_bp": 120.0, "diastolic_bp": 80.0, "heart_rate": 72.0}


def test_blood_pressure_trailing_fields_by_length() -> None:
    assert rt(0x03, "78 50 48 28").hrv == 40
    full = rt(0x03, "78 50 48 28 61 24 07")
    assert (full.hrv, full.spo2, full.temperature) == (40, 97, 36.7)
    assert full.vitals() == {
        "heart_rate": 72.0, "spo2": 97.0, "systolic_bp": 120.0, "diastolic_bp": 80.0,
        "temperature": 36.7,
    }
    # temperature integer without its tenths byte: not long enough, so absent
    assert rt(0x03, "78 50 48 28 61 24").temperature is None
    # tenths 15 = error / no value; the other vitals of the frame are kept
    errored = rt(0x03, "78 50 48 28 61 24 0f")
    assert errored.temperature is None
    assert errored.vitals()["spo2"] == 97.0


def test_ecg_signed_24_bit_little_endian() -> None:
    payload = bytes.fromhex("010000 ffffff 000080 ffff7f 2a")
    value = decode_realtime(Frame(0x06, 0x05, payload))
    assert value == EcgSamples((1, -1, -(2**23), 2**23 - 1), trailing=b"\x2a")
    assert value.fs == 250.0
    assert bytes(value.to_frame().payload) == payload
    with pytest.raises(PayloadError, match="24-bit"):
        EcgSamples((2**23,))


def test_ecg_frames_split() -> None:
    frames = ecg_frames(range(-300, 300), per_frame=250)
    assert [len(f.payload) for f in frames] == [750, 750, 300]
    samples = [s for f in frames for s in decode_realtime(f).samples]  # type: ignore[union-attr]
    assert samples == list(range(-300, 300))


def test_ppg_kept_raw() -> None:
    assert decode_realtime(Frame(0x06, 0x04, b"\x01\x02\x03")) == PpgRaw(b"\x01\x02\x03")


def test_errors() -> None:
    with pytest.raises(PayloadError, match="real-time sport needs 6 payload bytes, got 4"):
        decode_realtime(Frame(0x06, 0x00, bytes(4)))
    with pytest.raises(PayloadError, match="real-time blood pressure needs 3"):
        decode_realtime(Frame(0x06, 0x03, b"\x78\x50"))
    with pytest.raises(UnknownMessage, match="06 06"):
        decode_realtime(Frame(0x06, 0x06, b"\x00"))
    with pytest.raises(PayloadError, match="not a real-time upload"):
        decode_realtime(Frame(0x05, 0x01, b"\x00"))
    with pytest.raises(PayloadError, match="does not carry temperature"):
        RealtimeValues(RealtimeKey.HEART_RATE, heart_rate=70, temperature=36.5)


def test_encoders_exact_bytes() -> None:
    assert realtime_heart_rate(72).to_frame() == Frame(0x06, 0x01, b"\x48")
    assert realtime_spo2(None).to_frame() == Frame(0x06, 0x02, b"\x00")
    assert realtime_respiratory_rate(16).to_frame() == Frame(0x06, 0x07, b"\x10")
    assert realtime_sport(1000, 300, 50).to_frame().payload == bytes.fromhex("e8032c013200")
    assert realtime_blood_pressure(120, 80, 72).to_frame().payload == bytes.fromhex("785048")
    assert realtime_blood_pressure(120, 80, 72, spo2=97).to_frame().payload == bytes.fromhex(
        "7850480061"
    )
    assert realtime_blood_pressure(120, 80, 72, temperature=36.7).to_frame().payload == (
        bytes.fromhex("78504800002407")
    )


u8v = st.one_of(st.none(), st.integers(1, 255))
temps = st.one_of(st.none(), st.integers(10, 2559).map(lambda t10: t10 / 10))

values_st = st.one_of(
    st.builds(realtime_sport, st.integers(0, 65535), st.integers(0, 65535), st.integers(0, 65535)),
    st.builds(realtime_heart_rate, u8v),
    st.builds(realtime_spo2, u8v),
    st.builds(realtime_respiratory_rate, u8v),
    st.builds(realtime_blood_pressure, u8v, u8v, u8v, hrv=u8v, spo2=u8v, temperature=temps),
)


@FUZZ
@given(values_st)
def test_values_round_trip(value: RealtimeValues) -> None:
    assert decode_realtime(Frame.from_bytes(bytes(value))) == value


@FUZZ
@given(st.lists(st.integers(-(2**23), 2**23 - 1), max_size=400))
def test_ecg_round_trip(samples: list[int]) -> None:
    value = EcgSamples(tuple(samples))
    assert decode_realtime(Frame.from_bytes(bytes(value))) == value


@FUZZ
@given(st.integers(0, 9), st.binary(max_size=20))
def test_random_payloads_only_typed_errors(key: int, payload: bytes) -> None:
    try:
        value = decode_realtime(Frame(0x06, key, payload))
    except E86Error:
        return
    for name, v in value.vitals().items():
        assert name in {"heart_rate", "spo2", "systolic_bp", "diastolic_bp", "temperature",
                        "respiratory_rate"}
        assert v > 0
