"""E86 commands (app → watch), replies and events: exact bytes, round trips, fuzzing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e86 import commands
from e86.clock import set_clock
from e86.constants import BlockStatus, EcgMode, GetKey, HistoryKind, MeasurementType
from e86.errors import E86Error, PayloadError, UnknownMessage
from e86.frame import Frame
from e86.history import BlockAck, HistoryDelete, HistoryRequest
from e86.messages import AppMessage, decode_app_message, decode_watch_message

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=300)


def _hex(frame: Frame) -> str:
    return f"{frame.group:02x} {frame.key:02x} {frame.payload.hex(' ')}".strip()


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        (commands.GetRequest(GetKey.DEVICE_INFO), "02 00 47 43"),
        (commands.GetRequest(GetKey.FUNCTIONS), "02 01 47 46"),
        (commands.GetRequest(GetKey.MAC), "02 02 47 4d"),
        (commands.GetRequest(GetKey.NAME_VERSION), "02 03 47 50"),
        (commands.SetMonitoring.heart_rate(True, 10), "01 0c 01 0a"),
        (commands.SetMonitoring.temperature(True, 60), "01 20 01 3c"),
        (commands.SetMonitoring.spo2(False, 0), "01 26 00 00"),
        (commands.MeasureOnce(True, MeasurementType.BLOOD_PRESSURE), "03 2f 01 01"),
        (commands.MeasureOnce(False, MeasurementType.TEMPERATURE), "03 2f 00 04"),
        (commands.RealtimeUpload(True), "03 09 01"),
        (commands.WaveformUpload(True, 1), "03 0b 01 01"),
        (commands.EcgControl(EcgMode.STOP), "03 02 00"),
        (commands.DeviceEventAck(0x12), "04 12 00"),
        (HistoryRequest(HistoryKind.TEMPERATURE), "05 1e"),
        (HistoryDelete(HistoryKind.SPO2), "05 45"),
        (BlockAck(BlockStatus.RESEND), "05 80 04"),
    ],
)
def test_command_bytes_and_watch_side_decoding(message: AppMessage, wire: str) -> None:
    frame = message.to_frame()
    assert _hex(frame) == wire
    assert bytes(message) == bytes(frame)
    assert decode_app_message(Frame.from_bytes(bytes(message))) == message


def test_vendor_ecg_start_and_stop_sequence() -> None:
    assert [_hex(f) for f in commands.ecg_start_sequence()] == [
        "03 02 02",
        "03 0b 01 01",
        "03 09 01 03 02",
        "03 0b 01 00",
    ]
    assert _hex(commands.ecg_stop()) == "03 02 00"
    decoded = [decode_app_message(f) for f in commands.ecg_start_sequence()]
    assert decoded[0] == commands.EcgControl(EcgMode.START)
    assert decoded[2] == commands.RealtimeUpload(True, b"\x03\x02")


def test_set_clock_from_aware_datetime_in_gateway_timezone() -> None:
    # 2021-09-29 04:30:13 UTC is Wednesday 11:30:13 in Jakarta (UTC+7)
    now = datetime(2021, 9, 29, 4, 30, 13, tzinfo=UTC)
    cmd = set_clock(now, ZoneInfo("Asia/Jakarta"))
    assert cmd == commands.SetClock(2021, 9, 29, 11, 30, 13, 2)
    assert _hex(cmd.to_frame()) == "01 00 e5 07 09 1d 0b 1e 0d 02"
    assert decode_app_message(cmd.to_frame()) == cmd
    assert cmd.to_datetime() == datetime(2021, 9, 29, 11, 30, 13)
    # weekday 0 = Monday
    cet = timezone(timedelta(hours=1))
    monday = commands.SetClock.from_datetime(datetime(2024, 1, 1, 9, tzinfo=cet))
    assert monday.weekday == 0
    with pytest.raises(ValueError, match="aware"):
        commands.SetClock.from_datetime(datetime(2024, 1, 1))


def test_set_clock_rejects_bad_fields() -> None:
    with pytest.raises(PayloadError, match=r"month must be 1\.\.12"):
        commands.SetClock(2024, 13, 1, 0, 0, 0, 0)
    bad = Frame(0x01, 0x00, bytes.fromhex("e807 01 01 18 00 00 00"))  # hour 24
    with pytest.raises(PayloadError, match="hour"):
        decode_app_message(bad)
    with pytest.raises(PayloadError, match="set-clock needs 8 payload bytes, got 3"):
        decode_app_message(Frame(0x01, 0x00, b"\xe8\x07\x01"))


def test_get_request_with_wrong_magic_is_rejected() -> None:
    with pytest.raises(PayloadError, match="expected 47 43"):
        decode_app_message(Frame(0x02, 0x00, b"\x47\x44"))
    with pytest.raises(UnknownMessage, match="02 09"):
        decode_app_message(Frame(0x02, 0x09, b"GC"))


@pytest.mark.parametrize(
    "message",
    [
        commands.DeviceInfo(81, 1, 7),
        commands.Functions(b"\xff\x0f\x00"),
        commands.MacAddress("D0:61:AE:D4:58:94"),
        commands.DeviceName("E86 5894"),
        commands.WearStatus(0, 1),
        commands.DeviceEvent(0x12, b"\x01\x02"),
        commands.CommandReply(0x01, 0x0C),
        commands.CommandReply(0x03, 0x2F, b"\x01"),
    ],
)
def test_reply_round_trip_gateway_side(message: object) -> None:
    frame = message.to_frame()  # type: ignore[attr-defined]
    assert decode_watch_message(Frame.from_bytes(bytes(frame))) == message


def test_reply_details() -> None:
    info = commands.DeviceInfo(81, 1, 7)
    assert _hex(info.to_frame()) == "02 00 51 01 07"
    assert info.firmware == "1.7"
    assert _hex(commands.MacAddress("d0:61:ae:d4:58:94").to_frame()) == "02 02 d0 61 ae d4 58 94"
    assert not commands.WearStatus(0, 1).worn
    assert commands.WearStatus(0, 0).worn
    event = commands.DeviceEvent(0x12, b"\x01")
    assert _hex(event.ack().to_frame()) == "04 12 00"
    reply = commands.CommandReply.ok(commands.SetMonitoring.heart_rate(True, 5))
    assert reply.is_ok
    assert reply.answers(commands.SetMonitoring.heart_rate(True, 5))
    assert not commands.CommandReply(0x01, 0x0C, b"\x01").is_ok
    with pytest.raises(PayloadError, match=r"battery must be 0\.\.100"):
        decode_watch_message(Frame(0x02, 0x00, b"\x65\x01\x00"))
    with pytest.raises(PayloadError, match="device-info reply needs 3 payload bytes, got 1"):
        decode_watch_message(Frame(0x02, 0x00, b"\x50"))
    with pytest.raises(PayloadError, match="not UTF-8"):
        decode_watch_message(Frame(0x02, 0x03, b"\xff\xfe"))


def test_unknown_messages() -> None:
    with pytest.raises(UnknownMessage, match="unknown group"):
        decode_watch_message(Frame(0x09, 0x00))
    with pytest.raises(UnknownMessage, match="01 7f"):
        decode_watch_message(Frame(0x01, 0x7F, b"\x00"))
    with pytest.raises(UnknownMessage, match="06 06"):
        decode_watch_message(Frame(0x06, 0x06, b"\x00"))
    with pytest.raises(UnknownMessage):
        decode_app_message(Frame(0x06, 0x01, b"\x48"))


def test_constructor_validation() -> None:
    with pytest.raises(PayloadError, match="interval_min"):
        commands.SetMonitoring.heart_rate(True, 300)
    with pytest.raises(PayloadError, match="not a monitoring switch"):
        commands.SetMonitoring(0x00, True, 5)  # type: ignore[arg-type]
    with pytest.raises(PayloadError, match="measurement type 9"):
        commands.MeasureOnce(True, 9)  # type: ignore[arg-type]
    with pytest.raises(PayloadError, match="ECG mode 5"):
        commands.EcgControl(5)  # type: ignore[arg-type]
    with pytest.raises(PayloadError, match="not a MAC"):
        commands.MacAddress("nope")
    with pytest.raises(PayloadError, match="is not a set-clock"):
        commands.SetClock.from_frame(Frame(0x06, 0x01, b"\x48"))


app_frames = st.builds(
    Frame,
    group=st.integers(0, 8),
    key=st.sampled_from([0x00, 0x01, 0x02, 0x03, 0x09, 0x0B, 0x0C, 0x14, 0x1A, 0x1E, 0x20, 0x26,
                         0x2F, 0x40, 0x47, 0x80, 0x99]),
    payload=st.binary(max_size=12),
)


@FUZZ
@given(app_frames)
def test_decoders_raise_only_typed_errors(frame: Frame) -> None:
    for decode in (decode_app_message, decode_watch_message):
        try:
            message = decode(frame)
        except E86Error:
            continue
        # whatever decodes re-encodes to a frame of the same group and key
        again = message.to_frame()
        assert (again.group, again.key) == (frame.group, frame.key)


@FUZZ
@given(
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31),
                 timezones=st.just(UTC)),
    st.integers(-12 * 60, 14 * 60),
)
def test_set_clock_round_trip(moment: datetime, offset_min: int) -> None:
    tz = timezone(timedelta(minutes=offset_min))
    cmd = commands.SetClock.from_datetime(moment, tz)
    assert commands.SetClock.from_frame(Frame.from_bytes(bytes(cmd))) == cmd
    assert cmd.to_datetime(tz) == moment.astimezone(tz).replace(microsecond=0)
