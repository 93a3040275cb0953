"""Standard BLE health characteristics: IEEE 11073 numbers, decoders, encoders, registry."""

from __future__ import annotations

import contextlib
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatt.health import (
    BLOOD_PRESSURE_MEASUREMENT,
    DECODERS,
    FLOAT_SPECIAL,
    HEART_RATE_MEASUREMENT,
    SFLOAT_SPECIAL,
    BloodPressureMeasurement,
    DateTime,
    GattDecodeError,
    HeartRateMeasurement,
    PlxContinuous,
    PlxSpotCheck,
    TemperatureMeasurement,
    UnknownCharacteristic,
    decode_characteristic,
    decoder_for,
    float_from_raw,
    float_to_raw,
    normalise_uuid,
    sfloat_from_raw,
    sfloat_to_raw,
)

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=300)
CONTRACT = {"heart_rate", "spo2", "systolic_bp", "diastolic_bp", "temperature", "respiratory_rate"}


def test_sfloat_vectors() -> None:
    assert sfloat_from_raw(0x0072) == 114.0
    assert sfloat_from_raw(0xF16F) == 36.7  # exponent -1, mantissa 367
    assert sfloat_from_raw(0x0FFF) == -1.0  # negative mantissa
    assert sfloat_from_raw(0x1005) == 50.0  # exponent +1
    assert sfloat_from_raw(0x8001) == 1e-8
    for code in (0x07FF, 0x0800, 0x07FE, 0x0802, 0x0801):
        assert sfloat_from_raw(code) is None
    assert sfloat_to_raw(None) == 0x07FF
    assert sfloat_to_raw(36.7) == 0xF16F
    assert sfloat_to_raw(98) == 0x0062
    assert sfloat_to_raw(120.0, exponent=-1) == 0xF4B0
    assert sfloat_to_raw(0) == 0
    with pytest.raises(ValueError, match="cannot represent"):
        sfloat_to_raw(1e12)
    with pytest.raises(ValueError, match="use None"):
        sfloat_to_raw(float("nan"))


def test_float_vectors() -> None:
    assert float_from_raw(0xFF00016F) == 36.7
    assert float_from_raw(0x00FFFFFF) == -1.0
    for code in (0x007FFFFF, 0x00800000, 0x007FFFFE, 0x00800002, 0x00800001):
        assert float_from_raw(code) is None
    assert float_to_raw(None) == 0x007FFFFF
    assert float_from_raw(float_to_raw(36.75)) == 36.75


@FUZZ
@given(st.integers(0, 0xFFFF))
def test_sfloat_any_raw_decodes(raw: int) -> None:
    value = sfloat_from_raw(raw)
    assert (value is None) == (raw in SFLOAT_SPECIAL)
    if value is not None:
        assert sfloat_from_raw(sfloat_to_raw(value)) == pytest.approx(value, rel=1e-9)


@FUZZ
@given(st.integers(0, 0xFFFFFFFF))
def test_float_any_raw_decodes(raw: int) -> None:
    value = float_from_raw(raw)
    assert (value is None) == (raw in FLOAT_SPECIAL)


@FUZZ
@given(st.integers(-2048, 2047))  # every tenth SFLOAT can hold
def test_sfloat_round_trip_tenths(tenths: int) -> None:
    assert sfloat_from_raw(sfloat_to_raw(tenths / 10)) == tenths / 10


def test_heart_rate_measurement() -> None:
    assert HeartRateMeasurement.from_bytes(b"\x00\x48").vitals() == {"heart_rate": 72.0}
    wide = HeartRateMeasurement.from_bytes(b"\x01\x2c\x01")
    assert wide.heart_rate == 300 and wide.wide
    m = HeartRateMeasurement.from_bytes(bytes.fromhex("1e 48 1000 0004 0002"))
    assert m == HeartRateMeasurement(72, True, 16, (1024, 512))
    assert m.rr_seconds == (1.0, 0.5)
    no_contact = HeartRateMeasurement.from_bytes(b"\x04\x48")
    assert no_contact.sensor_contact is False
    assert no_contact.vitals() == {}  # no skin contact: not a measurement
    assert HeartRateMeasurement.from_bytes(b"\x00\x00").vitals() == {}
    with pytest.raises(GattDecodeError, match=r"heart rate needs bytes 1\.\.2"):
        HeartRateMeasurement.from_bytes(b"\x01\x48")
    with pytest.raises(GattDecodeError, match="even number of bytes"):
        HeartRateMeasurement.from_bytes(b"\x10\x48\x00\x04\x01")
    with pytest.raises(GattDecodeError, match="flags"):
        HeartRateMeasurement.from_bytes(b"")


def test_plx() -> None:
    spot = PlxSpotCheck.from_bytes(bytes.fromhex("00 6100 4800"))
    assert spot.vitals() == {"spo2": 97.0, "heart_rate": 72.0}
    full = PlxSpotCheck(97.0, 72.0, DateTime(2024, 5, 1, 8, 30, 0), 0x0020, 0x000102, 3.5, True)
    assert PlxSpotCheck.from_bytes(bytes(full)) == full
    assert bytes(full)[0] == 0x1F
    nan = PlxSpotCheck.from_bytes(bytes.fromhex("00 ff07 4800"))
    assert nan.vitals() == {"heart_rate": 72.0}
    with pytest.raises(GattDecodeError, match="PLX spot-check: time stamp"):
        PlxSpotCheck.from_bytes(bytes.fromhex("01 6100 4800 e807"))
    cont = PlxContinuous(96.0, 70.0, spo2_slow=95.0, pulse_rate_slow=None, device_status=7)
    assert PlxContinuous.from_bytes(bytes(cont)) == cont
    assert bytes(cont)[0] == 0x0A
    assert cont.vitals() == {"spo2": 96.0, "heart_rate": 70.0}
    with pytest.raises(GattDecodeError, match="SpO2 fast"):
        PlxContinuous.from_bytes(bytes.fromhex("01 6100 4800"))


def test_blood_pressure_units() -> None:
    mmhg = BloodPressureMeasurement.from_bytes(bytes.fromhex("00 7800 5000 5b00"))
    assert mmhg.vitals() == {"systolic_bp": 120.0, "diastolic_bp": 80.0}
    kpa = BloodPressureMeasurement(16.0, 10.7, 12.5, "kPa", pulse_rate=72.0, user_id=1,
                                   measurement_status=0)
    again = BloodPressureMeasurement.from_bytes(bytes(kpa))
    assert again == kpa
    assert again.vitals() == {"systolic_bp": 120.0, "diastolic_bp": 80.3, "heart_rate": 72.0}
    assert bytes(kpa)[0] == 0x1D
    with pytest.raises(GattDecodeError, match="pulse rate"):
        BloodPressureMeasurement.from_bytes(bytes.fromhex("04 7800 5000 5b00 48"))


def test_temperature_units_and_timestamp() -> None:
    c = TemperatureMeasurement.from_bytes(bytes.fromhex("00 6f0100ff"))
    assert c.vitals() == {"temperature": 36.7}
    f = TemperatureMeasurement(98.6, fahrenheit=True, timestamp=DateTime(2024, 2, 29, 23, 59, 59),
                               temperature_type=2)
    again = TemperatureMeasurement.from_bytes(bytes(f))
    assert again == f
    assert again.vitals() == {"temperature": 37.0}
    assert again.timestamp is not None
    assert again.timestamp.to_datetime() == datetime(2024, 2, 29, 23, 59, 59)
    assert DateTime(0, 0, 0).to_datetime() is None  # unknown
    assert TemperatureMeasurement.from_bytes(bytes.fromhex("00 ffff7f00")).vitals() == {}
    with pytest.raises(GattDecodeError, match="temperature type"):
        TemperatureMeasurement.from_bytes(bytes.fromhex("04 6f0100ff"))


def test_registry() -> None:
    assert normalise_uuid("2A37") == HEART_RATE_MEASUREMENT == "00002a37-0000-1000-8000-00805f9b34fb"
    assert normalise_uuid(0x2A35) == BLOOD_PRESSURE_MEASUREMENT
    assert decoder_for("0x2a1c") is DECODERS["00002a1c-0000-1000-8000-00805f9b34fb"]
    assert decode_characteristic(HEART_RATE_MEASUREMENT.upper(), b"\x00\x48").vitals() == {
        "heart_rate": 72.0
    }
    with pytest.raises(UnknownCharacteristic, match="no decoder for characteristic 00002a19"):
        decoder_for("2a19")
    with pytest.raises(UnknownCharacteristic, match="not a UUID"):
        decoder_for("battery")


@FUZZ
@given(st.sampled_from(sorted(DECODERS)), st.binary(max_size=40))
def test_random_bytes_only_gatt_errors(uuid: str, data: bytes) -> None:
    try:
        m = decode_characteristic(uuid, data)
    except GattDecodeError:
        return
    assert set(m.vitals()) <= CONTRACT
    # whatever decodes re-encodes to something that decodes to the same measurement
    assert decode_characteristic(uuid, bytes(m)) == m


@FUZZ
@given(st.sampled_from(sorted(DECODERS)), st.binary(min_size=1, max_size=40), st.data())
def test_truncations_only_gatt_errors(uuid: str, data: bytes, draw: st.DataObject) -> None:
    cut = draw.draw(st.integers(0, len(data)))
    with contextlib.suppress(GattDecodeError):
        decode_characteristic(uuid, data[:cut])


sf = st.one_of(st.none(), st.integers(-2000, 2000).map(lambda t: t / 10))
u = st.one_of(st.none(), st.integers(0, 255))
stamps = st.one_of(st.none(), st.builds(DateTime, st.integers(0, 9999), st.integers(0, 12),
                                        st.integers(0, 31), st.integers(0, 23),
                                        st.integers(0, 59), st.integers(0, 59)))
measurements = st.one_of(
    st.builds(HeartRateMeasurement, st.integers(0, 65535), st.one_of(st.none(), st.booleans()),
              st.one_of(st.none(), st.integers(0, 65535)),
              st.lists(st.integers(0, 65535), max_size=8).map(tuple), st.booleans()),
    st.builds(PlxSpotCheck, sf, sf, stamps, st.one_of(st.none(), st.integers(0, 65535)),
              st.one_of(st.none(), st.integers(0, 2**24 - 1)), sf, st.booleans()),
    st.builds(PlxContinuous, sf, sf, sf, sf, sf, sf, st.one_of(st.none(), st.integers(0, 65535)),
              st.one_of(st.none(), st.integers(0, 2**24 - 1)), sf),
    st.builds(BloodPressureMeasurement, sf, sf, sf, st.sampled_from(["mmHg", "kPa"]), stamps, sf,
              u, st.one_of(st.none(), st.integers(0, 65535))),
    st.builds(TemperatureMeasurement, sf, st.booleans(), stamps, u),
)


@FUZZ
@given(measurements)
def test_round_trip(m: HeartRateMeasurement | PlxSpotCheck | PlxContinuous
                    | BloodPressureMeasurement | TemperatureMeasurement) -> None:
    decoded = type(m).from_bytes(bytes(m))
    if isinstance(m, HeartRateMeasurement):
        # an empty RR list and u8/u16 choice for rates > 255 are normalised by the encoder
        assert isinstance(decoded, HeartRateMeasurement)
        assert decoded.heart_rate == m.heart_rate
        assert (decoded.sensor_contact, decoded.energy_expended, decoded.rr_intervals) == (
            m.sensor_contact, m.energy_expended, m.rr_intervals)
    elif isinstance(m, PlxContinuous):
        # a fast / slow pair is sent whole once either half is present
        assert bytes(decoded) == bytes(m)
    else:
        assert decoded == m


# ------------------------------------------------------------------ Current Time, RACP


def test_current_time_round_trips_and_names_short_input() -> None:
    from gatt.health import CurrentTime

    moment = datetime(2026, 12, 1, 21, 30, 15, 500_000)
    ct = CurrentTime.from_datetime(moment)
    data = bytes(ct)
    assert len(data) == CurrentTime.SIZE and data[7] == 2 and data[8] == 128  # Tuesday, ½ s
    assert CurrentTime.from_bytes(data) == ct
    assert ct.time.to_datetime() == moment.replace(microsecond=0)
    with pytest.raises(GattDecodeError, match="day of week"):
        CurrentTime.from_bytes(data[:8])


def test_racp_command_and_responses_round_trip() -> None:
    from gatt.health import RacpCommand, RacpOp, RacpResponse, RacpResult

    report = RacpCommand(RacpOp.REPORT_STORED_RECORDS)
    assert bytes(report) == b"\x01\x01" and RacpCommand.from_bytes(b"\x01\x01") == report
    ok = RacpResponse(RacpOp.RESPONSE, RacpOp.REPORT_STORED_RECORDS, RacpResult.NO_RECORDS_FOUND)
    assert bytes(ok) == b"\x06\x00\x01\x06" and RacpResponse.from_bytes(bytes(ok)) == ok
    count = RacpResponse(RacpOp.NUMBER_OF_RECORDS, count=513)
    assert RacpResponse.from_bytes(bytes(count)).count == 513
    with pytest.raises(GattDecodeError, match="not a response"):
        RacpResponse.from_bytes(b"\x01\x01\x00\x00")
    with pytest.raises(GattDecodeError, match="request op code"):
        RacpResponse.from_bytes(b"\x06\x00\x01")
