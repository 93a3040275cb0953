"""Commands (app → watch) and the watch's replies and events, groups 0x01–0x04.

Each message is a frozen dataclass: ``to_frame()`` / ``bytes(msg)`` encode it, and
``Cls.from_frame(frame)`` decodes it (the virtual watch decodes commands, the gateway decodes
replies). Decoders ignore payload bytes beyond the fields they know. Reply layouts that the
reference does not give (device info, MAC, name, the generic command reply) are vitalgate
assumptions, listed in docs/e86-protocol.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import ClassVar, Self

from e86.constants import (
    DEVICE_EVENT_ACK,
    GET_REQUEST_PAYLOAD,
    REPLY_OK,
    AppControlKey,
    EcgMode,
    GetKey,
    Group,
    MeasurementType,
    SettingKey,
    WaveformType,
)
from e86.errors import PayloadError, UnknownMessage
from e86.frame import Frame
from e86.values import check_u8, check_uint, need


def expect(frame: Frame, group: int, key: int | None, what: str) -> None:
    """Raise PayloadError unless the frame is ``group key`` (any key if key is None)."""
    if frame.group != group or (key is not None and frame.key != key):
        want = f"{group:02x} {'kk' if key is None else f'{key:02x}'}"
        raise PayloadError(f"frame {frame.group:02x} {frame.key:02x} is not a {what} ({want})")


class Message:
    """Mixin: ``bytes(msg)`` is the encoded frame."""

    __slots__ = ()

    def to_frame(self) -> Frame:
        raise NotImplementedError

    def __bytes__(self) -> bytes:
        return bytes(self.to_frame())


# ------------------------------------------------------------------ settings (group 0x01)


@dataclass(frozen=True, slots=True)
class SetClock(Message):
    """``01 00``: year u16 LE, month, day, hour, minute, second, weekday (0 = Monday)."""

    year: int
    month: int
    day: int
    hour: int
    minute: int
    second: int
    weekday: int

    def __post_init__(self) -> None:
        check_uint("year", self.year, 16)
        for name, low, high in (
            ("month", 1, 12),
            ("day", 1, 31),
            ("hour", 0, 23),
            ("minute", 0, 59),
            ("second", 0, 59),
            ("weekday", 0, 6),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise PayloadError(f"clock {name} must be {low}..{high}, got {value!r}")

    @classmethod
    def from_datetime(cls, moment: datetime, tz: tzinfo | None = None) -> Self:
        """The watch clock for an aware ``moment``, as wall time in ``tz`` (default: its own)."""
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError("set-clock needs an aware datetime (with tzinfo)")
        local = moment.astimezone(tz) if tz is not None else moment
        return cls(
            local.year,
            local.month,
            local.day,
            local.hour,
            local.minute,
            local.second,
            local.weekday(),
        )

    def to_datetime(self, tz: tzinfo | None = None) -> datetime:
        """The wall time the watch was set to (naive unless tz is given)."""
        return datetime(
            self.year, self.month, self.day, self.hour, self.minute, self.second, tzinfo=tz
        )

    def to_frame(self) -> Frame:
        payload = self.year.to_bytes(2, "little") + bytes(
            (self.month, self.day, self.hour, self.minute, self.second, self.weekday)
        )
        return Frame(Group.SETTING, SettingKey.CLOCK, payload)

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        expect(frame, Group.SETTING, SettingKey.CLOCK, "set-clock")
        p = frame.payload
        need(p, 8, "set-clock")
        return cls(int.from_bytes(p[0:2], "little"), p[2], p[3], p[4], p[5], p[6], p[7])


#: Setting keys that take [on, interval_min].
MONITOR_KEYS = frozenset(
    {SettingKey.HEART_RATE_MONITOR, SettingKey.TEMPERATURE_MONITOR, SettingKey.SPO2_MONITOR}
)


@dataclass(frozen=True, slots=True)
class SetMonitoring(Message):
    """``01 0C`` heart rate, ``01 20`` temperature, ``01 26`` SpO2: [on, interval_min]."""

    key: SettingKey
    on: bool
    interval_min: int

    def __post_init__(self) -> None:
        if self.key not in MONITOR_KEYS:
            raise PayloadError(f"setting key {int(self.key):02x} is not a monitoring switch")
        object.__setattr__(self, "key", SettingKey(self.key))
        check_u8("interval_min", self.interval_min)

    @classmethod
    def heart_rate(cls, on: bool, interval_min: int) -> Self:
        return cls(SettingKey.HEART_RATE_MONITOR, on, interval_min)

    @classmethod
    def temperature(cls, on: bool, interval_min: int) -> Self:
        return cls(SettingKey.TEMPERATURE_MONITOR, on, interval_min)

    @classmethod
    def spo2(cls, on: bool, interval_min: int) -> Self:
        return cls(SettingKey.SPO2_MONITOR, on, interval_min)

    def to_frame(self) -> Frame:
        return Frame(Group.SETTING, self.key, bytes((int(self.on), self.interval_min)))

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        expect(frame, Group.SETTING, None, "monitoring switch")
        if frame.key not in MONITOR_KEYS:
            raise PayloadError(f"setting key {frame.key:02x} is not a monitoring switch")
        need(frame.payload, 2, "monitoring switch")
        return cls(SettingKey(frame.key), bool(frame.payload[0]), frame.payload[1])


# ------------------------------------------------------------------ get (group 0x02)


@dataclass(frozen=True, slots=True)
class GetRequest(Message):
    """``02 kk`` with its fixed two-byte payload (``47 43`` device info, ``47 46`` functions,
    ``47 4D`` MAC, ``47 50`` name / version)."""

    key: GetKey

    def __post_init__(self) -> None:
        if self.key not in GET_REQUEST_PAYLOAD:
            raise PayloadError(f"get key {self.key!r} is unknown")
        object.__setattr__(self, "key", GetKey(self.key))

    def to_frame(self) -> Frame:
        return Frame(Group.GET, self.key, GET_REQUEST_PAYLOAD[self.key])

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        expect(frame, Group.GET, None, "get request")
        if frame.key not in GET_REQUEST_PAYLOAD:
            raise UnknownMessage(frame.group, frame.key, "unknown get request")
        want = GET_REQUEST_PAYLOAD[GetKey(frame.key)]
        if frame.payload[:2] != want:
            raise PayloadError(
                f"get request {frame.key:02x} carries {frame.payload.hex(' ')!r}, expected {want.hex(' ')}"
            )
        return cls(GetKey(frame.key))


@dataclass(frozen=True, slots=True)
class DeviceInfo(Message):
    """Reply ``02 00``: battery % u8, firmware major u8, firmware minor u8 (vitalgate
    assumption: the reference only says "battery, firmware …")."""

    battery: int
    firmware_major: int = 0
    firmware_minor: int = 0

    def __post_init__(self) -> None:
        check_u8("firmware_major", self.firmware_major)
        check_u8("firmware_minor", self.firmware_minor)
        if (
            isinstance(self.battery, bool)
            or not isinstance(self.battery, int)
            or not 0 <= self.battery <= 100
        ):
            raise PayloadError(f"battery must be 0..100 %, got {self.battery!r}")

    @property
    def firmware(self) -> str:
        return f"{self.firmware_major}.{self.firmware_minor}"

    def to_frame(self) -> Frame:
        return Frame(
            Group.GET,
            GetKey.DEVICE_INFO,
            bytes((self.battery, self.firmware_major, self.firmware_minor)),
        )

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        expect(frame, Group.GET, GetKey.DEVICE_INFO, "device-info reply")
        need(frame.payload, 3, "device-info reply")
        return cls(*frame.payload[:3])


@dataclass(frozen=True, slots=True)
class Functions(Message):
    """Reply ``02 01``: the supported-functions bitmap, kept as bytes."""

    bitmap: bytes

    def to_frame(self) -> Frame:
        return Frame(Group.GET, GetKey.FUNCTIONS, self.bitmap)

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        expect(frame, Group.GET, GetKey.FUNCTIONS, "functions reply")
        return cls(frame.payload)


_MAC_RE = re.compile(r"^[0-9A-F]{2}(:[0-9A-F]{2}){5}$")


@dataclass(frozen=True, slots=True)
class MacAddress(Message):
    """Reply ``02 02``: the 6 MAC bytes in display order (vitalgate assumption)."""

    mac: str

    def __post_init__(self) -> None:
        if not isinstance(self.mac, str) or not _MAC_RE.fullmatch(self.mac.upper()):
            raise PayloadError(f"not a MAC address: {self.mac!r}")
        object.__setattr__(self, "mac", self.mac.upper())

    def to_frame(self) -> Frame:
        return Frame(Group.GET, GetKey.MAC, bytes.fromhex(self.mac.replace(":", "")))

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        expect(frame, Group.GET, GetKey.MAC, "MAC reply")
        need(frame.payload, 6, "MAC reply")
        return cls(frame.payload[:6].hex(":").upper())


@dataclass(frozen=True, slots=True)
class DeviceName(Message):
    """Reply ``02 03``: the device name / version as UTF-8 text (vitalgate assumption)."""

    name: str

    def to_frame(self) -> Frame:
        return Frame(Group.GET, GetKey.NAME_VERSION, self.name.encode())

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        expect(frame, Group.GET, GetKey.NAME_VERSION, "name reply")
        try:
            return cls(frame.payload.decode())
        except UnicodeDecodeError:
            raise PayloadError(f"name reply is not UTF-8: {frame.payload.hex(' ')}") from None


# ------------------------------------------------------------------ app control (group 0x03)


@dataclass(frozen=True, slots=True)
class MeasureOnce(Message):
    """``03 2F [on, type]``: one-shot measurement (type 0 HR, 1 BP, 2 SpO2, 3 RR, 4 temp)."""

    on: bool
    type: MeasurementType

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "type", MeasurementType(self.type))
        except ValueError:
            raise PayloadError(f"measurement type {self.type!r} is unknown") from None

    def to_frame(self) -> Frame:
        return Frame(Group.APP_CONTROL, AppControlKey.MEASURE, bytes((int(self.on), self.type)))

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        expect(frame, Group.APP_CONTROL, AppControlKey.MEASURE, "one-shot measurement")
        need(frame.payload, 2, "one-shot measurement")
        return cls(bool(frame.payload[0]), frame.payload[1])  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class RealtimeUpload(Message):
    """``03 09 [on, …]``: real-time data upload on/off; ``options`` are the bytes after ``on``
    (the ECG start sequence sends ``03 02``)."""

    on: bool
    options: bytes = b""

    def to_frame(self) -> Frame:
        return Frame(
            Group.APP_CONTROL, AppControlKey.REALTIME_UPLOAD, bytes((int(self.on),)) + self.options
        )

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        expect(frame, Group.APP_CONTROL, AppControlKey.REALTIME_UPLOAD, "real-time upload switch")
        need(frame.payload, 1, "real-time upload switch")
        return cls(bool(frame.payload[0]), frame.payload[1:])


@dataclass(frozen=True, slots=True)
class WaveformUpload(Message):
    """``03 0B [on, type]``: waveform upload on/off."""

    on: bool
    type: int

    def __post_init__(self) -> None:
        check_u8("waveform type", self.type)

    def to_frame(self) -> Frame:
        return Frame(
            Group.APP_CONTROL, AppControlKey.WAVEFORM_UPLOAD, bytes((int(self.on), self.type))
        )

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        expect(frame, Group.APP_CONTROL, AppControlKey.WAVEFORM_UPLOAD, "waveform upload switch")
        need(frame.payload, 2, "waveform upload switch")
        return cls(bool(frame.payload[0]), frame.payload[1])


@dataclass(frozen=True, slots=True)
class EcgControl(Message):
    """``03 02 [mode]``: 2 = first step of the vendor ECG start, 0 = stop."""

    mode: EcgMode

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "mode", EcgMode(self.mode))
        except ValueError:
            raise PayloadError(f"ECG mode {self.mode!r} is unknown") from None

    def to_frame(self) -> Frame:
        return Frame(Group.APP_CONTROL, AppControlKey.ECG, bytes((self.mode,)))

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        expect(frame, Group.APP_CONTROL, AppControlKey.ECG, "ECG switch")
        need(frame.payload, 1, "ECG switch")
        return cls(frame.payload[0])  # type: ignore[arg-type]


def ecg_start_sequence() -> list[Frame]:
    """The vendor ECG start: send each after the previous reply."""
    return [
        EcgControl(EcgMode.START).to_frame(),
        WaveformUpload(True, WaveformType.ECG).to_frame(),
        RealtimeUpload(True, b"\x03\x02").to_frame(),
        WaveformUpload(True, WaveformType.PPG).to_frame(),
    ]


def ecg_stop() -> Frame:
    """``03 02 [00]``."""
    return EcgControl(EcgMode.STOP).to_frame()


@dataclass(frozen=True, slots=True)
class WearStatus(Message):
    """``03 14 [ecg_status, ppg_status]`` from the watch; ppg 0 = worn, 1 = off the wrist."""

    ecg_status: int
    ppg_status: int

    def __post_init__(self) -> None:
        check_u8("ecg_status", self.ecg_status)
        check_u8("ppg_status", self.ppg_status)

    @property
    def worn(self) -> bool:
        return self.ppg_status == 0

    def to_frame(self) -> Frame:
        return Frame(
            Group.APP_CONTROL, AppControlKey.WEAR_STATUS, bytes((self.ecg_status, self.ppg_status))
        )

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        expect(frame, Group.APP_CONTROL, AppControlKey.WEAR_STATUS, "wear status")
        need(frame.payload, 2, "wear status")
        return cls(frame.payload[0], frame.payload[1])


# ------------------------------------------------------------------ device control (group 0x04)


@dataclass(frozen=True, slots=True)
class DeviceEvent(Message):
    """``04 kk …``: an event from the watch; answer it with ``event.ack()``."""

    key: int
    payload: bytes = b""

    def __post_init__(self) -> None:
        check_u8("event key", self.key)

    def ack(self) -> DeviceEventAck:
        return DeviceEventAck(self.key)

    def to_frame(self) -> Frame:
        return Frame(Group.DEVICE_CONTROL, self.key, self.payload)

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        expect(frame, Group.DEVICE_CONTROL, None, "device event")
        return cls(frame.key, frame.payload)


@dataclass(frozen=True, slots=True)
class DeviceEventAck(Message):
    """``04 kk [00]``: the app's acknowledgement of device event kk."""

    key: int

    def __post_init__(self) -> None:
        check_u8("event key", self.key)

    def to_frame(self) -> Frame:
        return Frame(Group.DEVICE_CONTROL, self.key, bytes((DEVICE_EVENT_ACK,)))

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        expect(frame, Group.DEVICE_CONTROL, None, "device event ack")
        if frame.payload != bytes((DEVICE_EVENT_ACK,)):
            raise PayloadError(
                f"device event ack {frame.key:02x} must carry 00, got {frame.payload.hex(' ')!r}"
            )
        return cls(frame.key)


# ------------------------------------------------------------------ generic reply


@dataclass(frozen=True, slots=True)
class CommandReply(Message):
    """The watch's answer to a setting / control command: same group and key; vitalgate
    assumes payload ``[status]`` with 0 = OK (the payload is kept whole)."""

    group: int
    key: int
    payload: bytes = field(default=bytes((REPLY_OK,)))

    def __post_init__(self) -> None:
        check_u8("group", self.group)
        check_u8("key", self.key)

    @classmethod
    def ok(cls, frame_or_message: Frame | Message) -> Self:
        """The OK reply to a command."""
        frame = (
            frame_or_message if isinstance(frame_or_message, Frame) else frame_or_message.to_frame()
        )
        return cls(frame.group, frame.key)

    @property
    def status(self) -> int | None:
        return self.payload[0] if self.payload else None

    @property
    def is_ok(self) -> bool:
        return self.status in (None, REPLY_OK)

    def answers(self, command: Frame | Message) -> bool:
        frame = command if isinstance(command, Frame) else command.to_frame()
        return (frame.group, frame.key) == (self.group, self.key)

    def to_frame(self) -> Frame:
        return Frame(self.group, self.key, self.payload)

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        return cls(frame.group, frame.key, frame.payload)

    #: documentation only: which groups use this reply.
    GROUPS: ClassVar[frozenset[int]] = frozenset({Group.SETTING, Group.APP_CONTROL, Group.HISTORY})
