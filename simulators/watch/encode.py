"""Watch-side payload encoders: what a real E86 would put on the air (ref: e86-protocol.md).

Independent of the gateway's decoders on purpose, so that the simulator checks them rather
than mirrors them. Layouts are little-endian, as in the reference. Values are clamped to what
the wire can carry (u8), never wrapped.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from gateway.e86.constants import TEMPERATURE_TENTHS_ERROR, WATCH_EPOCH_UNIX, HistoryKind

#: Record "mode" byte: 0 = automatic measurement (the watch's own schedule).
MODE_AUTO = 0
#: BP record's trailing byte, unknown meaning; the SDK's samples carry 0.
BP_UNKNOWN = 0
#: 24-bit signed sample range.
ECG_MIN, ECG_MAX = -(2**23), 2**23 - 1


def u8(value: float | None) -> int:
    """Round and clamp to one byte; None (not measured) → 0, the protocol's 'no value'."""
    if value is None:
        return 0
    return max(0, min(255, round(value)))


def temperature_bytes(celsius: float | None) -> tuple[int, int]:
    """(integer, tenths); None → (0, 15), the protocol's 'error / no value'."""
    if celsius is None:
        return 0, TEMPERATURE_TENTHS_ERROR
    tenths_total = max(0, min(2559, round(celsius * 10)))
    return tenths_total // 10, tenths_total % 10


@dataclass(frozen=True, slots=True)
class Measurement:
    """One reading of the watch's sensors, in watch local seconds since 2000-01-01."""

    watch_time: int
    heart_rate: float | None = None
    spo2: float | None = None
    systolic_bp: float | None = None
    diastolic_bp: float | None = None
    temperature: float | None = None
    respiratory_rate: float | None = None
    hrv: float | None = None
    steps: int = 0

    @classmethod
    def from_vitals(
        cls, watch_time: int, vitals: Mapping[str, float], steps: int = 0
    ) -> Measurement:
        return cls(
            watch_time=watch_time,
            heart_rate=vitals.get("heart_rate"),
            spo2=vitals.get("spo2"),
            systolic_bp=vitals.get("systolic_bp"),
            diastolic_bp=vitals.get("diastolic_bp"),
            temperature=vitals.get("temperature"),
            respiratory_rate=vitals.get("respiratory_rate"),
            hrv=vitals.get("hrv"),
            steps=steps,
        )


def watch_time(utc_s: float, utc_offset_s: float) -> int:
    """Watch time (local seconds since 2000-01-01) for a UTC instant."""
    return max(0, int(utc_s + utc_offset_s) - WATCH_EPOCH_UNIX)


# ------------------------------------------------------------------ real-time uploads (06 kk)
def realtime_heart_rate(m: Measurement) -> bytes:
    return bytes((u8(m.heart_rate),))


def realtime_spo2(m: Measurement) -> bytes:
    return bytes((u8(m.spo2),))


def realtime_blood_pressure(m: Measurement) -> bytes:
    """[systolic, diastolic, hr, hrv, spo2, temp int, temp tenths] (systolic FIRST)."""
    t_int, t_tenths = temperature_bytes(m.temperature)
    return bytes(
        (
            u8(m.systolic_bp),
            u8(m.diastolic_bp),
            u8(m.heart_rate),
            u8(m.hrv),
            u8(m.spo2),
            t_int,
            t_tenths,
        )
    )


def realtime_respiratory_rate(m: Measurement) -> bytes:
    return bytes((u8(m.respiratory_rate),))


def ecg_payload(samples: Iterable[int]) -> bytes:
    """Signed 24-bit little-endian samples, clamped to the 24-bit range."""
    out = bytearray()
    for s in samples:
        out += max(ECG_MIN, min(ECG_MAX, int(s))).to_bytes(3, "little", signed=True)
    return bytes(out)


# ------------------------------------------------------------------ history records
def record_bytes(kind: HistoryKind, m: Measurement) -> bytes:
    """One history record of ``kind`` (layouts from the reference's record table)."""
    t = m.watch_time
    if kind is HistoryKind.HEART_RATE:
        return struct.pack("<IBB", t, MODE_AUTO, u8(m.heart_rate))
    if kind is HistoryKind.BLOOD_PRESSURE:
        return struct.pack(
            "<IBBBB", t, MODE_AUTO, u8(m.systolic_bp), u8(m.diastolic_bp), BP_UNKNOWN
        )
    if kind is HistoryKind.SPO2:
        return struct.pack("<IBB", t, MODE_AUTO, u8(m.spo2))
    if kind is HistoryKind.TEMPERATURE:
        return struct.pack("<IBBB", t, MODE_AUTO, *temperature_bytes(m.temperature))
    if kind is HistoryKind.ALL:
        t_int, t_tenths = temperature_bytes(m.temperature)
        return struct.pack(
            "<IH9B5x",
            t,
            max(0, min(0xFFFF, m.steps)),
            u8(m.heart_rate),
            u8(m.systolic_bp),
            u8(m.diastolic_bp),
            u8(m.spo2),
            u8(m.respiratory_rate),
            u8(m.hrv),
            0,  # CVRR: not simulated
            t_int,
            t_tenths,
        )
    raise ValueError(f"the virtual watch does not record history kind {kind.name}")


def history_header(record_count: int, block_count: int, total_bytes: int) -> bytes:
    """Header reply to ``05 kk``: count u16, blocks u32, bytes u32."""
    return struct.pack("<HII", min(record_count, 0xFFFF), block_count, total_bytes)


def block_end(packet_count: int, byte_count: int, crc: int) -> bytes:
    """``05 80`` from the watch: packets u16, bytes u16, CRC-16 of the block's record bytes."""
    return struct.pack("<HHH", packet_count, byte_count, crc)


def mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def chunk(seq: Sequence[bytes], size: int) -> list[list[bytes]]:
    return [list(seq[i : i + size]) for i in range(0, len(seq), size)]
