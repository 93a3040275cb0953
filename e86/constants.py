"""Every constant of the E86 (Yucheng "YC") watch protocol, in one place.

Source: /work/shared/ref/e86-protocol.md (collected from Yucheng's Android SDK 2.5 and public
reverse engineering of sibling watches; never measured on a real E86). When a real watch
disagrees, correct it HERE and in the simulated watch together. Values marked "vitalgate
assumption" are not in the reference; docs/e86-protocol.md lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType
from typing import Final

# ------------------------------------------------------------------ advertising and GATT

#: The advertised name starts with the model ("E86 5894": model, space, last two MAC bytes).
NAME_PREFIX: Final = "E86"
MODEL: Final = "E86"
#: Yucheng's company id in the manufacturer-specific advertising data (reported, unconfirmed).
COMPANY_ID: Final = 0x7810

#: The one vendor service.
SERVICE_UUID: Final = "be940000-7333-be46-b7ae-689e71722bd5"
#: write + indicate: commands from the app and the watch's replies.
COMMAND_CHAR_UUID: Final = "be940001-7333-be46-b7ae-689e71722bd5"
#: indicate: bulk data (real-time values, history blocks, ECG).
DATA_CHAR_UUID: Final = "be940003-7333-be46-b7ae-689e71722bd5"
#: Client Characteristic Configuration Descriptor (subscribe to both characteristics).
CCCD_UUID: Final = "00002902-0000-1000-8000-00805f9b34fb"
#: Optional standard services some firmwares expose; never depended upon.
BATTERY_SERVICE_UUID: Final = "0000180f-0000-1000-8000-00805f9b34fb"
DEVICE_INFORMATION_SERVICE_UUID: Final = "0000180a-0000-1000-8000-00805f9b34fb"

# ------------------------------------------------------------------ frame

#: group u8, key u8, length u16 LE (of the whole frame).
HEADER_SIZE: Final = 4
#: CRC-16/CCITT-FALSE, little-endian, after the payload.
CRC_SIZE: Final = 2
#: header + CRC: the length field is payload + 6.
FRAME_OVERHEAD: Final = HEADER_SIZE + CRC_SIZE
#: Largest payload vitalgate accepts (vitalgate assumption: the SDK sends at most a few hundred
#: bytes per frame; a larger length field is garbage and triggers a resync).
MAX_PAYLOAD: Final = 4096
MAX_FRAME: Final = MAX_PAYLOAD + FRAME_OVERHEAD
#: CRC-16/CCITT-FALSE parameters.
CRC_POLY: Final = 0x1021
CRC_INIT: Final = 0xFFFF
#: Smallest ATT payload (default MTU 23 minus the 3-byte ATT header).
MIN_ATT_PAYLOAD: Final = 20


class Group(IntEnum):
    """First frame byte."""

    SETTING = 0x01
    GET = 0x02
    APP_CONTROL = 0x03
    #: watch → app events; each acknowledged with ``04 kk`` payload ``00``.
    DEVICE_CONTROL = 0x04
    HISTORY = 0x05
    REALTIME = 0x06
    #: raw ECG/PPG files.
    COLLECT = 0x07


class SettingKey(IntEnum):
    """Group 0x01 keys."""

    CLOCK = 0x00
    HEART_RATE_MONITOR = 0x0C
    TEMPERATURE_MONITOR = 0x20
    SPO2_MONITOR = 0x26


class GetKey(IntEnum):
    """Group 0x02 keys."""

    DEVICE_INFO = 0x00
    FUNCTIONS = 0x01
    MAC = 0x02
    NAME_VERSION = 0x03


#: The fixed two-byte payload of each get request ("GC", "GF", "GM", "GP").
GET_REQUEST_PAYLOAD: Final = MappingProxyType(
    {
        GetKey.DEVICE_INFO: b"\x47\x43",
        GetKey.FUNCTIONS: b"\x47\x46",
        GetKey.MAC: b"\x47\x4d",
        GetKey.NAME_VERSION: b"\x47\x50",
    }
)


class AppControlKey(IntEnum):
    """Group 0x03 keys."""

    #: payload [mode]: 2 starts the vendor ECG sequence, 0 stops it.
    ECG = 0x02
    #: payload [on, …]: real-time data upload.
    REALTIME_UPLOAD = 0x09
    #: payload [on, type]: waveform upload.
    WAVEFORM_UPLOAD = 0x0B
    #: payload [ecg_status, ppg_status], sent by the watch.
    WEAR_STATUS = 0x14
    #: payload [on, type]: one-shot measurement.
    MEASURE = 0x2F


class EcgMode(IntEnum):
    """Payload of ``03 02``."""

    STOP = 0x00
    START = 0x02


class WaveformType(IntEnum):
    """Second byte of ``03 0B`` as used by the vendor ECG start sequence."""

    PPG = 0x00
    ECG = 0x01


#: ppg_status of ``03 14``: 0 = worn, 1 = off the wrist.
PPG_WORN: Final = 0
PPG_OFF_WRIST: Final = 1


class MeasurementType(IntEnum):
    """Second byte of the one-shot measurement ``03 2F [on, type]``."""

    HEART_RATE = 0
    BLOOD_PRESSURE = 1
    SPO2 = 2
    RESPIRATORY_RATE = 3
    TEMPERATURE = 4


class RealtimeKey(IntEnum):
    """Group 0x06 keys (watch → app)."""

    SPORT = 0x00
    HEART_RATE = 0x01
    SPO2 = 0x02
    BLOOD_PRESSURE = 0x03
    PPG = 0x04
    ECG = 0x05
    RESPIRATORY_RATE = 0x07


#: ECG samples per second of ``06 05``.
ECG_SAMPLE_RATE: Final = 250
#: Bytes per ECG sample (signed 24-bit little-endian).
ECG_SAMPLE_SIZE: Final = 3
#: Temperature tenths byte meaning "error / no value".
TEMPERATURE_TENTHS_ERROR: Final = 15


class HistoryKey(IntEnum):
    """Group 0x05 keys: requests (app → watch; the header reply uses the same key), record
    frames (watch → app), block end (both ways) and deletes (app → watch)."""

    SPORT = 0x02
    SLEEP = 0x04
    HEART_RATE = 0x06
    BLOOD_PRESSURE = 0x08
    ALL = 0x09
    SPO2 = 0x1A
    TEMPERATURE = 0x1E

    SPORT_RECORDS = 0x11
    SLEEP_RECORDS = 0x13
    HEART_RATE_RECORDS = 0x15
    BLOOD_PRESSURE_RECORDS = 0x17
    ALL_RECORDS = 0x18
    SPO2_RECORDS = 0x22
    TEMPERATURE_RECORDS = 0x26

    DELETE_SPORT = 0x40
    DELETE_SLEEP = 0x41
    DELETE_HEART_RATE = 0x42
    DELETE_BLOOD_PRESSURE = 0x43
    DELETE_ALL = 0x44
    DELETE_SPO2 = 0x45
    DELETE_TEMPERATURE = 0x47

    BLOCK_END = 0x80


class HistoryKind(IntEnum):
    """What a history sync asks for; the value is the request key."""

    SPORT = 0x02
    SLEEP = 0x04
    HEART_RATE = 0x06
    BLOOD_PRESSURE = 0x08
    ALL = 0x09
    SPO2 = 0x1A
    TEMPERATURE = 0x1E


@dataclass(frozen=True, slots=True)
class HistoryKindInfo:
    """One row of the history table."""

    kind: HistoryKind
    #: ``05 kk`` empty payload asks for the history; the watch's header reply has the same key.
    request_key: int
    #: key of the frames carrying the records.
    record_key: int
    #: ``05 kk`` empty payload deletes the records after they are safe.
    delete_key: int
    #: bytes per record; None = layout not in the reference (records kept as raw bytes).
    record_size: int | None


HISTORY_KINDS: Final = MappingProxyType(
    {
        row.kind: row
        for row in (
            HistoryKindInfo(HistoryKind.SPORT, 0x02, 0x11, 0x40, None),
            HistoryKindInfo(HistoryKind.SLEEP, 0x04, 0x13, 0x41, None),
            HistoryKindInfo(HistoryKind.HEART_RATE, 0x06, 0x15, 0x42, 6),
            HistoryKindInfo(HistoryKind.BLOOD_PRESSURE, 0x08, 0x17, 0x43, 8),
            HistoryKindInfo(HistoryKind.ALL, 0x09, 0x18, 0x44, 20),
            HistoryKindInfo(HistoryKind.SPO2, 0x1A, 0x22, 0x45, 6),
            HistoryKindInfo(HistoryKind.TEMPERATURE, 0x1E, 0x26, 0x47, 7),
        )
    }
)
#: the kinds whose record layout is known (the vital signs), by name: what a gateway may sync
#: (setting ``history_kinds``) and what the virtual watch records. Sport and sleep records
#: have no layout in the reference (kept as raw bytes), so nobody asks for them.
VITAL_HISTORY_KINDS: Final = MappingProxyType(
    {row.kind.name.lower(): row.kind for row in HISTORY_KINDS.values() if row.record_size is not None}
)
#: record key → kind, delete key → kind.
HISTORY_KIND_BY_RECORD_KEY: Final = MappingProxyType(
    {row.record_key: row.kind for row in HISTORY_KINDS.values()}
)
HISTORY_KIND_BY_DELETE_KEY: Final = MappingProxyType(
    {row.delete_key: row.kind for row in HISTORY_KINDS.values()}
)
#: Header reply: record count u16, block count u32, total bytes u32.
HISTORY_HEADER_SIZE: Final = 10
#: A header payload of this many bytes or fewer means "nothing stored".
HISTORY_EMPTY_MAX: Final = 2
#: Block end ``05 80`` from the watch: packet count u16, byte count u16, CRC-16 u16.
BLOCK_END_SIZE: Final = 6


class BlockStatus(IntEnum):
    """The app's ``05 80`` answer to a block end."""

    ACCEPTED = 0x00
    #: CRC mismatch: the watch resends the block.
    RESEND = 0x04


#: Payload of the ``04 kk`` acknowledgement of a device-control event.
DEVICE_EVENT_ACK: Final = 0x00
#: Status byte of a command reply meaning success (vitalgate assumption).
REPLY_OK: Final = 0x00

# ------------------------------------------------------------------ time

#: Watch time 0 = 2000-01-01 00:00:00 in the watch's LOCAL time; this is its Unix value.
WATCH_EPOCH_UNIX: Final = 946684800
