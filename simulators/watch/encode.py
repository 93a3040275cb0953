"""What the virtual watch measures, and how a reading becomes E86 messages.

The wire formats themselves live in ``e86`` (one implementation, shared with the
gateway, so that the two are corrected together). This module only holds the watch's reading
(``WatchSample``) and the watch's choices when it fills those messages: values are rounded and
clamped to what the wire can carry (u8, u16, 24-bit samples), never wrapped; an unmeasured
value goes out as the protocol's "no value".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from e86.clock import WATCH_TIME_MAX, utc_ms_to_watch
from e86.constants import ECG_SAMPLE_SIZE, HistoryKind, RealtimeKey
from e86.realtime import (
    EcgSamples,
    RealtimeValues,
    realtime_blood_pressure,
    realtime_heart_rate,
    realtime_respiratory_rate,
    realtime_spo2,
)
from e86.records import (
    AllRecord,
    BloodPressureRecord,
    HeartRateRecord,
    Spo2Record,
    TemperatureRecord,
    TimedRecord,
)
from e86.values import temperature_to_bytes

#: Record "mode" byte: 0 = automatic measurement (the watch's own schedule).
MODE_AUTO: Final = 0
#: BP record's trailing byte, unknown meaning; the SDK's samples carry 0.
BP_UNKNOWN: Final = 0
#: CVRR byte of the all-values record: not simulated, sent as 0.
CVRR_NOT_SIMULATED: Final = 0
#: Signed sample range of the ECG wire format (ECG_SAMPLE_SIZE bytes per sample).
ECG_MIN: Final = -(1 << (8 * ECG_SAMPLE_SIZE - 1))
ECG_MAX: Final = (1 << (8 * ECG_SAMPLE_SIZE - 1)) - 1
#: Temperature range the wire carries, in tenths of °C: integer part 1..255 (0 = no value).
TEMPERATURE_TENTHS_MIN: Final = 10
TEMPERATURE_TENTHS_MAX: Final = 2559


def u8(value: float | None) -> int | None:
    """Round and clamp to one byte; None (not measured) stays None (sent as 0, "no value")."""
    if value is None:
        return None
    return max(0, min(0xFF, round(value)))


def u8_or_zero(value: float | None) -> int:
    """``u8`` for fields that have no "absent" form in a record: None → 0 ("no value")."""
    v = u8(value)
    return 0 if v is None else v


def temperature(celsius: float | None) -> float | None:
    """Clamp to what the wire carries (1.0..255.9 °C); below 1 °C reads as "no value"."""
    if celsius is None:
        return None
    tenths = round(celsius * 10)
    if tenths < TEMPERATURE_TENTHS_MIN:
        return None
    return min(TEMPERATURE_TENTHS_MAX, tenths) / 10


def watch_time(utc_s: float, utc_offset_s: float) -> int:
    """Watch time (local seconds since 2000-01-01) for a UTC instant, clamped to u32."""
    t = utc_ms_to_watch(int(utc_s * 1000), int(utc_offset_s * 1000))
    return max(0, min(WATCH_TIME_MAX, t))


@dataclass(frozen=True, slots=True)
class WatchSample:
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
    ) -> WatchSample:
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


# ------------------------------------------------------------------ real-time uploads (06 kk)
def _blood_pressure(m: WatchSample) -> RealtimeValues:
    """``06 03``: every field it can carry (systolic first, then diastolic, HR, HRV, SpO2,
    temperature), unmeasured ones as "no value"."""
    return realtime_blood_pressure(
        u8(m.systolic_bp),
        u8(m.diastolic_bp),
        u8(m.heart_rate),
        hrv=u8_or_zero(m.hrv),
        spo2=u8_or_zero(m.spo2),
        temperature=temperature(m.temperature),
    )


#: Real-time key → the message the watch sends for a reading.
REALTIME_MESSAGES: Final[dict[RealtimeKey, Callable[[WatchSample], RealtimeValues]]] = {
    RealtimeKey.HEART_RATE: lambda m: realtime_heart_rate(u8(m.heart_rate)),
    RealtimeKey.SPO2: lambda m: realtime_spo2(u8(m.spo2)),
    RealtimeKey.BLOOD_PRESSURE: _blood_pressure,
    RealtimeKey.RESPIRATORY_RATE: lambda m: realtime_respiratory_rate(u8(m.respiratory_rate)),
}


def realtime(key: RealtimeKey, m: WatchSample) -> RealtimeValues:
    """The real-time upload ``06 key`` for reading ``m``."""
    return REALTIME_MESSAGES[key](m)


def ecg(samples: Iterable[float]) -> EcgSamples:
    """One ``06 05`` message; samples clamped to the signed 24-bit range."""
    return EcgSamples(tuple(max(ECG_MIN, min(ECG_MAX, int(s))) for s in samples))


# ------------------------------------------------------------------ history records
def _temperature_bytes(m: WatchSample) -> tuple[int, int]:
    return temperature_to_bytes(temperature(m.temperature))


def _all_values(m: WatchSample) -> AllRecord:
    t_int, t_tenths = _temperature_bytes(m)
    return AllRecord(
        t=m.watch_time,
        steps=max(0, min(0xFFFF, m.steps)),
        heart_rate=u8_or_zero(m.heart_rate),
        systolic=u8_or_zero(m.systolic_bp),
        diastolic=u8_or_zero(m.diastolic_bp),
        spo2=u8_or_zero(m.spo2),
        respiratory_rate=u8_or_zero(m.respiratory_rate),
        hrv=u8_or_zero(m.hrv),
        cvrr=CVRR_NOT_SIMULATED,
        temp_integer=t_int,
        temp_tenths=t_tenths,
    )


#: History kind → the record the watch stores for a reading (sport / sleep are not simulated).
RECORD_BUILDERS: Final[dict[HistoryKind, Callable[[WatchSample], TimedRecord]]] = {
    HistoryKind.ALL: _all_values,
    HistoryKind.HEART_RATE: lambda m: HeartRateRecord(
        m.watch_time, MODE_AUTO, u8_or_zero(m.heart_rate)
    ),
    HistoryKind.BLOOD_PRESSURE: lambda m: BloodPressureRecord(
        m.watch_time,
        MODE_AUTO,
        u8_or_zero(m.systolic_bp),
        u8_or_zero(m.diastolic_bp),
        BP_UNKNOWN,
    ),
    HistoryKind.SPO2: lambda m: Spo2Record(m.watch_time, MODE_AUTO, u8_or_zero(m.spo2)),
    HistoryKind.TEMPERATURE: lambda m: TemperatureRecord(
        m.watch_time, MODE_AUTO, *_temperature_bytes(m)
    ),
}


def history_record(kind: HistoryKind, m: WatchSample) -> TimedRecord:
    """The history record of ``kind`` for reading ``m``."""
    try:
        build = RECORD_BUILDERS[kind]
    except KeyError:
        raise ValueError(f"the virtual watch does not record history kind {kind.name}") from None
    return build(m)
